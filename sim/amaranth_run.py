"""Run programs on the engine in Amaranth's own simulator (pure Python, no HDL simulator).

Same results as :func:`sim.harness.run_programs` (a list of :class:`~sim.harness.RtlResult`),
for unit tests of the Amaranth design on small configurations. The DRAM is an Amaranth
:class:`~amaranth.lib.memory.Memory` behind the engine's DRAM port, written and read back by the
testbench directly; the program goes into IMEM through the engine's own port. The clock is
stepped from Python, so this is far slower than Icarus or Verilator.
"""

from __future__ import annotations

import time
from typing import Sequence

from amaranth import Elaboratable, Module
from amaranth.lib.memory import Memory

from lsp_codesign.compiler import LayerProgram
from lsp_codesign.config import HwConfig
from lsp_codesign.isa import COUNTERS

from .harness import RtlResult, WatchdogTimeout, default_watchdog_cycles

__all__ = ["run_programs_amaranth", "EngineWithDram"]


class EngineWithDram(Elaboratable):
    """The engine with a DRAM model of the config's depth behind its DRAM port."""

    def __init__(self, cfg: HwConfig) -> None:
        from hw.engine import Engine

        self.engine = Engine(config=cfg)
        self.dram = Memory(shape=cfg.dram.beat_bits, depth=cfg.dram.depth, init=[])

    def elaborate(self, platform):
        m = Module()
        e = m.submodules.engine = self.engine
        m.submodules.dram = self.dram
        rd, wr = self.dram.read_port(), self.dram.write_port()
        m.d.comb += [rd.addr.eq(e.dram_addr), e.dram_rdata.eq(rd.data),
                     wr.addr.eq(e.dram_addr), wr.data.eq(e.dram_wdata), wr.en.eq(e.dram_we)]
        return m


def run_programs_amaranth(cfg: HwConfig, programs: Sequence[LayerProgram], *,
                          watchdog_cycles: int | None = None, read_regs: bool = False,
                          clear: bool = False) -> list[RtlResult]:
    """Run ``programs`` one after the other on one engine of ``cfg`` (DRAM and SRAMs kept).

    With ``clear``, every program runs on a freshly built engine and DRAM instead (power-up
    state, as the ISS starts).

    Raises
    ------
    WatchdogTimeout
        A program did not raise ``done`` within its cycle limit.
    """
    if clear:
        return [r for p in programs
                for r in run_programs_amaranth(cfg, [p], watchdog_cycles=watchdog_cycles,
                                               read_regs=read_regs)]
    from amaranth.sim import Simulator

    top = EngineWithDram(cfg)
    dut = top.engine
    results: list[RtlResult] = []
    stuck: list[str] = []

    async def bench(ctx) -> None:
        for i, prog in enumerate(programs):
            name = prog.extra.get("name", f"program {i}")
            t0 = time.perf_counter()
            for addr, word in prog.dram.items():
                ctx.set(top.dram.data[addr], word)
            ctx.set(dut.imem_we, 1)
            for addr, word in enumerate(prog.words):
                ctx.set(dut.imem_addr, addr)
                ctx.set(dut.imem_wdata, word)
                await ctx.tick()
            ctx.set(dut.imem_we, 0)
            t1 = time.perf_counter()
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            limit = watchdog_cycles or default_watchdog_cycles(cfg, prog)
            cycles = 1
            while not ctx.get(dut.done):
                if cycles >= limit:
                    stuck.append(f"amaranth: watchdog: {name} did not raise done within "
                                 f"{limit} cycles")
                    return
                await ctx.tick()
                cycles += 1
            t2 = time.perf_counter()
            counters = {}
            for n, ctr in enumerate(COUNTERS):
                ctx.set(dut.ctr_sel, n)
                counters[ctr] = ctx.get(dut.ctr_value)
            regs = None
            if read_regs:
                regs = []
                for r in range(32):
                    ctx.set(dut.reg_sel, r)
                    regs.append(ctx.get(dut.reg_value))
            y = [ctx.get(top.dram.data[prog.y_base + a]) for a in range(prog.y_words)]
            results.append(RtlResult(
                y_words=y, counters=counters, error=bool(ctx.get(dut.error)),
                err_code=ctx.get(dut.err_code), wall_s=t2 - t1, name=name,
                sim_cycles=cycles - 1, load_s=t1 - t0, read_s=time.perf_counter() - t2,
                regs=regs))

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    if stuck:
        raise WatchdogTimeout(stuck[0])
    return results
