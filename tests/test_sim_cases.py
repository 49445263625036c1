"""The bench's reference cases and checks, and the harness's input errors (no simulator run)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lsp_codesign.compiler import encode_y
from lsp_codesign.config import load_config
from lsp_codesign.isa import COUNTERS, ERROR_CODES
from lsp_codesign.iss import Memories, run_iss
from sim import make_sim
from sim.cases import (CaseReport, check_error, check_layer, error_cases, format_table,
                       layer_cases)
from sim import harness
from sim.harness import (ProgramError, RtlResult, SimulatorError, SimulatorNotFound,
                         run_programs)

VITA = Path(__file__).resolve().parent.parent / "configs" / "vita.yaml"


def perfect_result(cfg, case, prog) -> RtlResult:
    """What a correct engine returns: numpy's Y as the DRAM's Y area, the model's counters."""
    words = encode_y(cfg, prog, case.expected_y(cfg))
    est = case.estimate(cfg)
    counters = {c: est.counters[c] for c in COUNTERS}
    return RtlResult(words, counters, False, 0, 0.1, sim_cycles=counters["cycles"])


def test_layer_cases_cover_the_issue_list():
    cfg = load_config(VITA, block="16x16")
    cases = {c.name: c for c in layer_cases(cfg)}
    assert not cases["all-pruned"].mask.any()
    assert cases["dense"].mask.all()
    prc = cases["pruned-row-col"]
    assert not prc.mask[1].any() and not prc.mask[:, 2].any() and prc.mask.any()
    ext = cases["int8-extremes"]
    assert (ext.x[0] == -128).all() and (ext.w[0] == -128).all() and ext.mask[0].all()
    assert cases["1x1x1"].shape == (1, 1, 1)
    for c in cases.values():
        if c.twin:
            assert c.mask.all() and c.name == f"{c.twin}/dense"
            assert c.x is cases[c.twin].x
    m, n, k = prc.shape
    assert m % cfg.tile_m and n % cfg.block_n and k % cfg.block_k     # ragged edges
    from tests.conftest import tiny_config
    tiny = tiny_config()
    big = {c.name: c for c in layer_cases(tiny, oversize=(4, 16))}
    bank = tiny.memories["xmem"].depth * tiny.memories["xmem"].word_bytes
    for factor in (4, 16):
        m, n, k = big[f"tiled-{factor}x"].shape
        assert m * n >= factor * bank and n * k >= factor * bank


def test_checks_accept_a_correct_result_and_catch_every_kind_of_mismatch():
    cfg = load_config(VITA, block="16x16")
    case = layer_cases(cfg)[0]
    prog = case.program(cfg)
    good = perfect_result(cfg, case, prog)
    assert check_layer(cfg, case, prog, good).ok
    y = case.expected_y(cfg).copy()
    y[-1, -1] ^= 1                              # one bit of the last real element
    bad_y = dataclasses.replace(good, y_words=encode_y(cfg, prog, y))
    m, _, k = case.shape
    assert any(f"Y[{m - 1}, {k - 1}]" in p and "1 of" in p
               for p in check_layer(cfg, case, prog, bad_y).problems)
    bad_c = dataclasses.replace(good, counters={**good.counters, "fill": 1})
    assert any("fill: RTL 1, model" in p for p in check_layer(cfg, case, prog, bad_c).problems)
    bad_e = dataclasses.replace(good, error=True, err_code=3)
    assert "engine stopped with error index (code 3)" in \
        check_layer(cfg, case, prog, bad_e).problems
    bad_t = dataclasses.replace(good, sim_cycles=good.sim_cycles + 1)
    assert not check_layer(cfg, case, prog, bad_t).ok


def test_error_cases_end_as_their_names_say_on_the_iss():
    cfg = load_config(VITA, block="16x16")
    cases = {c.name: c for c in error_cases(cfg)}
    expect = {"illegal-funct7": "illegal_instruction", "bad-tile-tt0": "bad_tile",
              "bad-tile-nnz": "bad_tile", "dma-x-outside-dram": "dma_range",
              "dma-w-longer-than-bank": "dma_range", "dma-descriptor-outside-dram": "dma_range",
              "index-row-ptr-decreases": "index", "index-column-past-ng": "index",
              "pc-overflow": "pc_overflow", "rdctr": "none"}
    for name, err in expect.items():
        assert cases[name].err_code == ERROR_CODES[err], name
        assert run_iss(cfg, Memories.from_program(cases[name].program)).err_code == \
            ERROR_CODES[err], name
    # the later-tile errors are found while an earlier tile computes
    late = run_iss(cfg, Memories.from_program(cases["bad-tile-nnz"].program))
    assert late.counters["tiles"] >= 1 and late.counters["compute"] > 0
    c = cases["illegal-opcode"]
    iss = run_iss(cfg, Memories.from_program(c.program))
    res = RtlResult([0] * c.program.y_words, dict(iss.counters), True, 1, 0.0, regs=iss.regs)
    assert check_error(cfg, c, res).ok
    wrong = dataclasses.replace(res, err_code=2)
    assert "ended with error=1 code 2, the ISS with error=1 code 1" in \
        check_error(cfg, c, wrong).problems
    off = dataclasses.replace(res, counters={**res.counters, "cycles": 11})
    assert any("cycles RTL 11 != ISS 10" in p for p in check_error(cfg, c, off).problems)
    rd = cases["rdctr"]
    iss = run_iss(cfg, Memories.from_program(rd.program))
    res = RtlResult([0] * rd.program.y_words, dict(iss.counters), False, 0, 0.0,
                    regs=[0] * 32)
    assert any(p.startswith("registers: ") and "x13 RTL 0 ISS" in p
               for p in check_error(cfg, rd, res).problems)


