"""Cycle/energy model: closed forms, vectorised curves, the systolic mode against SCALE-Sim."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from lsp_codesign.cycle_model import estimate_layer, layer_curves, p_m_pj
from tests.conftest import ROOT

SCALESIM = json.loads((ROOT / "tests" / "data" / "scalesim_v3_cycles.json").read_text())


def test_importing_the_model_stays_light():
    code = ("import sys, lsp_codesign, lsp_codesign.cycle_model, lsp_codesign.report; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'amaranth', 'cocotb', 'timm'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("case", SCALESIM["cases"], ids=lambda c: c["id"])
def test_systolic_dense_cycles_equal_recorded_scalesim(tpu, case):
    cfg = tpu.with_overrides(array=f"{case['rows']}x{case['cols']}", dataflow=case["dataflow"],
                             block="16x16")
    assert estimate_layer(cfg, case["m"], case["n"], case["k"]).cycles == case["scalesim_cycles"]


def test_systolic_formula_by_hand(tpu):
    # ws, 128x128, M=197, N=192, K=768: folds ceil(192/128)*ceil(768/128) = 2*6 = 12,
    # per fold 2R + C + T - 2 = 256 + 128 + 197 - 2 = 579
    assert estimate_layer(tpu, 197, 192, 768).cycles == 12 * 579 - 1
    os_ = tpu.with_overrides(dataflow="os")
    # os: folds ceil(197/128)*6 = 12, per fold T + R + C - 2 = 192 + 254
    assert estimate_layer(os_, 197, 192, 768).cycles == 12 * (192 + 254) - 1


def test_systolic_tile_skipped_only_when_all_its_blocks_are_pruned(tpu):
    # ws, 128x128 array, 32x32 blocks: a weight tile is 4x4 blocks. K=256, N=256 -> 2x2 tiles
    mask = np.zeros((8, 8), bool)
    mask[0, 0] = True                      # one block keeps tile (0, 0) alive
    e = estimate_layer(tpu, 64, 256, 256, mask)
    assert e.counters["folds"] == 4 and e.counters["folds_kept"] == 1
    mask[:4, :4] = True                    # a full tile costs the same fold
    assert estimate_layer(tpu, 64, 256, 256, mask).cycles == e.cycles
    mask[4, 4] = True
    assert estimate_layer(tpu, 64, 256, 256, mask).counters["folds_kept"] == 2
    assert estimate_layer(tpu, 64, 256, 256, np.zeros((8, 8), bool)).cycles == 0


@pytest.mark.parametrize("engine_df", ["block_sparse", "os", "ws", "is"])
def test_curves_equal_pointwise_estimates(vita, tpu, engine_df):
    m, n, k = 50, 200, 136
    cfg = vita if engine_df == "block_sparse" else tpu.with_overrides(
        dataflow=engine_df, array="64x32", block="16x16")
    grid_k, grid_n = math.ceil(k / cfg.block_k), math.ceil(n / cfg.block_n)
    nblk = grid_k * grid_n
    order = np.random.default_rng(3).permutation(nblk)
    cur = layer_curves(cfg, m, n, k, order)
    assert len(cur["cycles"]) == nblk + 1
    for p in sorted({0, 1, 7, nblk // 2, nblk - 1, nblk}):
        mask = np.ones(nblk, bool)
        mask[order[:p]] = False
        e = estimate_layer(cfg, m, n, k, mask.reshape(grid_k, grid_n))
        assert cur["cycles"][p] == e.cycles
        assert cur["energy_pj"][p] == pytest.approx(e.energy_total_pj, rel=1e-12)
        for comp, v in e.energy_pj.items():
            assert cur[f"energy_{comp}"][p] == pytest.approx(v, rel=1e-12, abs=1e-9)


def test_block_sparse_cost_depends_only_on_kept_count(vita):
    rng = np.random.default_rng(0)
    a = rng.permutation(np.r_[np.ones(30, bool), np.zeros(42, bool)]).reshape(6, 12)
    b = rng.permutation(a.ravel()).reshape(6, 12)
    ea, eb = estimate_layer(vita, 197, 192, 96, a), estimate_layer(vita, 197, 192, 96, b)
    assert ea.counters == eb.counters and ea.energy_pj == eb.energy_pj


def test_p_m_is_the_on_chip_energy_one_block_adds_per_tile(vita):
    m, n, k = 197, 192, 768
    cur = layer_curves(vita, m, n, k)
    mt = math.ceil(m / vita.tile_m)
    # going from kept = 100 to 101 blocks: every component but DRAM grows by MT * p_m
    p, q = cur["kept"].tolist().index(101), cur["kept"].tolist().index(100)
    on_chip = (cur["energy_pj"][p] - cur["energy_dram"][p]) - \
        (cur["energy_pj"][q] - cur["energy_dram"][q])
    assert on_chip == pytest.approx(mt * p_m_pj(vita), rel=1e-9)
    # pruning only ever lowers cycles and energy
    assert np.all(np.diff(cur["cycles"]) <= 0) and np.all(np.diff(cur["energy_pj"]) <= 0)


def test_deit_base_every_layer_every_ratio(vita):
    """All of DeiT-Base's prunable layers, at every pruning ratio, in one vectorised pass each."""
    layers = [(197, 768, 2304), (197, 768, 768), (197, 768, 3072), (197, 3072, 768)] * 12 + \
        [(1, 768, 1000)]
    total = 0
    for m, n, k in layers:
        c = layer_curves(vita, m, n, k)
        total += len(c["cycles"])
        assert c["cycles"][-1] < c["cycles"][0]
    assert total > 300_000


def test_speedup_of_half_pruned_layer_is_near_ideal(vita):
    mask = np.zeros((48, 12), bool)
    mask[:, :6] = True
    dense = estimate_layer(vita, 197, 192, 768)
    half = estimate_layer(vita, 197, 192, 768, mask)
    assert 1.8 < dense.cycles / half.cycles < 2.0   # drains and instruction overhead remain


def test_bad_shapes(vita):
    with pytest.raises(ValueError, match="M must be a positive integer"):
        estimate_layer(vita, 0, 4, 4)
    with pytest.raises(ValueError, match="mask has shape"):
        estimate_layer(vita, 4, 32, 32, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="needs the pruning order"):
        from lsp_codesign.config import load_config
        layer_curves(load_config(ROOT / "configs" / "tpu_v3.yaml"), 4, 32, 32)
