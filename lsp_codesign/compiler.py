"""Lower a masked int8 layer to a program and a DRAM image for the block-sparse engine.

``compile_layer`` tiles the layer (:func:`lsp_codesign.tiling.plan_layer`), lays out its tile
descriptors, X tiles, kept weight blocks, index segments and Y regions in DRAM (``docs/hw.md``
§3), writes one descriptor per tile (§5) and the fixed 8-instruction program. A host (or a
cocotb bench) loads the program into IMEM and the image into DRAM, pulses ``start``, and reads
the Y area back; :func:`read_y` turns it into the ``(M, K)`` result. ``reference_gemm`` is the
numpy answer the engine must reproduce bit for bit.

Packing (§3): element ``j`` of a word occupies bits ``[w*j + w-1 : w*j]`` (element 0 in the least
significant bits), two's complement; words are packed into DRAM beats the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import Engine, HwConfig
from .errors import LspError
from .isa import (SWAP_W, SWAP_X, SWAP_Y, Instr, encode, encode_descriptor, li, program_text)
from .packing import BlockGrid, PackedWeight, expand_mask, pack
from .tiling import Plan, TilingError, plan_layer, w_chunks

__all__ = [
    "CompileError", "LayerProgram", "compile_layer", "layer_program", "LAYER_PROGRAM_LENGTH",
    "reference_gemm", "pack_words", "unpack_words", "read_y", "encode_y", "to_beats",
    "from_beats",
]

_A0, _A1 = 10, 11
#: Instructions of the compiler's program, whatever the layer (``li`` is always 2 words).
LAYER_PROGRAM_LENGTH = 8


class CompileError(LspError, ValueError):
    """A layer cannot be lowered for this config (names the memory and the sizes involved)."""


@dataclass(frozen=True)
class LayerProgram:
    """A compiled layer: program words, DRAM image, and where Y comes back.

    Attributes
    ----------
    m, n, k : int
        GEMM shape: ``Y[M x K] = X[M x N] . W^T``.
    words : list[int]
        IMEM image (instruction words).
    text : str
        The program as assembly.
    dram : dict[int, int]
        DRAM image: beat address -> beat value of every beat the program reads (descriptors,
        X tiles, W segments, index), zeros included.
    y_base, y_words : int
        First beat of the Y area and its length in beats (what the host reads back).
    plan : Plan
        The tiling.
    packed : PackedWeight
        The block-sparse weight the program runs.
    y_regions : dict
        ``(token block, row group)`` -> first beat of that Y region, relative to ``y_base``.
    extra : dict
        ``name``: the layer's name, used in progress lines and error messages.
    """

    m: int
    n: int
    k: int
    words: list[int]
    text: str
    dram: dict[int, int]
    y_base: int
    y_words: int
    plan: Plan
    packed: PackedWeight
    y_regions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def nnz(self) -> int:
        return self.packed.nnz

    @property
    def n_tiles(self) -> int:
        return self.plan.n_tiles


def pack_words(values: np.ndarray, elem_bits: int) -> list[int]:
    """Pack a 2-D integer array, one row per word, element 0 in the low bits."""
    v = np.asarray(values)
    if v.ndim != 2:
        raise ValueError("pack_words expects a 2-D array (words x elements)")
    dt = {8: "<i1", 16: "<i2", 32: "<i4"}.get(elem_bits)
    if dt is None:
        raise ValueError(f"unsupported element width {elem_bits}")
    raw = np.ascontiguousarray(v.astype(np.int64).astype(dt)).view(np.uint8)
    raw = raw.reshape(v.shape[0], -1)
    return [int.from_bytes(row.tobytes(), "little") for row in raw]


def unpack_words(words: list[int], elem_bits: int, elems: int, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_words`: words -> ``(len(words), elems)`` int64 array."""
    nbytes = elem_bits * elems // 8
    buf = b"".join(int(w).to_bytes(nbytes, "little") for w in words)
    dt = {8: "<i1", 16: "<i2", 32: "<i4"}[elem_bits] if signed else \
        {8: "<u1", 16: "<u2", 32: "<u4"}[elem_bits]
    return np.frombuffer(buf, dtype=dt).reshape(len(words), elems).astype(np.int64)


def to_beats(data: bytes, beat_bytes: int) -> list[int]:
    """Little-endian bytes -> DRAM beats (the last one padded with zeros)."""
    pad = (-len(data)) % beat_bytes
    data = data + bytes(pad)
    return [int.from_bytes(data[i: i + beat_bytes], "little")
            for i in range(0, len(data), beat_bytes)]


def from_beats(beats: list[int], beat_bytes: int) -> bytes:
    """DRAM beats -> little-endian bytes."""
    return b"".join(int(b).to_bytes(beat_bytes, "little") for b in beats)


