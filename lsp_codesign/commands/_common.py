"""Argument helpers shared by sub-commands."""

from __future__ import annotations

import argparse

from ..config import HwConfig, load_config

__all__ = ["add_hw_args", "hw_from_args"]


def add_hw_args(p: argparse.ArgumentParser, *, required: bool = True,
                array: bool = False) -> None:
    """``--hw CFG`` plus the overrides ``--block`` (and ``--array``/``--dataflow``)."""
    p.add_argument("--hw", required=required, metavar="CFG",
                   help="hardware config YAML (configs/vita.yaml, configs/tpu_v3.yaml)")
    p.add_argument("--block", metavar="BKxBN", help="override the config's block, e.g. 32x64")
    if array:
        p.add_argument("--array", metavar="RxC", help="override a systolic config's array")
        p.add_argument("--dataflow", choices=("os", "ws", "is"),
                       help="override a systolic config's dataflow")


def hw_from_args(args: argparse.Namespace, path: str | None = None) -> HwConfig:
    return load_config(path or args.hw, block=getattr(args, "block", None),
                       array=getattr(args, "array", None),
                       dataflow=getattr(args, "dataflow", None))
