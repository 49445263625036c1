"""``lsp-codesign allocate``: per-layer block sparsity with the LSP method, as a run directory.

The run directory (built under a temporary name and renamed into place only when complete)::

    allocation.json     per layer and in total: shape, ratio, blocks, FLOPs, cycles, energy;
                        beta, lambda; the resolved arguments (docs/allocator.md)
    masks.safetensors   block masks (lsp_codesign.masks_io), read by report/verify/finetune
    hw.yaml             the hardware config actually used (after --block)
    curves.npz          per-layer distortion, smoothed distortion, slope, order, energy, FLOPs
    plots/              kept_fraction.png (Fig. 3), delta_curves.png, masks.png (Fig. 4)

Models resolve through the project's registry (``models.registry.build_model``: the embedded
default and DeiT); another timm ViT name gives a model with random weights and synthetic
calibration images (``models.data.calibration_data``). The directory is written by
:func:`lsp_codesign.rundir.write_allocation`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..allocator import (CURVATURES, DEFAULT_CURVATURE, DEFAULT_KAPPA, DEFAULT_MICRO_BATCH,
                         DEFAULT_SCORE, DEFAULT_SMOOTH, METHODS, SCORES, AllocError,
                         CurvatureOptions, check_flops_target)
from ..errors import LspError
from ..rundir import new_run, write_allocation
from ._common import add_hw_args, hw_from_args

ORDER = 30
# Calibration images by default: the embedded model's real MNIST digits are cheap (about 8 s for
# 1024 on 2 cores) and pruned accuracy keeps improving up to ~1000 (64% -> 84% top-1 at R = 0.5);
# a DeiT pass costs about a second per image on 2 CPU cores, so other models default lower.
DEFAULT_CALIB_EMBEDDED = 1024
DEFAULT_CALIB_OTHER = 64

__all__ = ["register", "run", "default_model_name"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "allocate", help="choose per-layer block sparsity (LSP) and write a run directory",
        description="Allocate per-layer block sparsity for a ViT at a FLOPs target with the LSP "
                    "method (second-order distortion curves + the hardware power term of "
                    "--hw's cycle/energy model), or a baseline. Writes RUN_DIR with "
                    "allocation.json, masks.safetensors, hw.yaml and plots; "
                    "`lsp-codesign report RUN_DIR` gives its hardware report.")
    add_hw_args(p)
    p.add_argument("--model", metavar="NAME",
                   help="registered model (default: the embedded model) or a timm ViT name "
                        "(random weights, synthetic calibration images)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="dense weights (.safetensors, or a torch file read weights-only)")
    p.add_argument("--flops", type=float, default=0.5, metavar="R",
                   help="FLOPs target: fraction of the dense model's MACs to keep, in (0, 1] "
                        "(default 0.5)")
    p.add_argument("--calib", type=int, default=None, metavar="N",
                   help=f"calibration images (default {DEFAULT_CALIB_EMBEDDED} for the embedded "
                        f"model, {DEFAULT_CALIB_OTHER} for others; the paper uses 2000)")
    p.add_argument("--method", choices=METHODS, default="lsp",
                   help="lsp (with the power term), beta0 (ablation), uniform, global "
                        "(default lsp)")
    p.add_argument("--out", metavar="DIR",
                   help="run directory (default runs/<model>-<method>-<block>-f<R>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="keep matching linear layers dense (repeatable), e.g. head")
    p.add_argument("--data", metavar="DIR",
                   help="calibration images in ImageFolder layout (registered models)")
    p.add_argument("--seed", type=int, default=0, help="chooses the calibration images")
    p.add_argument("--curvature", choices=CURVATURES, default=DEFAULT_CURVATURE.value,
                   help="per-sample gradients of the second-order term: empirical (the loss "
                        "at the data set's labels), fisher (labels drawn from the model's own "
                        "softmax), ggn (random directions over the logits) (default "
                        f"{DEFAULT_CURVATURE.value})")
    p.add_argument("--fisher-samples", type=_positive_int, default=1, metavar="S",
                   help="curvature samples per image for fisher/ggn (default 1)")
    p.add_argument("--first-order", choices=("on", "off"), default="off",
                   help="the first-order term gbar^T dW of the curves (default off; the "
                        "paper's reading: --curvature empirical --first-order on --score "
                        "taylor)")
    p.add_argument("--score", choices=SCORES, default=DEFAULT_SCORE.value,
                   help="block ranking: delta (the block's own second-order distortion) or "
                        f"taylor (the paper's mean |W * gbar|) (default {DEFAULT_SCORE.value})")
    p.add_argument("--kappa", type=float, default=DEFAULT_KAPPA,
                   help=f"curvature damping kappa (default {DEFAULT_KAPPA:g})")
    p.add_argument("--smooth", type=float, default=DEFAULT_SMOOTH,
                   help="EMA half-life of the curve smoothing, fraction of a layer's blocks "
                        f"(default {DEFAULT_SMOOTH:g})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_MICRO_BATCH, metavar="B",
                   help=f"images per forward/backward (default {DEFAULT_MICRO_BATCH})")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    """argparse type of ``--fisher-samples``: 1, 2, 3, ..."""
    import argparse as _ap

    try:
        v = int(text, 10)
    except ValueError:
        v = 0
    if v < 1 or str(v) != text.strip().lstrip("+"):
        raise _ap.ArgumentTypeError(f"must be a positive integer (1, 2, 3, ...), got {text!r}")
    return v


def default_model_name() -> str:
    """The registry's default model (the embedded one)."""
    from models.registry import DEFAULT_MODEL

    return DEFAULT_MODEL


