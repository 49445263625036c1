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
import contextlib
import os
from pathlib import Path
from typing import Any

from ..allocator import METHODS, check_flops_target
from ..atomic import check_output_path
from ..errors import LspError
from ..rundir import is_run_dir, new_run, write_allocation
from ._alloc_args import (DEFAULT_CALIB_EMBEDDED, DEFAULT_CALIB_OTHER, add_curve_args,
                          add_model_args, build_seeded_model, default_model_name, positive_int,
                          resolve_alloc_args)
from ._common import add_hw_args, hw_from_args
from ._launch import LAUNCHED_ENV, launch_local

ORDER = 30

__all__ = ["register", "run", "default_model_name", "DEFAULT_CALIB_EMBEDDED",
           "DEFAULT_CALIB_OTHER"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "allocate", help="choose per-layer block sparsity (LSP) and write a run directory",
        description="Allocate per-layer block sparsity for a ViT at a FLOPs target with the LSP "
                    "method (second-order distortion curves + the hardware power term of "
                    "--hw's cycle/energy model), or a baseline. Writes RUN_DIR with "
                    "allocation.json, masks.safetensors, hw.yaml and plots; "
                    "`lsp-codesign report RUN_DIR` gives its hardware report. Under torchrun "
                    "(or with --nproc N) the calibration images are sharded over the ranks; "
                    "rank 0 writes the run.")
    add_hw_args(p)
    add_model_args(p)
    p.add_argument("--flops", type=float, default=0.5, metavar="R",
                   help="FLOPs target: fraction of the dense model's MACs to keep, in (0, 1] "
                        "(default 0.5)")
    p.add_argument("--method", choices=METHODS, default="lsp",
                   help="lsp (with the power term), beta0 (ablation), uniform, global "
                        "(default lsp)")
    p.add_argument("--out", metavar="DIR",
                   help="run directory (default runs/<model>-<method>-<block>-f<R>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_curve_args(p)
    p.add_argument("--nproc", type=positive_int, default=None, metavar="N",
                   help="shard the calibration over N processes on this machine (as torchrun "
                        "--nproc-per-node N -m lsp_codesign allocate ...)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(func=run)


def _default_out(model: str, method: str, block: str, flops: float) -> Path:
    return Path("runs") / f"{model}-{method}-{block}-f{flops:g}"


def run(args: argparse.Namespace) -> int:
    from ..alloc.distributed import env_world

    r = check_flops_target(args.flops)
    name, opts, ckpt = resolve_alloc_args(args)
    cfg = hw_from_args(args)
    out = Path(args.out) if args.out else _default_out(name, args.method, cfg.block_str, r)
    world = env_world()
    if world is not None and args.nproc is not None and not os.environ.get(LAUNCHED_ENV):
        raise LspError("--nproc: this process is already one rank of a distributed job "
                       "(torchrun); leave --nproc out")
    if world is None and args.nproc is not None and args.nproc > 1:
        check_output_path(out, overwrite=args.overwrite, replaceable=is_run_dir,
                          what="run directory")
        return launch_local(args.nproc, list(getattr(args, "argv", [])))
    resolved = {"hw": args.hw, "block": cfg.block_str, "model": name, "checkpoint": ckpt,
                "flops": r, "calib": args.calib, "method": args.method, "out": str(out),
                "exclude": list(args.exclude), "data": args.data, "seed": args.seed,
                "kappa": args.kappa, "smooth": args.smooth, "batch_size": args.batch_size,
                "device": args.device, "ranks": 1 if world is None else world[1],
                **opts.record()}
    meta = {"model": name, "checkpoint": ckpt,
            "data": str(Path(args.data).resolve()) if args.data else None,
            "seed": args.seed, "exclude": list(args.exclude), "args": resolved}
    if world is None:
        with new_run(out, overwrite=args.overwrite) as tmp:  # a taken --out fails here, at once
            alloc, meta["model_source"] = _allocate(args, name, cfg, r, opts)
            write_allocation(tmp, alloc, cfg, meta)
    else:
        alloc = _allocate_rank(args, name, cfg, r, opts, out, meta)
        if alloc is None:
            return 0
    if not args.quiet:
        print(summary_text(alloc, cfg, out))
    return 0


def _inputs(args: argparse.Namespace, name: str, part: tuple[int, int] | None = None):
    """The model (on ``--device``), its source and its calibration loader (or one part)."""
    from models.data import calibration_data

    model, source = build_seeded_model(name, args.checkpoint, args.seed)
    model = model.to(args.device)
    loader = calibration_data(name, source, model, args.calib, args.seed, args.batch_size,
                              args.data, part=part)
    return model, source, loader


def _allocate(args: argparse.Namespace, name: str, cfg: Any, r: float, opts: Any) -> tuple:
    """The model, its calibration images, and the allocation; returns ``(alloc, source)``."""
    from ..allocator import allocate

    model, source, loader = _inputs(args, name)
    alloc = allocate(model, cfg, loader, flops_target=r, method=args.method,
                     exclude=args.exclude, kappa=args.kappa, smooth=args.smooth,
                     options=opts, micro_batch=args.batch_size, seed=args.seed,
                     progress=not args.quiet, total=args.calib, model_name=name)
    return alloc, source


def _allocate_rank(args: argparse.Namespace, name: str, cfg: Any, r: float, opts: Any,
                   out: Path, meta: dict) -> Any:
    """One rank of a sharded allocation: rank 0 takes ``--out`` first and writes the run;
    the others return None. Any rank's failure before the pass stops all of them."""
    from models.data import calibration_set_id

    from ..allocator import Group, Shard, allocate

    group = Group.from_env(args.device)
    try:
        with contextlib.ExitStack() as stack:
            failure, tmp, model, loader, shard = None, None, None, None, None
            try:
                if group.rank == 0:
                    tmp = stack.enter_context(new_run(out, overwrite=args.overwrite))
                source = "timm" if name not in _registered() else "registry"
                plan = calibration_set_id(name, source, args.calib, args.seed, args.data)
                shard = Shard.split(group, args.calib, args.batch_size, plan)
                model, meta["model_source"], loader = _inputs(args, name,
                                                              (shard.first, shard.count))
            except Exception as exc:  # noqa: BLE001 -- shared with the other ranks
                failure = exc
            group.agree(failure)
            alloc = allocate(model, cfg, loader, flops_target=r, method=args.method,
                             exclude=args.exclude, kappa=args.kappa, smooth=args.smooth,
                             options=opts, micro_batch=args.batch_size, seed=args.seed,
                             progress=not args.quiet and group.rank == 0, total=shard.count,
                             model_name=name, shard=shard)
            if alloc is not None:
                write_allocation(tmp, alloc, cfg, meta)
    finally:
        group.close()
    return alloc


def _registered() -> list[str]:
    from models.registry import list_models

    return list_models()


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

