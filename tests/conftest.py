"""Shared test set-up: offline timm, repository paths, small configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="session", autouse=True)
def _private_shape_cache(tmp_path_factory):
    """The tests' own shape cache (``report --model``), not the user's ~/.cache."""
    before = os.environ.get("LSP_CACHE_DIR")
    os.environ["LSP_CACHE_DIR"] = str(tmp_path_factory.mktemp("lsp-cache"))
    yield
    if before is None:
        os.environ.pop("LSP_CACHE_DIR", None)
    else:
        os.environ["LSP_CACHE_DIR"] = before


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module: two OpenMP threads on a shared 2-core machine can be
    30x slower than one. Use with ``pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def vita():
    from lsp_codesign.config import load_config

    return load_config(CONFIGS / "vita.yaml")


@pytest.fixture(scope="session")
def tpu():
    from lsp_codesign.config import load_config

    return load_config(CONFIGS / "tpu_v3.yaml")


def write_test_run(path, masks, *, checkpoint=None, seed=0, data=None, method="random-test",
                   flops_target=None, cfg=None, overwrite=False):
    """A run directory for ``masks`` written through :mod:`lsp_codesign.rundir` (not by the
    allocator): allocation.json with the fields the commands read, the masks, and ``cfg``
    (default: configs/vita.yaml with the masks' block) as hw.yaml."""
    from lsp_codesign.config import load_config
    from lsp_codesign.rundir import write_run

    if cfg is None:
        cfg = load_config(CONFIGS / "vita.yaml", block=masks.block_str)
    doc = {"model": masks.model, "checkpoint": None if checkpoint is None else str(checkpoint),
           "data": None if data is None else str(data), "method": method,
           "flops_target": flops_target, "block": masks.block_str, "seed": seed,
           "hw": {"name": cfg.name, "config_hash": cfg.config_hash()}}
    return write_run(path, doc, masks, cfg, overwrite=overwrite)


def tiny_config(block: str = "4x4", tile_m: int = 4, *, beat: int = 16, latency: int = 8,
                kib: float = 0.25, ymem_kib: float = 1.0, idx_kib: float = 0.125,
                dram_mib: float = 0.0625, index_bits: int = 16, imem_words: int = 32):
    """A block-sparse config with tiny memories (layers are many times larger than a bank),
    fast to simulate: the RTL tests use it so Icarus and Amaranth's simulator stay quick."""
    import yaml

    from lsp_codesign.config import HwConfig

    raw = yaml.safe_load((CONFIGS / "vita.yaml").read_text())
    raw.update(name=f"tiny-{block}", block=block, tile_m=tile_m, index_bits=index_bits)
    raw["memories"] = {"imem_words": imem_words, "xmem_kib": kib, "wmem_kib": kib,
                       "idx_kib": idx_kib, "ymem_kib": ymem_kib}
    raw["dram"] = {"bytes_per_cycle": beat, "latency_cycles": latency, "capacity_mib": dram_mib}
    return HwConfig.from_dict(raw, source=f"tiny {block} config")
