"""The paper's hardware tables (Tables 5-7), regenerated with our engines.

For each model (DeiT-Tiny/Small/Base shapes with timm's random weights and synthetic calibration
images, and the embedded MNIST model with its real weights and MNIST images), one calibration
pass per block size feeds the LSP allocator at several FLOPs targets (the allocation's power
term uses the ViTA-like config). Each pruned model is then priced by the cycle/energy model on

* the ViTA-like block-sparse engine (``configs/vita.yaml``, block = the pruning block), and
* the TPU-like 128x128 weight-stationary systolic array (``configs/tpu_v3.yaml``), where a
  weight tile is skipped only when every pruning block inside it is pruned.

Speedup and energy are over the prunable linear layers (what the engines run); "FLOPs kept" is
the allocator's whole-model ratio (attention products and patch embedding included, never
pruned). The cycle figures of the ViTA-like engine are the ones ``lsp-codesign verify`` checks
cycle-exact against the RTL.

    python bench/hardware_tables.py [--models vit-mnist,deit_tiny_patch16_224,...]
                                    [--blocks 16x16,32x32] [--targets 0.5,0.3] [--calib 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


from lsp_codesign.config import load_config  # noqa: E402
from lsp_codesign.report import build_report  # noqa: E402

MODELS = ["vit-mnist", "deit_tiny_patch16_224", "deit_small_patch16_224",
          "deit_base_patch16_224"]
LABEL = {"vit-mnist": "ViT-MNIST (embedded)", "deit_tiny_patch16_224": "DeiT-Tiny",
         "deit_small_patch16_224": "DeiT-Small", "deit_base_patch16_224": "DeiT-Base"}


def price(cfg, alloc_masks, model_name):
    ms = alloc_masks
    gemms = [(n, *ms.gemms[n]) for n in ms.order]
    return build_report(cfg, model_name, gemms, ms.masks)


def row(model, block, flops_kept, rep):
    t = rep.totals
    return {
        "model": model, "block": block, "flops_kept": flops_kept,
        "blocks_kept": t["kept_blocks"] / t["total_blocks"],
        "cycles_dense": t["cycles_dense"], "cycles": t["cycles_pruned"],
        "time_ms_dense": t["time_us_dense"] / 1e3, "time_ms": t["time_us_pruned"] / 1e3,
        "speedup": t["speedup"],
        "energy_uj_dense": t["energy_uj_dense"], "energy_uj": t["energy_uj_pruned"],
        "power_mw_dense": t["power_mw_dense"], "power_mw": t["power_mw_pruned"],
        "ideal_speedup": t["linear_macs_dense"] / max(t["linear_macs_pruned"], 1),
    }


def markdown(rows, engine):
    out = ["| model | FLOPs kept | block | blocks kept | time (ms) | speedup | ideal | "
           "energy (uJ) | power (mW) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    last = None
    for r in rows:
        if r["model"] != last:
            out.append(f"| {LABEL[r['model']]} | 100% | - | 100% | {r['time_ms_dense']:.3f} | - "
                       f"| - | {r['energy_uj_dense']:.1f} | {r['power_mw_dense']:.0f} |")
            last = r["model"]
        out.append(f"| | {100 * r['flops_kept']:.1f}% | {r['block']} | "
                   f"{100 * r['blocks_kept']:.1f}% | {r['time_ms']:.3f} | "
                   f"{r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['energy_uj']:.1f} | "
                   f"{r['power_mw']:.0f} |")
    return f"**{engine}**\n\n" + "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--blocks", default="16x16,32x32")
    ap.add_argument("--targets", default="0.5,0.3")
    ap.add_argument("--calib", type=int, default=8, help="calibration images per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                    "hardware_tables.json")
    args = ap.parse_args()

    import torch

    from lsp_codesign.allocator import allocate_from_calibration, calibrate
    from models.data import calibration_loader
    from models.registry import create_model

    torch.manual_seed(args.seed)
    vita0 = load_config(ROOT / "configs" / "vita.yaml")
    tpu0 = load_config(ROOT / "configs" / "tpu_v3.yaml")
    targets = [float(t) for t in args.targets.split(",")]
    rows = {"vita": [], "tpu_v3": []}
    t_start = time.perf_counter()
    for name in args.models.split(","):
        model = create_model(name)
        for block in args.blocks.split(","):
            vita = vita0.with_overrides(block=block)
            tpu = tpu0.with_overrides(block=block)
            loader = calibration_loader(name, args.calib, args.seed, batch_size=args.calib)
            t0 = time.perf_counter()
            calib = calibrate(model, loader, block_k=vita.block_k, block_n=vita.block_n,
                              progress=True, total=args.calib, model_name=name)
            print(f"{name} {block}: calibration {time.perf_counter() - t0:.1f} s", flush=True)
            for r in targets:
                alloc = allocate_from_calibration(calib, vita, flops_target=r)
                for key, cfg in (("vita", vita), ("tpu_v3", tpu)):
                    rows[key].append(row(name, block, alloc.flops_ratio,
                                         price(cfg, alloc.masks, name)))
                v, t = rows["vita"][-1], rows["tpu_v3"][-1]
                print(f"  R={r:.2f}: FLOPs kept {100 * alloc.flops_ratio:.1f}%, "
                      f"ViTA {v['speedup']:.2f}x, TPU {t['speedup']:.2f}x", flush=True)
        del model
    md = ("### ViTA-like block-sparse engine (configs/vita.yaml, block = pruning block)\n\n"
          + markdown(rows["vita"], "vita, 500 MHz") +
          "\n### TPU-like 128x128 systolic array (configs/tpu_v3.yaml, weight-stationary)\n\n"
          + markdown(rows["tpu_v3"], "tpu_v3, 940 MHz"))
    print("\n" + md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows,
                                    "wall_s": time.perf_counter() - t_start}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
