"""Testbench driver of the engine for cocotb: load, start, wait, read back.

Runs inside the simulator (imported by :mod:`sim.cocotb_engine`). The engine runs on its own:
Python only acts before ``start`` (loading), once when ``done`` rises (or the watchdog timer
fires), and after (reading back). There is no Python work per clock cycle of a run.

Two ways in and out of the memories:

* ``backdoor`` (default): the bench writes ``$readmemh`` files and pulses ``tb_load_imem`` /
  ``tb_load_dram`` of the wrapper ``lsp_tb``, which loads IMEM and the DRAM at one clock edge; Y
  comes back from the DRAM through ``$writememh``. Simulation-only, documented in
  ``docs/rtl.md``.
* ``host port``: one word per clock cycle, IMEM through the engine's ``imem_*`` port and the
  DRAM through the bench's ``bd_*`` port, exactly as a host would.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer

__all__ = ["EngineTB", "write_hex", "read_hex"]


def write_hex(path: str | Path, image: Any, word_bits: int) -> None:
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
        self.beat_bits = int(job["beat_bits"])
        self.counters = job["counters"]
        self.host_port = bool(job["host_port"])
        self.workdir = Path(os.getcwd())

    async def reset(self) -> None:
        dut = self.dut
        Clock(dut.clk, self.period_ns, unit="ns", impl="gpi").start()
        for name in ("start", "imem_we", "imem_addr", "imem_wdata", "ctr_sel", "reg_sel",
                     "bd_addr", "bd_wdata", "bd_we", "tb_load_imem", "tb_load_dram",
                     "tb_clear", "tb_dump", "tb_dump_lo", "tb_dump_hi"):
            getattr(dut, name).value = 0
        for _ in range(3):          # the wrapper holds the engine in reset for two cycles
            await FallingEdge(dut.clk)

    # ---- loading ----------------------------------------------------------------------------

    async def pulse(self, *names: str) -> None:
        for name in names:
            getattr(self.dut, name).value = 1
        await FallingEdge(self.dut.clk)
        for name in names:
            getattr(self.dut, name).value = 0

    async def load(self, prog: dict) -> None:
        if prog.get("clear"):
            await self.pulse("tb_clear")
        dram_file = self.workdir / prog["dram_hex"]
        if self.host_port:
            await self._load_host(prog["imem"], dram_file)
            return
        write_hex(self.workdir / "lsp_load_imem.hex", prog["imem"], 32)
        shutil.copyfile(dram_file, self.workdir / "lsp_load_dram.hex")
        await self.pulse("tb_load_imem", "tb_load_dram")

    async def _load_host(self, imem: list, dram_file: Path) -> None:
        dut = self.dut   # the wrapper registers these ports: each write lands a cycle later
        for addr, word in imem:
            dut.imem_addr.value = addr
            dut.imem_wdata.value = word
            dut.imem_we.value = 1
            await FallingEdge(dut.clk)
        dut.imem_we.value = 0
        await FallingEdge(dut.clk)
        addr = 0
        for line in dram_file.read_text().split():
            if line.startswith("@"):
                addr = int(line[1:], 16)
                continue
            dut.bd_addr.value = addr
            dut.bd_wdata.value = int(line, 16)
            dut.bd_we.value = 1
            await FallingEdge(dut.clk)
            addr += 1
        dut.bd_we.value = 0
        await FallingEdge(dut.clk)

    # ---- running ----------------------------------------------------------------------------

    async def run(self, watchdog_cycles: int) -> tuple[bool, int]:
        """Pulse ``start`` and wait for ``done``.

        Returns ``(finished, cycles)``: whether ``done`` rose before the watchdog, and the clock
        cycles from the edge that sampled ``start`` to the edge that raised ``done`` (the
        ``running`` cycles, so it equals the ``cycles`` counter).
        """
        dut = self.dut
        dut.start.value = 1
        # the wrapper registers start: the engine samples it one rising edge later
        t0 = _sim_ns() + 1.5 * self.period_ns
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
        """DRAM beats ``base .. base + count - 1`` (the Y area)."""
        if count <= 0:
            return []
        dut = self.dut
        if self.host_port:
            words = []               # the address is registered: data two edges later
            dut.bd_addr.value = base
            await FallingEdge(dut.clk)
            for a in range(base + 1, base + count + 1):
                dut.bd_addr.value = a if a < base + count else base
                await FallingEdge(dut.clk)
                words.append(_u(dut.bd_rdata))
            return words
        dump = self.workdir / "lsp_dump_dram.hex"
        dump.unlink(missing_ok=True)
        dut.tb_dump_lo.value = base
        dut.tb_dump_hi.value = base + count - 1
        await self.pulse("tb_dump")
        words = read_hex(dump)
        if len(words) != count:
            raise AssertionError(f"Y dump holds {len(words)} words, expected {count}")
        return words

    # ---- one program ------------------------------------------------------------------------

    async def run_program(self, prog: dict) -> dict:
        """Load, run and read back one program of the job; return its result record."""
        t0 = time.perf_counter()
        await self.load(prog)
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
