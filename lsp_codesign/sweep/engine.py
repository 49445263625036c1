"""Running a sweep: what is cached, what to compute and when, and the resulting table.

Each point needs its block's calibration, then its allocation (the ``point`` task: curves,
power term and search for its config, target and method, priced on the config); with
``--evaluate`` an evaluation of its masks against the dense model's outputs on the test set
(the ``reference``, computed once); with ``--verify`` a run of its layers on a simulator.
Everything found in the cache (:mod:`.store`, keys from :mod:`.plan`) is reused; the rest is
submitted to an :class:`~.backend.Executor` as soon as what it needs exists, so a calibration
feeds its points while other calibrations still run, and points with equal masks share one
evaluation. The task functions come from the caller (the command layer builds models and
images; this module never does).
"""

from __future__ import annotations

import collections
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..fingerprint import masks_digest
from .backend import Executor
from .grid import Grid
from .pareto import mark_fronts
from .plan import (Settings, calibration_key, eval_key, point_key, reference_key,
                   verify_key)
from .results import table_row
from .store import SweepStore

__all__ = ["Tasks", "SweepOutcome", "run_sweep", "KINDS"]

KINDS = ("calibration", "point", "reference", "evaluation", "verification")


@dataclass(frozen=True)
class Tasks:
    """The functions a sweep runs, module-level so that worker processes can import them.

    Attributes
    ----------
    calibrate : callable
        ``(settings, (bk, bn)) -> Calibration``.
    point : callable
        ``(settings, calibration, config dict, target, method) -> (record, MaskSet)``.
    reference : callable
        ``(settings) -> (images, classes) float32 log-probabilities of the dense model``.
    evaluate : callable
        ``(settings, MaskSet, reference) -> {top1, kl, ...}``.
    verify : callable
        ``(settings, MaskSet, config dict) -> {sim, ok, ...}``.
    """

    calibrate: Callable[..., Any]
    point: Callable[..., Any]
    reference: Callable[..., Any]
    evaluate: Callable[..., Any]
    verify: Callable[..., Any]


@dataclass
class SweepOutcome:
    """The table and what it cost.

    Attributes
    ----------
    rows : list of dict
        One per point, in grid order (:func:`~.results.table_row`), fronts marked.
    computed, reused : dict
        Per kind of result (:data:`KINDS`): computed by a task, found in the cache.
    seconds : dict
        Per kind: seconds the tasks computed (summed over workers).
    wall_s : float
        Wall time of the sweep.
    """

    rows: list[dict[str, Any]]
    computed: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def calibration_share(self) -> float:
        total = sum(self.seconds.values())
        return self.seconds.get("calibration", 0.0) / total if total else 0.0