def test_format_table_has_one_row_per_case():
    rows = [CaseReport("a", "1x2->3", "1/1", 10, 10, 1.5, 2.0, []),
            CaseReport("b", "4x5->6", "err 1", 7, 8, None, None, ["x"])]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:2] == ["case", "shape"] and len(lines) == 4
    assert lines[2].split()[-2:] == ["2.00x", "ok"] and lines[3].endswith("MISMATCH")


def test_make_sim_rejects_a_malformed_block(capsys):
    assert make_sim.main(["--block", "16by16"]) == 2
    err = capsys.readouterr().err
    assert "make sim: error: --block: expected the form AxB with positive integers, got " \
           "'16by16'" in err
    assert make_sim.main(["--block", "12x16"]) == 2
    assert "powers of two" in capsys.readouterr().err
    assert make_sim.main(["--block", "16x16", "--sim", "modelsim"]) == 2
    assert "sim: expected one of icarus, verilator, got 'modelsim'" in capsys.readouterr().err


def test_run_programs_input_errors(monkeypatch, tmp_path):
    cfg = load_config(VITA, block="16x16")
    case = layer_cases(cfg)[0]
    prog = case.program(cfg)
    with pytest.raises(SimulatorError, match="sim: expected one of icarus, verilator"):
        run_programs(cfg, [prog], sim="xsim")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SimulatorNotFound, match=r"^icarus: iverilog, vvp not found on PATH"):
        run_programs(cfg, [prog], sim="icarus")
    # the venv's own bin directory (where the set-up links verilator) is always searched
    with pytest.raises(SimulatorNotFound, match=r"^verilator: make, g\+\+ not found"):
        run_programs(cfg, [prog], sim="verilator")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SimulatorNotFound, match=r"^verilator: verilator, make, g\+\+ not found"):
        run_programs(cfg, [prog], sim="verilator")
    monkeypatch.undo()
    depth = cfg.dram.depth
    bad = dataclasses.replace(prog, dram={depth: 1})
    with pytest.raises(ProgramError, match=rf"DRAM address {depth} is outside 0..{depth - 1}"):
        run_programs(cfg, [bad], sim="icarus")
    bad = dataclasses.replace(prog, dram={0: 1 << 256})
    with pytest.raises(ProgramError, match=r"DRAM\[0\] = \d+ is not an unsigned 256-bit word"):
        run_programs(cfg, [bad], sim="icarus")
    with pytest.raises(ProgramError, match="watchdog_cycles must be a positive integer"):
        run_programs(cfg, [prog], sim="icarus", watchdog_cycles=0)
    assert run_programs(cfg, [], sim="icarus") == []


def test_testbench_wrapper_exposes_the_engine_the_dram_and_the_backdoor(tmp_path):
    from hw.build import build_verilog
    from tests.conftest import tiny_config

    cfg = tiny_config()
    params = build_verilog(cfg, build_root=tmp_path).load_params()
    text = harness.testbench_verilog(params)
    assert "module lsp_tb (" in text and "lsp_engine dut (" in text
    assert f"lsp_sram #(.WIDTH({cfg.dram.beat_bits}), .DEPTH({cfg.dram.depth})" in text
    assert '$readmemh("lsp_load_imem.hex", dut.imem.mem)' in text
    assert '$readmemh("lsp_load_dram.hex", dram.mem)' in text
    assert '$writememh("lsp_dump_dram.hex", dram.mem, tb_dump_lo, tb_dump_hi)' in text
    for bank in ("xmem_b0", "ymem_b1"):                       # tb_clear zeroes every bank
        assert f"dut.{bank}.mem[i] = 0;" in text
    # only the ports are VPI-visible: the engine's logic is not re-evaluated per VPI call
    assert text.count("/*verilator public_flat_rw*/") == 23
    assert "start_q <= start;" in text and ".start(start_q)" in text


def test_make_sim_exits_1_and_names_the_mismatch(monkeypatch, capsys):
    rows = [CaseReport("good", "1x1->1", "1/1", 104, 104, 0.1, 1.0, []),
            CaseReport("bad", "2x2->2", "1/1", 105, 104, 0.1, 1.0,
                       ["counters: cycles RTL 105 != expected 104"])]
    summary = {"block": "16x16", "tile_m": 16, "config_hash": "x", "sim_cycles": 209,
               "wall_s": 0.1, "build_s": 0.0, "build_reused": True, "build_dir": "build/x",
               "waves": None}
    monkeypatch.setattr(make_sim, "run", lambda *a, **k: (rows, summary))
    assert make_sim.main(["--block", "16x16"]) == 1
    out = capsys.readouterr()
    assert "1/2 cases ok" in out.out and "MISMATCH" in out.out
    assert "MISMATCH bad: counters: cycles RTL 105 != expected 104" in out.err
    assert "waves:" not in out.out
    summary["waves"] = "build/x/waves/make_sim-icarus.fst"
    assert make_sim.main(["--block", "16x16"]) == 1
    assert "waves: build/x/waves/make_sim-icarus.fst" in capsys.readouterr().out
