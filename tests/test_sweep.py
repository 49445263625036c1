"""``lsp-codesign sweep``: the grid, the cache, the table, the fronts, and every bad input.

Sweeps here run in this process (the serial executor) on the embedded model with a few
calibration and test images; the process-pool and Ray backends, concurrent sweeps and the
Ray address checks are in ``test_sweep_backends.py``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lsp_codesign.cli import main
from lsp_codesign.config import load_config
from lsp_codesign.fingerprint import digest, masks_digest, weights_digest
from lsp_codesign.masks_io import load_masks
from lsp_codesign.sweep import (SweepError, SweepStore, build_grid, pareto_front, parse_list)
from lsp_codesign.sweep.pareto import mark_fronts
from lsp_codesign.sweep.plan import (Settings, calibration_key, eval_key, point_key,
                                     verify_key)
from lsp_codesign.sweep.store import calibration_from_arrays, calibration_to_arrays

from conftest import CONFIGS

VITA = str(CONFIGS / "vita.yaml")
TPU = str(CONFIGS / "tpu_v3.yaml")
SMALL = ["--calib", "32", "--batch-size", "16"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sweep(out: Path, *extra: str) -> int:
    return main(["sweep", "--hw", VITA, "--out", str(out), "--quiet", *SMALL, *extra])


def table(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


# ---- the grid ----------------------------------------------------------------------------------


def test_grid_is_the_product_of_the_axes_in_order():
    g = build_grid([VITA, TPU], "8x8,16x16", "0.3,0.7", "lsp,uniform", "16,32")
    pts = g.points()
    assert len(pts) == 2 * 2 * 2 * 2 * 2
    assert [p.label for p in pts[:3]] == ["vita 8x8 t16 R0.3 lsp", "vita 8x8 t16 R0.3 uniform",
                                          "vita 8x8 t16 R0.7 lsp"]
    assert pts[-1].label == "tpu_v3 16x16 t32 R0.7 uniform"
    assert pts[-1].config.engine == "systolic" and pts[-1].config.tile_m == 32
    assert g.block_sizes() == [(8, 8), (16, 16)]


def test_grid_defaults_keep_each_configs_block_and_tile():
    g = build_grid([VITA], None, "0.5", "lsp", None)
    cfg = load_config(VITA)
    assert [(p.block, p.tile_m) for p in g.points()] == [(cfg.block_str, cfg.tile_m)]


@pytest.mark.parametrize("option, value, expect", [
    ("--blocks", "", "empty list"), ("--blocks", " , ", "empty list"),
    ("--blocks", "16x16,,32x32", "empty item"), ("--blocks", "16x16,16x16", "listed twice"),
    ("--blocks", "abc", "'abc'"), ("--blocks", "12x12", "powers of two"),
    ("--tile-m", "3", "tile_m"), ("--tile-m", "x", "not an integer"),
    ("--flops", "0", "(0, 1]"), ("--flops", "1.5", "(0, 1]"), ("--flops", "nan", "finite"),
    ("--flops", "-0.2", "(0, 1]"), ("--flops", "abc", "not a number"),
    ("--flops", "0.5,0.5", "listed twice"), ("--methods", "lsp,foo", "unknown method 'foo'"),
    ("--methods", "", "empty list"),
])
def test_bad_axis_is_one_line_naming_the_option(option, value, expect, tmp_path, capsys):
    out = tmp_path / "sw"
    rc = main(["sweep", "--hw", VITA, "--out", str(out), option, value])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and option in err and expect in err, err
    assert not out.exists()


def test_contradictory_configs_are_refused(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "--hw", VITA, "--hw", VITA, "--out", str(out)]) == 2
    assert "listed twice" in capsys.readouterr().err
    copy = tmp_path / "same.yaml"
    copy.write_text(Path(VITA).read_text())
    assert main(["sweep", "--hw", VITA, "--hw", str(copy), "--out", str(out)]) == 2
    assert "give the same config" in capsys.readouterr().err
    assert main(["sweep", "--hw", TPU, "--blocks", "256x256", "--out", str(out)]) == 2
    assert "does not fit the 128x128 array" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv, expect", [
    (["--blocks", "64x64"], "does not suit layer"),
    (["--blocks", "16x16", "--flops", "0.02"], "below what pruning can reach"),
    (["--exclude", "nothing*"], "matches no linear layer"),
    (["--calib", "0"], "calibration set is empty"),
    (["--finetune-epochs", "-1"], "--finetune-epochs"),
    (["--test-images", "5"], "needs --evaluate"),
    (["--address", "127.0.0.1:1"], "needs --backend ray"),
    (["--model", "no_such_model"], "unknown model"),
])
def test_bad_input_needing_the_model_writes_nothing(argv, expect, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "--hw", VITA, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err, err
    assert not out.exists()


def test_out_must_be_a_sweep_directory(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["sweep", "--hw", VITA, "--out", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert main(["sweep", "--hw", VITA, "--out", str(other)]) == 2
    assert "not a sweep's" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["mine.txt"]


def test_parse_list_accepts_repeated_options():
    assert parse_list(["0.3,0.5", "0.7"], "--flops", float) == (0.3, 0.5, 0.7)


# ---- fronts --------------------------------------------------------------------------------------


def test_pareto_front_by_hand():
    # (energy, top1): b dominates a; c trades energy for accuracy; d equals c (both kept)
    x = [3.0, 2.0, 1.0, 1.0, 4.0]
    y = [0.5, 0.6, 0.4, 0.4, 0.9]
    assert pareto_front(x, y, maximize_y=True) == [False, True, True, True, True]
    assert pareto_front(x, y, maximize_y=False) == [False, False, True, True, False]


def test_pareto_front_against_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = rng.integers(0, 6, 30).astype(float), rng.integers(0, 6, 30).astype(float)
        on = pareto_front(x, y, maximize_y=True)
        for i in range(30):
            dominated = any(x[j] <= x[i] and y[j] >= y[i] and (x[j] < x[i] or y[j] > y[i])
                            for j in range(30))
            assert on[i] == (not dominated)


def test_front_labels_do_not_overprint():
    from matplotlib.figure import Figure

    from lsp_codesign.sweep.pareto import _label_offsets

    ax = Figure(figsize=(9.0, 6.0), dpi=110).add_subplot()
    pts = [(10.0, 50.0), (10.1, 50.2), (10.2, 50.1), (30.0, 10.0), (49.9, 99.0), (50.0, 99.1)]
    ax.scatter(*zip(*pts))
    labels = ["vita 16x16 t16 R0.5 lsp"] * len(pts)
    offs = _label_offsets(ax, pts, labels)
    to_pt = 72.0 / ax.figure.dpi
    boxes = []
    for p, (dx, dy) in zip(pts, offs):
        x, y = (v * to_pt for v in ax.transData.transform(p))
        boxes.append((x + dx, y + dy, 0.55 * 6.5 * len(labels[0])))
    for i, (xa, ya, wa) in enumerate(boxes):
        for xb, yb, wb in boxes[i + 1:]:
            assert abs(ya - yb) >= 1.25 * 6.5 or xa >= xb + wb or xb >= xa + wa
    right = ax.transAxes.transform((1.0, 0.0))[0] * to_pt
    assert all(x + w <= right for x, _, w in boxes)  # the right-hand labels turned left


def test_fronts_are_none_without_accuracy():
    rows = [{"energy_uj": 1.0, "latency_us": 2.0, "top1": None, "top1_finetuned": None,
             "front_energy_top1": None, "front_latency_energy": None}]
    mark_fronts(rows)
    assert rows[0]["front_energy_top1"] is None and rows[0]["front_latency_energy"] is True


# ---- keys ----------------------------------------------------------------------------------------


def _settings(**kw) -> Settings:
    base = dict(model="vit-mnist", source="registry", checkpoint=None, weights="w0", calib=32,
                seed=0, data=None, batch_size=16, calib_set={"image_ids": "a"}, exclude=(),
                options={"curvature": "empirical", "fisher_samples": 1, "first_order": False,
                         "score": "delta"}, kappa=1e-7, smooth=0.01, code="c0")
    base.update(kw)
    return Settings(**base)


def test_every_input_of_a_point_changes_its_key():
    g = build_grid([VITA, TPU], "16x16,32x32", "0.5,0.7", "lsp,uniform", "16,32")
    s = _settings()
    keys = {point_key(s, calibration_key(s, p.config.block), p) for p in g.points()}
    assert len(keys) == len(g.points())  # config, block, tile, target, method
    p = g.points()[0]
    ref = point_key(s, calibration_key(s, p.config.block), p)
    assert ref == point_key(_settings(), calibration_key(_settings(), p.config.block), p)
    for change in [dict(weights="w1"), dict(calib_set={"image_ids": "b"}), dict(seed=1),
                   dict(options={**s.options, "curvature": "ggn"}), dict(kappa=1e-6),
                   dict(smooth=0.02), dict(exclude=("head",)), dict(code="c1"),
                   dict(batch_size=8), dict(device="cuda")]:
        s2 = _settings(**change)
        assert point_key(s2, calibration_key(s2, p.config.block), p) != ref, change


def test_evaluation_and_verification_keys_follow_masks_and_settings():
    s = _settings(evaluate=True, test_set={"images": 100})
    cfg = load_config(VITA)
    assert eval_key(s, "m1") != eval_key(s, "m2")
    assert eval_key(s, "m1") != eval_key(_settings(evaluate=True, test_set={"images": 200}),
                                         "m1")
    assert eval_key(s, "m1") != eval_key(_settings(evaluate=True, test_set={"images": 100},
                                                   finetune_epochs=1), "m1")
    assert verify_key(_settings(verify="iss"), "m1", cfg) != verify_key(
        _settings(verify="icarus"), "m1", cfg)
    assert digest({"a": 1, "b": [1.0, 2]}) == digest({"b": [1.0, 2], "a": 1})


def test_weights_and_masks_digests_see_one_changed_value():
    import torch

    from models.registry import create_model

    m = create_model("vit-mnist")
    d0 = weights_digest(m)
    with torch.no_grad():
        m.head.bias[3] += 1e-6
    assert weights_digest(m) != d0


# ---- the store -------------------------------------------------------------------------------------


def test_calibration_round_trips_through_the_cache(tmp_path):
    from lsp_codesign.allocator import CurvatureOptions, calibrate
    from models.data import calibration_loader
    from models.registry import create_model

    m = create_model("vit-mnist")
    opts = CurvatureOptions.resolve("fisher", samples=2, first_order="on")
    c = calibrate(m, calibration_loader("vit-mnist", 16, 0, 8), block_k=16, block_n=16,
                  options=opts, micro_batch=8, progress=False, model_name="vit-mnist",
                  exclude=["head"])
    store = SweepStore(tmp_path / "sw")
    store.open()
    store.put_calibration("k1", c)
    back = store.get_calibration("k1")
    assert back is not None and store.get_calibration("k2") is None
    assert back.count == c.count and back.options == c.options and back.excluded == c.excluded
    assert (back.n_samples, back.labels, back.block_k, back.seed) == (16, "dataset", 16, 0)
    for name, st in c.layers.items():
        b = back.layers[name]
        assert b.shape == st.shape
        assert np.array_equal(b.block_sums, st.block_sums)
        assert np.array_equal(b.weight, st.weight)
        assert np.array_equal(b.grad_mean, st.grad_mean)
    with pytest.raises(ValueError):
        calibration_from_arrays(calibration_to_arrays(c, "k1"), "other")


def test_a_damaged_cache_entry_counts_as_missing(tmp_path):
    store = SweepStore(tmp_path / "sw")
    store.open()
    store.put("points", "abc", {"x": 1})
    assert store.get("points", "abc") == {"x": 1, "key": "abc"}
    store.path("points", "abc", ".json").write_text("{not json")
    assert store.get("points", "abc") is None
    store.path("points", "abd", ".json").write_text(json.dumps({"key": "zzz"}))
    assert store.get("points", "abd") is None
    store.path("calibrations", "c", ".npz").write_bytes(b"PK\x03\x04 truncated")
    assert store.get_calibration("c") is None


# ---- sweeps end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 2 blocks x 2 targets x 2 methods sweep with --evaluate on 200 test images."""
    out = tmp_path_factory.mktemp("sweep") / "sw"
    assert sweep(out, "--blocks", "16x16,32x32", "--flops", "0.5,0.7", "--methods",
                 "lsp,uniform", "--evaluate", "--test-images", "200") == 0
    return out


