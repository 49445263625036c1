"""Options shared by ``allocate`` and ``sweep``: the model, its calibration images, the curves.

Both commands calibrate the same way, so they take the same options with the same defaults
and the same checks (:func:`resolve_alloc_args`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..allocator import (CURVATURES, DEFAULT_CURVATURE, DEFAULT_KAPPA, DEFAULT_MICRO_BATCH,
                         DEFAULT_SCORE, DEFAULT_SMOOTH, SCORES, AllocError, CurvatureOptions)
from ..errors import LspError

__all__ = ["add_model_args", "add_curve_args", "resolve_alloc_args", "default_model_name",
           "positive_int", "check_device", "DEFAULT_CALIB_EMBEDDED", "DEFAULT_CALIB_OTHER"]

# Calibration images by default: the embedded model's real MNIST digits are cheap (about 8 s for
# 1024 on 2 cores) and pruned accuracy keeps improving up to ~1000 (64% -> 84% top-1 at R = 0.5);
# a DeiT pass costs about a second per image on 2 CPU cores, so other models default lower.
DEFAULT_CALIB_EMBEDDED = 1024
DEFAULT_CALIB_OTHER = 64


def positive_int(text: str) -> int:
    """argparse type: 1, 2, 3, ..."""
    try:
        v = int(text, 10)
    except ValueError:
        v = 0
    if v < 1 or str(v) != text.strip().lstrip("+"):
        raise argparse.ArgumentTypeError(f"must be a positive integer (1, 2, 3, ...), got "
                                         f"{text!r}")
    return v


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model --checkpoint --calib --data --seed --exclude --batch-size --device``."""
    p.add_argument("--model", metavar="NAME",
                   help="registered model (default: the embedded model) or a timm ViT name "
                        "(random weights, seeded by --seed; synthetic calibration images)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="dense weights (.safetensors, or a torch file read weights-only)")
    p.add_argument("--calib", type=int, default=None, metavar="N",
                   help=f"calibration images (default {DEFAULT_CALIB_EMBEDDED} for the embedded "
                        f"model, {DEFAULT_CALIB_OTHER} for others; the paper uses 2000)")
    p.add_argument("--data", metavar="DIR",
                   help="calibration images in ImageFolder layout (registered models)")
    p.add_argument("--seed", type=int, default=0,
                   help="chooses the calibration images (and a timm model's random weights)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="keep matching linear layers dense (repeatable), e.g. head")
    p.add_argument("--batch-size", type=int, default=DEFAULT_MICRO_BATCH, metavar="B",
                   help=f"images per forward/backward (default {DEFAULT_MICRO_BATCH})")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the calibration pass runs (default cpu; cuda: the GPU, NCCL "
                        "between ranks)")


def add_curve_args(p: argparse.ArgumentParser) -> None:
    """``--curvature --fisher-samples --first-order --score --kappa --smooth``."""
    p.add_argument("--curvature", choices=CURVATURES, default=DEFAULT_CURVATURE.value,
                   help="per-sample gradients of the second-order term: empirical (the loss "
                        "at the data set's labels), fisher (labels drawn from the model's own "
                        "softmax), ggn (random directions over the logits) (default "
                        f"{DEFAULT_CURVATURE.value})")
    p.add_argument("--fisher-samples", type=positive_int, default=1, metavar="S",
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


def default_model_name() -> str:
    """The registry's default model (the embedded one)."""
    from models.registry import DEFAULT_MODEL

    return DEFAULT_MODEL


def check_device(device: str) -> str:
    """``cpu``, or ``cuda`` when a GPU is there (else a one-line error)."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LspError("--device cuda: no CUDA device is available on this machine")
    return device


def resolve_alloc_args(args: argparse.Namespace) -> tuple[str, CurvatureOptions, str | None]:
    """Check the shared options; returns ``(model name, curve options, checkpoint path)``.

    Sets ``args.calib`` to the model's default when it was not given.
    """
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
    ckpt = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise LspError(f"{args.checkpoint}: checkpoint file not found")
    check_device(args.device)
    return name, opts, ckpt


def build_seeded_model(name: str, checkpoint: str | None, seed: int) -> tuple[Any, str]:
    """``models.registry.build_model`` with torch's generator seeded first, so that a model
    without a checkpoint gets the same random weights in every process (every rank, every
    sweep worker) started with the same ``seed``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from models.registry import build_model

    state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        return build_model(name, checkpoint)
    finally:
        torch.random.set_rng_state(state)
