"""The allocator's choices, their defaults and the checks shared by the library and the CLI.

Three independent choices shape the distortion curves (``docs/allocator.md``, "Curvature"):

* :class:`Curvature`: what the per-sample gradients ``g_n`` are, hence the matrix
  ``H = kappa I + (1/N) sum_n g_n g_n^T``;
* the **first-order term** ``gbar^T dW`` (``gbar``: mean gradient of the cross entropy at the
  data set's labels): on or off;
* :class:`Score`: how blocks are ranked, which fixes the pruning order along each curve.

:class:`Method` is the allocation rule that turns curves into per-layer ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from ..errors import LspError

__all__ = ["AllocError", "Method", "Curvature", "Score", "CurvatureOptions", "METHODS",
           "CURVATURES", "SCORES", "DEFAULT_KAPPA", "DEFAULT_SMOOTH", "DEFAULT_CHUNK_MIB",
           "DEFAULT_MICRO_BATCH", "DEFAULT_CURVATURE", "DEFAULT_SCORE", "DEFAULT_SAMPLES",
           "check_flops_target", "check_options"]


class AllocError(LspError, ValueError):
    """Bad allocator input: target, block, layer selection, calibration data, options."""


class _Choice(str, Enum):
    """A string-valued choice: compares equal to its value, prints as its value."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Any, what: str) -> "_Choice":
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(m.value for m in cls)
            raise AllocError(f"unknown {what} {value!r} (known: {known})") from None


class Method(_Choice):
    """How per-layer ratios are chosen from the curves (all under the same FLOPs search)."""

    LSP = "lsp"          # slopes meet lambda + beta |dP/dalpha| (the power term, Eq. 11/14)
    BETA0 = "beta0"      # the same with beta = 0 (the paper's ablation)
    UNIFORM = "uniform"  # the same ratio in every layer
    GLOBAL = "global"    # one threshold on all block scores

    @property
    def uses_slopes(self) -> bool:
        return self in (Method.LSP, Method.BETA0)


class Curvature(_Choice):
    """What the per-sample gradients ``g_n`` of the second-order term are."""

    FISHER = "fisher"        # grad log p(y_hat | x), y_hat sampled from the model's softmax
    GGN = "ggn"              # grad v^T f(x), v ~ N(0, I) over the logits
    EMPIRICAL = "empirical"  # grad of the cross entropy at the data set's label (the paper)


class Score(_Choice):
    """How blocks are ranked (ascending: the lowest score is pruned first)."""

    DELTA = "delta"    # the block's own second-order distortion, pruned alone
    TAYLOR = "taylor"  # the paper's first-order Taylor score: mean |W * gbar| over the block


METHODS = tuple(m.value for m in Method)
CURVATURES = tuple(c.value for c in Curvature)
SCORES = tuple(s.value for s in Score)
DEFAULT_KAPPA = 1e-7
DEFAULT_SMOOTH = 0.01
DEFAULT_CHUNK_MIB = 256
DEFAULT_MICRO_BATCH = 16
DEFAULT_CURVATURE = Curvature.EMPIRICAL
DEFAULT_SCORE = Score.DELTA
DEFAULT_SAMPLES = 1


@dataclass(frozen=True)
class CurvatureOptions:
    """The curve-shaping choices, resolved (no ``None`` left).

    Build with :meth:`resolve`, which applies the defaults: the empirical curvature, the
    ``delta`` score and no first-order term. The objective of the paper's Eq. 1 (the expected
    output distortion) has zero gradient at ``dW = 0``; at a trained model the loss gradient
    is small and mostly noise, and measured with every curvature the term makes the curves
    predict the damage worse (``docs/allocator.md``, "Curvature"). The paper's reading is
    ``resolve("empirical", first_order="on", score="taylor")``.
    """

    curvature: Curvature = DEFAULT_CURVATURE
    samples: int = DEFAULT_SAMPLES
    first_order: bool = False
    score: Score = DEFAULT_SCORE

    @classmethod
    def resolve(cls, curvature: Any = None, *, samples: Any = None, first_order: Any = None,
                score: Any = None) -> "CurvatureOptions":
        c = DEFAULT_CURVATURE if curvature is None else Curvature.parse(curvature, "curvature")
        s = DEFAULT_SCORE if score is None else Score.parse(score, "score")
        n = DEFAULT_SAMPLES if samples is None else samples
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AllocError(f"fisher samples must be a positive integer (1, 2, ...), got {n!r}")
        if first_order is None:
            fo = False
        elif isinstance(first_order, bool):
            fo = first_order
        elif first_order in ("on", "off"):
            fo = first_order == "on"
        else:
            raise AllocError(f"first-order must be on or off, got {first_order!r}")
        if c is Curvature.EMPIRICAL and n != 1:
            raise AllocError("fisher samples apply to --curvature fisher or ggn; the empirical "
                             f"curvature has one gradient per image (got {n})")
        return cls(curvature=c, samples=int(n), first_order=fo, score=s)

    @property
    def needs_gradient(self) -> bool:
        """Whether the mean loss gradient ``gbar`` is needed (first-order term, Taylor score)."""
        return self.first_order or self.score is Score.TAYLOR

    def record(self) -> dict[str, Any]:
        """The ``allocation.json`` entries."""
        return {"curvature": self.curvature.value, "fisher_samples": self.samples,
                "first_order": self.first_order, "score": self.score.value}

    def describe(self) -> str:
        per = (f", {self.samples} sample{'s' if self.samples > 1 else ''}/image"
               if self.curvature is not Curvature.EMPIRICAL else "")
        return (f"curvature {self.curvature.value}{per}, first-order "
                f"{'on' if self.first_order else 'off'}, score {self.score.value}")


def check_flops_target(flops_target: Any) -> float:
    """``flops_target`` as a float in (0, 1], or an :class:`AllocError`."""
    if isinstance(flops_target, bool) or not isinstance(flops_target,
                                                         (int, float, np.floating)):
        raise AllocError(f"FLOPs target must be a number in (0, 1], got {flops_target!r}")
    r = float(flops_target)
    if not math.isfinite(r) or not 0.0 < r <= 1.0:
        raise AllocError(f"FLOPs target must be in (0, 1] (a fraction of the dense model's "
                         f"FLOPs), got {flops_target!r}")
    return r


def check_options(kappa: Any, smooth: Any) -> None:
    """``kappa >= 0`` and ``smooth`` in [0, 1], finite numbers, or an :class:`AllocError`."""
    for name, v, hi in (("kappa", kappa, math.inf), ("smooth", smooth, 1.0)):
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and 0 <= v <= hi)
        if not ok:
            rng = ">= 0" if hi == math.inf else "in [0, 1] (EMA half-life as a fraction of " \
                "a layer's blocks)"
            raise AllocError(f"{name} must be a finite number {rng}, got {v!r}")
