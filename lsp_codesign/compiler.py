"""Lower a masked int8 layer to a program and a memory image for the block-sparse engine.

``compile_layer`` produces everything a host (or a cocotb bench) loads before pulsing ``start``:
the instruction words for IMEM and the words for XMEM, WMEM, IDX, plus where to read Y back.
``reference_gemm`` is the numpy result the engine must reproduce bit for bit.

Memory word packing (``docs/hw.md``, "Memory map"): element ``j`` of a word occupies bits
``[w*j + w-1 : w*j]`` (element 0 in the least significant bits), two's complement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import LspError

from .config import ACC_BITS, HwConfig
from .isa import Instr, encode, li, program_text
from .packing import BlockGrid, PackedWeight, pack

__all__ = [
    "CompileError", "Bases", "LayerProgram", "compile_layer", "layer_program",
    "layer_program_length", "reference_gemm", "pack_words", "unpack_words", "x_image",
    "read_y",
]

_A0, _A1 = 10, 11


class CompileError(LspError, ValueError):
    """A layer cannot be lowered for this config (names the memory and the sizes involved)."""


@dataclass(frozen=True)
class Bases:
    """Base addresses (in words / entries) of a layer's data in each memory."""

    x: int = 0
    w: int = 0
    y: int = 0
    row_ptr: int = 0
    col_idx: int | None = None  # default: right after the row pointers


@dataclass(frozen=True)
class LayerProgram:
    """A compiled layer: program words, memory images and the geometry to read Y back.

    Attributes
    ----------
    m, n, k : int
        GEMM shape: ``Y[M x K] = X[M x N] . W^T``.
    words : list[int]
        IMEM image (instruction words).
    text : str
        The program as assembly.
    xmem, wmem, idx : dict[int, int]
        Sparse memory images: address -> word value.
    y_base, y_words : int
        Where Y lies in YMEM and how many words it spans.
    packed : PackedWeight
        The block-sparse weight the program runs.
    mt : int
        Token tiles ``ceil(M / BM)``.
    extra : dict
        ``name``: the layer's name, used in progress lines and error messages.
    """

    m: int
    n: int
    k: int
    words: list[int]
    text: str
    xmem: dict[int, int]
    wmem: dict[int, int]
    idx: dict[int, int]
    y_base: int
    y_words: int
    packed: PackedWeight
    mt: int
    extra: dict = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        return self.packed.nnz


def pack_words(values: np.ndarray, elem_bits: int) -> list[int]:
    """Pack a 2-D integer array, one row per word, element 0 in the low bits."""
    v = np.asarray(values)
    if v.ndim != 2:
        raise ValueError("pack_words expects a 2-D array (words x elements)")
    if elem_bits == 8:
        raw = v.astype(np.int8).view(np.uint8)
    elif elem_bits == 16:
        raw = v.astype(np.int64).astype(np.uint16).view(np.uint8)
    elif elem_bits == 32:
        raw = v.astype(np.int64).astype(np.uint32).astype("<u4").view(np.uint8)
    else:
        raise ValueError(f"unsupported element width {elem_bits}")
    raw = np.ascontiguousarray(raw).reshape(v.shape[0], -1)
    return [int.from_bytes(row.tobytes(), "little") for row in raw]


