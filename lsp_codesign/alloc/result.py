"""What an allocation is: per-layer results and the whole-model totals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..flops import ModelCount
from ..masks_io import MaskSet
from ..packing import BlockGrid
from ..vit_shapes import GemmShape
from .curves import LayerCurve
from .options import CurvatureOptions, Method

__all__ = ["LayerResult", "Allocation", "summary_by_kind"]


@dataclass
class LayerResult:
    """The allocation of one linear layer (prunable or excluded).

    ``ratio`` is the pruning ratio alpha (fraction of blocks pruned); ``flops`` are MACs of one
    image; ``cycles``/``energy_pj`` are the cycle/energy model's prediction for this layer's
    GEMM with its mask (``dense_*`` without one).
    """

    shape: GemmShape
    grid: BlockGrid
    mask: np.ndarray
    excluded: bool
    flops: int
    dense_flops: int
    params: int
    dense_params: int
    cycles: int
    dense_cycles: int
    energy_pj: float
    dense_energy_pj: float
    lambda_i: float | None = None

    @property
    def name(self) -> str:
        return self.shape.name

    @property
    def kind(self) -> str:
        return self.shape.kind

    @property
    def kept_blocks(self) -> int:
        return int(self.mask.sum())

    @property
    def total_blocks(self) -> int:
        return self.grid.n_blocks

    @property
    def ratio(self) -> float:
        return 1.0 - self.kept_blocks / self.total_blocks

    @property
    def kept_fraction(self) -> float:
        return self.kept_blocks / self.total_blocks


@dataclass
class Allocation:
    """Result of :func:`allocate`.

    Attributes
    ----------
    model : str
        Model name.
    method : Method
        Allocation method.
    flops_target : float
        Target ratio R of the dense model's MACs.
    beta : float or None
        Power-term weight (Eq. 14 for ``lsp``, 0 for ``beta0``, None for the baselines that
        have no such term).
    lam : float or None
        ``lambda`` found by the search (``lsp``/``beta0``; None when nothing is pruned or for
        the other methods).
    threshold : float or None
        The search parameter of any method (``lambda``, the uniform ratio, or the score
        threshold).
    layers : dict
        ``{name: LayerResult}`` for every linear layer, model order.
    curves : dict
        ``{name: LayerCurve}`` for every prunable layer.
    masks : MaskSet
        Block masks of every linear layer (all ones for excluded layers).
    count : ModelCount
        The dense model's MACs and parameters.
    options : CurvatureOptions
        Curvature, samples per image, first-order term and score of the curves.
    seed : int
        Seed of the calibration images and curvature samples.
    """

    model: str
    method: Method
    flops_target: float
    block_k: int
    block_n: int
    beta: float | None
    lam: float | None
    threshold: float | None
    kappa: float
    smooth: float
    n_samples: int
    labels: str
    p_m_pj: float
    layers: dict[str, LayerResult]
    curves: dict[str, LayerCurve]
    masks: MaskSet
    count: ModelCount
    options: CurvatureOptions = field(default_factory=CurvatureOptions)
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ratios(self) -> dict[str, float]:
        """Pruning ratio (fraction of blocks pruned) of every linear layer."""
        return {n: r.ratio for n, r in self.layers.items()}

    @property
    def dense_flops(self) -> int:
        return self.count.macs

    @property
    def flops(self) -> int:
        """Achieved MACs of one image after pruning (whole model)."""
        return self.count.macs - sum(r.dense_flops - r.flops for r in self.layers.values())

    @property
    def target_flops(self) -> float:
        return self.flops_target * self.count.macs

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.count.macs

    @property
    def min_flops_ratio(self) -> float:
        """Smallest reachable ratio: every block of every prunable layer pruned."""
        prunable = sum(r.dense_flops for r in self.layers.values() if not r.excluded)
        return (self.count.macs - prunable) / self.count.macs

    def kept_fraction_by_kind(self) -> dict[str, float]:
        """Fraction of blocks kept per layer type (``qkv``, ``proj``, ``fc1``, ``fc2``,
        ``head``), prunable layers only."""
        kept: dict[str, int] = {}
        tot: dict[str, int] = {}
        for r in self.layers.values():
            if r.excluded:
                continue
            kept[r.kind] = kept.get(r.kind, 0) + r.kept_blocks
            tot[r.kind] = tot.get(r.kind, 0) + r.total_blocks
        return {k: kept[k] / tot[k] for k in tot}

    def totals(self) -> dict[str, Any]:
        """Whole-model figures (the ``totals`` entry of ``allocation.json``)."""
        rs = list(self.layers.values())
        by_kind = self.count.macs_by_kind()
        dense_params = self.count.params
        params = dense_params - sum(r.dense_params - r.params for r in rs)
        cyc, cyc_d = sum(r.cycles for r in rs), sum(r.dense_cycles for r in rs)
        e, e_d = sum(r.energy_pj for r in rs), sum(r.dense_energy_pj for r in rs)
        return {
            "dense_flops": int(self.count.macs),
            "flops": int(self.flops),
            "flops_ratio": self.flops_ratio,
            "target_flops": self.target_flops,
            "min_flops_ratio": self.min_flops_ratio,
            "max_block_flops": int(max((r.shape.m * r.grid.block_k * r.grid.block_n
                                        for r in rs if not r.excluded), default=0)),
            "linear_dense_flops": int(by_kind["linear"]),
            "linear_flops": int(sum(r.flops for r in rs)),
            "attention_flops": int(by_kind["attention"]),
            "patch_embed_flops": int(by_kind["patch_embed"]),
            "dense_params": int(dense_params),
            "params": int(params),
            "params_ratio": params / dense_params,
            "kept_blocks": int(sum(r.kept_blocks for r in rs)),
            "total_blocks": int(sum(r.total_blocks for r in rs)),
            "cycles": int(cyc),
            "dense_cycles": int(cyc_d),
            "speedup": cyc_d / cyc if cyc else float("inf"),
            "energy_pj": float(e),
            "dense_energy_pj": float(e_d),
            "energy_ratio": e / e_d if e_d else 1.0,
        }

    def layer_entries(self) -> dict[str, dict[str, Any]]:
        """Per-layer entries of ``allocation.json``, keyed by module name, model order."""
        out = {}
        for name, r in self.layers.items():
            c = self.curves.get(name)
            out[name] = {
                "kind": r.kind, "m": r.shape.m, "n": r.shape.n, "k": r.shape.k,
                "block_k": r.grid.block_k, "block_n": r.grid.block_n,
                "kb": r.grid.kb, "nb": r.grid.nb,
                "kept_blocks": r.kept_blocks, "total_blocks": r.total_blocks,
                "ratio": r.ratio, "kept_fraction": r.kept_fraction, "excluded": r.excluded,
                "flops": int(r.flops), "dense_flops": int(r.dense_flops),
                "params": int(r.params), "dense_params": int(r.dense_params),
                "cycles": int(r.cycles), "dense_cycles": int(r.dense_cycles),
                "energy_pj": float(r.energy_pj), "dense_energy_pj": float(r.dense_energy_pj),
                "lambda_i": r.lambda_i,
                "dP_dalpha_pj": None if c is None else c.dp_dalpha,
                "max_slope": None if c is None else float(np.max(c.slope)),
                "delta_at_ratio": None if c is None else float(
                    c.delta[r.total_blocks - r.kept_blocks]),
            }
        return out




def summary_by_kind(alloc: Allocation) -> dict[str, dict[str, float]]:
    """Per layer type: layers, kept fraction of blocks, mean layer size (weight elements)."""
    out: dict[str, dict[str, float]] = {}
    for r in alloc.layers.values():
        if r.excluded:
            continue
        d = out.setdefault(r.kind, {"layers": 0, "kept_blocks": 0, "total_blocks": 0,
                                    "weights": 0})
        d["layers"] += 1
        d["kept_blocks"] += r.kept_blocks
        d["total_blocks"] += r.total_blocks
        d["weights"] += r.shape.n * r.shape.k
    return {k: {"layers": v["layers"], "kept_fraction": v["kept_blocks"] / v["total_blocks"],
                "weights_per_layer": v["weights"] / v["layers"]} for k, v in out.items()}

