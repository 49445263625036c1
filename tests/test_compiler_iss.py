"""Compiler + instruction-set simulator: the memory image and program compute the right GEMM,
and the ISS's schedule walk counts the same events as the closed-form cycle model."""

from __future__ import annotations

import numpy as np
import pytest

from lsp_codesign.compiler import (Bases, CompileError, compile_layer, layer_program_length,
                                   pack_words, read_y, reference_gemm, unpack_words)
from lsp_codesign.cycle_model import estimate_layer
from lsp_codesign.isa import ERROR_CODES, Instr, assemble, encode
from lsp_codesign.iss import Memories, run_iss

BLOCKS = [("8x8", 8), ("16x16", 16), ("16x32", 16), ("32x16", 16), ("32x32", 32), ("16x16", 32)]


def run_case(cfg, x, w, mask, bases=Bases()):
    prog = compile_layer(cfg, x, w, mask, bases=bases)
    res = run_iss(cfg, Memories.from_program(prog))
    assert not res.error, res.err_code
    y = read_y(cfg, prog, res.y_words(prog.y_base, prog.y_words))
    return prog, res, y


@pytest.mark.parametrize("block, tile_m", BLOCKS)
def test_random_layers_bit_exact_and_counters_match_model(vita, block, tile_m):
    cfg = vita.with_overrides(block=block, tile_m=tile_m)
    rng = np.random.default_rng(hash(block) % 1000 + tile_m)
    for _ in range(4):
        m, n, k = (int(v) for v in rng.integers(1, 75, 3))
        x = rng.integers(-128, 128, (m, n)).astype(np.int8)
        w = rng.integers(-128, 128, (k, n)).astype(np.int8)
        kb, nb = -(-k // cfg.block_k), -(-n // cfg.block_n)
        mask = rng.random((kb, nb)) < rng.random()
        mask[0] = False  # an all-pruned block row
        _, res, y = run_case(cfg, x, w, mask)
        np.testing.assert_array_equal(y, reference_gemm(x, w, mask, cfg.block_k, cfg.block_n))
        est = estimate_layer(cfg, m, n, k, mask)
        assert {c: est.counters[c] for c in res.counters} == res.counters


def test_extremes_dense_and_all_pruned(vita):
    x = np.full((20, 48), -128, np.int8)
    w = np.full((40, 48), -128, np.int8)
    _, res, y = run_case(vita, x, w, None)
    assert (y == 48 * 128 * 128).all()
    _, res0, y0 = run_case(vita, x, w, np.zeros((3, 3), bool))
    assert (y0 == 0).all()
    assert res0.counters["compute"] == 0 and res0.counters["wmem_reads"] == 0
    # an all-pruned layer still drains every block row of every tile (zeros are written)
    assert res0.counters["ymem_writes"] == 2 * 3 * 16
    # int32 wrap-around: 2^31 overflows to -2^31
    x1 = np.full((1, 1 << 17), -128, np.int8)
    w1 = np.full((16, 1 << 17), -128, np.int8)
    ybig = reference_gemm(x1, w1, None, 16, 16)
    assert (ybig == -(1 << 31)).all()


def test_hand_worked_counters(vita):
    """M=20, N=40, K=24 on 16x16/BM=16: MT=2, KB=2, NB=3; two blocks kept in row 0."""
    mask = np.array([[1, 0, 1], [0, 0, 0]], bool)
    e = estimate_layer(vita, 20, 40, 24, mask)
    # busy = setup 1 + fill 16 + MT*(NNZ*D + KB*(BM+1)) = 1 + 16 + 2*(2*16 + 2*17) = 149
    assert e.counters["busy"] == 149
    assert e.counters["cycles"] == 2 * 27 + 149
    assert e.counters["compute"] == 64 and e.counters["stall"] == 16
    assert e.counters["macs"] == 64 * 256
    assert e.counters["xmem_reads"] == 64 and e.counters["wmem_reads"] == 64
    assert e.counters["idx_reads"] == 2 * (2 + 2) and e.counters["ymem_writes"] == 64
    assert e.counters["insns"] == e.counters["imem_reads"] == 27 == layer_program_length()
    # BK > BM: each block step lasts BK cycles, BK - BM of them stalls
    c = vita.with_overrides(block="32x16")
    e2 = estimate_layer(c, 20, 40, 24, np.array([[1, 0, 1]], bool))
    assert e2.counters["busy"] == 1 + 32 + 2 * (2 * 32 + 1 * 17)
    assert e2.counters["stall"] == 32 + 2 * 2 * 16


def test_nonzero_bases(vita):
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (33, 50)).astype(np.int8)
    w = rng.integers(-128, 128, (70, 50)).astype(np.int8)
    mask = rng.random((5, 4)) < 0.6
    _, _, y = run_case(vita, x, w, mask, Bases(x=100, w=37, y=500, row_ptr=9, col_idx=700))
    np.testing.assert_array_equal(y, reference_gemm(x, w, mask, 16, 16))


