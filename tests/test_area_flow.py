"""The pieces of the area flow that need no synthesis (``hw/area.py``): identical modules kept
once, cells summed through the hierarchy, and Yosys 0.23's ``stat -json`` output read."""

from __future__ import annotations

import json

import pytest

from hw import area

VERILOG = """\
(* top =  1  *)
module top(a, b, y);
  input [3:0] a;
  input [3:0] b;
  output [3:0] y;
  \\top.u0  u0 (
    .a(a), .y(y0)
  );
  \\top.u1 u1 (
    .a(b), .y(y1)
  );
  \\top.v  v (
    .a(a), .y(y2)
  );
  lsp_sram #(.WIDTH(8), .DEPTH(4)) m (.clk(clk));
  always @(posedge clk) y <= y0;
endmodule

(* generator = "Amaranth" *)
module \\top.u0 (a, y);
  input [3:0] a;
  output [3:0] y;
  assign y = ~a;
endmodule

(* generator = "Amaranth" *)
module \\top.u1 (a, y);
  input [3:0] a;
  output [3:0] y;
  assign y = ~a;
endmodule

(* generator = "Amaranth" *)
module \\top.v (a, y);
  input [3:0] a;
  output [3:0] y;
  assign y = a;
endmodule
"""


def test_identical_modules_are_kept_once_and_their_instances_renamed():
    text, alias = area.dedupe_modules(VERILOG)
    assert alias == {"\\top.u1": "\\top.u0"}
    assert text.count("module \\top.u1 ") == 0 and text.count("module \\top.u0 ") == 1
    assert "module \\top.v " in text                     # same ports, another body: kept
    assert "  \\top.u0  u0 (" in text and "  \\top.u0 u1 (" in text   # the space is kept
    assert "  \\top.v  v (" in text and "lsp_sram #(.WIDTH(8)" in text
    assert "always @(posedge clk)" in text
    # nothing else changes: the text is the original minus u1's definition and one name
    start = VERILOG.index('(* generator = "Amaranth" *)\nmodule \\top.u1')
    u1 = VERILOG[start:VERILOG.index("endmodule\n", start) + len("endmodule\n")]
    assert text == VERILOG.replace(u1, "").replace("\\top.u1 u1", "\\top.u0 u1")


def test_nothing_to_merge_leaves_the_text_alone():
    one = VERILOG[:VERILOG.index('(* generator = "Amaranth" *)\nmodule \\top.u1')]
    assert area.dedupe_modules(one) == (one, {})


def test_cells_are_summed_through_the_hierarchy():
    modules = {
        "\\top": {"num_cells_by_type": {"$_NOT_": 3, "mid": 2, "lsp_sram": 4}},
        "\\mid": {"num_cells_by_type": {"$_NAND_": 5, "leaf": 3}},
        "\\leaf": {"num_cells_by_type": {"$_NAND_": 1, "$_DFF_P_": 2}},
    }
    assert area.hierarchy_totals(modules, "top") == {
        "$_NOT_": 3, "$_NAND_": 2 * (5 + 3 * 1), "$_DFF_P_": 2 * 3 * 2, "lsp_sram": 4}
    assert area.hierarchy_totals(modules, "\\mid") == {"$_NAND_": 8, "$_DFF_P_": 6}
    with pytest.raises(area.AreaError, match="no module nowhere"):
        area.hierarchy_totals(modules, "nowhere")
    loop = {"\\a": {"num_cells_by_type": {"b": 1}}, "\\b": {"num_cells_by_type": {"a": 1}}}
    with pytest.raises(area.AreaError, match="instantiates itself"):
        area.hierarchy_totals(loop, "a")


def test_yosys_hierarchy_lines_in_stat_json_are_dropped(tmp_path):
    """Yosys 0.23 prints its hierarchy table inside ``stat -json``'s output (not JSON)."""
    stat = tmp_path / "stat.json"
    stat.write_text(
        '{\n   "modules": {\n      "\\\\top": {\n         "num_cells": 1,\n'
        '         "num_cells_by_type": {\n            "$_NOT_": 1,\n            "sub": 2\n'
        '         }\n      },\n      "\\\\sub": {\n         "num_cells_by_type": {\n'
        '            "$_NOR_": 3\n         }\n      }\n   },\n'
        '       top                   1\n       sub                   2\n'
        '   "design": {\n      "estimated_num_transistors": "26"\n   }\n}\n')
    with pytest.raises(json.JSONDecodeError):
        json.loads(stat.read_text())
    totals, design, modules = area._cells(stat, "top")
    assert totals == {"$_NOT_": 1, "$_NOR_": 6} and design["estimated_num_transistors"] == "26"
    assert set(modules) == {"\\top", "\\sub"}
    stat.write_text("{ not json")
    with pytest.raises(area.AreaError, match="unreadable"):
        area._cells(stat, "top")
