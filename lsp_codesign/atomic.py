"""Outputs that appear whole or not at all, one writer at a time.

- :func:`output_lock`: one writer per output path. The lock is a ``flock`` on ``.NAME.lock``
  beside the output; the kernel drops it when the process dies, so it never goes stale. A second
  writer fails at once with the holder's pid (exit status 2), unless it asks to wait a bounded
  time (``wait_s``: a sweep writing its table waits for another sweep's).
- :func:`output_dir`: a new directory built under ``.NAME.partial-XXXX`` beside its final name
  and renamed into place on success; on any exception (``KeyboardInterrupt`` and
  :class:`Terminated` included) the partial directory is removed. An existing output is replaced
  only with ``overwrite`` and only when ``replaceable(path)`` says it is one of ours; it is moved
  aside first and deleted after the rename, so a crash never leaves neither.
- :func:`check_output_path`: the checks :func:`output_dir` makes, for a command to call before
  its long computation (an ancestor that is a file, a name that is a file, an existing output).
- :func:`replace_file`: a file written under a temporary name and renamed over the final one.
- :func:`check_output_file` / :func:`write_output_file`: the same rules for a single output
  file a user names (``export --out FILE``): checked before the work, written under its lock
  through :func:`replace_file`.
- :func:`signals_as_exceptions`: SIGTERM and SIGHUP raise :class:`Terminated` in the main
  thread, so the same cleanup runs as for Ctrl-C.

Files and directories get the permissions the umask allows (0644 and 0755 under umask 022),
not the 0600/0700 that temporary files start with.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import LspError

__all__ = ["OutputError", "Terminated", "output_lock", "output_dir", "check_output_path",
           "replace_file", "fix_permissions", "signals_as_exceptions", "check_output_file",
           "write_output_file"]


class OutputError(LspError):
    """An output path that cannot be written (exists, is a file, is being written)."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived; raised in the main thread so that cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` while the block runs (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame) -> None:
        raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


_DEFERRED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back while a few renames or a cleanup run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fix_permissions(path: str | Path) -> None:
    """Give ``path`` (and, for a directory, everything in it) the umask's normal permissions."""
    mask = _umask()
    p = Path(path)
    items = [p] + (list(p.rglob("*")) if p.is_dir() else [])
    for q in items:
        if q.is_symlink():
            continue
        q.chmod((0o777 if q.is_dir() else 0o666) & ~mask)


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def output_lock(path: str | Path, what: str = "output", *,
                wait_s: float = 0.0) -> Iterator[None]:
    """Hold the writer's lock of ``path``; fail if another process holds it (at once, or
    after waiting up to ``wait_s`` seconds for it to finish)."""
    target = Path(path)
    lock = _lock_path(target)
    deadline = time.monotonic() + wait_s
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise OutputError(f"{target}: another lsp-codesign process ({_holder(lock)}) is "
                              f"writing this {what}; wait for it to finish or choose another "
                              "path") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the previous holder removed the file between our open and our lock
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


def check_output_path(path: str | Path, *, overwrite: bool,
                      replaceable: Callable[[Path], bool] | None = None,
                      what: str = "output directory", option: str = "--out") -> Path:
    """Refuse an output path that cannot become a new directory; returns it as a Path.

    Refused: an ancestor that exists and is not a directory; a path that is a file (even with
    ``overwrite``); an existing directory without ``overwrite``; with ``overwrite``, a
    directory that ``replaceable`` does not recognise (so ``--out ~ --overwrite`` deletes
    nothing).
    """
    p = Path(path)
    for parent in reversed(p.absolute().parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{option} {p}: {parent} is a file, not a directory")
    if p.is_symlink() or (p.exists() and not p.is_dir()):
        raise OutputError(f"{option} {p}: exists and is not a directory; refusing to replace it")
    if p.exists():
        if not overwrite:
            raise OutputError(f"{p}: {what} already exists (choose another {option} or pass "
                              "--overwrite)")
        if replaceable is not None and not replaceable(p):
            raise OutputError(f"{option} {p}: exists and is not a {what} written by "
                              "lsp-codesign; refusing to replace it")
    return p


@contextlib.contextmanager
def output_dir(path: str | Path, *, overwrite: bool = False,
               replaceable: Callable[[Path], bool] | None = None,
               what: str = "output directory", option: str = "--out") -> Iterator[Path]:
    """Build a directory under a temporary name, under the path's lock; rename it into place.

    Yields the temporary directory. See the module docstring for the rules.
    """
    final = check_output_path(path, overwrite=overwrite, replaceable=replaceable, what=what,
                              option=option)
    _make_parent(final, option)
    with output_lock(final, what):
        check_output_path(final, overwrite=overwrite, replaceable=replaceable, what=what,
                          option=option)  # again, now that no other writer can change it
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        except OSError as exc:
            raise OutputError(f"{option} {final}: cannot write in {final.parent} "
                              f"({exc.strerror})") from None
        try:
            yield tmp
            fix_permissions(tmp)
            with _signals_deferred():
                _move_into_place(tmp, final)
        except BaseException:
            with _signals_deferred():
                shutil.rmtree(tmp, ignore_errors=True)
            raise


def _move_into_place(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        final.rename(old / final.name)
    try:
        tmp.rename(final)
    except BaseException:
        if old is not None:
            (old / final.name).rename(final)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def replace_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` a file beside ``path``, then rename it over ``path`` (nothing on error)."""
    final = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        fix_permissions(tmp)
        tmp.replace(final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def check_output_file(path: str | Path, *, overwrite: bool, option: str = "--out") -> Path:
    """Refuse an output file path that cannot be written; returns it as a Path.

    Refused: an ancestor that exists and is not a directory; a directory or a symbolic link
    at the path; an existing file without ``overwrite``.
    """
    p = Path(path)
    for parent in reversed(p.absolute().parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{option} {p}: {parent} is a file, not a directory")
    if p.is_symlink() or p.is_dir() or (p.exists() and not p.is_file()):
        raise OutputError(f"{option} {p}: exists and is not a regular file; refusing to "
                          "replace it")
    if p.exists() and not overwrite:
        raise OutputError(f"{option} {p}: already exists (choose another {option} or pass "
                          "--overwrite)")
    return p


def _make_parent(final: Path, option: str) -> None:
    """Create ``final``'s parent directory, or one clear error naming ``option``."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{option} {final}: cannot create {final.parent} "
                          f"({exc.strerror})") from None


def write_output_file(path: str | Path, write: Callable[[Path], None], *, overwrite: bool,
                      what: str = "output file", option: str = "--out") -> Path:
    """``write(tmp)`` and rename it to ``path``, under the path's lock (whole or nothing)."""
    final = check_output_file(path, overwrite=overwrite, option=option)
    _make_parent(final, option)
    with output_lock(final, what):
        check_output_file(final, overwrite=overwrite, option=option)
        return replace_file(final, write)
