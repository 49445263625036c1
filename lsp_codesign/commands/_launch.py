"""``allocate --nproc N``: start N ranks on this machine, as ``torchrun --standalone`` does.

Each rank is ``python -m lsp_codesign`` with the same arguments and the environment torchrun
gives its workers (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, and ``OMP_NUM_THREADS=1`` unless set).
Rank 0 writes to this terminal (its progress bar, its summary, its one-line error); the other
ranks' output is kept aside and shown only when one of them fails on its own. When a rank
fails, the others get a few seconds to report the shared failure, then are stopped; SIGTERM or
Ctrl-C stops them all. The exit status is rank 0's, or the failed rank's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["launch_local", "LAUNCHED_ENV"]

LAUNCHED_ENV = "LSP_CODESIGN_LAUNCHED"
GRACE_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and "\r" not in ln]
    return lines[-1] if lines else ""


def launch_local(nproc: int, argv: list[str]) -> int:
    """Run ``python -m lsp_codesign *argv`` as ``nproc`` ranks; return the exit status."""
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc), **{LAUNCHED_ENV: "1"})
    base.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="lsp-ranks-") as logs:
        procs, files = [], []
        try:
            for r in range(nproc):
                env = dict(base, RANK=str(r), LOCAL_RANK=str(r))
                err = None if r == 0 else open(Path(logs) / f"rank{r}.err", "wb")
                files.append(err)
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "lsp_codesign", *argv], env=env,
                    stdout=None if r == 0 else subprocess.DEVNULL, stderr=err))
            codes = _wait(procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for f in files:
                if f is not None:
                    f.close()
        return _status(codes, Path(logs), argv)


def _wait(procs: list[subprocess.Popen]) -> list[int | None]:
    """Wait for every rank; after the first failure give the others GRACE_S, then stop them.

    Returns each rank's exit status, or None for a rank this launcher stopped.
    """
    failed_at = None
    stopped: set[int] = set()
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return [None if i in stopped else c for i, c in enumerate(codes)]
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            for i, p in enumerate(procs):
                if p.poll() is None:
                    stopped.add(i)
                    p.terminate()
            failed_at = float("inf")
        time.sleep(0.05)


def _status(codes: list[int | None], logs: Path, argv: list[str]) -> int:
    """Rank 0's status when it reported by itself; else the first failed rank's, with its line."""
    if codes[0] is not None and codes[0] != 0:
        return codes[0]
    for r, c in enumerate(codes[1:], start=1):
        if c not in (None, 0):
            line = _last_line(logs / f"rank{r}.err") or f"exited with status {c}"
            command = argv[0] if argv else "allocate"
            print(f"lsp-codesign {command}: error: rank {r} of {len(codes)}: "
                  f"{line.split('error: ', 1)[-1]}", file=sys.stderr)
            return c if c > 0 else 1
    return 0 if codes[0] == 0 else 1
