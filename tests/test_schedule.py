"""The cycle formula (docs/hw.md §6) against figures worked out by hand, and the tiling rules."""

from __future__ import annotations

import numpy as np
import pytest

from lsp_codesign.cycle_model import estimate_layer
from lsp_codesign.tiling import LoopOrder, Plan, TilingError, plan_layer, w_chunks


def test_one_tile_layer_worked_by_hand(vita):
    """M=16, N=32, K=32 on vita (16x16, BM=16, B=32 bytes, L=64): one tile of 1 token tile,
    2 block rows, 2 block columns, every block kept."""
    plan = plan_layer(vita, 16, 32, 32)
    assert plan.n_tiles == 1 and (plan.tt, plan.kg, plan.ng) == (1, 2, 2)
    assert plan.m == 16
    e = estimate_layer(vita, 16, 32, 32)
    c = e.counters
    # phase 0: latency 64 + descriptor (2 beats + 2) + X (16 tokens x 2 words of 128 bits, less
    # than a 256-bit beat: 32 + 1) + index (2R + 1 + NNZ = 9 entries: 9 + 1) + W (4 blocks x 16
    # words: 64 + 1)
    phase0 = 64 + 4 + 33 + 10 + 65
    # phase 1: the tile: F + TT*NNZ*BM + BM + 1; nothing for the DMA to do
    phase1 = 16 + 1 * 4 * 16 + 16 + 1
    # phase 2: store the region, 16 tokens x 2 block rows = 32 words of 512 bits (2 beats each)
    phase2 = 64 + 32 * 2 + 1
    assert c["busy"] == 1 + phase0 + phase1 + phase2 == 403
    assert c["cycles"] == 2 * 8 + 403
    assert c["compute"] == 64 and c["fill"] == 16 and c["macs"] == 64 * 256
    assert c["dma_stall"] == phase0 + phase2 and c["dma_cycles"] == phase0 + phase2
    # DRAM traffic: descriptor 64 B, X 16 x 32 B, index 9 x 2 B in one 32-byte beat,
    # W 4 x 256 B; Y 16 x 32 int32
    assert c["dram_read_bytes"] == 64 + 512 + 32 + 1024 == 1632
    assert c["dram_write_bytes"] == 16 * 32 * 4 == 2048
    assert e.dram_bytes == 1632 + 2048
    assert c["xmem_writes"] == 32 and c["idx_writes"] == 9 and c["wmem_writes"] == 64
    assert c["xmem_reads"] == 64 and c["wmem_reads"] == 4 * 16
    assert c["idx_reads"] == 4 + 2 * 2
    assert c["ymem_reads"] == c["ymem_writes"] == 2 * 16 + 32     # drains + store
    assert c["tiles"] == 1 and c["insns"] == c["imem_reads"] == 8


def test_all_pruned_layer_costs_only_dma(vita):
    mask = np.zeros((2, 2), bool)
    c = estimate_layer(vita, 16, 32, 32, mask).counters
    # phase 0 without W (index: 1 entry), phase 1 computes nothing (1 cycle), phase 2 stores
    assert c["busy"] == 1 + (64 + 4 + 33 + 2) + 1 + (64 + 65)
    assert c["compute"] == c["macs"] == c["fill"] == c["wmem_writes"] == 0
    assert c["dram_write_bytes"] == 2048      # the zeros reach DRAM


def test_w_chunks_are_whole_beats_and_cover_the_segment():
    for words in (0, 1, 7, 16, 100, 1000):
        for n in (1, 2, 3, 13):
            for unit in (1, 2, 4):
                got = [w_chunks(words, n, j, unit) for j in range(n)]
                assert sum(int(length) for length, _ in got) == words
                starts = [int(s) for _, s in got]
                assert starts == sorted(starts) and starts[0] == 0
                assert all(s % unit == 0 or s == words for s in starts)
                lengths = [int(length) for length, _ in got]
                assert max(lengths) - min(lengths) <= 2 * unit


@pytest.mark.parametrize("shape", [(197, 384, 1536), (197, 1536, 384), (1, 768, 1000),
                                   (5, 40, 7)])
