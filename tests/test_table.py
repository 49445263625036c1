"""The one table printer, and the layouts of the tables built on it."""

from __future__ import annotations

from lsp_codesign.commands.evaluate import format_table as evaluate_table
from lsp_codesign.table import format_table


def test_alignment_rules_and_total():
    text = format_table(["layer", "shape", "cycles"], [["a", "1x2", "5"], ["bbb", "3x4", "1,000"]],
                        left=2, total=["TOTAL", "", "1,005"])
    assert text.splitlines() == [
        "layer  shape  cycles",
        "-----  -----  ------",
        "a      1x2         5",
        "bbb    3x4     1,000",
        "-----  -----  ------",
        "TOTAL          1,005",
    ]


def test_min_widths_and_no_rules():
    text = format_table(["a", "b"], [["x", "1"]], sep=" ", min_widths=(4, 3), rules=False)
    assert text.splitlines() == ["a      b", "x      1"]


def test_evaluate_table_layout():
    rec = {"model": "m", "method": "lsp", "flops_target": 0.5, "block": "16x16",
           "blocks_kept": 3, "blocks_total": 8, "test_images": 10,
           "models": {"dense": {"top1": 0.991, "correct": 9910, "kl_to_dense": 0.0},
                      "pruned": {"top1": None, "correct": None, "kl_to_dense": 0.5372},
                      "finetuned": None}}
    assert evaluate_table(rec).splitlines() == [
        "m  method lsp  FLOPs target 0.5  block 16x16  blocks kept 3/8  test images 10",
        "model       top-1 %   correct  KL to dense",
        "dense         99.10      9910       0.0000",
        "pruned            -         -       0.5372",
        "finetuned         -         -            -  (not finetuned yet: run 'lsp-codesign "
        "finetune RUN_DIR')",
    ]
