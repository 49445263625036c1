"""The cycle formula of the block-sparse engine (``docs/hw.md`` §6), and every counter it implies.

This is the one place the formula lives in Python. Given a layer's :class:`~lsp_codesign.tiling.Plan`
and the kept blocks of every (row group, column group) of it, :func:`schedule` returns every
hardware counter of one ``lsp.gemm`` — busy cycles, compute and stall cycles, SRAM accesses,
DRAM bytes — exactly as the RTL counts them. The ISS and the RTL are the independent checkers.

Everything is vectorised: the per-group counts may carry a trailing axis (one column per mask),
which is how :func:`lsp_codesign.cycle_model.layer_curves` prices every pruning level at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import ACC_BITS, HwConfig
from .tiling import Plan, w_chunks

__all__ = ["schedule", "GEMM_COUNTERS", "transfer_cycles", "transfer_beats"]

#: The counters one ``lsp.gemm`` adds (the front-end adds cycles, insns and imem_reads).
GEMM_COUNTERS = ("busy", "compute", "fill", "dma_stall", "macs", "xmem_reads", "xmem_writes",
                 "wmem_reads", "wmem_writes", "idx_reads", "idx_writes", "ymem_reads",
                 "ymem_writes", "dram_read_bytes", "dram_write_bytes", "dma_cycles", "tiles")


def transfer_cycles(n, word_bits: int, beat_bits: int):
    """Cycles of one DMA load or store of ``n`` words (0 when ``n`` is 0)."""
    n = np.asarray(n, dtype=np.int64)
    return np.where(n > 0, n * max(1, word_bits // beat_bits) + 1, 0)


def transfer_beats(n, word_bits: int, beat_bits: int):
    """DRAM beats moved by a transfer of ``n`` words."""
    return -(-np.asarray(n, dtype=np.int64) * word_bits // beat_bits)


def _per_tile(plan: Plan, per_group: np.ndarray) -> np.ndarray:
    """Per-group counts (groups x ...) gathered per tile (tiles x ...)."""
    return per_group[plan.tile_g, plan.tile_h]


def _dma_ops(cfg: HwConfig, plan: Plan, tt, kg, ng, sx, sw, sy, tn, tr) -> tuple:
    """Words moved by each DMA operation of phases 0..T+1 (arrays indexed by phase).

    Returns the Y store, the descriptor fetch (0/1, no trailing axes), and the X, index and W
    loads, in the order the DMA runs them (docs/hw.md section 5).
    """
    t, bm = plan.n_tiles, cfg.tile_m
    extra = tn.shape[1:]
    ones = np.ones((1,) * len(extra), dtype=np.int64)
    col = lambda a: np.asarray(a, dtype=np.int64).reshape((-1,) + (1,) * len(extra))  # noqa: E731
    zero = np.zeros((t + 2,) + extra, dtype=np.int64)
    y_words = tt * bm * kg * ones                                     # region a tile starts
    store = zero.copy()
    # phase k (1..T) stores the region of tile k-2 when tile k-1 swaps Y and k >= 2
    store[2: t + 1] = np.where(sy[1:], y_words[:-1], 0)
    store[t + 1] = y_words[t - 1]
    fetch = np.zeros(t + 2, dtype=np.int64)
    fetch[:t] = 1
    xload, iload, wload = zero.copy(), zero.copy(), zero.copy()
    xload[:t] = sx * tt * bm * ng * ones
    iload[:t] = sw * (2 * tr + 1 + tn)
    owner, j, nch = plan.w_runs()
    words = np.where(col(owner >= 0), tn[np.maximum(owner, 0)] * cfg.words_per_block, 0)
    unit = max(1, cfg.dram.beat_bits // cfg.memories["wmem"].word_bits)
    wload[:t], _ = w_chunks(words, col(nch), col(j), unit)
    return store, fetch, xload, iload, wload


def schedule(cfg: HwConfig, plan: Plan, nnz: Any, rows: Any) -> dict[str, Any]:
    """Counters of the ``lsp.gemm`` that runs ``plan`` with ``nnz`` kept blocks per group.

    Parameters
    ----------
    cfg : HwConfig
        A ``block_sparse`` config.
    plan : Plan
        The layer's tiling.
    nnz, rows : array_like
        Kept blocks and non-empty block rows of each (row group, column group), shape
        ``plan.groups`` or ``plan.groups + (P,)`` for P masks at once.

    Returns
    -------
    dict
        :data:`GEMM_COUNTERS`, each an int (or an int64 array of length P).
    """
    nnz = np.asarray(nnz, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    extra = nnz.shape[2:]
    col = lambda a: np.asarray(a, dtype=np.int64).reshape((-1,) + (1,) * len(extra))  # noqa: E731
    dram, bm = cfg.dram, cfg.tile_m
    beat = dram.beat_bits
    wpb, fill = cfg.words_per_block, cfg.fill_cycles
    mem = cfg.memories
    wx, ww, wi = mem["xmem"].word_bits, mem["wmem"].word_bits, mem["idx"].word_bits
    wy = cfg.block_k * ACC_BITS
    t = plan.n_tiles
    tt, kg, ng = col(plan.tile_tt()), col(plan.tile_kg()), col(plan.tile_ng())
    sx, sw, sy = col(plan.swap_x), col(plan.swap_w), col(plan.swap_y)
    tn, tr = _per_tile(plan, nnz), _per_tile(plan, rows)              # (T, ...)

    # compute of tile j, in phase j + 1
    steps = tt * tn * bm
    c_tile = np.where(tn > 0, fill + steps + bm + 1, 0)

    store, fetch, xload, iload, wload = _dma_ops(cfg, plan, tt, kg, ng, sx, sw, sy, tn, tr)
    desc_cycles = dram.desc_beats + 2
    ops = (transfer_cycles(store, wy, beat) + col(fetch) * desc_cycles
           + transfer_cycles(xload, wx, beat) + transfer_cycles(iload, wi, beat)
           + transfer_cycles(wload, ww, beat))
    any_op = (store > 0) | (col(fetch) > 0) | (xload > 0) | (iload > 0) | (wload > 0)
    d = np.where(any_op, dram.latency_cycles + ops, 0)
    c = np.zeros_like(d)
    c[1: t + 1] = c_tile
    length = np.maximum(np.maximum(c, d), 1)

    compute = steps.sum(axis=0)
    drains = (tt * tr * bm).sum(axis=0)
    stored = store.sum(axis=0)
    out = {
        "busy": 1 + length.sum(axis=0),
        "compute": compute,
        "fill": (np.where(tn > 0, fill, 0)).sum(axis=0),
        "dma_stall": np.maximum(d - c, 0).sum(axis=0),
        "macs": compute * cfg.block_k * cfg.block_n,
        "xmem_reads": compute,
        "xmem_writes": xload.sum(axis=0),
        "wmem_reads": (tt * tn * wpb).sum(axis=0),
        "wmem_writes": wload.sum(axis=0),
        "idx_reads": (tt * (tn + 2 * tr)).sum(axis=0),
        "idx_writes": iload.sum(axis=0),
        "ymem_reads": drains + stored,
        "ymem_writes": drains + stored,
        "dram_read_bytes": dram.bytes_per_cycle * (
            t * dram.desc_beats + transfer_beats(xload, wx, beat).sum(axis=0)
            + transfer_beats(iload, wi, beat).sum(axis=0)
            + transfer_beats(wload, ww, beat).sum(axis=0)),
        "dram_write_bytes": dram.bytes_per_cycle * transfer_beats(store, wy, beat).sum(axis=0),
        "dma_cycles": d.sum(axis=0),
        "tiles": np.full(extra, t, dtype=np.int64) if extra else t,
    }
    if not extra:
        return {key: int(v) for key, v in out.items()}
    return {key: np.asarray(v, dtype=np.int64) for key, v in out.items()}

