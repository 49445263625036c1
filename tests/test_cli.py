"""The estimate and report commands, and the one-line errors of the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lsp_codesign.cli import main
from lsp_codesign.masks_io import MaskSet, load_masks, save_masks
from tests.conftest import CONFIGS, write_test_run

VITA = str(CONFIGS / "vita.yaml")
TPU = str(CONFIGS / "tpu_v3.yaml")


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_estimate_json_matches_model(capsys, vita):
    from lsp_codesign.cycle_model import estimate_layer

    rc, out, _ = run(capsys, "estimate", "--hw", VITA, "--gemm", "M=197,N=192,K=576", "--json")
    assert rc == 0
    data = json.loads(out)
    assert data["estimate"]["cycles"] == estimate_layer(vita, 197, 192, 576).cycles
    assert data["estimate"]["counters"]["macs"] == 197 * 0 + 13 * 16 * 432 * 256


def test_estimate_with_mask_and_overrides(capsys, tmp_path):
    mask = np.zeros((18, 6), bool)
    mask[::2] = True
    np.save(tmp_path / "m.npy", mask)
    rc, out, _ = run(capsys, "estimate", "--hw", VITA, "--block", "32x32", "--gemm",
                     "M=197,N=192,K=576", "--mask", str(tmp_path / "m.npy"))
    assert rc == 0 and "kept blocks 54/108" in out and "speedup" in out
    rc, out, _ = run(capsys, "estimate", "--hw", TPU, "--array", "32x32", "--dataflow", "os",
                     "--block", "16x16", "--gemm", "M=197,N=192,K=576")
    # os: ceil(197/32) * ceil(576/32) = 7 * 18 folds of T + R + C - 2 = 192 + 62 cycles, - 1
    assert rc == 0 and "dataflow os" in out and f"{7 * 18 * 254 - 1:,}" in out


@pytest.mark.parametrize("argv, message", [
    (["--gemm", "M=197,N=192"], "--gemm: missing K in 'M=197,N=192'"),
    (["--gemm", "M=1,N=2,K=x"], "--gemm: expected M=..,N=..,K=.."),
    (["--gemm", "M=1,N=2,K=3", "--block", "7x"], "--block: expected the form AxB"),
    (["--gemm", "M=1,N=2,K=3", "--mask", "/nonexistent.npy"], "--mask: /nonexistent.npy: file "
                                                               "not found"),
])
def test_estimate_errors_are_one_line(capsys, argv, message):
    rc, out, err = run(capsys, "estimate", "--hw", VITA, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and message in err and err.startswith("lsp-codesign estimate:")


def test_missing_config_is_one_line(capsys, tmp_path):
    rc, _, err = run(capsys, "estimate", "--hw", str(tmp_path / "x.yaml"), "--gemm",
                     "M=1,N=1,K=1")
    assert rc == 2 and "x.yaml: config file not found" in err


def _maskset(block=(16, 16)) -> MaskSet:
    rng = np.random.default_rng(1)
    gemms = {"blocks.0.attn.qkv": (17, 64, 192), "blocks.0.mlp.fc1": (17, 64, 256),
             "head": (1, 64, 10)}
    masks = {}
    for name, (m, n, k) in gemms.items():
        masks[name] = rng.random((-(-k // block[0]), -(-n // block[1]))) < 0.5
    return MaskSet(model="toy", block_k=block[0], block_n=block[1], order=tuple(gemms),
                   gemms=gemms, masks=masks)


def test_masks_file_round_trip(tmp_path):
    ms = _maskset()
    save_masks(tmp_path / "m.safetensors", ms)
    back = load_masks(tmp_path / "m.safetensors")
    assert back.order == ms.order and back.gemms == ms.gemms and back.block == (16, 16)
    for n in ms.order:
        np.testing.assert_array_equal(back.masks[n], ms.masks[n])


def test_masks_file_errors(tmp_path):
    from lsp_codesign.errors import LspError

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(LspError, match="bad.safetensors: not a readable safetensors file"):
        load_masks(bad)
    with pytest.raises(LspError, match="mask file not found"):
        load_masks(tmp_path / "none.safetensors")
    ms = _maskset()
    ms.masks["head"] = np.ones((2, 2), bool)
    with pytest.raises(LspError, match=r"mask of head has shape \(2, 2\)"):
        MaskSet(ms.model, 16, 16, ms.order, ms.gemms, ms.masks)


def test_report_of_a_run_directory(capsys, tmp_path, vita):
    rd = write_test_run(tmp_path / "run", _maskset(), cfg=vita)
    rc, out, _ = run(capsys, "report", str(rd), "--format", "markdown", "--out", str(rd / "r"))
    assert rc == 0
    assert "| blocks.0.attn.qkv | 17x64->192 |" in out and "**TOTAL**" in out
    rep = json.loads((rd / "r" / "report.json").read_text())
    assert rep["totals"]["speedup"] > 1.0 and len(rep["layers"]) == 3
    assert (rd / "r" / "report.md").read_text() == out


def test_report_block_mismatch_and_nothing_to_report(capsys, tmp_path):
    save_masks(tmp_path / "m.safetensors", _maskset((8, 8)))
    rc, _, err = run(capsys, "report", "--hw", VITA, "--masks", str(tmp_path / "m.safetensors"))
    assert rc == 2 and "masks were made for block 8x8 but config vita has block 16x16" in err
    rc, _, err = run(capsys, "report", "--hw", VITA)
    assert rc == 2 and "nothing to report" in err
    rc, _, err = run(capsys, "report", str(tmp_path / "missing"))
    assert rc == 2 and "run directory not found" in err


@pytest.mark.torch
def test_report_dense_deit_tiny_from_timm(capsys):
    rc, out, _ = run(capsys, "report", "--hw", VITA, "--model", "deit_tiny_patch16_224",
                     "--format", "json")
    assert rc == 0
    data = json.loads(out)
    assert len(data["layers"]) == 49
    assert data["layers"][-1]["name"] == "head" and data["layers"][-1]["dense"]["m"] == 1
    macs = data["totals"]["linear_macs_dense"]
    assert macs == 12 * 197 * (192 * 576 + 192 * 192 + 2 * 192 * 768) + 192 * 1000
