"""Ray as a sweep's (and verify's) engine: tasks of one CPU each, local or on a cluster.

Without an address a local Ray instance starts with the command (``ray.init(num_cpus=N,
include_dashboard=False)``, a few seconds) and stops with it. With ``--address`` the driver
joins a running cluster (``HOST:PORT`` of its head node, ``ray://HOST:10001`` for Ray Client,
or ``auto``) and leaves it running. Before joining, the address is checked within a bounded
time: a TCP connection (:data:`TCP_TIMEOUT_S`), then a trial ``ray.init`` in a separate
process (:data:`CONNECT_TIMEOUT_S`, or ``LSP_RAY_CONNECT_TIMEOUT_S``), because Ray itself
keeps retrying an address that does not answer. A failure is one error naming the address.

Every node must have this version of lsp-codesign installed (a sweep's tasks check the
code's hash and refuse to mix versions). Large inputs (calibrations, reference outputs) are
put in the object store once and passed to tasks by reference.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from .backend import Executor, invoke
from .grid import SweepError

__all__ = ["RayExecutor", "check_address", "import_ray", "TCP_TIMEOUT_S", "CONNECT_TIMEOUT_S"]

TCP_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 30.0
_PROBE = ("import logging, sys, ray\n"
          "ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)\n"
          "print(int(ray.cluster_resources().get('CPU', 0)))\n"
          "ray.shutdown()\n")


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SweepError("--backend ray: Ray is not installed (pip install 'ray==2.60.0'; "
                         "scripts/setup.sh installs it)") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[1] if "://" in address else address
    if rest == "auto":
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SweepError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    return host.strip("[]"), int(port)


def check_address(address: str) -> int:
    """Check that a Ray cluster answers at ``address``; returns its CPU count.

    Bounded: :data:`TCP_TIMEOUT_S` for the TCP connection, then :data:`CONNECT_TIMEOUT_S` for
    a trial connection in a child process.
    """
    hp = _host_port(address)
    if hp is not None:
        try:
            socket.create_connection(hp, timeout=TCP_TIMEOUT_S).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise SweepError(f"--address {address}: cannot reach {hp[0]}:{hp[1]} ({reason}); "
                             "is the Ray head node running (ray start --head)?") from None
    limit = float(os.environ.get("LSP_RAY_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE, address], capture_output=True,
                             text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise SweepError(f"--address {address}: no Ray cluster answered within {limit:g} s "
                         "(is it a Ray head node's GCS port, 6379 by default?)") from None
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        why = lines[-1].strip()[:200] if lines else f"exit status {res.returncode}"
        hint = ""
        if "auth" in res.stderr.lower():
            hint = ("; the cluster uses token authentication: set RAY_AUTH_MODE=token and the "
                    "cluster's token (RAY_AUTH_TOKEN, or ~/.ray/auth_token)")
        raise SweepError(f"--address {address}: cannot join the Ray cluster ({why}){hint}")
    try:
        return int(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


class RayExecutor(Executor):
    """Ray tasks of one CPU each. ``workers``: CPUs of the local instance, or at most this
    many tasks at once on a cluster (None: as many as the cluster schedules)."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        super().__init__()
        ray = import_ray()
        self._ray = ray
        self.address = address
        if address is not None:
            cpus = check_address(address)
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            self._started = True
            self._owned = False
            self.workers = workers or max(1, cpus)
            self._limit = workers
        else:
            self.workers = workers or (os.cpu_count() or 1)
            env = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
            # the workers import this checkout's packages, as the driver does
            root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(
                [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
            ray.init(address="local", num_cpus=self.workers, include_dashboard=False,
                     logging_level=logging.ERROR, log_to_driver=False,
                     runtime_env={"env_vars": env})
            self._started = True
            self._owned = True
            self._limit = None
        self._remote = ray.remote(num_cpus=1, max_retries=0)(invoke)
        self._pending: dict[Any, int] = {}
        self._backlog: list[tuple[int, Callable[..., Any], tuple]] = []

    def share(self, obj: Any, path: Path | None, kind: str, key: str | None = None) -> Any:
        return self._ray.put(obj)

    def result_handle(self, token: int, obj: Any, path: Path | None, kind: str,
                      key: str | None = None) -> Any:
        return self._ray.put(obj)

    def _launch(self) -> None:
        while self._backlog and (self._limit is None or len(self._pending) < self._limit):
            tok, fn, args = self._backlog.pop(0)
            self._pending[self._remote.remote(fn, *args)] = tok

    def submit(self, fn: Callable[..., Any], *args: Any) -> int:
        tok = self._token()
        self._backlog.append((tok, fn, args))
        self._launch()
        return tok

    def next_done(self) -> tuple[int, float, Any]:
        ray = self._ray
        while True:
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=0.5)
            if done:
                break
        ref = done[0]
        tok = self._pending.pop(ref)
        try:
            seconds, out = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else
                   SweepError(f"a Ray task failed: {str(exc).splitlines()[0][:300]}")) from None
        self._launch()
        return tok, seconds, out

    def close(self, failed: bool = False) -> None:
        ray = self._ray
        if failed:
            for ref in list(self._pending):
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 -- best effort while stopping
                    pass
        self._pending.clear()
        if self._started:
            ray.shutdown()
            self._started = False