def reference_gemm(x: np.ndarray, w: np.ndarray, mask: np.ndarray | None,
                   block_k: int, block_n: int) -> np.ndarray:
    """``Y = X . (W * mask)^T`` in int32 with two's complement wrap-around, as the engine does."""
    x64 = np.asarray(x, dtype=np.int64)
    w64 = np.asarray(w, dtype=np.int64)
    if mask is not None:
        w64 = w64 * expand_mask(mask, w64.shape[0], w64.shape[1], block_k, block_n)
    y = x64 @ w64.T
    return ((y + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int64)


def layer_program(desc_base: int, n_tiles: int) -> list[Instr]:
    """The instruction sequence that runs a layer's tile list (always 8 instructions)."""
    return (li(_A0, desc_base) + li(_A1, n_tiles)
            + [Instr("lsp.tiles", rs1=_A0, rs2=_A1), Instr("lsp.gemm"), Instr("lsp.fence"),
               Instr("lsp.halt")])


def _check_operands(cfg: HwConfig, x: np.ndarray, w: np.ndarray, name: str) -> None:
    if cfg.engine is not Engine.BLOCK_SPARSE:
        raise CompileError(f"{name}: config {cfg.name} has engine {cfg.engine}; only the "
                           "block_sparse engine runs programs")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise CompileError(f"{name}: X {tuple(x.shape)} and W {tuple(w.shape)} do not form "
                           "Y = X . W^T (need X (M, N), W (K, N))")
    for what, a in (("X", x), ("W", w)):
        if a.dtype != np.int8:
            if not np.issubdtype(a.dtype, np.integer) or a.min(initial=0) < -128 \
                    or a.max(initial=0) > 127:
                raise CompileError(f"{name}: {what} must hold int8 values")
    if 0 in x.shape or w.shape[0] == 0:
        raise CompileError(f"{name}: empty GEMM (M={x.shape[0]}, N={x.shape[1]}, "
                           f"K={w.shape[0]})")


class _Layout:
    """DRAM allocation in beats, every region starting on a beat."""

    def __init__(self, beat_bytes: int) -> None:
        self.beat = beat_bytes
        self.cursor = 0
        self.image: dict[int, int] = {}

    def reserve(self, nbytes: int) -> int:
        base = self.cursor
        self.cursor += -(-nbytes // self.beat)
        return base

    def put(self, data: bytes) -> int:
        base = self.reserve(len(data))
        for i, b in enumerate(to_beats(data, self.beat)):
            self.image[base + i] = b
        return base


def _check_plan(cfg: HwConfig, plan: Plan, m: int, n: int, k: int, name: str) -> None:
    if (plan.m, plan.n, plan.k) != (m, n, k) or \
            (plan.block_k, plan.block_n, plan.tile_m) != (cfg.block_k, cfg.block_n, cfg.tile_m):
        raise CompileError(f"{name}: the plan is for another shape or config")
    mem, bm, wpb = cfg.memories, cfg.tile_m, cfg.words_per_block
    for what, need, have in (("XMEM", plan.tt * bm * plan.ng, mem["xmem"].depth),
                             ("WMEM", plan.kg * plan.ng * wpb, mem["wmem"].depth),
                             ("IDX", 2 * plan.kg + 1 + plan.kg * plan.ng, mem["idx"].depth),
                             ("YMEM", plan.tt * bm * plan.kg, mem["ymem"].depth)):
        if need > have:
            raise CompileError(f"{name}: the plan's tiles need {need} {what} words per bank, "
                               f"the config has {have}")
    most = (1 << cfg.index_bits) - 1
    if plan.kg * plan.ng > most:
        raise CompileError(f"{name}: the plan's tiles hold up to {plan.kg * plan.ng} blocks, but "
                           f"{cfg.index_bits}-bit index entries count at most {most} "
                           "(index_bits)")


def _dcsr(mask: np.ndarray, blocks: np.ndarray, index_dtype: str) -> tuple[bytes, bytes, int, int]:
    """Index segment and W segment bytes of one (row group, column group) of kept blocks."""
    rows = np.nonzero(mask.any(axis=1))[0]
    counts = mask[rows].sum(axis=1)
    row_ptr = np.concatenate([[0], np.cumsum(counts)])
    _r, c_idx = np.nonzero(mask)
    index = np.concatenate([row_ptr, rows, c_idx]).astype(index_dtype)
    return index.tobytes(), np.ascontiguousarray(blocks).tobytes(), len(rows), int(mask.sum())


def compile_layer(cfg: HwConfig, x: np.ndarray, w: np.ndarray, mask: np.ndarray | None = None,
                  *, name: str = "layer", plan: Plan | None = None) -> LayerProgram:
    """Lower ``Y = X . (W * mask)^T`` to a program and DRAM image for ``cfg``.

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
    name : str
        Layer name used in error messages.
    plan : Plan, optional
        A tiling other than :func:`~lsp_codesign.tiling.plan_layer`'s for this mask (tests use
        it to force many small tiles); it must be for this shape and fit the banks.

    Raises
    ------
    CompileError
        Bad operands, a layer that cannot be tiled (names the memory), or a DRAM image larger
        than ``dram.capacity_mib``.
    """
    x, w = np.asarray(x), np.asarray(w)
    _check_operands(cfg, x, w, name)
    m, n = x.shape
    k = w.shape[0]
    try:
        plan_layer(cfg, m, n, k, name=name)         # the shape can be tiled at all
    except TilingError as exc:
        raise CompileError(str(exc)) from None
    grid = BlockGrid(k, n, cfg.block_k, cfg.block_n)
    mask = np.ones(grid.shape, dtype=bool) if mask is None else grid.check_mask(mask)
    if plan is None:
        plan = plan_layer(cfg, m, n, k, name=name, mask=mask)     # tiled for this mask
    else:
        _check_plan(cfg, plan, m, n, k, name)
    packed = pack(w.astype(np.int8), mask, cfg.block_k, cfg.block_n)
    beat = cfg.dram.bytes_per_cycle
    lay = _Layout(beat)
    desc_base = lay.reserve(plan.n_tiles * 64)
    x_addr = _place_x(cfg, plan, x, grid, lay)
    w_addr, i_addr, geo = _place_weights(cfg, plan, mask, packed, grid, lay)
    y_base = lay.cursor
    y_regions = {}
    for ti, tt in enumerate(plan.t_sizes):
        for gi, kg in enumerate(plan.g_sizes):
            y_regions[ti, gi] = lay.reserve(tt * cfg.tile_m * kg * cfg.block_k * 4) - y_base
    y_beats = lay.cursor - y_base
    descs = _descriptors(cfg, plan, geo, x_addr, w_addr, i_addr,
                         {key: y_base + off for key, off in y_regions.items()})
    for i, b in enumerate(to_beats(np.asarray(descs, dtype="<u4").tobytes(), beat)):
        lay.image[desc_base + i] = b
    if lay.cursor > cfg.dram.depth:
        raise CompileError(f"{name}: the layer's DRAM image needs {lay.cursor * beat:,} bytes "
                           f"but {cfg.source or cfg.name} has {cfg.dram.depth * beat:,} "
                           "(dram.capacity_mib)")
    instrs = layer_program(desc_base, plan.n_tiles)
    assert len(instrs) == LAYER_PROGRAM_LENGTH
    if len(instrs) > cfg.memories["imem"].depth:
        raise CompileError(f"{name}: program of {len(instrs)} instructions exceeds IMEM "
                           f"({cfg.memories['imem'].depth} words)")
    return LayerProgram(m=m, n=n, k=k, words=[encode(i) for i in instrs],
                        text=program_text(instrs), dram=lay.image, y_base=y_base,
                        y_words=y_beats, plan=plan, packed=packed, y_regions=y_regions,
                        extra={"name": name})


def _starts(sizes) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)]).astype(int)


