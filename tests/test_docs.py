"""The docs stay true: the tests they name exist, the figures they quote match the code."""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT


def _test_names(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def _named_tests(doc: str, heading: str) -> list[tuple[str, str]]:
    """``(file, test)`` for each `` `test_x.py::test_y` `` (or `` `::test_z` `` after one in the
    same row) in the section of ``docs/doc`` under ``heading``."""
    text = (ROOT / "docs" / doc).read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    refs = []
    for row in section.splitlines():
        current = None
        for file, name in re.findall(r"`(test_\w+\.py)?::(test_\w+)`", row):
            current = file or current
            refs.append((current, name))
    return refs


def _missing(refs: list[tuple[str, str]]) -> list[str]:
    return [f"{f}::{n}" for f, n in refs if n not in _test_names(ROOT / "tests" / f)]


def test_every_test_named_by_the_allocator_pitfalls_exists():
    refs = _named_tests("allocator.md", "## Pitfalls")
    assert len(refs) >= 6
    assert _missing(refs) == []


def test_every_test_named_by_the_reliability_table_exists():
    refs = _named_tests("reliability.md", "## Classes, invariants and tests")
    assert len(refs) >= 30 and all(f for f, _n in refs)
    assert _missing(refs) == []


def test_no_doc_or_source_points_outside_the_project():
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
             *(p for d in ("lsp_codesign", "models", "sim", "hw", "tests", "bench")
               for p in (ROOT / d).rglob("*.py") if p.name != "test_docs.py")]
    assert [str(p.relative_to(ROOT)) for p in files if "DESIGN" + ".md" in p.read_text()] == []


def test_calibration_default_quoted_in_the_docs():
    from lsp_codesign.commands.allocate import DEFAULT_CALIB_EMBEDDED, DEFAULT_CALIB_OTHER

    text = (ROOT / "docs" / "allocator.md").read_text()
    assert (f"| `--calib` | {DEFAULT_CALIB_EMBEDDED} for `vit-mnist`, {DEFAULT_CALIB_OTHER} "
            "otherwise |") in text
    models = (ROOT / "docs" / "models.md").read_text()
    quoted = re.findall(r"`allocate`'s defaults?(?: of|:) (\d+) calibration images", models)
    assert quoted and all(int(n) == DEFAULT_CALIB_EMBEDDED for n in quoted)


def test_systolic_convention_table_in_config_md(tpu):
    """docs/config.md's readings of the systolic convention, recomputed from the model."""
    from lsp_codesign.cycle_model import estimate_layer
    from lsp_codesign.systolic_model import per_fold as per_fold_of

    text = (ROOT / "docs" / "config.md").read_text()
    for arr, df in (("16x16", "os"), ("16x16", "ws"), ("128x128", "os"), ("128x128", "ws")):
        cfg = tpu.with_overrides(array=arr, dataflow=df, block="16x16")
        est = estimate_layer(cfg, 197, 192, 576, None)
        # the operand stream of one fold: the reduction (N) for os, the tokens (M) for ws
        folds, per_fold = est.counters["folds"], per_fold_of(cfg, 192 if df == "os" else 197)
        conv = est.cycles
        assert conv == folds * per_fold - 1
        r = cfg.array_rows
        row = (f"| DeiT-Tiny qkv 197×192→576 | {r}×{r} | {df} | {folds} | {per_fold} | "
               f"{conv:,} | {folds * (per_fold + 1) - 1:,} (+{100 * folds / conv:.2f}%) | "
               f"{folds * per_fold:,} |")
        assert row in text, row
    # the single-fold validation case: 9 by the code, 10 in the paper's figure
    assert "| SCALE-Sim validation, 4×4×4 | 4×4 | os | 1 | 10 | 9 | 10 | 10 | 13 |" in text
