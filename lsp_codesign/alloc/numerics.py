"""The allocator's numerics, numpy only: slopes, smoothing, block sums and distortion curves."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..packing import BlockGrid

__all__ = ["fd_weights", "slope_5pt", "ema_smooth", "block_reduce", "distortion_curve",
           "single_block_delta"]


def fd_weights(offsets: Sequence[float]) -> np.ndarray:
    """Weights of the first-derivative stencil at 0 on points ``offsets`` (unit spacing).

    The stencil is exact for every polynomial of degree below ``len(offsets)``: it is the
    derivative at 0 of the Lagrange polynomial through the points.
    """
    o = np.asarray(offsets, dtype=float)
    p = len(o)
    if p < 2 or len(set(o.tolist())) != p:
        raise ValueError(f"need at least two distinct offsets, got {list(offsets)}")
    vander = np.vander(o, p, increasing=True).T  # row q: o_j ** q
    rhs = np.zeros(p)
    rhs[1] = 1.0  # d/dx x^q at 0 is 1 for q = 1, else 0
    return np.linalg.solve(vander, rhs)


def slope_5pt(y: np.ndarray, h: float = 1.0) -> np.ndarray:
    """First derivative of samples ``y`` (spacing ``h``) at every index, ends included.

    Interior points use the 5-point centred difference
    ``(y[i-2] - 8 y[i-1] + 8 y[i+1] - y[i+2]) / (12 h)``; the two points at each end use the
    one-sided 5-point stencils on the same five end samples. Every stencil is exact for
    polynomials of degree 4 or less, so a straight line gets its slope at every index (a
    centred formula with clamped or mirrored ends does not). Curves of 2 to 4 samples use the
    stencil through all of them.
    """
    y = np.asarray(y, dtype=float)
    n = y.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 samples for a slope, got {n}")
    p = min(5, n)
    out = np.empty(n)
    if n >= 5:
        out[2:-2] = (y[:-4] - 8.0 * y[1:-3] + 8.0 * y[3:-1] - y[4:]) / 12.0
        ends = (0, 1, n - 2, n - 1)
    else:
        ends = tuple(range(n))
    for i in ends:
        start = min(max(i - p // 2, 0), n - p)
        w = fd_weights(np.arange(start, start + p) - i)
        out[i] = w @ y[start:start + p]
    return out / h


def _correlate_same(y: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``out[k] = sum_d kernel[d + L] * y[k + d]`` for ``d = -L..L``, zero outside ``y``."""
    n, m = y.shape[0], kernel.shape[0]
    half = m // 2
    if n * m <= 1 << 20:
        return np.correlate(np.pad(y, half), kernel, mode="valid")
    size = 1 << int(math.ceil(math.log2(n + m - 1)))
    full = np.fft.irfft(np.fft.rfft(y, size) * np.fft.rfft(kernel[::-1], size), size)
    return full[half: half + n]


def ema_smooth(y: np.ndarray, half_life: float) -> np.ndarray:
    """Two-sided exponential-moving-average smoothing with a local-linear correction.

    Each point becomes the value at that point of a straight line fitted by weighted least
    squares with EMA weights ``gamma ** |j - k|`` (``gamma = 0.5 ** (1 / half_life)``) over
    the whole curve. Unlike a one-sided EMA it has no lag, and unlike a plain weighted average
    it leaves straight lines exactly unchanged, ends included, so smoothing never biases the
    slopes taken from it. ``half_life`` is in samples; ``0`` returns a copy.
    """
    y = np.asarray(y, dtype=float)
    n = y.shape[0]
    if half_life < 0 or not math.isfinite(half_life):
        raise ValueError(f"half_life must be a finite number >= 0, got {half_life!r}")
    if half_life == 0 or n < 3:
        return y.copy()
    gamma = 0.5 ** (1.0 / half_life)
    if gamma < 1e-9:  # half-life far below one sample: the weights are a single spike
        return y.copy()
    reach = int(min(n - 1, math.ceil(math.log(1e-13) / math.log(gamma))))
    d = np.arange(-reach, reach + 1, dtype=float)
    w = gamma ** np.abs(d)
    ones = np.ones(n)
    s0 = _correlate_same(ones, w)
    s1 = _correlate_same(ones, w * d)
    s2 = _correlate_same(ones, w * d * d)
    t0 = _correlate_same(y, w)
    t1 = _correlate_same(y, w * d)
    det = s0 * s2 - s1 * s1
    return (s2 * t0 - s1 * t1) / det


def block_reduce(a: np.ndarray, grid: BlockGrid) -> np.ndarray:
    """Sum of a ``(K, N)`` array over each block of ``grid`` (zero padding), ``(KB, NB)``."""
    a = np.asarray(a)
    if a.shape != (grid.k, grid.n):
        raise ValueError(f"array of shape {a.shape} does not match the grid ({grid.k}, {grid.n})")
    if a.shape != (grid.k_pad, grid.n_pad):
        a = np.pad(a, ((0, grid.k_pad - grid.k), (0, grid.n_pad - grid.n)))
    return a.reshape(grid.kb, grid.block_k, grid.nb, grid.block_n).sum(axis=(1, 3))


