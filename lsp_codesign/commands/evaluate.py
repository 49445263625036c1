"""``lsp-codesign evaluate RUN_DIR``: top-1 of the dense, pruned and finetuned models.

Wires the run directory (:mod:`lsp_codesign.rundir`), the run's models and test images
(``models/``) and the one-pass evaluation (:func:`lsp_codesign.training.evaluate_models`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .. import table
from ..masking import FinetuneError, check_masked
from ..rundir import EVALUATE_JSON, finetuned_weights, weights_stamp, write_evaluate
from ._common import add_format_arg
from ._runs import dense_model, pruned_model, read_model_run

ORDER = 50

__all__ = ["register", "run", "evaluate_run", "format_table"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="top-1 accuracy of a run's dense, pruned and finetuned models",
        description="Evaluate the dense model of RUN_DIR, the same model with the run's masks "
                    "applied, and RUN_DIR/finetuned.safetensors if present: top-1 and the KL "
                    "divergence of each model's output to the dense one. Writes "
                    "RUN_DIR/evaluate.json.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by 'allocate'")
    p.add_argument("--test-images", type=int, metavar="N",
                   help="evaluate a fixed subset of N test images (default: all)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch")
    p.add_argument("--data", metavar="DIR",
                   help="labelled test images, ImageFolder layout (needed for DeiT)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_format_arg(p)
    p.set_defaults(func=run)


def format_table(rec: dict, fmt: str = "text") -> str:
    """The evaluate record as an aligned ``text`` or a ``markdown`` table."""
    title = (f"{rec['model']}  method {rec.get('method')}  FLOPs target "
             f"{rec.get('flops_target')}  block {rec['block']}  blocks kept "
             f"{rec['blocks_kept']}/{rec['blocks_total']}  test images {rec['test_images']}")
    rows, missing = [], None
    for i, name in enumerate(("dense", "pruned", "finetuned")):
        r = rec["models"].get(name)
        if r is None:
            rows.append([name, "-", "-", "-"])
            missing = i
            continue
        rows.append([name, "-" if r["top1"] is None else f"{100 * r['top1']:.2f}",
                     "-" if r["correct"] is None else str(r["correct"]),
                     f"{r['kl_to_dense']:.4f}"])
    header = ["model", "top-1 %", "correct", "KL to dense"]
    note = "(not finetuned yet: run 'lsp-codesign finetune RUN_DIR')"
    if fmt == "markdown":
        text = table.format_markdown(header, rows)
        return "\n".join([f"**{title}**", "", text] + (["", note] if missing is not None else []))
    lines = table.format_table(header, rows, sep=" ", min_widths=(10, 8, 9, 12),
                               rules=False).split("\n")
    if missing is not None:
        lines[missing + 1] += f"  {note}"
    return "\n".join([title, *lines])


def evaluate_run(run_dir: str | os.PathLike, *, test_images: int | None = None,
                 batch_size: int = 256, data: str | os.PathLike | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Top-1 of a run's dense, pruned and (if present) finetuned models; writes evaluate.json.

    The finetuned checkpoint is checked against the run's masks: a pruned block that is not
    exactly zero is an error, not a number. ``test_images`` picks a fixed subset (default:
    all); ``data`` is a labelled ImageFolder (needed for DeiT). Returns the record written.
    """
    from models.data import test_loader

    from ..training import evaluate_models

    run = read_model_run(run_dir)
    folder = data if data is not None else run.data
    loader = test_loader(run.model_name, test_images, batch_size, folder=folder)
    models = {"dense": dense_model(run)}
    models["pruned"], em = pruned_model(run)
    stamp = weights_stamp(run)
    weights = finetuned_weights(run)
    if weights is not None:
        finetuned = dense_model(run, weights)
        try:
            check_masked(finetuned, em)
        except FinetuneError as exc:
            raise FinetuneError(f"{weights}: does not respect the run's masks: {exc}") from None
        models["finetuned"] = finetuned
    res = evaluate_models(models, loader, reference="dense", progress=progress)
    record = {
        "model": run.model_name,
        "method": run.allocation.method,
        "flops_target": run.allocation.flops_target,
        "block": run.masks.block_str,
        "blocks_kept": run.masks.kept_blocks,
        "blocks_total": run.masks.total_blocks,
        "test_images": res["dense"]["total"],
        "data": str(folder) if folder is not None else None,
        "models": {k: {"top1": v["top1"], "correct": v["correct"], "total": v["total"],
                       "kl_to_dense": v["kl_to_reference"]} for k, v in res.items()},
    }
    if "finetuned" not in models:
        record["models"]["finetuned"] = None
    write_evaluate(run, record, stamp)
    return record


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rec = evaluate_run(args.run_dir, test_images=args.test_images, batch_size=args.batch_size,
                       data=args.data, progress=not args.no_progress)
    if args.format == "json":
        print(table.to_json(rec))
        print(f"wrote {args.run_dir}/{EVALUATE_JSON}", file=sys.stderr)
        return 0
    print(format_table(rec, args.format))
    print(f"wrote {args.run_dir}/{EVALUATE_JSON}")
    return 0
