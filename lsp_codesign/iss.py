"""Instruction-set simulator of the block-sparse engine: a plain-Python reference.

It executes a program word by word over memory images laid out as in ``docs/hw.md``, computes
the GEMM from those memories (not from the arrays the compiler started with), and counts every
event by walking the documented schedule phase by phase (setup, fill, block steps, drains).
It is the executable form of the spec, independent of the closed-form cycle model, so tests can
hold each of the compiler, the closed form and the RTL against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .compiler import LayerProgram, unpack_words
from .config import ACC_BITS, HwConfig
from .isa import COUNTER_IDS, COUNTERS, ERROR_CODES, IllegalInstruction, decode

__all__ = ["IssResult", "run_iss", "Memories"]

_MASK32 = 0xFFFFFFFF


@dataclass
class Memories:
    """Sparse word images of the five memories (address -> int word)."""

    imem: dict[int, int] = field(default_factory=dict)
    xmem: dict[int, int] = field(default_factory=dict)
    wmem: dict[int, int] = field(default_factory=dict)
    idx: dict[int, int] = field(default_factory=dict)
    ymem: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_program(cls, prog: LayerProgram) -> "Memories":
        return cls(imem=dict(enumerate(prog.words)), xmem=dict(prog.xmem), wmem=dict(prog.wmem),
                   idx=dict(prog.idx))


@dataclass
class IssResult:
    counters: dict[str, int]
    regs: list[int]
    error: bool
    err_code: int
    mem: Memories

    def y_words(self, base: int, count: int) -> list[int]:
        return [self.mem.ymem.get(base + i, 0) for i in range(count)]


def run_iss(cfg: HwConfig, mem: Memories, *, max_insns: int = 100_000) -> IssResult:
    """Run the program in ``mem.imem`` from address 0 until ``lsp.halt`` or an error."""
    c = {name: 0 for name in COUNTERS}
    regs = [0] * 32
    st = {"M": 0, "N": 0, "K": 0, "x": 0, "w": 0, "y": 0, "rp": 0, "ci": 0, "nnz": 0}
    depth = cfg.memories["imem"].depth
    pc = 0

    def stop(code: str) -> IssResult:
        return IssResult(c, regs, code != "none", ERROR_CODES[code], mem)

    for _ in range(max_insns):
        if pc >= depth:
            c["cycles"] += 1  # the fetch cycle that finds no instruction
            return stop("pc_overflow")
        word = mem.imem.get(pc, 0)
        c["cycles"] += 2
        c["imem_reads"] += 1
        try:
            ins = decode(word)
        except IllegalInstruction:
            return stop("illegal_instruction")
        op = ins.mnemonic
        r1, r2 = regs[ins.rs1], regs[ins.rs2]
        if op == "lui":
            value = (ins.imm << 12) & _MASK32
        elif op == "addi":
            value = (regs[ins.rs1] + ins.imm) & _MASK32
        elif op == "lsp.rdctr":
            # the value at the start of the execute cycle: that cycle is not yet counted and
            # this instruction is not yet retired
            value = c[COUNTERS[r1]] if r1 < len(COUNTERS) else 0
            if r1 == COUNTER_IDS["cycles"]:
                value -= 1
            value &= _MASK32
        else:
            value = None
        if value is not None:
            if ins.rd:
                regs[ins.rd] = value
        elif op == "lsp.dim_mn":
            st["M"], st["N"] = r1, r2
        elif op == "lsp.dim_k":
            st["K"] = r1
        elif op == "lsp.base_xw":
            st["x"], st["w"] = r1, r2
        elif op == "lsp.base_y":
            st["y"] = r1
        elif op == "lsp.base_idx":
            st["rp"], st["ci"] = r1, r2
        elif op == "lsp.nnz":
            st["nnz"] = r1
        elif op == "lsp.gemm":
            if 0 in (st["M"], st["N"], st["K"]):
                return stop("bad_dims")
            ok = _gemm(cfg, mem, st, c)
            if not ok:
                return stop("index")
        elif op == "lsp.halt":
            c["insns"] += 1
            return stop("none")
        c["insns"] += 1
        pc += 1
    raise RuntimeError(f"ISS: no halt after {max_insns} instructions")


def _gemm(cfg: HwConfig, mem: Memories, st: dict, c: dict) -> bool:
    """Walk the documented GEMM schedule; compute Y from memory; count every event."""
    bm, bk, bn = cfg.tile_m, cfg.block_k, cfg.block_n
    d = cfg.block_step_cycles
    mt, kb, nb = (math.ceil(st["M"] / bm), math.ceil(st["K"] / bk), math.ceil(st["N"] / bn))
    nnz = st["nnz"]
    xdep, wdep, ydep = (cfg.memories[n].depth for n in ("xmem", "wmem", "ymem"))
    idep = cfg.memories["idx"].depth

    def idx_read(addr: int) -> int:
        c["idx_reads"] += 1
        return mem.idx.get(addr % idep, 0)

    def block_rows(q: int) -> np.ndarray:
        words = [mem.wmem.get((st["w"] + q * bk + r) % wdep, 0) for r in range(bk)]
        c["wmem_reads"] += bk
        return unpack_words(words, 8, bn)  # (BK, BN)

    compute0 = c["compute"]
    busy = 1  # setup
    row_end = idx_read(st["rp"] + 1)
    nxt_block = nxt_col = None
    if nnz > 0:
        busy += cfg.fill_cycles
        c["stall"] += cfg.fill_cycles
        nxt_col = idx_read(st["ci"] + 0)
        nxt_block = block_rows(0)
    for t in range(mt):
        q = 0
        for i in range(kb):
            acc = np.zeros((bm, bk), dtype=np.int64)
            while q < row_end:
                w_blk, col = nxt_block, nxt_col
                # the next block of the sequence loads during this step
                if q + 1 < nnz:
                    nxt_col, nxt_block = idx_read(st["ci"] + q + 1), block_rows(q + 1)
                elif t + 1 < mt and nnz > 0:
                    nxt_col, nxt_block = idx_read(st["ci"] + 0), block_rows(0)
                if w_blk is None or col is None:
                    return False
                xw = [mem.xmem.get((st["x"] + (t * bm + r) * nb + col) % xdep, 0)
                      for r in range(bm)]
                c["xmem_reads"] += bm
                acc += unpack_words(xw, 8, bn) @ w_blk.T
                busy += d
                c["compute"] += bm
                c["stall"] += d - bm
                q += 1
            # drain: settle cycle reads the next row's end pointer, then BM writes
            if i + 1 < kb:
                row_end = idx_read(st["rp"] + i + 2)
            elif t + 1 < mt:
                row_end = idx_read(st["rp"] + 1)
            acc = (acc + (1 << 31)) % (1 << 32) - (1 << 31)
            for r in range(bm):
                val = 0
                for j in range(bk):
                    val |= (int(acc[r, j]) & _MASK32) << (ACC_BITS * j)
                mem.ymem[(st["y"] + (t * bm + r) * kb + i) % ydep] = val
            c["ymem_writes"] += bm
            busy += cfg.drain_cycles
        if q != nnz:
            c["busy"] += busy
            c["cycles"] += busy
            return False
    c["macs"] += (c["compute"] - compute0) * bk * bn
    c["busy"] += busy
    c["cycles"] += busy
    return True
