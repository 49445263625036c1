"""Allocator numerics without torch: slopes, smoothing, distortion curves, power term, search.

Each pitfall of docs/allocator.md ("Pitfalls, and the test that guards each") that concerns the
math has a test here: slope near the ends, O(D^2) work at zero pruning, the cross-term sign of
the incremental update, and the sign of the power term.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_codesign.allocator import (AllocError, LayerCurve, LayerStats, block_reduce,
                                    distortion_curve, ema_smooth, eq14_beta, fd_weights,
                                    layer_curve, method_thresholds, search_allocation,
                                    slope_5pt)
from lsp_codesign.cycle_model import layer_curves
from lsp_codesign.packing import BlockGrid
from lsp_codesign.vit_shapes import GemmShape

# ---------------------------------------------------------------------------------------------
# 5-point slopes


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 12, 101])
def test_slope_exact_on_polynomials_at_every_index(n):
    rng = np.random.default_rng(n)
    x = np.linspace(-0.3, 1.7, n)
    h = x[1] - x[0]
    for deg in range(min(5, n)):
        c = rng.normal(size=deg + 1)
        y = np.polyval(c, x)
        want = np.polyval(np.polyder(c), x) if deg else np.zeros(n)
        got = slope_5pt(y, h)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * (1 + np.abs(want).max()))


def test_slope_of_a_straight_line_is_its_slope_at_the_ends():
    # the public implementation got 0.56x the true slope near the ends of a straight line
    n = 41
    y = 2.5 * np.arange(n) + 1.0
    s = slope_5pt(y, 1.0)
    assert s[0] == pytest.approx(2.5, rel=1e-12)
    assert s[1] == pytest.approx(2.5, rel=1e-12)
    assert s[-2] == pytest.approx(2.5, rel=1e-12)
    assert s[-1] == pytest.approx(2.5, rel=1e-12)
    np.testing.assert_allclose(s, 2.5, rtol=1e-12)


def test_slope_fourth_order_on_smooth_function_including_ends():
    errs = []
    for n in (41, 81):
        x = np.linspace(0.0, 1.0, n)
        got = slope_5pt(np.sin(3 * x), x[1] - x[0])
        errs.append(np.abs(got - 3 * np.cos(3 * x)).max())
    # halving h shrinks the worst error (found at the ends) by about 2^4
    assert errs[1] < errs[0] / 10
    assert errs[1] < 1e-5


def test_fd_weights_are_the_classic_centred_stencil():
    np.testing.assert_allclose(fd_weights([-2, -1, 0, 1, 2]) * 12, [1, -8, 0, 8, -1], atol=1e-12)
    with pytest.raises(ValueError):
        fd_weights([0, 0])


# ---------------------------------------------------------------------------------------------
# EMA smoothing


@pytest.mark.parametrize("n", [3, 4, 9, 100, 2305, 9217])
@pytest.mark.parametrize("half_life", [0.2, 1.0, 7.0, 60.0, 5000.0])
def test_smoothing_leaves_lines_unchanged_at_every_index(n, half_life):
    y = -3.25 * np.arange(n) + 11.0
    out = ema_smooth(y, half_life)
    np.testing.assert_allclose(out, y, rtol=0, atol=1e-8 * np.abs(y).max())


def test_smoothing_then_slope_keeps_a_line_slope_at_the_ends():
    n = 300
    y = 0.75 * np.arange(n) / n
    s = slope_5pt(ema_smooth(y, 0.05 * n), 1.0 / n)
    np.testing.assert_allclose(s, 0.75, rtol=1e-7)


def test_smoothing_removes_noise_without_lag():
    rng = np.random.default_rng(0)
    n = 2000
    x = np.arange(n, dtype=float)
    clean = (x / n) ** 2
    noisy = clean + rng.normal(0, 0.01, n)
    out = ema_smooth(noisy, 10.0)
    assert np.std(out - clean) < 0.3 * np.std(noisy - clean)
    # zero phase: smoothing commutes with reversing the curve
    np.testing.assert_allclose(ema_smooth(noisy[::-1], 10.0)[::-1], out, atol=1e-10)
    # a one-sided EMA would lag by ~half_life/ln2 samples; this one does not
    assert abs(np.mean(out[200:-200] - clean[200:-200])) < 1e-3


def test_smoothing_zero_half_life_is_identity_and_rejects_bad_values():
    y = np.array([0.0, 2.0, 1.0, 5.0])
    np.testing.assert_array_equal(ema_smooth(y, 0.0), y)
    with pytest.raises(ValueError):
        ema_smooth(y, -1.0)


# ---------------------------------------------------------------------------------------------
# Distortion curve


def _explicit_curve(g: np.ndarray, w: np.ndarray, grid: BlockGrid, order: np.ndarray,
                    kappa: float, first_order: bool = True) -> np.ndarray:
    """delta(k) = [gbar^T dW] + 1/2 dW^T H dW with H = kappa I + (1/N) sum g g^T built in
    full; the bracket only with ``first_order``."""
    n_samples = g.shape[0]
    gv = g.reshape(n_samples, -1)
    h = kappa * np.eye(gv.shape[1]) + gv.T @ gv / n_samples
    gbar = gv.mean(axis=0) if first_order else np.zeros(gv.shape[1])
    bid = ((np.arange(grid.k)[:, None] // grid.block_k) * grid.nb
           + np.arange(grid.n)[None, :] // grid.block_n).ravel()
    out = [0.0]
    for k in range(1, grid.n_blocks + 1):
        dw = np.where(np.isin(bid, order[:k]), -w.ravel(), 0.0)
        out.append(gbar @ dw + 0.5 * dw @ h @ dw)
    return np.array(out)


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("shape,block,kappa", [((6, 10), (2, 5), 0.3), ((7, 9), (4, 4), 0.0),
                                               ((5, 13), (2, 8), 1e-3)])
def test_incremental_curve_matches_explicit_quadratic_form(shape, block, kappa, first_order):
    rng = np.random.default_rng(sum(shape))
    k, n = shape
    grid = BlockGrid(k, n, *block)  # (7, 9) and (5, 13) need padding
    w = rng.normal(size=(k, n))
    g = rng.normal(size=(11, k, n)) + 0.5  # nonzero mean: first-order term present
    s = np.stack([block_reduce(gi * w, grid).ravel() for gi in g])
    order = rng.permutation(grid.n_blocks)
    w_sq = block_reduce(w * w, grid).ravel()[order]
    # <gbar_b, W_b> = mean_n s[n, b] when the g_n are the gradients whose mean is gbar
    gd = s.mean(axis=0)[order] if first_order else None
    got = distortion_curve(s, w_sq, kappa, order, grad_dot=gd)
    want = _explicit_curve(g, w, grid, order, kappa, first_order)
    assert got[0] == 0.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_incremental_curve_cross_term_by_hand():
    # one sample, two blocks: s = (a, b). delta(2) = -(a + b) + kappa/2 (w1 + w2) + (a + b)^2 / 2.
    # Adding dW_new^T H dW_new once too often (the public implementation's bug) gives + ab more.
    a, b, w1, w2, kappa = 0.7, -1.9, 2.0, 3.0, 0.1
    d = distortion_curve(np.array([[a, b]]), np.array([w1, w2]), kappa,
                         grad_dot=np.array([a, b]))
    assert d[1] == pytest.approx(-a + kappa / 2 * w1 + a * a / 2, rel=1e-14)
    assert d[2] == pytest.approx(-(a + b) + kappa / 2 * (w1 + w2) + (a + b) ** 2 / 2, rel=1e-14)


def test_curve_sample_chunks_do_not_change_the_result():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(37, 50))
    w_sq = rng.random(50)
    order = rng.permutation(50)
    full = distortion_curve(s, w_sq, 0.01, order)
    chunked = distortion_curve(s, w_sq, 0.01, order, max_elements=50 * 4)
    np.testing.assert_allclose(chunked, full, rtol=1e-12, atol=1e-12)


def _stats(k: int, n: int, n_samples: int, block: tuple[int, int], seed: int = 0,
           m: int = 197) -> LayerStats:
    rng = np.random.default_rng(seed)
    grid = BlockGrid(k, n, *block)
    return LayerStats(shape=GemmShape("blocks.0.mlp.fc1", m, n, k),
                      weight=rng.normal(0, 0.02, (k, n)).astype(np.float32),
                      grad_mean=rng.normal(0, 1e-3, (k, n)).astype(np.float32),
                      block_sums=rng.normal(0, 1e-4, (n_samples, grid.n_blocks)))


def test_zero_pruning_costs_nothing_and_work_is_linear_in_the_weights(vita):
    # a 2048x2048 layer: an explicit Fisher would hold 1.8e13 entries. The curve needs memory
    # linear in the weights (a few copies of W) and delta(0) is exactly zero.
    cfg = vita.with_overrides(block="32x32")
    st_ = _stats(2048, 2048, 64, (32, 32))
    tracemalloc.start()
    try:
        c = layer_curve(st_, cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert c.delta[0] == 0.0
    assert c.delta.shape == (4097,)
    assert peak < 12 * 2048 * 2048 * 8  # a dozen float64 copies of W at most


# ---------------------------------------------------------------------------------------------
# Power term and beta


def test_power_term_falls_as_pruning_rises(vita):
    # the paper's term is (1 - alpha) x blocks: energy must fall as blocks are pruned
    for m, n, k in [(197, 384, 1152), (197, 1536, 384), (1, 384, 1000)]:
        e = layer_curves(vita, m, n, k)["energy_pj"]
        assert np.all(np.diff(e) < 0)
        assert e[0] > 0
    small = layer_curves(vita, 197, 384, 384)["energy_pj"]
    big = layer_curves(vita, 197, 384, 1536)["energy_pj"]
    # a layer with 4x the blocks has about 4x the energy slope
    assert (big[0] - big[-1]) / (small[0] - small[-1]) == pytest.approx(4.0, rel=0.01)


def _curve(name: str, slope_per_block: np.ndarray, energy_per_block: float,
           flops_per_block: int = 100) -> LayerCurve:
    """A synthetic layer: convex delta with the given slopes, linear energy and FLOPs."""
    nb = len(slope_per_block)
    delta = np.concatenate([[0.0], np.cumsum(slope_per_block) / nb])
    grid = BlockGrid(16, 16 * nb, 16, 16)
    energy = energy_per_block * (nb - np.arange(nb + 1.0))
    return LayerCurve(
        shape=GemmShape(name, 1, 16 * nb, 16), grid=grid,
        scores=np.arange(nb, dtype=float).reshape(1, nb) + 1.0, order=np.arange(nb),
        delta=delta, delta_smooth=delta, slope=slope_5pt(delta, 1.0 / nb),
        flops=flops_per_block * (nb - np.arange(nb + 1)), energy_pj=energy,
        cycles=np.zeros(nb + 1, dtype=np.int64), dp_dalpha=energy_per_block * nb)


def _allocate(curves, method, frac):
    beta = eq14_beta(curves) if method == "lsp" else 0.0
    thr = method_thresholds(curves, method, beta)
    budget = frac * sum(int(c.flops[0]) for c in curves)
    ks, t = search_allocation(thr, [c.flops for c in curves], budget)
    return ks, beta, t


def test_power_term_shifts_pruning_to_the_costlier_layer():
    # identical distortion curves and FLOPs; layer "hot" costs 3x the energy per block
    slopes = np.linspace(0.0, 2.0, 40)
    curves = [_curve("cool", slopes, 1.0), _curve("hot", slopes, 3.0)]
    k_b0, _, _ = _allocate(curves, "beta0", 0.5)
    k_lsp, beta, _ = _allocate(curves, "lsp", 0.5)
    assert beta > 0
    assert abs(k_b0[0] - k_b0[1]) <= 1  # no power term: equal curves, equal pruning
    assert k_lsp[1] > k_lsp[0] + 5  # power term: the costlier layer is pruned more
    assert sum(k_lsp) == sum(k_b0)  # same FLOPs target, same total here


def test_eq14_beta_by_hand():
    a = _curve("a", np.linspace(0.0, 2.0, 20), 1.0)
    b = _curve("b", np.linspace(0.0, 4.0, 20), 5.0)
    want = (a.slope.max() + b.slope.max()) / (a.dp_dalpha + b.dp_dalpha)
    assert eq14_beta([a, b]) == pytest.approx(want, rel=1e-12)
    assert a.dp_dalpha == pytest.approx(20.0)


def test_lsp_layer_prunes_while_its_slope_is_below_its_target():
    slopes = np.linspace(0.0, 1.0, 50)
    c = _curve("x", slopes, 2.0)
    thr = method_thresholds([c], "lsp", beta=0.001)[0]
    lam = 0.3
    k = int(np.searchsorted(thr, lam, side="right"))
    lam_i = lam + 0.001 * c.dp_dalpha  # 0.4: inside the slope range 0..1
    assert 0 < k < c.n_blocks
    run_max = np.maximum.accumulate(c.slope)
    assert np.all(run_max[:k] <= lam_i)
    assert run_max[k] > lam_i


# ---------------------------------------------------------------------------------------------
# Search


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), frac=st.floats(0.02, 0.999))
def test_search_meets_target_within_one_block(seed, frac):
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(1, 6))
    thr, fl, blk = [], [], []
    for _ in range(layers):
        nb = int(rng.integers(2, 30))
        # ties on purpose: several blocks change at the same parameter value
        thr.append(np.sort(rng.integers(0, 8, nb).astype(float)))
        per = rng.integers(1, 50, nb)
        fl.append(np.concatenate([[per.sum()], per.sum() - np.cumsum(per)]))
        blk.append(per.max())
    dense = sum(int(f[0]) for f in fl)
    budget = frac * dense
    ks, t = search_allocation(thr, fl, budget)
    total = sum(int(f[k]) for f, k in zip(fl, ks))
    assert total <= budget
    assert total > budget - max(blk)
    assert all(0 <= k <= len(th) for k, th in zip(ks, thr))
    assert t is not None


def test_search_budget_above_dense_prunes_nothing_and_unreachable_raises():
    fl = [np.array([30, 20, 10, 0])]
    thr = [np.array([1.0, 2.0, 3.0])]
    assert search_allocation(thr, fl, 30) == ([0], None)
    assert search_allocation(thr, fl, 0)[0] == [3]
    with pytest.raises(AllocError):
        search_allocation(thr, [np.array([30, 20, 10, 5])], 4)


def test_uniform_gives_every_layer_the_same_ratio_within_a_block():
    curves = [_curve("a", np.linspace(0, 1, 24), 1.0), _curve("b", np.linspace(0, 3, 60), 1.0),
              _curve("c", np.linspace(0, 1, 7), 1.0, flops_per_block=300)]
    ks, _, _ = _allocate(curves, "uniform", 0.4)
    ratios = [k / c.n_blocks for k, c in zip(ks, curves)]
    for r, c in zip(ratios, curves):
        assert abs(r - 0.6) <= 1.5 / c.n_blocks


def test_global_threshold_prunes_lowest_scores_across_layers():
    rng = np.random.default_rng(5)
    curves = []
    for i, nb in enumerate((20, 35, 12)):
        c = _curve(f"l{i}", np.linspace(0, 1, nb), 1.0)
        scores = rng.random(nb).reshape(1, nb)
        c.scores = scores
        c.order = np.argsort(scores.ravel(), kind="stable")
        curves.append(c)
    ks, _, t = _allocate(curves, "global", 0.5)
    pruned = np.concatenate([c.scores.ravel()[c.order[:k]] for c, k in zip(curves, ks)])
    kept = np.concatenate([c.scores.ravel()[c.order[k:]] for c, k in zip(curves, ks)])
    assert pruned.max() <= kept.min()
    assert t == pytest.approx(pruned.max())
