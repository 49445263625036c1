"""Edges of the allocator's numerics and of verify, each pinned by an independent expectation.

The expected values come from hand-worked cases, the formulas of docs/allocator.md written out
directly (no incremental update, no stencil tables), small brute-force reimplementations, or a
boundary (the smallest size that is accepted, the value where a branch switches). Written for
the mutation run of issue 11: each test says which property it pins.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from lsp_codesign.alloc.calibration import LayerStats
from lsp_codesign.alloc.curves import LayerCurve, block_scores, layer_curve
from lsp_codesign.alloc.numerics import (block_reduce, distortion_curve, ema_smooth,
                                         fd_weights, single_block_delta, slope_5pt)
from lsp_codesign.alloc.options import AllocError, CurvatureOptions, Score
from lsp_codesign.alloc.search import eq14_beta, method_thresholds, search_allocation
from lsp_codesign.cycle_model import estimate_layer, layer_curves
from lsp_codesign.errors import LspError
from lsp_codesign.isa import COUNTERS
from lsp_codesign.masks_io import MaskSet
from lsp_codesign.packing import BlockGrid
from lsp_codesign.quant import quantize_activations, quantize_weights
from lsp_codesign.table import format_markdown, format_table
from lsp_codesign.verify import (LayerCheck, VerifyResult, iss_runner, sample_layers,
                                 verify_layers)
from lsp_codesign.vit_shapes import GemmShape
from tests.conftest import tiny_config

# ---------------------------------------------------------------------------------------------
# search: beta (Eq. 14)


def _bare_curve(slope, dp_dalpha=1.0, scores=None, order=None) -> LayerCurve:
    """A layer with ``len(slope) - 1`` blocks in one block row; only what the search reads is
    meaningful (slope, dp_dalpha, scores, order)."""
    slope = np.asarray(slope, dtype=float)
    nb = len(slope) - 1
    if scores is None:
        scores = np.arange(1.0, nb + 1).reshape(1, nb)
    if order is None:
        order = np.argsort(np.asarray(scores).ravel(), kind="stable")
    z = np.zeros(nb + 1)
    return LayerCurve(shape=GemmShape("x", 1, 4 * nb, 4), grid=BlockGrid(4, 4 * nb, 4, 4),
                      scores=np.asarray(scores), order=np.asarray(order), delta=z,
                      delta_smooth=z, slope=slope, flops=np.arange(nb, -1, -1),
                      energy_pj=z, cycles=z.astype(np.int64), dp_dalpha=dp_dalpha)


def test_beta_is_the_slope_sum_over_the_power_sum_also_below_one():
    # max slopes 0.5 and 0.25, chords 0.25 and 0.5: beta = 0.75 / 0.75 = 1 (a sum below 1 on
    # both sides: a cut-off at 1 instead of 0 would return 0)
    a = _bare_curve([0.1, 0.5, 0.2], dp_dalpha=0.25)
    b = _bare_curve([0.25, 0.0, 0.1], dp_dalpha=0.5)
    assert eq14_beta([a, b]) == pytest.approx(1.0, rel=1e-15)
    assert eq14_beta([a]) == pytest.approx(0.5 / 0.25, rel=1e-15)


@pytest.mark.parametrize("slopes,dp,why", [
    ([[-0.5, -0.2, -0.1]], 2.0, "every slope negative: the numerator is not positive"),
    ([[0.0, 0.0, 0.0]], 2.0, "zero numerator"),
    ([[0.3, 0.6, 0.1]], 0.0, "no power chord: the denominator is zero"),
    ([[0.3, np.inf, 0.1]], 2.0, "infinite slope"),
])
def test_beta_is_zero_when_undefined(slopes, dp, why):
    curves = [_bare_curve(s, dp_dalpha=dp) for s in slopes]
    assert eq14_beta(curves) == 0.0, why


# ---------------------------------------------------------------------------------------------
# search: per-method thresholds


def test_slope_thresholds_are_the_running_maximum_minus_the_power_term():
    # slope at k = 0..3: running max 0.5, 0.5, 0.9 (the last point is never a threshold)
    c = _bare_curve([0.5, 0.2, 0.9, 0.4], dp_dalpha=2.0)
    run_max = [0.5, 0.5, 0.9]
    got = method_thresholds([c], "lsp", beta=0.1)[0]
    np.testing.assert_allclose(got, [m - 0.1 * 2.0 for m in run_max], rtol=0, atol=1e-15)
    # beta defaults to 0; beta0 ignores any beta it is given
    np.testing.assert_array_equal(method_thresholds([c], "lsp")[0], run_max)
    np.testing.assert_array_equal(method_thresholds([c], "beta0", beta=0.1)[0], run_max)
    assert got.dtype == np.float64 and got.shape == (3,)


def test_uniform_thresholds_are_the_block_midpoints():
    c3, c4 = _bare_curve(np.zeros(4)), _bare_curve(np.zeros(5))
    u3, u4 = method_thresholds([c3, c4], "uniform")
    np.testing.assert_allclose(u3, [1 / 6, 3 / 6, 5 / 6], rtol=0, atol=1e-15)
    np.testing.assert_allclose(u4, [1 / 8, 3 / 8, 5 / 8, 7 / 8], rtol=0, atol=1e-15)


def test_global_thresholds_are_the_scores_in_pruning_order_as_floats():
    c = _bare_curve(np.zeros(4), scores=np.array([[3, 1, 2]]))  # integer scores
    got = method_thresholds([c], "global")[0]
    assert got.dtype == np.float64
    assert got.tolist() == [1.0, 2.0, 3.0]


def test_unknown_method_is_refused_by_name():
    with pytest.raises(AllocError, match=r"unknown method 'bogus' \(known: lsp, beta0, "):
        method_thresholds([_bare_curve(np.zeros(3))], "bogus")


# ---------------------------------------------------------------------------------------------
# search: the FLOPs search


def _reference_search(thr, flops, budget):
    """docs/allocator.md step 8, by brute force: the smallest candidate parameter whose counts
    meet the budget (a linear scan, no bisection); then, from the counts at the candidate just
    below it, one block at a time to the layer least advanced along its jump (ties: the
    lowest layer index) until the budget is met."""
    n_layers = len(flops)

    def counts(t):
        return [sum(1 for x in th if x <= t) for th in thr]

    def total(ks):
        return sum(int(f[k]) for f, k in zip(flops, ks))

    if total([0] * n_layers) <= budget:
        return [0] * n_layers, None
    cands = sorted({float(x) for th in thr for x in th})
    ok = [i for i, t in enumerate(cands) if total(counts(t)) <= budget]
    if not ok:
        raise AllocError("unreachable")
    i = ok[0]
    start = counts(cands[i - 1]) if i > 0 else [0] * n_layers
    hi = counts(cands[i])
    ks = list(start)
    while total(ks) > budget:
        movable = [j for j in range(n_layers) if ks[j] < hi[j]]
        j = min(movable, key=lambda j: ((ks[j] - start[j]) / (hi[j] - start[j]), j))
        ks[j] += 1
    return ks, cands[i]


def test_search_worked_by_hand():
    # layer A: thresholds 1, 2 (blocks of 4 and 6 MACs); layer B: 2, 2, 3 (3 MACs each).
    thr = [np.array([1.0, 2.0]), np.array([2.0, 2.0, 3.0])]
    flops = [np.array([10, 6, 0]), np.array([9, 6, 3, 0])]
    # dense 19. At t = 1: A 1, B 0 -> 15; at t = 2: A 2, B 2 -> 3. t = 2 meets 12 and 6.
    # Budget 12: from (1, 0) at 15, A first (lower index at a tie) -> (2, 0) at 9 <= 12.
    assert search_allocation(thr, flops, 12) == ([2, 0], 2.0)
    # Budget 6: A -> 9, then B -> (2, 1) at exactly 6: met, no further block.
    assert search_allocation(thr, flops, 6) == ([2, 1], 2.0)
    # Budget 15: t = 1 meets it exactly (A 1 block, nothing moves from (0, 0) beyond it).
    assert search_allocation(thr, flops, 15) == ([1, 0], 1.0)
    # Budget 14.5: t = 1 gives 15 > 14.5, so t = 2, starting from (1, 0).
    assert search_allocation(thr, flops, 14.5) == ([2, 0], 2.0)
    # Budget 0: everything; budget exactly the fully pruned total is reachable.
    assert search_allocation(thr, flops, 0) == ([2, 3], 3.0)
    flops_floor = [np.array([10, 6, 1]), np.array([9, 6, 3, 1])]
    assert search_allocation(thr, flops_floor, 2) == ([2, 3], 3.0)
    with pytest.raises(AllocError, match="FLOPs target cannot be reached even with every "
                                         "block pruned"):
        search_allocation(thr, flops_floor, 1.5)


def test_search_moves_the_least_advanced_layer_first():
    # both layers jump at t = 1: A by 4 blocks, B by 2. From (0, 0) at 24: A (tie, lower index)
    # -> 22, B -> 20 (B half way, A a quarter), A -> 18, A -> 16 (A half way: tie with B,
    # A has the lower index) ...
    thr = [np.ones(4), np.ones(2)]
    flops = [np.array([8, 6, 4, 2, 0]), np.array([16, 14, 12])]
    assert search_allocation(thr, flops, 22) == ([1, 0], 1.0)
    assert search_allocation(thr, flops, 20) == ([1, 1], 1.0)
    assert search_allocation(thr, flops, 18) == ([2, 1], 1.0)
    assert search_allocation(thr, flops, 16) == ([3, 1], 1.0)
    assert search_allocation(thr, flops, 14) == ([3, 2], 1.0)


def test_search_matches_a_brute_force_reference():
    rng = np.random.default_rng(11)
    for _ in range(400):
        n_layers = int(rng.integers(1, 5))
        thr, flops = [], []
        for _ in range(n_layers):
            nb = int(rng.integers(1, 7))
            thr.append(np.sort(rng.integers(0, 5, nb).astype(float)))  # ties on purpose
            per = rng.integers(1, 9, nb)
            flops.append(np.concatenate([[per.sum()], per.sum() - np.cumsum(per)]))
        dense = sum(int(f[0]) for f in flops)
        # integer budgets land exactly on reachable totals often; a few fractional ones
        budget = int(rng.integers(0, dense + 1)) + (0.5 if rng.random() < 0.2 else 0)
        want = _reference_search(thr, flops, budget)
        assert search_allocation(thr, flops, budget) == want, (thr, flops, budget)


# ---------------------------------------------------------------------------------------------
# numerics: finite-difference weights and slopes


def test_fd_weights_on_two_and_three_points():
    # two points: the forward difference f(1) - f(0); three: centred and one-sided
    np.testing.assert_allclose(fd_weights([0, 1]), [-1.0, 1.0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(fd_weights([-1, 0, 1]), [-0.5, 0.0, 0.5], rtol=0, atol=1e-14)
    np.testing.assert_allclose(fd_weights([0, 1, 2]), [-1.5, 2.0, -0.5], rtol=0, atol=1e-14)


@pytest.mark.parametrize("offsets", [[0], [], [1, 1], [0, 2, 2]])
def test_fd_weights_refuses_fewer_than_two_distinct_points(offsets):
    with pytest.raises(ValueError, match=rf"need at least two distinct offsets, got "
                                         rf"{re_list(offsets)}"):
        fd_weights(offsets)


def re_list(xs) -> str:
    import re

    return re.escape(str(list(xs)))


def test_slope_default_spacing_is_one_sample():
    assert slope_5pt(3.0 * np.arange(9) + 2.0) == pytest.approx(np.full(9, 3.0), rel=1e-12)


def test_slope_refuses_a_single_sample():
    with pytest.raises(ValueError, match="need at least 2 samples for a slope, got 1"):
        slope_5pt(np.array([1.0]))
    with pytest.raises(ValueError, match="got 0"):
        slope_5pt(np.array([]))


@pytest.mark.parametrize("n", [6, 7, 9, 12])
def test_slope_stencils_read_only_their_five_samples(n):
    # The ends use the one-sided stencils on the five end samples, the interior the centred
    # stencil on y[i-2..i+2] (docs/allocator.md step 4): a change to one sample moves exactly
    # the slopes whose window holds it. A wider or shifted window would be just as exact on
    # polynomials, so only this locality tells them apart.
    base = np.sin(np.arange(n) * 0.7)
    s0 = slope_5pt(base)
    for j in range(n):
        y = base.copy()
        y[j] += 1.0
        moved = np.flatnonzero(np.abs(slope_5pt(y) - s0) > 1e-12).tolist()
        want = sorted(i for i in range(n) if j in _window(i, n))
        assert moved == want, (j, moved, want)


def _window(i: int, n: int) -> list[int]:
    if 2 <= i <= n - 3:  # the centred stencil (1, -8, 0, 8, -1) / 12 skips y[i] itself
        return [i - 2, i - 1, i + 1, i + 2]
    return list(range(0, 5) if i < 2 else range(n - 5, n))


def test_slope_end_values_by_hand():
    # y = k^2 on 6 points: the slope 2k is exact at every index (degree 2 <= 4)
    y = np.arange(6.0) ** 2
    np.testing.assert_allclose(slope_5pt(y), 2 * np.arange(6.0), rtol=0, atol=1e-12)
    # two and three samples: the stencil through all of them
    np.testing.assert_allclose(slope_5pt(np.array([1.0, 4.0])), [3.0, 3.0], atol=1e-14)
    np.testing.assert_allclose(slope_5pt(np.array([0.0, 1.0, 4.0])), [0.0, 2.0, 4.0],
                               atol=1e-14)


# ---------------------------------------------------------------------------------------------
# numerics: EMA smoothing against a direct weighted least-squares fit


def _reference_smooth(y: np.ndarray, half_life: float) -> np.ndarray:
    """docs/allocator.md step 4 written out: at each k, the value at k of the straight line
    fitted by least squares with weights gamma^|j-k| over the whole curve."""
    n = len(y)
    gamma = 0.5 ** (1.0 / half_life)
    j = np.arange(n, dtype=float)
    out = np.empty(n)
    for k in range(n):
        sw = np.sqrt(gamma ** np.abs(j - k))
        a = np.stack([np.ones(n), j - k], axis=1) * sw[:, None]
        coef, *_ = np.linalg.lstsq(a, y * sw, rcond=None)
        out[k] = coef[0]
    return out


@pytest.mark.parametrize("n,half_life", [(3, 1.0), (3, 0.7), (4, 5.0), (5, 2.5), (7, 0.3),
                                         (20, 3.0), (40, 1000.0)])
def test_smoothing_is_the_local_weighted_line(n, half_life):
    rng = np.random.default_rng(n)
    y = np.cumsum(rng.normal(size=n)) + rng.normal(size=n) ** 2  # not a line
    got = ema_smooth(y, half_life)
    want = _reference_smooth(y, half_life)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * (1 + np.abs(y).max()))
    assert np.abs(got - y).max() > 1e-3  # it really smooths


def test_smoothing_long_curve_through_the_fft_path():
    # n x kernel length above 2^20: the FFT correlation, checked against the direct fit
    n = 1100
    x = np.linspace(0.0, 1.0, n)
    y = np.sin(7 * x) + 0.1 * np.cos(40 * x)
    got = ema_smooth(y, 200.0)
    want = _reference_smooth(y, 200.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_smoothing_short_curves_and_tiny_half_lives_are_copies():
    y2 = np.array([1.0, 5.0])
    out = ema_smooth(y2, 3.0)
    np.testing.assert_array_equal(out, y2)
    assert out is not y2
    y = np.array([0.0, 3.0, -1.0, 2.0])
    # half-life 0.02 samples: gamma = 2^-50, far below 1e-9: the weights are one spike
    np.testing.assert_array_equal(ema_smooth(y, 0.02), y)
    # one sample: no line to fit, the sample itself
    np.testing.assert_array_equal(ema_smooth(np.array([2.5]), 4.0), [2.5])
    # the result is a float curve whatever the input, at every half-life
    for hl in (0.0, 1.0):
        out = ema_smooth(np.array([0, 3, 1, 5, 2]), hl)
        assert out.dtype == np.float64
    np.testing.assert_array_equal(ema_smooth(np.array([0, 3, 1]), 0.0), [0.0, 3.0, 1.0])


@pytest.mark.parametrize("bad", [-1.0, -1e-300, float("inf"), float("nan")])
def test_smoothing_refuses_negative_or_non_finite_half_lives(bad):
    with pytest.raises(ValueError, match=r"half_life must be a finite number >= 0, got "):
        ema_smooth(np.arange(5.0), bad)


# ---------------------------------------------------------------------------------------------
# numerics: block sums and the distortion curve


def test_block_reduce_by_hand_with_edge_blocks():
    a = np.arange(15.0).reshape(3, 5)  # rows 0..2, 2x2 blocks: a 2x3 grid, edges padded
    grid = BlockGrid(3, 5, 2, 2)
    want = np.array([[0 + 1 + 5 + 6, 2 + 3 + 7 + 8, 4 + 9],
                     [10 + 11, 12 + 13, 14]], dtype=float)
    np.testing.assert_array_equal(block_reduce(a, grid), want)
    # an exact fit needs no padding
    np.testing.assert_array_equal(block_reduce(np.ones((4, 4)), BlockGrid(4, 4, 2, 2)),
                                  np.full((2, 2), 4.0))


def test_block_reduce_refuses_a_shape_off_the_grid():
    with pytest.raises(ValueError, match=r"array of shape \(3, 4\) does not match the grid "
                                         r"\(3, 5\)"):
        block_reduce(np.zeros((3, 4)), BlockGrid(3, 5, 2, 2))


def _direct_delta(s, w_sq, kappa, order, grad_dot=None):
    """delta(k) of docs/allocator.md step 3 without the incremental update: with P the first k
    blocks of ``order``, (1/2N) sum_n (sum_{b in P} s[n,b])^2 + kappa/2 sum_P ||W_b||^2
    - sum_P <gbar_b, W_b>. ``w_sq`` and ``grad_dot`` in flat block order."""
    n = s.shape[0]
    out = []
    for k in range(len(order) + 1):
        p = list(order[:k])
        d = 0.5 * np.sum(s[:, p].sum(axis=1) ** 2) / n + 0.5 * kappa * w_sq[p].sum()
        if grad_dot is not None:
            d -= grad_dot[p].sum()
        out.append(d)
    return np.array(out)


def test_distortion_curve_matches_the_direct_sum_in_float64_whatever_the_input_dtype():
    rng = np.random.default_rng(4)
    s = rng.normal(size=(5, 6)).astype(np.float32)
    w_sq = rng.random(6).astype(np.float32)
    gd = rng.normal(size=6).astype(np.float32)
    order = np.array([3, 0, 5, 1, 4, 2])
    want = _direct_delta(s.astype(np.float64), w_sq.astype(np.float64), 0.7, order,
                         gd.astype(np.float64))
    got = distortion_curve(s, w_sq[order], 0.7, order, grad_dot=gd[order])
    assert got.dtype == np.float64 and got.shape == (7,)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_distortion_curve_chunks_of_one_sample_give_the_same_curve():
    rng = np.random.default_rng(5)
    s = rng.normal(size=(7, 4))
    w_sq = rng.random(4)
    want = _direct_delta(s, w_sq, 0.2, np.arange(4))
    for max_elements in (1, 4, 8, 27, 1 << 22):
        got = distortion_curve(s, w_sq, 0.2, max_elements=max_elements)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_sums=np.zeros(4)), r"block_sums must be \(N, B\), got shape \(4,\)"),
    (dict(block_sums=np.zeros((2, 3, 1))), r"block_sums must be \(N, B\), got shape \(2, 3, 1\)"),
    (dict(block_sums=np.zeros((0, 3))), "^block_sums has no samples$"),
    (dict(w_sq=np.ones(4)), "^w_sq and order must have one entry per block$"),
    (dict(order=np.arange(2)), "^w_sq and order must have one entry per block$"),
    (dict(grad_dot=np.ones(2)), "^grad_dot must have one entry per block$"),
])
def test_distortion_curve_refuses_inconsistent_inputs(kwargs, match):
    args = dict(block_sums=np.ones((2, 3)), w_sq=np.ones(3), kappa=0.1, order=np.arange(3),
                grad_dot=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        distortion_curve(args.pop("block_sums"), args.pop("w_sq"), args.pop("kappa"), **args)


def test_single_block_delta_by_hand():
    # two samples, three blocks: 1/(2N) sum_n s^2 + kappa/2 ||W_b||^2 - <gbar_b, W_b>
    s = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -0.5]])
    w_sq = np.array([2.0, 4.0, 8.0])
    kappa = 0.5
    want = np.array([(1 + 9) / 4 + 0.5, 4 / 4 + 1.0, 0.5 / 4 + 2.0])
    np.testing.assert_allclose(single_block_delta(s, w_sq, kappa), want, rtol=1e-15)
    gd = np.array([0.25, -1.0, 0.0])
    np.testing.assert_allclose(single_block_delta(s, w_sq, kappa, grad_dot=gd), want - gd,
                               rtol=1e-15)
    # sample chunks do not change it; float32 inputs are summed in float64
    for max_elements in (1, 3, 6):
        np.testing.assert_allclose(single_block_delta(s, w_sq, kappa, grad_dot=gd,
                                                      max_elements=max_elements),
                                   want - gd, rtol=1e-15)
    rng = np.random.default_rng(8)
    s32, w32, g32 = (rng.normal(size=(9, 5)).astype(np.float32),
                     rng.random(5).astype(np.float32), rng.normal(size=5).astype(np.float32))
    want32 = (0.5 * (s32.astype(np.float64) ** 2).sum(axis=0) / 9
              + 0.5 * 0.3 * w32.astype(np.float64) - g32.astype(np.float64))
    got32 = single_block_delta(s32, w32, 0.3, grad_dot=g32)
    assert got32.dtype == np.float64
    np.testing.assert_allclose(got32, want32, rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# curves: one layer's scores, order, distortion, slope, FLOPs and energy


def _cfg2(vita):
    return vita.with_overrides(block="2x2")


def _layer_stats(k=3, n=5, m=7, n_samples=4, seed=0, grad=True, n_blocks=None):
    """A (K, N) layer with 2x2 blocks (edge blocks padded for K = 3, N = 5)."""
    rng = np.random.default_rng(seed)
    nb = BlockGrid(k, n, 2, 2).n_blocks if n_blocks is None else n_blocks
    return LayerStats(shape=GemmShape("blocks.0.mlp.fc1", m, n, k),
                      weight=rng.normal(size=(k, n)).astype(np.float32),
                      grad_mean=rng.normal(size=(k, n)).astype(np.float32) if grad else None,
                      block_sums=rng.normal(size=(n_samples, nb)))


def _per_block(a: np.ndarray, bk: int = 2, bn: int = 2) -> np.ndarray:
    """Element sums per block, flat row-major, by explicit loops over the real elements."""
    k, n = a.shape
    kb, nb = -(-k // bk), -(-n // bn)
    out = np.zeros(kb * nb)
    for r in range(k):
        for c in range(n):
            out[(r // bk) * nb + c // bn] += a[r, c]
    return out


def _stable_order(scores: np.ndarray) -> np.ndarray:
    flat = scores.ravel()
    return np.array(sorted(range(flat.size), key=lambda b: (flat[b], b)))


def test_layer_curve_by_its_formulas(vita):
    cfg = _cfg2(vita)
    st = _layer_stats()
    kappa = 0.3
    c = layer_curve(st, cfg, kappa=kappa, smooth=0.0)
    w = st.weight.astype(np.float64)
    w_sq = _per_block(w * w)
    s = st.block_sums
    # default options: empirical, first-order off, delta score
    want_scores = 0.5 * (s ** 2).mean(axis=0) + 0.5 * kappa * w_sq
    assert c.scores.shape == (2, 3)
    np.testing.assert_allclose(c.scores.ravel(), want_scores, rtol=1e-12)
    np.testing.assert_array_equal(c.order, _stable_order(c.scores))
    np.testing.assert_allclose(c.delta, _direct_delta(s, w_sq, kappa, c.order), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_array_equal(c.delta_smooth, c.delta)  # smooth 0: no smoothing
    # MACs: block elements [[4, 4, 2], [2, 2, 1]] (15 = K N); M = 7 per kept element
    elems = np.array([4, 4, 2, 2, 2, 1])[c.order]
    want_flops = 7 * (15 - np.concatenate([[0], np.cumsum(elems)]))
    assert np.issubdtype(c.flops.dtype, np.integer)
    np.testing.assert_array_equal(c.flops, want_flops)
    assert c.flops[0] == 7 * 3 * 5 and c.flops[-1] == 0
    # energy and cycles: the cycle/energy model's curves for this pruning order
    hw = layer_curves(cfg, 7, 5, 3, c.order)
    np.testing.assert_array_equal(c.energy_pj, hw["energy_pj"])
    np.testing.assert_array_equal(c.cycles, hw["cycles"])
    assert c.dp_dalpha == pytest.approx(hw["energy_pj"][0] - hw["energy_pj"][-1], rel=1e-12)
    assert c.dp_dalpha > 0
    assert c.shape is st.shape and c.grid == BlockGrid(3, 5, 2, 2) and c.n_blocks == 6
    assert c.name == "blocks.0.mlp.fc1"
    np.testing.assert_allclose(c.alpha, np.arange(7) / 6)


def test_layer_curve_slope_is_per_unit_of_pruning_ratio(vita):
    # every block sum c and every ||W_b||^2 = 4 (W all ones, no edge blocks): the scores tie,
    # the order is the flat one, delta(k) = (k c)^2 / 2 + 2 kappa k, a quadratic, so the slope
    # d delta / d alpha = B (k c^2 + 2 kappa) exactly (alpha = k / B).
    cfg = _cfg2(vita)
    cval, kappa, nb = 0.5, 0.25, 6
    st = LayerStats(shape=GemmShape("q", 3, 6, 4), weight=np.ones((4, 6), np.float32),
                    grad_mean=None, block_sums=np.full((3, nb), cval))
    c = layer_curve(st, cfg, kappa=kappa, smooth=0.0)
    k = np.arange(nb + 1)
    np.testing.assert_array_equal(c.order, np.arange(nb))
    np.testing.assert_allclose(c.delta, (k * cval) ** 2 / 2 + 2 * kappa * k, rtol=1e-13)
    np.testing.assert_allclose(c.slope, nb * (k * cval ** 2 + 2 * kappa), rtol=1e-10)


def test_layer_curve_smooths_with_a_half_life_in_blocks(vita):
    cfg = _cfg2(vita)
    st = _layer_stats(k=6, n=6, n_samples=3, seed=2)  # 9 blocks
    raw = layer_curve(st, cfg, kappa=0.1, smooth=0.0)
    c = layer_curve(st, cfg, kappa=0.1, smooth=0.5)  # half-life 0.5 x 9 blocks = 4.5 samples
    np.testing.assert_array_equal(c.delta, raw.delta)
    np.testing.assert_allclose(c.delta_smooth, _reference_smooth(raw.delta, 4.5), rtol=0,
                               atol=1e-9 * np.abs(raw.delta).max())
    np.testing.assert_allclose(c.slope, slope_5pt(c.delta_smooth, 1.0 / 9), rtol=1e-12)
    assert np.abs(c.delta_smooth - c.delta).max() > 1e-6


def test_layer_curve_first_order_term(vita):
    cfg = _cfg2(vita)
    st = _layer_stats(seed=3)
    w = st.weight.astype(np.float64)
    gd = _per_block(w * st.grad_mean.astype(np.float64))
    w_sq = _per_block(w * w)
    s = st.block_sums
    opts = CurvatureOptions.resolve(first_order="on")
    c = layer_curve(st, cfg, kappa=0.2, smooth=0.0, options=opts)
    want_scores = 0.5 * (s ** 2).mean(axis=0) + 0.1 * w_sq - gd
    np.testing.assert_allclose(c.scores.ravel(), want_scores, rtol=1e-12)
    np.testing.assert_array_equal(c.order, _stable_order(c.scores))
    np.testing.assert_allclose(c.delta, _direct_delta(s, w_sq, 0.2, c.order, gd), rtol=1e-12,
                               atol=1e-12)
    # block_scores on its own: the same, shaped like the grid
    bs = block_scores(st, BlockGrid(3, 5, 2, 2), 0.2, Score.DELTA, gd, w_sq)
    assert bs.shape == (2, 3)
    np.testing.assert_allclose(bs.ravel(), want_scores, rtol=1e-12)


def test_layer_curve_taylor_score_is_the_mean_over_real_elements(vita):
    cfg = _cfg2(vita)
    st = _layer_stats(seed=4)
    a = np.abs(st.weight.astype(np.float64) * st.grad_mean.astype(np.float64))
    want = _per_block(a) / np.array([4, 4, 2, 2, 2, 1])  # edge blocks have fewer elements
    c = layer_curve(st, cfg, kappa=0.2, smooth=0.0,
                    options=CurvatureOptions.resolve(score="taylor"))
    np.testing.assert_allclose(c.scores.ravel(), want, rtol=1e-12)
    np.testing.assert_array_equal(c.order, _stable_order(c.scores))
    # the curve itself still has no first-order term
    w = st.weight.astype(np.float64)
    np.testing.assert_allclose(c.delta, _direct_delta(st.block_sums, _per_block(w * w), 0.2,
                                                      c.order), rtol=1e-12, atol=1e-12)


def test_layer_curve_order_is_stable_among_tied_scores(vita):
    # 64 blocks whose scores take three values: ties go in flat order (a non-stable sort of
    # this many elements does not keep them)
    cfg = _cfg2(vita)
    rng = np.random.default_rng(9)
    s = np.repeat(rng.integers(0, 3, 64)[None, :].astype(float), 2, axis=0)
    st = LayerStats(shape=GemmShape("t", 2, 64, 4), weight=np.ones((4, 64), np.float32),
                    grad_mean=None, block_sums=s)
    c = layer_curve(st, cfg, kappa=0.0, smooth=0.0)
    np.testing.assert_array_equal(c.order, _stable_order(s[0]))


def test_layer_curve_default_options_and_kappa(vita):
    cfg = _cfg2(vita)
    st = _layer_stats(seed=5)
    c = layer_curve(st, cfg)  # kappa 1e-7, smooth 0.01 of 6 blocks, delta score, no gbar
    w = st.weight.astype(np.float64)
    want = 0.5 * (st.block_sums ** 2).mean(axis=0) + 0.5e-7 * _per_block(w * w)
    np.testing.assert_allclose(c.scores.ravel(), want, rtol=1e-12)


def test_layer_curve_refusals_name_the_layer(vita):
    cfg = _cfg2(vita)
    with pytest.raises(AllocError, match=r"^layer blocks.0.mlp.fc1: statistics have 5 blocks, "
                                         r"the config's block 2x2 gives 6$"):
        layer_curve(_layer_stats(n_blocks=5), cfg)
    no_grad = _layer_stats(grad=False)
    with pytest.raises(AllocError, match=r"^layer blocks.0.mlp.fc1: the first-order term needs "
                                         r"the mean gradient, which this calibration did not "
                                         r"collect$"):
        layer_curve(no_grad, cfg, options=CurvatureOptions.resolve(first_order="on"))
    with pytest.raises(AllocError, match=r"^layer blocks.0.mlp.fc1: the Taylor score needs the "
                                         r"mean gradient, which this calibration did not "
                                         r"collect$"):
        layer_curve(no_grad, cfg, options=CurvatureOptions.resolve(score="taylor"))
    # the delta score without the first-order term needs no gradient
    assert layer_curve(no_grad, cfg).n_blocks == 6


# ---------------------------------------------------------------------------------------------
# verify: quantise, compile, run on the ISS, judge (bit- and cycle-exact)

_GEMMS = {"a": (5, 8, 8), "b": (3, 4, 6)}
_MASKS = {"a": np.array([[True, False], [True, True]]), "b": np.array([[True], [False]])}


def _elem_mask(mask: np.ndarray, k: int, n: int) -> np.ndarray:
    return np.kron(mask, np.ones((4, 4), dtype=bool))[:k, :n]


def _verify_case(seed=0):
    """Two small layers on a 4x4 block config: real-valued inputs and masked weights."""
    cfg = tiny_config("4x4")
    ms = MaskSet("tiny", 4, 4, ("a", "b"), dict(_GEMMS), dict(_MASKS))
    rng = np.random.default_rng(seed)
    inputs = {nm: rng.normal(size=(m, n)) for nm, (m, n, k) in _GEMMS.items()}
    weights = {nm: rng.normal(size=(k, n)) * _elem_mask(_MASKS[nm], k, n)
               for nm, (m, n, k) in _GEMMS.items()}
    return cfg, ms, inputs, weights


class _Recorder:
    """The ISS runner, recording the programs it is given and corrupting results on request."""

    def __init__(self, edit=None):
        self.programs, self.edit, self.progress = None, edit, "not given"

    def __call__(self, cfg, programs, progress="not given"):
        self.programs, self.progress = list(programs), progress
        res = iss_runner(cfg, programs)
        return self.edit(res) if self.edit else res


def test_verify_layers_judges_each_layer_against_numpy_and_the_model():
    cfg, ms, inputs, weights = _verify_case()
    run = _Recorder()
    checks = verify_layers(cfg, ms, ["a", "b"], inputs, weights, runner=run)
    assert run.progress is True  # the runner shows progress unless told not to
    # dense twins by default: the sparse programs first, then the dense ones, in order
    assert [p.extra["name"] for p in run.programs] == ["a", "b", "a dense", "b dense"]
    assert [lc.name for lc in checks] == ["a", "b"]
    for lc in checks:
        m, n, k = _GEMMS[lc.name]
        mask = _MASKS[lc.name]
        est, dense = estimate_layer(cfg, m, n, k, mask), estimate_layer(cfg, m, n, k, None)
        assert (lc.m, lc.n, lc.k) == (m, n, k)
        assert (lc.kept_blocks, lc.total_blocks) == (int(mask.sum()), mask.size)
        assert lc.ok and lc.y_match and lc.counters_match
        assert lc.error is None and lc.first_diff is None and lc.counter_diffs == []
        assert lc.rtl_cycles == lc.model_cycles == est.cycles
        assert lc.dense_rtl_cycles == lc.dense_model_cycles == dense.cycles
        want = {c: int(est.counters[c]) for c in COUNTERS}
        assert lc.counters_rtl == want and lc.counters_model == want
        # quantisation error of the int8 layer against the float layer, worked out directly
        xq, xs = quantize_activations(inputs[lc.name])
        wq, ws = quantize_weights(weights[lc.name])
        wq_kept = wq.astype(np.int64) * _elem_mask(mask, k, n)
        y_deq = (xq.astype(np.int64) @ wq_kept.T) * xs * ws[None, :]
        y_float = inputs[lc.name] @ weights[lc.name].T
        rel = np.abs(y_deq - y_float).max() / np.abs(y_float).max()
        assert lc.float_rel_err == pytest.approx(rel, rel=1e-9)
        assert 0 < lc.float_rel_err < 0.05
        assert lc.measured_speedup == pytest.approx(dense.cycles / est.cycles)


def test_verify_layers_without_dense_twins():
    cfg, ms, inputs, weights = _verify_case()
    run = _Recorder()
    checks = verify_layers(cfg, ms, ["b"], inputs, weights, runner=run, dense=False,
                           progress=False)
    assert [p.extra["name"] for p in run.programs] == ["b"]
    assert run.progress is False
    (lc,) = checks
    assert lc.ok and lc.dense_rtl_cycles is None and lc.measured_speedup is None
    assert lc.dense_model_cycles == estimate_layer(cfg, 3, 4, 6, None).cycles


def test_verify_layers_names_what_differs_in_the_dense_twin():
    cfg, ms, inputs, weights = _verify_case()
    stop = r"engine stopped with error \w+ \(code 1\)"
    diff = r"first differing element Y\[0, 0\] \(token tile 0, block row 0\): ISS -?\d+, " \
           r"numpy -?\d+; 1 of 40 elements differ"

    def dense_only(res):
        res[2].y_words[0] ^= 1                                     # a dense: one bit of Y[0, 0]
        res[3] = replace(res[3], error=True, err_code=1)           # b dense: stopped
        res[3].counters["cycles"] += 1                             # b dense: one cycle more
        return res

    a, b = verify_layers(cfg, ms, ["a", "b"], inputs, weights, runner=_Recorder(dense_only),
                         progress=False, who="ISS")
    assert a.y_match and a.counters_match and not a.ok
    assert re.fullmatch(f"dense run: {diff}", a.error), a.error
    assert re.fullmatch(f"dense run: {stop}", b.error), b.error
    dense_b = estimate_layer(cfg, 3, 4, 6, None).cycles
    assert b.dense_rtl_cycles == dense_b + 1
    assert b.counter_diffs == [f"dense cycles: ISS {dense_b + 1}, model {dense_b}"]
    assert not b.counters_match and b.y_match

    def both(res):
        res[0] = replace(res[0], error=True, err_code=1)           # a: stopped
        res[1].y_words[0] ^= 1                                     # a dense: one bit of Y[0, 0]
        res[1] = replace(res[1], error=True, err_code=1)           # a dense: stopped as well
        return res

    (a,) = verify_layers(cfg, ms, ["a"], inputs, weights, runner=_Recorder(both),
                         progress=False, who="ISS")
    assert re.fullmatch(f"{stop}; dense run: {diff}; dense run: {stop}", a.error), a.error
    assert a.y_match and a.counters_match and a.counter_diffs == []


def test_verify_layers_default_runner_name_is_rtl():
    cfg, ms, inputs, weights = _verify_case()

    def slow(res):
        res[0].counters["cycles"] += 1
        return res

    (lc,) = verify_layers(cfg, ms, ["a"], inputs, weights, runner=_Recorder(slow),
                          progress=False)
    c = estimate_layer(cfg, 5, 8, 8, _MASKS["a"]).cycles
    assert lc.counter_diffs == [f"cycles: RTL {c + 1}, model {c}"]
    assert lc.rtl_cycles == c + 1 and lc.counters_rtl["cycles"] == c + 1
    assert lc.counters_model["cycles"] == c and not lc.ok


def test_verify_layers_refusals():
    cfg, ms, inputs, weights = _verify_case()
    with pytest.raises(LspError, match=r"^simulator returned 3 results for 4 programs$"):
        verify_layers(cfg, ms, ["a", "b"], inputs, weights, progress=False,
                      runner=_Recorder(lambda res: res[:3]))
    bad = dict(inputs, b=np.zeros((4, 4)))
    with pytest.raises(LspError, match=r"^b: captured input is \(4, 4\), the masks say M=3, "
                                       r"N=4$"):
        verify_layers(cfg, ms, ["a", "b"], bad, weights, runner=iss_runner, progress=False)
    # a layer the config cannot hold: the compiler's message, plus the config when named
    small = tiny_config("4x4", dram_mib=0.0005)
    with pytest.raises(LspError, match=r"dram.capacity_mib\) \(config runs/x/hw.yaml\)$"):
        verify_layers(small, ms, ["a"], inputs, weights, runner=iss_runner, progress=False,
                      where="runs/x/hw.yaml")
    with pytest.raises(LspError, match=r"\(dram.capacity_mib\)$"):
        verify_layers(small, ms, ["a"], inputs, weights, runner=iss_runner, progress=False)


def test_verify_layers_refuses_an_engine_without_rtl(tpu):
    cfg, ms, inputs, weights = _verify_case()
    cfg_sys = tpu.with_overrides(block="4x4")
    tail = "a systolic config; only the block_sparse engine has RTL to verify against$"
    with pytest.raises(LspError, match=rf"^{re.escape(cfg_sys.name)}: {tail}"):
        verify_layers(cfg_sys, ms, ["a"], inputs, weights, runner=iss_runner, progress=False)
    with pytest.raises(LspError, match=rf"^runs/x/hw.yaml: {tail}"):
        verify_layers(cfg_sys, ms, ["a"], inputs, weights, runner=iss_runner, progress=False,
                      where="runs/x/hw.yaml")


# -- sampling the layers to verify


def test_sample_layers_bounds_and_order():
    order = [f"l{i}" for i in range(10)]
    assert sample_layers(order, "all") == order
    assert sample_layers(order, "10") == order         # every layer: the upper bound
    for seed in range(20):
        one = sample_layers(order, "1", seed=seed)     # the lower bound
        assert len(one) == 1 and one[0] in order
        four = sample_layers(order, "4", seed=seed)
        assert len(set(four)) == 4 and four == [x for x in order if x in four]
    assert sample_layers(order, "4") == sample_layers(order, "4", seed=0)  # default seed 0
    assert len({tuple(sample_layers(order, "4", seed=s)) for s in range(20)}) > 1
    with pytest.raises(LspError, match=r"^--layers: 0 is not between 1 and the 10 layers of "
                                       r"the run$"):
        sample_layers(order, "0")
    with pytest.raises(LspError, match=r"^--layers: 11 is not between 1 and the 10 layers"):
        sample_layers(order, "11")
    with pytest.raises(LspError, match=r"^--layers: expected 'all' or a positive number, got "
                                       r"'ALL'$"):
        sample_layers(order, "ALL")


# -- the verdict's totals, JSON record and table


def _lc(name, rtl, model, dense_rtl, dense_model, *, y=True, counters=True, mnk=(5, 8, 8),
        kept=(3, 4)):
    return LayerCheck(name=name, m=mnk[0], n=mnk[1], k=mnk[2], kept_blocks=kept[0],
                      total_blocks=kept[1], y_match=y, counters_match=counters,
                      rtl_cycles=rtl, model_cycles=model, dense_rtl_cycles=dense_rtl,
                      dense_model_cycles=dense_model, counters_rtl={"cycles": rtl},
                      counters_model={"cycles": model})


_HDR = ["layer", "MxN->K", "kept", "RTL cycles", "model cycles", "dense RTL", "speedup", "Y",
        "counters"]


def test_verify_totals_and_table_worked_by_hand():
    a = _lc("a", 1000, 1000, 3000, 2500)
    b = _lc("b", 500, 600, 1000, 1800, y=False, counters=False, mnk=(3, 4, 6), kept=(1, 2))
    res = VerifyResult(run_dir="runs/x", sim="iss", config={"name": "c"}, layers=[a, b],
                       wall_s=1.5)
    t = res.totals()
    assert t == {"layers": 2, "ok": False, "layers_failed": ["b"], "rtl_cycles": 1500,
                 "model_cycles": 1600, "dense_model_cycles": 4300,
                 "model_speedup": pytest.approx(4300 / 1600), "dense_rtl_cycles": 4000,
                 "measured_speedup": pytest.approx(4000 / 1500),
                 "speedup_rel_diff": pytest.approx((4000 / 1500) / (4300 / 1600) - 1)}
    rows = [["a", "5x8->8", "3/4", "1,000", "1,000", "3,000", "3.00x", "bit-exact", "equal"],
            ["b", "3x4->6", "1/2", "500", "600", "1,000", "2.00x", "MISMATCH", "MISMATCH"]]
    total = ["TOTAL", "", "", "1,500", "1,600", "4,000", "2.67x", "FAIL", "FAIL"]
    assert res.table() == format_table(_HDR, rows, left=2, total=total)
    assert res.table("text") == res.table()
    assert res.table("markdown") == format_markdown(_HDR, rows, left=2, total=total)
    # all good: the totals row says ok
    good = VerifyResult("runs/x", "iss", {}, [a], 0.1)
    assert good.table().splitlines()[-1].split()[-2:] == ["ok", "ok"]
    assert good.totals()["ok"] is True and good.totals()["layers_failed"] == []
    # the JSON record
    d = res.to_dict()
    assert set(d) == {"run_dir", "sim", "config", "wall_s", "totals", "layers"}
    assert (d["run_dir"], d["sim"], d["config"], d["wall_s"]) == ("runs/x", "iss",
                                                                  {"name": "c"}, 1.5)
    assert d["totals"] == t
    assert d["layers"][0]["ok"] is True and d["layers"][1]["ok"] is False
    assert d["layers"][0]["measured_speedup"] == pytest.approx(3.0)
    assert d["layers"][1]["model_speedup"] == pytest.approx(3.0)
    assert d["layers"][1]["rtl_cycles"] == 500 and d["layers"][1]["name"] == "b"


def test_verify_totals_when_a_dense_run_or_a_cycle_count_is_missing():
    a = _lc("a", 1000, 1000, 3000, 2500)
    no_dense = _lc("b", 500, 600, None, 1800)
    res = VerifyResult("r", "iss", {}, [a, no_dense], 0.0)
    t = res.totals()
    assert not {"dense_rtl_cycles", "measured_speedup", "speedup_rel_diff"} & set(t)
    assert t["ok"] is True
    rows = [["a", "5x8->8", "3/4", "1,000", "1,000", "3,000", "3.00x", "bit-exact", "equal"],
            ["b", "5x8->8", "3/4", "500", "600", "-", "-", "bit-exact", "equal"]]
    total = ["TOTAL", "", "", "1,500", "1,600", "-", "-", "ok", "ok"]
    assert res.table() == format_table(_HDR, rows, left=2, total=total)
    # zero RTL cycles: no measured speedup; zero model cycles: no model speedup, no ratio
    zero_rtl = VerifyResult("r", "iss", {}, [_lc("z", 0, 10, 40, 20)], 0.0).totals()
    assert zero_rtl["measured_speedup"] is None and "speedup_rel_diff" not in zero_rtl
    assert zero_rtl["model_speedup"] == pytest.approx(2.0)
    zero_model = VerifyResult("r", "iss", {}, [_lc("z", 10, 0, 40, 20)], 0.0).totals()
    assert zero_model["model_speedup"] is None and "speedup_rel_diff" not in zero_model
    assert zero_model["measured_speedup"] == pytest.approx(4.0)


def test_verify_float_error_is_relative_to_the_layer_output():
    # scaling the activations scales the float and the dequantised outputs alike: the relative
    # quantisation error is the same for outputs far below 1
    cfg, ms, inputs, weights = _verify_case(seed=3)
    (big,) = verify_layers(cfg, ms, ["b"], inputs, weights, runner=iss_runner, dense=False,
                           progress=False)
    small_in = {k: v * 1e-4 for k, v in inputs.items()}
    (small,) = verify_layers(cfg, ms, ["b"], small_in, weights, runner=iss_runner, dense=False,
                             progress=False)
    assert np.abs(small_in["b"] @ weights["b"].T).max() < 1e-3
    assert small.float_rel_err == pytest.approx(big.float_rel_err, rel=1e-6)
    assert big.float_rel_err > 0


def test_verify_without_dense_twins_compiles_only_the_pruned_layer():
    # 1 of 256 blocks kept: the pruned layer's DRAM image fits 0.006 MiB, the dense one does not
    cfg = tiny_config("4x4", dram_mib=0.006)
    mask = np.zeros((16, 16), dtype=bool)
    mask[0, 0] = True
    ms = MaskSet("tiny", 4, 4, ("c",), {"c": (4, 64, 64)}, {"c": mask})
    rng = np.random.default_rng(1)
    inputs = {"c": rng.normal(size=(4, 64))}
    weights = {"c": rng.normal(size=(64, 64)) * _elem_mask(mask, 64, 64)}
    (lc,) = verify_layers(cfg, ms, ["c"], inputs, weights, runner=iss_runner, dense=False,
                          progress=False)
    assert lc.ok and lc.kept_blocks == 1
    with pytest.raises(LspError, match=r"^c dense: the layer's DRAM image needs .* "
                                       r"\(dram.capacity_mib\)$"):
        verify_layers(cfg, ms, ["c"], inputs, weights, runner=iss_runner, progress=False)


def test_iss_runner_returns_what_the_iss_computed():
    import time

    from lsp_codesign.compiler import compile_layer
    from lsp_codesign.isa import ERROR_CODES
    from lsp_codesign.iss import Memories, run_iss

    cfg = tiny_config("4x4")
    rng = np.random.default_rng(2)
    prog = compile_layer(cfg, rng.integers(-127, 128, (3, 4), dtype=np.int8),
                         rng.integers(-127, 128, (6, 4), dtype=np.int8), _MASKS["b"], name="b")
    broken = replace(prog, words=[0x00000033] + list(prog.words[1:]))  # an illegal instruction
    t0 = time.perf_counter()
    good, bad = iss_runner(cfg, [prog, broken])
    elapsed = time.perf_counter() - t0
    ref = run_iss(cfg, Memories.from_program(prog))
    assert good.y_words == ref.y_words(prog.y_base, prog.y_words)
    assert len(good.y_words) == prog.y_words
    assert good.counters == ref.counters
    assert good.error is False and good.err_code == 0
    assert bad.error is True and bad.err_code == ERROR_CODES["illegal_instruction"]
    assert 0 < good.wall_s and 0 < bad.wall_s and good.wall_s + bad.wall_s <= elapsed


def test_verify_applies_the_mask_to_its_reference():
    # The engine multiplies by the kept blocks only (docs/hw.md); the numpy reference must use
    # the same operands, so weights whose pruned blocks still hold values verify bit for bit.
    cfg, ms, inputs, weights = _verify_case(seed=5)
    rng = np.random.default_rng(6)
    unmasked = {nm: w + rng.normal(size=w.shape) * ~_elem_mask(_MASKS[nm], *w.shape)
                for nm, w in weights.items()}
    assert all(np.abs(unmasked[nm] - weights[nm]).max() > 0.1 for nm in weights)
    checks = verify_layers(cfg, ms, ["a", "b"], inputs, unmasked, runner=iss_runner,
                           dense=False, progress=False)
    assert all(lc.y_match and lc.ok for lc in checks)