def test_sweep_writes_table_csv_and_plots(small):
    doc = table(small)
    rows = doc["points"]
    assert [r["label"] for r in rows] == [
        f"vita {b} t16 R{r} {m}" for b in ("16x16", "32x32") for r in ("0.5", "0.7")
        for m in ("lsp", "uniform")]
    for r in rows:
        assert abs(r["flops_ratio"] - r["target"]) < 0.01
        assert r["latency_us"] == pytest.approx(r["cycles"] / 500)
        assert r["power_mw"] == pytest.approx(r["energy_uj"] * 1e6 / (r["cycles"] * 2.0))
        assert 0 <= r["top1"] <= 1 and r["kl"] >= 0 and r["config_hash"]
        assert isinstance(r["front_energy_top1"], bool)
    assert any(r["front_energy_top1"] for r in rows)
    # LSP beats uniform at equal FLOPs (the allocator's point) at R = 0.5, on both blocks. At
    # R = 0.7 engine v2's power term sends the pruning into the MLPs and the two end level
    # (the README's sweep: 90% against 91% at 16x16), so no order is asserted there.
    for i in (0, 4):
        assert rows[i]["target"] == 0.5 and rows[i]["method"] == "lsp"
        assert rows[i]["top1"] > rows[i + 1]["top1"] + 0.1
    with open(small / "sweep.csv") as fh:
        got = list(csv.DictReader(fh))
    assert [g["point"] for g in got] == [r["point"] for r in rows]
    assert float(got[0]["energy_uj"]) == rows[0]["energy_uj"]
    assert {p.name for p in (small / "plots").iterdir()} == {"energy_vs_top1.png",
                                                            "latency_vs_energy.png"}
    assert doc["run"]["computed"]["calibration"] == 2 and doc["run"]["computed"]["point"] == 8
    assert doc["summary"].startswith("energy/top-1 front")


