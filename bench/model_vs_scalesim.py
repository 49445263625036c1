"""Benchmark: our systolic cycle model against SCALE-Sim v3.0.0 on dense DeiT GEMMs.

SCALE-Sim needs ``numpy<2.4``, so it gets its own virtual environment (``build/scalesim-venv``,
created on first use). For every case the real SCALE-Sim runs in that environment and reports
its "Total Cycles" (compute cycles, prefetch excluded) and the wall time of its simulation; our
model (``lsp_codesign.cycle_model.estimate_layer`` with a systolic config) predicts the cycles,
and is timed over many repetitions. Goal: identical cycles on every row and a speed ratio of at
least 10^4.

    python bench/model_vs_scalesim.py                      # table + bench/results/*.json
    python bench/model_vs_scalesim.py --record tests/data/scalesim_v3_cycles.json

``--record`` stores the SCALE-Sim figures that ``tests/test_cycle_model.py`` checks against.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsp_codesign.config import load_config  # noqa: E402
from lsp_codesign.cycle_model import estimate_layer  # noqa: E402

VENV = ROOT / "build" / "scalesim-venv"
WORK = ROOT / "build" / "scalesim-run"

# (label, M tokens, N input features, K output features)
GEMMS = [
    ("deit_tiny.qkv", 197, 192, 576),
    ("deit_tiny.fc1", 197, 192, 768),
    ("deit_small.qkv", 197, 384, 1152),
    ("deit_small.fc1", 197, 384, 1536),
]
CASES = [(g, a, df) for g in GEMMS[:2] for a in (16, 32, 128) for df in ("os", "ws")] + \
        [(g, a, df) for g in GEMMS[2:] for a in (32, 128) for df in ("os", "ws")]

DRIVER = r'''
import glob, json, os, sys, time, contextlib, io
from scalesim.scale_sim import scalesim
cases = json.load(open(sys.argv[1]))
out = []
for c in cases:
    d = os.path.join(sys.argv[2], c["id"])
    os.makedirs(d, exist_ok=True)
    cfg = f"""[general]
