"""Tiling of a layer for the block-sparse engine: which tiles, in which order (``docs/hw.md`` §7).

A :class:`Plan` splits ``Y[M x K] = X[M x N] . W^T`` into tiles of TT token tiles x KG block rows
x NG block columns, each fitting one bank of XMEM, WMEM, IDX and YMEM, and orders them so that
the column groups of one output region follow each other (their partial sums add up in YMEM).
Every group is sized for all of its blocks kept, so any plan of a shape can carry any mask of
it. :func:`plan_layer` without a mask gives the shape's default plan: the order and sizes with
the fewest cycles predicted by :func:`lsp_codesign.schedule.schedule` for a dense and a
25%-dense layer (the allocator's curves price every pruning level with it). With a mask it
re-plans for that mask: of the same candidates that move no more DRAM bytes than the default,
the one with the fewest cycles for the kept blocks as they lie (the default on a tie). Kept blocks are rarely spread evenly (LSP may keep
the value rows of a qkv layer and prune most query and key rows), and a group of sparse block
rows whose outputs take longer to store than its blocks take to compute stalls the array; a
deeper token block or another row-group size can hide that. The compiler and the model both
use the mask's plan, so they agree on every counter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from .config import Engine, HwConfig
from .errors import LspError

__all__ = ["LoopOrder", "Plan", "plan_layer", "TilingError", "w_chunks", "layer_footprint",
           "PLAN_DENSITIES", "MAX_TILES"]

#: Densities at which candidate plans are compared (dense, and the middle of what LSP keeps).
PLAN_DENSITIES = (1.0, 0.25)
#: Plans with more tiles than this are not considered (the tiny-tile corner is never the best).
MAX_TILES = 4096


class TilingError(LspError, ValueError):
    """A layer cannot be tiled for this config; the message names the layer and the memory."""


class LoopOrder(str, Enum):
    """Nesting of the two outer loops; column groups are always innermost."""

    ROWS_OUTER = "g,T,h"     # weights stay while token blocks stream past them
    TOKENS_OUTER = "T,g,h"   # activations stay while row groups stream past them


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _sizes(total: int, step: int) -> tuple[int, ...]:
    """``total`` split into pieces of ``step`` (the last one possibly smaller)."""
    return tuple(min(step, total - s) for s in range(0, total, step))


@dataclass(frozen=True)
class Plan:
    """The tiles of one layer and their order.

    Attributes
    ----------
    m, n, k : int
        The GEMM.
    order : LoopOrder
        Nesting of token blocks and row groups.
    tt, kg, ng : int
        Nominal token tiles, block rows and block columns per tile.
    t_sizes, g_sizes, h_sizes : tuple of int
        Actual sizes of each token block, row group and column group.
    tile_t, tile_g, tile_h : numpy.ndarray
        Token block, row group and column group of each tile, in execution order.
    swap_x, swap_w, swap_y : numpy.ndarray
        Descriptor flags of each tile (bool).
    """

    m: int
    n: int
    k: int
    order: LoopOrder
    tt: int
    kg: int
    ng: int
    block_k: int
    block_n: int
    tile_m: int
    t_sizes: tuple[int, ...] = field(init=False)
    g_sizes: tuple[int, ...] = field(init=False)
    h_sizes: tuple[int, ...] = field(init=False)
    tile_t: np.ndarray = field(init=False, repr=False, compare=False)
    tile_g: np.ndarray = field(init=False, repr=False, compare=False)
    tile_h: np.ndarray = field(init=False, repr=False, compare=False)
    swap_x: np.ndarray = field(init=False, repr=False, compare=False)
    swap_w: np.ndarray = field(init=False, repr=False, compare=False)
    swap_y: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        s = object.__setattr__
        s(self, "t_sizes", _sizes(self.mt, self.tt))
        s(self, "g_sizes", _sizes(self.kb, self.kg))
        s(self, "h_sizes", _sizes(self.nb, self.ng))
        nt, ng_, nh = len(self.t_sizes), len(self.g_sizes), len(self.h_sizes)
        a, b, c = np.meshgrid(np.arange(nt), np.arange(ng_), np.arange(nh), indexing="ij")
        if self.order is LoopOrder.ROWS_OUTER:
            a, b, c = (x.transpose(1, 0, 2) for x in (a, b, c))
        t_idx, g_idx, h_idx = a.ravel(), b.ravel(), c.ravel()
        first = np.zeros(len(t_idx), dtype=bool)
        first[0] = True

        def changed(*keys: np.ndarray) -> np.ndarray:
            out = first.copy()
            for key in keys:
                out[1:] |= key[1:] != key[:-1]
            return out

        s(self, "tile_t", t_idx)
        s(self, "tile_g", g_idx)
        s(self, "tile_h", h_idx)
        s(self, "swap_x", changed(t_idx, h_idx))
        s(self, "swap_w", changed(g_idx, h_idx))
        s(self, "swap_y", changed(t_idx, g_idx))

    # ---- shape -------------------------------------------------------------------------------

    @property
    def mt(self) -> int:
        return _cdiv(self.m, self.tile_m)

    @property
    def kb(self) -> int:
        return _cdiv(self.k, self.block_k)

    @property
    def nb(self) -> int:
        return _cdiv(self.n, self.block_n)

    @property
    def n_tiles(self) -> int:
        return len(self.tile_t)

    @property
    def groups(self) -> tuple[int, int]:
        """``(row groups, column groups)``: the shape of per-group arrays (NNZ, R)."""
        return len(self.g_sizes), len(self.h_sizes)

    def tile_tt(self) -> np.ndarray:
        return np.asarray(self.t_sizes)[self.tile_t]

    def tile_kg(self) -> np.ndarray:
        return np.asarray(self.g_sizes)[self.tile_g]

    def tile_ng(self) -> np.ndarray:
        return np.asarray(self.h_sizes)[self.tile_h]

    def group_counts(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(NNZ, R)`` of every (row group, column group) of a ``(KB, NB)`` block mask."""
        kg, ng = self.kg, self.ng
        gk, gn = self.groups
        pad = np.zeros((gk * kg, gn * ng), dtype=bool)
        pad[: self.kb, : self.nb] = mask
        blocks = pad.reshape(gk, kg, gn, ng)
        return blocks.sum(axis=(1, 3)), blocks.any(axis=3).sum(axis=1)

    def w_runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which descriptor carries which part of which tile's weights.

        Returns ``(owner, j, n)`` per descriptor: the W of tile ``owner`` (the next tile that
        swaps W in, or -1 if none) is split into ``n`` chunks and this descriptor carries chunk
        ``j``. The chunks of a tile's W ride on the descriptors after the previous W swap, up to
        and including its own (``docs/hw.md`` §7).
        """
        t = self.n_tiles
        owner = np.full(t, -1)
        j = np.zeros(t, dtype=np.int64)
        n = np.ones(t, dtype=np.int64)
        prev = -1
        for k in np.nonzero(self.swap_w)[0]:
            owner[prev + 1: k + 1] = k
            j[prev + 1: k + 1] = np.arange(k - prev)
            n[prev + 1: k + 1] = k - prev
            prev = int(k)
        return owner, j, n

    def describe(self) -> str:
        return (f"{self.n_tiles} tiles ({self.order.value}): {len(self.t_sizes)} token blocks of "
                f"{self.tt} x {len(self.g_sizes)} row groups of {self.kg} x "
                f"{len(self.h_sizes)} column groups of {self.ng}")


def w_chunks(words, n_chunks, j, unit: int):
    """Length and start (in words) of chunk ``j`` of ``n_chunks`` of a W segment of ``words``.

    Chunks are whole beats (``unit`` words each, the last chunk ends at ``words``) and as even as
    that allows. Works on integers or numpy arrays.
    """
    beats = -(-np.asarray(words) // unit)
    start = np.minimum(words, unit * (beats * j // n_chunks))
    end = np.minimum(words, unit * (beats * (j + 1) // n_chunks))
    return end - start, start


def _check_shape(m, n, k, name: str) -> None:
    for nm, v in (("M", m), ("N", n), ("K", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise TilingError(f"{name}: {nm} must be a positive integer, got {v!r}")
        if v >= 1 << 32:
            raise TilingError(f"{name}: {nm}={v} does not fit the engine's 32-bit registers")


def layer_footprint(cfg: HwConfig, m: int, n: int, k: int) -> int:
    """DRAM bytes of the layer's X, its dense W and its Y: a lower bound of its DRAM image."""
    mt, kb, nb = _cdiv(m, cfg.tile_m), _cdiv(k, cfg.block_k), _cdiv(n, cfg.block_n)
    return mt * cfg.tile_m * (nb * cfg.block_n + kb * cfg.block_k * 4) + \
        kb * nb * cfg.block_k * cfg.block_n