def test_points_agree_with_allocate_and_evaluate(small, tmp_path):
    """A sweep point is the allocation `allocate` writes and the top-1 `evaluate` reports."""
    run = tmp_path / "run"
    assert main(["allocate", "--hw", VITA, "--block", "32x32", "--flops", "0.7", *SMALL,
                 "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", str(run), "--test-images", "200", "--no-progress"]) == 0
    row = next(r for r in table(small)["points"] if r["label"] == "vita 32x32 t16 R0.7 lsp")
    masks = SweepStore(small).get_masks(row["point"])
    assert masks_digest(masks) == masks_digest(load_masks(run / "masks.safetensors"))
    alloc = json.loads((run / "allocation.json").read_text())
    assert row["cycles"] == alloc["totals"]["cycles"]
    assert row["energy_uj"] == pytest.approx(alloc["totals"]["energy_pj"] / 1e6, rel=1e-12)
    ev = json.loads((run / "evaluate.json").read_text())["models"]["pruned"]
    assert row["top1"] == ev["top1"] and row["kl"] == pytest.approx(ev["kl_to_dense"],
                                                                    rel=1e-6)


def test_rerun_computes_nothing_and_an_extension_only_new_points(small, capsys):
    before = table(small)["points"]
    assert sweep(small, "--blocks", "16x16,32x32", "--flops", "0.5,0.7", "--methods",
                 "lsp,uniform", "--evaluate", "--test-images", "200") == 0
    doc = table(small)
    assert doc["points"] == before
    assert doc["run"]["computed"] == {k: 0 for k in doc["run"]["computed"]}
    assert sweep(small, "--blocks", "16x16,32x32", "--flops", "0.3,0.5,0.7", "--methods",
                 "lsp,uniform", "--evaluate", "--test-images", "200") == 0
    doc = table(small)
    run = doc["run"]
    assert run["computed"]["point"] == 4 and run["computed"]["evaluation"] == 4
    assert run["computed"]["calibration"] == 0 and run["computed"]["reference"] == 0
    assert run["reused"]["point"] == 8
    old = {r["point"]: r for r in before}
    for r in doc["points"]:
        if r["point"] in old:  # fronts may move; the figures may not
            assert {k: v for k, v in r.items() if not k.startswith("front")} == \
                {k: v for k, v in old[r["point"]].items() if not k.startswith("front")}
    assert "12 points (4 computed, 8 from the cache" in capsys.readouterr().out


