"""The bench's reference cases and checks, and the harness's input errors (no simulator run)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from lsp_codesign.compiler import pack_words
from lsp_codesign.config import load_config
from lsp_codesign.isa import COUNTERS, ERROR_CODES
from sim import make_sim
from sim.cases import (CaseReport, check_error, check_layer, error_cases, format_table,
                       layer_cases)
from sim import harness
from sim.harness import (ProgramError, RtlResult, SimulatorError, SimulatorNotFound,
                         run_programs)

VITA = Path(__file__).resolve().parent.parent / "configs" / "vita.yaml"


def perfect_result(cfg, case, prog) -> RtlResult:
    """What a correct engine returns: numpy's Y packed as YMEM words, the model's counters."""
    y = np.zeros((prog.mt * cfg.tile_m, prog.packed.grid.kb * cfg.block_k), dtype=np.int64)
    m, _, k = case.shape
    y[:m, :k] = case.expected_y(cfg)
    words = pack_words(y.reshape(-1, cfg.block_k), 32)
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


def test_checks_accept_a_correct_result_and_catch_every_kind_of_mismatch():
    cfg = load_config(VITA, block="16x16")
    case = layer_cases(cfg)[0]
    prog = case.program(cfg)
    good = perfect_result(cfg, case, prog)
    assert check_layer(cfg, case, prog, good).ok
    flipped = list(good.y_words)
    flipped[0] ^= 1 << 40                       # one bit of element 1 of token 0
    bad_y = dataclasses.replace(good, y_words=flipped)
    assert any(p.startswith("Y: 1 of") for p in check_layer(cfg, case, prog, bad_y).problems)
    bad_c = dataclasses.replace(good, counters={**good.counters, "stall": 1})
    assert any("stall RTL 1 != expected" in p
               for p in check_layer(cfg, case, prog, bad_c).problems)
    bad_e = dataclasses.replace(good, error=True, err_code=3)
    assert "stopped with error code 3" in check_layer(cfg, case, prog, bad_e).problems
    bad_t = dataclasses.replace(good, sim_cycles=good.sim_cycles + 1)
    assert not check_layer(cfg, case, prog, bad_t).ok


def test_error_cases_expect_what_the_spec_says():
    cfg = load_config(VITA, block="16x16")
    cases = {c.name: c for c in error_cases(cfg)}
    assert cases["illegal-funct7"].err_code == ERROR_CODES["illegal_instruction"]
    assert cases["illegal-funct7"].counters["insns"] == 4
    assert cases["illegal-funct7"].counters["cycles"] == 10
    assert cases["bad-dims-k0"].err_code == ERROR_CODES["bad_dims"]
    assert cases["bad-dims-k0"].counters["busy"] == 0
    assert cases["pc-overflow"].counters["cycles"] == 2 * cfg.memories["imem"].depth + 1
    assert cases["rdctr"].err_code == 0 and cases["rdctr"].regs[15] == 0
    c = cases["illegal-opcode"]
    res = RtlResult([0] * c.program.y_words, dict(c.counters), True, 1, 0.0)
    assert check_error(cfg, c, res).ok
    wrong = dataclasses.replace(res, err_code=2)
    assert "ended with error=1 code 2, expected error=1 code 1" in \
        check_error(cfg, c, wrong).problems
    rd = cases["rdctr"]
    res = RtlResult([0] * rd.program.y_words, dict(rd.counters), False, 0, 0.0,
                    regs=[0] * 32)
    assert any(p.startswith("x13 = 0, expected") for p in check_error(cfg, rd, res).problems)


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
    depth = cfg.memories["xmem"].depth
    bad = dataclasses.replace(prog, xmem={depth: 1})
    with pytest.raises(ProgramError, match=rf"XMEM address {depth} is outside 0..{depth - 1}"):
        run_programs(cfg, [bad], sim="icarus")
    bad = dataclasses.replace(prog, idx={0: 1 << 16})
    with pytest.raises(ProgramError, match=r"IDX\[0\] = 65536 is not an unsigned 16-bit word"):
        run_programs(cfg, [bad], sim="icarus")
    with pytest.raises(ProgramError, match="watchdog_cycles must be a positive integer"):
        run_programs(cfg, [prog], sim="icarus", watchdog_cycles=0)
    assert run_programs(cfg, [], sim="icarus") == []


def test_testbench_wrapper_exposes_the_engine_and_the_backdoor():
    cfg = load_config(VITA, block="16x32")
    params = {"top": "lsp_engine", "config_hash": cfg.config_hash(),
              "host": {"addr_bits": 14, "word_bits": 512},
              "derived": json.loads(json.dumps(cfg.derived())),
              "sram_arrays": {n: f"{n}.mem" for n in ("imem", "xmem", "wmem", "idx", "ymem")}}
    text = harness.testbench_verilog(params)
    assert "module lsp_tb (" in text and "lsp_engine dut (" in text
    assert "input  wire [511:0]   host_wdata" in text
    for i, n in enumerate(("imem", "xmem", "wmem", "idx", "ymem")):
        assert f'if (tb_load[{i}]) $readmemh("lsp_load_{n}.hex", dut.{n}.mem);' in text
    assert '$writememh("lsp_dump_ymem.hex", dut.ymem.mem, tb_dump_lo, tb_dump_hi)' in text


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
