"""Allocator speed and memory on DeiT-Small shapes, against a plain forward + backward.

Random weights (no download), seeded synthetic calibration images. Each measurement runs in
its own process (so that its peak resident memory is its own), and the allocation and the
plain pass alternate, repeated ``--repeats`` times at each image count ``N``:

``plain``   forward + backward of the same images with ordinary weight gradients (a training
            step without the optimizer): the reference;
``alloc``   the allocator's calibration pass with the default curvature options, then the
            curves, the search and the hardware estimates of every method.

Reported per ``N``: wall and CPU seconds of each (min and median over the repeats), the ratio
allocation / plain (median of the per-repeat ratios, wall and CPU), peak resident memory of
each process, and the allocation's phases (forward/backward, per-sample block sums inside the
hooks, curves, search, hardware). Goals (issue 9): allocation <= 1.2x plain at one curvature
sample per image, and peak memory flat in ``N``.

It also reports the kept fraction of blocks per layer type for LSP and the baselines from the
same calibration, at the same FLOPs target: ``beta0`` against ``lsp`` shows the power term.

Run: ``.venv/bin/python bench/allocator_speed.py`` (about 30 minutes on 2 cores at the default
N = 128 and 512). Writes ``bench/results/allocator_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_RATIO = 1.2
GOAL_CURVES_SEARCH = 0.05


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


# ---------------------------------------------------------------------------------------------
# One measurement (a worker process)


def _images(model, n: int, batch: int, seed: int) -> list:
    import torch

    pe = model.patch_embed
    shape = (int(pe.proj.in_channels), *(int(v) for v in pe.img_size))
    gen = torch.Generator().manual_seed(seed)
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    for lo in range(0, n, batch):  # generated on the fly: the images are not kept
        yield (torch.rand((min(batch, n - lo), *shape), generator=gen) - mean) / std


def _plain(model, batches) -> None:
    import torch.nn.functional as F

    for p in model.parameters():
        p.requires_grad_(True)
    for x in batches:
        logits = model(x)
        F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum").backward()
        model.zero_grad(set_to_none=True)


def worker(args: argparse.Namespace) -> dict:
    import timm
    import torch

    from lsp_codesign.allocator import (METHODS, CurvatureOptions, allocate_from_calibration,
                                        calibrate, summary_by_kind)
    from lsp_codesign.config import load_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_config(args.hw, block=args.block)
    model = timm.create_model(args.model, pretrained=False).eval()
    opts = CurvatureOptions.resolve(args.curvature, samples=args.fisher_samples)
    _plain(model, _images(model, 2, 2, args.seed + 1))  # warm-up: thread pools, allocator
    batches = _images(model, args.n, args.batch_size, args.seed)
    out: dict = {"what": args.worker, "n": args.n}
    w0, c0 = time.perf_counter(), time.process_time()
    if args.worker == "plain":
        _plain(model, batches)
    else:
        calib = calibrate(model, batches, block_k=cfg.block_k, block_n=cfg.block_n,
                          options=opts, micro_batch=args.batch_size, seed=args.seed,
                          progress=False, model_name=args.model)
        allocs = {m: allocate_from_calibration(calib, cfg, flops_target=args.flops, method=m)
                  for m in METHODS}
    out["wall_s"] = time.perf_counter() - w0
    out["cpu_s"] = time.process_time() - c0
    out["peak_rss_gb"] = _peak_rss_gb()
    if args.worker == "alloc":
        lsp = allocs["lsp"]
        t = lsp.timings
        out["phases_s"] = {"forward_backward": t["forward_backward_s"],
                           "block_sums": t["block_sums_s"], "curves": t["curves_s"],
                           "search": t["search_s"], "hardware": t["hardware_s"]}
        out["options"] = opts.record()
        out["methods"] = {m: {"flops_ratio": a.flops_ratio, "beta": a.beta, "lambda": a.lam,
                              "kept_fraction_by_kind": a.kept_fraction_by_kind()}
                          for m, a in allocs.items()}
        out["weights_per_layer_by_kind"] = {k: v["weights_per_layer"]
                                            for k, v in summary_by_kind(lsp).items()}
        out["blocks_total"] = int(sum(c.n_blocks for c in lsp.curves.values()))
    return out


# ---------------------------------------------------------------------------------------------
# The driver


def _run_worker(args: argparse.Namespace, what: str, n: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", what, "--n", str(n),
           "--model", args.model, "--batch-size", str(args.batch_size), "--hw", args.hw,
           "--block", args.block, "--flops", str(args.flops), "--seed", str(args.seed),
           "--threads", str(args.threads), "--curvature", args.curvature,
           "--fisher-samples", str(args.fisher_samples)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"worker {what} N={n} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _stats(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "all": values}


def drive(args: argparse.Namespace) -> dict:
    per_n = {}
    for n in args.images:
        runs: dict[str, list[dict]] = {"plain": [], "alloc": []}
        for r in range(args.repeats):
            order = ("plain", "alloc") if r % 2 == 0 else ("alloc", "plain")
            for what in order:
                res = _run_worker(args, what, n)
                runs[what].append(res)
                print(f"N={n} repeat {r + 1}/{args.repeats} {what:5s} wall {res['wall_s']:7.1f} s"
                      f"  cpu {res['cpu_s']:7.1f} s  peak RSS {res['peak_rss_gb']:.2f} GB",
                      flush=True)
        ratios_wall = [a["wall_s"] / p["wall_s"] for a, p in zip(runs["alloc"], runs["plain"])]
        ratios_cpu = [a["cpu_s"] / p["cpu_s"] for a, p in zip(runs["alloc"], runs["plain"])]
        med = sorted(runs["alloc"], key=lambda x: x["wall_s"])[len(runs["alloc"]) // 2]
        per_n[str(n)] = {
            "plain_wall_s": _stats([x["wall_s"] for x in runs["plain"]]),
            "alloc_wall_s": _stats([x["wall_s"] for x in runs["alloc"]]),
            "plain_cpu_s": _stats([x["cpu_s"] for x in runs["plain"]]),
            "alloc_cpu_s": _stats([x["cpu_s"] for x in runs["alloc"]]),
            "ratio_wall": _stats(ratios_wall), "ratio_cpu": _stats(ratios_cpu),
            "plain_peak_rss_gb": max(x["peak_rss_gb"] for x in runs["plain"]),
            "alloc_peak_rss_gb": max(x["peak_rss_gb"] for x in runs["alloc"]),
            "phases_s": med["phases_s"], "median_alloc_run": med,
        }
    return per_n


def report(doc: dict) -> str:
    lines = [f"{doc['model']}, random weights, synthetic images, batch {doc['batch_size']}, "
             f"block {doc['block']}, {doc['threads']} torch threads, {doc['repeats']} "
             f"repeats alternated, options {doc['options']}", "",
             "| N | plain s (min / median) | allocation s (min / median) | ratio wall | "
             "ratio CPU | peak RSS plain | peak RSS allocation |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in doc["per_n"].items():
        lines.append(
            f"| {n} | {r['plain_wall_s']['min']:.1f} / {r['plain_wall_s']['median']:.1f} | "
            f"{r['alloc_wall_s']['min']:.1f} / {r['alloc_wall_s']['median']:.1f} | "
            f"{r['ratio_wall']['median']:.3f} | {r['ratio_cpu']['median']:.3f} | "
            f"{r['plain_peak_rss_gb']:.2f} GB | {r['alloc_peak_rss_gb']:.2f} GB |")
    n_last = list(doc["per_n"])[-1]
    ph = doc["per_n"][n_last]["phases_s"]
    tot = sum(ph.values())
    lines += ["", f"allocation phases (median run, N = {n_last}):", "",
              "| phase | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {v / tot:.1%} |" for k, v in ph.items()]
    meth = doc["per_n"][n_last]["median_alloc_run"]["methods"]
    kinds = list(meth["lsp"]["kept_fraction_by_kind"])
    lines += ["", f"kept fraction of blocks per layer type at FLOPs {doc['flops_target']:g}", "",
              "| method | FLOPs | " + " | ".join(kinds) + " |",
              "|---|---:|" + "---:|" * len(kinds)]
    for m, a in meth.items():
        kf = a["kept_fraction_by_kind"]
        lines.append(f"| {m} | {a['flops_ratio']:.4f} | "
                     + " | ".join(f"{kf[k]:.3f}" for k in kinds) + " |")
    g = doc["goals"]
    lines += ["", f"goal allocation <= {GOAL_RATIO}x plain: "
              f"{'met' if g['ratio_met'] else 'NOT met'} (median wall ratios "
              f"{', '.join(f'{v:.3f}' for v in g['ratios'])}); peak RSS flat in N: "
              f"{'met' if g['rss_flat_met'] else 'NOT met'} "
              f"({' -> '.join(f'{v:.2f}' for v in g['alloc_rss'])} GB, plain "
              f"{' -> '.join(f'{v:.2f}' for v in g['plain_rss'])} GB)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--images", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hw", default=str(ROOT / "configs" / "vita.yaml"))
    ap.add_argument("--block", default="16x16")
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--curvature", default=None)
    ap.add_argument("--fisher-samples", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "allocator_speed.json"))
    ap.add_argument("--from-json", help="only print the report of a results file")
    ap.add_argument("--worker", choices=("plain", "alloc"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.from_json:
        print(report(json.loads(Path(args.from_json).read_text())))
        return 0
    from lsp_codesign.allocator import CurvatureOptions

    if args.curvature is None:
        args.curvature = CurvatureOptions.resolve().curvature.value
    import torch

    t0 = time.perf_counter()
    per_n = drive(args)
    ratios = [r["ratio_wall"]["median"] for r in per_n.values()]
    alloc_rss = [r["alloc_peak_rss_gb"] for r in per_n.values()]
    plain_rss = [r["plain_peak_rss_gb"] for r in per_n.values()]
    # flat: the allocation's peak grows with N by no more than the plain pass's does, plus 10 %
    rss_flat = (alloc_rss[-1] - alloc_rss[0]) <= max(plain_rss[-1] - plain_rss[0], 0) + \
        0.1 * alloc_rss[0]
    doc = {
        "model": args.model, "weights": f"random (timm init, seed {args.seed})",
        "images": args.images, "batch_size": args.batch_size, "block": args.block,
        "hw": Path(args.hw).name, "flops_target": args.flops, "repeats": args.repeats,
        "threads": args.threads, "options": {"curvature": args.curvature,
                                             "fisher_samples": args.fisher_samples},
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "per_n": per_n, "seconds": time.perf_counter() - t0,
        "goals": {"ratio_max": GOAL_RATIO, "ratios": ratios,
                  "ratio_met": bool(max(ratios) <= GOAL_RATIO), "alloc_rss": alloc_rss,
                  "plain_rss": plain_rss, "rss_flat_met": bool(rss_flat)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(out)
    print(report(doc))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
