"""Argument helpers shared by sub-commands."""

from __future__ import annotations

import argparse

from ..config import HwConfig, load_config
from ..table import FORMATS

__all__ = ["add_hw_args", "hw_from_args", "add_format_arg"]


def add_hw_args(p: argparse.ArgumentParser, *, required: bool = True,
                array: bool = False) -> None:
    """``--hw CFG`` plus the overrides ``--block`` (and ``--array``/``--dataflow``)."""
    p.add_argument("--hw", required=required, metavar="CFG",
                   help="hardware config: a YAML file, or a preset by name (vita, tpu_v3; "
                        "`lsp-codesign configs` lists them)")
    p.add_argument("--block", metavar="BKxBN", help="override the config's block, e.g. 32x64")
    if array:
        p.add_argument("--array", metavar="RxC", help="override a systolic config's array")
        p.add_argument("--dataflow", choices=("os", "ws", "is"),
                       help="override a systolic config's dataflow")


def hw_from_args(args: argparse.Namespace, path: str | None = None) -> HwConfig:
    return load_config(path or args.hw, block=getattr(args, "block", None),
                       array=getattr(args, "array", None),
                       dataflow=getattr(args, "dataflow", None))


def add_format_arg(p: argparse.ArgumentParser, *, json_alias: bool = False) -> None:
    """``--format text|markdown|json`` (default text), the output option of every command that
    prints a table; ``json_alias`` adds ``--json`` as another way to say ``--format json``."""
    p.add_argument("--format", choices=FORMATS, default="text", dest="format",
                   help="output: an aligned text table (default), a markdown table, or JSON")
    if json_alias:
        p.add_argument("--json", action="store_const", const="json", dest="format",
                       help="the same as --format json")