def _check_fits(cfg: HwConfig, name: str) -> None:
    mem = cfg.memories
    src = cfg.source or cfg.name
    need = {"xmem": cfg.tile_m, "wmem": cfg.words_per_block, "idx": 4, "ymem": cfg.tile_m}
    for key, words in need.items():
        if mem[key].depth < words:
            raise TilingError(f"{name}: the smallest tile (one token tile, one block row, one "
                              f"block column) needs {words} {key.upper()} words per bank but "
                              f"{src} has {mem[key].depth}; raise memories.{key}_kib")


def _candidates(cfg: HwConfig, m: int, n: int, k: int) -> list[tuple]:
    mem = cfg.memories
    bm, wpb = cfg.tile_m, cfg.words_per_block
    mt, kb, nb = _cdiv(m, bm), _cdiv(k, cfg.block_k), _cdiv(n, cfg.block_n)
    xd, wd, idd, yd = (mem[x].depth for x in ("xmem", "wmem", "idx", "ymem"))
    powers = lambda top: sorted({1 << i for i in range(top.bit_length()) if 1 << i < top} | {top})  # noqa: E731,E501
    blocks = 1 << cfg.index_bits    # a tile's row pointer counts up to KG * NG kept blocks
    ngs = [g for g in powers(nb)
           if bm * g <= xd and g * wpb <= wd and 3 + g <= idd and g < blocks]
    ngs = ngs[-1:]      # the widest column group that fits: fewer partial sums, fewer tiles
    out = []
    for ng in ngs:
        for tt in powers(mt):
            if tt * bm * ng > xd:
                continue
            for kg in powers(kb):
                if kg * ng * wpb > wd or 2 * kg + 1 + kg * ng > idd or tt * bm * kg > yd \
                        or kg * ng >= blocks:
                    continue
                tiles = _cdiv(mt, tt) * _cdiv(kb, kg) * _cdiv(nb, ng)
                for order in LoopOrder:
                    if order is LoopOrder.TOKENS_OUTER and (_cdiv(mt, tt) == 1 or
                                                            _cdiv(kb, kg) == 1):
                        continue  # the same tile sequence as ROWS_OUTER
                    out.append((tiles, order, tt, kg, ng))
    small = [c for c in out if c[0] <= MAX_TILES]
    return small or [min(out, key=lambda c: c[0])]     # on a tie, the first generated


