"""Edges of the cycle/energy model (cycle_model.py) and the phase schedule (schedule.py).

Every expected value is worked by hand from docs/hw.md (sections 5, 6, 10, 11) and
docs/config.md, or comes from a reimplementation of the phase schedule written from the spec
(the descriptors the compiler emits, walked phase by phase), not from the code under test.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from lsp_codesign.compiler import compile_layer, from_beats
from lsp_codesign.config import HwConfig
from lsp_codesign.cycle_model import (ENERGY_COMPONENTS, BlockSparseCost, CounterOverflowWarning,
                                      LayerEstimate, cost_model, energy_breakdown,
                                      estimate_layer, layer_curves, p_m_pj)
from lsp_codesign.errors import LspError
from lsp_codesign.isa import DESC_WORDS, SWAP_W, SWAP_X, SWAP_Y, decode_descriptor
from lsp_codesign.schedule import GEMM_COUNTERS, schedule, transfer_beats, transfer_cycles
from lsp_codesign.tiling import LoopOrder, Plan, plan_layer
from tests.conftest import tiny_config


def sram_64b(capacity_kib: float) -> float:
    """docs/hw.md section 10 with the presets' table {8: 10, 32: 20, 1024: 100} pJ: linear in
    log2(capacity), held below 8 KiB, extended along the last segment above 1 MiB."""
    x = math.log2(capacity_kib)
    if x <= 3:
        return 10.0
    if x <= 5:
        return 10.0 + (x - 3) / 2 * 10
    return 20.0 + (x - 5) / 5 * 80


def systolic_cfg(tpu, dataflow: str = "ws") -> HwConfig:
    """A small systolic array (32 rows x 16 columns) with block 16x32, BM = 8, and SRAMs whose
    per-byte prices differ: X 32 KiB (20 pJ per 64 b: 2.5 pJ/B), W 1 MiB (100: 12.5 pJ/B),
    Y 16 KiB (15: 1.875 pJ/B); 500 MHz and 20 mW (40 pJ per cycle)."""
    raw = tpu.to_dict()
    raw.update(name="small-systolic", block="16x32", array="32x16", tile_m=8, clock_mhz=500,
               dataflow=dataflow)
    raw["memories"].update(xmem_kib=32, wmem_kib=1024, ymem_kib=16)
    raw["energy"]["static_mw"] = 20
    return HwConfig.from_dict(raw, source="small-systolic")


# ---- systolic energy and p_m ----------------------------------------------------------------


def test_systolic_energy_prices_each_counter_by_hand(tpu):
    cfg = systolic_cfg(tpu)
    # ws, R = 32, C = 16, M = 20, N = 64, K = 48: Sr = N = 64, Sc = K = 48, T = M = 20;
    # folds ceil(64/32) * ceil(48/16) = 6, per fold 2R + C + T - 2 = 98
    e = estimate_layer(cfg, 20, 64, 48)
    c = e.counters
    assert c["cycles"] == 6 * 98 - 1 and c["macs"] == 20 * 64 * 48
    # DRAM (section 11): kept weights + int8 X in + int32 Y out, once each
    assert c["dram_bytes"] == 48 * 64 + 20 * 64 + 4 * 20 * 48 == 8192
    en = e.energy_pj
    assert set(en) == set(ENERGY_COMPONENTS)
    assert en["mac"] == pytest.approx(20 * 64 * 48 * 0.3)
    assert en["xmem"] == pytest.approx(c["xmem_bytes"] * 2.5) and c["xmem_bytes"] > 0
    assert en["wmem"] == pytest.approx(c["wmem_bytes"] * 12.5) and c["wmem_bytes"] > 0
    assert en["ymem"] == pytest.approx(c["ymem_bytes"] * 1.875) and c["ymem_bytes"] > 0
    assert en["dram"] == pytest.approx(8192 * 1950 / 8)
    assert en["static"] == pytest.approx(587 * 20 * 2.0)       # mW x ns = pJ
    # the systolic model has no instruction memory and no index: exactly zero, not a default
    assert en["imem"] == 0.0 and en["idx"] == 0.0
    assert e.energy_total_pj == pytest.approx(sum(en.values()))
    assert energy_breakdown(cfg, c) == pytest.approx(en)


def test_systolic_p_m_by_hand(tpu):
    """BM x one kept block: BM.BK.BN MACs, BM.BN int8 activations, BK.BN int8 weights, BM.BK
    int32 outputs through the SRAMs, priced per byte (no static term: the array's time follows
    folds, not blocks)."""
    cfg = systolic_cfg(tpu)
    bm, bk, bn = 8, 16, 32
    want = bm * bk * bn * 0.3 + bm * bn * 2.5 + bk * bn * 12.5 + bm * bk * 4 * 1.875
    assert want == pytest.approx(9228.8)
    assert p_m_pj(cfg) == pytest.approx(want, rel=1e-12)
    assert cost_model(cfg).p_m() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
def test_systolic_p_m_is_the_on_chip_energy_of_a_one_block_gemm(tpu, dataflow):
    """A GEMM of BM tokens x one block (M = BM, N = BN, K = BK) on an array holding the block
    is one fold whatever the dataflow: its MAC and SRAM energy is p_m."""
    cfg = systolic_cfg(tpu, dataflow)
    e = estimate_layer(cfg, cfg.tile_m, cfg.block_n, cfg.block_k)
    assert e.counters["folds"] == 1
    on_chip = sum(e.energy_pj[c] for c in ("mac", "xmem", "wmem", "ymem"))
    assert on_chip == pytest.approx(p_m_pj(cfg), rel=1e-12)


def test_block_sparse_p_m_by_hand(vita):
    """docs/hw.md section 10: BM.BK.BN.mac + BM.xmem + wpb.wmem + idx + BM.static, here with
    block 16x32 and BM = 8 so that no two factors coincide."""
    cfg = vita.with_overrides(block="16x32", tile_m=8)
    bm, bk, bn = 8, 16, 32
    r = bk // bm                          # weight rows per WMEM word: 2, so wpb = 8
    wpb = bk // r
    # X: 256 KiB in two banks of 128 KiB, word 8*BN = 256 bits; 128 KiB is 2/5 of the way from
    # 32 KiB (20 pJ) to 1 MiB (100 pJ) in log2: 52 pJ per 64 bits
    x_pj = 52 * 256 / 64
    w_pj = 52 * (8 * r * bn) / 64          # W: 128 KiB banks of 512-bit words
    idx_pj = 10 * 16 / 64                  # IDX: 8 KiB banks of 16-bit entries
    static = 20 * 2.0                      # 20 mW at 500 MHz
    want = bm * bk * bn * 0.3 + bm * x_pj + wpb * w_pj + idx_pj + bm * static
    assert want == pytest.approx(6543.3)
    assert p_m_pj(cfg) == pytest.approx(want, rel=1e-12)


def test_block_sparse_energy_of_the_one_tile_layer_by_hand(vita):
    """The one-tile layer of tests/test_schedule.py (its counters worked there), priced with
    docs/hw.md section 10."""
    e = estimate_layer(vita, 16, 32, 32)
    en = e.energy_pj
    imem = 10 * 32 / 64                                   # 1 KiB of 32-bit words
    xw = 52 * 128 / 64                                    # 128 KiB banks of 128-bit words
    idx = 10 * 16 / 64
    y_depth = 1024 * 8192 // 2 // 513                     # 513-bit words (valid bit)
    ymem = sram_64b(y_depth * 513 / 8 / 1024) * 513 / 64
    assert set(en) == set(ENERGY_COMPONENTS)
    assert en["mac"] == pytest.approx(64 * 256 * 0.3)
    assert en["imem"] == pytest.approx(8 * imem)
    assert en["xmem"] == pytest.approx((64 + 32) * xw)      # array reads + DMA writes
    assert en["wmem"] == pytest.approx((64 + 64) * xw)
    assert en["idx"] == pytest.approx((8 + 9) * idx)
    assert en["ymem"] == pytest.approx((64 + 64) * ymem)
    assert en["dram"] == pytest.approx((1632 + 2048) * 1950 / 8)
    assert en["static"] == pytest.approx(419 * 40.0)
    assert e.energy_total_pj == pytest.approx(sum(en.values()))


# ---- LayerEstimate's derived figures --------------------------------------------------------


def test_estimate_figures_of_the_one_tile_layer_by_hand(vita):
    mask = np.array([[True, True], [True, False]])
    dense, sparse = estimate_layer(vita, 16, 32, 32), estimate_layer(vita, 16, 32, 32, mask)
    assert dense.cycles == 419 and dense.time_us == pytest.approx(419 / 500)
    assert dense.power_mw == pytest.approx(dense.energy_total_pj / (419 * 2.0))
    assert (dense.kept_blocks, dense.total_blocks, dense.kept_fraction) == (4, 4, 1.0)
    assert (sparse.kept_blocks, sparse.total_blocks, sparse.kept_fraction) == (3, 4, 0.75)
    assert dense.effective_macs == dense.dense_macs == 16 * 32 * 32
    assert sparse.effective_macs == 16 * 3 * 256 and sparse.dense_macs == 16 * 32 * 32
    assert dense.array_size == 256
    assert dense.utilization == pytest.approx(16 * 32 * 32 / (419 * 256))
    assert dense.dram_bytes == 1632 + 2048
    assert dense.intensity == pytest.approx(16 * 32 * 32 / 3680)
    # DMA: 176 + 129 cycles against 64 compute + 16 fill
    assert dense.memory_bound


def test_partial_blocks_count_only_their_real_elements(vita):
    """N = 20, K = 24 on 16x16 blocks: the kept edge blocks hold 16x4, 8x16 and 8x4 elements."""
    mask = np.array([[False, True], [True, True]])
    e = estimate_layer(vita, 5, 20, 24, mask)
    assert e.effective_macs == 5 * (16 * 4 + 8 * 16 + 8 * 4)
    assert e.dense_macs == 5 * 20 * 24 and e.kept_blocks == 3


def _estimate(counters, **kw):
    args = dict(name="x", engine="block_sparse", m=2, n=3, k=4, block_k=2, block_n=2,
                kept_blocks=1, total_blocks=4, counters=counters, energy_pj={"mac": 6.0},
                clock_mhz=100.0, array_size=4, effective_macs=12)
    args.update(kw)
    return LayerEstimate(**args)


def test_estimate_figures_at_zero_and_at_the_roofline_boundary():
    zero = _estimate({"cycles": 0, "dram_read_bytes": 0, "dram_write_bytes": 0})
    assert zero.power_mw == 0.0 and zero.utilization == 0.0
    assert zero.intensity == float("inf")
    assert not zero.memory_bound                         # no DMA counter at all
    c = {"cycles": 10, "dram_read_bytes": 5, "dram_write_bytes": 1, "compute": 6, "fill": 2}
    assert not _estimate({**c, "dma_cycles": 8}).memory_bound       # equal: not memory-bound
    assert _estimate({**c, "dma_cycles": 9}).memory_bound
    one = _estimate({**c, "dma_cycles": 8})
    assert one.dram_bytes == 6 and one.intensity == 2.0
    assert one.power_mw == pytest.approx(6.0 / 100.0)             # 6 pJ over 10 cycles of 10 ns
    assert one.utilization == pytest.approx(12 / 40)
    systolic = _estimate({"cycles": 4, "dram_bytes": 7}, engine="systolic")
    assert systolic.dram_bytes == 7 and not systolic.memory_bound


def test_to_dict_carries_every_figure(vita):
    mask = np.array([[True, False], [True, True]])
    e = estimate_layer(vita, 16, 32, 32, mask, name="fc1")
    e.extra["layer_index"] = 3
    d = e.to_dict()
    assert d["name"] == "fc1" and d["engine"] == "block_sparse" and d["block"] == "16x16"
    assert (d["m"], d["n"], d["k"]) == (16, 32, 32)
    assert (d["kept_blocks"], d["total_blocks"], d["kept_fraction"]) == (3, 4, 0.75)
    assert d["cycles"] == e.cycles and d["time_us"] == e.time_us
    assert d["energy_pj"] == e.energy_pj and d["energy_pj"] is not e.energy_pj
    assert d["energy_total_pj"] == e.energy_total_pj and d["power_mw"] == e.power_mw
    assert d["utilization"] == e.utilization and d["effective_macs"] == 16 * 3 * 256
    assert d["dense_macs"] == 16 * 32 * 32 and d["dram_bytes"] == e.dram_bytes
    assert d["intensity"] == e.intensity and d["memory_bound"] is True
    assert d["counters"] == e.counters and d["warnings"] == [] and d["layer_index"] == 3
    # a snapshot: editing the dict leaves the estimate as it was
    assert d["counters"] is not e.counters and d["warnings"] is not e.warnings


# ---- shapes and counter overflow -------------------------------------------------------------


@pytest.mark.parametrize("field, pos", [("M", 0), ("N", 1), ("K", 2)])
@pytest.mark.parametrize("bad", [0, -1, True, 4.0, "4", None])
def test_each_shape_field_must_be_a_positive_integer(vita, field, pos, bad):
    shape = [16, 32, 32]
    shape[pos] = bad
    with pytest.raises(ValueError, match=rf"^fc2: {field} must be a positive integer, "
                                         rf"got {repr(bad)}$"):
        estimate_layer(vita, *shape, name="fc2")


def test_shape_errors_name_gemm_when_unnamed(vita):
    with pytest.raises(ValueError, match=r"^gemm: K must be a positive integer, got 0$"):
        estimate_layer(vita, 1, 1, 0)
    with pytest.raises(ValueError, match=r"^gemm: N must be a positive integer"):
        layer_curves(vita, 1, 0, 1)
    with pytest.raises(LspError, match=r"^gemm: K=4294967296 is beyond the 32-bit shapes the "
                                       r"engines handle$"):
        estimate_layer(vita, 1, 1, 1 << 32)


@pytest.mark.parametrize("field, pos", [("M", 0), ("N", 1), ("K", 2)])
def test_shape_bound_is_2_to_the_32_exclusive(tpu, field, pos):
    ok = [1, 32, 32]
    ok[pos] = (1 << 32) - 1                       # the largest a 32-bit register holds
    estimate_layer(tpu, *ok)
    bad = [1, 32, 32]
    bad[pos] = 1 << 32
    with pytest.raises(LspError, match=rf"^big: {field}=4294967296 is beyond the 32-bit"):
        estimate_layer(tpu, *bad, name="big")


def test_smallest_and_numpy_shapes_are_accepted(vita):
    one = estimate_layer(vita, 1, 1, 1)
    assert (one.m, one.n, one.k) == (1, 1, 1) and one.effective_macs == 1
    e = estimate_layer(vita, np.int64(16), np.int32(32), np.uint16(32))
    assert e.counters == estimate_layer(vita, 16, 32, 32).counters
    assert type(e.m) is int and type(e.n) is int and type(e.k) is int


def test_counter_overflow_boundary(vita, monkeypatch):
    """The one-tile layer counts macs = 16384 = 2^14 and every other counter below it: a 14-bit
    counter wraps at exactly that value, a 15-bit one holds it."""
    monkeypatch.setattr(HwConfig, "counter_bits", property(lambda self: 15))
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("error")
        assert estimate_layer(vita, 16, 32, 32).warnings == []
    monkeypatch.setattr(HwConfig, "counter_bits", property(lambda self: 14))
    with pytest.warns(CounterOverflowWarning) as rec:
        e = estimate_layer(vita, 16, 32, 32, name="fc1")
    want = ("fc1: counter macs = 16,384 exceeds the 14-bit hardware counters "
            "(they would wrap around)")
    assert e.warnings == [want]
    assert [str(w.message) for w in rec] == [want]
    # points at the caller of estimate_layer (mutmut's copy of the code adds a trampoline frame)
    assert rec[0].filename == __file__ or os.path.basename(rec[0].filename) == "trampoline.py"
    with pytest.warns(CounterOverflowWarning, match=r"^gemm: counter macs = 16,384"):
        estimate_layer(vita, 16, 32, 32)


def test_systolic_estimates_never_warn_of_counter_overflow(tpu, monkeypatch):
    monkeypatch.setattr(HwConfig, "counter_bits", property(lambda self: 4))
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("error")
        assert estimate_layer(tpu, 197, 768, 768).warnings == []


# ---- layer_curves -----------------------------------------------------------------------------


def test_curves_layout_and_energy_sum(vita):
    cur = layer_curves(vita, 16, 32, 32, np.array([3, 0, 2, 1]))
    assert set(cur) == {"pruned", "kept", "cycles", "energy_pj",
                        *(f"energy_{c}" for c in ENERGY_COMPONENTS)}
    assert list(cur["pruned"]) == [0, 1, 2, 3, 4] and list(cur["kept"]) == [4, 3, 2, 1, 0]
    assert cur["cycles"].dtype == np.int64 and cur["cycles"][0] == 419
    assert cur["cycles"][-1] == 16 + 1 + (64 + 4 + 33 + 2) + 1 + (64 + 65)   # all pruned
    parts = sum(cur[f"energy_{c}"] for c in ENERGY_COMPONENTS)
    np.testing.assert_allclose(cur["energy_pj"], parts, rtol=1e-12)
    assert np.all(cur["energy_imem"] == 8 * 5.0)       # the program, at every level
    # the block-sparse engine's default order is row-major
    np.testing.assert_array_equal(layer_curves(vita, 16, 32, 32)["cycles"],
                                  layer_curves(vita, 16, 32, 32, np.arange(4))["cycles"])


@pytest.mark.parametrize("order", [np.arange(3), np.arange(5), np.array([0, 1, 1, 2]),
                                   np.array([0, 1, 2, 4]), np.arange(4).reshape(2, 2)])
def test_curves_order_must_be_a_permutation_of_the_blocks(vita, order):
    with pytest.raises(ValueError, match=r"order must be a permutation of the 4 block indices"):
        layer_curves(vita, 16, 32, 32, order)


def test_curves_of_a_block_row_keep_its_drain_until_its_last_block(vita):
    """Two block rows of 16x16 blocks (K = 32, N = 32), one row group: pruning the two blocks
    of row 0 first removes row 0's drain only with its second block; the index entries follow
    (docs/hw.md section 8: idx reads TT.(NNZ + 2R))."""
    order = np.array([0, 2, 1, 3])              # (0,0), (1,0), (0,1), (1,1)
    cur = layer_curves(vita, 16, 32, 32, order)
    mask = np.ones(4, bool)
    for p in range(5):
        m = mask.copy()
        m[order[:p]] = False
        m = m.reshape(2, 2)
        e = estimate_layer(vita, 16, 32, 32, m, replan=False)
        rows = int(m.any(axis=1).sum())
        assert e.counters["idx_reads"] == int(m.sum()) + 2 * rows
        assert e.counters["ymem_reads"] == rows * 16 + 32
        assert cur["cycles"][p] == e.cycles


@pytest.mark.parametrize("order", [[0, 2, 1], [1, 0, 2], [2, 1, 0]])
def test_curves_of_a_one_column_layer(vita, order):
    """N = 16: one block column, so each block row holds one block and empties with it (the
    first block pruned empties its row at once). Every level equals the pointwise estimate."""
    order = np.array(order)
    cur = layer_curves(vita, 16, 16, 48, order)
    for p in range(4):
        mask = np.ones(3, bool)
        mask[order[:p]] = False
        e = estimate_layer(vita, 16, 16, 48, mask.reshape(3, 1), replan=False)
        assert e.counters["idx_reads"] == 3 * (3 - p)       # NNZ + 2R, one token tile
        assert cur["cycles"][p] == e.cycles, p
        assert cur["energy_idx"][p] == pytest.approx(e.energy_pj["idx"]), p


# ---- the phase schedule against the spec ------------------------------------------------------


def spec_counters(cfg: HwConfig, prog) -> dict[str, int]:
    """docs/hw.md sections 5, 6 and 8 walked phase by phase over the compiler's descriptors."""
    beat = cfg.dram.bytes_per_cycle
    b = 8 * beat
    t = prog.n_tiles
    raw = from_beats([prog.dram[i] for i in range(t * 64 // beat)], beat)
    words = np.frombuffer(raw, dtype="<u4")
    descs = [decode_descriptor(words[i * DESC_WORDS:(i + 1) * DESC_WORDS]) for i in range(t)]
    bm, bk, bn = cfg.tile_m, cfg.block_k, cfg.block_n
    r = max(1, bk // bm)
    wpb, fill = bk // r, max(bk // r, 3)
    lat = cfg.dram.latency_cycles
    wx, ww, wi, wy = 8 * bn, 8 * r * bn, cfg.index_bits, 32 * bk

    def cost(n, w):
        return n * max(1, w // b) + 1 if n else 0

    def beats(n, w):
        return -(-n * w // b)

    c = dict.fromkeys(GEMM_COUNTERS, 0)
    busy = 1
    region = None                       # words of the Y region being filled
    for k in range(t + 2):
        ck = 0
        if 1 <= k <= t:
            d = descs[k - 1]
            if d["nnz"]:
                ck = fill + d["tt"] * d["nnz"] * bm + bm + 1
                c["fill"] += fill
            steps = d["tt"] * d["nnz"] * bm
            c["compute"] += steps
            c["wmem_reads"] += d["tt"] * d["nnz"] * wpb
            c["idx_reads"] += d["tt"] * (d["nnz"] + 2 * d["r"])
            c["ymem_reads"] += d["tt"] * d["r"] * bm
        ops = []
        store = 0
        if 2 <= k <= t and descs[k - 1]["flags"] & SWAP_Y:
            store = region
        if k == t + 1:
            store = region
        if 1 <= k <= t and descs[k - 1]["flags"] & SWAP_Y:
            region = descs[k - 1]["tt"] * bm * descs[k - 1]["kg"]
        if store:
            ops.append(cost(store, wy))
            c["ymem_reads"] += store
            c["dram_write_bytes"] += beats(store, wy) * beat
        if k < t:
            d = descs[k]
            ops.append(512 // b + 2)
            c["dram_read_bytes"] += 64
            loads = []
            if d["flags"] & SWAP_X:
                loads.append(("xmem_writes", d["tt"] * bm * d["ng"], wx))
            if d["flags"] & SWAP_W:
                loads.append(("idx_writes", 2 * d["r"] + 1 + d["nnz"], wi))
            if d["wlen"]:
                loads.append(("wmem_writes", d["wlen"], ww))
            for counter, n, w in loads:
                ops.append(cost(n, w))
                c[counter] += n
                c["dram_read_bytes"] += beats(n, w) * beat
        dk = lat + sum(ops) if ops else 0
        busy += max(ck, dk, 1)
        c["dma_cycles"] += dk
        c["dma_stall"] += max(0, dk - ck)
    c["busy"] = busy
    c["macs"] = c["compute"] * bk * bn
    c["xmem_reads"] = c["compute"]
    c["ymem_writes"] = c["ymem_reads"]
    c["tiles"] = t
    return c


SPEC_CASES = [
    # (config, M, N, K, density): beats narrower, equal to and wider than each word
    ("vita", 197, 192, 400, 0.4),
    ("vita-16x32-bm8", 70, 256, 160, 0.6),
    ("vita-32x32", 50, 128, 192, 1.0),
    ("tiny-4x4", 37, 40, 44, 0.5),
    ("tiny-8x4-b8", 33, 36, 50, 0.3),
    ("tiny-4x8-bm8-b32", 45, 64, 30, 0.7),
    ("tiny-2x4-bm8-b4", 20, 24, 30, 0.5),
]


def _spec_cfg(vita, key):
    return {"vita": lambda: vita,
            "vita-16x32-bm8": lambda: vita.with_overrides(block="16x32", tile_m=8),
            "vita-32x32": lambda: vita.with_overrides(block="32x32"),
            "tiny-4x4": lambda: tiny_config("4x4", 4, beat=16),
            "tiny-8x4-b8": lambda: tiny_config("8x4", 4, beat=8),
            "tiny-4x8-bm8-b32": lambda: tiny_config("4x8", 8, beat=32),
            "tiny-2x4-bm8-b4": lambda: tiny_config("2x4", 8, beat=4)}[key]()


@pytest.mark.parametrize("key, m, n, k, density", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_schedule_equals_the_spec_walked_phase_by_phase(vita, key, m, n, k, density):
    cfg = _spec_cfg(vita, key)
    rng = np.random.default_rng(m + n + k)
    kb, nb = -(-k // cfg.block_k), -(-n // cfg.block_n)
    mask = rng.random((kb, nb)) < density
    mask[1] = False                          # an empty block row
    mask[:, 0] = True                        # a full block column
    prog = compile_layer(cfg, np.zeros((m, n), np.int8), np.zeros((k, n), np.int8), mask)
    want = spec_counters(cfg, prog)
    got = estimate_layer(cfg, m, n, k, mask).counters
    assert {key_: got[key_] for key_ in GEMM_COUNTERS} == want
    assert got["cycles"] == 2 * 8 + want["busy"]


@pytest.mark.parametrize("order", [LoopOrder.ROWS_OUTER, LoopOrder.TOKENS_OUTER])
def test_schedule_of_forced_small_tiles_equals_the_spec(order):
    """Many tiles: several token blocks, row groups and column groups, each swap pattern."""
    cfg = tiny_config("4x4", 4, beat=16)
    m, n, k = 30, 40, 36
    plan = Plan(m, n, k, order, 2, 2, 4, 4, 4, 4)
    assert len(plan.t_sizes) > 1 and len(plan.g_sizes) > 1 and len(plan.h_sizes) > 1
    rng = np.random.default_rng(7)
    mask = rng.random((9, 10)) < 0.5
    mask[2:4] = False                         # a whole row group empty: tiles with NNZ = 0
    prog = compile_layer(cfg, np.zeros((m, n), np.int8), np.zeros((k, n), np.int8), mask,
                         plan=plan)
    want = spec_counters(cfg, prog)
    nnz, rows = plan.group_counts(mask)
    assert schedule(cfg, plan, nnz, rows) == want


def test_schedule_of_w_chunks_spread_over_a_row_group_equals_the_spec():
    """One column group, rows outer: the next row group's W streams in chunks over the current
    group's 8 tiles. 3 kept blocks are 12 W words of 64 bits, one per 64-bit beat, so chunks
    may start on any word (1,2,1,2,...); the phases are memory-bound, so where each chunk
    lands moves the cycles."""
    cfg = tiny_config("8x4", 4, beat=8)
    assert cfg.memories["wmem"].word_bits == 64 == 8 * cfg.dram.bytes_per_cycle
    m, n, k = 30, 8, 50
    plan = Plan(m, n, k, LoopOrder.ROWS_OUTER, 1, 2, 2, 8, 4, 4)
    assert plan.groups == (4, 1) and len(plan.t_sizes) == 8
    mask = np.array([[1, 1], [1, 0], [0, 1], [1, 1], [1, 0], [0, 0], [1, 1]], bool)
    prog = compile_layer(cfg, np.zeros((m, n), np.int8), np.zeros((k, n), np.int8), mask,
                         plan=plan)
    want = spec_counters(cfg, prog)
    assert want["wmem_writes"] == 3 * 4 + 3 * 4 + 1 * 4 + 2 * 4
    nnz, rows = plan.group_counts(mask)
    assert schedule(cfg, plan, nnz, rows) == want


def test_schedule_vectorised_columns_equal_single_masks():
    cfg = tiny_config("4x4", 4, beat=16)
    plan = Plan(30, 40, 36, LoopOrder.TOKENS_OUTER, 2, 2, 4, 4, 4, 4)
    rng = np.random.default_rng(1)
    masks = [rng.random((9, 10)) < d for d in (0.0, 0.2, 0.6, 1.0)]
    counts = [plan.group_counts(mk) for mk in masks]
    nnz = np.stack([c[0] for c in counts], axis=-1)
    rows = np.stack([c[1] for c in counts], axis=-1)
    many = schedule(cfg, plan, nnz, rows)
    assert set(many) == set(GEMM_COUNTERS)
    for i, (nz, rw) in enumerate(counts):
        one = schedule(cfg, plan, nz, rw)
        assert all(type(v) is int for v in one.values())
        for key in GEMM_COUNTERS:
            assert many[key].dtype == np.int64 and many[key].shape == (4,)
            assert many[key][i] == one[key], key
    assert list(many["tiles"]) == [plan.n_tiles] * 4


def test_transfer_cycles_and_beats_at_each_width():
    """cost = n.max(1, w/b) + 1 for n >= 1 words (0 for none); ceil(n.w/b) beats moved."""
    # w < b: one word per cycle; 3 words of 64 bits in a 256-bit beat
    assert int(transfer_cycles(3, 64, 256)) == 4 and int(transfer_beats(3, 64, 256)) == 1
    assert int(transfer_beats(5, 64, 256)) == 2 and int(transfer_beats(4, 64, 256)) == 1
    # w = b
    assert int(transfer_cycles(3, 256, 256)) == 4 and int(transfer_beats(3, 256, 256)) == 3
    # w > b: w/b beats per word
    assert int(transfer_cycles(3, 512, 128)) == 13 and int(transfer_beats(3, 512, 128)) == 12
    # one word, and no word
    assert int(transfer_cycles(1, 16, 128)) == 2 and int(transfer_beats(1, 16, 128)) == 1
    assert int(transfer_cycles(0, 512, 128)) == 0 and int(transfer_beats(0, 512, 128)) == 0
    np.testing.assert_array_equal(transfer_cycles([0, 1, 2], 512, 256), [0, 3, 5])


def test_transfer_counts_of_narrow_integer_types_do_not_wrap():
    """Word counts may arrive as int32 or uint8 arrays; the cycles and beats are computed in
    64 bits: 10^9 words of 512 bits on a 128-bit port are 4.10^9 + 1 cycles and 4.10^9 beats."""
    big = np.array([10**9], dtype=np.int32)
    assert int(transfer_cycles(big, 512, 128)[0]) == 4 * 10**9 + 1
    assert int(transfer_beats(big, 512, 128)[0]) == 4 * 10**9
    small = np.array([200], dtype=np.uint8)
    assert int(transfer_cycles(small, 512, 128)[0]) == 801
    assert int(transfer_beats(small, 512, 128)[0]) == 800


def test_block_sparse_dense_default_plan_on_one_tile(vita):
    """mask None is every block kept: the same counters as an all-True mask, with or without
    replanning."""
    dense = estimate_layer(vita, 16, 32, 32).counters
    assert estimate_layer(vita, 16, 32, 32, np.ones((2, 2), bool)).counters == dense
    assert estimate_layer(vita, 16, 32, 32, replan=False).counters == dense
    plan = plan_layer(vita, 16, 32, 32)
    assert cost_model(vita).counters(16, 32, 32, None, "x")["busy"] == 403
    assert plan.n_tiles == 1


def _qkv_like_mask():
    """Value rows kept, most query and key rows pruned: the mask's own tiling beats the
    shape's default plan (tests/test_schedule.py::test_the_compiler_tiles_for_the_mask)."""
    rng = np.random.default_rng(0)
    mask = np.zeros((72, 24), bool)
    mask[48:] = True
    mask[:48] = rng.random((48, 24)) < 0.05
    return mask


def test_cost_models_tile_for_the_mask_unless_told_not_to(vita):
    """The compiler tiles for the mask, so the model's default prices that plan; replan=False
    prices the shape's default plan (what the curves use)."""
    m, n, k = 197, 384, 1152
    mask = _qkv_like_mask()
    mine = estimate_layer(vita, m, n, k, mask).counters
    fixed = estimate_layer(vita, m, n, k, mask, replan=False).counters
    assert mine["cycles"] < fixed["cycles"]
    assert BlockSparseCost(vita).counters(m, n, k, mask, "qkv")["cycles"] == mine["cycles"]
    assert cost_model(vita).counters(m, n, k, mask, "qkv")["cycles"] == mine["cycles"]
    assert cost_model(vita, replan=False).counters(m, n, k, mask, "qkv")["cycles"] == \
        fixed["cycles"]


def test_curve_arrays_are_writable_copies(vita, tpu):
    """Callers may edit the curves in place: every array is its own, even the components
    that are the same at every level (imem; zero ones on the systolic engine)."""
    for cfg in (vita, systolic_cfg(tpu)):
        nblk = (64 // cfg.block_n) * (32 // cfg.block_k)
        cur = layer_curves(cfg, 16, 64, 32, np.arange(nblk)[::-1])
        assert all(arr.flags.writeable for arr in cur.values())
        cur["energy_imem"][0] += 1.0
        assert cur["energy_imem"][1] != cur["energy_imem"][0]
