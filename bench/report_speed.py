"""Speed of ``lsp-codesign report --model NAME``: cold (no shape cache) against warm.

Each measurement is one whole command in a fresh process, as a user types it:

* ``cold``: an empty shape cache (``LSP_CACHE_DIR`` set to a new folder), so the command
  imports torch and timm and builds the model on the ``meta`` device to read its layer shapes;
* ``warm``: the same command again; the shapes come from the cache and neither torch nor timm
  is imported.

The goal is ``report --model deit_base_patch16_224`` under 1.5 s warm. Writes
``bench/results/report_speed.json`` and prints a table. Run from the repository root::

    nice -n 5 .venv/bin/python bench/report_speed.py
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

from lsp_codesign.table import format_table  # noqa: E402

GOAL_WARM_S = 1.5


def _once(model: str, cache: Path) -> float:
    env = dict(os.environ, LSP_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "lsp_codesign.cli", "report", "--model", model, "--hw", "vita"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t0


def measure(model: str, repeats: int) -> dict:
    """Cold and warm wall times of ``repeats`` commands each (a new cache per cold run)."""
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="lsp-report-cache-") as tmp:
            cold.append(_once(model, Path(tmp)))
            warm.append(_once(model, Path(tmp)))
    return {"model": model, "cold_s": cold, "warm_s": warm,
            "cold_median_s": statistics.median(cold), "warm_median_s": statistics.median(warm)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+",
                   default=["deit_base_patch16_224", "deit_small_patch16_224", "vit-mnist"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "report_speed.json")
    args = p.parse_args(argv)
    rows = [measure(m, args.repeats) for m in args.models]
    base = next((r for r in rows if r["model"] == "deit_base_patch16_224"), None)
    met = None if base is None else base["warm_median_s"] < GOAL_WARM_S
    table = format_table(
        ["model", "cold s (median)", "warm s (median)", "warm range s", "cold / warm"],
        [[r["model"], f"{r['cold_median_s']:.2f}", f"{r['warm_median_s']:.2f}",
          f"{min(r['warm_s']):.2f}-{max(r['warm_s']):.2f}",
          f"{r['cold_median_s'] / r['warm_median_s']:.1f}x"] for r in rows])
    print(table)
    if base is not None:
        print(f"\ngoal: report --model deit_base_patch16_224 under {GOAL_WARM_S} s warm: "
              f"{'met' if met else 'NOT met'} ({base['warm_median_s']:.2f} s)")
    doc = {"goal_warm_s": GOAL_WARM_S, "goal_met": met, "repeats": args.repeats,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_average": list(os.getloadavg())},
           "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
