"""Dense against block-sparse (BSR) matmul on this CPU, for a pruned DeiT-Small.

The masks are LSP allocations of DeiT-Small (timm's random weights, 8 seeded synthetic
calibration images, the ViTA-like config's power term) at FLOPs targets R = 0.5 and 0.3, for
16x16 and 32x32 blocks. The weights are masked exactly as ``lsp-codesign export --format bsr``
stores them (:func:`lsp_codesign.export.bsr_layers`), and every prunable linear layer (48 in the
blocks, plus the head) is timed on its own input shape (197 tokens per image), three ways:

* ``dense``: ``F.linear(x, W)`` with the masked dense weight (what an unpruned kernel does);
* ``BSR F.linear``: ``F.linear(x, W_bsr)``, the drop-in call;
* ``BSR W@xT``: ``W_bsr @ x.T`` (x transposed to a contiguous copy, the result used as a
  transposed view), the orientation torch's CPU kernel handles best.

Each time is the median of ``--repeats`` calls after a warm-up, summed over the layers; the
outputs are checked against the dense product. This is the baseline a future sparse kernel has
to beat: the table says plainly when BSR is slower than dense. Writes
``bench/results/cpu_inference.json`` (and ``.md``) and prints the table::

    nice -n 5 .venv/bin/python bench/cpu_inference.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lsp_codesign.table import format_markdown, format_table  # noqa: E402

MODEL = "deit_small_patch16_224"


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def time_layers(layers: dict, model, batch: int, repeats: int) -> dict:
    """Summed median milliseconds of the three ways over every layer, and the worst error."""
    import torch
    import torch.nn.functional as F

    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    gen = torch.Generator().manual_seed(0)
    total = {"dense": 0.0, "bsr_linear": 0.0, "bsr_wxt": 0.0}
    worst = 0.0
    for name, layer in layers.items():
        w_bsr = layer["weight"]
        n_pad = w_bsr.shape[1]
        m = batch * (1 if name.startswith("head") else tokens)
        x = torch.randn(m, n_pad, generator=gen)
        w = w_bsr.to_dense()
        y = F.linear(x, w)
        for key, fn in (("dense", lambda: F.linear(x, w)),
                        ("bsr_linear", lambda: F.linear(x, w_bsr)),
                        ("bsr_wxt", lambda: (w_bsr @ x.T.contiguous()).T)):
            total[key] += _median_ms(fn, repeats)
            worst = max(worst, float((fn() - y).abs().max() / (y.abs().max() + 1e-12)))
    return {**{f"{k}_ms": v for k, v in total.items()}, "max_rel_err": worst}


def allocations(blocks: list[str], targets: list[float], calib_n: int, seed: int):
    """``{(block, R): (masks, flops_ratio)}`` from one calibration pass per block."""
    from lsp_codesign.allocator import allocate_from_calibration, calibrate
    from lsp_codesign.config import load_config
    from models.data import calibration_loader
    from models.registry import create_model

    model = create_model(MODEL)
    out = {}
    for block in blocks:
        cfg = load_config("vita", block=block)
        loader = calibration_loader(MODEL, calib_n, seed, batch_size=calib_n)
        calib = calibrate(model, loader, block_k=cfg.block_k, block_n=cfg.block_n,
                          progress=True, total=calib_n, model_name=MODEL)
        for r in targets:
            alloc = allocate_from_calibration(calib, cfg, flops_target=r)
            out[(block, r)] = (alloc.masks, alloc.flops_ratio)
    return model, out


def run(args: argparse.Namespace) -> dict:
    import torch

    from lsp_codesign.export import bsr_layers

    torch.manual_seed(args.seed)
    model, allocs = allocations(args.blocks, args.targets, args.calib, args.seed)
    rows = []
    for (block, r), (masks, flops_ratio) in allocs.items():
        layers = bsr_layers(model, masks)
        for threads in args.threads:
            torch.set_num_threads(threads)
            with torch.no_grad():
                t = time_layers(layers, model, args.batch, args.repeats)
            rows.append({"block": block, "flops_target": r, "flops_kept": flops_ratio,
                         "blocks_kept": masks.kept_blocks / masks.total_blocks,
                         "threads": threads, "batch": args.batch, **t,
                         "bsr_speedup": t["dense_ms"] / t["bsr_wxt_ms"],
                         "bsr_linear_speedup": t["dense_ms"] / t["bsr_linear_ms"]})
            print(f"{block} R={r} threads={threads}: dense {t['dense_ms']:.1f} ms, BSR "
                  f"{t['bsr_wxt_ms']:.1f} ms (W@xT), {t['bsr_linear_ms']:.1f} ms (F.linear)",
                  flush=True)
    return {"model": MODEL, "rows": rows}


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        verdict = "faster" if r["bsr_speedup"] > 1 else "SLOWER"
        out.append([r["block"], f"{r['flops_target']:.1f}", f"{100 * r['blocks_kept']:.1f}%",
                    str(r["threads"]), f"{r['dense_ms']:.1f}", f"{r['bsr_wxt_ms']:.1f}",
                    f"{r['bsr_linear_ms']:.1f}", f"{r['bsr_speedup']:.2f}x",
                    f"{1 / r['blocks_kept']:.2f}x", f"BSR {verdict}"])
    return out


HEADER = ["block", "R", "blocks kept", "threads", "dense ms", "BSR W@xT ms", "BSR F.linear ms",
          "BSR speedup", "ideal", "verdict"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", nargs="+", default=["16x16", "32x32"])
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.3])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch", type=int, default=1, help="images per matmul (197 tokens each)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calib", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu_inference.json")
    args = p.parse_args(argv)
    import torch

    t0 = time.perf_counter()
    doc = run(args)
    body = table_rows(doc["rows"])
    print("\n" + format_table(HEADER, body, left=1))
    doc.update({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in
                         vars(args).items()},
                "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or
                            platform.machine(), "torch": torch.__version__,
                            "mkl": torch.backends.mkl.is_available(),
                            "load_average": list(os.getloadavg())},
                "wall_s": time.perf_counter() - t0})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(format_markdown(HEADER, body) + "\n")
    print(f"wrote {args.out} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
