"""Run programs on the engine in Amaranth's own simulator (pure Python, no HDL simulator).

Same results as :func:`sim.harness.run_programs` (a list of :class:`~sim.harness.RtlResult`),
for unit tests of the Amaranth design on small configurations: it loads every memory and
reads Y back through the engine's host port, one word per cycle, exactly as a host would, and
steps the clock from Python, so it is far slower than Icarus or Verilator.
"""

from __future__ import annotations

import time
from typing import Sequence

from lsp_codesign.compiler import LayerProgram
from lsp_codesign.config import HwConfig
from lsp_codesign.isa import COUNTERS

from .harness import RtlResult, WatchdogTimeout, default_watchdog_cycles

__all__ = ["run_programs_amaranth"]

_MEMORIES = ("imem", "xmem", "wmem", "idx", "ymem")


def run_programs_amaranth(cfg: HwConfig, programs: Sequence[LayerProgram], *,
                          watchdog_cycles: int | None = None,
                          read_regs: bool = False) -> list[RtlResult]:
    """Run ``programs`` one after the other on one :class:`hw.engine.Engine` of ``cfg``.

    Raises
    ------
    WatchdogTimeout
        A program did not raise ``done`` within its cycle limit.
    """
    from amaranth.sim import Simulator

    from hw.engine import Engine

    dut = Engine(config=cfg)
    results: list[RtlResult] = []
    stuck: list[str] = []

    async def bench(ctx) -> None:
        for i, prog in enumerate(programs):
            name = prog.extra.get("name", f"program {i}")
            images = {"imem": dict(enumerate(prog.words)), "xmem": prog.xmem,
                      "wmem": prog.wmem, "idx": prog.idx}
            t0 = time.perf_counter()
            ctx.set(dut.host_we, 1)
            for sel, mem in enumerate(_MEMORIES):
                for addr, word in sorted(images.get(mem, {}).items()):
                    ctx.set(dut.host_sel, sel)
                    ctx.set(dut.host_addr, addr)
                    ctx.set(dut.host_wdata, word)
                    await ctx.tick()
            ctx.set(dut.host_we, 0)
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
            ctx.set(dut.host_sel, _MEMORIES.index("ymem"))
            mask = (1 << cfg.memories["ymem"].word_bits) - 1
            y = []
            for addr in range(prog.y_base, prog.y_base + prog.y_words):
                ctx.set(dut.host_addr, addr)
                await ctx.tick()
                y.append(ctx.get(dut.host_rdata) & mask)
            results.append(RtlResult(
                y_words=y, counters=counters, error=bool(ctx.get(dut.error)),
                err_code=ctx.get(dut.err_code), wall_s=t2 - t1, name=name,
                sim_cycles=cycles - 1, load_s=t1 - t0, read_s=time.perf_counter() - t2,
                regs=regs))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    if stuck:
        raise WatchdogTimeout(stuck[0])
    return results
