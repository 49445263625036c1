"""Dense utilisation of the engine on DeiT-Small ``fc1``, five block shapes, model and RTL.

DeiT-Small's ``fc1`` (197 tokens x 384 -> 1536 features, dense) runs on ``configs/vita.yaml``
with the block overridden to 8x8, 16x16, 16x32, 32x16 and 32x32 (BM = 16, so 32-row blocks
have BK > BM). The layer is 0.6 MB of weights against 128 KiB weight banks: every shape runs
tiled, with DRAM traffic overlapped by compute. For each shape the bench prints

* utilisation: useful MACs (197 real tokens) over ``cycles x BK x BN``; padding 197 tokens to
  13 tiles of 16 caps it at 197/208 = 94.7%;
* cycles, tiles, DMA stall cycles and whether the layer is memory-bound (model);
* with ``--sim verilator`` (default): the RTL run's cycles, bit-exact Y and every counter against
  the model, and the wall time of the run.

The goal is utilisation >= 85% for every shape. Writes ``bench/results/utilisation.json``::

    nice -n 5 .venv/bin/python bench/utilisation.py                 # ~5 minutes (5 builds)
    nice -n 5 .venv/bin/python bench/utilisation.py --sim none      # model only, a second
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
os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")

import numpy as np  # noqa: E402

from lsp_codesign.compiler import compile_layer, read_y, reference_gemm  # noqa: E402
from lsp_codesign.config import load_config  # noqa: E402
from lsp_codesign.cycle_model import estimate_layer  # noqa: E402
from lsp_codesign.isa import COUNTERS  # noqa: E402
from lsp_codesign.table import format_table  # noqa: E402

GOAL = 0.85
BLOCKS = ("8x8", "16x16", "16x32", "32x16", "32x32")
M, N, K = 197, 384, 1536


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "vita.yaml"))
    p.add_argument("--blocks", default=",".join(BLOCKS))
    p.add_argument("--sim", default="verilator", choices=["verilator", "icarus", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "utilisation.json"))
    return p.parse_args(argv)


def measure(cfg, sim: str, seed: int) -> dict:
    est = estimate_layer(cfg, M, N, K)
    row = {"block": cfg.block_str, "utilisation": est.utilization, "cycles": est.cycles,
           "tiles": est.counters["tiles"], "dma_stall": est.counters["dma_stall"],
           "memory_bound": est.memory_bound, "dram_bytes": est.dram_bytes}
    if sim == "none":
        return row
    from sim.harness import run_programs

    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (M, N)).astype(np.int8)
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    prog = compile_layer(cfg, x, w, None, name=f"deit_small.fc1 {cfg.block_str}")
    t0 = time.perf_counter()
    res = run_programs(cfg, [prog], sim=sim)[0]
    wall = time.perf_counter() - t0
    y_ok = bool(np.array_equal(read_y(cfg, prog, list(res.y_words)),
                               reference_gemm(x, w, None, cfg.block_k, cfg.block_n)))
    diffs = [c for c in COUNTERS if int(res.counters[c]) != int(est.counters[c])]
    row.update(rtl_cycles=int(res.counters["cycles"]), y_bit_exact=y_ok,
               counters_equal=not diffs, counter_diffs=diffs, rtl_error=bool(res.error),
               wall_s_with_build=wall, run_s=res.wall_s)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for block in args.blocks.split(","):
        cfg = load_config(args.config, block=block)
        print(f"[utilisation] {block} ...", file=sys.stderr, flush=True)
        rows.append(measure(cfg, args.sim, args.seed))
    head = ["block", "utilisation", "model cycles", "tiles", "DMA stall", "bound"]
    if args.sim != "none":
        head += ["RTL cycles", "Y", "counters"]
    body = []
    for r in rows:
        line = [r["block"], f"{100 * r['utilisation']:.1f}%", f"{r['cycles']:,}",
                str(r["tiles"]), f"{r['dma_stall']:,}",
                "memory" if r["memory_bound"] else "compute"]
        if args.sim != "none":
            line += [f"{r['rtl_cycles']:,}", "bit-exact" if r["y_bit_exact"] else "MISMATCH",
                     "equal" if r["counters_equal"] else "MISMATCH"]
        body.append(line)
    print(f"DeiT-Small fc1 {M}x{N}->{K}, dense, {Path(args.config).name}, sim {args.sim}")
    print(format_table(head, body, left=1))
    met = all(r["utilisation"] >= GOAL for r in rows)
    ok = all(r.get("y_bit_exact", True) and r.get("counters_equal", True) for r in rows)
    print(f"goal: utilisation >= {100 * GOAL:.0f}% for every shape: "
          f"{'met' if met else 'NOT met'}; RTL == model: {'yes' if ok else 'NO'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "layer": {"m": M, "n": N, "k": K},
                               "goal": GOAL, "goal_met": met, "rtl_matches_model": ok,
                               "rows": rows}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
