"""The Makefile passes user values to the shell as data: no value can run a command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("target, var", [("sim", "BLOCK"), ("sim", "SIM"),
                                         ("sim", "HW_CONFIG"), ("rtl", "BLOCK"),
                                         ("rtl", "HW_CONFIG")])
def test_make_inputs_cannot_run_commands(tmp_path, target, var):
    if shutil.which("make") is None:
        pytest.fail("make is needed (scripts/setup.sh installs it)")
    marker = tmp_path / "X"
    hostile = f"7x7'; touch {marker}; echo '"
    env = dict(os.environ, VENV=str(Path(sys.executable).parent.parent))
    # -o setup: do not (re)run scripts/setup.sh from the test
    out = subprocess.run(["make", "-o", "setup", target, f"{var}={hostile}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert not marker.exists(), out.stdout + out.stderr
    assert "error" in out.stderr