def _place_x(cfg: HwConfig, plan: Plan, x: np.ndarray, grid: BlockGrid,
             lay: "_Layout") -> dict:
    """Write the X tiles (token tiles x column groups, zero padded) and return their beats."""
    bm, bn = cfg.tile_m, cfg.block_n
    m, n = x.shape
    xp = np.zeros((plan.mt * bm, grid.nb * bn), dtype=np.int8)
    xp[:m, :n] = x.astype(np.int8)
    t0, h0 = _starts(plan.t_sizes), _starts(plan.h_sizes)
    x_addr = {}
    for ti in range(len(plan.t_sizes)):
        for hi in range(len(plan.h_sizes)):
            tile = xp[t0[ti] * bm: t0[ti + 1] * bm, h0[hi] * bn: h0[hi + 1] * bn]
            x_addr[ti, hi] = lay.put(np.ascontiguousarray(tile).tobytes())
    return x_addr


def _place_weights(cfg: HwConfig, plan: Plan, mask: np.ndarray, packed, grid: BlockGrid,
                   lay: "_Layout") -> tuple[dict, dict, dict]:
    """Write each (row group, column group)'s W segment and index segment.

    Returns the W beats, the index beats and ``(R, NNZ)`` per group pair.
    """
    tiles4 = np.zeros((grid.kb, grid.nb, cfg.block_k, cfg.block_n), dtype=np.int8)
    rows_all = np.repeat(np.arange(grid.kb), np.diff(packed.row_ptr))
    tiles4[rows_all, packed.col_idx] = packed.blocks
    idx_dtype = {8: "<u1", 16: "<u2", 32: "<u4"}[cfg.index_bits]
    g0, h0 = _starts(plan.g_sizes), _starts(plan.h_sizes)
    w_addr, i_addr, geo = {}, {}, {}
    for gi in range(len(plan.g_sizes)):
        for hi in range(len(plan.h_sizes)):
            rs, cs = slice(g0[gi], g0[gi + 1]), slice(h0[hi], h0[hi + 1])
            sub = mask[rs, cs]
            index, wbytes, r, nnz = _dcsr(sub, tiles4[rs, cs][sub], idx_dtype)
            w_addr[gi, hi] = lay.put(wbytes)
            i_addr[gi, hi] = lay.put(index)
            geo[gi, hi] = (r, nnz)
    return w_addr, i_addr, geo


