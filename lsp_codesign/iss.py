"""Instruction-set simulator of the block-sparse engine: the executable form of ``docs/hw.md``.

It executes a program word by word, runs ``lsp.gemm`` phase by phase from the descriptors it
reads out of a DRAM image (:mod:`lsp_codesign.iss_engine`), moves data between DRAM and the
banked SRAMs as the DMA does, computes every tile from the memories (not from the arrays the
compiler started with), and counts every event as it happens. It shares no code with the
closed-form model (:mod:`lsp_codesign.schedule`), so tests hold the compiler, the model and the
RTL against it; it stops on exactly the errors the RTL stops on, after the same work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import HwConfig
from .isa import COUNTER_IDS, COUNTERS, ErrorCode, IllegalInstruction, OpKind, decode
from .iss_engine import TileEngine

__all__ = ["IssResult", "run_iss", "Memories"]

_MASK32 = 0xFFFFFFFF


@dataclass
class Memories:
    """What the engine sees: IMEM words, DRAM beats, and the SRAM banks (kept between runs).

    ``banks`` is created on first use (all zero, as the RTL's SRAMs at power-up) and holds,
    per data memory, two byte arrays (XMEM, WMEM, IDX) or, for YMEM, two int64 arrays of
    ``(depth, BK)`` values plus two valid-bit arrays.
    """

    imem: dict[int, int] = field(default_factory=dict)
    dram: dict[int, int] = field(default_factory=dict)
    banks: dict = field(default_factory=dict)

    @classmethod
    def from_program(cls, prog) -> "Memories":
        """IMEM and DRAM images of a :class:`~lsp_codesign.compiler.LayerProgram`."""
        return cls(imem=dict(enumerate(prog.words)), dram=dict(prog.dram))


@dataclass
class IssResult:
    counters: dict[str, int]
    regs: list[int]
    error: bool
    err_code: int
    mem: Memories

    def y_words(self, base: int, count: int) -> list[int]:
        """DRAM beats ``base .. base + count - 1`` (the Y area of a compiled layer)."""
        return [self.mem.dram.get(base + i, 0) for i in range(count)]


def run_iss(cfg: HwConfig, mem: Memories) -> IssResult:
    """Run the program in ``mem.imem`` from address 0 until ``lsp.halt`` or an error.

    Every run ends: a program without ``lsp.halt`` stops when it fetches past IMEM, and each
    ``lsp.gemm`` is bounded by its descriptor table, which must lie in DRAM.
    """
    c = {name: 0 for name in COUNTERS}
    regs = [0] * 32
    desc_base = n_tiles = 0
    depth = cfg.memories["imem"].depth
    engine = TileEngine(cfg, mem, c)

    def stop(code: ErrorCode) -> IssResult:
        return IssResult(c, regs, code != ErrorCode.NONE, int(code), mem)

    for pc in range(depth + 1):
        if pc >= depth:
            c["cycles"] += 1  # the fetch cycle that finds no instruction
            return stop(ErrorCode.PC_OVERFLOW)
        word = mem.imem.get(pc, 0)
        c["cycles"] += 2
        c["imem_reads"] += 1
        try:
            ins = decode(word)
        except IllegalInstruction:
            return stop(ErrorCode.ILLEGAL_INSTRUCTION)
        kind = OpKind.of(ins.mnemonic)
        r1, r2 = regs[ins.rs1], regs[ins.rs2]
        value = None
        if kind is OpKind.LUI:
            value = (ins.imm << 12) & _MASK32
        elif kind is OpKind.ADDI:
            value = (r1 + ins.imm) & _MASK32
        elif kind is OpKind.RDCTR:
            # the value at the start of the execute cycle: that cycle is not yet counted and
            # this instruction is not yet retired
            value = c[COUNTERS[r1]] if r1 < len(COUNTERS) else 0
            if r1 == COUNTER_IDS["cycles"]:
                value -= 1
            value &= _MASK32
        elif kind is OpKind.TILES:
            desc_base, n_tiles = r1, r2
        elif kind is OpKind.GEMM:
            code = engine.gemm(desc_base, n_tiles)
            if code != ErrorCode.NONE:
                return stop(code)
        elif kind is OpKind.HALT:
            c["insns"] += 1
            return stop(ErrorCode.NONE)
        if value is not None and ins.rd:
            regs[ins.rd] = value
        c["insns"] += 1
    raise AssertionError("unreachable: the loop ends at the IMEM depth")

