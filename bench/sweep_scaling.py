"""Sweep throughput and reuse, and sharded calibration, measured on this machine.

Part 1, ``lsp-codesign sweep`` on the embedded model (``vit-mnist``, ViTA-like config):
3 blocks (8x8, 16x16, 32x32) x 3 FLOPs targets (0.3, 0.5, 0.7) x 4 methods = 36 points with
``--evaluate`` (top-1 and KL on the MNIST test set). Each run is a fresh command in a fresh
SWEEP_DIR, timed from start to exit (process start, imports, worker or Ray start-up included).
By default the points are evaluated on a fixed subset of 2,000 MNIST test images
(``--test-images``, 0 for all 10,000), which keeps the benchmark to a few minutes:

* points per minute with 1 and 2 workers, on the local backend (1 worker: in the command's
  own process; 2: a process pool) and on Ray (a local instance with 1 or 2 CPUs);
* the share of the tasks' compute time spent in calibration: 3 calibrations serve the 36
  points (without the reuse every point would calibrate: the "unshared" share);
* an extended re-run that adds one target (0.9) to the first sweep's directory: it must
  compute only the 12 new points (checked), and costs a fraction of the full sweep;
* all four runs must produce the same table (checked).

The CPU seconds are those of the command's waited-for process tree: on Ray they miss the Ray
worker processes (not reaped as the command's children), so they are the driver's alone.

Part 2, ``allocate --nproc 2`` against one process on DeiT-Small (random weights, 64
synthetic images, 16x16): the calibration pass's wall time (rank 0's, gathering included),
the command's wall time, and the CPU time of the whole process tree. One process is measured
with 2 threads (the default) and with 1 thread (each rank has 1).

Run: ``.venv/bin/python bench/sweep_scaling.py`` (21 minutes on 2 cores shared with other
jobs at a load average of 11-16; ``--test-images 0`` evaluates on all 10,000 images, slower).
``--quick`` runs a small version (a minute or two). Writes
``bench/results/sweep_scaling.json`` (and the first sweep's Pareto plots beside it,
``sweep_scaling_energy_vs_top1.png`` and ``sweep_scaling_latency_vs_energy.png``) and prints
the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sweep_scaling.json"
CONFIG = str(ROOT / "configs" / "vita.yaml")

FULL = {"blocks": "8x8,16x16,32x32", "flops": "0.3,0.5,0.7", "extra_flops": "0.3,0.5,0.7,0.9",
        "methods": "lsp,beta0,uniform,global", "calib": None, "test_images": 2000,
        "deit": "deit_small_patch16_224", "deit_images": 64}
QUICK = {"blocks": "16x16,32x32", "flops": "0.5,0.7", "extra_flops": "0.5,0.7,0.9",
         "methods": "lsp,uniform", "calib": 64, "test_images": 200,
         "deit": "deit_tiny_patch16_224", "deit_images": 8}


def _env(threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; wall seconds and CPU seconds of its whole (waited-for) process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "stdout": res.stdout}


def _sweep(out: Path, grid: dict, flops: str, backend: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "lsp_codesign", "sweep", "--hw", CONFIG, "--blocks",
           grid["blocks"], "--flops", flops, "--methods", grid["methods"], "--evaluate",
           "--out", str(out), "--quiet", "--backend", backend, "--workers", str(workers)]
    if grid["calib"]:
        cmd += ["--calib", str(grid["calib"])]
    if grid["test_images"]:
        cmd += ["--test-images", str(grid["test_images"])]
    t = _timed(cmd, _env())
    doc = json.loads((out / "sweep.json").read_text())
    run = doc["run"]
    n = len(doc["points"])
    task_s = sum(run["task_seconds"].values())
    calib_s = run["task_seconds"]["calibration"]
    per_calib = calib_s / max(1, run["computed"]["calibration"])
    unshared = n * per_calib
    return {"backend": backend, "workers": workers, "points": n,
            "computed": run["computed"], "reused": run["reused"],
            "wall_s": t["wall_s"], "cpu_s": t["cpu_s"], "sweep_wall_s": run["wall_s"],
            "points_per_min": 60.0 * n / t["wall_s"],
            "task_seconds": run["task_seconds"], "calibration_share": calib_s / task_s,
            "calibration_share_unshared": unshared / (task_s - calib_s + unshared),
            "csv": (out / "sweep.csv").read_text(), "summary": doc["summary"]}


def part1(grid: dict, work: Path, plots: Path | None) -> dict:
    runs = []
    for backend, workers in (("local", 1), ("local", 2), ("ray", 1), ("ray", 2)):
        out = work / f"sweep-{backend}-{workers}"
        print(f"sweep: {backend}, {workers} worker(s) ...", flush=True)
        runs.append(_sweep(out, grid, grid["flops"], backend, workers))
        if len(runs) == 1 and plots is not None:  # the README's plots
            for png in sorted((out / "plots").glob("*.png")):
                shutil.copyfile(png, plots.parent / f"{plots.name}_{png.name}")
    same = all(r["csv"] == runs[0]["csv"] for r in runs)
    print("sweep: extended re-run (one more target) ...", flush=True)
    ext = _sweep(work / "sweep-local-1", grid, grid["extra_flops"], "local", 1)
    new = ext["points"] - runs[0]["points"]
    ext_ok = ext["computed"]["point"] == new and ext["computed"]["calibration"] == 0
    for r in runs + [ext]:
        r.pop("csv")
    return {"runs": runs, "tables_identical": same, "extended": ext,
            "extended_new_points": new, "extended_computed_only_new": ext_ok,
            "extended_cost_ratio": ext["wall_s"] / runs[0]["wall_s"]}


def _allocate(model: str, images: int, out: Path, nproc: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "lsp_codesign", "allocate", "--hw", CONFIG, "--model", model,
           "--calib", str(images), "--block", "16x16", "--out", str(out), "--quiet",
           "--overwrite"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t = _timed(cmd, _env(threads))
    doc = json.loads((out / "allocation.json").read_text())
    return {"processes": nproc, "threads_per_process": threads, "wall_s": t["wall_s"],
            "cpu_s": t["cpu_s"], "calibration_s": doc["timings_s"]["calibration_s"]}


def part2(grid: dict, work: Path) -> dict:
    runs = []
    for nproc, threads in ((1, 2), (1, 1), (2, 1)):
        print(f"calibration: {nproc} process(es) x {threads} thread(s) ...", flush=True)
        runs.append(_allocate(grid["deit"], grid["deit_images"], work / "deit", nproc,
                              threads))
    one2, one1, two = runs
    return {"model": grid["deit"], "images": grid["deit_images"], "runs": runs,
            "speedup_calibration_vs_1x2": one2["calibration_s"] / two["calibration_s"],
            "speedup_calibration_vs_1x1": one1["calibration_s"] / two["calibration_s"],
            "speedup_wall_vs_1x2": one2["wall_s"] / two["wall_s"],
            "cpu_ratio_2_vs_1x2": two["cpu_s"] / one2["cpu_s"]}


def _print(res: dict) -> None:
    p1 = res["sweep"]
    print(f"\nsweep of {p1['runs'][0]['points']} points with --evaluate "
          f"(tables identical across runs: {p1['tables_identical']})")
    print(f"{'backend':8} {'workers':>7} {'wall s':>8} {'CPU s':>8} {'points/min':>10} "
          f"{'calib share':>11} {'unshared':>9}")
    for r in p1["runs"]:
        print(f"{r['backend']:8} {r['workers']:>7} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
              f"{r['points_per_min']:>10.1f} {100 * r['calibration_share']:>10.1f}% "
              f"{100 * r['calibration_share_unshared']:>8.1f}%")
    e = p1["extended"]
    print(f"extended re-run (+1 target): {e['computed']['point']} points computed of "
          f"{e['points']} ({p1['extended_new_points']} new; only new: "
          f"{p1['extended_computed_only_new']}), {e['wall_s']:.1f} s = "
          f"{100 * p1['extended_cost_ratio']:.0f}% of the full sweep")
    p2 = res["calibration"]
    print(f"\ncalibration, {p2['model']}, {p2['images']} images")
    print(f"{'processes':>9} {'threads':>7} {'calibration s':>13} {'wall s':>8} {'CPU s':>8}")
    for r in p2["runs"]:
        print(f"{r['processes']:>9} {r['threads_per_process']:>7} {r['calibration_s']:>13.1f} "
              f"{r['wall_s']:>8.1f} {r['cpu_s']:>8.1f}")
    print(f"speedup of the calibration pass, 2 processes vs 1 (2 threads): "
          f"{p2['speedup_calibration_vs_1x2']:.2f}x; vs 1 (1 thread): "
          f"{p2['speedup_calibration_vs_1x1']:.2f}x; whole command: "
          f"{p2['speedup_wall_vs_1x2']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small version (a minute or two)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    ap.add_argument("--test-images", type=int, metavar="N",
                    help="evaluate on N MNIST test images, 0 for all (default 2000; quick 200)")
    args = ap.parse_args(argv)
    grid = dict(QUICK if args.quick else FULL)
    if args.test_images is not None:
        grid["test_images"] = args.test_images or None
    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        res = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(),
                           "load_average_start": os.getloadavg()},
               "quick": args.quick, "grid": grid,
               "sweep": part1(grid, work, None if args.quick else args.out.with_suffix("")),
               "calibration": part2(grid, work)}
        res["machine"]["load_average_end"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
