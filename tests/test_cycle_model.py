"""Cycle/energy model: closed forms, vectorised curves, the systolic mode against SCALE-Sim."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from lsp_codesign.cycle_model import estimate_layer, layer_curves, p_m_pj
from lsp_codesign.errors import LspError
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
        e = estimate_layer(cfg, m, n, k, mask.reshape(grid_k, grid_n), replan=False)
        assert cur["cycles"][p] == e.cycles
        assert cur["energy_pj"][p] == pytest.approx(e.energy_total_pj, rel=1e-12)
        for comp, v in e.energy_pj.items():
            assert cur[f"energy_{comp}"][p] == pytest.approx(v, rel=1e-12, abs=1e-9)


def test_an_empty_block_row_costs_no_pe_cycle(vita):
    """Same kept blocks in a row group, spread over every row or packed into fewer rows: the
    same block steps (compute), fewer index entries (the empty rows are not in the index)."""
    m, n, k = 197, 192, 96          # one row group: KB = 6, NB = 12
    spread = np.zeros((6, 12), bool)
    spread[:, :4] = True            # 24 blocks in 6 rows
    packed = np.zeros((6, 12), bool)
    packed[:2, :] = True            # 24 blocks in 2 rows, 4 rows empty
    a, b = estimate_layer(vita, m, n, k, spread), estimate_layer(vita, m, n, k, packed)
    assert a.counters["compute"] == b.counters["compute"] == 13 * 24 * 16
    assert b.counters["idx_reads"] == a.counters["idx_reads"] - 13 * 2 * 4
    assert b.cycles <= a.cycles


def test_p_m_is_the_on_chip_energy_one_block_adds_per_tile(vita):
    """On a compute-bound layer, one more kept block (in a block row that already has one) adds
    MT x p_m of MACs, array reads and static energy."""
    m, n, k = 197, 768, 192
    kb, nb = k // 16, n // 16
    mask = np.zeros((kb, nb), bool)
    mask[:, :30] = True
    more = mask.copy()
    more[10, 40] = True             # row group 1: its weights load while group 0 computes
    a, b = estimate_layer(vita, m, n, k, mask), estimate_layer(vita, m, n, k, more)
    assert not a.memory_bound and not b.memory_bound
    mt, mem = 13, vita.memories
    d = {c: b.counters[c] - a.counters[c] for c in a.counters}
    assert d["cycles"] == mt * 16                      # one block step per token tile
    on_chip = (d["macs"] * vita.mac_pj + d["xmem_reads"] * mem["xmem"].access_pj
               + d["wmem_reads"] * mem["wmem"].access_pj + d["idx_reads"] * mem["idx"].access_pj
               + d["cycles"] * vita.static_pj_per_cycle)
    assert on_chip == pytest.approx(mt * p_m_pj(vita), rel=1e-12)
    cur = layer_curves(vita, m, n, k, np.random.default_rng(0).permutation(kb * nb))
    # pruning only ever lowers the energy, and the all-pruned layer still moves X and Y
    assert np.all(np.diff(cur["energy_pj"]) <= 1e-6) and cur["energy_dram"][-1] > 0


def test_deit_base_every_layer_every_ratio(vita):
    """All of DeiT-Base's prunable layers, at every pruning ratio, in one vectorised pass each."""
    layers = [(197, 768, 2304), (197, 768, 768), (197, 768, 3072), (197, 3072, 768)] * 3 + \
        [(1, 768, 1000)]
    total = 0
    rng = np.random.default_rng(0)
    for m, n, k in layers:
        nblk = math.ceil(n / 16) * math.ceil(k / 16)
        c = layer_curves(vita, m, n, k, rng.permutation(nblk))
        total += len(c["cycles"])
        assert c["cycles"][-1] < c["cycles"][0]
    assert total > 70_000


def test_speedup_of_half_pruned_layer_is_near_ideal(vita):
    mask = np.zeros((48, 12), bool)
    mask[:, :6] = True
    dense = estimate_layer(vita, 197, 192, 768)
    half = estimate_layer(vita, 197, 192, 768, mask)
    assert 1.8 < dense.cycles / half.cycles < 2.0   # DRAM latency and first/last tiles remain


@pytest.mark.parametrize("block", ["8x8", "16x16", "16x32", "32x16", "32x32"])
def test_dense_utilisation_of_deit_small_fc1(vita, block):
    """No stall when BK > BM and drains overlap compute: >= 85% of the array busy with useful
    MACs (the ceiling from padding 197 tokens to 16-token tiles is 94.7%)."""
    e = estimate_layer(vita.with_overrides(block=block), 197, 384, 1536)
    assert 0.85 <= e.utilization <= 197 / 208


def test_bad_shapes(vita):
    with pytest.raises(ValueError, match="M must be a positive integer"):
        estimate_layer(vita, 0, 4, 4)
    with pytest.raises(ValueError, match="mask has shape"):
        estimate_layer(vita, 4, 32, 32, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="needs the pruning order"):
        from lsp_codesign.config import load_config
        layer_curves(load_config(ROOT / "configs" / "tpu_v3.yaml"), 4, 32, 32)
    assert np.array_equal(layer_curves(vita, 4, 32, 32)["cycles"],
                          layer_curves(vita, 4, 32, 32, np.arange(4))["cycles"])


def test_shapes_beyond_the_isa_are_refused(vita, tpu):
    """M = 2^32 does not fit a 32-bit register; M = 10^12 does not fit the DRAM; neither
    prints a wrapped-around (negative) count."""
    with pytest.raises(LspError, match=r"M=4294967296 is beyond the 32-bit shapes"):
        estimate_layer(vita, 1 << 32, 64, 64)
    with pytest.raises(LspError, match=r"needs at least .* MiB of DRAM .*dram.capacity_mib"):
        estimate_layer(vita, (1 << 32) - 1, 4096, 4096)
    e = estimate_layer(tpu, (1 << 32) - 1, 4096, 4096)       # analytic: exact Python ints
    assert e.counters["macs"] == ((1 << 32) - 1) * 4096 * 4096 > 0


def test_counter_overflow_warns(vita, monkeypatch):
    from lsp_codesign.config import HwConfig
    from lsp_codesign.cycle_model import CounterOverflowWarning

    monkeypatch.setattr(HwConfig, "counter_bits", property(lambda self: 16))
    with pytest.warns(CounterOverflowWarning, match=r"counter \w+ = [\d,]+ exceeds the 16-bit"):
        e = estimate_layer(vita, 197, 192, 768)
    assert any(w.startswith("gemm: counter cycles = ") for w in e.warnings)
    assert any("macs" in w for w in e.warnings)
    monkeypatch.undo()
    assert estimate_layer(vita, 197, 192, 768).warnings == []
