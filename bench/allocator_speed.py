"""Allocator speed and memory on DeiT-Small shapes, against a plain forward + backward.

Random weights (no download), seeded synthetic calibration images. Phases:

``plain``            forward + backward of the same images with ordinary weight gradients
                     (a training step without the optimizer): the reference;
``forward/backward`` the allocator's calibration pass minus the time inside its hooks;
``block sums``       per-sample weight gradients, their block sums with W and the mean gradient
                     (inside the hooks);
``curves``           scores, orders, distortion curves, smoothing, slopes, power curves;
``search``           beta (Eq. 14) and the bisection on lambda;
``hardware``         the cycle/energy estimate of every masked layer.

Goals (issue 4): whole allocation <= 2x plain; curves + search < 5 % of the allocation; peak
memory < 8 GB (peak resident set of the process, an upper bound for the allocation).

It also reports the kept fraction of blocks per layer type for LSP and the baselines from the
same calibration, at the same FLOPs target: the ``beta0`` ablation against ``lsp`` shows the
power term's effect.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/allocator_speed.py`` (a few minutes on 2 cores).
Writes ``bench/results/allocator_speed.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lsp_codesign.allocator import (METHODS, allocate_from_calibration, calibrate,  # noqa: E402
                                    summary_by_kind)
from lsp_codesign.config import load_config  # noqa: E402
from lsp_codesign.rundir import write_json  # noqa: E402

GOAL_RATIO = 2.0
GOAL_CURVES_SEARCH = 0.05
GOAL_PEAK_GB = 8.0


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


def _images(model, n: int, batch: int, seed: int) -> list[torch.Tensor]:
    pe = model.patch_embed
    shape = (int(pe.proj.in_channels), *(int(v) for v in pe.img_size))
    gen = torch.Generator().manual_seed(seed)
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    return [(torch.rand((min(batch, n - lo), *shape), generator=gen) - mean) / std
            for lo in range(0, n, batch)]


def plain_forward_backward(model, batches: list[torch.Tensor]) -> float:
    """Seconds for forward + backward with weight gradients over ``batches``."""
    for p in model.parameters():
        p.requires_grad_(True)
    t0 = time.perf_counter()
    for x in batches:
        logits = model(x)
        loss = F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum")
        loss.backward()
        model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--hw", default=str(ROOT / "configs" / "vita.yaml"))
    ap.add_argument("--block", default="16x16")
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "allocator_speed.json"))
    args = ap.parse_args(argv)

    import timm

    torch.manual_seed(args.seed)
    cfg = load_config(args.hw, block=args.block)
    model = timm.create_model(args.model, pretrained=False).eval()
    batches = _images(model, args.images, args.batch_size, args.seed)
    rss0 = _peak_rss_gb()

    # warm-up (thread pools, allocator) on one small batch, untimed
    plain_forward_backward(model, [batches[0][:2]])

    t_plain = plain_forward_backward(model, batches)
    rss_plain = _peak_rss_gb()

    calib = calibrate(model, batches, block_k=cfg.block_k, block_n=cfg.block_n,
                      micro_batch=args.batch_size, progress=False, model_name=args.model)
    rss_calib = _peak_rss_gb()
    results = {}
    for method in METHODS:
        results[method] = allocate_from_calibration(calib, cfg, flops_target=args.flops,
                                                    method=method)
    rss_all = _peak_rss_gb()
    lsp = results["lsp"]
    t = lsp.timings
    phases = {
        "forward_backward": t["forward_backward_s"],
        "block_sums": t["block_sums_s"],
        "curves": t["curves_s"],
        "search": t["search_s"],
        "hardware": t["hardware_s"],
    }
    total = sum(phases.values())
    ratio = total / t_plain
    cs_share = (phases["curves"] + phases["search"]) / total

    print(f"{args.model}, random weights, {args.images} synthetic images, batch "
          f"{args.batch_size}, block {cfg.block_str}, FLOPs target {args.flops:g}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'phase':<18}{'seconds':>10}{'share':>9}")
    print("-" * 37)
    for k, v in phases.items():
        print(f"{k:<18}{v:>10.2f}{v / total:>9.1%}")
    print("-" * 37)
    print(f"{'allocation total':<18}{total:>10.2f}{1:>9.0%}")
    print(f"{'plain fwd+bwd':<18}{t_plain:>10.2f}")
    print(f"allocation / plain = {ratio:.2f} (goal <= {GOAL_RATIO:g}); curves + search = "
          f"{cs_share:.2%} of the allocation (goal < {GOAL_CURVES_SEARCH:.0%}); peak RSS "
          f"{rss_all:.2f} GB (goal < {GOAL_PEAK_GB:g})")
    print()
    kinds = list(summary_by_kind(lsp))
    print(f"kept fraction of blocks per layer type at FLOPs {args.flops:g}")
    print(f"{'method':<9}{'FLOPs':>8}" + "".join(f"{k:>8}" for k in kinds))
    for m, a in results.items():
        kf = a.kept_fraction_by_kind()
        print(f"{m:<9}{a.flops_ratio:>8.4f}" + "".join(f"{kf[k]:>8.3f}" for k in kinds))
    sizes = summary_by_kind(lsp)
    print("weights per layer: " + ", ".join(f"{k} {v['weights_per_layer']:,.0f}"
                                            for k, v in sizes.items()))
    print(f"lsp: beta {lsp.beta:.4g}, lambda {lsp.lam:.4g}; beta0: lambda "
          f"{results['beta0'].lam:.4g}")

    doc = {
        "model": args.model,
        "weights": "random (timm init, seed %d)" % args.seed,
        "images": args.images,
        "batch_size": args.batch_size,
        "block": cfg.block_str,
        "hw": cfg.name,
        "flops_target": args.flops,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "phases_s": phases,
        "allocation_s": total,
        "plain_forward_backward_s": t_plain,
        "allocation_over_plain": ratio,
        "curves_search_share": cs_share,
        "peak_rss_gb": {"start": rss0, "after_plain": rss_plain, "after_calibration": rss_calib,
                        "end": rss_all},
        "goals": {"allocation_over_plain_max": GOAL_RATIO,
                  "curves_search_share_max": GOAL_CURVES_SEARCH, "peak_gb_max": GOAL_PEAK_GB,
                  "met": bool(ratio <= GOAL_RATIO and cs_share < GOAL_CURVES_SEARCH
                              and rss_all < GOAL_PEAK_GB)},
        "methods": {m: {"flops_ratio": a.flops_ratio, "beta": a.beta, "lambda": a.lam,
                        "kept_fraction_by_kind": a.kept_fraction_by_kind(),
                        "kept_fraction_per_layer": {n: r.kept_fraction
                                                    for n, r in a.layers.items()}}
                    for m, a in results.items()},
        "weights_per_layer_by_kind": {k: v["weights_per_layer"] for k, v in sizes.items()},
        "blocks_total": int(sum(c.n_blocks for c in lsp.curves.values())),
        "dP_dalpha_pj_by_kind": _dp_by_kind(lsp),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, doc)
    print(f"wrote {out}")
    return 0


def _dp_by_kind(alloc) -> dict[str, float]:
    """Mean |dP/dalpha| per layer type (pJ per unit ratio): what the power term adds."""
    acc: dict[str, list[float]] = {}
    for c in alloc.curves.values():
        acc.setdefault(c.shape.kind, []).append(c.dp_dalpha)
    return {k: float(np.mean(v)) for k, v in acc.items()}


if __name__ == "__main__":
    sys.exit(main())
