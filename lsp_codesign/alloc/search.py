"""The search: beta (Eq. 14), each method's per-block thresholds, and the FLOPs bisection."""

from __future__ import annotations

import heapq
import math
from typing import Sequence

import numpy as np

from .curves import LayerCurve
from .options import AllocError, Method

__all__ = ["eq14_beta", "method_thresholds", "search_allocation"]


def eq14_beta(curves: Sequence[LayerCurve]) -> float:
    """``beta`` of the paper's Eq. 14: sum of each layer's largest distortion slope over the
    sum of each layer's ``|dP/dalpha|``, so both terms have the same scale (0 if undefined)."""
    num = sum(float(np.max(c.slope)) for c in curves)
    den = sum(c.dp_dalpha for c in curves)
    if den <= 0 or not math.isfinite(num) or num <= 0:
        return 0.0
    return num / den


def method_thresholds(curves: Sequence[LayerCurve], method: Method | str,
                      beta: float = 0.0) -> list[np.ndarray]:
    """For each layer, the parameter value at which its k-th block (k = 1..B) is pruned.

    A layer prunes ``#{k : thr[k-1] <= t}`` blocks at parameter ``t`` (each array is
    non-decreasing):

    ``lsp`` / ``beta0``
        ``t = lambda``; block ``k`` goes once ``lambda + beta |dP/dalpha|`` reaches the running
        maximum of the slope at ``k - 1``: the layer prunes while its smoothed slope stays at
        or below its target slope ``lambda_i``.
    ``uniform``
        ``t = alpha``; block ``k`` goes at ``alpha = (k - 1/2) / B`` (the same ratio, rounded,
        in every layer).
    ``global``
        ``t`` is a score threshold; block ``k`` goes once ``t`` reaches its score.
    """
    m = Method.parse(method, "method")
    out = []
    for c in curves:
        nb = c.n_blocks
        if m.uses_slopes:
            b = beta if m is Method.LSP else 0.0
            thr = np.maximum.accumulate(c.slope)[:-1] - b * c.dp_dalpha
        elif m is Method.UNIFORM:
            thr = (np.arange(1, nb + 1) - 0.5) / nb
        else:  # Method.GLOBAL
            thr = c.scores.ravel()[c.order].astype(float)
        out.append(np.asarray(thr, dtype=float))
    return out


def search_allocation(thresholds: Sequence[np.ndarray], flops: Sequence[np.ndarray],
                      budget: float) -> tuple[list[int], float | None]:
    """Pruned blocks per layer so that the layers' FLOPs are at most ``budget``, within one
    block.

    Bisection over the sorted values where some layer's block count changes finds the
    smallest parameter ``t`` that meets the budget. Layers whose count jumps at ``t`` then move
    from their count just below ``t`` one block at a time (the one least advanced along its
    jump first) until the budget is met, so the result is at most ``budget`` and within the
    FLOPs of one block of it.

    Parameters
    ----------
    thresholds : sequence of numpy.ndarray
        Per layer, non-decreasing, one value per block (:func:`method_thresholds`).
    flops : sequence of numpy.ndarray
        Per layer, FLOPs with ``k = 0..B`` blocks pruned (non-increasing).
    budget : float
        FLOPs allowed for these layers together.

    Returns
    -------
    pruned : list of int
        Blocks pruned per layer.
    t : float or None
        The parameter found (``None`` when nothing needs pruning).
    """
    zero = [0] * len(flops)

    def at(t: float) -> list[int]:
        return [int(np.searchsorted(th, t, side="right")) for th in thresholds]

    def total(ks: Sequence[int]) -> int:
        return int(sum(int(f[k]) for f, k in zip(flops, ks)))

    if total(zero) <= budget:
        return zero, None
    cands = np.unique(np.concatenate([np.asarray(t, dtype=float) for t in thresholds]))
    if total(at(cands[-1])) > budget:
        raise AllocError("FLOPs target cannot be reached even with every block pruned")
    lo, hi = -1, len(cands) - 1  # total(at(cands[lo])) > budget >= total(at(cands[hi]))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if total(at(cands[mid])) <= budget:
            hi = mid
        else:
            lo = mid
    k_hi = at(cands[hi])
    ks = at(cands[lo]) if lo >= 0 else list(zero)
    start = list(ks)
    cur = total(ks)
    heap = [(0.0, i) for i in range(len(ks)) if k_hi[i] > ks[i]]
    heapq.heapify(heap)
    while cur > budget:
        _, i = heapq.heappop(heap)
        cur -= int(flops[i][ks[i]] - flops[i][ks[i] + 1])
        ks[i] += 1
        if ks[i] < k_hi[i]:
            heapq.heappush(heap, ((ks[i] - start[i]) / (k_hi[i] - start[i]), i))
    return ks, float(cands[hi])

