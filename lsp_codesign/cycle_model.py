"""Cycle/energy model of the engines, written to mirror the RTL exactly.

Block-sparse engine (``docs/hw.md``, "Cycle formula"). For one ``lsp.gemm`` with ``MT`` token
tiles, ``KB`` block rows and ``NNZ`` kept blocks (block ``BK x BN``, tile ``BM``)::

    D      = max(BM, BK)                      # one block step: BM token rows; next block loads
    busy   = 1 + BK*[NNZ > 0] + MT * (NNZ * D + KB * (BM + 1))
             setup  fill         block steps   drains (1 settle + BM output rows)

and a program of ``L`` instructions runs ``cycles = 2 * L + sum(busy)``. Every other counter
(compute, stall, MACs, words read and written per memory) has a closed form too; see
:func:`gemm_counters`. Cycles depend on how many blocks are kept, never on which.

Systolic engine (TPU-like preset): dense cycles follow SCALE-Sim v3.0.0's analytic convention
(``folds * per_fold - 1``; per fold ``T + R + C - 2`` output-stationary, ``2R + C + T - 2``
weight/input-stationary; folds over the padded array), and a fold is skipped only when every
pruning block of its weight operand is pruned.

Energy = sum(events x energy per event) + static power x time, with every per-event figure
taken from :class:`~lsp_codesign.config.HwConfig`. ``p_m`` (:func:`p_m_pj`) is the energy of
one within-block matmul (BM tokens x one block), the quantity the LSP allocator's power term
is built on.

Pure Python + numpy: importing this module does not import torch, amaranth or cocotb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .compiler import layer_program_length
from .config import HwConfig
from .isa import COUNTERS
from .packing import BlockGrid

__all__ = [
    "LayerEstimate", "gemm_counters", "program_counters", "estimate_layer", "layer_curves",
    "p_m_pj", "energy_breakdown", "systolic_folds", "ENERGY_COMPONENTS",
]

ENERGY_COMPONENTS = ("mac", "imem", "xmem", "wmem", "idx", "ymem", "dram", "static")
INSN_CYCLES = 2  # fetch + execute, every instruction


def gemm_counters(cfg: HwConfig, mt: int, kb: int, nnz: Any) -> dict[str, Any]:
    """Counters of one ``lsp.gemm`` instruction (block-sparse engine), vectorised over ``nnz``.

    Parameters
    ----------
    cfg : HwConfig
        A ``block_sparse`` config.
    mt, kb : int
        Token tiles ``ceil(M / BM)`` and block rows ``ceil(K / BK)``.
    nnz : int or numpy.ndarray
        Kept blocks.

    Returns
    -------
    dict
        ``busy, compute, stall, macs, xmem_reads, wmem_reads, idx_reads, ymem_writes``.
    """
    nnz = np.asarray(nnz, dtype=np.int64)
    bm, bk, bn = cfg.tile_m, cfg.block_k, cfg.block_n
    d = cfg.block_step_cycles
    fill = cfg.fill_cycles * (nnz > 0)
    compute = mt * nnz * bm
    out = {
        "busy": 1 + fill + mt * (nnz * d + kb * cfg.drain_cycles),
        "compute": compute,
        "stall": fill + mt * nnz * (d - bm),
        "macs": compute * bk * bn,
        "xmem_reads": compute,
        "wmem_reads": mt * nnz * bk,
        "idx_reads": mt * (kb + nnz),
        "ymem_writes": np.full_like(nnz, mt * kb * bm),
    }
    if out["busy"].ndim == 0:
        return {k: int(v) for k, v in out.items()}
    return out


def program_counters(n_insns: int, gemms: list[dict[str, int]]) -> dict[str, int]:
    """All RTL counters of a program of ``n_insns`` instructions containing ``gemms``.

    Every instruction costs :data:`INSN_CYCLES` (fetch, execute); an ``lsp.gemm`` adds its busy
    cycles. Returns a dict keyed by :data:`lsp_codesign.isa.COUNTERS`.
    """
    c = {name: 0 for name in COUNTERS}
    for g in gemms:
        for k, v in g.items():
            c[k] += int(v)
    c["insns"] = n_insns
    c["imem_reads"] = n_insns
    c["cycles"] = INSN_CYCLES * n_insns + c["busy"]
    return c


def p_m_pj(cfg: HwConfig) -> float:
    """Energy of one within-block matmul: BM token rows times one kept block.

    For the block-sparse engine this is exactly the energy one kept block adds per token tile
    (its MACs, its X and W words, its column index, and static power over its block step).
    For the systolic engine it is the same block's MACs and operand bytes, at the systolic
    memories' energy per byte.
    """
    bm, bk, bn = cfg.tile_m, cfg.block_k, cfg.block_n
    mem = cfg.memories
    macs = bm * bk * bn * cfg.mac_pj
    if cfg.engine == "block_sparse":
        return (macs + bm * mem["xmem"].access_pj + bk * mem["wmem"].access_pj
                + mem["idx"].access_pj + cfg.block_step_cycles * cfg.static_pj_per_cycle)
    return macs + bm * bn * mem["xmem"].pj_per_byte + bk * bn * mem["wmem"].pj_per_byte \
        + bm * bk * 4 * mem["ymem"].pj_per_byte


@dataclass
class LayerEstimate:
    """The model's prediction for one layer.

    Attributes
    ----------
    counters : dict[str, int]
        Block-sparse: every RTL counter (:data:`lsp_codesign.isa.COUNTERS`) plus ``dram_bytes``.
        Systolic: ``cycles, folds, folds_kept, macs, xmem_bytes, wmem_bytes, ymem_bytes,
        dram_bytes``.
    energy_pj : dict[str, float]
        Energy by component (:data:`ENERGY_COMPONENTS`, zero where a component does not apply).
    """

    name: str
    engine: str
    m: int
    n: int
    k: int
    block_k: int
    block_n: int
    kept_blocks: int
    total_blocks: int
    counters: dict[str, int]
    energy_pj: dict[str, float]
    clock_mhz: float
    array_size: int
    effective_macs: int
    extra: dict = field(default_factory=dict)

    @property
    def cycles(self) -> int:
        return int(self.counters["cycles"])

    @property
    def time_us(self) -> float:
        return self.cycles / self.clock_mhz

    @property
    def energy_total_pj(self) -> float:
        return float(sum(self.energy_pj.values()))

    @property
    def power_mw(self) -> float:
        t_ns = self.cycles * 1000.0 / self.clock_mhz
        return self.energy_total_pj / t_ns if t_ns else 0.0

    @property
    def dense_macs(self) -> int:
        return self.m * self.n * self.k

    @property
    def kept_fraction(self) -> float:
        return self.kept_blocks / self.total_blocks

    @property
    def utilization(self) -> float:
        """Useful MACs (real elements of kept blocks) over array capacity for the run."""
        cap = self.cycles * self.array_size
        return self.effective_macs / cap if cap else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "engine": self.engine, "m": self.m, "n": self.n, "k": self.k,
            "block": f"{self.block_k}x{self.block_n}", "kept_blocks": self.kept_blocks,
            "total_blocks": self.total_blocks, "kept_fraction": self.kept_fraction,
            "cycles": self.cycles, "time_us": self.time_us,
            "energy_pj": dict(self.energy_pj), "energy_total_pj": self.energy_total_pj,
            "power_mw": self.power_mw, "utilization": self.utilization,
            "effective_macs": self.effective_macs, "dense_macs": self.dense_macs,
            "counters": dict(self.counters), **self.extra,
        }


def energy_breakdown(cfg: HwConfig, counters: dict[str, Any]) -> dict[str, Any]:
    """Energy (pJ) by component from a counter dict (works on scalars or numpy arrays)."""
    mem = cfg.memories
    e = {k: 0.0 for k in ENERGY_COMPONENTS}
    e["mac"] = counters["macs"] * cfg.mac_pj
    if cfg.engine == "block_sparse":
        e["imem"] = counters["imem_reads"] * mem["imem"].access_pj
        e["xmem"] = counters["xmem_reads"] * mem["xmem"].access_pj
        e["wmem"] = counters["wmem_reads"] * mem["wmem"].access_pj
        e["idx"] = counters["idx_reads"] * mem["idx"].access_pj
        e["ymem"] = counters["ymem_writes"] * mem["ymem"].access_pj
    else:
        e["xmem"] = counters["xmem_bytes"] * mem["xmem"].pj_per_byte
        e["wmem"] = counters["wmem_bytes"] * mem["wmem"].pj_per_byte
        e["ymem"] = counters["ymem_bytes"] * mem["ymem"].pj_per_byte
    e["dram"] = counters["dram_bytes"] * cfg.dram_pj_per_byte
    e["static"] = counters["cycles"] * cfg.static_pj_per_cycle
    return e


def _dram_bytes_bs(cfg: HwConfig, kb: int, nnz: Any, n_insns: int) -> Any:
    """Off-chip traffic of one layer: its parameters (program, kept blocks, index).

    Activations are taken to stay on chip between layers (XMEM and YMEM are the activation
    buffers of a layer-by-layer schedule), so only what a layer adds from DRAM is counted.
    """
    nnz = np.asarray(nnz)
    idx_bytes = (kb + 1 + nnz) * cfg.index_bits // 8
    return 4 * n_insns + nnz * cfg.block_k * cfg.block_n + idx_bytes


def _check_mask(grid: BlockGrid, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.ones(grid.shape, dtype=bool)
    return grid.check_mask(mask)


def _effective_macs(grid: BlockGrid, mask: np.ndarray, m: int) -> int:
    return int(m * (grid.block_elements() * mask).sum())


def systolic_folds(cfg: HwConfig, m: int, n: int, k: int, mask: np.ndarray | None,
                   *, tile_ids: bool = False) -> dict[str, Any]:
    """Fold structure of a GEMM on the systolic array: which folds are kept, and their sizes.

    Our GEMM is ``Y[M x K] = X[M x N] . W^T``; in SCALE-Sim's terms (its M, N, K are our M, K,
    N): output-stationary ``Sr = M, Sc = K, T = N``; weight-stationary ``Sr = N, Sc = K, T = M``;
    input-stationary ``Sr = N, Sc = M, T = K``.
    """
    r, c = cfg.array_rows, cfg.array_cols
    bk, bn = cfg.block_k, cfg.block_n
    grid = BlockGrid(k, n, bk, bn)
    df = cfg.dataflow
    if df == "os":
        sr, sc, t = m, k, n
    elif df == "ws":
        sr, sc, t = n, k, m
    else:
        sr, sc, t = n, m, k
    fr, fc = math.ceil(sr / r), math.ceil(sc / c)
    rows_used = np.minimum(r, sr - r * np.arange(fr))
    cols_used = np.minimum(c, sc - c * np.arange(fc))
    per_fold = (t + r + c - 2) if df == "os" else (2 * r + c + t - 2)
    out = {"sr": sr, "sc": sc, "t": t, "fr": fr, "fc": fc, "rows_used": rows_used,
           "cols_used": cols_used, "per_fold": per_fold}
    if mask is None and not tile_ids:
        out["kept"] = np.ones((fr, fc), dtype=bool)
        return out
    if mask is None:
        mask = np.ones(grid.shape, dtype=bool)
    # kept[fr, fc]: does the fold's weight operand hold any kept block?
    if df == "ws":
        # weight tile: inputs [i*R, (i+1)*R) x outputs [j*C, (j+1)*C); R % BN == C % BK == 0
        g = np.zeros((fc * (c // bk), fr * (r // bn)), dtype=bool)
        g[: grid.kb, : grid.nb] = mask
        tiles = g.reshape(fc, c // bk, fr, r // bn).any(axis=(1, 3))  # (fc, fr)
        kept = tiles.T
        tile_id = _tile_ids(grid, c // bk, r // bn, fr)
    elif df == "os":
        # weight strip per column fold: outputs [j*C, (j+1)*C) x all inputs
        g = np.zeros((fc * (c // bk), grid.nb), dtype=bool)
        g[: grid.kb] = mask
        strips = g.reshape(fc, c // bk, grid.nb).any(axis=(1, 2))  # (fc,)
        kept = np.broadcast_to(strips[None, :], (fr, fc))
        tile_id = (np.arange(grid.kb) // (c // bk))[:, None].repeat(grid.nb, axis=1)
    else:
        # weight strip per row fold: all outputs x inputs [i*R, (i+1)*R)
        g = np.zeros((grid.kb, fr * (r // bn)), dtype=bool)
        g[:, : grid.nb] = mask
        strips = g.reshape(grid.kb, fr, r // bn).any(axis=(0, 2))  # (fr,)
        kept = np.broadcast_to(strips[:, None], (fr, fc))
        tile_id = (np.arange(grid.nb) // (r // bn))[None, :].repeat(grid.kb, axis=0)
    out["kept"] = np.asarray(kept)
    out["tile_id"] = tile_id
    return out


def _tile_ids(grid: BlockGrid, bpk: int, bpn: int, fr: int) -> np.ndarray:
    """Weight-tile id of each block for the weight-stationary fold grid: col_fold * FR + row_fold.

    A column fold spans ``bpk`` block rows (outputs), a row fold ``bpn`` block columns (inputs).
    """
    col_fold = np.arange(grid.kb)[:, None] // bpk
    row_fold = np.arange(grid.nb)[None, :] // bpn
    return col_fold * fr + row_fold


def _systolic_counters(cfg: HwConfig, m: int, n: int, k: int,
                       mask: np.ndarray | None) -> dict[str, int]:
    """Systolic counters; ``mask`` None means dense."""
    f = systolic_folds(cfg, m, n, k, mask)
    kept = f["kept"]
    ru, cu, t = f["rows_used"][:, None], f["cols_used"][None, :], f["t"]
    folds_kept = int(kept.sum())
    cycles = folds_kept * f["per_fold"] - 1 if folds_kept else 0
    area = (ru * cu) * kept
    if cfg.dataflow == "ws":
        xb, wb, yb = (t * ru * kept).sum(), area.sum(), (t * cu * kept).sum() * 4
    elif cfg.dataflow == "os":
        xb, wb, yb = (t * ru * kept).sum(), (t * cu * kept).sum(), area.sum() * 4
    else:
        xb, wb, yb = area.sum(), (t * ru * kept).sum(), (t * cu * kept).sum() * 4
    kept_bytes = k * n if mask is None else int(
        (BlockGrid(k, n, cfg.block_k, cfg.block_n).block_elements() * mask).sum())
    return {
        "cycles": int(cycles),
        "folds": int(kept.size),
        "folds_kept": folds_kept,
        "macs": int((area * t).sum()),
        "xmem_bytes": int(xb),
        "wmem_bytes": int(wb),
        "ymem_bytes": int(yb),
        "dram_bytes": kept_bytes,
    }


def estimate_layer(cfg: HwConfig, m: int, n: int, k: int, mask: np.ndarray | None = None,
                   *, name: str = "") -> LayerEstimate:
    """Predict every counter, the cycles and the energy of ``Y[M x K] = X[M x N] . W^T``.

    For the block-sparse engine the prediction is for the compiler's one-layer program
    (:func:`lsp_codesign.compiler.layer_program`), instruction overheads included, and equals the
    RTL's counters exactly.
    """
    for nm, v in (("M", m), ("N", n), ("K", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name or 'gemm'}: {nm} must be a positive integer, got {v!r}")
    grid = BlockGrid(k, n, cfg.block_k, cfg.block_n)
    dense = mask is None
    mask = _check_mask(grid, mask)
    nnz = int(mask.sum())
    if cfg.engine == "block_sparse":
        mt = math.ceil(m / cfg.tile_m)
        n_insns = layer_program_length()
        counters = program_counters(n_insns, [gemm_counters(cfg, mt, grid.kb, nnz)])
        counters["dram_bytes"] = int(_dram_bytes_bs(cfg, grid.kb, nnz, n_insns))
        array_size = cfg.block_k * cfg.block_n
    else:
        counters = _systolic_counters(cfg, m, n, k, None if dense else mask)
        array_size = cfg.array_rows * cfg.array_cols
    energy = energy_breakdown(cfg, counters)
    return LayerEstimate(
        name=name, engine=cfg.engine, m=m, n=n, k=k, block_k=cfg.block_k, block_n=cfg.block_n,
        kept_blocks=nnz, total_blocks=grid.n_blocks, counters=counters,
        energy_pj={k_: float(v) for k_, v in energy.items()}, clock_mhz=cfg.clock_mhz,
        array_size=array_size,
        effective_macs=m * n * k if dense else _effective_macs(grid, mask, m))


def layer_curves(cfg: HwConfig, m: int, n: int, k: int,
                 order: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Cycles and energy of a layer at every number of pruned blocks, in one vectorised pass.

    Parameters
    ----------
    order : numpy.ndarray, optional
        Flat block indices (row-major over the ``(KB, NB)`` grid) in the order they are pruned.
        The block-sparse engine's cost depends only on how many blocks are kept, so ``order``
        is needed only for the systolic engine (which skips a fold once all its blocks are gone).

    Returns
    -------
    dict
        ``pruned`` (0..n_blocks), ``kept``, ``cycles``, ``energy_pj`` (total) and
        ``energy_<component>`` arrays, each of length ``n_blocks + 1``.
    """
    grid = BlockGrid(k, n, cfg.block_k, cfg.block_n)
    nblk = grid.n_blocks
    pruned = np.arange(nblk + 1)
    kept = nblk - pruned
    if cfg.engine == "block_sparse":
        mt = math.ceil(m / cfg.tile_m)
        n_insns = layer_program_length()
        g = gemm_counters(cfg, mt, grid.kb, kept)
        c = dict(g)
        c["insns"] = c["imem_reads"] = np.full_like(kept, n_insns)
        c["cycles"] = INSN_CYCLES * n_insns + g["busy"]
        c["dram_bytes"] = _dram_bytes_bs(cfg, grid.kb, kept, n_insns)
    else:
        if order is None:
            raise ValueError("layer_curves: the systolic engine needs the pruning order")
        c = _systolic_curves(cfg, m, n, k, np.asarray(order), grid)
    e = energy_breakdown(cfg, c)
    out = {"pruned": pruned, "kept": kept, "cycles": np.asarray(c["cycles"], dtype=np.int64)}
    total = np.zeros(nblk + 1)
    for comp, v in e.items():
        arr = np.broadcast_to(np.asarray(v, dtype=float), (nblk + 1,)).copy()
        out[f"energy_{comp}"] = arr
        total += arr
    out["energy_pj"] = total
    return out


