"""Testbench driver of the engine for cocotb: load, start, wait, read back.

Runs inside the simulator (imported by :mod:`sim.cocotb_engine`). The engine runs on its own:
Python only acts before ``start`` (loading), once when ``done`` rises (or the watchdog timer
fires), and after (reading back). There is no Python work per clock cycle of a run.

Two ways in and out of the memories:

* ``backdoor`` (default): the bench writes ``$readmemh`` files and pulses ``tb_load`` of the
  wrapper ``lsp_tb``, which loads the SRAM arrays at one clock edge; Y comes back through
  ``$writememh``. Simulation-only, documented in ``docs/rtl.md``.
* ``host port``: one word per clock cycle through ``host_*``, exactly as a host would.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer

__all__ = ["EngineTB", "write_hex", "read_hex", "MEMORY_ORDER"]

MEMORY_ORDER = ("imem", "xmem", "wmem", "idx", "ymem")


def write_hex(path: str | Path, image: list[tuple[int, int]], word_bits: int) -> None:
    """Write ``(address, word)`` pairs as a ``$readmemh`` file (``@addr`` before each run)."""
    digits = (word_bits + 3) // 4
    lines = []
    prev = None
    for addr, word in sorted(image):
        if prev is None or addr != prev + 1:
            lines.append(f"@{addr:x}")
        lines.append(f"{word:0{digits}x}")
        prev = addr
    Path(path).write_text("\n".join(lines) + "\n")


def read_hex(path: str | Path) -> list[int]:
    """Words of a ``$writememh`` file, in order (comments and ``@`` lines skipped)."""
    words = []
    for line in Path(path).read_text().split("\n"):
        line = line.strip()
        if not line or line.startswith("//") or line.startswith("@"):
            continue
        try:
            words.append(int(line, 16))
        except ValueError:
            raise ValueError(f"{path}: word {len(words)} is not a defined hex value: "
                             f"{line[:40]!r}") from None
    return words


class EngineTB:
    """Drives the ``lsp_tb`` wrapper of one engine configuration.

    Parameters
    ----------
    dut : cocotb handle
        The ``lsp_tb`` top.
    job : dict
        The job file written by :func:`sim.harness.run_programs`.
    """

    def __init__(self, dut: Any, job: dict) -> None:
        self.dut = dut
        self.job = job
        self.period_ns = int(job["period_ns"])
        self.word_bits = job["word_bits"]
        self.counters = job["counters"]
        self.host_port = bool(job["host_port"])
        self.workdir = Path(os.getcwd())

    async def reset(self) -> None:
        dut = self.dut
        Clock(dut.clk, self.period_ns, unit="ns", impl="gpi").start()
        for name in ("start", "host_we", "host_sel", "host_addr", "host_wdata", "ctr_sel",
                     "reg_sel", "tb_load", "tb_dump", "tb_dump_lo", "tb_dump_hi"):
            getattr(dut, name).value = 0
        dut.rst.value = 1
        for _ in range(2):
            await FallingEdge(dut.clk)
        dut.rst.value = 0
        await FallingEdge(dut.clk)

    # ---- loading ----------------------------------------------------------------------------

    async def load(self, images: dict[str, list]) -> None:
        if self.host_port:
            await self._load_host(images)
        else:
            await self._load_backdoor(images)

    async def _load_backdoor(self, images: dict[str, list]) -> None:
        mask = 0
        for sel, name in enumerate(MEMORY_ORDER):
            image = images.get(name) or []
            if image:
                write_hex(self.workdir / f"lsp_load_{name}.hex", image, self.word_bits[name])
                mask |= 1 << sel
        if mask:
            self.dut.tb_load.value = mask
            await FallingEdge(self.dut.clk)
            self.dut.tb_load.value = 0

    async def _load_host(self, images: dict[str, list]) -> None:
        dut = self.dut
        for sel, name in enumerate(MEMORY_ORDER):
            for addr, word in images.get(name) or []:
                dut.host_sel.value = sel
                dut.host_addr.value = addr
                dut.host_wdata.value = word
                dut.host_we.value = 1
                await FallingEdge(dut.clk)
        dut.host_we.value = 0

    # ---- running ----------------------------------------------------------------------------

    async def run(self, watchdog_cycles: int) -> tuple[bool, int]:
        """Pulse ``start`` and wait for ``done``.

        Returns ``(finished, cycles)``: whether ``done`` rose before the watchdog, and the clock
        cycles from the edge that sampled ``start`` to the edge that raised ``done`` (the
        ``running`` cycles, so it equals the ``cycles`` counter).
        """
        dut = self.dut
        dut.start.value = 1
        t0 = _sim_ns() + self.period_ns / 2   # the rising edge that samples start
        await FallingEdge(dut.clk)
        dut.start.value = 0
        done_edge = RisingEdge(dut.done)
        fired = await First(done_edge, Timer(watchdog_cycles * self.period_ns, unit="ns"))
        cycles = round((_sim_ns() - t0) / self.period_ns)
        finished = fired is done_edge
        await FallingEdge(dut.clk)
        return finished, cycles

    # ---- reading back -----------------------------------------------------------------------

    async def read_counters(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(self.counters):
            self.dut.ctr_sel.value = i
            await Timer(1, unit="ps")
            out[name] = _u(self.dut.ctr_value)
        return out

    async def read_regs(self) -> list[int]:
        out = []
        for r in range(32):
            self.dut.reg_sel.value = r
            await Timer(1, unit="ps")
            out.append(_u(self.dut.reg_value))
        return out

    async def read_y(self, base: int, count: int) -> list[int]:
        if count <= 0:
            return []
        if self.host_port:
            return await self._read_host(MEMORY_ORDER.index("ymem"), base, count)
        dut = self.dut
        dump = self.workdir / "lsp_dump_ymem.hex"
        dump.unlink(missing_ok=True)
        dut.tb_dump_lo.value = base
        dut.tb_dump_hi.value = base + count - 1
        dut.tb_dump.value = 1
        await FallingEdge(dut.clk)
        dut.tb_dump.value = 0
        words = read_hex(dump)
        if len(words) != count:
            raise AssertionError(f"Y dump holds {len(words)} words, expected {count}")
        return words

    async def _read_host(self, sel: int, base: int, count: int) -> list[int]:
        dut = self.dut
        mask = (1 << self.word_bits["ymem"]) - 1
        dut.host_sel.value = sel
        dut.host_addr.value = base
        words = []
        for a in range(base + 1, base + count + 1):
            await FallingEdge(dut.clk)
            words.append(_u(dut.host_rdata) & mask)
            dut.host_addr.value = a if a < base + count else base
        return words

    # ---- one program ------------------------------------------------------------------------

    async def run_program(self, prog: dict) -> dict:
        """Load, run and read back one program of the job; return its result record."""
        t0 = time.perf_counter()
        await self.load(prog["images"])
        t1 = time.perf_counter()
        finished, cycles = await self.run(int(prog["watchdog_cycles"]))
        t2 = time.perf_counter()
        rec: dict[str, Any] = {"name": prog["name"], "watchdog": not finished,
                               "sim_cycles": cycles, "load_s": t1 - t0, "wall_s": t2 - t1}
        if finished:
            rec["error"] = bool(_u(self.dut.error))
            rec["err_code"] = _u(self.dut.err_code)
            rec["counters"] = await self.read_counters()
            rec["regs"] = await self.read_regs() if prog.get("read_regs") else None
            rec["y_words"] = await self.read_y(prog["y_base"], prog["y_words"])
        rec["read_s"] = time.perf_counter() - t2
        return rec


def _u(handle: Any) -> int:
    """Unsigned value of a signal (a 1-bit signal reads as a Logic, a wider one as a LogicArray)."""
    v = handle.value
    return v.to_unsigned() if hasattr(v, "to_unsigned") else int(v)


def _sim_ns() -> float:
    from cocotb.simtime import get_sim_time

    return float(get_sim_time(unit="ns"))