def unpack_words(words: list[int], elem_bits: int, elems: int, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_words`: words -> ``(len(words), elems)`` int64 array."""
    nbytes = elem_bits * elems // 8
    buf = b"".join(int(w).to_bytes(nbytes, "little") for w in words)
    dt = {8: "<i1", 16: "<i2", 32: "<i4"}[elem_bits] if signed else \
        {8: "<u1", 16: "<u2", 32: "<u4"}[elem_bits]
    return np.frombuffer(buf, dtype=dt).reshape(len(words), elems).astype(np.int64)


def reference_gemm(x: np.ndarray, w: np.ndarray, mask: np.ndarray | None,
                   block_k: int, block_n: int) -> np.ndarray:
    """``Y = X . (W * mask)^T`` in int32 with two's complement wrap-around, as the engine does."""
    x64 = np.asarray(x, dtype=np.int64)
    w64 = np.asarray(w, dtype=np.int64)
    if mask is not None:
        from .packing import expand_mask
        w64 = w64 * expand_mask(mask, w64.shape[0], w64.shape[1], block_k, block_n)
    y = x64 @ w64.T
    return ((y + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int64)


def layer_program(m: int, n: int, k: int, nnz: int, bases: Bases, kb: int) -> list[Instr]:
    """The instruction sequence that runs one layer (fixed length: see :func:`isa.li`)."""
    cidx = bases.col_idx if bases.col_idx is not None else bases.row_ptr + kb + 1
    seq: list[Instr] = []
    seq += li(_A0, m) + li(_A1, n) + [Instr("lsp.dim_mn", rs1=_A0, rs2=_A1)]
    seq += li(_A0, k) + [Instr("lsp.dim_k", rs1=_A0)]
    seq += li(_A0, bases.x) + li(_A1, bases.w) + [Instr("lsp.base_xw", rs1=_A0, rs2=_A1)]
    seq += li(_A0, bases.y) + [Instr("lsp.base_y", rs1=_A0)]
    seq += li(_A0, bases.row_ptr) + li(_A1, cidx) + [Instr("lsp.base_idx", rs1=_A0, rs2=_A1)]
    seq += li(_A0, nnz) + [Instr("lsp.nnz", rs1=_A0)]
    seq += [Instr("lsp.gemm"), Instr("lsp.fence"), Instr("lsp.halt")]
    return seq


def layer_program_length() -> int:
    """Instructions in a one-layer program (independent of the layer: ``li`` is fixed length)."""
    return len(layer_program(1, 1, 1, 0, Bases(), 1))


def x_image(cfg: HwConfig, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Activations laid out as XMEM words: token-major, BN int8 per word, zero padded.

    Returns ``(words x BN array, MT)``: word ``(t * NB + j)`` holds ``X[t, j*BN:(j+1)*BN]``.
    """
    m, n = x.shape
    bm, bn = cfg.tile_m, cfg.block_n
    mt, nb = math.ceil(m / bm), math.ceil(n / bn)
    xp = np.zeros((mt * bm, nb * bn), dtype=np.int8)
    xp[:m, :n] = x
    return xp.reshape(mt * bm * nb, bn), mt


def compile_layer(cfg: HwConfig, x: np.ndarray, w: np.ndarray, mask: np.ndarray | None = None,
                  *, bases: Bases = Bases(), name: str = "layer") -> LayerProgram:
    """Lower ``Y = X . (W * mask)^T`` to a program and memory image for ``cfg``.

    Parameters
    ----------
    cfg : HwConfig
        A ``block_sparse`` engine configuration.
    x : numpy.ndarray
        ``(M, N)`` int8 activations.
    w : numpy.ndarray
        ``(K, N)`` int8 weight (torch ``nn.Linear`` layout).
    mask : numpy.ndarray, optional
        ``(KB, NB)`` block mask, True = kept. None keeps every block.
    bases : Bases
        Where to place the data in each memory.
    name : str
        Layer name used in error messages.
    """
    if cfg.engine != "block_sparse":
        raise CompileError(f"{name}: config {cfg.name} has engine {cfg.engine}; only the "
                           "block_sparse engine runs programs")
    x = np.asarray(x)
    w = np.asarray(w)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise CompileError(f"{name}: X {tuple(x.shape)} and W {tuple(w.shape)} do not form "
                           "Y = X . W^T (need X (M, N), W (K, N))")
    for what, a in (("X", x), ("W", w)):
        if a.dtype != np.int8:
            if not np.issubdtype(a.dtype, np.integer) or a.min(initial=0) < -128 \
                    or a.max(initial=0) > 127:
                raise CompileError(f"{name}: {what} must hold int8 values")
    m, n = x.shape
    k = w.shape[0]
    if m == 0 or n == 0 or k == 0:
        raise CompileError(f"{name}: empty GEMM (M={m}, N={n}, K={k})")
    grid = BlockGrid(k, n, cfg.block_k, cfg.block_n)
    if mask is None:
        mask = np.ones(grid.shape, dtype=bool)
    packed = pack(w.astype(np.int8), mask, cfg.block_k, cfg.block_n)
    xw, mt = x_image(cfg, x.astype(np.int8))
    kb, nb = grid.kb, grid.nb
    cidx_base = bases.col_idx if bases.col_idx is not None else bases.row_ptr + kb + 1
    y_words = mt * cfg.tile_m * kb

    need = {
        "xmem": (bases.x, xw.shape[0]),
        "wmem": (bases.w, packed.nnz * cfg.block_k),
        "ymem": (bases.y, y_words),
    }
    for mem, (base, count) in need.items():
        spec = cfg.memories[mem]
        if base < 0 or base + count > spec.depth:
            raise CompileError(
                f"{name}: needs {count} {mem.upper()} words at base {base} "
                f"({count * spec.word_bytes / 1024:.1f} KiB) but {cfg.source or cfg.name} has "
                f"{spec.depth} words ({spec.capacity_kib:g} KiB); raise memories.{mem}_kib")
    idx_spec = cfg.memories["idx"]
    idx_end = max(bases.row_ptr + kb + 1, cidx_base + packed.nnz)
    if min(bases.row_ptr, cidx_base) < 0 or idx_end > idx_spec.depth:
        raise CompileError(f"{name}: needs IDX entries up to {idx_end} but {cfg.source or cfg.name}"
                           f" has {idx_spec.depth}; raise memories.idx_kib")
    if packed.nnz >= (1 << cfg.index_bits) or nb > (1 << cfg.index_bits):
        raise CompileError(f"{name}: {packed.nnz} kept blocks / {nb} block columns do not fit "
                           f"index_bits={cfg.index_bits}")
    instrs = layer_program(m, n, k, packed.nnz, bases, kb)
    imem = cfg.memories["imem"]
    if len(instrs) > imem.depth:
        raise CompileError(f"{name}: program of {len(instrs)} instructions exceeds IMEM "
                           f"({imem.depth} words)")
    words = [encode(i) for i in instrs]
    xmem = {bases.x + a: v for a, v in enumerate(pack_words(xw, 8))}
    wrows = packed.blocks.reshape(-1, cfg.block_n) if packed.nnz else \
        np.zeros((0, cfg.block_n), np.int8)
    wmem = {bases.w + a: v for a, v in enumerate(pack_words(wrows, 8))} if packed.nnz else {}
    idx = {bases.row_ptr + i: int(v) for i, v in enumerate(packed.row_ptr)}
    idx.update({cidx_base + i: int(v) for i, v in enumerate(packed.col_idx)})
    return LayerProgram(m=m, n=n, k=k, words=words, text=program_text(instrs), xmem=xmem,
                        wmem=wmem, idx=idx, y_base=bases.y, y_words=y_words, packed=packed,
                        mt=mt, extra={"name": name})


def read_y(cfg: HwConfig, prog: LayerProgram, ymem_words: list[int]) -> np.ndarray:
    """Unpack the ``(M, K)`` int32 result from the Y words read back (from ``prog.y_base``)."""
    kb = prog.packed.grid.kb
    if len(ymem_words) != prog.y_words:
        raise ValueError(f"expected {prog.y_words} Y words, got {len(ymem_words)}")
    arr = unpack_words(ymem_words, ACC_BITS, cfg.block_k)  # (MT*BM*KB, BK)
    y = arr.reshape(prog.mt * cfg.tile_m, kb * cfg.block_k)
    return y[: prog.m, : prog.k]