run_name = run
[architecture_presets]
ArrayHeight: {c["rows"]}
ArrayWidth: {c["cols"]}
IfmapSramSzkB: 6144
FilterSramSzkB: 6144
OfmapSramSzkB: 2048
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Dataflow: {c["dataflow"]}
Bandwidth: 10
MemoryBanks: 1
ReadRequestBuffer: 32
WriteRequestBuffer: 32
[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2
[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40
[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""
    open(os.path.join(d, "scale.cfg"), "w").write(cfg)
    # SCALE-Sim's GEMM topology is "M, N, K" with its N = our K (outputs), its K = our N
    open(os.path.join(d, "topo.csv"), "w").write(
        f"Layer, M, N, K,\nl0, {c['m']}, {c['k']}, {c['n']},\n")
    open(os.path.join(d, "layout.csv"), "w").write(
        "Layer, a, b, c, d, e, f, g,\nl0, 1, 1, 1, 1, 1, 1, 1,\n")
    s = scalesim(save_disk_space=True, verbose=False, config=os.path.join(d, "scale.cfg"),
                 topology=os.path.join(d, "topo.csv"), layout=os.path.join(d, "layout.csv"),
                 input_type_gemm=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        s.run_scale(top_path=os.path.join(d, "out"))
    wall = time.perf_counter() - t0
    rep = glob.glob(os.path.join(d, "out", "**", "COMPUTE_REPORT.csv"), recursive=True)[0]
    row = open(rep).read().splitlines()[1].split(",")
    out.append({"id": c["id"], "total_cycles": int(row[2]), "stall_cycles": int(row[3]),
                "wall_s": wall})
    print(json.dumps(out[-1]), file=sys.stderr, flush=True)
json.dump(out, open(sys.argv[3], "w"), indent=1)
'''


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if py.exists():
        ok = subprocess.run([str(py), "-c", "import scalesim"], capture_output=True)
        if ok.returncode == 0:
            return py
    print(f"creating {VENV} with scalesim==3.0.0 (needs numpy<2.4)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy<2.4", "scalesim==3.0.0"],
                   check=True)
    return py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path, help="write the SCALE-Sim figures as a test fixture")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                    "model_vs_scalesim.json")
    ap.add_argument("--repeat", type=int, default=2000, help="model timing repetitions")
    args = ap.parse_args()

    py = ensure_venv()
    base = load_config(ROOT / "configs" / "tpu_v3.yaml")
    cases = []
    for (label, m, n, k), a, df in CASES:
        cases.append({"id": f"{label}.{a}x{a}.{df}", "label": label, "m": m, "n": n, "k": k,
                      "rows": a, "cols": a, "dataflow": df})
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "cases.json").write_text(json.dumps(cases))
    (WORK / "driver.py").write_text(DRIVER)
    print(f"running SCALE-Sim v3.0.0 on {len(cases)} dense GEMMs (a few seconds each)...",
          flush=True)
    subprocess.run([str(py), str(WORK / "driver.py"), str(WORK / "cases.json"), str(WORK),
                    str(WORK / "scalesim.json")], check=True, env={**os.environ,
                                                                    "PYTHONWARNINGS": "ignore"})
    ss = {r["id"]: r for r in json.loads((WORK / "scalesim.json").read_text())}

    rows = []
    for c in cases:
        cfg = base.with_overrides(array=f"{c['rows']}x{c['cols']}", dataflow=c["dataflow"],
                                  block="16x16")
        est = estimate_layer(cfg, c["m"], c["n"], c["k"])
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            estimate_layer(cfg, c["m"], c["n"], c["k"])
        model_s = (time.perf_counter() - t0) / args.repeat
        s = ss[c["id"]]
        rows.append({**c, "model_cycles": est.cycles, "scalesim_cycles": s["total_cycles"],
                     "match": est.cycles == s["total_cycles"], "scalesim_s": s["wall_s"],
                     "model_s": model_s, "speed_ratio": s["wall_s"] / model_s})

    hdr = f"{'GEMM (M x N -> K)':<32}{'array':>9}{'df':>4}{'ours':>9}{'SCALE-Sim':>11}" \
          f"{'match':>7}{'SCALE-Sim s':>13}{'ours us':>9}{'ratio':>10}"
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        gemm = f"{r['label']} ({r['m']}x{r['n']}->{r['k']})"
        array = f"{r['rows']}x{r['cols']}"
        print(f"{gemm:<32}{array:>9}{r['dataflow']:>4}{r['model_cycles']:>9}"
              f"{r['scalesim_cycles']:>11}{'yes' if r['match'] else 'NO':>7}"
              f"{r['scalesim_s']:>13.2f}{r['model_s'] * 1e6:>9.1f}{r['speed_ratio']:>10.2e}")
    all_match = all(r["match"] for r in rows)
    min_ratio = min(r["speed_ratio"] for r in rows)
    print(f"\nidentical cycles on {sum(r['match'] for r in rows)}/{len(rows)} rows; "
          f"speed ratio min {min_ratio:.2e}, median "
          f"{sorted(r['speed_ratio'] for r in rows)[len(rows) // 2]:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"scalesim_version": "3.0.0", "rows": rows,
                                    "all_match": all_match, "min_speed_ratio": min_ratio},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")
    if args.record:
        rec = {"source": "SCALE-Sim v3.0.0 (pip scalesim==3.0.0), Total Cycles of "
                         "COMPUTE_REPORT.csv; GEMM topology 'M, N, K' = our M, K, N",
               "reproduce": "python bench/model_vs_scalesim.py --record "
                            "tests/data/scalesim_v3_cycles.json",
               "cases": [{k: r[k] for k in ("id", "m", "n", "k", "rows", "cols", "dataflow",
                                            "scalesim_cycles")} for r in rows]}
        args.record.write_text(json.dumps(rec, indent=1) + "\n")
        print(f"recorded {args.record}")
    return 0 if all_match and min_ratio >= 1e4 else 1


if __name__ == "__main__":
    sys.exit(main())
