"""``lsp-codesign evaluate RUN_DIR``: top-1 of the dense, pruned and finetuned models."""

from __future__ import annotations

import argparse

ORDER = 50


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
    p.set_defaults(func=run)


def format_table(rec: dict) -> str:
    """The evaluate record as an aligned text table."""
    lines = [f"{rec['model']}  method {rec.get('method')}  FLOPs target "
             f"{rec.get('flops_target')}  block {rec['block']}  blocks kept "
             f"{rec['blocks_kept']}/{rec['blocks_total']}  test images {rec['test_images']}",
             f"{'model':<10} {'top-1 %':>8} {'correct':>9} {'KL to dense':>12}"]
    for name in ("dense", "pruned", "finetuned"):
        r = rec["models"].get(name)
        if r is None:
            lines.append(f"{name:<10} {'-':>8} {'-':>9} {'-':>12}  (not finetuned yet: run "
                         "'lsp-codesign finetune RUN_DIR')")
            continue
        top1 = "-" if r["top1"] is None else f"{100 * r['top1']:.2f}"
        correct = "-" if r["correct"] is None else str(r["correct"])
        lines.append(f"{name:<10} {top1:>8} {correct:>9} {r['kl_to_dense']:>12.4f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..finetune import evaluate_run

    rec = evaluate_run(args.run_dir, test_images=args.test_images, batch_size=args.batch_size,
                       data=args.data, progress=not args.no_progress)
    print(format_table(rec))
    print(f"wrote {args.run_dir}/evaluate.json")
    return 0