def _synthetic_counts(plan: Plan, density: float) -> tuple[np.ndarray, np.ndarray]:
    kg = np.asarray(plan.g_sizes)[:, None]
    ng = np.asarray(plan.h_sizes)[None, :]
    nnz = np.rint(density * kg * ng).astype(np.int64)
    return nnz, np.minimum(kg, nnz)


@functools.lru_cache(maxsize=512)
def _plan_cached(cfg: HwConfig, m: int, n: int, k: int) -> Plan:
    from .schedule import schedule

    best = None
    for _, order, tt, kg, ng in _candidates(cfg, m, n, k):
        plan = Plan(m, n, k, order, tt, kg, ng, cfg.block_k, cfg.block_n, cfg.tile_m)
        score = 0.0
        for dens in PLAN_DENSITIES:
            nnz, rows = _synthetic_counts(plan, dens)
            score += schedule(cfg, plan, nnz, rows)["busy"] / dens
        key = (score, plan.n_tiles)
        if best is None or key < best[0]:
            best = (key, plan)
    assert best is not None, "the smallest tile fits (checked by _check_fits)"
    return best[1]


@functools.lru_cache(maxsize=512)
def _candidate_plans(cfg: HwConfig, m: int, n: int, k: int) -> tuple[Plan, ...]:
    """The default plan first, then every other candidate."""
    default = _plan_cached(cfg, m, n, k)
    others = (Plan(m, n, k, order, tt, kg, ng, cfg.block_k, cfg.block_n, cfg.tile_m)
              for _, order, tt, kg, ng in _candidates(cfg, m, n, k))
    return (default, *(p for p in others if p != default))


