"""Derived hardware geometry of a config: memories, their banks, the DRAM, and the bounds the RTL
generator and the ISA put on them.

:class:`~lsp_codesign.config.HwConfig` calls :func:`derive_memories` and :func:`check_bounds` once
when it is built; everything else reads the results from the config. ``docs/hw.md`` section 3
gives the layout these numbers describe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from .config import HwConfig

__all__ = ["Engine", "Dataflow", "MEMORIES", "DATA_MEMORIES", "MemorySpec", "DramSpec",
           "sram_pj_per_64b", "derive_memories", "check_bounds", "DESC_BITS",
           "MAX_SRAM_DEPTH", "MAX_SRAM_BITS", "ACT_BITS", "WEIGHT_BITS", "ACC_BITS",
           "INSN_BITS", "word_bits"]


class Engine(str, Enum):
    """Which engine a config describes."""

    BLOCK_SPARSE = "block_sparse"   # the lsp-codesign engine: RTL in hw/, spec in docs/hw.md
    SYSTOLIC = "systolic"           # TPU-like array, analytic model (SCALE-Sim convention)

    def __str__(self) -> str:
        return self.value


class Dataflow(str, Enum):
    """SCALE-Sim dataflow of the systolic engine."""

    OS = "os"
    WS = "ws"
    IS = "is"

    def __str__(self) -> str:
        return self.value


#: Every on-chip memory, in ``host`` / bench order. IMEM has one bank; the others two.
MEMORIES: tuple[str, ...] = ("imem", "xmem", "wmem", "idx", "ymem")
#: The double-buffered data memories (two banks each).
DATA_MEMORIES: tuple[str, ...] = ("xmem", "wmem", "idx", "ymem")
#: Bits of one tile descriptor (16 x 32-bit words).
DESC_BITS = 512
#: The largest SRAM the generator builds (words, bits per word).
MAX_SRAM_DEPTH = 1 << 24
MAX_SRAM_BITS = 4096

# Fixed data types of the engine: int8 operands, int32 accumulation (wrap-around).
ACT_BITS = 8
WEIGHT_BITS = 8
ACC_BITS = 32
INSN_BITS = 32


@dataclass(frozen=True)
class MemorySpec:
    """One on-chip memory of the engine, with its derived geometry and energy.

    Attributes
    ----------
    name : str
        ``imem``, ``xmem``, ``wmem``, ``idx`` or ``ymem``.
    word_bits : int
        Width of one word (one access), valid bit included for YMEM.
    depth : int
        Words per bank.
    banks : int
        1 (IMEM) or 2 (double-buffered data memories).
    addr_bits : int
        Address width of one bank.
    capacity_kib : float
        ``banks * depth * word_bits / 8 / 1024``.
    access_pj : float
        Energy of one word access (read or write): the 64-bit figure of an SRAM the size of one
        bank, scaled by ``word_bits / 64``.
    """

    name: str
    word_bits: int
    depth: int
    banks: int
    addr_bits: int
    capacity_kib: float
    access_pj: float

    @property
    def word_bytes(self) -> int:
        return self.word_bits // 8

    @property
    def pj_per_byte(self) -> float:
        return self.access_pj / (self.word_bits / 8)


@dataclass(frozen=True)
class DramSpec:
    """The off-chip memory behind the engine's DRAM port (``docs/hw.md`` section 2).

    Attributes
    ----------
    bytes_per_cycle : int
        B: one beat per cycle, ``8 * B`` bits.
    latency_cycles : int
        L: paid once per DMA phase.
    capacity_mib : float
        Address range the engine may use.
    """

    bytes_per_cycle: int
    latency_cycles: int
    capacity_mib: float

    @property
    def beat_bits(self) -> int:
        return 8 * self.bytes_per_cycle

    @property
    def depth(self) -> int:
        """Beats of DRAM."""
        return int(self.capacity_mib * (1 << 20)) // self.bytes_per_cycle

    @property
    def addr_bits(self) -> int:
        return _clog2(self.depth)

    @property
    def desc_beats(self) -> int:
        return max(1, DESC_BITS // self.beat_bits)


def _clog2(v: int) -> int:
    return max(1, math.ceil(math.log2(v))) if v > 1 else 1


def sram_pj_per_64b(table: Mapping[float, float], capacity_kib: float) -> float:
    """Energy of a 64-bit access to an SRAM of ``capacity_kib``.

    Piecewise linear in log2(capacity) through the table's points; clamped to the first point
    below it and extended along the last segment above it (larger arrays keep getting costlier).
    """
    pts = sorted((float(k), float(v)) for k, v in table.items())
    xs = [math.log2(k) for k, _ in pts]
    ys = [v for _, v in pts]
    x = math.log2(max(capacity_kib, 1e-9))
    if len(pts) == 1 or x <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return ys[-1] + slope * (x - xs[-1])


def word_bits(cfg: "HwConfig") -> dict[str, int]:
    """Word width of each memory (``docs/hw.md`` section 3)."""
    if cfg.engine is Engine.SYSTOLIC:
        # the analytic model prices bytes; one word per element row of the array
        return {"imem": INSN_BITS, "xmem": cfg.block_n * ACT_BITS,
                "wmem": cfg.block_n * ACT_BITS, "idx": cfg.index_bits,
                "ymem": cfg.block_k * ACC_BITS}
    r = max(1, cfg.block_k // cfg.tile_m)
    return {"imem": INSN_BITS, "xmem": cfg.block_n * ACT_BITS,
            "wmem": r * cfg.block_n * ACT_BITS, "idx": cfg.index_bits,
            "ymem": cfg.block_k * ACC_BITS + 1}


def derive_memories(cfg: "HwConfig") -> dict[str, MemorySpec]:
    """Geometry and access energy of every memory of ``cfg``."""
    p = dict(cfg.mem_params)
    table = dict(cfg.sram_table)
    widths = word_bits(cfg)
    double = cfg.engine is Engine.BLOCK_SPARSE
    out = {}
    for name in MEMORIES:
        w = widths[name]
        banks = 2 if double and name != "imem" else 1
        if name == "imem":
            depth = int(p["imem_words"])
        else:
            depth = int(p[f"{name}_kib"] * 1024 * 8 // banks // w)
        bank_kib = depth * w / 8 / 1024
        out[name] = MemorySpec(name=name, word_bits=w, depth=depth, banks=banks,
                               addr_bits=_clog2(max(depth, 2)), capacity_kib=banks * bank_kib,
                               access_pj=sram_pj_per_64b(table, bank_kib) * w / 64)
    return out


def check_bounds(cfg: "HwConfig", fail) -> None:
    """Reject what the RTL generator or the ISA could not build or address.

    ``fail(key, message)`` returns the exception to raise (it names the file and key).
    """
    mems = cfg.memories
    if cfg.engine is not Engine.BLOCK_SPARSE:
        return
    for key, v, lo, hi in (("block", cfg.block_k, 2, 64), ("block", cfg.block_n, 2, 64),
                           ("tile_m", cfg.tile_m, 4, 256)):
        if not lo <= v <= hi:
            raise fail(key, f"the block_sparse engine needs {lo} <= {v} <= {hi}")
    if cfg.index_bits not in (8, 16, 32):
        raise fail("index_bits", f"the DMA moves whole bytes: 8, 16 or 32, got {cfg.index_bits}")
    for name, spec in mems.items():
        key = "memories.imem_words" if name == "imem" else f"memories.{name}_kib"
        if spec.depth < 2:
            raise fail(key, f"{spec.capacity_kib:g} KiB gives {spec.depth} word(s) of "
                            f"{spec.word_bits} bits per bank; the engine needs at least 2")
        if spec.depth > MAX_SRAM_DEPTH:
            raise fail(key, f"{spec.depth} words per bank exceed the generator's "
                            f"{MAX_SRAM_DEPTH} (2^24)")
    if mems["wmem"].depth < min(cfg.block_k, cfg.tile_m):
        raise fail("memories.wmem_kib",
                   f"one bank of {mems['wmem'].capacity_kib / 2:g} KiB cannot hold one "
                   f"{cfg.block_k}x{cfg.block_n} block ({cfg.block_k * cfg.block_n} bytes)")
    dram = cfg.dram
    b = dram.bytes_per_cycle
    if b & (b - 1) or not 4 <= b <= 64:
        raise fail("dram.bytes_per_cycle", f"must be a power of two from 4 to 64, got {b}")
    if not 1 <= dram.latency_cycles <= 65535:
        raise fail("dram.latency_cycles", f"must be 1..65535, got {dram.latency_cycles}")
    if dram.depth < 2 or dram.depth > (1 << 32):
        raise fail("dram.capacity_mib", f"{dram.capacity_mib:g} MiB is {dram.depth} beats; "
                                        "DRAM addresses are 32-bit beat numbers (2 .. 2^32)")
    if dram.capacity_mib > 4096:
        raise fail("dram.capacity_mib", f"{dram.capacity_mib:g} MiB: the simulated DRAM is "
                                        "capped at 4096 MiB")