class _Sweep:
    """The state of one sweep while it runs."""

    def __init__(self, grid: Grid, s: Settings, store: SweepStore, ex: Executor,
                 tasks: Tasks) -> None:
        self.s, self.store, self.ex, self.tasks = s, store, ex, tasks
        self.points = grid.points()
        self.ckey = {b: calibration_key(s, b) for b in grid.block_sizes()}
        self.pkey = [point_key(s, self.ckey[p.config.block], p) for p in self.points]
        self.jobs: dict[int, tuple[str, Any]] = {}
        self.computed = collections.Counter({k: 0 for k in KINDS})
        self.reused = collections.Counter({k: 0 for k in KINDS})
        self.seconds = {k: 0.0 for k in KINDS}
        self.rec: dict[int, dict] = {}
        self.ekey: dict[int, str] = {}
        self.vkey: dict[int, str] = {}
        self.results: dict[str, dict[str, dict]] = {"evaluations": {}, "verifications": {}}
        self.waiting: dict[str, dict[str, list[int]]] = {"evaluations": {},
                                                         "verifications": {}}
        self.by_block: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
        self.ref_handle: Any = None
        self.ref_running = False
        self.ref_queue: list[tuple[str, Any]] = []
        self.done: set[int] = set()
        self.bar: Any = None

    # ---- starting ----------------------------------------------------------------------------

    def start(self, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=len(self.points), unit="pt", desc="sweep", disable=not progress,
                        file=sys.stderr, dynamic_ncols=True)
        for i, p in enumerate(self.points):
            rec = self.store.get("points", self.pkey[i])
            masks = self.store.get_masks(self.pkey[i]) if rec is not None else None
            if rec is not None and masks is not None:
                self.reused["point"] += 1
                self._have_point(i, rec, masks)
            else:
                self.by_block[p.config.block].append(i)
        if self.s.evaluate and self.by_block:
            self._need_reference()  # early, beside the calibrations
        for block in list(self.by_block):
            key = self.ckey[block]
            calib = self.store.get_calibration(key)
            if calib is None:
                self._submit("calibration", block, self.tasks.calibrate, self.s, block)
                continue
            self.reused["calibration"] += 1
            handle = self.ex.share(calib, self.store.path("calibrations", key, ".npz"),
                                   "calibration", key)
            self._submit_points(block, handle)
        self._postfix()

    def _submit(self, kind: str, payload: Any, fn: Callable[..., Any], *args: Any) -> None:
        self.jobs[self.ex.submit(fn, *args)] = (kind, payload)

    def _submit_points(self, block: tuple[int, int], handle: Any) -> None:
        for i in self.by_block.pop(block, []):
            p = self.points[i]
            self._submit("point", i, self.tasks.point, self.s, handle, p.config.to_dict(),
                         p.target, p.method)

    def _need_reference(self) -> None:
        if self.ref_handle is not None or self.ref_running:
            return
        key = reference_key(self.s)
        ref = self.store.get_reference(key)
        if ref is None:
            self.ref_running = True
            self._submit("reference", key, self.tasks.reference, self.s)
            return
        self.reused["reference"] += 1
        self._set_reference(ref, self.ex.share(ref, self.store.path("references", key, ".npy"),
                                               "array", key))

    def _set_reference(self, ref: Any, handle: Any) -> None:
        self.ref_handle, self.ref_running = handle, False
        for key, masks in self.ref_queue:
            self._submit("evaluation", key, self.tasks.evaluate, self.s, masks, handle)
        self.ref_queue = []

    # ---- a point's follow-ups ------------------------------------------------------------------

    def _have_point(self, i: int, rec: dict, masks: Any) -> None:
        self.rec[i] = rec
        p = self.points[i]
        digest = None
        if self.s.evaluate:
            digest = masks_digest(masks)
            self.ekey[i] = eval_key(self.s, digest)
            self._follow("evaluations", self.ekey[i], i, masks)
        if self.s.verify and p.config.engine == "block_sparse":
            digest = digest or masks_digest(masks)
            self.vkey[i] = verify_key(self.s, digest, p.config)
            self._follow("verifications", self.vkey[i], i, (masks, p.config.to_dict()))
        self._maybe_done(i)

    def _follow(self, kind: str, key: str, i: int, what: Any) -> None:
        """Point ``i`` needs the result ``key`` of ``kind``: cached, running, or to submit."""
        if key in self.results[kind]:
            return
        if key in self.waiting[kind]:
            self.waiting[kind][key].append(i)
            return
        doc = self.store.get(kind, key)
        if doc is not None:
            self.reused[kind[:-1]] += 1
            self.results[kind][key] = doc
            return
        self.waiting[kind][key] = [i]
        if kind == "verifications":
            masks, cfg = what
            self._submit("verification", key, self.tasks.verify, self.s, masks, cfg)
        elif self.ref_handle is None:
            self.ref_queue.append((key, what))
            self._need_reference()
        else:
            self._submit("evaluation", key, self.tasks.evaluate, self.s, what, self.ref_handle)

    def _complete(self, i: int) -> bool:
        if i not in self.rec:
            return False
        if i in self.ekey and self.ekey[i] not in self.results["evaluations"]:
            return False
        return not (i in self.vkey and self.vkey[i] not in self.results["verifications"])

    def _maybe_done(self, i: int) -> None:
        if i not in self.done and self._complete(i):
            self.done.add(i)
            self.bar.update(1)

    def _postfix(self) -> None:
        running = collections.Counter(kind for kind, _ in self.jobs.values())
        self.bar.set_postfix_str(", ".join(f"{k} {n}" for k, n in running.items() if n),
                                 refresh=False)

    # ---- running -----------------------------------------------------------------------------

    def step(self) -> None:
        tok, seconds, out = self.ex.next_done()
        kind, payload = self.jobs.pop(tok)
        self.computed[kind] += 1
        self.seconds[kind] += seconds
        if kind == "calibration":
            key = self.ckey[payload]
            path = self.store.put_calibration(key, out)
            self._submit_points(payload, self.ex.result_handle(tok, out, path, "calibration",
                                                               key))
        elif kind == "point":
            rec, masks = out
            p, key = self.points[payload], self.pkey[payload]
            self.store.put_masks(key, masks)
            rec = {**rec, "config": p.config.to_dict(), "target": p.target,
                   "method": p.method, "calibration": self.ckey[p.config.block]}
            self.store.put("points", key, rec)
            self._have_point(payload, rec, masks)
        elif kind == "reference":
            path = self.store.put_reference(payload, out)
            self._set_reference(out, self.ex.result_handle(tok, out, path, "array", payload))
        else:
            group = kind + "s"
            self.store.put(group, payload, out)
            self.results[group][payload] = out
            for i in self.waiting[group].pop(payload, []):
                self._maybe_done(i)
        self._postfix()

    def rows(self) -> list[dict[str, Any]]:
        rows = [table_row(p, self.pkey[i], self.rec[i],
                          self.results["evaluations"].get(self.ekey.get(i, "")),
                          self.results["verifications"].get(self.vkey.get(i, "")))
                for i, p in enumerate(self.points)]
        mark_fronts(rows)
        return rows


def run_sweep(grid: Grid, settings: Settings, store: SweepStore, executor: Executor,
              tasks: Tasks, *, progress: bool = True) -> SweepOutcome:
    """Compute what the cache lacks for every point of ``grid``; return the table.

    The executor is closed on return (its workers stopped at once after a failure). A
    task's exception propagates; results finished before it stay in the cache.
    """
    t0 = time.perf_counter()
    run = _Sweep(grid, settings, store, executor, tasks)
    failed = True
    try:
        run.start(progress)
        while run.jobs:
            run.step()
        failed = False
    finally:
        if run.bar is not None:
            run.bar.close()
        executor.close(failed)
    missing = [p.label for i, p in enumerate(run.points) if i not in run.done]
    if missing:  # every task finished, so nothing may be left
        raise RuntimeError(f"sweep ended with {len(missing)} incomplete points: {missing[:3]}")
    return SweepOutcome(rows=run.rows(), computed=dict(run.computed), reused=dict(run.reused),
                        seconds=run.seconds, wall_s=time.perf_counter() - t0)
