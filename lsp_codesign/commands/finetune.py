"""``lsp-codesign finetune RUN_DIR``: masked finetuning of a run's pruned model."""

from __future__ import annotations

import argparse

ORDER = 40


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="finetune a run's pruned model with its block masks fixed",
        description="Finetune the pruned model of RUN_DIR (allocation.json + masks.safetensors) "
                    "with the masks fixed: pruned blocks stay exactly zero (verified after "
                    "training). Writes RUN_DIR/finetuned.safetensors and RUN_DIR/finetune.json.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by 'allocate'")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training images "
                   "(default 1)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate, warmup then cosine "
                   "(default: the model's, 2e-3 for vit-mnist, 1e-4 for DeiT)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--train-images", type=int, metavar="N",
                   help="train on a subset of N images chosen by --seed (default: all)")
    p.add_argument("--seed", type=int, default=0, help="subset, shuffling and init seed")
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                   help="distil from the dense model (default: on)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="distillation weight: loss = (1-a) CE + a T^2 KL (default 0.5)")
    p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    p.add_argument("--data", metavar="DIR",
                   help="labelled training images, ImageFolder layout (needed for DeiT)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing finetuned.safetensors")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..finetune import finetune_run

    rec = finetune_run(args.run_dir, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                       train_images=args.train_images, seed=args.seed, distill=args.distill,
                       distill_alpha=args.alpha, temperature=args.temperature, data=args.data,
                       overwrite=args.overwrite, progress=not args.no_progress)
    last = rec["history"][-1]
    print(f"finetuned {rec['model']} ({rec['block']} blocks, {rec['blocks_kept']}/"
          f"{rec['blocks_total']} kept) for {rec['epochs']} epoch(s) on {rec['train_images']} "
          f"images in {rec['seconds']:.0f} s: final loss {last['loss']:.4f}, "
          f"train top-1 {100 * last['train_top1']:.2f}%")
    print(f"pruned blocks verified zero; wrote {args.run_dir}/finetuned.safetensors and "
          "finetune.json")
    return 0
