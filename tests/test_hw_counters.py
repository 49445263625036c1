# amaranth: UnusedElaboratable=no
"""Performance counters: weighted events, clear, numbered read ports, unknown numbers."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from hw.counters import PerfCounters


def test_counters_count_weighted_events_and_clear():
    dut = PerfCounters(weights=(1, 3, 256), width=16, read_ports=2, sel_bits=8)
    events = [0b001, 0b011, 0b111, 0b000, 0b100, 0b110]
    got = {}

    async def bench(ctx):
        for ev in events:
            ctx.set(dut.event, ev)
            await ctx.tick()
        ctx.set(dut.event, 0)
        for port in range(2):
            for sel in (0, 1, 2, 3, 200):
                ctx.set(dut.read_sel[port], sel)
                got[port, sel] = ctx.get(dut.read_value[port])
        ctx.set(dut.event, 0b111)
        ctx.set(dut.clear, 1)          # clear wins over the events of the same cycle
        await ctx.tick()
        ctx.set(dut.clear, 0)
        ctx.set(dut.event, 0)
        ctx.set(dut.read_sel[0], 2)
        got["cleared"] = ctx.get(dut.read_value[0])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    expect = {0: 3, 1: 3 * 3, 2: 256 * 3, 3: 0, 200: 0}   # no counter 3 or 200: zero
    for port in range(2):
        for sel, value in expect.items():
            assert got[port, sel] == value, (port, sel)
    assert got["cleared"] == 0


def test_counters_wrap_around():
    dut = PerfCounters(weights=(5,), width=4, read_ports=1, sel_bits=1)
    got = []

    async def bench(ctx):
        ctx.set(dut.event, 1)
        for _ in range(4):
            await ctx.tick()
            got.append(ctx.get(dut.read_value[0]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == [5, 10, 15, 4]   # 20 mod 16


def test_counter_parameters_are_checked():
    with pytest.raises(TypeError, match=r"^weights must be a non-empty tuple of integers, "
                                        r"not \(\)$"):
        PerfCounters(weights=())
    with pytest.raises(ValueError, match=r"^weights\[1\] must be at least 1, not 0$"):
        PerfCounters(weights=(1, 0))
    with pytest.raises(ValueError, match=r"^weights\[0\] must be at most 15, not 16$"):
        PerfCounters(weights=(16,), width=4)
    with pytest.raises(ValueError, match=r"^sel_bits=1 cannot number 3 counters$"):
        PerfCounters(weights=(1, 1, 1), sel_bits=1)
    c = PerfCounters(weights=(1, 256), width=48, read_ports=2)
    assert (c.count, c.width, c.weights) == (2, 48, (1, 256))
    assert len(c.read_sel) == len(c.read_value) == 2
