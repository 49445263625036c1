"""``lsp-codesign area`` (``make area BLOCK=16x16``): cells, flip-flops and area of the engine.

Wires the config and the synthesis flow of :mod:`hw.area` (Debian's yosys on the generated
Verilog; SRAMs counted from their sizes) to the table printer.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..table import render, to_json
from ._common import add_format_arg, add_hw_args, hw_from_args

ORDER = 80


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "area", help="synthesise the engine with yosys: cells, flip-flops, transistors, area",
        description="Synthesise the generated Verilog of a block-sparse config with Debian's "
                    "yosys (generic synth, then NAND/NOR/NOT for the CMOS transistor estimate) "
                    "and count the SRAMs from their configured sizes (6T per bit). Prints the "
                    "cells by type, the flip-flops, and transistors and an area at 45 nm per "
                    "part; the result is kept as build/<config-hash>/area.json. Several "
                    "minutes for a 16x16 block.")
    add_hw_args(p, required=False)
    p.set_defaults(hw="vita")
    p.add_argument("--force", action="store_true",
                   help="synthesise again even if area.json is up to date")
    add_format_arg(p)
    p.set_defaults(func=run)


def area_tables(rec: dict[str, Any], fmt: str) -> str:
    """The cells-by-type table and the transistors/area table of an area record."""
    from hw.area import NAND2_UM2, SRAM_BIT_UM2, SRAM_TRANSISTORS_PER_BIT

    cells = [[k, f"{v:,}"] for k, v in rec["cells_by_type"].items()]
    parts = [["logic (yosys CMOS estimate)", f"{rec['logic_transistors']:,}",
              f"{rec['logic_mm2']:.3f}"]]
    for name, s in sorted(rec["sram"].items()):
        parts.append([f"SRAM {name} {s['width']}x{s['depth']} ({s['bits'] / 8192:g} KiB)",
                      f"{s['bits'] * SRAM_TRANSISTORS_PER_BIT:,}",
                      f"{s['bits'] * SRAM_BIT_UM2 / 1e6:.3f}"])
    logic = rec["logic_transistors"]
    units = [[name, str(u["instances"]), f"{u['transistors']:,}",
              f"{100 * u['transistors'] / logic:.1f}%" if logic else "-"]
             for name, u in rec.get("parts", {}).items()]
    title = (f"lsp_engine, block {rec['block']}, BM {rec['tile_m']} (config "
             f"{rec['config_hash']}); {rec['yosys'].split(' (')[0]} generic synth, "
             f"{rec['seconds']:.0f} s")
    return "\n".join([
        title, "",
        render(fmt, ["cell (generic synth)", "count"], cells,
               total=["flip-flops (bits)", f"{rec['flip_flops']:,}"]), "",
        render(fmt, ["unit", "instances", "logic transistors", "share"], units,
               total=["logic", "", f"{logic:,}", "100%"]), "",
        render(fmt, ["part", "transistors", "mm2 at 45 nm"], parts,
               total=["total", f"{rec['total_transistors']:,}", f"{rec['total_mm2']:.3f}"]), "",
        f"logic: {rec['cells']:,} cells, {rec['flip_flops']:,} flip-flops, "
        f"{rec['nand2_equivalents']:,.0f} NAND2 equivalents; SRAM {rec['sram_bits']:,} bits. "
        f"mm2 = cell area at 45 nm (NAND2 {NAND2_UM2} um2, SRAM bit {SRAM_BIT_UM2} um2), "
        "without wiring or SRAM periphery."])


def run(args: argparse.Namespace) -> int:
    from hw.area import synthesize

    rec = synthesize(hw_from_args(args), force=args.force, progress=True)
    print(to_json(rec) if args.format == "json" else area_tables(rec, args.format))
    return 0
