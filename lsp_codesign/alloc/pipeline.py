"""Allocation end to end: calibration, curves, power term, search, per-layer results."""

from __future__ import annotations

import math
import time
from typing import Any, Iterable

import numpy as np

from ..config import HwConfig
from ..cycle_model import estimate_layer, p_m_pj
from ..flops import ModelCount, count_model
from ..masks_io import MaskSet
from ..packing import BlockGrid
from .calibration import Calibration, calibrate
from .distributed import Shard
from .curves import LayerCurve, layer_curve
from .layers import check_reachable, select_layers
from .options import (DEFAULT_CHUNK_MIB, DEFAULT_KAPPA, DEFAULT_MICRO_BATCH, DEFAULT_SMOOTH,
                      AllocError, CurvatureOptions, Method, Score, check_flops_target,
                      check_options)
from .result import Allocation, LayerResult
from .search import eq14_beta, method_thresholds, search_allocation

__all__ = ["allocate", "allocate_from_calibration"]


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _options_for(calib: Calibration, first_order: bool | str | None,
                 score: Score | str | None) -> CurvatureOptions:
    """The calibration's options, with the first-order term and score optionally replaced."""
    base = calib.options
    if first_order is None and score is None:
        return base
    fo = base.first_order if first_order is None else first_order
    return CurvatureOptions.resolve(base.curvature, samples=base.samples, first_order=fo,
                                    score=base.score if score is None else score)


def allocate_from_calibration(calib: Calibration, cfg: HwConfig, *, flops_target: float,
                              method: Method | str = Method.LSP, kappa: float = DEFAULT_KAPPA,
                              smooth: float = DEFAULT_SMOOTH,
                              first_order: bool | str | None = None,
                              score: Score | str | None = None) -> Allocation:
    """Curves, power term and search on collected statistics (no model pass).

    One calibration serves every method and target; see :func:`allocate` for the parameters.
    ``first_order`` and ``score`` replace the calibration's choices (the mean gradient must
    have been collected for the first-order term or the Taylor score).
    """
    r = check_flops_target(flops_target)
    m = Method.parse(method, "method")
    if (cfg.block_k, cfg.block_n) != (calib.block_k, calib.block_n):
        raise AllocError(f"calibration was taken with block {calib.block_k}x{calib.block_n}, "
                         f"the config has {cfg.block_str}")
    check_options(kappa, smooth)
    opts = _options_for(calib, first_order, score)
    count = calib.count
    check_reachable(count, [calib.layers[n].shape for n in calib.layers], r)
    t0 = time.perf_counter()
    curves = {name: layer_curve(st, cfg, kappa=kappa, smooth=smooth, options=opts)
              for name, st in calib.layers.items()}
    t1 = time.perf_counter()
    cl = list(curves.values())
    beta = eq14_beta(cl) if m is Method.LSP else 0.0 if m is Method.BETA0 else None
    thr = method_thresholds(cl, m, beta or 0.0)
    fixed = count.macs - sum(int(c.flops[0]) for c in cl)
    budget = r * count.macs - fixed
    pruned, t = search_allocation(thr, [c.flops for c in cl], budget * (1 + 1e-12))
    t2 = time.perf_counter()
    lam = t if m.uses_slopes else None
    layers = _layer_results(cfg, count, curves, dict(zip(curves, pruned)), lam, beta)
    t3 = time.perf_counter()
    ms = MaskSet(model=calib.model, block_k=cfg.block_k, block_n=cfg.block_n,
                 order=tuple(layers), gemms={n: (g.shape.m, g.shape.n, g.shape.k)
                                             for n, g in layers.items()},
                 masks={n: r_.mask for n, r_ in layers.items()})
    timings = dict(calib.timings)
    timings.update({"curves_s": t1 - t0, "search_s": t2 - t1, "hardware_s": t3 - t2})
    return Allocation(model=calib.model, method=m, flops_target=r, block_k=cfg.block_k,
                      block_n=cfg.block_n, beta=beta, lam=_finite_or_none(lam),
                      threshold=_finite_or_none(t), kappa=float(kappa), smooth=float(smooth),
                      n_samples=calib.n_samples, labels=calib.labels, p_m_pj=p_m_pj(cfg),
                      layers=layers, curves=curves, masks=ms, count=count, options=opts,
                      seed=calib.seed, timings=timings)