def _descriptors(cfg: HwConfig, plan: Plan, geo: dict, x_addr: dict, w_addr: dict,
                 i_addr: dict, y_addr: dict) -> list[int]:
    """The 16-word descriptor of every tile, in run order (docs/hw.md section 5)."""
    owner, jj, nch = plan.w_runs()
    ww = cfg.memories["wmem"].word_bits
    unit = max(1, cfg.dram.beat_bits // ww)
    descs: list[int] = []
    for kk in range(plan.n_tiles):
        ti, gi, hi = int(plan.tile_t[kk]), int(plan.tile_g[kk]), int(plan.tile_h[kk])
        r, nnz = geo[gi, hi]
        flags = (SWAP_X * bool(plan.swap_x[kk]) | SWAP_W * bool(plan.swap_w[kk])
                 | SWAP_Y * bool(plan.swap_y[kk]))
        wlen = w_at = 0
        if owner[kk] >= 0:
            og, oh = int(plan.tile_g[owner[kk]]), int(plan.tile_h[owner[kk]])
            words = geo[og, oh][1] * cfg.words_per_block
            wlen, wstart = (int(v) for v in w_chunks(words, int(nch[kk]), int(jj[kk]), unit))
            w_at = w_addr[og, oh] + wstart * ww // cfg.dram.beat_bits
        descs += encode_descriptor(
            flags=flags, tt=plan.t_sizes[ti], kg=plan.g_sizes[gi], ng=plan.h_sizes[hi], r=r,
            nnz=nnz, x=x_addr[ti, hi] if flags & SWAP_X else 0,
            idx=i_addr[gi, hi] if flags & SWAP_W else 0,
            y=y_addr[ti, gi] if flags & SWAP_Y else 0,
            w=w_at if wlen else 0, wlen=wlen)
    return descs


def _y_layout(cfg: HwConfig, prog: LayerProgram):
    plan, bm, bk = prog.plan, cfg.tile_m, cfg.block_k
    t0 = np.concatenate([[0], np.cumsum(plan.t_sizes)])
    g0 = np.concatenate([[0], np.cumsum(plan.g_sizes)])
    for (ti, gi), off in prog.y_regions.items():
        rows = slice(t0[ti] * bm, t0[ti + 1] * bm)
        cols = slice(g0[gi] * bk, g0[gi + 1] * bk)
        nbytes = plan.t_sizes[ti] * bm * plan.g_sizes[gi] * bk * 4
        yield rows, cols, off, nbytes


def read_y(cfg: HwConfig, prog: LayerProgram, y_beats: list[int]) -> np.ndarray:
    """The ``(M, K)`` int32 result from the Y area read back (``prog.y_words`` beats)."""
    if len(y_beats) != prog.y_words:
        raise ValueError(f"expected {prog.y_words} Y beats, got {len(y_beats)}")
    beat = cfg.dram.bytes_per_cycle
    data = from_beats(y_beats, beat)
    plan = prog.plan
    y = np.zeros((plan.mt * cfg.tile_m, plan.kb * cfg.block_k), dtype=np.int64)
    for rows, cols, off, nbytes in _y_layout(cfg, prog):
        region = np.frombuffer(data[off * beat: off * beat + nbytes], dtype="<i4")
        y[rows, cols] = region.reshape(rows.stop - rows.start, cols.stop - cols.start)
    return y[: prog.m, : prog.k]


def encode_y(cfg: HwConfig, prog: LayerProgram, y: np.ndarray) -> list[int]:
    """The Y area an engine computing ``y`` (``(M, K)``) leaves in DRAM (inverse of read_y)."""
    plan, beat = prog.plan, cfg.dram.bytes_per_cycle
    yp = np.zeros((plan.mt * cfg.tile_m, plan.kb * cfg.block_k), dtype="<i4")
    yp[: prog.m, : prog.k] = np.asarray(y, dtype=np.int64).astype(np.int32)
    data = bytearray(prog.y_words * beat)
    for rows, cols, off, nbytes in _y_layout(cfg, prog):
        data[off * beat: off * beat + nbytes] = np.ascontiguousarray(yp[rows, cols]).tobytes()
    return to_beats(bytes(data), beat)

