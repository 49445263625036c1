"""RTL benches on real HDL simulators: Icarus Verilog and Verilator, all five block shapes.

Every layer case is checked bit-exact against numpy and counter-exact against the cycle/energy
model, every error case against the ISS (sim/cases.py). Small memory configs keep Icarus fast and
make the tiled cases 4x and 16x larger than every memory bank. These tests never skip when
CI=true: a missing simulator fails them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from lsp_codesign.compiler import compile_layer, read_y, reference_gemm
from lsp_codesign.config import load_config
from lsp_codesign.cycle_model import estimate_layer
from lsp_codesign.isa import COUNTERS
from sim import make_sim
from sim.cases import check_error, check_layer, error_cases, layer_cases
from sim.harness import (RtlResult, SimulatorBuildError, SimulatorNotFound, WatchdogTimeout,
                         check_simulator, run_programs)
from tests.conftest import tiny_config

pytestmark = [pytest.mark.rtl, pytest.mark.slow]

VITA = Path(__file__).resolve().parent.parent / "configs" / "vita.yaml"
BLOCKS = ["8x8", "16x16", "16x32", "32x16", "32x32"]


def need(sim: str) -> None:
    try:
        check_simulator(sim)
    except SimulatorNotFound as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the RTL benches: {exc}")
        pytest.skip(str(exc))


def block_config(block: str):
    """Banks of four blocks each, 32-byte DRAM beats, BM = 8 (BK > BM for 16- and 32-row
    blocks: the wide weight path)."""
    bk, bn = (int(v) for v in block.split("x"))
    kib = 8 * bk * bn / 1024
    return tiny_config(block, 8, beat=32, kib=kib, ymem_kib=2 * kib, idx_kib=0.25, dram_mib=1)


def assert_all_ok(rows) -> None:
    bad = {r.name: r.problems for r in rows if not r.ok}
    assert not bad, bad


def run_block_cases(sim: str, block: str, oversize: tuple[int, ...]) -> None:
    cfg = block_config(block)
    layers = layer_cases(cfg, seed=1, n_random=1, twins=False, oversize=oversize)
    errors = error_cases(cfg, seed=1)
    progs = [c.program(cfg) for c in layers]
    assert max(p.n_tiles for p in progs) > 10           # the tiled cases really are tiled
    res = run_programs(cfg, progs + [e.program for e in errors], sim=sim, read_regs=True,
                       clear=[False] * len(progs) + [True] * len(errors))
    rows = [check_layer(cfg, c, p, r) for c, p, r in zip(layers, progs, res)]
    rows += [check_error(cfg, e, r) for e, r in zip(errors, res[len(progs):])]
    assert_all_ok(rows)


@pytest.mark.parametrize("block", BLOCKS)
def test_five_block_shapes_on_icarus(block):
    """Random, pruned-row/column, all-pruned, dense, extremes, 1x1x1 and a layer 4x larger than
    every bank (16x for 8x8: Icarus slows with the array's size), and every error case."""
    need("icarus")
    run_block_cases("icarus", block, (4, 16) if block == "8x8" else (4,))


@pytest.mark.parametrize("block", BLOCKS)
def test_five_block_shapes_on_verilator(block):
    need("verilator")
    run_block_cases("verilator", block, (4, 16))


def test_make_sim_cases_on_verilator():
    """`make sim` on the default config: the full case set with dense twins."""
    need("verilator")
    rows, summary = make_sim.run(VITA, "16x16", "verilator", progress=False)
    assert_all_ok(rows)
    assert len(rows) == len(layer_cases(load_config(VITA, block="16x16"))) + \
        len(error_cases(load_config(VITA, block="16x16")))
    speedups = {r.name: r.speedup for r in rows if r.speedup is not None}
    assert speedups["dense"] == 1.0 and speedups["all-pruned"] > 1.0


def test_run_programs_contract_and_host_port_on_verilator():
    """The API other tools rely on; the ports give the same answers as the backdoor."""
    need("verilator")
    cfg = load_config(VITA, block="16x16")
    rng = np.random.default_rng(7)
    progs, refs = [], []
    for m, n, k in ((37, 40, 50), (16, 16, 16)):
        x = rng.integers(-128, 128, (m, n)).astype(np.int8)
        w = rng.integers(-128, 128, (k, n)).astype(np.int8)
        mask = rng.random((-(-k // 16), -(-n // 16))) < 0.5
        progs.append(compile_layer(cfg, x, w, mask))
        refs.append((x, w, mask))
    backdoor = run_programs(cfg, progs, sim="verilator")
    host = run_programs(cfg, progs, sim="verilator", host_port=True)
    for prog, (x, w, mask), a, b in zip(progs, refs, backdoor, host):
        assert isinstance(a, RtlResult) and isinstance(b, RtlResult)
        y = read_y(cfg, prog, a.y_words)
        assert y.dtype == np.int64 and y.shape == (prog.m, prog.k)
        assert np.array_equal(y, reference_gemm(x, w, mask, 16, 16))
        assert list(a.counters) == list(COUNTERS)
        assert a.counters == {c: estimate_layer(cfg, prog.m, prog.n, prog.k, mask).counters[c]
                              for c in COUNTERS}
        assert (a.error, a.err_code) == (False, 0) and a.wall_s > 0
        assert b.y_words == a.y_words and b.counters == a.counters


def test_watchdog_fails_instead_of_hanging(tmp_path):
    need("icarus")
    cfg = tiny_config()
    case = layer_cases(cfg, seed=3, n_random=1, twins=False)[0]
    with pytest.raises(WatchdogTimeout, match=r"icarus .*watchdog: random-1 .* did not raise "
                                              r"done within 40 cycles"):
        run_programs(cfg, [case.program(cfg)], sim="icarus", build_root=tmp_path,
                     watchdog_cycles=40)
    # the same program with the default limit finishes
    (res,) = run_programs(cfg, [case.program(cfg)], sim="icarus", build_root=tmp_path)
    assert res.counters["cycles"] == case.estimate(cfg).cycles > 40


def test_build_failure_is_reported(tmp_path):
    need("icarus")
    cfg = tiny_config()
    case = layer_cases(cfg, seed=3, n_random=1, twins=False)[0]
    run_programs(cfg, [case.program(cfg)], sim="icarus", build_root=tmp_path)
    verilog = tmp_path / cfg.config_hash() / "lsp_engine.v"
    verilog.write_text(verilog.read_text() + "\nthis is not verilog\n")
    with pytest.raises(SimulatorBuildError, match=r"icarus: building 4x4 .* failed"):
        run_programs(cfg, [case.program(cfg)], sim="icarus", build_root=tmp_path)


def test_programs_run_back_to_back_in_one_invocation(tmp_path):
    """Counters restart at every start; DRAM keeps what earlier programs loaded."""
    need("icarus")
    cfg = tiny_config()
    cases = layer_cases(cfg, seed=5, n_random=2, twins=False)
    progs = [c.program(cfg) for c in cases]
    again = dataclasses.replace(progs[0], dram={})   # reuses progs[0]'s DRAM image
    res = run_programs(cfg, progs + [progs[0], again], sim="icarus", build_root=tmp_path)
    for case, prog, r in zip(cases, progs, res):
        assert check_layer(cfg, case, prog, r).ok
    assert res[-1].y_words == res[0].y_words and res[-1].counters == res[0].counters


def test_the_bench_fails_when_the_model_is_off_by_one_cycle(monkeypatch):
    """The RTL == model check can fail: shift the model's prediction by one cycle."""
    need("icarus")
    from sim.cases import LayerCase

    real = LayerCase.estimate

    def off_by_one(self, cfg):
        est = real(self, cfg)
        est.counters["cycles"] += 1
        return est

    monkeypatch.setattr(LayerCase, "estimate", off_by_one)
    cfg = tiny_config()
    layers = layer_cases(cfg, seed=2, n_random=1, twins=False)
    progs = [c.program(cfg) for c in layers]
    rows = [check_layer(cfg, c, p, r)
            for c, p, r in zip(layers, progs, run_programs(cfg, progs, sim="icarus"))]
    assert rows and all(not r.ok for r in rows)
    assert all(any("cycles: RTL" in p for p in r.problems) for r in rows)
