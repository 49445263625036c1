"""Shared test set-up: offline timm, repository paths, small configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="session")
def vita():
    from lsp_codesign.config import load_config

    return load_config(CONFIGS / "vita.yaml")


@pytest.fixture(scope="session")
def tpu():
    from lsp_codesign.config import load_config

    return load_config(CONFIGS / "tpu_v3.yaml")
