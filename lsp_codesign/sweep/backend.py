"""Where a sweep's tasks run: this process, a process pool on this machine, or Ray.

An :class:`Executor` runs module-level functions (``fn(*args)``) and hands back their
results as they finish (:meth:`Executor.next_done`). Every task runs with one torch thread
(``OMP_NUM_THREADS=1`` in the workers), so a result does not depend on where it ran; a task
also reports the seconds it computed, which is what the sweep's timings add up.

* :class:`SerialExecutor` (``--workers 1``): in this process, in submission order.
* :class:`PoolExecutor` (``--backend local --workers N``): N spawned processes
  (:class:`multiprocessing.pool.Pool`); large shared inputs travel as a path in the sweep's
  cache (:class:`FileRef`), read once per worker.
* :class:`~lsp_codesign.sweep.ray_backend.RayExecutor` (``--backend ray``): Ray tasks of one
  CPU each, on a local instance or a cluster; shared inputs live in Ray's object store.

A task's exception is raised again by :meth:`Executor.next_done` in the driver; closing an
executor after a failure stops its workers.
"""

from __future__ import annotations

import collections
import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Executor", "SerialExecutor", "PoolExecutor", "FileRef", "invoke", "make_executor"]

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class FileRef:
    """A large task input kept in the sweep's cache: ``kind`` is ``calibration`` or
    ``array``; a worker reads it once and keeps the last few it read."""

    kind: str
    path: str
    key: str | None = None


_LOADED: "collections.OrderedDict[FileRef, Any]" = collections.OrderedDict()
_LOADED_MAX = 4


def _resolve(arg: Any) -> Any:
    if not isinstance(arg, FileRef):
        return arg
    if arg in _LOADED:
        _LOADED.move_to_end(arg)
        return _LOADED[arg]
    import numpy as np

    from .store import load_calibration

    obj = (load_calibration(arg.path, arg.key) if arg.kind == "calibration"
           else np.load(arg.path, allow_pickle=False))
    _LOADED[arg] = obj
    while len(_LOADED) > _LOADED_MAX:
        _LOADED.popitem(last=False)
    return obj


def _one_thread() -> None:
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def invoke(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Run one task (inputs resolved, one torch thread); returns ``(seconds, result)``."""
    _one_thread()
    resolved = [_resolve(a) for a in args]
    t0 = time.perf_counter()
    out = fn(*resolved)
    return time.perf_counter() - t0, out


class Executor:
    """Runs tasks and yields their results as they finish (see the module docstring)."""

    name = "base"
    workers = 1

    def __init__(self) -> None:
        self._next = 0

    def _token(self) -> int:
        self._next += 1
        return self._next

    def share(self, obj: Any, path: Path | None, kind: str, key: str | None = None) -> Any:
        """A handle that tasks receive in place of ``obj`` (saved at ``path``)."""
        return obj

    def result_handle(self, token: int, obj: Any, path: Path | None, kind: str,
                      key: str | None = None) -> Any:
        """A handle to a finished task's result (Ray keeps it in its object store)."""
        return self.share(obj, path, kind, key)

    def submit(self, fn: Callable[..., Any], *args: Any) -> int:
        raise NotImplementedError

    def next_done(self) -> tuple[int, float, Any]:
        """``(token, seconds, result)`` of a finished task; raises the task's exception."""
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        """Release the workers (stop them at once after a failure)."""


class SerialExecutor(Executor):
    """Tasks run in this process, one at a time, in the order they were submitted."""

    name = "serial"

    def __init__(self) -> None:
        super().__init__()
        self._queue: collections.deque = collections.deque()
        import torch

        self._threads = torch.get_num_threads()

    def submit(self, fn: Callable[..., Any], *args: Any) -> int:
        tok = self._token()
        self._queue.append((tok, fn, args))
        return tok

    def next_done(self) -> tuple[int, float, Any]:
        tok, fn, args = self._queue.popleft()
        seconds, out = invoke(fn, *args)
        return tok, seconds, out

    def close(self, failed: bool = False) -> None:
        import torch

        torch.set_num_threads(self._threads)


def _init_worker(preload: tuple[str, ...] = ()) -> None:
    import importlib

    _one_thread()
    for name in preload:  # the task modules, imported before the first task arrives
        importlib.import_module(name)


class PoolExecutor(Executor):
    """``workers`` spawned processes on this machine; shared inputs as :class:`FileRef`."""

    name = "local"

    def __init__(self, workers: int, preload: tuple[str, ...] = ()) -> None:
        import multiprocessing

        super().__init__()
        self.workers = workers
        self._done: queue.Queue = queue.Queue()
        saved = {k: os.environ.get(k) for k in _THREAD_ENV}
        os.environ.update({k: "1" for k in _THREAD_ENV})
        try:  # spawned workers inherit this environment
            self._pool = multiprocessing.get_context("spawn").Pool(
                workers, initializer=_init_worker, initargs=(tuple(preload),))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def share(self, obj: Any, path: Path | None, kind: str, key: str | None = None) -> Any:
        if path is None:
            return obj
        return FileRef(kind=kind, path=str(path), key=key)

    def submit(self, fn: Callable[..., Any], *args: Any) -> int:
        tok = self._token()
        self._pool.apply_async(invoke, (fn, *args),
                               callback=lambda r, t=tok: self._done.put((t, True, r)),
                               error_callback=lambda e, t=tok: self._done.put((t, False, e)))
        return tok

    def next_done(self) -> tuple[int, float, Any]:
        while True:
            try:
                tok, ok, value = self._done.get(timeout=0.5)
                break
            except queue.Empty:  # wake up now and then, so that signals are handled
                continue
        if not ok:
            raise value
        seconds, out = value
        return tok, seconds, out

    def close(self, failed: bool = False) -> None:
        if failed:
            self._pool.terminate()
        else:
            self._pool.close()
        self._pool.join()


def make_executor(backend: str, workers: int, address: str | None = None, *,
                  preload: tuple[str, ...] = ()) -> Executor:
    """``local`` (serial for one worker, else a process pool) or ``ray``; ``workers`` 0: the
    default (1 local, every CPU of a local Ray instance, no limit on a cluster). ``preload``:
    modules the workers import as they start."""
    if backend == "ray":
        from .ray_backend import RayExecutor

        return RayExecutor(workers=workers or None, address=address)
    if address is not None:
        from .grid import SweepError

        raise SweepError("--address names a Ray cluster; it needs --backend ray")
    return SerialExecutor() if workers <= 1 else PoolExecutor(workers, preload)
