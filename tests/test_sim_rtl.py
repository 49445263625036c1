"""RTL benches on real HDL simulators: Icarus Verilog for several block sizes, Verilator for 16x16.

Every case is checked bit-exact against numpy and counter-exact against the cycle/energy model
(sim/cases.py). These tests never skip when CI=true: a missing simulator fails them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from lsp_codesign.compiler import compile_layer, read_y, reference_gemm
from lsp_codesign.config import HwConfig, load_config
from lsp_codesign.cycle_model import estimate_layer
from lsp_codesign.isa import COUNTERS
from sim import make_sim
from sim.cases import check_error, check_layer, error_cases, layer_cases
from sim.harness import (RtlResult, SimulatorBuildError, SimulatorNotFound, WatchdogTimeout,
                         check_simulator, run_programs)

pytestmark = [pytest.mark.rtl, pytest.mark.slow]

VITA = Path(__file__).resolve().parent.parent / "configs" / "vita.yaml"


def need(sim: str) -> None:
    try:
        check_simulator(sim)
    except SimulatorNotFound as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the RTL benches: {exc}")
        pytest.skip(str(exc))


def small_config() -> HwConfig:
    raw = load_config(VITA).to_dict()
    raw.update(block="4x4", tile_m=4)
    raw["memories"] = {"imem_words": 32, "xmem_kib": 1, "wmem_kib": 1, "idx_kib": 0.25,
                       "ymem_kib": 4}
    return HwConfig.from_dict(raw, source="small test config")


def assert_all_ok(rows) -> None:
    bad = {r.name: r.problems for r in rows if not r.ok}
    assert not bad, bad


@pytest.mark.parametrize("block", ["8x8", "16x16"])
def test_make_sim_cases_on_icarus(block):
    """The full `make sim` case set: random layers, pruned rows, all-pruned, dense, extremes,
    every error, lsp.rdctr."""
    need("icarus")
    rows, summary = make_sim.run(VITA, block, "icarus", progress=False)
    assert_all_ok(rows)
    names = {r.name for r in rows}
    assert {"all-pruned", "dense", "pruned-row-col", "int8-extremes", "illegal-funct7",
            "bad-dims-k0", "index-short", "pc-overflow", "rdctr"} <= names
    assert summary["block"] == block and summary["sim_cycles"] > 0
    speedups = {r.name: r.speedup for r in rows if r.speedup is not None}
    assert speedups["dense"] == 1.0 and speedups["all-pruned"] > 1.0


@pytest.mark.parametrize("block", ["16x32", "32x16", "32x32"])
def test_wide_blocks_on_icarus(block):
    """Wider arrays (BK > BM, BN > BK ...) with a smaller case set: Icarus is slow on them."""
    need("icarus")
    cfg = load_config(VITA, block=block)
    layers = layer_cases(cfg, seed=1, n_random=1, twins=False)
    errors = [e for e in error_cases(cfg, seed=1) if e.name in ("illegal-funct7", "index-short")]
    progs = [c.program(cfg) for c in layers]
    res = run_programs(cfg, progs + [e.program for e in errors], sim="icarus")
    rows = [check_layer(cfg, c, p, r) for c, p, r in zip(layers, progs, res)]
    rows += [check_error(cfg, e, r) for e, r in zip(errors, res[len(progs):])]
    assert_all_ok(rows)


def test_make_sim_cases_on_verilator():
    need("verilator")
    rows, summary = make_sim.run(VITA, "16x16", "verilator", progress=False)
    assert_all_ok(rows)
    assert len(rows) == len(layer_cases(load_config(VITA, block="16x16"))) + \
        len(error_cases(load_config(VITA, block="16x16")))


def test_run_programs_contract_and_host_port_on_verilator():
    """The API a later issue relies on; the host port gives the same answers as the backdoor."""
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
    cfg = small_config()
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
    cfg = small_config()
    case = layer_cases(cfg, seed=3, n_random=1, twins=False)[0]
    run_programs(cfg, [case.program(cfg)], sim="icarus", build_root=tmp_path)
    verilog = tmp_path / cfg.config_hash() / "lsp_engine.v"
    verilog.write_text(verilog.read_text() + "\nthis is not verilog\n")
    with pytest.raises(SimulatorBuildError, match=r"icarus: building 4x4 .* failed"):
        run_programs(cfg, [case.program(cfg)], sim="icarus", build_root=tmp_path)


def test_programs_run_back_to_back_in_one_invocation(tmp_path):
    """Counters restart at every start; memories keep what earlier programs loaded."""
    need("icarus")
    cfg = small_config()
    cases = layer_cases(cfg, seed=5, n_random=2, twins=False)
    progs = [c.program(cfg) for c in cases]
    again = dataclasses.replace(progs[0], xmem={}, wmem={}, idx={})   # reuses progs[0]'s data
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
    rows, _ = make_sim.run(VITA, "8x8", "icarus", progress=False)
    layer_rows = [r for r in rows if not r.kept.startswith("err")]
    assert layer_rows and all(not r.ok for r in layer_rows)
    assert all(any("cycles RTL" in p for p in r.problems) for r in layer_rows)
    assert all(r.ok for r in rows if r.kept.startswith("err"))
