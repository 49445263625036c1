"""The calibration pass (torch): per-sample block sums and, when needed, the mean gradient.

One forward pass per micro-batch, then one backward pass per *seed*: the gradient of the
logits that starts the backward. The seed decides what the per-sample gradients ``g_n`` are
(:class:`~lsp_codesign.alloc.options.Curvature`); the hooks are the same for every choice:

* ``empirical``: ``softmax(z) - onehot(y)`` with ``y`` the data set's label: ``g_n`` is the
  gradient of the cross entropy of image ``n`` (the paper's Eq. 12);
* ``fisher``: ``softmax(z) - onehot(y_hat)``, ``y_hat`` drawn from the model's own softmax:
  ``g_n = grad log p(y_hat | x_n)`` (sign aside), an unbiased sample of the true Fisher, which
  for softmax cross entropy equals the Gauss-Newton matrix;
* ``ggn``: ``v ~ N(0, I)`` over the logits: ``g_n = grad v^T f(x_n)``, whose outer product has
  expectation ``J^T J``, the Gauss-Newton matrix of the output distortion ``E||df||^2``.

``fisher`` and ``ggn`` take ``samples`` seeds per image (each one a row of the block sums).
When the first-order term or the Taylor score needs the mean loss gradient ``gbar`` and the
seeds are not already those of the loss, one more backward with the loss's seed sums the
weight gradient (one GEMM per layer, no per-sample work).

Forward hooks keep each layer's input ``x``; tensor hooks on its output receive the output
gradient ``d``. The per-sample weight gradient ``G_n = sum_t d[n, t] x[n, t]^T`` is formed a
few samples at a time (memory bounded by ``chunk_mib``), multiplied by ``W`` and summed per
block: ``s[n, b] = <G_n, W_b>``. Weights do not require gradients, so autograd computes no
weight gradient of its own.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..flops import ModelCount, count_model
from ..packing import BlockGrid
from ..vit_shapes import GemmShape
from .distributed import Shard, check_plan, gather_collectors, run_shard
from .layers import select_layers
from .options import (DEFAULT_CHUNK_MIB, DEFAULT_MICRO_BATCH, AllocError, Curvature,
                      CurvatureOptions)

__all__ = ["LayerStats", "Calibration", "calibrate"]

# what a backward pass feeds the collectors: per-sample block sums, the gradient sum, or both
_SUMS, _GRAD, _BOTH = "sums", "grad", "both"


@dataclass
class LayerStats:
    """What the calibration pass collects for one prunable layer.

    Attributes
    ----------
    shape : GemmShape
        Name and ``(M, N, K)``.
    weight : numpy.ndarray
        ``(K, N)`` copy of the weight.
    grad_mean : numpy.ndarray or None
        ``(K, N)`` mean over images of the loss gradient ``gbar`` (None when the options
        did not need it).
    block_sums : numpy.ndarray
        ``(rows, KB * NB)``: ``<g_{r,b}, W_b>``, blocks in row-major order; one row per image
        and curvature sample.
    """

    shape: GemmShape
    weight: np.ndarray
    grad_mean: np.ndarray | None
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
        Where the labels of the loss came from: ``dataset`` (the loader's), ``model`` (the
        dense model's predictions), ``mixed``, or ``unused`` (``fisher``/``ggn`` without the
        mean gradient need no labels).
    layers : dict
        ``{name: LayerStats}`` of the prunable layers, model order.
    excluded : list of GemmShape
        Layers kept dense by ``exclude``.
    options : CurvatureOptions
        The curvature, samples per image, first-order term and score the pass served.
    seed : int
        Seed of the curvature samples.
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
    options: CurvatureOptions = field(default_factory=CurvatureOptions)
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class _Collector:
    """Hooks of one linear layer: per-sample block sums and the gradient sum, in chunks."""

    def __init__(self, shape: GemmShape, module: Any, block_k: int, block_n: int,
                 chunk_bytes: int, clock: list[float], phase: list[str],
                 workspace: "_Workspace") -> None:
        self.shape = shape
        self.grid = BlockGrid(shape.k, shape.n, block_k, block_n)
        self.weight = module.weight.detach()
        self.sums: list[Any] = []
        self.grad_sum = None
        elem = self.weight.element_size()
        self.chunk = max(1, chunk_bytes // max(1, 2 * shape.k * shape.n * elem))
        self.clock = clock
        self.phase = phase
        self.workspace = workspace

    def forward_hook(self, module: Any, inputs: tuple, output: Any) -> None:
        x = inputs[0].detach()
        if not output.requires_grad:  # first layer: nothing upstream needs a gradient
            output.requires_grad_(True)
        output.register_hook(lambda grad: self._consume(x, grad))

    def _consume(self, x: Any, d: Any) -> None:
        t0 = time.perf_counter()
        b, k, n = d.shape[0], self.shape.k, self.shape.n
        d3 = d.detach().reshape(b, -1, k)
        x3 = x.reshape(b, -1, n)
        if d3.shape[1] != self.shape.m:
            raise AllocError(f"layer {self.shape.name} saw {d3.shape[1]} tokens per image, "
                             f"expected {self.shape.m}")
        phase = self.phase[0]
        if phase == _GRAD:
            self._add_grad(d3.reshape(-1, k).T @ x3.reshape(-1, n))
        else:
            self._block_sums(d3, x3, with_grad=phase == _BOTH)
        self.clock[0] += time.perf_counter() - t0
        return None

    def _add_grad(self, part: Any) -> None:
        import torch

        part = part.to(torch.float64)
        self.grad_sum = part if self.grad_sum is None else self.grad_sum + part

    def _block_sums(self, d3: Any, x3: Any, *, with_grad: bool) -> None:
        import torch
        import torch.nn.functional as F

        g, k, n = self.grid, self.shape.k, self.shape.n
        with torch.no_grad():
            for lo in range(0, d3.shape[0], self.chunk):
                dc, xc = d3[lo:lo + self.chunk], x3[lo:lo + self.chunk]
                c = dc.shape[0]
                # the per-sample gradients go into one reused buffer: a fresh c x K x N tensor
                # per chunk costs as much again as the products (page faults, zeroing)
                gn = self.workspace.take((c, k, n), dc.dtype, dc.device)
                torch.bmm(dc.transpose(1, 2), xc, out=gn)
                if with_grad:
                    self._add_grad(gn.sum(dim=0, dtype=torch.float64))
                gn.mul_(self.weight)
                if (g.k_pad, g.n_pad) != (k, n):
                    gn = F.pad(gn, (0, g.n_pad - n, 0, g.k_pad - k))
                # within-block columns first (contiguous), then the block's rows
                s = gn.view(c, g.k_pad, g.nb, g.block_n).sum(dim=3)
                s = s.view(c, g.kb, g.block_k, g.nb).sum(dim=2)
                self.sums.append(s.reshape(c, g.n_blocks))


class _Workspace:
    """One flat buffer shared by the collectors (their hooks run one at a time)."""

    def __init__(self) -> None:
        self.buf = None

    def take(self, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        import math

        numel = math.prod(shape)
        b = self.buf
        if b is None or b.numel() < numel or b.dtype != dtype or b.device != device:
            import torch

            self.buf = b = torch.empty(numel, dtype=dtype, device=device)
        return b[:numel].view(shape)


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


def _seeds(logits: Any, y: Any, opts: CurvatureOptions, gen: Any) -> list[tuple[Any, str]]:
    """The backward seeds of one micro-batch and what each feeds (``_SUMS``/``_GRAD``/``_BOTH``).

    ``y`` are the loss's labels (None when the options need none).
    """
    import torch

    z = logits.detach()
    if opts.curvature is Curvature.GGN:
        p = None
    else:
        p = torch.softmax(z.to(torch.float64), dim=1).to(z.dtype)

    def loss_seed(labels: Any) -> Any:
        return p - torch.nn.functional.one_hot(labels, z.shape[1]).to(z.dtype)

    if opts.curvature is Curvature.EMPIRICAL:
        return [(loss_seed(y), _BOTH if opts.needs_gradient else _SUMS)]
    out = []
    for _ in range(opts.samples):
        if opts.curvature is Curvature.FISHER:
            drawn = torch.multinomial(p.cpu().to(torch.float64), 1, generator=gen)[:, 0]
            out.append((loss_seed(drawn.to(z.device)), _SUMS))
        else:
            v = torch.randn(z.shape, generator=gen, dtype=torch.float64)
            out.append((v.to(device=z.device, dtype=z.dtype), _SUMS))
    if opts.needs_gradient:
        if p is None:
            p = torch.softmax(z.to(torch.float64), dim=1).to(z.dtype)
        out.append((loss_seed(y), _GRAD))
    return out


def _replay_draws(opts: CurvatureOptions, sizes: list[int], classes: int, gen: Any) -> None:
    """Advance ``gen`` exactly as :func:`_seeds` does over micro-batches of ``sizes`` images.

    A rank of a sharded pass calls it before its first micro-batch, so that its images get
    the seeds they get in a single process. Only the shapes of the draws matter (the
    generator's consumption does not depend on the probabilities ``fisher`` samples from).
    """
    import torch

    if opts.curvature is Curvature.EMPIRICAL:
        return
    for b in sizes:
        for _ in range(opts.samples):
            if opts.curvature is Curvature.FISHER:
                p = torch.full((b, classes), 1.0 / classes, dtype=torch.float64)
                torch.multinomial(p, 1, generator=gen)
            else:
                torch.randn((b, classes), generator=gen, dtype=torch.float64)


def _labels_of(logits: Any, labels: Any, lo: int, b: int) -> Any:
    """The loss's labels for rows ``lo .. lo + b`` (the model's prediction without labels)."""
    import torch

    if labels is None:
        return logits.detach().argmax(dim=1)
    y = labels[lo:lo + b].to(device=logits.device, dtype=torch.long)
    if y.min() < 0 or y.max() >= logits.shape[1]:
        raise AllocError(f"calibration labels must be in 0...{logits.shape[1] - 1}, got "
                         f"{int(y.min())}..{int(y.max())}")
    return y


def calibrate(model: Any, loader: Iterable[Any], *, block_k: int, block_n: int,
              options: CurvatureOptions | None = None, exclude: Iterable[str] = (),
              micro_batch: int = DEFAULT_MICRO_BATCH, chunk_mib: float = DEFAULT_CHUNK_MIB,
              seed: int = 0, progress: bool = True, total: int | None = None,
              model_name: str = "", shard: Shard | None = None) -> Calibration | None:
    """One pass over the calibration images, collecting per-layer statistics.

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
    options : CurvatureOptions, optional
        Curvature, samples per image, first-order term and score (default:
        ``CurvatureOptions.resolve()``); decides the backward seeds and whether the mean
        gradient is collected.
    exclude : iterable of str
        Glob patterns of layers to keep dense (no statistics are collected for them).
    micro_batch : int
        Images per forward/backward (bounds activation memory).
    chunk_mib : float
        Memory for the per-sample weight gradients of one layer at a time (bounds the
        ``chunk x K x N`` tensor).
    seed : int
        Seeds the curvature samples (``fisher``'s labels, ``ggn``'s directions).
    progress : bool
        Show a progress bar (tqdm, on stderr).
    total : int, optional
        Expected number of images, for the progress bar.
    model_name : str
        Recorded in the result.
    shard : Shard, optional
        This rank's part of a set sharded over a torch.distributed job (:mod:`.distributed`):
        ``loader`` yields the shard's images only; rank 0 receives every rank's statistics.

    Returns
    -------
    Calibration or None
        ``None`` on the ranks other than 0 of a sharded pass.

    Raises
    ------
    AllocError
        The loader yields no images, labels are out of range, or gradients are not finite.
    DistributedError
        The ranks of a sharded pass would calibrate different things, or one of them failed.
    """
    opts = options if options is not None else CurvatureOptions.resolve()
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise AllocError(f"micro_batch must be a positive integer, got {micro_batch!r}")
    count = count_model(model, model_name)
    prunable, excluded = select_layers(count, block_k, block_n, exclude)
    modules = dict(model.named_modules())
    clock, phase, ws = [0.0], [_SUMS], _Workspace()
    chunk_bytes = int(chunk_mib * 2 ** 20)
    cols = {g.name: _Collector(g, modules[g.name], block_k, block_n, chunk_bytes, clock, phase,
                               ws) for g in prunable}
    if shard is not None:
        check_plan(shard, model, model_name, opts.record(), (block_k, block_n), exclude,
                   micro_batch, seed)
    t_start = time.perf_counter()
    counts = _sharded_pass(shard, model, loader, cols, opts, phase, micro_batch, seed,
                           progress, total)
    if counts is None:
        return None
    n_seen, label_src = counts
    elapsed = time.perf_counter() - t_start
    if n_seen == 0:
        raise AllocError("calibration set is empty: the loader yielded no images")
    layers = {name: _layer_stats(c, n_seen, opts) for name, c in cols.items()}
    return Calibration(model=model_name, count=count, block_k=block_k, block_n=block_n,
                       n_samples=n_seen, labels=label_src, layers=layers, excluded=excluded,
                       options=opts, seed=int(seed),
                       timings={"calibration_s": elapsed, "block_sums_s": clock[0],
                                "forward_backward_s": elapsed - clock[0]})


def _run_pass(model: Any, loader: Iterable[Any], cols: dict[str, _Collector],
              opts: CurvatureOptions, phase: list[str], micro_batch: int, seed: int,
              progress: bool, total: int | None,
              replay: list[int] | None = None) -> tuple[int, int, int]:
    """Forward + backward(s) over every micro-batch with the hooks in place; the model is
    restored afterwards. ``replay``: sizes of earlier micro-batches (another rank's) whose
    seed draws come first. Returns the images seen, with labels and without."""
    import torch
    from tqdm.auto import tqdm

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(c.forward_hook) for name, c in cols.items()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    device, dtype = params[0].device, params[0].dtype
    gen = torch.Generator().manual_seed(int(seed))
    uses_labels = opts.curvature is Curvature.EMPIRICAL or opts.needs_gradient
    n_seen = with_labels = without_labels = 0
    bar = tqdm(total=total, unit="img", desc="calibration", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
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
                    # labels are checked whenever the loader gives them, used when needed
                    y = (_labels_of(logits, labels, lo, x.shape[0])
                         if uses_labels or labels is not None else None)
                    if replay:
                        _replay_draws(opts, replay, int(logits.shape[1]), gen)
                        replay = None
                    seeds = _seeds(logits, y, opts, gen)
                    for i, (s, what) in enumerate(seeds):
                        phase[0] = what
                        logits.backward(s, retain_graph=i + 1 < len(seeds))
            n_seen += b
            with_labels += b if labels is not None else 0
            without_labels += b if labels is None else 0
            bar.update(b)
    finally:
        bar.close()
        for h in handles:
            h.remove()
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    return n_seen, with_labels, without_labels


def _label_source(opts: CurvatureOptions, with_labels: int, without_labels: int) -> str:
    """Where the loss's labels came from: ``dataset``, ``model``, ``mixed`` or ``unused``."""
    if not (opts.curvature is Curvature.EMPIRICAL or opts.needs_gradient):
        return "unused"
    return ("dataset" if without_labels == 0 else
            "model" if with_labels == 0 else "mixed")


def _sharded_pass(shard: Shard | None, model: Any, loader: Iterable[Any],
                  cols: dict[str, _Collector], opts: CurvatureOptions, phase: list[str],
                  micro_batch: int, seed: int, progress: bool,
                  total: int | None) -> tuple[int, str] | None:
    """The pass (this rank's part of it, when sharded); returns ``(images, label source)``,
    or ``None`` on the ranks other than 0 (rank 0's collectors receive every rank's sums)."""
    if shard is None:
        n, with_l, without_l = _run_pass(model, loader, cols, opts, phase, micro_batch, seed,
                                         progress, total)
        return n, _label_source(opts, with_l, without_l)
    n, with_l, without_l = run_shard(shard, lambda: _run_pass(
        model, loader, cols, opts, phase, micro_batch, seed, progress and shard.rank == 0,
        shard.count, replay=shard.preceding()))
    gather_collectors(shard, cols.values())
    return None if shard.rank else (n, _label_source(opts, with_l, without_l))


def _layer_stats(c: _Collector, n_seen: int, opts: CurvatureOptions) -> LayerStats:
    import torch

    name = c.shape.name
    sums = torch.cat(c.sums).cpu().numpy()
    rows = n_seen * (1 if opts.curvature is Curvature.EMPIRICAL else opts.samples)
    if sums.shape[0] != rows:
        raise AllocError(f"layer {name} received gradients for {sums.shape[0]} of "
                         f"{rows} samples (is it used once per forward pass?)")
    gm = None if c.grad_sum is None else (c.grad_sum / n_seen).cpu().numpy()
    if opts.needs_gradient and gm is None:
        raise AllocError(f"layer {name} received no loss gradient")
    if not (np.isfinite(sums).all() and (gm is None or np.isfinite(gm).all())):
        raise AllocError(f"layer {name}: gradients are not finite (check the model's "
                         "weights and the calibration images)")
    return LayerStats(shape=c.shape, weight=c.weight.cpu().numpy().copy(), grad_mean=gm,
                      block_sums=sums)