@pytest.mark.parametrize("block", ["8x8", "16x16", "32x32"])
def test_plans_fit_the_banks_and_keep_partial_sums_on_chip(vita, shape, block):
    cfg = vita.with_overrides(block=block)
    plan = plan_layer(cfg, *shape)
    mem, bm = cfg.memories, cfg.tile_m
    assert plan.tt * bm * plan.ng <= mem["xmem"].depth
    assert plan.kg * plan.ng * cfg.words_per_block <= mem["wmem"].depth
    assert 2 * plan.kg + 1 + plan.kg * plan.ng <= mem["idx"].depth
    assert plan.tt * bm * plan.kg <= mem["ymem"].depth
    # column groups innermost: a Y region's tiles are consecutive, each region starts once
    regions = list(zip(plan.tile_t, plan.tile_g))
    starts = [r for i, r in enumerate(regions) if plan.swap_y[i]]
    assert len(starts) == len(set(starts)) == len(plan.t_sizes) * len(plan.g_sizes)
    assert sum(plan.t_sizes) == plan.mt and sum(plan.g_sizes) == plan.kb
    assert sum(plan.h_sizes) == plan.nb


def test_rows_outer_loads_each_weight_group_once(vita):
    plan = Plan(197, 384, 1536, LoopOrder.ROWS_OUTER, 1, 16, 24, 16, 16, 16)
    assert plan.swap_w.sum() == len(plan.g_sizes) == 6
    assert plan.swap_x.sum() == 6 * 13                   # X streams once per row group
    owner, j, n = plan.w_runs()
    # the weights of row group g+1 ride on the 13 descriptors of row group g
    assert list(n[1:14]) == [13] * 13 and list(j[1:14]) == list(range(13))
    tokens = Plan(197, 384, 1536, LoopOrder.TOKENS_OUTER, 1, 16, 24, 16, 16, 16)
    assert tokens.swap_w.sum() == 13 * 6 and tokens.swap_x.sum() == 13


def test_plan_errors(vita):
    tiny = vita.to_dict()
    tiny["memories"].update(xmem_kib=0.25)                # a bank of 8 words < BM = 16
    from lsp_codesign.config import HwConfig

    cfg = HwConfig.from_dict(tiny, source="tiny.yaml")
    with pytest.raises(TilingError, match=r"fc1: the smallest tile .* needs 16 XMEM words per "
                                          r"bank but tiny.yaml has 8; raise memories.xmem_kib"):
        plan_layer(cfg, 16, 32, 32, name="fc1")
    with pytest.raises(TilingError, match=r"M=4294967296 does not fit the engine's 32-bit"):
        plan_layer(vita, 1 << 32, 16, 16)
    with pytest.raises(TilingError, match=r"fc2: .* needs at least .* MiB of DRAM"):
        plan_layer(vita, 100_000, 4096, 4096, name="fc2")


def test_the_compiler_tiles_for_the_mask(vita):
    """A qkv-like mask (the value rows kept, most query and key rows pruned): the default plan,
    sized on even densities, stalls the array while sparse row groups store their outputs; the
    mask's plan is another candidate with fewer cycles, and the compiler's program uses it."""
    from lsp_codesign.compiler import compile_layer

    m, n, k = 197, 384, 1152
    rng = np.random.default_rng(0)
    mask = np.zeros((72, 24), bool)
    mask[48:] = True
    mask[:48] = rng.random((48, 24)) < 0.05
    default, mine = plan_layer(vita, m, n, k), plan_layer(vita, m, n, k, mask=mask)
    assert mine != default
    fixed = estimate_layer(vita, m, n, k, mask, replan=False)
    best = estimate_layer(vita, m, n, k, mask)
    assert best.cycles < 0.95 * fixed.cycles
    assert best.counters["dma_stall"] < fixed.counters["dma_stall"]
    assert best.counters["macs"] == fixed.counters["macs"]
    prog = compile_layer(vita, np.zeros((m, n), np.int8), np.zeros((k, n), np.int8), mask)
    assert prog.plan == mine
    # a uniform mask keeps the default plan's cycles or fewer, and dense layers plan once
    even = rng.random((72, 24)) < 0.25
    assert estimate_layer(vita, m, n, k, even).cycles <= \
        estimate_layer(vita, m, n, k, even, replan=False).cycles
    assert plan_layer(vita, m, n, k, mask=np.ones((72, 24), bool)) is \
        plan_layer(vita, m, n, k, mask=np.ones((72, 24), bool))
    with pytest.raises(TilingError, match=r"qkv: block mask has shape \(2, 2\), expected"):
        plan_layer(vita, m, n, k, mask=np.ones((2, 2), bool), name="qkv")
