# amaranth: UnusedElaboratable=no
"""The whole engine in Amaranth's simulator, with a DRAM behind its port: results bit-exact with
numpy, every counter equal to the cycle/energy model, and every error ending exactly as the ISS
says (docs/hw.md).

Small configurations (tiny memories: the layers are many times larger than every bank) keep
these fast; the same cases run on Icarus and Verilator in tests/test_sim_rtl.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from pathlib import Path

from lsp_codesign.compiler import compile_layer, read_y
from lsp_codesign.config import load_config
from lsp_codesign.isa import COUNTERS
from sim.amaranth_run import run_programs_amaranth
from sim.cases import check_error, check_layer, error_cases, layer_cases, named_program
from sim.harness import WatchdogTimeout
from tests.conftest import tiny_config

VITA = Path(__file__).resolve().parent.parent / "configs" / "vita.yaml"


def small_config(block: str, tile_m: int, beat: int = 16):
    return tiny_config(block, tile_m, beat=beat, kib=0.5, ymem_kib=2, idx_kib=0.25,
                       imem_words=64)


# BM = BK, BK > BM (two block rows per WMEM word), BM > BK, narrow and wide DRAM beats.
SHAPES = [("4x4", 4, 16), ("8x4", 4, 8), ("4x8", 8, 32), ("2x2", 4, 4), ("2x8", 16, 64),
          ("16x2", 4, 16)]


@pytest.mark.parametrize("block,tile_m,beat", SHAPES)
def test_engine_layers_match_numpy_and_model(block, tile_m, beat):
    cfg = small_config(block, tile_m, beat)
    cases = layer_cases(cfg, seed=11, n_random=2, twins=False, oversize=(4,))
    progs = [c.program(cfg) for c in cases]
    results = run_programs_amaranth(cfg, progs)
    assert len(results) == len(cases)
    for case, prog, res in zip(cases, progs, results):
        report = check_layer(cfg, case, prog, res)
        assert report.ok, (case.name, report.problems)


@pytest.mark.parametrize("block,tile_m", [("4x4", 4), ("8x4", 4), ("4x8", 8)])
def test_engine_errors_and_rdctr(block, tile_m):
    cfg = small_config(block, tile_m)
    cases = error_cases(cfg)
    results = run_programs_amaranth(cfg, [c.program for c in cases], read_regs=True,
                                    clear=True)
    names = {c.name for c in cases}
    assert {"illegal-funct7", "bad-tile-tt0", "index-row-ptr-decreases",
            "index-column-past-ng", "dma-x-outside-dram", "dma-w-longer-than-bank",
            "pc-overflow", "rdctr"} <= names
    for case, res in zip(cases, results):
        report = check_error(cfg, case, res)
        assert report.ok, (case.name, report.problems)


def test_engine_back_to_back_programs_share_memories():
    """A second program reuses the first one's memory contents; counters restart at zero."""
    cfg = small_config("4x4", 4)
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (6, 10)).astype(np.int8)
    w = rng.integers(-128, 128, (9, 10)).astype(np.int8)
    prog = named_program(compile_layer(cfg, x, w), "first")
    again = named_program(prog, "again", dram={})   # only IMEM reloaded; DRAM kept
    first, second = run_programs_amaranth(cfg, [prog, again])
    assert first.counters == second.counters
    assert first.y_words == second.y_words
    expected = x.astype(np.int64) @ w.astype(np.int64).T
    assert np.array_equal(read_y(cfg, again, second.y_words), expected)


def test_engine_counts_cycles_from_start_to_done():
    cfg = small_config("4x4", 4)
    case = layer_cases(cfg, seed=2, n_random=1, twins=False)[0]
    (res,) = run_programs_amaranth(cfg, [case.program(cfg)])
    assert res.sim_cycles == res.counters["cycles"] == case.estimate(cfg).cycles
    assert set(res.counters) == set(COUNTERS)


def test_watchdog_stops_a_long_run():
    cfg = small_config("4x4", 4)
    case = layer_cases(cfg, seed=2, n_random=1, twins=False)[0]
    with pytest.raises(WatchdogTimeout, match="did not raise done within 20 cycles"):
        run_programs_amaranth(cfg, [case.program(cfg)], watchdog_cycles=20)


# Components built only to check their constructor are never elaborated.
def test_engine_rejects_other_configs():
    from hw.engine import Engine

    with pytest.raises(TypeError, match="config must be an HwConfig, not 'vita'"):
        Engine(config="vita")
    tpu = load_config(VITA.parent / "tpu_v3.yaml")
    with pytest.raises(ValueError, match="implements the block_sparse engine only"):
        Engine(config=tpu)


def test_engine_ports_follow_the_config():
    from hw.engine import Engine

    cfg = load_config(VITA, block="16x32")
    eng = Engine(config=cfg)
    assert len(eng.ctr_value) == cfg.counter_bits == 48
    assert len(eng.err_code) == 3 and len(eng.ctr_sel) == 5
    assert len(eng.dram_rdata) == len(eng.dram_wdata) == cfg.dram.beat_bits == 256
    assert len(eng.imem_addr) == cfg.memories["imem"].addr_bits


def test_engine_refuses_an_isa_it_does_not_implement(monkeypatch):
    """A new operation in lsp_codesign.isa.OPS must come with its RTL, not decode as a no-op."""
    from hw.engine import Engine
    from lsp_codesign import isa

    extra = isa.Op("lsp.new", 0x30, False, False, False, "not implemented")
    original = isa.OPS
    monkeypatch.setattr(isa, "OPS", original + (extra,))
    with pytest.raises(ValueError, match=r"no RTL for \['lsp.new'\], no ISA entry for \[\]"):
        Engine(config=small_config("4x4", 4))
    monkeypatch.setattr(isa, "OPS", tuple(op for op in original if op.mnemonic != "lsp.rdctr"))
    with pytest.raises(ValueError, match=r"no ISA entry for \['lsp.rdctr'\]"):
        Engine(config=small_config("4x4", 4))