def _default_out(model: str, method: str, block: str, flops: float) -> Path:
    return Path("runs") / f"{model}-{method}-{block}-f{flops:g}"


def run(args: argparse.Namespace) -> int:
    r = check_flops_target(args.flops)
    name = args.model or default_model_name()
    if args.calib is None:
        args.calib = (DEFAULT_CALIB_EMBEDDED if name == default_model_name()
                      else DEFAULT_CALIB_OTHER)
    if args.calib < 1:
        raise AllocError(f"--calib: calibration set is empty ({args.calib} images); give at "
                         "least 1")
    if args.batch_size < 1:
        raise AllocError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.seed < 0:
        raise AllocError(f"--seed must be >= 0, got {args.seed}")
    if not args.kappa >= 0 or not 0 <= args.smooth <= 1:
        raise AllocError(f"--kappa must be >= 0 and --smooth in [0, 1], got {args.kappa:g} and "
                         f"{args.smooth:g}")
    opts = CurvatureOptions.resolve(args.curvature, samples=args.fisher_samples,
                                    first_order=args.first_order, score=args.score)
    cfg = hw_from_args(args)
    out = Path(args.out) if args.out else _default_out(name, args.method, cfg.block_str, r)
    ckpt = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise LspError(f"{args.checkpoint}: checkpoint file not found")
    resolved = {"hw": args.hw, "block": cfg.block_str, "model": name, "checkpoint": ckpt,
                "flops": r, "calib": args.calib, "method": args.method, "out": str(out),
                "exclude": list(args.exclude), "data": args.data, "seed": args.seed,
                "kappa": args.kappa, "smooth": args.smooth, "batch_size": args.batch_size,
                **opts.record()}
    with new_run(out, overwrite=args.overwrite) as tmp:  # a taken --out fails here, at once
        alloc, source = _allocate(args, name, cfg, r, opts)
        meta = {"model": name, "model_source": source, "checkpoint": ckpt,
                "data": str(Path(args.data).resolve()) if args.data else None,
                "seed": args.seed, "exclude": list(args.exclude), "args": resolved}
        write_allocation(tmp, alloc, cfg, meta)
    if not args.quiet:
        print(summary_text(alloc, cfg, out))
    return 0


def _allocate(args: argparse.Namespace, name: str, cfg: Any, r: float, opts: Any) -> tuple:
    """The model, its calibration images, and the allocation; returns ``(alloc, source)``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from models.data import calibration_data
    from models.registry import build_model

    from ..allocator import allocate

    model, source = build_model(name, args.checkpoint)
    loader = calibration_data(name, source, model, args.calib, args.seed, args.batch_size,
                              args.data)
    alloc = allocate(model, cfg, loader, flops_target=r, method=args.method,
                     exclude=args.exclude, kappa=args.kappa, smooth=args.smooth,
                     options=opts, micro_batch=args.batch_size, seed=args.seed,
                     progress=not args.quiet, total=args.calib, model_name=name)
    return alloc, source


def summary_text(alloc: Any, cfg: Any, out: Path) -> str:
    """A few lines for the terminal."""
    t = alloc.totals()
    kinds = "  ".join(f"{k} {v:.2f}" for k, v in alloc.kept_fraction_by_kind().items())
    beta = "-" if alloc.beta is None else f"{alloc.beta:.4g}"
    lam = "-" if alloc.lam is None else f"{alloc.lam:.4g}"
    lines = [
        f"allocated {alloc.model} with {alloc.method}, block {alloc.block_k}x{alloc.block_n}, "
        f"{alloc.n_samples} calibration images ({alloc.options.describe()}; labels: "
        f"{alloc.labels})",
        f"  FLOPs  {t['flops'] / 1e9:.4g} G of {t['dense_flops'] / 1e9:.4g} G: ratio "
        f"{t['flops_ratio']:.4f} (target {alloc.flops_target:g})   params "
        f"{t['params'] / 1e6:.4g} M of {t['dense_params'] / 1e6:.4g} M",
        f"  beta {beta}   lambda {lam}",
        f"  kept fraction of blocks by layer type: {kinds}",
        f"  {cfg.name} model, linear layers: cycles {t['dense_cycles']:,} -> {t['cycles']:,} "
        f"({t['speedup']:.2f}x), energy {t['dense_energy_pj'] / 1e6:.4g} -> "
        f"{t['energy_pj'] / 1e6:.4g} uJ",
        f"  wrote {out}  (hardware report: lsp-codesign report {out})",
    ]
    return "\n".join(lines)

