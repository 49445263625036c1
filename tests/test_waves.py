"""Waveforms: ``make sim ... WAVES=1``, ``verify --waves LAYER``, the VCD reader and the PNG.

Icarus writes FST (checked by its header block), Verilator VCD (read back: the engine's
``running`` is high for exactly the cycles its ``cycles`` counter counted).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lsp_codesign.cli import main
from lsp_codesign.compiler import compile_layer
from sim.harness import run_programs, waves_path
from sim.waves import main as waves_main
from sim.waves import read_vcd, render_png
from tests.conftest import tiny_config
from tests.test_sim_rtl import need

VCD = """$timescale 1ps $end
$scope module top $end
$var wire 1 ! clk $end
$scope module dut $end
$var wire 3 " state [2:0] $end
$var wire 1 # done $end
$upscope $end
$upscope $end
$enddefinitions $end
#0
0!
b000 "
0#
#5000
1!
b011 "
#10000
0!
#15000
1!
b1x0 "
1#
"""


def _program(cfg, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(6, 8), dtype=np.int8)
    w = rng.integers(-128, 128, size=(8, 8), dtype=np.int8)
    mask = np.array([[True, False], [True, True]])
    return compile_layer(cfg, x, w, mask)


def test_vcd_reader_and_png(tmp_path):
    f = tmp_path / "t.vcd"
    f.write_text(VCD)
    tr = read_vcd(f, ["clk", "dut.state", "done"])
    assert tr["dut.state"].name == "top.dut.state" and tr["dut.state"].width == 3
    assert tr["dut.state"].changes == [(0, 0), (5000, 3), (15000, None)]
    assert tr["clk"].changes == [(0, 0), (5000, 1), (10000, 0), (15000, 1)]
    assert tr["done"].value_at(14999) == 0 and tr["done"].value_at(15000) == 1
    png = render_png([("state", tr["dut.state"], ["A", "B", "C", "D"]), ("done", tr["done"], None)],
                     tmp_path / "w.png", start=0, stop=20000, period=10000)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Exception, match="no signal named nope"):
        read_vcd(f, ["nope"])



def test_waves_command_draws_from_a_start_signal(tmp_path, capsys):
    f = tmp_path / "t.vcd"
    f.write_text(VCD)
    out = tmp_path / "w.png"
    assert waves_main([str(f), "--out", str(out), "--clock", "clk", "--signal", "dut.state=A,B",
                       "--signal", "done", "--after", "clk", "--skip", "1", "--cycles", "1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(out) in capsys.readouterr().out
    assert waves_main([str(f), "--out", str(tmp_path / "x.png"), "--clock", "done",
                       "--signal", "clk"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "done does not toggle" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.rtl
def test_icarus_writes_an_fst_into_the_build_directory(tmp_path, monkeypatch):
    need("icarus")
    # cocotb lets a WAVES environment variable override its waves argument, and ``make``
    # exports one (WAVES=0 by default): the harness's own argument must decide either way.
    monkeypatch.setenv("WAVES", "0")
    cfg = tiny_config()
    path = waves_path(cfg, "t", "icarus", tmp_path)
    assert path == tmp_path.resolve() / cfg.config_hash() / "waves" / "t-icarus.fst"
    (res,) = run_programs(cfg, [_program(cfg)], sim="icarus", build_root=tmp_path, waves=path)
    data = path.read_bytes()
    assert data[0] == 0 and int.from_bytes(data[1:9], "big") == 329  # FST header block
    assert len(data) > 2000 and not res.error
    assert (tmp_path.resolve() / cfg.config_hash() / "sim_icarus_waves").is_dir()
    # a run without waves uses (and builds) the fast model, and writes no waveform
    path.unlink()
    monkeypatch.setenv("WAVES", "1")
    run_programs(cfg, [_program(cfg)], sim="icarus", build_root=tmp_path)
    assert os.environ["WAVES"] == "1"
    assert not path.exists() and (tmp_path.resolve() / cfg.config_hash() / "sim_icarus").is_dir()


@pytest.mark.rtl
@pytest.mark.slow
def test_verilator_vcd_shows_the_counted_cycles(tmp_path, monkeypatch):
    need("verilator")
    monkeypatch.setenv("WAVES", "0")
    cfg = tiny_config()
    path = waves_path(cfg, "t", "verilator", tmp_path)
    res = run_programs(cfg, [_program(cfg), _program(cfg, 1)], sim="verilator",
                       build_root=tmp_path, waves=path)
    assert path.suffix == ".vcd"
    tr = read_vcd(path, ["lsp_tb.clk", "lsp_tb.running", "lsp_tb.done"])
    period = tr["lsp_tb.clk"].changes[2][0] - tr["lsp_tb.clk"].changes[0][0]
    highs = [(t, v) for t, v in tr["lsp_tb.running"].changes]
    spans = [(t1 - t0) // period for (t0, v), (t1, _w) in zip(highs, highs[1:]) if v == 1]
    assert spans == [r.counters["cycles"] for r in res]
    assert sum(1 for _t, v in tr["lsp_tb.done"].changes if v == 1) == 2


@pytest.mark.rtl
@pytest.mark.torch
def test_verify_waves_records_one_layer_and_writes_no_verify_json(tmp_path, capsys, monkeypatch):
    need("icarus")
    monkeypatch.setenv("WAVES", "0")
    from tests.test_verify import make_run

    rd = make_run(tmp_path / "run")
    assert main(["verify", str(rd), "--sim", "icarus", "--waves", "blocks.0.mlp.fc2",
                 "--no-dense", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert [lay["name"] for lay in doc["layers"]] == ["blocks.0.mlp.fc2"] and doc["totals"]["ok"]
    line = next(ln for ln in err.splitlines() if ln.startswith("waves: "))
    path = Path(line.split()[1])
    assert path.name == "verify-blocks.0.mlp.fc2-icarus.fst" and path.stat().st_size > 1000
    assert not (rd / "verify.json").exists()
    for argv, message in ((["--sim", "iss", "--waves", "head"], "needs an HDL simulator"),
                          (["--sim", "icarus", "--waves", "fc9"], "is not a layer of the run")):
        assert main(["verify", str(rd), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
