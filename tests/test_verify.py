"""verify: quantised real activations through the engine, checked bit-exact and cycle-exact.

The RTL runs are in tests/test_e2e_rtl.py; here the plain-Python ISS (the executable spec)
stands in for the simulator, and a corrupted runner shows that mismatches are caught and named.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from lsp_codesign.cli import main
from lsp_codesign.errors import LspError
from lsp_codesign.quant import dequantize, quantize_activations, quantize_weights
from lsp_codesign.commands.verify import verify_run
from lsp_codesign.verify import iss_runner, sample_layers

pytestmark = pytest.mark.torch


def make_run(rd, block="16x16", p=0.5, seed=0):
    """A run directory for vit-mnist with random weights and random block masks."""
    import torch

    from lsp_codesign.config import load_config
    from lsp_codesign.masks_io import MaskSet
    from lsp_codesign.vit_shapes import module_vit_shapes
    from models.registry import create_model, save_checkpoint
    from tests.conftest import CONFIGS, write_test_run

    rd.parent.mkdir(parents=True, exist_ok=True)
    weights = rd.parent / f"{rd.name}-weights.safetensors"
    torch.manual_seed(seed)
    model = create_model("vit-mnist", pretrained_default=False)
    save_checkpoint(model, weights, model_name="vit-mnist")
    cfg = load_config(CONFIGS / "vita.yaml", block=block)
    shapes = module_vit_shapes(model, "vit-mnist")
    rng = np.random.default_rng(seed)
    gemms = {s.name: (s.m, s.n, s.k) for s in shapes}
    masks = {s.name: rng.random((-(-s.k // cfg.block_k), -(-s.n // cfg.block_n))) < p
             for s in shapes}
    masks["blocks.1.mlp.fc1"][:] = False          # an all-pruned layer
    masks["blocks.0.attn.qkv"][1] = False          # an all-pruned block row
    ms = MaskSet("vit-mnist", cfg.block_k, cfg.block_n, tuple(gemms), gemms, masks)
    return write_test_run(rd, ms, checkpoint=weights, seed=seed, cfg=cfg)


def test_quantisation_scheme():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(17, 64))
    xq, s = quantize_activations(x)
    assert xq.dtype == np.int8 and np.abs(xq).max() == 127 and xq.min() >= -127
    assert np.abs(xq * s - x).max() <= s / 2 + 1e-12
    w = rng.normal(size=(10, 64))
    w[3] = 0
    wq, ws = quantize_weights(w)
    assert ws[3] == 1.0 and (wq[3] == 0).all() and (np.abs(wq).max(axis=1)[[0, 1]] == 127).all()
    y = dequantize(xq.astype(np.int64) @ wq.T.astype(np.int64), s, ws)
    assert np.abs(y - x @ w.T).max() < 0.05 * np.abs(x @ w.T).max()


def test_verify_on_the_iss_passes_and_writes_json(tmp_path, capsys):
    rd = make_run(tmp_path / "run")
    assert main(["verify", str(rd), "--sim", "iss"]) == 0
    out = capsys.readouterr().out
    assert "all layers bit-exact and cycle-exact" in out
    data = json.loads((rd / "verify.json").read_text())
    assert data["totals"]["ok"] and data["totals"]["layers"] == 17
    assert data["totals"]["measured_speedup"] == pytest.approx(data["totals"]["model_speedup"])
    fc1 = next(lay for lay in data["layers"] if lay["name"] == "blocks.1.mlp.fc1")
    assert fc1["kept_blocks"] == 0 and fc1["counters_rtl"]["compute"] == 0
    assert all(lay["float_rel_err"] < 0.05 for lay in data["layers"] if lay["kept_blocks"])


def test_mismatches_are_caught_and_named(tmp_path):
    rd = make_run(tmp_path / "run")

    def corrupting_runner(cfg, programs, progress=False):
        res = iss_runner(cfg, programs)
        first = res[0]
        first.y_words[0] ^= 1                      # flip one bit of Y[0, 0]
        res[2] = replace(res[2], counters=dict(res[2].counters,
                                               wmem_reads=res[2].counters["wmem_reads"] + 1))
        return res

    res = verify_run(rd, sim="iss", runner=corrupting_runner, progress=False)
    assert not res.ok
    bad = {lc.name: lc for lc in res.layers if not lc.ok}
    assert set(bad) == {"blocks.0.attn.qkv", "blocks.0.mlp.fc1"}
    assert bad["blocks.0.attn.qkv"].first_diff.startswith(
        "first differing element Y[0, 0] (token tile 0, block row 0)")
    assert bad["blocks.0.mlp.fc1"].counter_diffs[0].startswith("wmem_reads: RTL")


def test_cli_exit_status_on_mismatch(tmp_path, monkeypatch, capsys):
    rd = make_run(tmp_path / "run", block="8x8", p=0.3, seed=1)
    import lsp_codesign.commands.verify as v

    def bad(cfg, programs, progress=False):
        res = iss_runner(cfg, programs)
        return [replace(r, counters=dict(r.counters, cycles=r.counters["cycles"] + 1))
                for r in res]

    monkeypatch.setattr(v, "iss_runner", bad)
    assert main(["verify", str(rd), "--sim", "iss", "--layers", "3"]) == 1
    err = capsys.readouterr().err
    assert "layer(s) failed" in err and err.count("\n") == 1


def test_bad_inputs(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope"), "--sim", "iss"]) == 2
    assert "run directory not found" in capsys.readouterr().err
    rd = make_run(tmp_path / "run")
    (rd / "hw.yaml").write_text((rd / "hw.yaml").read_text().replace("16x16", "8x8"))
    with pytest.raises(LspError, match="hw.yaml has block 8x8 but the masks use 16x16"):
        verify_run(rd, sim="iss")
    with pytest.raises(LspError, match="--layers: expected 'all' or a positive number"):
        sample_layers(["a", "b"], "some")
    with pytest.raises(LspError, match="--layers: 3 is not between 1 and the 2 layers"):
        sample_layers(["a", "b"], "3")
    assert sample_layers(["a", "b", "c", "d"], "2", seed=1) == sample_layers(
        ["a", "b", "c", "d"], "2", seed=1)


def test_report_marks_measured_layers_and_writes_plots(tmp_path, capsys):
    rd = make_run(tmp_path / "run")
    assert main(["verify", str(rd), "--sim", "iss", "--layers", "5"]) == 0
    capsys.readouterr()
    assert main(["report", str(rd), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    measured = [lay for lay in data["layers"] if lay["measured"]]
    assert len(measured) == 5 and {lay["source"] for lay in measured} == {"ISS"}
    ver = json.loads((rd / "verify.json").read_text())
    for lay in measured:
        v = next(x for x in ver["layers"] if x["name"] == lay["name"])
        assert lay["pruned"]["cycles"] == v["rtl_cycles"]
        assert lay["dense"]["cycles"] == v["dense_rtl_cycles"]
    for png in ("layers_speedup_energy.png", "energy_breakdown.png", "speedup_vs_flops.png"):
        assert (rd / "report" / png).stat().st_size > 5000
    assert "Energy by component" in (rd / "report" / "report.md").read_text()