@functools.lru_cache(maxsize=512)
def _plan_dense(cfg: HwConfig, m: int, n: int, k: int) -> Plan:
    """The mask's plan for the dense layer (every block kept), cached per shape."""
    kb, nb = _cdiv(k, cfg.block_k), _cdiv(n, cfg.block_n)
    return _plan_for_mask(cfg, m, n, k, np.ones((kb, nb), dtype=bool))


def _plan_for_mask(cfg: HwConfig, m: int, n: int, k: int, mask: np.ndarray) -> Plan:
    """Of the candidates that move no more DRAM bytes than the default plan for ``mask``, the
    one with the fewest busy cycles (then the fewest bytes, the fewest tiles, the default):
    deterministic, never slower than the default, and never more DRAM traffic (which would
    cost more energy than the cycles save)."""
    from .schedule import schedule

    best, limit = None, None
    for i, plan in enumerate(_candidate_plans(cfg, m, n, k)):
        nnz, rows = plan.group_counts(mask)
        s = schedule(cfg, plan, nnz, rows)
        dram = int(s["dram_read_bytes"]) + int(s["dram_write_bytes"])
        limit = dram if limit is None else limit        # the default comes first
        key = (int(s["busy"]), dram, plan.n_tiles, i)
        if dram <= limit and (best is None or key < best[0]):
            best = (key, plan)
    return best[1]


def plan_layer(cfg: HwConfig, m: int, n: int, k: int, *, name: str = "layer",
               mask: np.ndarray | None = None) -> Plan:
    """The tiling of ``Y[M x K] = X[M x N] . W^T`` on ``cfg`` (``docs/hw.md`` §7).

    Without ``mask``, the shape's default plan; with a ``(KB, NB)`` block mask (True = kept),
    the plan with the fewest cycles for it.

    Raises
    ------
    TilingError
        The shape cannot be encoded (a dimension of 2^32 or more, a DRAM image beyond the
        config's ``dram.capacity_mib``), or the smallest tile does not fit a memory bank.
    """
    if cfg.engine is not Engine.BLOCK_SPARSE:
        raise TilingError(f"{name}: config {cfg.name} has engine {cfg.engine}; only the "
                          "block_sparse engine is tiled")
    _check_shape(m, n, k, name)
    need = layer_footprint(cfg, int(m), int(n), int(k))
    cap = cfg.dram.depth * cfg.dram.bytes_per_cycle
    if need > cap:
        raise TilingError(f"{name}: M={m}, N={n}, K={k} needs at least "
                          f"{need / (1 << 20):,.1f} MiB of DRAM (X, W and int32 Y) but "
                          f"{cfg.source or cfg.name} has {cap / (1 << 20):g} MiB "
                          "(dram.capacity_mib)")
    _check_fits(cfg, name)
    if mask is None:
        return _plan_cached(cfg, int(m), int(n), int(k))
    mask = np.asarray(mask, dtype=bool)
    kb, nb = _cdiv(k, cfg.block_k), _cdiv(n, cfg.block_n)
    if mask.shape != (kb, nb):
        raise TilingError(f"{name}: block mask has shape {mask.shape}, expected ({kb}, {nb})")
    if mask.all():
        return _plan_dense(cfg, int(m), int(n), int(k))
    return _plan_for_mask(cfg, int(m), int(n), int(k), mask)
