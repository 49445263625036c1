"""``lsp-codesign report``: the hardware cycle/energy report of a model, dense and pruned."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..atomic import check_output_path
from ..errors import LspError
from ..masks_io import load_masks
from ..report import build_report, measured_from_verify
from ..table import to_json
from ..rundir import (HW_YAML, VERIFY_JSON, Run, read_run, read_verify, write_report,
                      write_run_report)
from ._common import add_format_arg, add_hw_args, hw_from_args
from ._runs import note_hw_override

ORDER = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="per-layer hardware cycle/energy report, dense vs pruned",
        description="Hardware report of a model: per layer and in total, cycles, time, energy, "
                    "power and utilisation, dense and (with masks) pruned. Give a run directory "
                    "(from `allocate`), or --hw with --model (dense layer shapes from timm) "
                    "or --masks.")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                   help="run directory with hw.yaml and masks.safetensors")
    add_hw_args(p, required=False, array=True)
    p.add_argument("--model",
                   help="model name for dense layer shapes (e.g. deit_small_patch16_224)")
    p.add_argument("--masks", metavar="FILE", help="masks.safetensors to report pruned figures for")
    add_format_arg(p)
    p.add_argument("--out", metavar="DIR",
                   help="write report.md, report.json and plots here (default with RUN_DIR: "
                        "RUN_DIR/report)")
    p.set_defaults(func=run)


def _model_gemms(name: str) -> list[tuple[str, int, int, int]]:
    """Layer shapes by model name (registry first, then timm), cached: a warm call imports
    neither torch nor timm (:func:`lsp_codesign.vit_shapes.cached_shapes`)."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    try:
        from models import registry  # the project's registry (embedded default, DeiT)
    except ImportError:
        registry = None
    from ..vit_shapes import cached_shapes, module_vit_shapes, timm_vit_shapes

    try:
        key = {"model": name, "timm": version("timm")}
    except PackageNotFoundError:
        key = {"model": name, "timm": "none"}
    if registry is not None and name in registry.list_models():
        key["registry"] = hashlib.sha256(Path(registry.__file__).read_bytes()).hexdigest()[:16]

        def build():
            import torch

            with torch.device("meta"):
                model = registry.create_model(name, pretrained_default=False)
            return module_vit_shapes(model, name)
    else:
        def build():
            return timm_vit_shapes(name)
    return [(s.name, s.m, s.n, s.k) for s in cached_shapes(key, build)]


def _known_area(cfg) -> dict | None:
    """The engine's area if ``make area`` or ``bench/area.py`` synthesised this config."""
    if cfg.engine != "block_sparse":
        return None
    try:
        from hw.area import known_area
    except ImportError:  # an installation without the RTL generator
        return None
    return known_area(cfg)


def _run_dir_inputs(args: argparse.Namespace) -> tuple:
    """Config, masks, measured figures and output (a folder, or the run) of a run's report."""
    if args.hw is None:
        run = read_run(args.run_dir)  # hw.yaml must be the config that priced the allocation
        if any(getattr(args, k, None) is not None for k in ("block", "array", "dataflow")):
            run = read_run(args.run_dir, hw=hw_from_args(args, str(run.file(HW_YAML))))
    else:
        run = read_run(args.run_dir, hw=hw_from_args(args))
    note_hw_override("report", run)
    measured = None
    ver = None if args.masks else read_verify(run)
    if ver is not None and ver.matches(run):
        measured = measured_from_verify(ver)
    elif ver is not None:
        print(f"lsp-codesign report: note: {run.file(VERIFY_JSON)} was measured on another "
              "allocation, config or masks; showing model figures only", file=sys.stderr)
    ms = load_masks(args.masks) if args.masks else run.masks
    return run.hw, ms, measured, args.out or run


def run(args: argparse.Namespace) -> int:
    masks = None
    measured = None
    out_dir = args.out
    if out_dir and not Path(out_dir).is_dir():
        check_output_path(out_dir, overwrite=False)  # a file or a path under one: fail now
    if args.run_dir:
        cfg, ms, measured, out_dir = _run_dir_inputs(args)
    else:
        if args.hw is None:
            raise LspError("--hw is required without a run directory")
        cfg = hw_from_args(args)
        ms = load_masks(args.masks) if args.masks else None
    if ms is not None:
        if ms.block != cfg.block:
            raise LspError(f"masks were made for block {ms.block_str} but config {cfg.name} has "
                           f"block {cfg.block_str}; pass --block {ms.block_str}")
        gemms = [(name, *ms.gemms[name]) for name in ms.order]
        masks = ms.masks
        model = ms.model
    elif args.model:
        gemms = _model_gemms(args.model)
        model = args.model
    else:
        raise LspError("nothing to report: give RUN_DIR, --masks or --model")
    rep = build_report(cfg, model, gemms, masks, measured)
    rep.area = _known_area(cfg)
    text = {"text": rep.to_text, "markdown": rep.to_markdown}.get(args.format)
    if text is not None:
        print(text(), end="")
    else:
        print(to_json(rep.to_dict()))
    if out_dir:
        out = write_run_report(out_dir, rep) if isinstance(out_dir, Run) else write_report(
            out_dir, rep)
        print(f"wrote {out}/report.md, report.json and plots", file=sys.stderr)
    return 0
