"""``lsp-codesign sweep``: a co-design grid priced, evaluated and verified, with Pareto fronts.

The grid is ``--hw`` configs x ``--blocks`` x ``--tile-m`` x ``--flops`` x ``--methods``
(:mod:`lsp_codesign.sweep.grid`). One calibration per block serves every config, tile, target
and method of that block; each point's allocation, evaluation and verification is cached in
SWEEP_DIR under a hash of what it depends on, so a re-run or an extended grid computes only
what is new (:mod:`lsp_codesign.sweep.plan`). Tasks run in this process, in a process pool
(``--workers N``) or on Ray (``--backend ray [--address ADDR]``). This module builds the
model and checks the inputs; the tasks are in :mod:`._sweep_tasks`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..errors import LspError
from ._alloc_args import (add_curve_args, add_model_args, build_seeded_model, positive_int,
                          resolve_alloc_args)

ORDER = 35

__all__ = ["register", "run"]

SIMS = ("iss", "icarus", "verilator")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="price a grid of configs, blocks, tiles, FLOPs targets and methods; "
                      "Pareto fronts",
        description="For every point of --hw x --blocks x --tile-m x --flops x --methods: "
                    "allocate (one calibration per block, shared), price cycles, latency, "
                    "energy and power on the config, and optionally evaluate top-1 and KL to "
                    "the dense model (--evaluate, --finetune-epochs) and run the layers on a "
                    "simulator (--verify). Writes SWEEP_DIR/sweep.json, sweep.csv and Pareto "
                    "plots; results are cached in SWEEP_DIR, so a re-run or a larger grid "
                    "computes only new points.")
    p.add_argument("--hw", action="append", required=True, metavar="CFG",
                   help="hardware config YAML (repeatable)")
    p.add_argument("--blocks", metavar="BKxBN,...",
                   help="pruning blocks, e.g. 8x8,16x16,32x32 (default: each config's own)")
    p.add_argument("--tile-m", metavar="BM,...",
                   help="token tiles, e.g. 16,32 (default: each config's own)")
    p.add_argument("--flops", default="0.5", metavar="R,...",
                   help="FLOPs targets in (0, 1], e.g. 0.3,0.5,0.7 (default 0.5)")
    p.add_argument("--methods", default="lsp", metavar="M,...",
                   help="allocation methods: lsp, beta0, uniform, global (default lsp)")
    add_model_args(p)
    add_curve_args(p)
    p.add_argument("--evaluate", action="store_true",
                   help="top-1 and KL to the dense model on the test set, per point")
    p.add_argument("--test-images", type=positive_int, metavar="N",
                   help="evaluate on a fixed subset of N test images (default: all)")
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                   help="finetune each pruned model N epochs (masks fixed, distilled) before "
                        "a second evaluation; implies --evaluate (default 0)")
    p.add_argument("--verify", choices=SIMS,
                   help="run each point's layers on this simulator and record whether it "
                        "agreed (block_sparse configs)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: this machine (a process pool with --workers > 1); ray: Ray "
                        "tasks (default local)")
    p.add_argument("--address", metavar="ADDR",
                   help="join this Ray cluster (HOST:PORT, ray://HOST:10001 or auto) instead "
                        "of starting a local Ray instance")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="tasks at once (default: 1 local; all CPUs of a local Ray instance; "
                        "no limit on a cluster)")
    p.add_argument("--out", required=True, metavar="SWEEP_DIR",
                   help="results and cache; reused by later sweeps")
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                   help="how the table is printed (default text)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace, grid: Any) -> tuple[Any, Any]:
    """Check everything that needs the model; returns ``(Settings, model count)``."""
    from models.data import calibration_set_id

    from ..flops import count_model
    from ..fingerprint import weights_digest
    from ..sweep import Settings, check_grid_on_model
    from ._sweep_tasks import test_set_id

    name, opts, ckpt = resolve_alloc_args(args)
    if args.finetune_epochs < 0:
        raise LspError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    evaluate = args.evaluate or args.finetune_epochs > 0
    if args.test_images is not None and not evaluate:
        raise LspError("--test-images needs --evaluate")
    model, source = build_seeded_model(name, args.checkpoint, args.seed)
    count = count_model(model, name)
    check_grid_on_model(grid, count, args.exclude)
    if evaluate and source != "registry":
        raise LspError(f"--evaluate needs a registered model with test images; {name!r} is a "
                       "plain timm model")
    data = str(Path(args.data).resolve()) if args.data else None
    s = Settings(model=name, source=source, checkpoint=ckpt, weights=weights_digest(model),
                 calib=args.calib, seed=args.seed, data=data, batch_size=args.batch_size,
                 calib_set=calibration_set_id(name, source, args.calib, args.seed, args.data),
                 exclude=tuple(args.exclude), options=opts.record(), kappa=args.kappa,
                 smooth=args.smooth, device=args.device, evaluate=evaluate,
                 test_images=args.test_images,
                 test_set=test_set_id(name, args.test_images, data) if evaluate else None,
                 finetune_epochs=args.finetune_epochs, verify=args.verify)
    return s, count


def _check_verify(sim: str | None) -> None:
    if sim in ("icarus", "verilator"):
        from sim.harness import check_simulator

        check_simulator(sim)


def run(args: argparse.Namespace) -> int:
    from ..sweep import SweepStore, build_grid, make_executor, run_sweep
    from ._sweep_tasks import TASKS

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.address is not None and args.backend != "ray":
        raise LspError("--address names a Ray cluster; it needs --backend ray")
    grid = build_grid(args.hw, args.blocks, args.flops, args.methods, args.tile_m)
    store = SweepStore(args.out)
    store.check()
    resolve_alloc_args(args)
    _check_verify(args.verify)
    # the workers start (and import torch) while this process builds the model
    executor = make_executor(args.backend, args.workers or 0, args.address,
                             preload=("lsp_codesign.commands._sweep_tasks",))
    try:
        settings, _count = _settings(args, grid)
        store.open()
    except BaseException:
        executor.close(failed=True)
        raise
    outcome = run_sweep(grid, settings, store, executor, TASKS, progress=not args.quiet)
    doc = _write(store, grid, settings, outcome, args)
    _print(doc, outcome, args)
    return 0


def _grid_record(grid: Any) -> dict[str, Any]:
    return {"hw": [p for p, _ in grid.configs], "blocks": list(grid.blocks),
            "tile_m": list(grid.tiles), "flops": list(grid.targets),
            "methods": list(grid.methods)}


def _write(store: Any, grid: Any, settings: Any, outcome: Any,
           args: argparse.Namespace) -> dict[str, Any]:
    """sweep.json, sweep.csv and the plots, together under SWEEP_DIR's lock."""
    from ..sweep import COLUMNS, FORMAT, front_summary, plot_front, to_csv
    from ..sweep.pareto import FRONTS
    from ..sweep.results import dumps, to_json_rows

    rows = outcome.rows
    summary = front_summary(rows)
    doc = {"format": FORMAT, "grid": _grid_record(grid), "settings": settings.record(),
           "columns": dict(COLUMNS), "points": to_json_rows(rows),
           "fronts": {col: [r["point"] for r in rows if r[col]] for col in FRONTS},
           "summary": summary,
           "run": {"backend": args.backend, "address": args.address,
                   "workers": getattr(args, "workers", None), "computed": outcome.computed,
                   "reused": outcome.reused, "task_seconds": outcome.seconds,
                   "calibration_share": outcome.calibration_share(),
                   "wall_s": outcome.wall_s}}
    files = {"sweep.json": lambda t: t.write_text(dumps(doc)),
             "sweep.csv": lambda t: t.write_text(to_csv(rows))}
    title = (f"{settings.model} on {', '.join(c.name for _, c in grid.configs)}: "
             f"{len(rows)} points")
    for col, spec in FRONTS.items():
        if any(r[col] is not None for r in rows):
            files[f"plots/{spec[-1]}"] = (
                lambda t, col=col: plot_front(rows, col, t, title))
    store.write_results(files)
    return doc


def _print(doc: dict[str, Any], outcome: Any, args: argparse.Namespace) -> None:
    from ..sweep import to_markdown, to_text

    if args.format == "json":
        print(json.dumps(doc, indent=2))
        return
    print((to_markdown if args.format == "markdown" else to_text)(outcome.rows))
    new = outcome.computed.get("point", 0)
    print(f"\n{doc['summary']}")
    print(f"{len(outcome.rows)} points ({new} computed, {len(outcome.rows) - new} from the "
          f"cache; {outcome.computed.get('calibration', 0)} calibrations run) in "
          f"{outcome.wall_s:.1f} s; wrote {Path(args.out) / 'sweep.json'}, sweep.csv, plots/")
