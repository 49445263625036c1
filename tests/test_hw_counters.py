# amaranth: UnusedElaboratable=no
"""Performance counters: per-cycle increments, clear, numbered read ports, unknown numbers."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from hw.counters import PerfCounters


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_counters_add_their_increments_and_clear():
    dut = PerfCounters(count=3, width=16, inc_bits=9, read_ports=2, sel_bits=8)
    incs = [(1, 0, 256), (1, 2, 0), (0, 2, 256), (0, 0, 0), (1, 1, 1)]
    got = {}

    async def bench(ctx):
        for row in incs:
            for i, v in enumerate(row):
                ctx.set(dut.inc[i], v)
            await ctx.tick()
        for i in range(3):
            ctx.set(dut.inc[i], 0)
        for port in range(2):
            for sel in (0, 1, 2, 3, 200):
                ctx.set(dut.read_sel[port], sel)
                got[port, sel] = ctx.get(dut.read_value[port])
        ctx.set(dut.inc[2], 5)
        ctx.set(dut.clear, 1)          # clear wins over the increments of the same cycle
        await ctx.tick()
        ctx.set(dut.clear, 0)
        ctx.set(dut.inc[2], 0)
        ctx.set(dut.read_sel[0], 2)
        got["cleared"] = ctx.get(dut.read_value[0])

    run(dut, bench)
    expect = {0: 3, 1: 5, 2: 513, 3: 0, 200: 0}   # no counter 3 or 200: zero
    for port in range(2):
        for sel, value in expect.items():
            assert got[port, sel] == value, (port, sel)
    assert got["cleared"] == 0


def test_counters_wrap_around():
    dut = PerfCounters(count=1, width=4, inc_bits=3, read_ports=1, sel_bits=1)
    got = []

    async def bench(ctx):
        ctx.set(dut.inc[0], 5)
        for _ in range(4):
            await ctx.tick()
            got.append(ctx.get(dut.read_value[0]))

    run(dut, bench)
    assert got == [5, 10, 15, 4]   # 20 mod 16


def test_counter_parameters_are_checked():
    with pytest.raises(ValueError, match=r"^count must be at least 1, not 0$"):
        PerfCounters(count=0)
    with pytest.raises(ValueError, match=r"^inc_bits must be at most 4, not 5$"):
        PerfCounters(count=1, width=4, inc_bits=5)
    with pytest.raises(ValueError, match=r"^sel_bits=1 cannot number 3 counters$"):
        PerfCounters(count=3, sel_bits=1)
    c = PerfCounters(count=2, width=48, read_ports=2)
    assert (c.count, c.width) == (2, 48)
    assert len(c.read_sel) == len(c.read_value) == len(c.inc) - 0 == 2
