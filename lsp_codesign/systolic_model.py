"""Analytic model of the TPU-like systolic array (``docs/hw.md`` §11), SCALE-Sim v3.0.0's convention.

Dense cycles are ``folds * per_fold - 1`` over the padded array (``T + R + C - 2`` per fold
output-stationary, ``2R + C + T - 2`` weight/input-stationary); a fold is skipped only when every
pruning block of its weight operand is pruned. The token dimension never becomes an array (its
folds all have the same kept-ness), so any M costs the same to price; only the weight folds are
enumerated, and only when a mask is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import Dataflow, HwConfig
from .packing import BlockGrid

__all__ = ["systolic_folds", "systolic_counters", "systolic_curves"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _used(total: int, tile: int) -> np.ndarray:
    """Rows (or columns) of the array used by each fold of a dimension of ``total``."""
    return np.minimum(tile, total - tile * np.arange(_cdiv(total, tile)))


def _roles(cfg: HwConfig, m: int, n: int, k: int) -> tuple[int, int, int]:
    """SCALE-Sim's ``(Sr, Sc, T)`` of our GEMM (its M, N, K are our M, K, N)."""
    return {Dataflow.OS: (m, k, n), Dataflow.WS: (n, k, m), Dataflow.IS: (n, m, k)}[cfg.dataflow]


def per_fold(cfg: HwConfig, t: int) -> int:
    r, c = cfg.array_rows, cfg.array_cols
    return t + r + c - 2 if cfg.dataflow is Dataflow.OS else 2 * r + c + t - 2


