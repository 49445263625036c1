"""``lsp-codesign finetune RUN_DIR``: masked finetuning of a run's pruned model.

Wires the run directory (:mod:`lsp_codesign.rundir`), the run's model and training images
(``models/``) and the masked training loop (:func:`lsp_codesign.training.train`).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..masking import FinetuneError, check_masked, masked_nonzeros
from ..rundir import FINETUNE_JSON, FINETUNED, MASKS, write_finetune
from ._runs import dense_model, pruned_model, read_model_run

ORDER = 40

__all__ = ["register", "run", "finetune_run"]


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


def finetune_run(run_dir: str | os.PathLike, *, epochs: int = 1, lr: float | None = None,
                 batch_size: int = 128, train_images: int | None = None, seed: int = 0,
                 distill: bool = True, distill_alpha: float = 0.5, temperature: float = 2.0,
                 data: str | os.PathLike | None = None, overwrite: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Finetune a run's pruned model with its masks fixed; write the checkpoint and a record.

    ``lr`` defaults to the model's ``finetune_lr``; ``data`` to the run's recorded image
    folder; ``seed`` seeds the subset, shuffling, augmentation and torch. The other arguments
    are the command's options. Returns the record written to ``finetune.json``.
    """
    import torch

    from models import model_info, save_checkpoint
    from models.data import train_loader

    from ..training import train

    run = read_model_run(run_dir)
    if lr is None:
        lr = model_info(run.model_name).finetune_lr
    if run.file(FINETUNED).exists() and not overwrite:  # checked again before writing
        raise FinetuneError(f"{run.file(FINETUNED)}: already exists (pass --overwrite to "
                            "replace it)")
    folder = data if data is not None else run.data
    loader = train_loader(run.model_name, train_images, seed, batch_size, folder=folder)
    torch.manual_seed(seed)
    model, em = pruned_model(run)
    teacher = dense_model(run) if distill else None
    t0 = time.perf_counter()
    history = train(model, loader, epochs=epochs, lr=lr, masks=em, teacher=teacher,
                    distill_alpha=distill_alpha, temperature=temperature, progress=progress,
                    desc="finetune")
    seconds = time.perf_counter() - t0
    counts = masked_nonzeros(model, em)  # checked again on the model being saved
    zero = not any(nonzero for _pruned, nonzero in counts.values())
    if not zero:
        check_masked(model, em)  # raises, naming the layers
    record = {
        "model": run.model_name, "checkpoint_in": run.checkpoint, "checkpoint_out": FINETUNED,
        "masks": MASKS, "block": run.masks.block_str, "blocks_kept": run.masks.kept_blocks,
        "blocks_total": run.masks.total_blocks,
        "pruned_weights": sum(pruned for pruned, _nonzero in counts.values()),
        "pruned_blocks_zero": zero, "epochs": epochs, "lr": lr, "batch_size": batch_size,
        "train_images": history[0]["images"], "seed": seed, "distill": distill,
        "distill_alpha": distill_alpha if distill else None,
        "temperature": temperature if distill else None,
        "data": str(folder) if folder is not None else None,
        "history": history, "seconds": round(seconds, 2), "torch": torch.__version__,
    }
    write_finetune(run, lambda path, meta: save_checkpoint(
        model, path, model_name=run.model_name, metadata=meta), record, overwrite=overwrite)
    return record


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rec = finetune_run(args.run_dir, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                       train_images=args.train_images, seed=args.seed, distill=args.distill,
                       distill_alpha=args.alpha, temperature=args.temperature, data=args.data,
                       overwrite=args.overwrite, progress=not args.no_progress)
    last = rec["history"][-1]
    print(f"finetuned {rec['model']} ({rec['block']} blocks, {rec['blocks_kept']}/"
          f"{rec['blocks_total']} kept) for {rec['epochs']} epoch(s) on {rec['train_images']} "
          f"images in {rec['seconds']:.0f} s: final loss {last['loss']:.4f}, "
          f"train top-1 {100 * last['train_top1']:.2f}%")
    print(f"pruned blocks verified zero; wrote {args.run_dir}/{FINETUNED} and {FINETUNE_JSON}")
    return 0
