"""``make sim BLOCK=16x16 [SIM=icarus|verilator]``: run the RTL benches and print a summary.

Generates the Verilog of the ``vita`` preset with the block overridden, runs every reference
case of :mod:`sim.cases` in one simulator invocation, checks each against numpy (bit-exact) and
the cycle/energy model (every counter), prints one table row per case and exits with status 1
on any mismatch (2 on bad input such as a malformed ``BLOCK``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lsp_codesign.config import load_config
from lsp_codesign.errors import LspError

from .cases import check_error, check_layer, error_cases, format_table, layer_cases

DEFAULT_CONFIG = "vita"


def run(config: str | Path, block: str | None, sim: str, *, seed: int = 0,
        build_root: Path | None = None, progress: bool = True,
        waves: bool = False) -> tuple[list, dict]:
    """Run all cases; return the table rows and a JSON-ready summary (with ``waves``, the
    waveform file of the whole run is ``summary["waves"]``)."""
    from .harness import build_simulator, check_simulator, run_programs, waves_path

    cfg = load_config(config, block=block)
    check_simulator(sim)
    layers = layer_cases(cfg, seed=seed)
    errors = error_cases(cfg, seed=seed)
    progs = [c.program(cfg) for c in layers]
    build = build_simulator(cfg, sim=sim, build_root=build_root, progress=progress, waves=waves)
    wave_file = waves_path(cfg, "make_sim", sim, build_root) if waves else None
    t0 = time.perf_counter()
    results = run_programs(cfg, progs + [e.program for e in errors], sim=sim,
                           build_root=build_root, progress=progress, read_regs=True,
                           clear=[False] * len(progs) + [True] * len(errors),
                           waves=wave_file)
    wall = time.perf_counter() - t0
    rows = [check_layer(cfg, c, p, r) for c, p, r in zip(layers, progs, results)]
    by_name = {row.name: row for row in rows}
    for case, row in zip(layers, rows):
        twin = by_name.get(f"{case.name}/dense")
        if case.mask.all():
            row.speedup = 1.0
        elif twin is not None and row.rtl_cycles:
            row.speedup = twin.rtl_cycles / row.rtl_cycles
    rows += [check_error(cfg, e, r) for e, r in zip(errors, results[len(progs):])]
    summary = {
        "config": str(config), "block": cfg.block_str, "tile_m": cfg.tile_m, "sim": sim,
        "config_hash": cfg.config_hash(), "wall_s": wall, "build_s": build.seconds,
        "build_reused": build.reused, "build_dir": str(build.hw.directory),
        "waves": None if wave_file is None else str(wave_file),
        "sim_cycles": sum(r.sim_cycles for r in results),
        "cases": [{"name": r.name, "shape": r.shape, "kept": r.kept,
                   "rtl_cycles": r.rtl_cycles, "model_cycles": r.model_cycles,
                   "energy_nj": r.energy_nj, "speedup": r.speedup, "ok": r.ok,
                   "problems": r.problems} for r in rows],
    }
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make sim", description=__doc__.splitlines()[0])
    ap.add_argument("--block", required=True, help="block size BKxBN, e.g. 16x16 or 16x32")
    ap.add_argument("--sim", default="icarus", help="icarus or verilator (default icarus)")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="hardware config YAML")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random cases")
    ap.add_argument("--build-root", default=None, help="parent of build/<config-hash>/")
    ap.add_argument("--json", default=None, help="also write the summary to this JSON file")
    ap.add_argument("--waves", choices=("0", "1"), default="0",
                    help="1: record a waveform of the run (FST on Icarus, VCD on Verilator) in "
                         "build/<config-hash>/waves/ and print its path")
    args = ap.parse_args(argv)
    try:
        rows, summary = run(args.config, args.block, args.sim, seed=args.seed,
                            build_root=Path(args.build_root) if args.build_root else None,
                            waves=args.waves == "1")
    except LspError as exc:
        print(f"make sim: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print()
    print(f"RTL vs numpy and the cycle/energy model: block {summary['block']}, tile_m "
          f"{summary['tile_m']}, {args.sim}, config {summary['config_hash']}")
    print(format_table(rows))
    bad = [r for r in rows if not r.ok]
    built = "reused" if summary["build_reused"] else f"built in {summary['build_s']:.1f} s"
    print(f"\n{len(rows) - len(bad)}/{len(rows)} cases ok, {summary['sim_cycles']} cycles "
          f"simulated in {summary['wall_s']:.1f} s; Verilog and {args.sim} model {built} "
          f"({summary['build_dir']})")
    if summary["waves"]:
        print(f"waves: {summary['waves']} (open with gtkwave or surfer; docs/rtl.md)")
    for r in bad:
        for p in r.problems:
            print(f"MISMATCH {r.name}: {p}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
