"""Presets by name (``--hw vita``), ``lsp-codesign configs``, and the shape cache of ``report``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest

from lsp_codesign.cli import main
from lsp_codesign.config import ConfigError, load_config
from lsp_codesign.presets import PRESET_DIR, list_presets, preset_path, resolve_config

from conftest import CONFIGS, ROOT


def test_presets_ship_inside_the_package():
    assert list_presets() == ["tpu_v3", "vita"]
    assert PRESET_DIR == ROOT / "lsp_codesign" / "presets"
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "*.yaml" in data["package-data"]["lsp_codesign.presets"]
    # the repository's configs/ is the same folder, so configs/vita.yaml keeps working
    assert (CONFIGS / "vita.yaml").resolve() == PRESET_DIR / "vita.yaml"


@pytest.mark.parametrize("name", ["vita", "vita.yaml", "tpu_v3", "tpu_v3.yaml"])
def test_a_preset_by_name_from_any_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(name)
    assert cfg.name == name.removesuffix(".yaml")
    assert cfg == load_config(PRESET_DIR / f"{cfg.name}.yaml")


def test_an_existing_file_wins_over_a_preset(tmp_path, monkeypatch):
    text = (PRESET_DIR / "vita.yaml").read_text().replace("clock_mhz: 500", "clock_mhz: 250")
    (tmp_path / "vita.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert load_config("vita.yaml").clock_mhz == 250
    assert load_config("vita").clock_mhz == 500  # no file named "vita": the preset


def test_neither_file_nor_preset_is_one_line_listing_the_presets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"vitta: config file not found, and not a preset "
                                          r"name \(presets: tpu_v3, vita;"):
        resolve_config("vitta")
    assert preset_path("configs/vita.yaml") is None and preset_path("") is None
    assert main(["estimate", "--hw", "vitta.yaml", "--gemm", "M=1,N=1,K=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "presets: tpu_v3, vita" in err


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_configs_lists_the_presets(fmt, capsys):
    assert main(["configs", "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        doc = json.loads(out)
        assert [d["name"] for d in doc] == ["tpu_v3", "vita"]
        assert doc[1]["engine"] == "block_sparse" and doc[1]["block"] == "16x16"
        assert doc[1]["description"].startswith("ViTA-like block-sparse engine")
    else:
        lines = out.strip().splitlines()
        assert lines[0].strip("| ").startswith("preset")
        assert any("vita" in ln and "ViTA-like" in ln for ln in lines)
        assert any("tpu_v3" in ln and "systolic" in ln for ln in lines)
        if fmt == "markdown":
            assert lines[1] == "|---|---|---|---|"


def _report_in_subprocess(tmp_path, cache, model="deit_tiny_patch16_224"):
    """`report --model` in a fresh interpreter; prints whether torch was imported."""
    code = ("import sys\nfrom lsp_codesign.cli import main\n"
            f"rc = main(['report', '--model', {model!r}, '--hw', 'vita', '--format', 'json'])\n"
            "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\nsys.exit(rc)\n")
    env = dict(os.environ, LSP_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_warm_report_imports_neither_torch_nor_timm(tmp_path):
    cache = tmp_path / "cache"
    cold = _report_in_subprocess(tmp_path, cache)
    assert cold.returncode == 0, cold.stderr
    assert "TORCH True" in cold.stderr  # the first time: shapes read off timm (meta device)
    assert len(list((cache / "shapes").glob("*.json"))) == 1
    warm = _report_in_subprocess(tmp_path, cache)
    assert warm.returncode == 0, warm.stderr
    assert "TORCH False" in warm.stderr
    assert json.loads(warm.stdout) == json.loads(cold.stdout)


def test_a_broken_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    from lsp_codesign.vit_shapes import GemmShape, ModelShapes, cached_shapes

    monkeypatch.setenv("LSP_CACHE_DIR", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return ModelShapes("m", 5, (GemmShape("fc", 5, 8, 16),))

    key = {"model": "m", "timm": "1"}
    first = cached_shapes(key, build)
    assert cached_shapes(key, build) == first and len(calls) == 1
    (entry,) = (tmp_path / "shapes").glob("*.json")
    for junk in ("{", '{"format": 1}', json.dumps({"format": 1, "key": key, "model": "m",
                                                    "tokens": 5, "layers": [{"name": "fc"}]})):
        entry.write_text(junk)
        assert cached_shapes(key, build) == first
    assert len(calls) == 4
    assert cached_shapes({"model": "m", "timm": "2"}, build) == first and len(calls) == 5
    monkeypatch.setenv("LSP_CACHE_DIR", "off")
    cached_shapes(key, build)
    assert len(calls) == 6
