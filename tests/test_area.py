"""``make area`` / ``lsp-codesign area``: yosys synthesis of the generated engine, SRAMs counted
from their configured sizes, the record reused, and ``report`` quoting it.

Runs on a small 4x4 config (seconds). Yosys is part of the set-up: with CI=true a missing yosys
fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from hw import area
from lsp_codesign.cli import main
from tests.conftest import tiny_config as small_config

pytestmark = [pytest.mark.rtl, pytest.mark.slow]


def need_yosys() -> None:
    if shutil.which("yosys") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must run the area flow: yosys is not installed (scripts/setup.sh)")
        pytest.skip("yosys is not installed")


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    need_yosys()
    root = tmp_path_factory.mktemp("area-build")
    return root, area.synthesize(small_config(), build_root=root, progress=False)


def test_cells_flip_flops_and_transistors(record):
    _root, rec = record
    cfg = small_config()
    assert rec["config_hash"] == cfg.config_hash() and rec["block"] == "4x4"
    assert rec["cells"] == sum(rec["cells_by_type"].values()) > 1000
    assert "lsp_sram" not in rec["cells_by_type"]  # the SRAMs are black boxes
    assert any("XOR" in k for k in rec["cells_by_type"])  # the multipliers are there
    # every accumulator bit (BM x BK x 32) and weight-buffer bit (2 x BK x BN x 8) is a flip-flop
    assert rec["flip_flops"] >= cfg.tile_m * cfg.block_k * 32 + 2 * cfg.block_k * cfg.block_n * 8
    assert set(rec["cmos_cells"]) <= {"$_NOT_", "$_NAND_", "$_NOR_", "$_DFF_P_"}
    assert rec["cmos_cells"]["$_DFF_P_"] == rec["flip_flops"]
    cmos = {"$_NOT_": 2, "$_NAND_": 4, "$_NOR_": 4, "$_DFF_P_": 16}
    assert rec["logic_transistors"] == sum(cmos[k] * v for k, v in rec["cmos_cells"].items())
    assert rec["yosys_transistor_estimate"].rstrip("+") == str(rec["logic_transistors"])
    assert rec["flow"] == area.FLOW
    parts = rec["parts"]
    assert sum(p["transistors"] for p in parts.values()) == rec["logic_transistors"]
    assert {"pe_array", "acc", "dma", "(top-level logic)"} <= set(parts)
    assert all(p["transistors"] > 0 for k, p in parts.items() if k != "decoder")


def test_merging_identical_modules_changes_no_cell(record, tmp_path):
    """Elaborated (``proc; opt``) as Amaranth wrote it and with each set of identical modules
    kept once, the engine has the same cells by type through its hierarchy."""
    import subprocess

    from hw.build import build_verilog

    root, _rec = record
    hw = build_verilog(small_config(), build_root=root)
    original = hw.verilog.read_text()
    merged, alias = area.dedupe_modules(original)
    assert len(alias) == small_config().block_k - 1       # the PEs: one module kept of BK
    totals = []
    for name, text in (("original", original), ("merged", merged)):
        src = tmp_path / f"{name}.v"
        src.write_text(text)
        stat = tmp_path / f"{name}.json"
        script = (f"read_verilog -lib {hw.sram_model}; read_verilog {src}; "
                  f"hierarchy -top {hw.top}; proc; opt; tee -q -o {stat} stat -json")
        subprocess.run(["yosys", "-q", "-p", script], check=True)
        totals.append(area._cells(stat, hw.top)[0])
    assert totals[0] == totals[1] and totals[0]["lsp_sram"] == len(area.sram_instances(original))


def test_srams_are_counted_from_the_configured_sizes(record):
    _root, rec = record
    cfg = small_config()
    want = {(f"{n}_b{b}" if m.banks > 1 else n): m.depth * m.word_bits
            for n, m in cfg.memories.items() for b in range(m.banks)}  # one macro per bank
    assert {n: s["bits"] for n, s in rec["sram"].items()} == want
    assert rec["sram_bits"] == sum(want.values())
    assert rec["sram_transistors"] == 6 * rec["sram_bits"]
    assert rec["total_mm2"] == pytest.approx(rec["logic_transistors"] / 4 * 0.798e-6
                                             + rec["sram_bits"] * 0.346e-6)


def test_the_record_is_reused_and_found_by_report(record, monkeypatch, capsys):
    root, rec = record
    cfg = small_config()
    stamp = (root.resolve() / cfg.config_hash() / area.AREA_NAME).stat().st_mtime_ns
    monkeypatch.setattr(area, "_run_yosys", lambda *a: pytest.fail("synthesised again"))
    assert area.synthesize(cfg, build_root=root, progress=False) == rec
    assert (root.resolve() / cfg.config_hash() / area.AREA_NAME).stat().st_mtime_ns == stamp
    assert area.known_area(cfg, build_root=root, tables=()) == rec
    assert area.known_area(cfg.with_overrides(block="8x8"), build_root=root, tables=()) is None
    # a record of another generator (the RTL changed since) is not quoted
    monkeypatch.setattr(area, "generator_digest", lambda: "0" * 16)
    assert area.known_area(cfg, build_root=root, tables=()) is None


def test_area_command_and_report(record, tmp_path, monkeypatch, capsys):
    root, rec = record
    cfg_file = tmp_path / "small.yaml"
    cfg_file.write_text(small_config().to_yaml())
    monkeypatch.setenv("LSP_BUILD_ROOT", str(root))
    assert main(["area", "--hw", str(cfg_file), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["logic_transistors"] == rec["logic_transistors"]
    assert main(["area", "--hw", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    assert "flip-flops (bits)" in out and f"{rec['total_transistors']:,}" in out
    assert main(["report", "--hw", str(cfg_file), "--model", "vit-mnist"]) == 0
    out = capsys.readouterr().out
    assert f"engine area (yosys synth of build/{rec['config_hash']}): " \
           f"{rec['logic_transistors']:,} logic transistors" in out
    assert main(["report", "--hw", "tpu_v3", "--model", "vit-mnist", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["area"] is None  # no RTL, no area


def test_missing_yosys_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(area, "YOSYS", "no-such-yosys")
    monkeypatch.setenv("LSP_BUILD_ROOT", str(tmp_path))
    assert main(["area", "--block", "8x8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-yosys not found on PATH" in err
