"""Compiler + instruction-set simulator: the DRAM image and program compute the right GEMM, and
the ISS, walking the descriptors phase by phase, counts every event as the closed-form model."""

from __future__ import annotations

import numpy as np
import pytest

from lsp_codesign.compiler import (LAYER_PROGRAM_LENGTH, CompileError, compile_layer, encode_y,
                                   layer_program, pack_words, read_y, reference_gemm,
                                   unpack_words)
from lsp_codesign.cycle_model import estimate_layer
from lsp_codesign.isa import COUNTERS, ERROR_CODES, Instr, assemble, encode
from lsp_codesign.iss import Memories, run_iss
from tests.conftest import tiny_config

BLOCKS = [("8x8", 16), ("16x16", 16), ("16x32", 16), ("32x16", 16), ("32x32", 32),
          ("16x16", 32)]


def run_case(cfg, x, w, mask):
    prog = compile_layer(cfg, x, w, mask)
    res = run_iss(cfg, Memories.from_program(prog))
    assert not res.error, res.err_code
    y = read_y(cfg, prog, res.y_words(prog.y_base, prog.y_words))
    return prog, res, y


def check_random(cfg, rng, sizes):
    m, n, k = sizes
    x = rng.integers(-128, 128, (m, n)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    kb, nb = -(-k // cfg.block_k), -(-n // cfg.block_n)
    mask = rng.random((kb, nb)) < rng.random()
    mask[0] = False  # an all-pruned block row
    prog, res, y = run_case(cfg, x, w, mask)
    np.testing.assert_array_equal(y, reference_gemm(x, w, mask, cfg.block_k, cfg.block_n))
    est = estimate_layer(cfg, m, n, k, mask)
    assert {c: est.counters[c] for c in COUNTERS} == res.counters
    return prog


@pytest.mark.parametrize("block, tile_m", BLOCKS)
def test_random_layers_bit_exact_and_counters_match_model(vita, block, tile_m):
    cfg = vita.with_overrides(block=block, tile_m=tile_m)
    rng = np.random.default_rng(abs(hash(block)) % 1000 + tile_m)
    for _ in range(3):
        check_random(cfg, rng, tuple(int(v) for v in rng.integers(1, 200, 3)))


@pytest.mark.parametrize("block, tile_m, beat", [("4x4", 4, 16), ("8x4", 4, 8), ("4x8", 8, 32),
                                                 ("2x4", 8, 4), ("8x8", 4, 64)])
def test_layers_many_times_larger_than_every_memory(block, tile_m, beat):
    """4-16x every bank: several row groups, column groups (partial sums added in YMEM) and
    token blocks; the ISS computes from the banks and agrees with numpy and the model."""
    cfg = tiny_config(block, tile_m, beat=beat)
    rng = np.random.default_rng(tile_m * beat)
    bank = cfg.memories["xmem"].depth * cfg.memories["xmem"].word_bytes
    for factor in (4, 16):
        side = int(np.sqrt(factor * bank)) + 3
        prog = check_random(cfg, rng, (side + 5, side, side - 1))
        assert len(prog.plan.h_sizes) > 1 or len(prog.plan.g_sizes) > 1
        assert prog.n_tiles > 4


def test_extremes_dense_all_pruned_and_wrap_around(vita):
    x = np.full((20, 48), -128, np.int8)
    w = np.full((40, 48), -128, np.int8)
    _, _, y = run_case(vita, x, w, None)
    assert (y == 48 * 128 * 128).all()
    _, res0, y0 = run_case(vita, x, w, np.zeros((3, 3), bool))
    assert (y0 == 0).all()                      # zeros reach DRAM through the valid bits
    assert res0.counters["compute"] == 0 and res0.counters["wmem_reads"] == 0
    # int32 wrap-around: 2^31 overflows to -2^31
    x1 = np.full((1, 1 << 17), -128, np.int8)
    w1 = np.full((16, 1 << 17), -128, np.int8)
    assert (reference_gemm(x1, w1, None, 16, 16) == -(1 << 31)).all()
    _, _, ywrap = run_case(vita, x1, w1, None)
    assert (ywrap == -(1 << 31)).all()


def test_program_is_eight_instructions_whatever_the_layer():
    assert len(layer_program(0, 1)) == len(layer_program(123456, 65535)) == \
        LAYER_PROGRAM_LENGTH == 8


def test_y_layout_round_trips(vita):
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (37, 70)).astype(np.int8)
    w = rng.integers(-128, 128, (50, 70)).astype(np.int8)
    prog = compile_layer(vita, x, w)
    y = rng.integers(-(1 << 31), 1 << 31, (37, 50))
    assert np.array_equal(read_y(vita, prog, encode_y(vita, prog, y)), y)


def _run_words(cfg, text_or_words):
    words = assemble(text_or_words) if isinstance(text_or_words, str) else text_or_words
    return run_iss(cfg, Memories(imem=dict(enumerate(words))))


def test_front_end_errors(vita):
    r = _run_words(vita, [encode(Instr("lsp.fence")), 0x00000033])
    assert r.error and r.err_code == ERROR_CODES["illegal_instruction"]
    assert r.counters["cycles"] == 4 and r.counters["insns"] == 1
    words = [encode(Instr("lsp.fence"))] * vita.memories["imem"].depth
    r = _run_words(vita, words)
    assert r.err_code == ERROR_CODES["pc_overflow"]
    # lsp.gemm with a zero descriptor table entry (DRAM all zeros): TT = 0 is a bad tile
    r = _run_words(vita, "li a0, 0\nli a1, 3\nlsp.tiles a0, a1\nlsp.gemm\nlsp.halt")
    assert r.err_code == ERROR_CODES["bad_tile"]
    # no tiles: lsp.gemm takes its setup cycle and returns
    r = _run_words(vita, "lsp.gemm\nlsp.halt")
    assert not r.error and r.counters["busy"] == 1 and r.counters["cycles"] == 5


def test_work_is_bounded_by_the_descriptor_table(vita):
    """A tile count of 2^32 - 1 stops when the table leaves DRAM; a row pointer of 65535 stops
    when its index is loaded. Neither runs on (the RTL stops in the same places)."""
    prog = compile_layer(vita, np.ones((16, 16), np.int8), np.ones((16, 16), np.int8))
    words = list(prog.words)
    words[2:4] = [encode(i) for i in assemble_li(11, (1 << 32) - 1)]
    mem = Memories(imem=dict(enumerate(words)), dram=dict(prog.dram))
    r = run_iss(vita, mem)
    # tile 1's descriptor is the X tile's data: not a valid tile
    assert r.error and r.counters["tiles"] <= 1
    from sim.cases import _index_entry_patch
    bad = _index_entry_patch(vita, prog, 0, 1, 65535)
    r = run_iss(vita, Memories(imem=dict(enumerate(prog.words)), dram=bad))
    assert r.err_code == ERROR_CODES["index"] and r.counters["cycles"] < 400


def assemble_li(rd, value):
    from lsp_codesign.isa import li
    return li(rd, value)


def test_rdctr_reads_counters(vita):
    r = _run_words(vita, "li a1, 0\nlsp.rdctr a2, a1\nli a1, 6\nlsp.rdctr a3, a1\n"
                         "li a1, 99\nlsp.rdctr a4, a1\nlsp.halt")
    assert r.regs[12] == 2 * 3 - 1        # cycles before rdctr's execute cycle
    assert r.regs[13] == 5                # insns retired before the second rdctr
    assert r.regs[14] == 0                # unknown counter number reads 0


def test_compile_errors_name_the_layer_and_memory(vita):
    with pytest.raises(CompileError, match="do not form Y = X . W"):
        compile_layer(vita, np.zeros((4, 16), np.int8), np.zeros((10, 5), np.int8))
    with pytest.raises(CompileError, match="must hold int8 values"):
        compile_layer(vita, np.full((2, 16), 300), np.zeros((16, 16), np.int8))
    with pytest.raises(CompileError, match=r"qkv: M=40000, N=768, K=2304 needs at least .* of "
                                           r"DRAM"):
        compile_layer(vita, np.zeros((40000, 768), np.int8), np.zeros((2304, 768), np.int8),
                      name="qkv")
    cfg = tiny_config(ymem_kib=0.1)        # a Y bank of 3 words, less than one token tile
    with pytest.raises(CompileError, match=r"fc1: the smallest tile .* YMEM .*ymem_kib"):
        compile_layer(cfg, np.zeros((4, 4), np.int8), np.zeros((4, 4), np.int8), name="fc1")


def test_word_packing_round_trip():
    rng = np.random.default_rng(0)
    for bits in (8, 16, 32):
        lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
        a = rng.integers(lo, hi, (7, 5))
        np.testing.assert_array_equal(unpack_words(pack_words(a, bits), bits, 5), a)
    assert pack_words(np.array([[1, -1]]), 8) == [0xFF01]
