"""End to end: allocate on the embedded model, verify every layer on the RTL, report.

This is the co-design loop of the README: the allocator's masks run through the generated
Verilog (Verilator for every layer, Icarus for a sample), outputs bit-exact against numpy and
every hardware counter equal to the cycle/energy model that priced the allocation. It never
skips: a missing simulator is a failure.
"""

from __future__ import annotations

import json

import pytest

from lsp_codesign.cli import main
from tests.conftest import CONFIGS

pytestmark = [pytest.mark.rtl, pytest.mark.torch, pytest.mark.slow]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    rd = tmp_path_factory.mktemp("e2e") / "run"
    rc = main(["allocate", "--hw", str(CONFIGS / "vita.yaml"), "--calib", "64", "--flops",
               "0.5", "--out", str(rd), "--quiet"])
    assert rc == 0
    return rd


def test_verify_every_layer_on_verilator(run_dir, capsys):
    assert main(["verify", str(run_dir), "--sim", "verilator"]) == 0
    out = capsys.readouterr().out
    assert "all layers bit-exact and cycle-exact" in out
    ver = json.loads((run_dir / "verify.json").read_text())
    alloc = json.loads((run_dir / "allocation.json").read_text())
    t = ver["totals"]
    assert ver["sim"] == "verilator" and t["ok"] and t["layers"] == len(alloc["order"])
    # the measured end-to-end speedup is the model's, exactly
    assert t["measured_speedup"] == t["model_speedup"] > 1.0
    # the model that priced the allocation predicted these very cycles
    for lay in ver["layers"]:
        assert lay["rtl_cycles"] == alloc["layers"][lay["name"]]["cycles"]
        assert lay["dense_rtl_cycles"] == alloc["layers"][lay["name"]]["dense_cycles"]


def test_report_shows_measured_figures(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "RTL" in out and "TOTAL" in out
    rep = json.loads((run_dir / "report" / "report.json").read_text())
    assert all(lay["source"] == "RTL" for lay in rep["layers"])


def test_verify_sample_on_icarus(run_dir, capsys):
    assert main(["verify", str(run_dir), "--sim", "icarus", "--layers", "2", "--no-dense"]) == 0
    ver = json.loads((run_dir / "verify.json").read_text())
    assert ver["sim"] == "icarus" and ver["totals"]["ok"] and ver["totals"]["layers"] == 2
