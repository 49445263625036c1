"""Whole-model allocations per curve mode: pruned top-1 and KL before finetuning.

``bench/curve_fidelity.py`` asks how well each mode's curves predict the damage of pruning
one layer; this asks what the allocator then does with them. For each curve mode and seed, an
LSP allocation (the power term of ``configs/vita.yaml``) at FLOPs target ``R`` is applied to
the embedded ``vit-mnist`` and measured on held-out MNIST test digits (top-1 and mean KL to
the dense model), with the kept fraction of blocks per layer type.

It then takes two modes' allocations on seed 0 and swaps their per-layer block counts and
their block orders (counts of one, order of the other), to show which of the two decides the
difference.

Prints a table, writes ``bench/results/curvature_allocations.json``. Run from the repository
root (a few minutes on one core)::

    nice -n 5 .venv/bin/python bench/curvature_allocations.py
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {
    "empirical, off, delta (default)": {"curvature": "empirical"},
    "empirical, on, taylor (paper)": {"curvature": "empirical", "first_order": "on",
                                      "score": "taylor"},
    "fisher, off, delta": {"curvature": "fisher"},
    "ggn, off, delta": {"curvature": "ggn"},
}
SWAP = ("empirical, off, delta (default)", "ggn, off, delta")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hw", default=str(ROOT / "configs" / "vita.yaml"))
    p.add_argument("--blocks", nargs="+", default=["8x8", "16x16"])
    p.add_argument("--flops", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--calib", type=int, default=1024)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path,
                   default=ROOT / "bench" / "results" / "curvature_allocations.json")
    return p.parse_args(argv)


def _measure(dense, masks, test) -> dict:
    from lsp_codesign.masking import apply_masks, element_masks
    from lsp_codesign.training import evaluate_models

    model = copy.deepcopy(dense)
    apply_masks(model, element_masks(model, masks))
    ev = evaluate_models({"dense": dense, "pruned": model}, test, reference="dense",
                         progress=False)["pruned"]
    return {"top1": 100 * ev["top1"], "kl": ev["kl_to_reference"]}


def _swapped(counts_from, order_from):
    """``order_from``'s masks with ``counts_from``'s number of pruned blocks per layer."""
    ms = copy.deepcopy(order_from.masks)
    for name, r in counts_from.layers.items():
        c = order_from.curves.get(name)
        if c is None:
            continue
        mask = np.ones(c.n_blocks, dtype=bool)
        mask[c.order[:c.n_blocks - r.kept_blocks]] = False
        ms.masks[name] = mask.reshape(c.grid.shape)
    return ms


def run(args: argparse.Namespace) -> dict:
    import torch

    from lsp_codesign.allocator import CurvatureOptions, allocate_from_calibration, calibrate
    from lsp_codesign.config import load_config
    from models import DEFAULT_MODEL, create_model
    from models.data import calibration_loader, test_loader

    torch.set_num_threads(args.threads)
    name = DEFAULT_MODEL
    dense = create_model(name).eval()
    test = test_loader(name, args.test_images)
    out = {"settings": {"model": name, "flops": args.flops, "seeds": args.seeds,
                        "calib": args.calib, "test_images": args.test_images,
                        "hw": os.path.relpath(args.hw, ROOT), "modes": MODES},
           "runs": [], "swaps": []}
    for block in args.blocks:
        cfg = load_config(args.hw, block=block)
        for seed in args.seeds:
            loader = calibration_loader(name, args.calib, seed, batch_size=64)
            allocs = {}
            for mode, kw in MODES.items():
                cal = calibrate(dense, loader, block_k=cfg.block_k, block_n=cfg.block_n,
                                options=CurvatureOptions.resolve(**kw), seed=seed,
                                progress=False, model_name=name)
                a = allocate_from_calibration(cal, cfg, flops_target=args.flops, method="lsp")
                allocs[mode] = a
                res = {"block": block, "seed": seed, "mode": mode, **_measure(dense, a.masks, test),
                       "kept_fraction_by_kind": a.kept_fraction_by_kind(),
                       "kept_blocks": {n: r.kept_blocks for n, r in a.layers.items()}}
                out["runs"].append(res)
                print(f"{block} seed {seed} {mode:34s} top-1 {res['top1']:6.2f}  KL "
                      f"{res['kl']:.3f}", flush=True)
            if seed == args.seeds[0]:
                a, b = (allocs[m] for m in SWAP)
                for counts, order, (cm, om) in ((a, b, SWAP), (b, a, SWAP[::-1])):
                    r = _measure(dense, _swapped(counts, order), test)
                    out["swaps"].append({"block": block, "seed": seed, "counts_from": cm,
                                         "order_from": om, **r})
    return out


def table(result: dict) -> str:
    modes = list(result["settings"]["modes"])
    lines = [f"pruned top-1 % at R = {result['settings']['flops']:g}, before finetuning "
             f"(mean ± std over seeds {result['settings']['seeds']})", "",
             "| block | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for block in dict.fromkeys(r["block"] for r in result["runs"]):
        cells = []
        for m in modes:
            v = [r["top1"] for r in result["runs"] if r["block"] == block and r["mode"] == m]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.fmean(v):.1f} ± {sd:.1f}")
        lines.append(f"| {block} | " + " | ".join(cells) + " |")
    lines += ["", "| block | counts from | order from | top-1 % |", "|---|---|---|---:|"]
    lines += [f"| {s['block']} | {s['counts_from']} | {s['order_from']} | {s['top1']:.2f} |"
              for s in result["swaps"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    result = run(args)
    result["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