def _systolic_curves(cfg: HwConfig, m: int, n: int, k: int, order: np.ndarray,
                     grid: BlockGrid) -> dict[str, np.ndarray]:
    nblk = grid.n_blocks
    if sorted(order.tolist()) != list(range(nblk)):
        raise ValueError(f"order must be a permutation of the {nblk} block indices")
    rank = np.empty(nblk, dtype=np.int64)
    rank[order] = np.arange(nblk)
    rank = rank.reshape(grid.shape)
    dense = _systolic_counters(cfg, m, n, k, None)
    f = systolic_folds(cfg, m, n, k, None, tile_ids=True)
    tid = f["tile_id"]
    n_tiles = int(tid.max()) + 1
    # a tile (or strip) disappears once its last block is pruned: at pruned = max rank + 1
    gone_at = np.full(n_tiles, -1, dtype=np.int64)
    np.maximum.at(gone_at, tid.ravel(), rank.ravel())
    gone_at += 1
    # per-tile contributions of each counter (a tile spans several folds for os/is)
    ru, cu, t = f["rows_used"], f["cols_used"], f["t"]
    df = cfg.dataflow
    if df == "ws":
        # tile id = col_fold * fr + row_fold
        fr = f["fr"]
        ids = np.arange(n_tiles)
        r_, c_ = ru[ids % fr], cu[ids // fr]
        folds = np.ones(n_tiles)
        macs, xb, wb, yb = r_ * c_ * t, t * r_, r_ * c_, t * c_ * 4
    elif df == "os":
        c_ = cu[np.arange(n_tiles)]
        folds = np.full(n_tiles, f["fr"])
        macs, xb, wb, yb = c_ * ru.sum() * t, t * ru.sum() * np.ones(n_tiles), \
            t * c_ * f["fr"], ru.sum() * c_ * 4
    else:
        r_ = ru[np.arange(n_tiles)]
        folds = np.full(n_tiles, f["fc"])
        macs, xb, wb, yb = r_ * cu.sum() * t, r_ * cu.sum(), t * r_ * f["fc"], \
            t * cu.sum() * 4 * np.ones(n_tiles)

    def remaining(total: float, per_tile: np.ndarray) -> np.ndarray:
        lost = np.bincount(gone_at, weights=per_tile, minlength=nblk + 2)[: nblk + 1]
        return total - np.cumsum(lost)

    folds_kept = remaining(dense["folds_kept"], folds).round().astype(np.int64)
    cycles = np.where(folds_kept > 0, folds_kept * f["per_fold"] - 1, 0)
    elems = grid.block_elements().ravel()
    kept_bytes = elems.sum() - np.concatenate([[0], np.cumsum(elems[order])])
    return {
        "cycles": cycles,
        "folds_kept": folds_kept,
        "macs": remaining(dense["macs"], macs),
        "xmem_bytes": remaining(dense["xmem_bytes"], xb),
        "wmem_bytes": remaining(dense["wmem_bytes"], wb),
        "ymem_bytes": remaining(dense["ymem_bytes"], yb),
        "dram_bytes": kept_bytes,
    }