def distortion_curve(block_sums: np.ndarray, w_sq: np.ndarray, kappa: float,
                     order: np.ndarray | None = None, *, grad_dot: np.ndarray | None = None,
                     max_elements: int = 1 << 22) -> np.ndarray:
    """Second-order distortion ``delta(k)`` for ``k = 0..B`` pruned blocks, incrementally.

    With ``s[n, b] = <g_{n,b}, W_b>`` and ``c_n`` the sum of ``s[n, .]`` over the blocks
    pruned before block ``b``, pruning ``b`` next changes ``delta`` by::

        -<gbar_b, W_b>  +  (kappa/2) ||W_b||^2  +  (1/N) sum_n (c_n s[n,b] + s[n,b]^2 / 2)

    which is ``gbar^T dW + 1/2 dW^T (kappa I + (1/N) sum_n g_n g_n^T) dW`` (``dW = -W`` on the
    pruned blocks) computed exactly at ``O(N)`` per block; ``delta(0) = 0`` with no work at all.
    The first term is present only when ``grad_dot`` is given. (When the ``g_n`` are the loss
    gradients whose mean is ``gbar``, ``<gbar_b, W_b> = (1/N) sum_n s[n, b]``.)

    Parameters
    ----------
    block_sums : numpy.ndarray
        ``(N, B)`` per-sample block sums, blocks in flat (row-major) order.
    w_sq : numpy.ndarray
        ``(B,)`` squared Frobenius norm of each block, in pruning order.
    kappa : float
        Damping: ``kappa I`` is added to the curvature.
    order : numpy.ndarray, optional
        Pruning order (flat block indices); default: the columns' order.
    grad_dot : numpy.ndarray, optional
        ``(B,)`` ``<gbar_b, W_b>`` of each block, in pruning order: the first-order term. None
        leaves it out.
    max_elements : int
        Samples are processed in chunks of at most this many ``N x B`` elements.

    Returns
    -------
    numpy.ndarray
        ``(B + 1,)`` float64, ``delta[0] == 0``.
    """
    s_all = np.asarray(block_sums)
    if s_all.ndim != 2:
        raise ValueError(f"block_sums must be (N, B), got shape {s_all.shape}")
    n_samples, n_blocks = s_all.shape
    if n_samples == 0:
        raise ValueError("block_sums has no samples")
    if order is None:
        order = np.arange(n_blocks)
    w_sq = np.asarray(w_sq, dtype=np.float64)
    if w_sq.shape != (n_blocks,) or np.asarray(order).shape != (n_blocks,):
        raise ValueError("w_sq and order must have one entry per block")
    second = np.zeros(n_blocks)
    step = max(1, max_elements // max(n_blocks, 1))
    for lo in range(0, n_samples, step):
        s = s_all[lo:lo + step][:, order].astype(np.float64)
        c_before = np.cumsum(s, axis=1)
        c_before -= s  # c_n before block b
        c_before *= s
        c_before += 0.5 * s * s
        second += c_before.sum(axis=0)
    inc = second / n_samples + 0.5 * kappa * w_sq
    if grad_dot is not None:
        gd = np.asarray(grad_dot, dtype=np.float64)
        if gd.shape != (n_blocks,):
            raise ValueError("grad_dot must have one entry per block")
        inc -= gd
    out = np.zeros(n_blocks + 1)
    np.cumsum(inc, out=out[1:])
    return out


def single_block_delta(block_sums: np.ndarray, w_sq: np.ndarray, kappa: float, *,
                       grad_dot: np.ndarray | None = None,
                       max_elements: int = 1 << 22) -> np.ndarray:
    """The distortion of pruning each block alone: ``delta`` with ``dW = -W`` on that block.

    ``-<gbar_b, W_b> + (kappa/2) ||W_b||^2 + (1/(2N)) sum_n s[n, b]^2``: the block's diagonal
    entry of the curvature (summed over the block) plus the first-order term when ``grad_dot``
    is given. Arguments as :func:`distortion_curve`, all in flat block order; returns ``(B,)``.
    """
    s_all = np.asarray(block_sums)
    n_samples, n_blocks = s_all.shape
    sq = np.zeros(n_blocks)
    step = max(1, max_elements // max(n_blocks, 1))
    for lo in range(0, n_samples, step):
        s = s_all[lo:lo + step].astype(np.float64)
        sq += np.einsum("nb,nb->b", s, s)
    out = 0.5 * sq / n_samples + 0.5 * kappa * np.asarray(w_sq, dtype=np.float64)
    if grad_dot is not None:
        out -= np.asarray(grad_dot, dtype=np.float64)
    return out
