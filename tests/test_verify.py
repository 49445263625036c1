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
from lsp_codesign.config import load_config
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


def test_quantisation_rounds_ties_to_even():
    """Values exactly halfway between two integers (after scaling) round to the even one, as
    numpy's rint does; a round-half-away-from-zero rule would give 1, 3, -1, -3 here."""
    x = np.array([[127.0, 0.5, 2.5, -0.5, -2.5, 1.5]])       # max 127: scale exactly 1
    xq, s = quantize_activations(x)
    assert s == 1.0 and xq.tolist() == [[127, 0, 2, 0, -2, 2]]
    w = np.array([[254.0, 1.0, 5.0, -3.0], [0.0, 0.0, 0.0, 0.0]])  # row 0: scale exactly 2
    wq, ws = quantize_weights(w)
    assert ws.tolist() == [2.0, 1.0] and wq.tolist() == [[127, 0, 2, -2], [0, 0, 0, 0]]


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
    assert bad["blocks.0.mlp.fc1"].counter_diffs[0].startswith("wmem_reads: ISS")


def test_a_mismatch_in_a_late_row_is_caught(tmp_path):
    """Corrupt only the last token row of one layer's result: the whole Y is compared."""
    from lsp_codesign.compiler import encode_y, read_y

    rd = make_run(tmp_path / "run")
    seen = {}

    def late_row_runner(cfg, programs, progress=False):
        res = iss_runner(cfg, programs)
        prog = programs[1]
        y = read_y(cfg, prog, res[1].y_words)
        y[-1, -1] += 1                             # the last token, the last output feature
        seen["name"], seen["shape"] = prog.extra["name"], y.shape
        res[1] = replace(res[1], y_words=encode_y(cfg, prog, y))
        return res

    res = verify_run(rd, sim="iss", runner=late_row_runner, progress=False)
    bad = [lc for lc in res.layers if not lc.ok]
    assert [lc.name for lc in bad] == [seen["name"]]
    m, k = seen["shape"]
    assert bad[0].first_diff.startswith(f"first differing element Y[{m - 1}, {k - 1}]")
    assert "ISS" in bad[0].first_diff and "1 of" in bad[0].first_diff


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
    other = tmp_path / "8x8.yaml"
    other.write_text((rd / "hw.yaml").read_text().replace("16x16", "8x8"))
    with pytest.raises(LspError, match="8x8.yaml has block 8x8 but the masks use 16x16"):
        verify_run(rd, sim="iss", hw=load_config(other))
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


# -- drift: a run's hw.yaml, allocation or masks changed after allocate ----------------------


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_an_edited_hw_yaml_is_refused_unless_given_explicitly(tmp_path, capsys):
    rd = make_run(tmp_path / "run")
    _edit(rd / "hw.yaml", "tile_m: 16", "tile_m: 32")
    assert main(["verify", str(rd), "--sim", "iss", "--layers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hw.yaml: changed since 'lsp-codesign allocate' priced" in err
    assert not (rd / "verify.json").exists()
    assert main(["report", str(rd)]) == 2
    assert "changed since" in capsys.readouterr().err
    # given on purpose with --hw, it is used, and the command says so
    assert main(["verify", str(rd), "--sim", "iss", "--layers", "2", "--hw",
                 str(rd / "hw.yaml")]) == 0
    err = capsys.readouterr().err
    assert "note: using" in err and "not the run's hw.yaml" in err
    ver = json.loads((rd / "verify.json").read_text())
    assert ver["hw_overridden"] is True and ver["config"]["tile_m"] == 32


def test_an_edited_energy_figure_changes_nothing_silently(tmp_path, capsys):
    rd = make_run(tmp_path / "run")
    assert main(["report", str(rd), "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)["totals"]["energy_uj_pruned"]
    _edit(rd / "hw.yaml", "mac_pj: 0.3", "mac_pj: 3.0")
    assert main(["report", str(rd)]) == 2
    assert "changed since" in capsys.readouterr().err
    assert main(["report", str(rd), "--hw", str(rd / "hw.yaml"), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["totals"]["energy_uj_pruned"] > before and "note: using" in err


@pytest.mark.parametrize("edit", ["seed", "masks"])
def test_an_edited_allocation_or_masks_file_is_refused(tmp_path, capsys, edit):
    rd = make_run(tmp_path / "run")
    if edit == "seed":
        _edit(rd / "allocation.json", '"seed": 0', '"seed": 1')
    else:
        from lsp_codesign.masks_io import MaskSet, load_masks, save_masks

        ms = load_masks(rd / "masks.safetensors")
        flipped = {k: v.copy() for k, v in ms.masks.items()}
        flipped["head"][0, 0] = not flipped["head"][0, 0]
        save_masks(rd / "masks.safetensors",
                   MaskSet(ms.model, ms.block_k, ms.block_n, ms.order, ms.gemms, flipped))
    for cmd in (["verify", str(rd), "--sim", "iss"], ["report", str(rd)],
                ["evaluate", str(rd), "--test-images", "10", "--no-progress"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "changed after 'lsp-codesign allocate' wrote them" in err and err.count("\n") == 1


def test_report_ignores_a_verify_json_of_another_config(tmp_path, capsys):
    rd = make_run(tmp_path / "run")
    assert main(["verify", str(rd), "--sim", "iss", "--layers", "3"]) == 0
    capsys.readouterr()
    other = tmp_path / "fast.yaml"
    other.write_text((rd / "hw.yaml").read_text().replace("clock_mhz: 500", "clock_mhz: 800"))
    assert main(["report", str(rd), "--hw", str(other), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert not any(lay["measured"] for lay in json.loads(out)["layers"])
    assert "verify.json was measured on another allocation, config or masks" in err
    assert main(["report", str(rd), "--format", "json"]) == 0
    assert sum(lay["measured"] for lay in json.loads(capsys.readouterr().out)["layers"]) == 3
