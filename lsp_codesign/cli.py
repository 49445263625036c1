"""``lsp-codesign``: the command line.

Each sub-command lives in its own module under :mod:`lsp_codesign.commands`; a module there
provides ``ORDER`` (its place in ``--help``) and ``register(subparsers)``, which adds its parser
and sets ``func``. Heavy imports (torch, timm, cocotb) stay inside the command functions, so
``lsp-codesign --help`` is fast.

One error path: whatever stops a command becomes one line on stderr, ``lsp-codesign COMMAND:
error: ...``, and an exit status. :class:`~lsp_codesign.errors.LspError` (bad input, exit 2; a
verification mismatch, exit 1) names the field, file or value; an ``OSError`` names the file
(exit 2); Ctrl-C exits 130 and SIGTERM/SIGHUP 128 + the signal, after the same cleanup; anything
else is a bug and says so (exit 1; ``LSP_DEBUG=1`` shows the traceback). Warnings from the
libraries (torch, timm, amaranth) are not shown.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import warnings

from . import __version__
from .atomic import Terminated, signals_as_exceptions
from .errors import LspError

__all__ = ["main", "build_parser"]


def _command_modules() -> list:
    from . import commands

    mods = [importlib.import_module(f"{commands.__name__}.{info.name}")
            for info in pkgutil.iter_modules(commands.__path__) if not info.name.startswith("_")]
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``--help`` gives the usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lsp-codesign",
        description="Hardware/software co-design for block-sparse Vision Transformers: "
                    "cycle/energy model, LSP allocator, RTL verification and reports.")
    parser.add_argument("--version", action="version", version=f"lsp-codesign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in _command_modules():
        mod.register(sub)
    return parser


MAX_MESSAGE = 1000


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """A message on one line (line breaks become ``; ``), at most ``limit`` characters."""
    text = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failure(exc: BaseException) -> tuple[str, int]:
    """The message and exit status for an exception that reached the command line."""
    if isinstance(exc, LspError):
        return f"error: {one_line(str(exc))}", exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, Terminated):
        return f"terminated ({exc})", 128 + exc.signum
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"error: {where}{one_line(exc.strerror or str(exc))}", 2
    if isinstance(exc, MemoryError):
        return "error: out of memory (try fewer images or a smaller --batch-size)", 2
    return (f"internal error (a bug in lsp-codesign; LSP_DEBUG=1 shows where): "
            f"{type(exc).__name__}: {one_line(str(exc), 300)}", 1)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that relaunch
    debug = os.environ.get("LSP_DEBUG", "") not in ("", "0")
    loggers = [logging.getLogger(n) for n in ("timm", "torch", "amaranth", "cocotb", "matplotlib")]
    levels = [lg.level for lg in loggers]
    try:
        with signals_as_exceptions(), warnings.catch_warnings():
            if not debug:
                warnings.simplefilter("ignore")
                for lg in loggers:
                    lg.setLevel(logging.ERROR)
            rc = args.func(args)
    except BaseException as exc:  # noqa: B036 -- every way out becomes one line and a status
        if debug or isinstance(exc, SystemExit):
            raise
        message, status = _failure(exc)
        if not getattr(exc, "quiet", False):  # quiet: another process (rank 0) reports it
            print(f"lsp-codesign {args.command}: {message}", file=sys.stderr)
        return status
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
