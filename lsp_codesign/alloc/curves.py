"""Per-layer curves: block scores, pruning order, distortion, slope, FLOPs and energy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import HwConfig
from ..cycle_model import layer_curves
from ..packing import BlockGrid
from ..vit_shapes import GemmShape
from .calibration import LayerStats
from .numerics import (block_reduce, distortion_curve, ema_smooth, single_block_delta,
                       slope_5pt)
from .options import DEFAULT_KAPPA, DEFAULT_SMOOTH, AllocError, CurvatureOptions, Score

__all__ = ["LayerCurve", "layer_curve", "block_scores"]


@dataclass
class LayerCurve:
    """Everything the search needs about one prunable layer, indexed by pruned blocks.

    Attributes
    ----------
    shape : GemmShape
        Name and ``(M, N, K)``.
    grid : BlockGrid
        The layer's block grid.
    scores : numpy.ndarray
        ``(KB, NB)`` block scores (:func:`block_scores`).
    order : numpy.ndarray
        Flat block indices in pruning order (ascending score, stable).
    delta, delta_smooth, slope : numpy.ndarray
        ``(B + 1,)``: distortion curve, its smoothed version and the smoothed curve's slope
        ``d delta / d alpha`` (``alpha = k / B``).
    flops : numpy.ndarray
        ``(B + 1,)`` MACs of one image with ``k`` blocks pruned.
    energy_pj, cycles : numpy.ndarray
        ``(B + 1,)`` the cycle/energy model's energy (``P_i``) and cycles.
    dp_dalpha : float
        ``|dP_i / dalpha|`` = ``energy_pj[0] - energy_pj[B]`` (pJ per unit of pruning ratio).
    """

    shape: GemmShape
    grid: BlockGrid
    scores: np.ndarray
    order: np.ndarray
    delta: np.ndarray
    delta_smooth: np.ndarray
    slope: np.ndarray
    flops: np.ndarray
    energy_pj: np.ndarray
    cycles: np.ndarray
    dp_dalpha: float

    @property
    def name(self) -> str:
        return self.shape.name

    @property
    def n_blocks(self) -> int:
        return self.grid.n_blocks

    @property
    def alpha(self) -> np.ndarray:
        return np.arange(self.n_blocks + 1) / self.n_blocks


def block_scores(stats: LayerStats, grid: BlockGrid, kappa: float, score: Score,
                 grad_dot: np.ndarray | None, w_sq: np.ndarray) -> np.ndarray:
    """``(KB, NB)`` block scores: the lowest is pruned first.

    ``delta``: the distortion of pruning the block alone (:func:`single_block_delta`, with
    the first-order term when ``grad_dot`` is given). ``taylor``: the paper's first-order
    Taylor score, the mean of ``|W * gbar|`` over the block's real elements. ``grad_dot`` and
    ``w_sq`` (``||W_b||^2``) are per block, flat order.
    """
    if score is Score.TAYLOR:
        w = stats.weight.astype(np.float64)
        if stats.grad_mean is None:
            raise AllocError(f"layer {stats.shape.name}: the Taylor score needs the mean "
                             "gradient, which this calibration did not collect")
        taylor = block_reduce(np.abs(w * stats.grad_mean.astype(np.float64)), grid)
        return taylor / grid.block_elements()
    return single_block_delta(stats.block_sums, w_sq, kappa,
                              grad_dot=grad_dot).reshape(grid.shape)


def layer_curve(stats: LayerStats, cfg: HwConfig, *, kappa: float = DEFAULT_KAPPA,
                smooth: float = DEFAULT_SMOOTH,
                options: CurvatureOptions | None = None) -> LayerCurve:
    """Scores, pruning order, distortion curve, slope, FLOPs and energy curves of one layer.

    Parameters
    ----------
    stats : LayerStats
        From :func:`~lsp_codesign.alloc.calibration.calibrate`.
    cfg : HwConfig
        Hardware config (its block must be the calibration's block).
    kappa : float
        Damping added to the curvature.
    smooth : float
        EMA half-life as a fraction of the layer's blocks (``0``: no smoothing).
    options : CurvatureOptions, optional
        First-order term and score (default ``CurvatureOptions.resolve()``: off, ``delta``).
    """
    opts = options if options is not None else CurvatureOptions.resolve()
    g = stats.shape
    grid = BlockGrid(g.k, g.n, cfg.block_k, cfg.block_n)
    if stats.block_sums.shape[1] != grid.n_blocks:
        raise AllocError(f"layer {g.name}: statistics have {stats.block_sums.shape[1]} blocks, "
                         f"the config's block {cfg.block_str} gives {grid.n_blocks}")
    w = stats.weight.astype(np.float64)
    grad_dot = None
    if opts.first_order:
        if stats.grad_mean is None:
            raise AllocError(f"layer {g.name}: the first-order term needs the mean gradient, "
                             "which this calibration did not collect")
        grad_dot = block_reduce(w * stats.grad_mean.astype(np.float64), grid).ravel()
    w_sq = block_reduce(w * w, grid).ravel()
    scores = block_scores(stats, grid, kappa, opts.score, grad_dot, w_sq)
    order = np.argsort(scores.ravel(), kind="stable")
    delta = distortion_curve(stats.block_sums, w_sq[order], kappa, order,
                             grad_dot=None if grad_dot is None else grad_dot[order])
    nb = grid.n_blocks
    delta_s = ema_smooth(delta, smooth * nb)
    slope = slope_5pt(delta_s, 1.0 / nb)
    hw = layer_curves(cfg, g.m, g.n, g.k, order)
    energy = np.asarray(hw["energy_pj"], dtype=float)
    elems = grid.block_elements()
    e_ord = elems.ravel()[order]
    flops = g.m * (int(e_ord.sum()) - np.concatenate([[0], np.cumsum(e_ord)]))
    return LayerCurve(shape=g, grid=grid, scores=scores, order=order, delta=delta,
                      delta_smooth=delta_s, slope=slope, flops=flops.astype(np.int64),
                      energy_pj=energy, cycles=np.asarray(hw["cycles"]),
                      dp_dalpha=abs(float(energy[0] - energy[-1])))