def _layer_results(cfg: HwConfig, count: ModelCount, curves: dict[str, LayerCurve],
                   pruned: dict[str, int], lam: float | None,
                   beta: float | None) -> dict[str, LayerResult]:
    """Masks, FLOPs, parameters, cycles and energy of every linear layer, model order."""
    layers: dict[str, LayerResult] = {}
    for g in count.linears:
        grid = BlockGrid(g.k, g.n, cfg.block_k, cfg.block_n)
        mask = np.ones(grid.n_blocks, dtype=bool)
        c = curves.get(g.name)
        lam_i = None
        if c is not None:
            mask[c.order[:pruned[g.name]]] = False
            if lam is not None:
                lam_i = lam + (beta or 0.0) * c.dp_dalpha
        mask = mask.reshape(grid.shape)
        kept_el = int((grid.block_elements() * mask).sum())
        bias = int(count.linear_bias.get(g.name, 0))
        est = estimate_layer(cfg, g.m, g.n, g.k, mask, name=g.name)
        dense = estimate_layer(cfg, g.m, g.n, g.k, None, name=g.name)
        layers[g.name] = LayerResult(
            shape=g, grid=grid, mask=mask, excluded=c is None, flops=g.m * kept_el,
            dense_flops=g.m * g.n * g.k, params=kept_el + bias, dense_params=g.n * g.k + bias,
            cycles=est.cycles, dense_cycles=dense.cycles, energy_pj=est.energy_total_pj,
            dense_energy_pj=dense.energy_total_pj, lambda_i=_finite_or_none(lam_i))
    return layers


def allocate(model: Any, cfg: HwConfig, loader: Iterable[Any], *, flops_target: float,
             method: Method | str = Method.LSP, exclude: Iterable[str] = (),
             kappa: float = DEFAULT_KAPPA, smooth: float = DEFAULT_SMOOTH,
             options: CurvatureOptions | None = None, micro_batch: int = DEFAULT_MICRO_BATCH,
             chunk_mib: float = DEFAULT_CHUNK_MIB, seed: int = 0, progress: bool = True,
             total: int | None = None, model_name: str = "",
             shard: Shard | None = None) -> Allocation | None:
    """Choose per-layer block sparsity for a ViT with the LSP method (or a baseline).

    Parameters
    ----------
    model : torch.nn.Module
        A timm-style ViT; left unchanged.
    cfg : HwConfig
        Hardware config: its block is the pruning block, its cycle/energy model gives the
        power term.
    loader : iterable
        Calibration batches (images, or ``(images, labels)``).
    flops_target : float
        Target ratio R in (0, 1] of the dense model's MACs (attention products, patch
        embedding and head included).
    method : Method or str
        ``lsp`` (LSP with the power term), ``beta0`` (LSP with ``beta = 0``), ``uniform``
        (the same ratio in every layer), ``global`` (one threshold on all block scores).
    exclude : iterable of str
        Glob patterns of linear layers to keep dense (none by default, head included).
    kappa : float
        Damping added to the curvature ``kappa I + (1/N) sum g g^T``.
    smooth : float
        EMA half-life of the curve smoothing, as a fraction of each layer's blocks.
    options : CurvatureOptions, optional
        Curvature (``fisher`` by default), samples per image, first-order term, block score.
    micro_batch, chunk_mib : int, float
        Memory bounds of the calibration pass (:func:`calibrate`).
    seed : int
        Seed of the curvature samples.
    progress : bool
        Show a progress bar during calibration.
    total : int, optional
        Number of calibration images, for the progress bar.
    model_name : str
        Recorded in the result and the masks.
    shard : Shard, optional
        This rank's part of a calibration sharded over a torch.distributed job
        (:func:`~lsp_codesign.alloc.calibration.calibrate`); rank 0 gets the allocation.

    Returns
    -------
    Allocation or None
        ``.masks`` (a :class:`~lsp_codesign.masks_io.MaskSet`), ``.ratios``, ``.beta``,
        ``.lam``, per-layer results and curves; ``None`` on the ranks other than 0.

    Raises
    ------
    AllocError
        Target outside (0, 1] or below what pruning can reach, a block that makes a layer a
        single block, an unknown method, an empty calibration set. Target, block, method and
        options are checked before the calibration pass.
    """
    r = check_flops_target(flops_target)
    m = Method.parse(method, "method")
    check_options(kappa, smooth)
    count = count_model(model, model_name)
    prunable, _ = select_layers(count, cfg.block_k, cfg.block_n, exclude)
    check_reachable(count, prunable, r)
    calib = calibrate(model, loader, block_k=cfg.block_k, block_n=cfg.block_n, options=options,
                      exclude=exclude, micro_batch=micro_batch, chunk_mib=chunk_mib, seed=seed,
                      progress=progress, total=total, model_name=model_name, shard=shard)
    if calib is None:
        return None
    return allocate_from_calibration(calib, cfg, flops_target=r, method=m, kappa=kappa,
                                     smooth=smooth)