def test_shared_evaluation_for_equal_masks_and_systolic_config(tmp_path):
    """uniform prunes alike on both configs: one evaluation serves both points."""
    out = tmp_path / "sw"
    assert main(["sweep", "--hw", VITA, "--hw", TPU, "--blocks", "16x16", "--flops", "0.5",
                 "--methods", "uniform", "--evaluate", "--test-images", "100", "--out",
                 str(out), "--quiet", *SMALL]) == 0
    doc = table(out)
    a, b = doc["points"]
    assert a["engine"] == "block_sparse" and b["engine"] == "systolic"
    assert a["top1"] == b["top1"] and a["cycles"] != b["cycles"]
    assert doc["run"]["computed"]["evaluation"] == 1 and doc["run"]["computed"]["point"] == 2


def test_verify_with_the_iss_and_formats(tmp_path, capsys):
    out = tmp_path / "sw"
    assert sweep(out, "--blocks", "32x32", "--flops", "0.5", "--verify", "iss",
                 "--format", "markdown") == 0
    text = capsys.readouterr().out
    assert text.startswith("| config | block |") and "| agreed |" in text
    row = table(out)["points"][0]
    assert row["verify"] == "iss" and row["rtl_agreed"] is True
    ver = SweepStore(out).get("verifications", next(
        p.stem for p in (out / "cache" / "verifications").iterdir()))
    assert ver["layers"] == 17 and ver["layers_failed"] == [] and \
        ver["rtl_cycles"] == ver["model_cycles"] == row["cycles"]
    assert sweep(out, "--blocks", "32x32", "--flops", "0.5", "--verify", "iss",
                 "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["points"][0]["rtl_agreed"] is True and doc["run"]["computed"]["point"] == 0
    assert math.isclose(doc["points"][0]["energy_uj"], row["energy_uj"])
