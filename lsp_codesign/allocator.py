"""The LSP allocator: per-layer block sparsity from second-order distortion and a power term.

For every prunable linear layer ``i`` (weight ``W`` of shape ``(K, N)``, blocks ``BK x BN``) and
calibration samples ``n = 1..N`` with per-sample loss gradients ``g_n`` (``docs/allocator.md``
and ``DESIGN.md``, "Allocator"):

1. **Calibration** (:func:`calibrate`, one forward/backward pass): the mean gradient ``gbar``
   and the per-sample block sums ``s[n, b] = <g_{n,b}, W_b>``. Forward hooks keep each layer's
   input ``x``, tensor hooks receive its output gradient ``d``; the per-sample weight gradient
   ``G_n = sum_t d[n, t] x[n, t]^T`` is formed for a few samples at a time (memory bounded by
   ``chunk_mib``), multiplied by ``W`` and summed per block. Weights do not require gradients,
   so autograd computes no weight gradient of its own: the pass costs about one plain
   forward + backward. The loss is the cross entropy of each image against the data set's
   label, or against the dense model's own prediction when there is none.
2. **Scores and curves** (:func:`layer_curve`): block score = mean of ``|W * gbar|`` over the
   block; blocks are pruned in ascending score order. With the empirical Fisher
   ``H = kappa I + (1/N) sum_n g_n g_n^T`` the distortion of pruning the first ``k`` blocks is
   ``delta(k) = gbar^T dW + 1/2 dW^T H dW`` (``dW = -W`` on the pruned blocks), computed
   incrementally at ``O(N)`` per block (:func:`distortion_curve`); ``H`` is never formed.
3. **Hardware term**: ``P_i(k)``, the layer's energy with ``k`` blocks pruned, from the
   cycle/energy model of the config (:func:`lsp_codesign.cycle_model.layer_curves`).
   ``|dP_i/dalpha|`` is its chord slope ``P_i(0) - P_i(B)`` (the block-sparse engine's energy
   is linear in the kept blocks). ``beta`` comes from the paper's Eq. 14, and each layer's
   target slope is ``lambda_i = lambda + beta |dP_i/dalpha|``.
4. **Search** (:func:`search_allocation`): a layer prunes blocks while the running maximum of
   its smoothed curve's slope (:func:`ema_smooth`, :func:`slope_5pt`) stays at or below
   ``lambda_i``; ``lambda`` is found by bisection over the finite set of values at which some
   layer's block count changes, and the layers that change at the final ``lambda`` take a
   partial step, so the FLOPs land within one block below the target.

Baselines use the same search: ``beta0`` (``beta = 0``, the paper's ablation), ``uniform``
(the same ratio in every layer) and ``global`` (one threshold on all block scores).

torch is imported inside the functions that need it; the numerics are numpy.
"""

from __future__ import annotations

import fnmatch
import heapq
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .config import HwConfig
from .cycle_model import estimate_layer, layer_curves, p_m_pj
from .errors import LspError
from .flops import ModelCount, count_model
from .masks_io import MaskSet
from .packing import BlockGrid
from .vit_shapes import GemmShape

__all__ = [
    "METHODS", "DEFAULT_KAPPA", "DEFAULT_SMOOTH", "AllocError", "fd_weights", "slope_5pt",
    "ema_smooth", "block_reduce", "distortion_curve", "select_layers", "check_flops_target",
    "LayerStats", "Calibration", "calibrate", "LayerCurve", "layer_curve", "eq14_beta",
    "method_thresholds", "search_allocation", "LayerResult", "Allocation", "allocate",
    "allocate_from_calibration", "summary_by_kind",
]

METHODS = ("lsp", "beta0", "uniform", "global")
DEFAULT_KAPPA = 1e-7
DEFAULT_SMOOTH = 0.01
DEFAULT_CHUNK_MIB = 256
DEFAULT_MICRO_BATCH = 16


class AllocError(LspError, ValueError):
    """Bad allocator input: target, block, layer selection, calibration data."""


