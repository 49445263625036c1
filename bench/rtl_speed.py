"""RTL simulation speed: simulated clock cycles per second of wall time, Verilator and Icarus.

The workload is the 16x16 engine of ``configs/vita.yaml`` running one long block-sparse layer,
DeiT-Tiny's ``fc1`` (197 tokens x 192 -> 768 features) with exactly half of its 576 blocks
pruned (63 527 cycles on engine v2). For each simulator it measures

* the build: Verilog generation and the simulator's compile, from an empty build directory;
* the run: clock cycles from ``start`` to ``done`` over the wall time they took, with the
  engine running on its own (no Python per cycle);
* the bench's own overhead: loading the layer (writing ``$readmemh`` files, one load edge) and
  reading back the counters and Y (``$writememh``), as a fraction of the run; and the fixed cost
  of one simulator invocation (process start, cocotb start-up, job file), paid once per
  :func:`sim.harness.run_programs` call however many layers it runs; ``end-to-end`` divides all
  cycles of the invocation by its whole wall time (build excluded);

and checks the result bit-exact against numpy and every counter against the cycle model. The
goal is at least 80 000 cycles/s on Verilator with the overhead under a quarter of the run.

Writes ``bench/results/rtl_speed.json`` and prints a table. Run from the repository root::

    nice -n 5 .venv/bin/python bench/rtl_speed.py            # both simulators, ~2 minutes
    nice -n 5 .venv/bin/python bench/rtl_speed.py --sims verilator --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
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

GOAL_CYCLES_PER_S = 80_000
GOAL_OVERHEAD = 0.25
LAYER = {"name": "deit_tiny.blocks.0.mlp.fc1", "m": 197, "n": 192, "k": 768}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "vita.yaml"))
    p.add_argument("--block", default="16x16")
    p.add_argument("--sims", nargs="+", default=["verilator", "icarus"],
                   choices=["verilator", "icarus"])
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of the layer per simulator invocation (median reported)")
    p.add_argument("--icarus-repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "rtl_speed.json"))
    return p.parse_args(argv)


def half_pruned_layer(cfg, seed: int):
    rng = np.random.default_rng(seed)
    m, n, k = LAYER["m"], LAYER["n"], LAYER["k"]
    kb, nb = -(-k // cfg.block_k), -(-n // cfg.block_n)
    flat = np.zeros(kb * nb, dtype=bool)
    flat[rng.choice(kb * nb, kb * nb // 2, replace=False)] = True
    x = rng.integers(-128, 128, (m, n)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    return x, w, flat.reshape(kb, nb)


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "unknown"


def measure(cfg, sim: str, prog, x, w, mask, repeats: int) -> dict:
    from sim.harness import build_simulator, run_programs

    est = estimate_layer(cfg, LAYER["m"], LAYER["n"], LAYER["k"], mask)
    with tempfile.TemporaryDirectory(prefix="lsp-rtl-speed-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        from hw.build import build_verilog

        build_verilog(cfg, build_root=root)
        t1 = time.perf_counter()
        build_simulator(cfg, sim=sim, build_root=root)
        t2 = time.perf_counter()
        results = run_programs(cfg, [prog] * repeats, sim=sim, build_root=root)
        t3 = time.perf_counter()
    ref = reference_gemm(x, w, mask, cfg.block_k, cfg.block_n)
    ok_y = all(np.array_equal(read_y(cfg, prog, r.y_words), ref) for r in results)
    ok_c = all(r.counters == {c: est.counters[c] for c in COUNTERS} for r in results)
    runs = []
    for r in results:
        runs.append({"cycles": r.sim_cycles, "run_s": r.wall_s, "load_s": r.load_s,
                     "read_s": r.read_s, "cycles_per_s": r.sim_cycles / r.wall_s,
                     "overhead": (r.load_s + r.read_s) / r.wall_s})
    per_program = sum(r.wall_s + r.load_s + r.read_s for r in results)
    med = statistics.median(run["cycles_per_s"] for run in runs)
    return {
        "sim": sim,
        "generate_s": t1 - t0,
        "compile_s": t2 - t1,
        "invocation_s": t3 - t2,
        "fixed_s": (t3 - t2) - per_program,
        "runs": runs,
        "cycles": runs[0]["cycles"],
        "cycles_per_s": med,
        # everything of one invocation (start-up, loads, runs, read-backs), build excluded
        "end_to_end_cycles_per_s": sum(run["cycles"] for run in runs) / (t3 - t2),
        "overhead": statistics.median(run["overhead"] for run in runs),
        "y_bit_exact": ok_y,
        "counters_match_model": ok_c,
        "model_cycles": est.cycles,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, block=args.block)
    x, w, mask = half_pruned_layer(cfg, args.seed)
    prog = compile_layer(cfg, x, w, mask, name=LAYER["name"])
    rows = []
    for sim in args.sims:
        repeats = args.repeats if sim == "verilator" else args.icarus_repeats
        print(f"[rtl_speed] {sim}: build from scratch, then {repeats} run(s) of "
              f"{LAYER['name']} ...", file=sys.stderr, flush=True)
        rows.append(measure(cfg, sim, prog, x, w, mask, repeats))
    verilator = next((r for r in rows if r["sim"] == "verilator"), None)
    goals = None
    if verilator is not None:
        goals = {
            "cycles_per_s_min": GOAL_CYCLES_PER_S,
            "overhead_max": GOAL_OVERHEAD,
            "cycles_per_s_met": verilator["cycles_per_s"] >= GOAL_CYCLES_PER_S,
            "overhead_met": verilator["overhead"] < GOAL_OVERHEAD,
        }
    report = {
        "what": "simulated clock cycles per wall-clock second, 16x16 block-sparse engine",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "verilator": tool_version(["verilator", "--version"]),
                    "iverilog": tool_version(["iverilog", "-V"])},
        "config": {"file": os.path.relpath(args.config, ROOT), "block": cfg.block_str,
                   "tile_m": cfg.tile_m, "hash": cfg.config_hash()},
        "layer": {**LAYER, "kept_blocks": int(mask.sum()), "total_blocks": int(mask.size),
                  "seed": args.seed},
        "results": rows,
        "goals": goals,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)

    print(f"\n{LAYER['name']} {LAYER['m']}x{LAYER['n']}->{LAYER['k']}, block {cfg.block_str}, "
          f"{int(mask.sum())}/{mask.size} blocks kept, {rows[0]['cycles']} cycles "
          f"(model {rows[0]['model_cycles']})\n")
    head = ("simulator", "cycles/s", "run s", "load+read s", "overhead", "end-to-end c/s",
            "fixed s", "generate s", "compile s", "bit-exact", "counters")
    lines = []
    for r in rows:
        lr = statistics.median(run["load_s"] + run["read_s"] for run in r["runs"])
        lines.append((r["sim"], f"{r['cycles_per_s']:,.0f}",
                       f"{statistics.median(run['run_s'] for run in r['runs']):.2f}",
                       f"{lr:.3f}", f"{100 * r['overhead']:.1f}%",
                       f"{r['end_to_end_cycles_per_s']:,.0f}", f"{r['fixed_s']:.2f}",
                       f"{r['generate_s']:.1f}", f"{r['compile_s']:.1f}",
                       "yes" if r["y_bit_exact"] else "NO",
                       "yes" if r["counters_match_model"] else "NO"))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(wd) for h, wd in zip(head, widths)))
    print("  ".join("-" * wd for wd in widths))
    for line in lines:
        print("  ".join(c.ljust(wd) for c, wd in zip(line, widths)))
    if goals:
        print(f"\ngoal >= {GOAL_CYCLES_PER_S:,} cycles/s on Verilator: "
              f"{'met' if goals['cycles_per_s_met'] else 'NOT met'}; bench overhead < "
              f"{GOAL_OVERHEAD:.0%} of the run: {'met' if goals['overhead_met'] else 'NOT met'}")
    print(f"wrote {os.path.relpath(out, ROOT)}")
    ok = all(r["y_bit_exact"] and r["counters_match_model"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
