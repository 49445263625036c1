"""``lsp-codesign configs``: the hardware presets that ship with the package."""

from __future__ import annotations

import argparse

from ..presets import presets
from ..table import render, to_json
from ._common import add_format_arg

ORDER = 5


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "configs", help="list the hardware presets (usable as --hw NAME from any directory)",
        description="List the hardware configs that ship inside the package. Any of them can "
                    "be given by name (--hw vita, --hw vita.yaml); a file path that exists "
                    "takes precedence over a preset of the same name.")
    add_format_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    found = presets()
    if args.format == "json":
        print(to_json([{"name": p.name, "engine": p.engine, "block": p.block,
                        "description": p.description, "path": str(p.path)} for p in found]))
        return 0
    rows = [[p.name, p.engine, p.block, p.description] for p in found]
    print(render(args.format, ["preset", "engine", "block", "description"], rows, left=4))
    return 0