def _run_words(cfg, text_or_words):
    words = assemble(text_or_words) if isinstance(text_or_words, str) else text_or_words
    return run_iss(cfg, Memories(imem=dict(enumerate(words))))


def test_error_status(vita):
    r = _run_words(vita, [encode(Instr("lsp.fence")), 0x00000033])
    assert r.error and r.err_code == ERROR_CODES["illegal_instruction"]
    assert r.counters["cycles"] == 4 and r.counters["insns"] == 1
    r = _run_words(vita, "li a0, 4\nlsp.dim_mn a0, a0\nlsp.gemm\nlsp.halt")
    assert r.err_code == ERROR_CODES["bad_dims"]  # K was never set
    small = vita
    words = [encode(Instr("lsp.fence"))] * small.memories["imem"].depth
    r = _run_words(small, words)
    assert r.err_code == ERROR_CODES["pc_overflow"]
    # index inconsistent with NNZ: row pointers say 1 block, NNZ says 2
    prog = compile_layer(vita, np.ones((16, 16), np.int8), np.ones((16, 16), np.int8))
    mem = Memories.from_program(prog)
    nnz_li = [i for i, line in enumerate(prog.text.splitlines()) if line == "lsp.nnz a0"][0]
    mem.imem[nnz_li - 1] = encode(Instr("addi", rd=10, rs1=10, imm=2))
    r = run_iss(vita, mem)
    assert r.err_code == ERROR_CODES["index"]


def test_rdctr_reads_counters(vita):
    r = _run_words(vita, "li a1, 0\nlsp.rdctr a2, a1\nli a1, 5\nlsp.rdctr a3, a1\n"
                         "li a1, 99\nlsp.rdctr a4, a1\nlsp.halt")
    assert r.regs[12] == 2 * 3 - 1        # cycles before rdctr's execute cycle
    assert r.regs[13] == 5                # insns retired before the second rdctr
    assert r.regs[14] == 0                # unknown counter number reads 0


def test_compile_errors_name_the_memory(vita):
    x = np.zeros((197, 768), np.int8)
    w = np.zeros((3072, 768), np.int8)
    with pytest.raises(CompileError, match=r"layer: needs 147456 XMEM words .* raise "
                                           r"memories.xmem_kib"):
        compile_layer(vita, np.zeros((3072, 768), np.int8), w)
    with pytest.raises(CompileError, match=r"needs 147456 WMEM words .*memories.wmem_kib"):
        compile_layer(vita, x, w)
    with pytest.raises(CompileError, match="do not form Y = X . W"):
        compile_layer(vita, x, np.zeros((10, 5), np.int8))
    with pytest.raises(CompileError, match="must hold int8 values"):
        compile_layer(vita, np.full((2, 16), 300), np.zeros((16, 16), np.int8))


def test_word_packing_round_trip():
    rng = np.random.default_rng(0)
    for bits in (8, 16, 32):
        lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
        a = rng.integers(lo, hi, (7, 5))
        np.testing.assert_array_equal(unpack_words(pack_words(a, bits), bits, 5), a)
    assert pack_words(np.array([[1, -1]]), 8) == [0xFF01]