def systolic_folds(cfg: HwConfig, m: int, n: int, k: int, mask: np.ndarray | None,
                   *, tile_ids: bool = False) -> dict[str, Any]:
    """Fold structure of the weight operand: which weight folds are kept, and their sizes.

    ``w_used`` are the array rows/columns each weight fold uses, ``kept`` which of them hold a
    kept block, ``tile_id`` (with ``tile_ids``) the weight fold of each block. ws has a 2-D
    grid of weight folds (inputs x outputs); os and is a 1-D strip (outputs, resp. inputs).
    """
    r, c = cfg.array_rows, cfg.array_cols
    bk, bn = cfg.block_k, cfg.block_n
    grid = BlockGrid(k, n, bk, bn)
    df = cfg.dataflow
    if df is Dataflow.WS:
        # weight tile: inputs [i*R, (i+1)*R) x outputs [j*C, (j+1)*C); R % BN == C % BK == 0
        fr, fc = _cdiv(n, r), _cdiv(k, c)
        g = np.zeros((fc * (c // bk), fr * (r // bn)), dtype=bool)
        g[: grid.kb, : grid.nb] = True if mask is None else mask
        kept = g.reshape(fc, c // bk, fr, r // bn).any(axis=(1, 3)).T      # (fr, fc)
        tid = (np.arange(grid.kb)[:, None] // (c // bk)) * fr + \
            np.arange(grid.nb)[None, :] // (r // bn)
    elif df is Dataflow.OS:
        fc = _cdiv(k, c)
        g = np.zeros((fc * (c // bk), grid.nb), dtype=bool)
        g[: grid.kb] = True if mask is None else mask
        kept = g.reshape(fc, c // bk, grid.nb).any(axis=(1, 2))            # (fc,)
        tid = (np.arange(grid.kb) // (c // bk))[:, None].repeat(grid.nb, axis=1)
    else:
        fr = _cdiv(n, r)
        g = np.zeros((grid.kb, fr * (r // bn)), dtype=bool)
        g[:, : grid.nb] = True if mask is None else mask
        kept = g.reshape(grid.kb, fr, r // bn).any(axis=(0, 2))            # (fr,)
        tid = (np.arange(grid.nb) // (r // bn))[None, :].repeat(grid.kb, axis=0)
    out = {"kept": kept, "rows_used": _used(n, r) if df is not Dataflow.OS else None,
           "cols_used": _used(k, c) if df is not Dataflow.IS else None}
    if tile_ids:
        out["tile_id"] = tid
    return out


def io_bytes(m: int, n: int, k: int) -> int:
    """DRAM bytes of the activations and outputs: int8 X in and int32 Y out, once each (as the
    block-sparse engine at its best; whatever the mask, every output is written)."""
    return m * n + 4 * m * k


def _dense_counters(cfg: HwConfig, m: int, n: int, k: int) -> dict[str, int]:
    """Closed forms for the dense layer (Python integers, any size)."""
    r, c = cfg.array_rows, cfg.array_cols
    sr, sc, t = _roles(cfg, m, n, k)
    fr, fc = _cdiv(sr, r), _cdiv(sc, c)
    folds = fr * fc
    if cfg.dataflow is Dataflow.WS:
        xb, wb, yb = t * sr * fc, sr * sc, t * sc * fr * 4
    elif cfg.dataflow is Dataflow.OS:
        xb, wb, yb = t * sr * fc, t * sc * fr, sr * sc * 4
    else:
        xb, wb, yb = sr * sc, t * sr * fc, t * sc * fr * 4
    return {"cycles": folds * per_fold(cfg, t) - 1, "folds": folds, "folds_kept": folds,
            "macs": sr * sc * t, "xmem_bytes": xb, "wmem_bytes": wb, "ymem_bytes": yb,
            "dram_bytes": k * n + io_bytes(m, n, k)}


def systolic_counters(cfg: HwConfig, m: int, n: int, k: int,
                      mask: np.ndarray | None) -> dict[str, int]:
    """Counters of the layer; ``mask`` None means dense."""
    if mask is None:
        return _dense_counters(cfg, m, n, k)
    r, c = cfg.array_rows, cfg.array_cols
    sr, sc, t = _roles(cfg, m, n, k)
    f = systolic_folds(cfg, m, n, k, mask)
    kept = f["kept"]
    df = cfg.dataflow
    if df is Dataflow.WS:
        ru, cu = f["rows_used"][:, None], f["cols_used"][None, :]
        area = int((ru * cu * kept).sum())
        nk = int(kept.sum())
        folds = kept.size
        xb, wb, yb = t * int((ru * kept).sum()), area, t * int((cu * kept).sum()) * 4
        macs = area * t
    elif df is Dataflow.OS:
        fr = _cdiv(sr, r)                   # token folds: all alike
        ck = int((f["cols_used"] * kept).sum())
        nk = fr * int(kept.sum())
        folds = fr * kept.size
        macs = sr * ck * t
        xb, wb, yb = t * sr * int(kept.sum()), t * ck * fr, sr * ck * 4
    else:
        fc = _cdiv(sc, c)
        rk = int((f["rows_used"] * kept).sum())
        nk = fc * int(kept.sum())
        folds = fc * kept.size
        macs = rk * sc * t
        xb, wb, yb = rk * sc, t * rk * fc, t * sc * int(kept.sum()) * 4
    kept_bytes = int((BlockGrid(k, n, cfg.block_k, cfg.block_n).block_elements() * mask).sum())
    return {"cycles": nk * per_fold(cfg, t) - 1 if nk else 0, "folds": int(folds),
            "folds_kept": int(nk), "macs": int(macs), "xmem_bytes": int(xb),
            "wmem_bytes": int(wb), "ymem_bytes": int(yb),
            "dram_bytes": kept_bytes + io_bytes(m, n, k)}


def systolic_curves(cfg: HwConfig, m: int, n: int, k: int,
                    order: np.ndarray) -> dict[str, np.ndarray]:
    """Counters at every number of pruned blocks along ``order`` (a permutation of blocks)."""
    grid = BlockGrid(k, n, cfg.block_k, cfg.block_n)
    nblk = grid.n_blocks
    if sorted(np.asarray(order).tolist()) != list(range(nblk)):
        raise ValueError(f"order must be a permutation of the {nblk} block indices")
    rank = np.empty(nblk, dtype=np.int64)
    rank[order] = np.arange(nblk)
    dense = _dense_counters(cfg, m, n, k)
    f = systolic_folds(cfg, m, n, k, None, tile_ids=True)
    tid = f["tile_id"]
    n_tiles = int(tid.max()) + 1
    # a weight fold disappears once its last block is pruned: at pruned = max rank + 1
    gone_at = np.full(n_tiles, -1, dtype=np.int64)
    np.maximum.at(gone_at, tid.ravel(), rank.reshape(grid.shape).ravel())
    gone_at += 1
    r, c = cfg.array_rows, cfg.array_cols
    sr, sc, t = _roles(cfg, m, n, k)
    df = cfg.dataflow
    if df is Dataflow.WS:
        fr = _cdiv(sr, r)
        ids = np.arange(n_tiles)
        r_, c_ = f["rows_used"][ids % fr], f["cols_used"][ids // fr]
        folds = np.ones(n_tiles)
        macs, xb, wb, yb = r_ * c_ * t, t * r_, r_ * c_, t * c_ * 4
    elif df is Dataflow.OS:
        fr = _cdiv(sr, r)
        c_ = f["cols_used"]
        folds = np.full(n_tiles, fr)
        macs, xb, wb, yb = c_ * sr * t, t * sr * np.ones(n_tiles), t * c_ * fr, sr * c_ * 4
    else:
        fc = _cdiv(sc, c)
        r_ = f["rows_used"]
        folds = np.full(n_tiles, fc)
        macs, xb, wb, yb = r_ * sc * t, r_ * sc, t * r_ * fc, t * sc * 4 * np.ones(n_tiles)

    def remaining(total: float, per_tile: np.ndarray) -> np.ndarray:
        lost = np.bincount(gone_at, weights=per_tile, minlength=nblk + 2)[: nblk + 1]
        return total - np.cumsum(lost)

    folds_kept = remaining(dense["folds_kept"], folds).round().astype(np.int64)
    elems = grid.block_elements().ravel()
    kept_bytes = elems.sum() - np.concatenate([[0], np.cumsum(elems[order])])
    return {
        "cycles": np.where(folds_kept > 0, folds_kept * per_fold(cfg, t) - 1, 0),
        "folds_kept": folds_kept,
        "macs": remaining(dense["macs"], macs),
        "xmem_bytes": remaining(dense["xmem_bytes"], xb),
        "wmem_bytes": remaining(dense["wmem_bytes"], wb),
        "ymem_bytes": remaining(dense["ymem_bytes"], yb),
        "dram_bytes": kept_bytes + io_bytes(m, n, k),
    }
