"""``lsp-codesign verify``: a run's masks through the RTL, bit-exact and cycle-exact.

This layer wires the pieces in: the run directory (:mod:`lsp_codesign.rundir`), the run's
pruned model and one calibration image (``models/``), the simulator (``sim/``, or the ISS), and
the core's checks (:func:`lsp_codesign.verify.verify_layers`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import Engine, HwConfig, load_config
from ..errors import LspError
from ..rundir import HW_YAML, Run, finetuned_weights, write_verify
from ..verify import (SIMS, Runner, VerifyMismatch, VerifyResult, iss_runner, sample_layers,
                      verify_layers)
from ._alloc_args import positive_int
from ._runs import note_hw_override, pruned_model, read_model_run

ORDER = 60

__all__ = ["register", "run", "verify_run", "rtl_runner", "capture_inputs", "parallel_runner",
           "run_chunk"]


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
    p.add_argument("--hw", metavar="CFG",
                   help="check against this config instead of the run's hw.yaml (a config "
                        "changed since allocate is refused unless given here)")
    p.add_argument("--sim", choices=("verilator", "icarus", "iss"), default="verilator",
                   help="HDL simulator (iss: the plain-Python reference, no RTL)")
    p.add_argument("--layers", default="all", metavar="all|N",
                   help="all layers, or N sampled ones (seeded by the run's seed)")
    p.add_argument("--no-dense", action="store_true",
                   help="skip the dense runs (no measured speedup)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="run the layers' programs in a local process pool (with --workers > 1)"
                        " or as Ray tasks (default local)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="programs in N groups at once (default 1 local; all CPUs of a local "
                        "Ray instance)")
    p.add_argument("--address", metavar="ADDR",
                   help="with --backend ray: join this Ray cluster (HOST:PORT, ray://HOST:10001"
                        " or auto) instead of starting a local instance")
    p.set_defaults(func=run)


def run_chunk(sim: str, cfg: dict, programs: Sequence) -> list:
    """One group of programs on ``sim`` (a task of :func:`parallel_runner`)."""
    hw = HwConfig.from_dict(cfg, source="verify task")
    return (iss_runner if sim == "iss" else rtl_runner(sim))(hw, list(programs))


def _cost(prog) -> int:
    """Relative simulation work of a program: the DRAM beats it reads plus its words."""
    return len(prog.dram) + len(prog.words)


def parallel_runner(sim: str, executor) -> Runner:
    """A runner that deals the programs out to ``executor``'s workers (balanced by
    :func:`_cost`) and returns the results in program order."""
    def run_par(cfg: HwConfig, programs: Sequence, progress: bool = False) -> list:
        from tqdm.auto import tqdm

        n = max(1, min(executor.workers, len(programs)))
        groups: list[list[int]] = [[] for _ in range(n)]
        load = [0] * n
        for i in sorted(range(len(programs)), key=lambda j: -_cost(programs[j])):
            g = load.index(min(load))
            groups[g].append(i)
            load[g] += _cost(programs[i])
        tokens = {executor.submit(run_chunk, sim, cfg.to_dict(), [programs[i] for i in grp]):
                  grp for grp in groups if grp}
        out: list = [None] * len(programs)
        with tqdm(total=len(programs), unit="prog", desc=f"verify ({executor.name})",
                  disable=not progress, leave=False, dynamic_ncols=True) as bar:
            while tokens:
                tok, _seconds, res = executor.next_done()
                grp = tokens.pop(tok)
                for i, r in zip(grp, res):
                    out[i] = r
                bar.update(len(grp))
        return out
    return run_par


def rtl_runner(sim: str) -> Runner:
    """A runner that runs programs on the generated Verilog (``sim.harness``)."""
    def run_rtl(cfg: HwConfig, programs: Sequence, progress: bool = False) -> list:
        try:
            from sim.harness import run_programs
        except ImportError as exc:
            raise LspError(f"the RTL harness (sim.harness) is not importable: {exc}") from None
        return run_programs(cfg, list(programs), sim=sim, progress=progress)
    return run_rtl


def capture_inputs(model, names: Sequence[str], image) -> dict[str, np.ndarray]:
    """Inputs of the named linear layers for one image: ``{name: (M, N) float64}``."""
    import torch

    mods = dict(model.named_modules())
    got: dict[str, np.ndarray] = {}
    hooks = []
    for name in names:
        def hook(_mod, inp, _out, name=name):
            got[name] = inp[0].detach().reshape(-1, inp[0].shape[-1]).double().numpy()
        hooks.append(mods[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(image)
    finally:
        for h in hooks:
            h.remove()
    return got


def verify_run(run_dir: str | Path, *, sim: str = "verilator", layers: str = "all",
               dense: bool = True, progress: bool = True, runner: Runner | None = None,
               hw: HwConfig | None = None) -> VerifyResult:
    """Verify a run directory layer by layer (finetuned weights when the run has them).

    Each layer's real input is captured by running the pruned model on one calibration image
    chosen by the run's seed (one image, so M is the tokens the layer sees per image, as in
    the allocation).
    """
    if sim not in SIMS:
        raise LspError(f"--sim: expected one of {', '.join(SIMS)}, got {sim!r}")
    return _verify(read_model_run(run_dir, hw=hw), sim, layers, dense, progress, runner)[0]


def _verify(run: Run, sim: str, layers: str, dense: bool, progress: bool,
            runner: Runner | None) -> tuple[VerifyResult, Path | None]:
    """The checks of :func:`verify_run`; also returns the finetuned weights used, if any."""
    cfg = run.hw
    if cfg.engine is not Engine.BLOCK_SPARSE:
        raise LspError(f"{cfg.source or run.file(HW_YAML)}: a {cfg.engine} config; only the "
                       "block_sparse engine has RTL to verify against")
    names = sample_layers(run.masks.order, layers, run.seed)
    t0 = time.perf_counter()

    from models.data import calibration_loader

    weights = finetuned_weights(run)
    model, _em = pruned_model(run, weights)
    images, _labels = next(iter(calibration_loader(run.model_name, 1, run.seed, 1)))
    inputs = capture_inputs(model, names, images)
    mods = dict(model.named_modules())
    w = {name: mods[name].weight.detach().double().numpy() for name in names}
    checks = verify_layers(cfg, run.masks, names, inputs, w,
                           runner=runner or (iss_runner if sim == "iss" else rtl_runner(sim)),
                           dense=dense, progress=progress, where=cfg.source,
                           who="ISS" if sim == "iss" else "RTL")
    return VerifyResult(run_dir=str(run.path), sim=sim, config=cfg.to_dict(), layers=checks,
                        wall_s=time.perf_counter() - t0), weights


def run(args: argparse.Namespace) -> int:
    if args.sim not in SIMS:
        raise LspError(f"--sim: expected one of {', '.join(SIMS)}, got {args.sim!r}")
    if args.address is not None and args.backend != "ray":
        raise LspError("--address names a Ray cluster; it needs --backend ray")
    run = read_model_run(args.run_dir, hw=load_config(args.hw) if args.hw else None)
    note_hw_override("verify", run)
    executor = runner = None
    if args.backend == "ray" or (args.workers or 1) > 1:
        from ..sweep import make_executor

        executor = make_executor(args.backend, args.workers or 0, args.address,
                                 preload=("lsp_codesign.commands.verify",))
        runner = parallel_runner(args.sim, executor)
    failed = True
    try:
        res, weights = _verify(run, args.sim, args.layers, not args.no_dense, True, runner)
        failed = False
    finally:
        if executor is not None:
            executor.close(failed)
    path = write_verify(run, res, weights=weights)
    print(res.table())
    t = res.totals()
    if "measured_speedup" in t:
        print(f"\nspeedup over the dense layers: measured {t['measured_speedup']:.3f}x, "
              f"model {t['model_speedup']:.3f}x")
    print(f"{len(res.layers)} layers on {args.sim} in {res.wall_s:.1f} s; wrote {path}")
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
