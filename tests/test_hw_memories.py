# amaranth: UnusedElaboratable=no
"""SRAMs: synchronous read, read-first, zero at start; lowered to the lsp_sram macro for Verilog."""

from __future__ import annotations

import pytest
from amaranth.hdl import Fragment, Instance
from amaranth.sim import Simulator

from hw.memories import SRAM_MACRO, SRAM_MODEL_VERILOG, Sram, SramMacroPlatform


def test_sram_reads_synchronously_and_read_first():
    dut = Sram(width=16, depth=8)
    got = []

    async def bench(ctx):
        ctx.set(dut.raddr, 3)
        await ctx.tick()
        got.append(("initial", ctx.get(dut.rdata)))       # every word starts at zero
        ctx.set(dut.waddr, 3)
        ctx.set(dut.wdata, 0xBEEF)
        ctx.set(dut.we, 1)
        await ctx.tick()                                  # read and write of word 3 together
        got.append(("read-first", ctx.get(dut.rdata)))
        ctx.set(dut.we, 0)
        await ctx.tick()
        got.append(("after write", ctx.get(dut.rdata)))
        ctx.set(dut.raddr, 4)
        got.append(("same cycle", ctx.get(dut.rdata)))    # new address: data next cycle
        await ctx.tick()
        got.append(("other word", ctx.get(dut.rdata)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [("initial", 0), ("read-first", 0), ("after write", 0xBEEF),
                   ("same cycle", 0xBEEF), ("other word", 0)]


def test_sram_lowers_to_the_macro_with_its_geometry():
    sram = Sram(width=128, depth=16384)
    frag = Fragment.get(sram, SramMacroPlatform())
    assert isinstance(frag, Instance)
    assert frag.type == SRAM_MACRO == "lsp_sram"
    assert dict(frag.parameters) == {"WIDTH": 128, "DEPTH": 16384, "ABITS": 14}
    assert set(frag.ports) == {"clk", "raddr", "rdata", "waddr", "wdata", "we"}
    assert not isinstance(Fragment.get(Sram(width=8, depth=4), None), Instance)


def test_sram_model_text_matches_the_instance_ports():
    for port in ("clk", "raddr", "rdata", "waddr", "wdata", "we"):
        assert f" {port}" in SRAM_MODEL_VERILOG
    for param in ("WIDTH", "DEPTH", "ABITS"):
        assert f"parameter integer {param}" in SRAM_MODEL_VERILOG
    assert "module lsp_sram" in SRAM_MODEL_VERILOG and "rdata <= mem[raddr];" in SRAM_MODEL_VERILOG


def test_sram_parameters_are_checked():
    with pytest.raises(ValueError, match=r"^depth must be at least 2, not 1$"):
        Sram(width=8, depth=1)
    with pytest.raises(TypeError, match=r"^width must be an integer, not '8'$"):
        Sram(width="8", depth=4)
    s = Sram(width=32, depth=200)
    assert (s.width, s.depth, s.addr_bits) == (32, 200, 8)
    assert len(s.raddr) == len(s.waddr) == 8 and len(s.rdata) == 32
