"""Area of the block-sparse engine for the five block shapes (``make area`` for each).

For each block of ``configs/vita.yaml`` (8x8, 16x16, 16x32, 32x16, 32x32; the memories as the
preset sizes them), :func:`hw.area.synthesize` runs Debian's yosys on the generated Verilog
(identical modules once, generic ``synth``, then NAND/NOR/NOT mapped for area for the CMOS
transistor estimate) and counts each SRAM
macro from its size (6T per bit). An existing ``build/<hash>/area.json`` of the same Verilog
is reused (``--force`` synthesises again). Writes ``bench/results/area.json`` (read by
``lsp-codesign report``) and ``area.md``, and prints the table::

    nice -n 5 .venv/bin/python bench/area.py          # minutes per block on 2 cores, first time
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")

from hw.area import ABC_SCRIPT, NAND2_UM2, SRAM_BIT_UM2, synthesize  # noqa: E402
from lsp_codesign.config import load_config  # noqa: E402
from lsp_codesign.table import format_markdown, format_table  # noqa: E402

BLOCKS = ["8x8", "16x16", "16x32", "32x16", "32x32"]
HEADER = ["block", "cells", "flip-flops", "logic transistors", "NAND2 eq.", "SRAM KiB",
          "SRAM transistors", "logic mm2", "SRAM mm2", "total mm2", "synth s"]


def part_names(rows: list[dict]) -> list[str]:
    """Every unit of every record, in the order of the first record that has it."""
    return list(dict.fromkeys(name for r in rows for name in r["parts"]))


def parts_rows(rows: list[dict], names: list[str]) -> list[list[str]]:
    """Logic transistors per unit and block (the share of the logic in brackets)."""
    out = []
    for r in rows:
        total = r["logic_transistors"]
        counts = [r["parts"].get(p, {}).get("transistors", 0) for p in names]
        out.append([r["block"], *(f"{c:,} ({100 * c / total:.0f}%)" for c in counts),
                    f"{total:,}"])
    return out


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [[r["block"], f"{r['cells']:,}", f"{r['flip_flops']:,}",
             f"{r['logic_transistors']:,}", f"{r['nand2_equivalents']:,.0f}",
             f"{r['sram_bits'] / 8192:,.0f}", f"{r['sram_transistors']:,}",
             f"{r['logic_mm2']:.3f}", f"{r['sram_mm2']:.3f}", f"{r['total_mm2']:.3f}",
             f"{r['seconds']:.0f}"] for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="vita")
    p.add_argument("--blocks", nargs="+", default=BLOCKS)
    p.add_argument("--force", action="store_true", help="synthesise even if area.json exists")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "area.json")
    args = p.parse_args(argv)
    base = load_config(args.config)
    rows = []
    t0 = time.perf_counter()
    for block in args.blocks:
        rec = synthesize(base.with_overrides(block=block), force=args.force, progress=True)
        rows.append(rec)
        print(f"{block}: {rec['logic_transistors']:,} logic transistors, "
              f"{rec['flip_flops']:,} flip-flops, {rec['total_mm2']:.3f} mm2 "
              f"({rec['seconds']:.0f} s)", flush=True)
    body = table_rows(rows)
    print("\n" + format_table(HEADER, body, left=1))
    names = part_names(rows)
    parts_header = ["block", *names, "logic"]
    parts = parts_rows(rows, names)
    print("\nlogic transistors by unit\n" + format_table(parts_header, parts, left=1))
    note = (f"cells and flip-flops: yosys generic synth (hierarchical, identical modules once); "
            f"transistors: yosys CMOS estimate of the NAND/NOR/NOT mapping for area (ABC "
            f"{ABC_SCRIPT}), SRAM 6T per bit; mm2: cell area at 45 nm (NAND2 "
            f"{NAND2_UM2} um2 per 4 transistors, SRAM bit {SRAM_BIT_UM2} um2), no wiring or "
            "SRAM periphery")
    print(note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": base.name, "note": note, "rows": rows,
                                    "wall_s": time.perf_counter() - t0}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        format_markdown(HEADER, body) + "\n\n" + note + "\n\nLogic transistors by unit:\n\n"
        + format_markdown(parts_header, parts) + "\n")
    print(f"wrote {args.out} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
