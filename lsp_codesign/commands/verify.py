"""``lsp-codesign verify``: a run's masks through the RTL, bit-exact and cycle-exact."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 60


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="run a run directory's pruned layers on the RTL and check them",
        description="For every pruned linear layer of the run's model (or N sampled ones): "
                    "quantise its weights and real input activations to int8, compile the "
                    "kept blocks and the index to a program, run it on the RTL simulator (the "
                    "dense layer too), and check the int32 outputs bit-exact against numpy and "
                    "every hardware counter against the cycle/energy model of the run's "
                    "hw.yaml. Writes RUN_DIR/verify.json; exits 1 on any mismatch.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--sim", choices=("verilator", "icarus", "iss"), default="verilator",
                   help="HDL simulator (iss: the plain-Python reference, no RTL)")
    p.add_argument("--layers", default="all", metavar="all|N",
                   help="all layers, or N sampled ones (seeded by the run's seed)")
    p.add_argument("--no-dense", action="store_true",
                   help="skip the dense runs (no measured speedup)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..rundir import write_json
    from ..verify import VerifyMismatch, verify_run

    res = verify_run(args.run_dir, sim=args.sim, layers=args.layers, dense=not args.no_dense,
                     progress=True)
    write_json(Path(args.run_dir) / "verify.json", res.to_dict())
    print(res.table())
    t = res.totals()
    if "measured_speedup" in t:
        print(f"\nspeedup over the dense layers: measured {t['measured_speedup']:.3f}x, "
              f"model {t['model_speedup']:.3f}x")
    print(f"{len(res.layers)} layers on {args.sim} in {res.wall_s:.1f} s; "
          f"wrote {Path(args.run_dir) / 'verify.json'}")
    if not res.ok:
        for lc in res.layers:
            if lc.ok:
                continue
            for msg in filter(None, [lc.error, lc.first_diff, *lc.counter_diffs]):
                print(f"  {lc.name}: {msg}")
        raise VerifyMismatch(f"{len(t['layers_failed'])} layer(s) failed: "
                             f"{', '.join(t['layers_failed'])}")
    print("all layers bit-exact and cycle-exact")
    return 0
