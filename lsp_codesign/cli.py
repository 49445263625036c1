"""``lsp-codesign``: the command line.

Each sub-command lives in its own module under :mod:`lsp_codesign.commands`; a module there
provides ``ORDER`` (its place in ``--help``) and ``register(subparsers)``, which adds its parser
and sets ``func``. Heavy imports (torch, timm, cocotb) stay inside the command functions, so
``lsp-codesign --help`` is fast.

Every :class:`~lsp_codesign.errors.LspError` becomes one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except LspError as exc:
        print(f"lsp-codesign {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lsp-codesign {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