# ============================================================================================
# Numerics (numpy only)
# ============================================================================================


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
                     order: np.ndarray | None = None, *,
                     max_elements: int = 1 << 22) -> np.ndarray:
    """Second-order distortion ``delta(k)`` for ``k = 0..B`` pruned blocks, incrementally.

    With ``s[n, b] = <g_{n,b}, W_b>`` and ``c_n`` the sum of ``s[n, .]`` over the blocks
    pruned before block ``b``, pruning ``b`` next changes ``delta`` by::

        -(1/N) sum_n s[n,b]  +  (kappa/2) ||W_b||^2  +  (1/N) sum_n (c_n s[n,b] + s[n,b]^2 / 2)

    which is ``gbar^T dW + 1/2 dW^T (kappa I + (1/N) sum_n g_n g_n^T) dW`` (``dW = -W`` on the
    pruned blocks) computed exactly at ``O(N)`` per block; ``delta(0) = 0`` with no work at all.

    Parameters
    ----------
    block_sums : numpy.ndarray
        ``(N, B)`` per-sample block sums, blocks in flat (row-major) order.
    w_sq : numpy.ndarray
        ``(B,)`` squared Frobenius norm of each block, in pruning order.
    kappa : float
        Damping of the empirical Fisher.
    order : numpy.ndarray, optional
        Pruning order (flat block indices); default: the columns' order.
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
    first = np.zeros(n_blocks)
    second = np.zeros(n_blocks)
    step = max(1, max_elements // max(n_blocks, 1))
    for lo in range(0, n_samples, step):
        s = s_all[lo:lo + step][:, order].astype(np.float64)
        c_before = np.cumsum(s, axis=1)
        c_before -= s  # c_n before block b
        first += s.sum(axis=0)
        c_before *= s
        c_before += 0.5 * s * s
        second += c_before.sum(axis=0)
    inc = (-first + second) / n_samples + 0.5 * kappa * w_sq
    out = np.zeros(n_blocks + 1)
    np.cumsum(inc, out=out[1:])
    return out


# ============================================================================================
# Layer selection and input checks
# ============================================================================================


def check_flops_target(flops_target: Any) -> float:
    """``flops_target`` as a float in (0, 1], or an :class:`AllocError`."""
    if isinstance(flops_target, bool) or not isinstance(flops_target, (int, float, np.floating)):
        raise AllocError(f"FLOPs target must be a number in (0, 1], got {flops_target!r}")
    r = float(flops_target)
    if not math.isfinite(r) or not 0.0 < r <= 1.0:
        raise AllocError(f"FLOPs target must be in (0, 1] (a fraction of the dense model's "
                         f"FLOPs), got {flops_target!r}")
    return r


def select_layers(count: ModelCount, block_k: int, block_n: int,
                  exclude: Iterable[str] = ()) -> tuple[list[GemmShape], list[GemmShape]]:
    """Split a model's linear layers into prunable and excluded ones, checking the block.

    Parameters
    ----------
    count : ModelCount
        The model's layers (:func:`lsp_codesign.flops.count_model`).
    block_k, block_n : int
        The pruning block.
    exclude : iterable of str
        Glob patterns on module names (``head``, ``blocks.11.*``); each must match a layer.

    Returns
    -------
    prunable, excluded : list of GemmShape
        In model order.

    Raises
    ------
    AllocError
        A pattern matches nothing, or a prunable layer is a single block under this block
        size (it could only be kept or removed whole). K or N not a multiple of the block is
        fine: edge blocks are zero padded (``docs/hw.md``, padding rule).
    """
    names = [g.name for g in count.linears]
    excluded: set[str] = set()
    for pat in exclude:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise AllocError(f"--exclude {pat!r} matches no linear layer of "
                             f"{count.model or 'the model'} (layers: {_few(names)})")
        excluded.update(hit)
    prunable = [g for g in count.linears if g.name not in excluded]
    single = [g for g in prunable if BlockGrid(g.k, g.n, block_k, block_n).n_blocks < 2]
    if single:
        g = single[0]
        more = f" and {len(single) - 1} more ({_few([s.name for s in single[1:]])})" \
            if len(single) > 1 else ""
        raise AllocError(
            f"block {block_k}x{block_n} does not suit layer {g.name} (weight {g.k}x{g.n}){more}: "
            "a layer that is a single block could only be kept or removed whole; use a smaller "
            "--block or --exclude such layers")
    return prunable, [g for g in count.linears if g.name in excluded]


def _few(items: Sequence[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


# ============================================================================================
# Calibration pass (torch)
# ============================================================================================


@dataclass
class LayerStats:
    """What the calibration pass collects for one prunable layer.

    Attributes
    ----------
    shape : GemmShape
        Name and ``(M, N, K)``.
    weight : numpy.ndarray
        ``(K, N)`` copy of the weight.
    grad_mean : numpy.ndarray
        ``(K, N)`` mean over samples of the per-sample loss gradient.
    block_sums : numpy.ndarray
        ``(N_samples, KB * NB)``: ``<g_{n,b}, W_b>``, blocks in row-major order.
    """

    shape: GemmShape
    weight: np.ndarray
    grad_mean: np.ndarray
    block_sums: np.ndarray


@dataclass
class Calibration:
    """Result of :func:`calibrate`.

    Attributes
    ----------
    model : str
        Model name.
    count : ModelCount
        The model's MACs and parameters.
    block_k, block_n : int
        Block the block sums were taken over.
    n_samples : int
        Calibration images used.
    labels : str
        ``dataset`` (the loader's labels), ``model`` (the dense model's predictions) or
        ``mixed``.
    layers : dict
        ``{name: LayerStats}`` of the prunable layers, model order.
    excluded : list of GemmShape
        Layers kept dense by ``exclude``.
    timings : dict
        Seconds: ``calibration_s`` (the whole pass), ``block_sums_s`` (per-sample gradient,
        block sums and mean gradient, inside the hooks), ``forward_backward_s`` (the rest).
    """

    model: str
    count: ModelCount
    block_k: int
    block_n: int
    n_samples: int
    labels: str
    layers: dict[str, LayerStats]
    excluded: list[GemmShape]
    timings: dict[str, float] = field(default_factory=dict)


class _Collector:
    """Hooks of one linear layer: per-sample block sums and the gradient sum, in chunks."""

    def __init__(self, shape: GemmShape, module: Any, block_k: int, block_n: int,
                 chunk_bytes: int, clock: list[float]) -> None:
        self.shape = shape
        self.grid = BlockGrid(shape.k, shape.n, block_k, block_n)
        self.weight = module.weight.detach()
        self.sums: list[Any] = []
        self.grad_sum = None
        elem = self.weight.element_size()
        self.chunk = max(1, chunk_bytes // max(1, 2 * shape.k * shape.n * elem))
        self.clock = clock

    def forward_hook(self, module: Any, inputs: tuple, output: Any) -> None:
        x = inputs[0].detach()
        if not output.requires_grad:  # first layer: nothing upstream needs a gradient
            output.requires_grad_(True)
        output.register_hook(lambda grad: self._consume(x, grad))

    def _consume(self, x: Any, d: Any) -> None:
        import torch
        import torch.nn.functional as F

        t0 = time.perf_counter()
        g, k, n = self.grid, self.shape.k, self.shape.n
        b = d.shape[0]
        d3 = d.detach().reshape(b, -1, k)
        x3 = x.reshape(b, -1, n)
        if d3.shape[1] != self.shape.m:
            raise AllocError(f"layer {self.shape.name} saw {d3.shape[1]} tokens per image, "
                             f"expected {self.shape.m}")
        w = self.weight
        with torch.no_grad():
            for lo in range(0, b, self.chunk):
                gn = torch.bmm(d3[lo:lo + self.chunk].transpose(1, 2), x3[lo:lo + self.chunk])
                part = gn.sum(dim=0, dtype=torch.float64)
                self.grad_sum = part if self.grad_sum is None else self.grad_sum + part
                gn.mul_(w)
                if (g.k_pad, g.n_pad) != (k, n):
                    gn = F.pad(gn, (0, g.n_pad - n, 0, g.k_pad - k))
                c = gn.shape[0]
                s = gn.view(c, g.kb, g.block_k, g.nb, g.block_n).sum(dim=(2, 4))
                self.sums.append(s.reshape(c, g.n_blocks))
        self.clock[0] += time.perf_counter() - t0
        return None


def _split_batch(batch: Any) -> tuple[Any, Any]:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        labels = batch[1] if len(batch) > 1 else None
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        return batch[0], labels
    raise AllocError("calibration loader must yield image tensors or (images, labels) pairs, "
                     f"got {type(batch).__name__}")


def calibrate(model: Any, loader: Iterable[Any], *, block_k: int, block_n: int,
              exclude: Iterable[str] = (), micro_batch: int = DEFAULT_MICRO_BATCH,
              chunk_mib: float = DEFAULT_CHUNK_MIB, progress: bool = True,
              total: int | None = None, model_name: str = "") -> Calibration:
    """One forward/backward pass over the calibration images, collecting per-layer statistics.

    Parameters
    ----------
    model : torch.nn.Module
        A timm-style ViT (any depth/width). It is run in eval mode; its parameters'
        ``requires_grad`` flags and mode are restored afterwards and its weights are unchanged.
    loader : iterable
        Yields image batches ``(B, C, H, W)`` or ``(images, labels)`` pairs; ``labels`` may be
        ``None`` (then the dense model's own predictions are the labels).
    block_k, block_n : int
        The pruning block.
    exclude : iterable of str
        Glob patterns of layers to keep dense (no statistics are collected for them).
    micro_batch : int
        Images per forward/backward (bounds activation memory).
    chunk_mib : float
        Memory for the per-sample weight gradients of one layer at a time (bounds the
        ``chunk x K x N`` tensor).
    progress : bool
        Show a progress bar (tqdm, on stderr).
    total : int, optional
        Expected number of images, for the progress bar.
    model_name : str
        Recorded in the result.

    Returns
    -------
    Calibration

    Raises
    ------
    AllocError
        The loader yields no images, labels are out of range, or gradients are not finite.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise AllocError(f"micro_batch must be a positive integer, got {micro_batch!r}")
    count = count_model(model, model_name)
    prunable, excluded = select_layers(count, block_k, block_n, exclude)
    modules = dict(model.named_modules())
    clock = [0.0]
    chunk_bytes = int(chunk_mib * 2 ** 20)
    cols = {g.name: _Collector(g, modules[g.name], block_k, block_n, chunk_bytes, clock)
            for g in prunable}
    handles = [modules[name].register_forward_hook(c.forward_hook) for name, c in cols.items()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    device, dtype = params[0].device, params[0].dtype
    n_seen = 0
    with_labels = without_labels = 0
    bar = tqdm(total=total, unit="img", desc="calibration", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    t_start = time.perf_counter()
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        for batch in loader:
            images, labels = _split_batch(batch)
            b = int(images.shape[0])
            if labels is not None and labels.shape[0] != b:
                raise AllocError(f"calibration batch has {b} images but {labels.shape[0]} "
                                 "labels")
            for lo in range(0, b, micro_batch):
                x = images[lo:lo + micro_batch].to(device=device, dtype=dtype)
                with torch.enable_grad():
                    logits = model(x)
                    if logits.ndim != 2:
                        raise AllocError(f"model output has shape {tuple(logits.shape)}; "
                                         "expected (batch, classes) logits")
                    if labels is None:
                        y = logits.detach().argmax(dim=1)
                    else:
                        y = labels[lo:lo + micro_batch].to(device=device, dtype=torch.long)
                        if y.min() < 0 or y.max() >= logits.shape[1]:
                            raise AllocError(f"calibration labels must be in 0..."
                                             f"{logits.shape[1] - 1}, got {int(y.min())}.."
                                             f"{int(y.max())}")
                    # sum of per-sample losses: each image's output gradient is that of its
                    # own loss (no batch statistics in a ViT), so the hooks see g_n exactly
                    loss = F.cross_entropy(logits, y, reduction="sum")
                    loss.backward()
            n_seen += b
            if labels is None:
                without_labels += b
            else:
                with_labels += b
            bar.update(b)
    finally:
        bar.close()
        for h in handles:
            h.remove()
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    elapsed = time.perf_counter() - t_start
    if n_seen == 0:
        raise AllocError("calibration set is empty: the loader yielded no images")
    layers = {}
    for name, c in cols.items():
        sums = torch.cat(c.sums).cpu().numpy()
        if sums.shape[0] != n_seen:
            raise AllocError(f"layer {name} received gradients for {sums.shape[0]} of "
                             f"{n_seen} images (is it used once per forward pass?)")
        gm = (c.grad_sum / n_seen).cpu().numpy()
        if not (np.isfinite(sums).all() and np.isfinite(gm).all()):
            raise AllocError(f"layer {name}: gradients are not finite (check the model's "
                             "weights and the calibration images)")
        layers[name] = LayerStats(shape=c.shape, weight=c.weight.cpu().numpy().copy(),
                                  grad_mean=gm, block_sums=sums)
    labels_src = ("dataset" if without_labels == 0 else
                  "model" if with_labels == 0 else "mixed")
    return Calibration(model=model_name, count=count, block_k=block_k, block_n=block_n,
                       n_samples=n_seen, labels=labels_src, layers=layers, excluded=excluded,
                       timings={"calibration_s": elapsed, "block_sums_s": clock[0],
                                "forward_backward_s": elapsed - clock[0]})


# ============================================================================================
# Curves
# ============================================================================================


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
        ``(KB, NB)`` first-order Taylor block scores (mean ``|W * gbar|`` over the block).
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


def layer_curve(stats: LayerStats, cfg: HwConfig, *, kappa: float = DEFAULT_KAPPA,
                smooth: float = DEFAULT_SMOOTH) -> LayerCurve:
    """Scores, pruning order, distortion curve, slope, FLOPs and energy curves of one layer.

    Parameters
    ----------
    stats : LayerStats
        From :func:`calibrate`.
    cfg : HwConfig
        Hardware config (its block must be the calibration's block).
    kappa : float
        Fisher damping.
    smooth : float
        EMA half-life as a fraction of the layer's blocks (``0``: no smoothing).
    """
    g = stats.shape
    grid = BlockGrid(g.k, g.n, cfg.block_k, cfg.block_n)
    if stats.block_sums.shape[1] != grid.n_blocks:
        raise AllocError(f"layer {g.name}: statistics have {stats.block_sums.shape[1]} blocks, "
                         f"the config's block {cfg.block_str} gives {grid.n_blocks}")
    w = stats.weight.astype(np.float64)
    elems = grid.block_elements()
    scores = block_reduce(np.abs(w * stats.grad_mean.astype(np.float64)), grid) / elems
    order = np.argsort(scores.ravel(), kind="stable")
    w_sq = block_reduce(w * w, grid).ravel()[order]
    delta = distortion_curve(stats.block_sums, w_sq, kappa, order)
    nb = grid.n_blocks
    delta_s = ema_smooth(delta, smooth * nb)
    slope = slope_5pt(delta_s, 1.0 / nb)
    hw = layer_curves(cfg, g.m, g.n, g.k, order)
    energy = np.asarray(hw["energy_pj"], dtype=float)
    e_ord = elems.ravel()[order]
    flops = g.m * (int(e_ord.sum()) - np.concatenate([[0], np.cumsum(e_ord)]))
    return LayerCurve(shape=g, grid=grid, scores=scores, order=order, delta=delta,
                      delta_smooth=delta_s, slope=slope, flops=flops.astype(np.int64),
                      energy_pj=energy, cycles=np.asarray(hw["cycles"]),
                      dp_dalpha=abs(float(energy[0] - energy[-1])))


# ============================================================================================
# Search
# ============================================================================================


def eq14_beta(curves: Sequence[LayerCurve]) -> float:
    """``beta`` of the paper's Eq. 14: sum of each layer's largest distortion slope over the
    sum of each layer's ``|dP/dalpha|``, so both terms have the same scale (0 if undefined)."""
    num = sum(float(np.max(c.slope)) for c in curves)
    den = sum(c.dp_dalpha for c in curves)
    if den <= 0 or not math.isfinite(num) or num <= 0:
        return 0.0
    return num / den


def method_thresholds(curves: Sequence[LayerCurve], method: str,
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
    out = []
    for c in curves:
        nb = c.n_blocks
        if method in ("lsp", "beta0"):
            b = beta if method == "lsp" else 0.0
            thr = np.maximum.accumulate(c.slope)[:-1] - b * c.dp_dalpha
        elif method == "uniform":
            thr = (np.arange(1, nb + 1) - 0.5) / nb
        elif method == "global":
            thr = c.scores.ravel()[c.order].astype(float)
        else:
            raise AllocError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
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


# ============================================================================================
# Allocation
# ============================================================================================


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
    model, method : str
        Model name and allocation method (:data:`METHODS`).
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
    """

    model: str
    method: str
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


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def allocate_from_calibration(calib: Calibration, cfg: HwConfig, *, flops_target: float,
                              method: str = "lsp", kappa: float = DEFAULT_KAPPA,
                              smooth: float = DEFAULT_SMOOTH) -> Allocation:
    """Curves, power term and search on collected statistics (no model pass).

    One calibration serves every method and target; see :func:`allocate` for the parameters.
    """
    r = check_flops_target(flops_target)
    if method not in METHODS:
        raise AllocError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    if (cfg.block_k, cfg.block_n) != (calib.block_k, calib.block_n):
        raise AllocError(f"calibration was taken with block {calib.block_k}x{calib.block_n}, "
                         f"the config has {cfg.block_str}")
    _check_options(kappa, smooth)
    count = calib.count
    _check_reachable(count, [calib.layers[n].shape for n in calib.layers], r)
    t0 = time.perf_counter()
    curves = {name: layer_curve(st, cfg, kappa=kappa, smooth=smooth)
              for name, st in calib.layers.items()}
    t1 = time.perf_counter()
    cl = list(curves.values())
    beta: float | None
    if method == "lsp":
        beta = eq14_beta(cl)
    elif method == "beta0":
        beta = 0.0
    else:
        beta = None
    thr = method_thresholds(cl, method, beta or 0.0)
    fixed = count.macs - sum(int(c.flops[0]) for c in cl)
    budget = r * count.macs - fixed
    pruned, t = search_allocation(thr, [c.flops for c in cl], budget * (1 + 1e-12))
    t2 = time.perf_counter()
    lam = t if method in ("lsp", "beta0") else None
    layers: dict[str, LayerResult] = {}
    masks: dict[str, np.ndarray] = {}
    kp = dict(zip(curves, pruned))
    for g in count.linears:
        grid = BlockGrid(g.k, g.n, cfg.block_k, cfg.block_n)
        mask = np.ones(grid.n_blocks, dtype=bool)
        c = curves.get(g.name)
        lam_i = None
        if c is not None:
            mask[c.order[:kp[g.name]]] = False
            if lam is not None:
                lam_i = lam + (beta or 0.0) * c.dp_dalpha
        mask = mask.reshape(grid.shape)
        masks[g.name] = mask
        kept_el = int((grid.block_elements() * mask).sum())
        bias = int(count.linear_bias.get(g.name, 0))
        est = estimate_layer(cfg, g.m, g.n, g.k, mask, name=g.name)
        dense = estimate_layer(cfg, g.m, g.n, g.k, None, name=g.name)
        layers[g.name] = LayerResult(
            shape=g, grid=grid, mask=mask, excluded=c is None, flops=g.m * kept_el,
            dense_flops=g.m * g.n * g.k, params=kept_el + bias, dense_params=g.n * g.k + bias,
            cycles=est.cycles, dense_cycles=dense.cycles, energy_pj=est.energy_total_pj,
            dense_energy_pj=dense.energy_total_pj, lambda_i=_finite_or_none(lam_i))
    t3 = time.perf_counter()
    ms = MaskSet(model=calib.model, block_k=cfg.block_k, block_n=cfg.block_n,
                 order=tuple(layers), gemms={n: (g.shape.m, g.shape.n, g.shape.k)
                                             for n, g in layers.items()}, masks=masks)
    timings = dict(calib.timings)
    timings.update({"curves_s": t1 - t0, "search_s": t2 - t1, "hardware_s": t3 - t2})
    return Allocation(model=calib.model, method=method, flops_target=r, block_k=cfg.block_k,
                      block_n=cfg.block_n, beta=beta, lam=_finite_or_none(lam),
                      threshold=_finite_or_none(t), kappa=float(kappa), smooth=float(smooth),
                      n_samples=calib.n_samples, labels=calib.labels, p_m_pj=p_m_pj(cfg),
                      layers=layers, curves=curves, masks=ms, count=count, timings=timings)


def _check_options(kappa: Any, smooth: Any) -> None:
    for name, v, hi in (("kappa", kappa, math.inf), ("smooth", smooth, 1.0)):
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and 0 <= v <= hi)
        if not ok:
            rng = ">= 0" if hi == math.inf else "in [0, 1] (EMA half-life as a fraction of " \
                "a layer's blocks)"
            raise AllocError(f"{name} must be a finite number {rng}, got {v!r}")


def _check_reachable(count: ModelCount, prunable: Sequence[GemmShape], r: float) -> None:
    fixed = count.macs - sum(g.m * g.n * g.k for g in prunable)
    lowest = fixed / count.macs
    if r < lowest:
        raise AllocError(
            f"FLOPs target {r:g} is below what pruning can reach for {count.model or 'the model'}"
            f": with every block of every prunable layer pruned it keeps {lowest:.4f} of its "
            "FLOPs (attention products, patch embedding and excluded layers are not pruned)")


def allocate(model: Any, cfg: HwConfig, loader: Iterable[Any], *, flops_target: float,
             method: str = "lsp", exclude: Iterable[str] = (), kappa: float = DEFAULT_KAPPA,
             smooth: float = DEFAULT_SMOOTH, micro_batch: int = DEFAULT_MICRO_BATCH,
             chunk_mib: float = DEFAULT_CHUNK_MIB, progress: bool = True,
             total: int | None = None, model_name: str = "") -> Allocation:
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
    method : {"lsp", "beta0", "uniform", "global"}
        LSP with the power term; LSP with ``beta = 0``; the same ratio in every layer; one
        threshold on all block scores.
    exclude : iterable of str
        Glob patterns of linear layers to keep dense (none by default, head included).
    kappa : float
        Damping of the empirical Fisher ``kappa I + (1/N) sum g g^T``.
    smooth : float
        EMA half-life of the curve smoothing, as a fraction of each layer's blocks.
    micro_batch, chunk_mib : int, float
        Memory bounds of the calibration pass (:func:`calibrate`).
    progress : bool
        Show a progress bar during calibration.
    total : int, optional
        Number of calibration images, for the progress bar.
    model_name : str
        Recorded in the result and the masks.

    Returns
    -------
    Allocation
        ``.masks`` (a :class:`~lsp_codesign.masks_io.MaskSet`), ``.ratios``, ``.beta``,
        ``.lam``, per-layer results and curves.

    Raises
    ------
    AllocError
        Target outside (0, 1] or below what pruning can reach, a block that makes a layer a
        single block, an unknown method, an empty calibration set. Target, block and method
        are checked before the calibration pass.
    """
    r = check_flops_target(flops_target)
    if method not in METHODS:
        raise AllocError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    _check_options(kappa, smooth)
    count = count_model(model, model_name)
    prunable, _ = select_layers(count, cfg.block_k, cfg.block_n, exclude)
    _check_reachable(count, prunable, r)
    calib = calibrate(model, loader, block_k=cfg.block_k, block_n=cfg.block_n, exclude=exclude,
                      micro_batch=micro_batch, chunk_mib=chunk_mib, progress=progress,
                      total=total, model_name=model_name)
    return allocate_from_calibration(calib, cfg, flops_target=r, method=method, kappa=kappa,
                                     smooth=smooth)


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

