"""Edge cases of the compiler's pieces (issue #11, mutation testing): block-sparse packing,
int8 quantisation, word and beat packing, the tiling plan and the DRAM image.

Expected values are worked by hand, taken from ``docs/hw.md`` (sections 3, 5 and 7), or come from
a small independent reimplementation in this file (a reader of the DRAM image that knows only
the documented layout). Validation is tested at its boundaries: a size that exactly fits is
accepted, the next one is refused, and each branch of an ``or`` is exercised on its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from lsp_codesign.compiler import (CompileError, compile_layer, encode_y, from_beats,
                                   layer_program, pack_words, read_y, reference_gemm, to_beats,
                                   unpack_words)
from lsp_codesign.config import HwConfig
from lsp_codesign.config_schema import ConfigError
from lsp_codesign.isa import assemble, encode
from lsp_codesign.packing import (BlockGrid, PackedWeight, PackingError, expand_mask, pack,
                                  unpack)
from lsp_codesign.quant import dequantize, quantize_activations, quantize_weights
from lsp_codesign.tiling import (MAX_TILES, LoopOrder, Plan, TilingError, layer_footprint,
                                 plan_layer, w_chunks)
from tests.conftest import CONFIGS

# ---- helpers --------------------------------------------------------------------------------


def make_cfg(block="4x4", tile_m=4, *, xmem_kib=1.0, wmem_kib=1.0, idx_kib=1.0, ymem_kib=4.0,
             beat=16, latency=8, dram_mib=1.0, index_bits=16, imem_words=32):
    """A block-sparse config with every memory size given (vita.yaml's energy figures)."""
    raw = yaml.safe_load((CONFIGS / "vita.yaml").read_text())
    raw.update(name="edge", block=block, tile_m=tile_m, index_bits=index_bits)
    raw["memories"] = {"imem_words": imem_words, "xmem_kib": xmem_kib, "wmem_kib": wmem_kib,
                       "idx_kib": idx_kib, "ymem_kib": ymem_kib}
    raw["dram"] = {"bytes_per_cycle": beat, "latency_cycles": latency, "capacity_mib": dram_mib}
    return HwConfig.from_dict(raw, source="edge config")


def kib_for_depth(depth, word_bits):
    """memories.*_kib that gives ``depth`` words of ``word_bits`` per bank (two banks, §3)."""
    return depth * word_bits * 2 / 8192


def cdiv(a, b):
    return -(-a // b)


# ---- packing: BlockGrid -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["K", "N", "block_k", "block_n"])
@pytest.mark.parametrize("bad", [0, -3, True, 4.0, "4"])
def test_block_grid_refuses_each_field_alone(field, bad):
    args = {"K": 8, "N": 8, "block_k": 4, "block_n": 4}
    args[field] = bad
    with pytest.raises(PackingError) as exc:
        BlockGrid(args["K"], args["N"], args["block_k"], args["block_n"])
    assert str(exc.value) == f"{field} must be a positive integer, got {bad!r}"


def test_block_grid_accepts_one_and_numpy_integers():
    g = BlockGrid(np.int64(1), 1, np.int32(1), 1)
    assert g.shape == (1, 1) and g.n_blocks == 1 and (g.k_pad, g.n_pad) == (1, 1)


@pytest.mark.parametrize("k, n, bk, bn, kb, nb", [
    (32, 16, 16, 8, 2, 2),        # exact multiples: no padded row or column
    (33, 17, 16, 8, 3, 3),        # one element over: one more block each
    (5, 3, 16, 8, 1, 1),          # smaller than one block
])
def test_block_grid_geometry_by_hand(k, n, bk, bn, kb, nb):
    g = BlockGrid(k, n, bk, bn)
    assert (g.kb, g.nb) == g.shape == (kb, nb)
    assert g.n_blocks == kb * nb
    assert (g.k_pad, g.n_pad) == (kb * bk, nb * bn)
    el = g.block_elements()
    assert el.shape == (kb, nb) and el.sum() == k * n       # every real element counted once
    assert el[0, 0] == min(k, bk) * min(n, bn)
    assert el[-1, -1] == (k - (kb - 1) * bk) * (n - (nb - 1) * bn)


def test_block_elements_by_hand():
    np.testing.assert_array_equal(BlockGrid(10, 6, 4, 4).block_elements(),
                                  [[16, 8], [16, 8], [8, 4]])


def test_check_mask_names_what_and_converts_zero_one():
    g = BlockGrid(8, 8, 4, 4)
    with pytest.raises(PackingError) as exc:
        g.check_mask(np.ones((2, 3), bool))
    assert str(exc.value) == ("mask has shape (2, 3), but a (8, 8) weight with block 4x4 needs "
                              "(2, 2)")
    with pytest.raises(PackingError, match=r"^gate has shape \(1, 2\)"):
        g.check_mask(np.ones((1, 2)), what="gate")
    with pytest.raises(PackingError) as exc:
        g.check_mask(np.array([[1, 0], [0, 2]]), what="gate")
    assert str(exc.value) == "gate must hold only 0/1 or booleans"
    with pytest.raises(PackingError, match="^mask must hold only 0/1"):
        g.check_mask(np.array([[1, 0], [0, -1]]))
    m = g.check_mask(np.array([[1, 0], [0, 1]]))
    assert m.dtype == bool and m.tolist() == [[True, False], [False, True]]
    m = g.check_mask(np.array([[1.0, 0.0], [1.0, 1.0]]))
    assert m.dtype == bool and m.tolist() == [[True, False], [True, True]]
    b = np.array([[True, False], [False, False]])
    assert g.check_mask(b).tolist() == b.tolist()


def test_expand_mask_by_hand():
    e = expand_mask(np.array([[1, 0], [0, 1]]), 3, 5, 2, 3)
    assert e.dtype == bool and e.shape == (3, 5)
    assert e.astype(int).tolist() == [[1, 1, 1, 0, 0],
                                      [1, 1, 1, 0, 0],
                                      [0, 0, 0, 1, 1]]
    with pytest.raises(PackingError, match=r"mask has shape \(1, 2\)"):
        expand_mask(np.ones((1, 2)), 3, 5, 2, 3)


# ---- packing: pack / unpack -----------------------------------------------------------------


def test_pack_by_hand_with_zero_one_mask_and_edge_padding():
    w = np.arange(1, 16, dtype=np.int8).reshape(3, 5)       # (K, N) = (3, 5), 2x3 blocks
    p = pack(w, np.array([[0, 1], [1, 1]]), 2, 3)
    assert p.row_ptr.dtype == np.int64 and p.col_idx.dtype == np.int64
    assert p.row_ptr.tolist() == [0, 1, 3] and p.col_idx.tolist() == [1, 0, 1]
    assert p.nnz == 3 and p.row_nnz.tolist() == [1, 2]
    assert p.blocks.dtype == np.int8 and p.blocks.flags.c_contiguous
    assert p.blocks.tolist() == [[[4, 5, 0], [9, 10, 0]],          # block (0, 1), column padded
                                 [[11, 12, 13], [0, 0, 0]],        # block (1, 0), row padded
                                 [[14, 15, 0], [0, 0, 0]]]         # corner block
    assert p.mask.tolist() == [[False, True], [True, True]]


def test_pack_nothing_kept_and_shape_errors():
    p = pack(np.ones((4, 4), np.int8), np.zeros((2, 2), bool), 2, 2)
    assert p.nnz == 0 and p.row_ptr.tolist() == [0, 0, 0] and p.blocks.shape == (0, 2, 2)
    assert not p.mask.any()
    np.testing.assert_array_equal(unpack(p), np.zeros((4, 4), np.int8))
    with pytest.raises(PackingError) as exc:
        pack(np.zeros((2, 2, 2)), np.ones((1, 1)), 2, 2)
    assert str(exc.value) == "weight must be 2-D (K, N), got shape (2, 2, 2)"


def _packed(row_ptr, col_idx, nblocks=None, grid=BlockGrid(4, 6, 2, 2), dtype=np.int8):
    nb = len(col_idx) if nblocks is None else nblocks
    blocks = np.arange(1, nb * 4 + 1, dtype=dtype).reshape(nb, 2, 2)
    return PackedWeight(grid, blocks, np.asarray(row_ptr, np.int64),
                        np.asarray(col_idx, np.int64))


def test_unpack_by_hand_keeps_dtype():
    p = _packed([0, 1, 2], [2, 0])        # KB = 2, NB = 3
    d = unpack(p)
    assert d.dtype == np.int8 and d.shape == (4, 6)
    assert d.tolist() == [[0, 0, 0, 0, 1, 2], [0, 0, 0, 0, 3, 4],
                          [5, 6, 0, 0, 0, 0], [7, 8, 0, 0, 0, 0]]
    assert unpack(_packed([0, 1, 2], [2, 0], dtype=np.int32)).dtype == np.int32


ROW_PTR_MSG = "row_ptr must start at 0, be non-decreasing and have KB + 1 entries"


@pytest.mark.parametrize("row_ptr, col_idx", [
    ([0, 1, 2, 2], [0, 1]),       # only the length is wrong (KB + 1 = 3)
    ([1, 1, 1], [0]),             # only the start is wrong (non-decreasing, ends at nnz)
    ([0, 2, 1], [0]),             # only the order is wrong (starts at 0, ends at nnz)
])
def test_unpack_row_ptr_rules_each_alone(row_ptr, col_idx):
    with pytest.raises(PackingError) as exc:
        unpack(_packed(row_ptr, col_idx))
    assert str(exc.value) == ROW_PTR_MSG


def test_unpack_counts_must_agree_each_alone():
    with pytest.raises(PackingError) as exc:               # row_ptr ends early, blocks agree
        unpack(_packed([0, 1, 1], [0, 1]))
    assert str(exc.value) == "row_ptr ends at 1 but there are 2 column indices and 2 blocks"
    with pytest.raises(PackingError) as exc:               # row_ptr agrees, a block too many
        unpack(_packed([0, 1, 2], [0, 1], nblocks=3))
    assert str(exc.value) == "row_ptr ends at 2 but there are 2 column indices and 3 blocks"


def test_unpack_column_range_boundaries():
    assert unpack(_packed([0, 1, 2], [2, 0])).any()         # NB - 1 = 2 is the last column
    for cols in ([3, 0], [0, -1]):                          # one past each end, each alone
        with pytest.raises(PackingError) as exc:
            unpack(_packed([0, 1, 2], cols))
        assert str(exc.value) == "column indices must be in 0..2"


# ---- quantisation -------------------------------------------------------------------------


def test_quantize_activations_by_hand():
    q, s = quantize_activations([[-254.0, 1.0, 3.0, 127.0]])       # max |x| 254: scale 2
    assert isinstance(s, float) and s == 2.0
    assert q.dtype == np.int8 and q.tolist() == [[-127, 0, 2, 64]]   # 0.5 -> 0, 1.5 -> 2
    q, s = quantize_activations(np.zeros((2, 3)))
    assert s == 1.0 and q.dtype == np.int8 and not q.any()
    q, s = quantize_activations(np.zeros((0, 3)))                   # empty: scale 1
    assert s == 1.0 and q.shape == (0, 3)
    q, s = quantize_activations([[1e-300, -2e-300]])                # tiny but not zero
    assert s == pytest.approx(2e-300 / 127) and q.tolist() == [[64, -127]]


def test_quantize_weights_per_row_by_hand():
    w = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [-127.0, 63.5, 1.0]])
    q, s = quantize_weights(w)
    assert s.tolist() == [2 / 127, 1.0, 1.0]
    assert q.dtype == np.int8
    assert q.tolist() == [[127, -64, 32], [0, 0, 0], [-127, 64, 1]]   # 63.5 -> 64, 31.75 -> 32
    q, s = quantize_weights(np.zeros((2, 0)))                       # no inputs: scale 1 per row
    assert s.tolist() == [1.0, 1.0] and q.shape == (2, 0)


def test_float32_operands_are_scaled_in_double_precision():
    """torch hands over float32; the scale is max|v| / 127 of the float32 values, in float64."""
    x = np.array([[0.3, -1.7]], dtype=np.float32)
    q, s = quantize_activations(x)
    assert s == float(np.float32(1.7)) / 127
    assert q.tolist() == [[round(float(np.float32(0.3)) / s), -127]]
    w = np.array([[0.3, -1.7], [2.9, 0.1]], dtype=np.float32)
    q, s = quantize_weights(w)
    assert s.dtype == np.float64
    assert s.tolist() == [float(np.float32(1.7)) / 127, float(np.float32(2.9)) / 127]


def test_minus_128_is_never_produced_even_when_the_scale_underflows():
    """quant.py: codes stay in -127..127 (negation never overflows), even for the smallest
    subnormal maximum, whose scale max/127 underflows to 0 and sends v/s to +-inf."""
    tiny = np.array([[-5e-324, 5e-324]])
    with np.errstate(divide="ignore"):
        q, _ = quantize_weights(tiny)
        qa, _ = quantize_activations(tiny)
    assert q.tolist() == [[-127, 127]] and qa.tolist() == [[-127, 127]]


def test_dequantize_by_hand():
    y = dequantize(np.array([[2, -3], [0, 5]], dtype=np.int32), 0.5, np.array([4.0, 0.25]))
    assert y.dtype == np.float64
    assert y.tolist() == [[4.0, -0.375], [0.0, 0.625]]


# ---- words, beats, reference GEMM -----------------------------------------------------------


def test_pack_words_errors_name_the_problem():
    with pytest.raises(ValueError) as exc:
        pack_words(np.zeros(4, int), 8)
    assert str(exc.value) == "pack_words expects a 2-D array (words x elements)"
    with pytest.raises(ValueError) as exc:
        pack_words(np.zeros((1, 2), int), 12)
    assert str(exc.value) == "unsupported element width 12"


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_unsigned_words_round_trip_bit_patterns(bits):
    """§3: two's complement, element 0 in the low bits; a value of 0 .. 2^w - 1 packs to its own
    bit pattern and unpacks unsigned to itself."""
    top = (1 << bits) - 1
    u = np.array([[top, 1, 0], [1 << (bits - 1), top - 1, 5]], dtype=np.int64)
    words = pack_words(u, bits)
    assert words[0] == top | 1 << bits
    assert words[1] == (1 << (bits - 1)) | (top - 1) << bits | 5 << 2 * bits
    back = unpack_words(words, bits, 3, signed=False)
    assert back.dtype == np.int64 and back.tolist() == u.tolist()
    signed = unpack_words(words, bits, 3)
    assert signed.dtype == np.int64 and signed[0].tolist() == [-1, 1, 0]
    assert signed[1, 0] == -(1 << (bits - 1))


def test_beats_by_hand():
    assert to_beats(bytes([1, 2, 3]), 2) == [0x0201, 0x0003]        # last beat zero padded
    assert to_beats(bytes([1, 2, 3, 4]), 2) == [0x0201, 0x0403]     # exact: no extra beat
    assert to_beats(b"", 4) == []
    assert from_beats([0x0201, 0x03], 2) == bytes([1, 2, 3, 0])
    assert from_beats([0xFFFF_0001], 4) == bytes([1, 0, 0xFF, 0xFF])
    assert from_beats([], 8) == b""


def test_reference_gemm_by_hand_and_wraps_both_ways():
    x = np.array([[1, 2, 3, 4]])
    w = np.array([[1, 1, 1, 1], [-1, 0, 0, 2]])
    y = reference_gemm(x, w, np.array([[1, 0], [1, 1]]), 1, 2)     # blocks 1x2: W[0, 2:] pruned
    assert y.dtype == np.int64 and y.tolist() == [[3, 7]]
    assert reference_gemm(x, w, None, 1, 2).tolist() == [[10, 7]]
    big = np.array([[1 << 30, 1 << 30]])
    assert reference_gemm(big, np.array([[2, 0], [-2, -2]]), None, 1, 1).tolist() == \
        [[-(1 << 31), 0]]                                   # 2^31 wraps, -2^32 wraps to 0
    assert reference_gemm(np.array([[-(1 << 31), -1]]), np.array([[1, 1]]), None, 1, 1) \
        .tolist() == [[(1 << 31) - 1]]                      # -2^31 - 1 wraps to 2^31 - 1


def test_layer_program_is_the_documented_program():
    """§4: ``li a0, DESC; li a1, T; lsp.tiles a0, a1; lsp.gemm; lsp.fence; lsp.halt``."""
    for desc, tiles in ((0, 1), (0x12345, 0xFFFF), (0x800, 3)):
        text = (f"li a0, {desc}\nli a1, {tiles}\nlsp.tiles a0, a1\nlsp.gemm\nlsp.fence\n"
                "lsp.halt")
        assert [encode(i) for i in layer_program(desc, tiles)] == assemble(text)


# ---- operand checks -------------------------------------------------------------------------


def test_compile_refuses_other_engines(tpu):
    with pytest.raises(CompileError) as exc:
        compile_layer(tpu, np.zeros((4, 4), np.int8), np.zeros((4, 4), np.int8), name="fc2")
    assert str(exc.value) == (f"fc2: config {tpu.name} has engine systolic; only the "
                              "block_sparse engine runs programs")


@pytest.mark.parametrize("x_shape, w_shape", [((4, 8, 1), (4, 8)), ((4, 8), (4, 8, 1)),
                                              ((4, 8), (4, 7)), ((8,), (8,))])
def test_operands_must_form_the_gemm_each_alone(x_shape, w_shape):
    cfg = make_cfg()
    with pytest.raises(CompileError) as exc:
        compile_layer(cfg, np.zeros(x_shape, np.int8), np.zeros(w_shape, np.int8), name="q")
    assert str(exc.value) == (f"q: X {x_shape} and W {w_shape} do not form Y = X . W^T "
                              "(need X (M, N), W (K, N))")


def test_operand_values_int8_boundaries():
    cfg = make_cfg()
    edge = np.array([[-128, 127, 0, 1]], dtype=np.int16)      # int8's range in a wider dtype
    prog = compile_layer(cfg, edge, np.ones((4, 4), np.int32))
    assert prog.m == 1 and prog.n == 4 and prog.k == 4
    for what, x, w in (("X", [[-129, 0, 0, 0]], np.ones((4, 4), np.int8)),
                       ("X", [[128, 0, 0, 0]], np.ones((4, 4), np.int8)),
                       ("W", np.ones((1, 4), np.int8), np.full((4, 4), 128, np.int16)),
                       ("W", np.ones((1, 4), np.int8), np.full((4, 4), -129, np.int64)),
                       ("X", np.ones((1, 4), np.float32), np.ones((4, 4), np.int8)),
                       ("W", np.ones((1, 4), np.int8), np.zeros((4, 4), bool))):
        with pytest.raises(CompileError) as exc:
            compile_layer(cfg, np.asarray(x), np.asarray(w), name="p")
        assert str(exc.value) == f"p: {what} must hold int8 values"


@pytest.mark.parametrize("x_shape, w_shape, msg", [
    ((0, 4), (4, 4), "M=0, N=4, K=4"), ((3, 0), (4, 0), "M=3, N=0, K=4"),
    ((3, 4), (0, 4), "M=3, N=4, K=0")])
def test_empty_gemm_each_dimension_alone(x_shape, w_shape, msg):
    with pytest.raises(CompileError) as exc:
        compile_layer(make_cfg(), np.zeros(x_shape, np.int16), np.zeros(w_shape, np.int16))
    assert str(exc.value) == f"layer: empty GEMM ({msg})"         # the default layer name


# ---- the plan a caller passes in ------------------------------------------------------------


def _plan(cfg, m, n, k, tt, kg, ng, order=LoopOrder.ROWS_OUTER):
    return Plan(m, n, k, order, tt, kg, ng, cfg.block_k, cfg.block_n, cfg.tile_m)


def test_plan_for_another_shape_or_config_each_alone():
    cfg = make_cfg()
    x, w = np.ones((8, 8), np.int8), np.ones((8, 8), np.int8)
    other = make_cfg(tile_m=8)
    for plan in (_plan(cfg, 8, 8, 12, 1, 1, 1),                  # shape differs (K)
                 _plan(cfg, 16, 8, 8, 1, 1, 1),                  # shape differs (M)
                 _plan(cfg, 8, 4, 8, 1, 1, 1),                   # shape differs (N)
                 _plan(other, 8, 8, 8, 1, 1, 1),                 # config differs (tile_m)
                 Plan(8, 8, 8, LoopOrder.ROWS_OUTER, 1, 1, 1, 2, 4, 4),     # block_k
                 Plan(8, 8, 8, LoopOrder.ROWS_OUTER, 1, 1, 1, 4, 2, 4)):    # block_n
        with pytest.raises(CompileError) as exc:
            compile_layer(cfg, x, w, name="fc", plan=plan)
        assert str(exc.value) == "fc: the plan is for another shape or config"


# Block 4x4, BM 4: XMEM and WMEM words are 32 bits, IDX entries 16, YMEM words 129 (§3).
@pytest.mark.parametrize("mem, tt, kg, ng, need", [
    ("xmem", 2, 1, 2, 2 * 4 * 2),            # TT * BM * NG
    ("wmem", 1, 2, 2, 2 * 2 * 4),            # KG * NG * wpb (wpb = 4)
    ("idx", 1, 2, 2, 2 * 2 + 1 + 2 * 2),     # 2 KG + 1 + KG * NG
    ("ymem", 2, 2, 1, 2 * 4 * 2),            # TT * BM * KG
])
def test_a_given_plan_must_fit_each_bank_exactly(mem, tt, kg, ng, need):
    word = {"xmem": 32, "wmem": 32, "idx": 16, "ymem": 129}[mem]
    x = np.arange(16 * 16).reshape(16, 16) % 7 - 3
    w = (np.arange(16 * 16).reshape(16, 16) % 5 - 2).T.copy()
    for depth, ok in ((need, True), (need - 1, False)):
        cfg = make_cfg(**{f"{mem}_kib": kib_for_depth(depth, word)})
        assert cfg.memories[mem].depth == depth
        plan = _plan(cfg, 16, 16, 16, tt, kg, ng)
        if ok:
            prog = compile_layer(cfg, x, w, plan=plan)
            assert prog.plan is plan and prog.n_tiles == plan.n_tiles
            continue
        with pytest.raises(CompileError) as exc:
            compile_layer(cfg, x, w, name="fc", plan=plan)
        assert str(exc.value) == (f"fc: the plan's tiles need {need} {mem.upper()} words per "
                                  f"bank, the config has {depth}")


# ---- the DRAM image, read back through the documented layout ------------------------------


def _desc(cfg, prog, k):
    """Descriptor k as its 16 words, read from the image (§5: at beat DESC + k * 512 / b)."""
    b = cfg.dram.bytes_per_cycle
    per = 64 // b
    raw = from_beats([prog.dram[k * per + i] for i in range(per)], b)
    return np.frombuffer(raw, "<u4").tolist()


def _read(cfg, prog, beat, nbytes):
    b = cfg.dram.bytes_per_cycle
    return from_beats([prog.dram[beat + i] for i in range(cdiv(nbytes, b))], b)[:nbytes]


def _reader_check(cfg, prog, x, w, mask):
    """Every tile's descriptor, X tile, index segment and W chunks as docs/hw.md lays them out."""
    bm, bk, bn, b = cfg.tile_m, cfg.block_k, cfg.block_n, cfg.dram.bytes_per_cycle
    m, n = x.shape
    k = w.shape[0]
    kb, nb, mt = cdiv(k, bk), cdiv(n, bn), cdiv(m, bm)
    xp = np.zeros((mt * bm, nb * bn), np.int8)
    xp[:m, :n] = x
    wp = np.zeros((kb * bk, nb * bn), np.int8)
    wp[:k, :n] = w
    plan = prog.plan
    t0 = np.cumsum((0,) + plan.t_sizes)
    g0 = np.cumsum((0,) + plan.g_sizes)
    h0 = np.cumsum((0,) + plan.h_sizes)
    wpb = cfg.words_per_block
    ib = cfg.index_bits // 8
    # Every beat below the Y area is in the image, and nothing at or above it (§3 layout).
    assert sorted(prog.dram) == list(range(prog.y_base))
    seen_w = bytearray()
    y_seen = set()
    for kk in range(plan.n_tiles):
        d = _desc(cfg, prog, kk)
        ti, gi, hi = int(plan.tile_t[kk]), int(plan.tile_g[kk]), int(plan.tile_h[kk])
        flags = d[0]
        assert flags == int(plan.swap_x[kk]) | int(plan.swap_w[kk]) << 1 | int(plan.swap_y[kk]) << 2
        tt, kg, ng = plan.t_sizes[ti], plan.g_sizes[gi], plan.h_sizes[hi]
        sub = mask[g0[gi]:g0[gi + 1], h0[hi]:h0[hi + 1]]
        rows = [j for j in range(kg) if sub[j].any()]
        assert d[1:6] == [tt, kg, ng, len(rows), int(sub.sum())]
        assert d[11:] == [0] * 5
        if flags & 1:
            xt = xp[t0[ti] * bm:t0[ti + 1] * bm, h0[hi] * bn:h0[hi + 1] * bn]
            assert _read(cfg, prog, d[6], xt.size) == xt.tobytes()      # token-major words
        else:
            assert d[6] == 0
        if flags & 2:
            ptr = [0]
            for j in rows:
                ptr.append(ptr[-1] + int(sub[j].sum()))
            cols = [c for j in rows for c in range(ng) if sub[j, c]]
            want = ptr + rows + cols                                      # DCSR, §3
            got = np.frombuffer(_read(cfg, prog, d[7], len(want) * ib), f"<u{ib}").tolist()
            assert got == want
            # the W chunks since the previous swap, in order, are this group's kept blocks
            blocks = b"".join(
                wp[(g0[gi] + j) * bk:(g0[gi] + j + 1) * bk,
                   (h0[hi] + c) * bn:(h0[hi] + c + 1) * bn].tobytes()
                for j in range(kg) for c in range(ng) if sub[j, c])
            if d[10]:
                seen_w += _read(cfg, prog, d[9], d[10] * bk * bn // wpb)
            assert bytes(seen_w) == blocks
            seen_w = bytearray()
        else:
            assert d[7] == 0
            if d[10]:
                seen_w += _read(cfg, prog, d[9], d[10] * bk * bn // wpb)
        if not d[10]:
            assert d[9] == 0
        if flags & 4:
            size = tt * bm * kg * bk * 4
            assert prog.y_base <= d[8] and d[8] + cdiv(size, b) <= prog.y_base + prog.y_words
            assert d[8] - prog.y_base == prog.y_regions[ti, gi]
            y_seen.add((ti, gi))
        else:
            assert d[8] == 0
    assert y_seen == set(prog.y_regions)
    return plan


def test_dram_image_read_back_through_the_documented_layout():
    """Several token blocks, row groups and column groups; an all-pruned group; uneven edges."""
    cfg = make_cfg(xmem_kib=kib_for_depth(16, 32), wmem_kib=kib_for_depth(16, 32),
                   idx_kib=kib_for_depth(16, 16), ymem_kib=kib_for_depth(16, 129), beat=8)
    rng = np.random.default_rng(11)
    m, n, k = 13, 22, 19
    x = rng.integers(-128, 128, (m, n)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    mask = rng.random((cdiv(k, 4), cdiv(n, 4))) < 0.6
    mask[0] = False
    mask[:, 0] = True
    mask[-1, -1] = True
    for plan in (None, _plan(cfg, m, n, k, 2, 2, 2),
                 _plan(cfg, m, n, k, 1, 2, 2, LoopOrder.TOKENS_OUTER)):
        prog = compile_layer(cfg, x, w, mask, plan=plan)
        p = _reader_check(cfg, prog, x, w, mask)
        assert len(p.h_sizes) > 1 and len(p.g_sizes) > 1 and len(p.t_sizes) > 1
    # One column group: W of the next row group streams in chunks over the token blocks of the
    # current one (§7), and tiles that keep their banks leave X, IDX and Y at 0.
    x, w = x[:, :8], w[:, :8]
    mask = mask[:, :2]
    rows_outer = _plan(cfg, m, 8, k, 1, 1, 2)            # W swaps once per row group
    tokens_outer = _plan(cfg, m, 8, k, 2, 1, 2, LoopOrder.TOKENS_OUTER)   # X stays
    for plan in (rows_outer, tokens_outer):
        prog = compile_layer(cfg, x, w, mask, plan=plan)
        p = _reader_check(cfg, prog, x, w, mask)
        assert len(p.h_sizes) == 1 and len(p.t_sizes) > 1
    assert (rows_outer.w_runs()[2] > 1).any() and not rows_outer.swap_w.all()
    assert not tokens_outer.swap_x.all()


def test_dram_image_sizes_from_the_layout_rules():
    """§3: descriptors, X tiles, W and index segments, then Y regions, each on a beat."""
    cfg = make_cfg(beat=32)
    m, n, k = 9, 12, 10
    mask = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], bool)
    prog = compile_layer(cfg, np.ones((m, n), np.int8), np.ones((k, n), np.int8), mask,
                         name="proj")
    assert prog.extra == {"name": "proj"} and prog.nnz == 5
    plan, b, bm = prog.plan, 32, 4
    beats = cdiv(plan.n_tiles * 64, b)
    for tt in plan.t_sizes:
        for ng in plan.h_sizes:
            beats += cdiv(tt * bm * ng * 4, b)
    g0, h0 = np.cumsum((0,) + plan.g_sizes), np.cumsum((0,) + plan.h_sizes)
    for gi in range(len(plan.g_sizes)):
        for hi in range(len(plan.h_sizes)):
            sub = mask[g0[gi]:g0[gi + 1], h0[hi]:h0[hi + 1]]
            r, nnz = int(sub.any(axis=1).sum()), int(sub.sum())
            beats += cdiv(nnz * 16, b) + cdiv((2 * r + 1 + nnz) * 2, b)
    assert prog.y_base == beats
    y = 0
    for ti, tt in enumerate(plan.t_sizes):
        for gi, kg in enumerate(plan.g_sizes):
            assert prog.y_regions[ti, gi] == y
            y += cdiv(tt * bm * kg * 4 * 4, b)
    assert prog.y_words == y


def test_dram_capacity_exactly_fits_and_one_beat_less_is_refused():
    x, w = np.ones((9, 12), np.int8), np.ones((10, 12), np.int8)
    probe = compile_layer(make_cfg(beat=16), x, w)
    need = probe.y_base + probe.y_words                    # beats of the whole image
    fits = make_cfg(beat=16, dram_mib=need * 16 / (1 << 20))
    assert fits.dram.depth == need
    prog = compile_layer(fits, x, w)
    assert prog.y_base + prog.y_words == need
    small = make_cfg(beat=16, dram_mib=(need - 1) * 16 / (1 << 20))
    with pytest.raises(CompileError) as exc:
        compile_layer(small, x, w, name="fc1")
    assert str(exc.value) == (f"fc1: the layer's DRAM image needs {need * 16:,} bytes but edge "
                              f"config has {(need - 1) * 16:,} (dram.capacity_mib)")


def test_program_must_fit_imem():
    x, w = np.ones((4, 4), np.int8), np.ones((4, 4), np.int8)
    assert len(compile_layer(make_cfg(imem_words=8), x, w).words) == 8
    with pytest.raises(CompileError) as exc:
        compile_layer(make_cfg(imem_words=7), x, w, name="head")
    assert str(exc.value) == "head: program of 8 instructions exceeds IMEM (7 words)"


# ---- Y read-back ----------------------------------------------------------------------------


def test_y_area_layout_and_read_back_length():
    """§3: Y region (T, g) holds TT*BM*KG words of BK int32, word p*KG + i = Y[token p, row i]:
    the region is the (tokens x outputs) sub-matrix in row-major int32, padded with zeros."""
    cfg = make_cfg(ymem_kib=kib_for_depth(8, 129), beat=8)
    m, n, k = 10, 4, 11
    prog = compile_layer(cfg, np.ones((m, n), np.int8), np.ones((k, n), np.int8))
    plan = prog.plan
    assert len(plan.t_sizes) > 1 or len(plan.g_sizes) > 1
    y = (np.arange(m * k).reshape(m, k) - 50) * 40_000_000        # beyond int32: wraps
    beats = encode_y(cfg, prog, y)
    assert len(beats) == prog.y_words
    data = from_beats(beats, 8)
    yp = np.zeros((cdiv(m, 4) * 4, cdiv(k, 4) * 4), np.int64)
    yp[:m, :k] = y
    yw = ((yp + (1 << 31)) % (1 << 32) - (1 << 31)).astype("<i4")
    t0, g0 = np.cumsum((0,) + plan.t_sizes), np.cumsum((0,) + plan.g_sizes)
    for (ti, gi), off in prog.y_regions.items():
        region = yw[t0[ti] * 4:t0[ti + 1] * 4, g0[gi] * 4:g0[gi + 1] * 4].tobytes()
        assert data[off * 8: off * 8 + len(region)] == region
    back = read_y(cfg, prog, beats)
    assert back.shape == (m, k) and back.dtype == np.int64
    assert back.tolist() == yw[:m, :k].astype(np.int64).tolist()
    assert encode_y(cfg, prog, [[(1 << 32) + 5] * k] * m)[0] & 0xFFFFFFFF == 5
    for bad in (prog.y_words - 1, prog.y_words + 1):
        with pytest.raises(ValueError) as exc:
            read_y(cfg, prog, [0] * bad)
        assert str(exc.value) == f"expected {prog.y_words} Y beats, got {bad}"


# ---- tiling -------------------------------------------------------------------------------


def test_plan_sizes_and_order_by_hand():
    # M = 9 tokens at BM 4: MT = 3 token tiles in blocks of 2 -> sizes (2, 1);
    # K = 6 at BK 4: KB = 2 block rows in groups of 1; N = 4: NB = 1, one column group.
    p = Plan(9, 4, 6, LoopOrder.ROWS_OUTER, 2, 1, 1, 4, 4, 4)
    assert (p.mt, p.kb, p.nb) == (3, 2, 1)
    assert (p.t_sizes, p.g_sizes, p.h_sizes) == ((2, 1), (1, 1), (1,))
    assert p.groups == (2, 1) and p.n_tiles == 4
    # g, T, h: (t, g) = (0, 0), (1, 0), (0, 1), (1, 1)
    assert p.tile_t.tolist() == [0, 1, 0, 1] and p.tile_g.tolist() == [0, 0, 1, 1]
    assert p.tile_h.tolist() == [0, 0, 0, 0]
    assert p.tile_tt().tolist() == [2, 1, 2, 1] and p.tile_kg().tolist() == [1, 1, 1, 1]
    assert p.tile_ng().tolist() == [1, 1, 1, 1]
    assert p.swap_x.tolist() == [True, True, True, True]       # (T, h) changes every tile
    assert p.swap_w.tolist() == [True, False, True, False]     # (g, h) changes every 2nd
    assert p.swap_y.tolist() == [True, True, True, True]
    assert p.describe() == ("4 tiles (g,T,h): 2 token blocks of 2 x 2 row groups of 1 x "
                            "1 column groups of 1")
    q = Plan(9, 4, 6, LoopOrder.TOKENS_OUTER, 2, 1, 1, 4, 4, 4)
    assert q.tile_t.tolist() == [0, 0, 1, 1] and q.tile_g.tolist() == [0, 1, 0, 1]
    assert q.swap_x.tolist() == [True, False, True, False]
    assert q.swap_w.tolist() == [True, True, True, True]
    assert q.describe().startswith("4 tiles (T,g,h): ")


def _loops(p):
    """The tile sequence of §7's loop nest, written as loops."""
    nt, ngr, nh = len(p.t_sizes), len(p.g_sizes), len(p.h_sizes)
    if p.order is LoopOrder.ROWS_OUTER:
        return [(t, g, h) for g in range(ngr) for t in range(nt) for h in range(nh)]
    return [(t, g, h) for t in range(nt) for g in range(ngr) for h in range(nh)]


@pytest.mark.parametrize("order", list(LoopOrder))
@pytest.mark.parametrize("m, n, k, tt, kg, ng", [(37, 20, 27, 2, 2, 2), (16, 16, 16, 4, 4, 4),
                                                 (5, 9, 3, 1, 1, 2), (40, 40, 40, 8, 1, 3)])
def test_plan_tiles_follow_the_loop_nest(order, m, n, k, tt, kg, ng):
    p = Plan(m, n, k, order, tt, kg, ng, 4, 4, 4)
    mt, kb, nb = cdiv(m, 4), cdiv(k, 4), cdiv(n, 4)
    for sizes, total, step in ((p.t_sizes, mt, tt), (p.g_sizes, kb, kg), (p.h_sizes, nb, ng)):
        assert sum(sizes) == total and all(s == step for s in sizes[:-1])
        assert 0 < sizes[-1] <= step and len(sizes) == cdiv(total, step)
    seq = _loops(p)
    assert list(zip(p.tile_t.tolist(), p.tile_g.tolist(), p.tile_h.tolist())) == seq
    prev = None
    for i, (t, g, h) in enumerate(seq):
        # §5: a tile swaps the X bank when (T, h) changes, W when (g, h), Y when (T, g)
        assert p.swap_x[i] == (prev is None or (prev[0], prev[2]) != (t, h))
        assert p.swap_w[i] == (prev is None or (prev[1], prev[2]) != (g, h))
        assert p.swap_y[i] == (prev is None or (prev[0], prev[1]) != (t, g))
        prev = (t, g, h)
    owner, j, nch = p.w_runs()
    swaps = [i for i in range(p.n_tiles) if p.swap_w[i]]
    start = 0
    for s in swaps:            # §7: chunks ride on the descriptors after the previous swap
        for i in range(start, s + 1):
            assert (owner[i], j[i], nch[i]) == (s, i - start, s + 1 - start)
        start = s + 1
    for i in range(start, p.n_tiles):
        assert (owner[i], j[i], nch[i]) == (-1, 0, 1)


def test_group_counts_by_hand():
    p = Plan(4, 12, 12, LoopOrder.ROWS_OUTER, 1, 2, 2, 4, 4, 4)    # KB = NB = 3: groups (2, 1)
    mask = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0]], bool)
    nnz, rows = p.group_counts(mask)
    assert nnz.dtype.kind == rows.dtype.kind == "i"          # counts, not fractions
    assert nnz.tolist() == [[1, 2], [2, 0]]
    assert rows.tolist() == [[1, 2], [1, 0]]


def test_w_chunks_partition_whole_beats_evenly():
    assert [tuple(int(v) for v in w_chunks(10, 2, j, 4)) for j in range(2)] == [(4, 0), (6, 4)]
    assert tuple(int(v) for v in w_chunks(0, 3, 2, 4)) == (0, 0)
    for words in range(0, 23):
        for unit in (1, 2, 4):
            for n in range(1, 6):
                parts = [tuple(int(v) for v in w_chunks(words, n, j, unit)) for j in range(n)]
                pos = 0
                for length, start in parts:
                    assert start == pos and length >= 0 and start % unit == 0
                    pos += length
                assert pos == words
                full = [cdiv(length, unit) for length, _ in parts]
                assert max(full) - min(full) <= 1            # as even as whole beats allow
    lengths, starts = w_chunks(np.array([10, 8]), np.array([2, 1]), np.array([1, 0]), 4)
    assert lengths.tolist() == [6, 8] and starts.tolist() == [4, 0]


@pytest.mark.parametrize("field", ["M", "N", "K"])
def test_shape_checks_each_dimension_alone(vita, field):
    for bad in (0, -1, True, 2.0, None):
        dims = {"M": 4, "N": 4, "K": 4, field: bad}
        with pytest.raises(TilingError) as exc:
            plan_layer(vita, dims["M"], dims["N"], dims["K"], name="mlp")
        assert str(exc.value) == f"mlp: {field} must be a positive integer, got {bad!r}"
    dims = {"M": 4, "N": 4, "K": 4, field: 1 << 32}
    with pytest.raises(TilingError) as exc:
        plan_layer(vita, dims["M"], dims["N"], dims["K"], name="mlp")
    assert str(exc.value) == f"mlp: {field}={1 << 32} does not fit the engine's 32-bit registers"
    dims[field] = (1 << 32) - 1                  # fits the registers; too big for the DRAM
    with pytest.raises(TilingError, match="of DRAM"):
        plan_layer(vita, dims["M"], dims["N"], dims["K"], name="mlp")
    dims[field] = np.int64(1)
    assert plan_layer(vita, dims["M"], dims["N"], dims["K"]).n_tiles == 1


def test_layer_footprint_by_hand():
    cfg = make_cfg("8x4", 4)
    # M 5 -> 2 token tiles (8 rows); N 6 -> 2 block columns (8); K 9 -> 2 block rows (16)
    assert layer_footprint(cfg, 5, 6, 9) == 8 * 8 + 2 * 2 * 8 * 4 + 8 * 16 * 4


def test_dram_lower_bound_exactly_fits():
    m, n, k = 40, 64, 48
    cfg0 = make_cfg()
    need = layer_footprint(cfg0, m, n, k)
    assert need == 40 * 64 + 48 * 64 + 40 * 48 * 4
    ok = make_cfg(dram_mib=need / (1 << 20))
    assert plan_layer(ok, m, n, k).m == m
    short = make_cfg(dram_mib=(need - 16) / (1 << 20))
    with pytest.raises(TilingError) as exc:
        plan_layer(short, m, n, k, name="v")
    assert str(exc.value) == (f"v: M=40, N=64, K=48 needs at least {need / (1 << 20):,.1f} MiB "
                              f"of DRAM (X, W and int32 Y) but edge config has "
                              f"{(need - 16) / (1 << 20):g} MiB (dram.capacity_mib)")


def test_plan_layer_refuses_other_engines_and_bad_masks(tpu):
    with pytest.raises(TilingError) as exc:
        plan_layer(tpu, 4, 4, 4, name="a")
    assert str(exc.value) == (f"a: config {tpu.name} has engine systolic; only the "
                              "block_sparse engine is tiled")
    with pytest.raises(TilingError, match="^layer: config "):          # the default name
        plan_layer(tpu, 4, 4, 4)
    cfg = make_cfg()
    with pytest.raises(TilingError) as exc:
        plan_layer(cfg, 8, 12, 8, name="a", mask=np.ones((3, 2)))
    assert str(exc.value) == "a: block mask has shape (3, 2), expected (2, 3)"
    int_mask = np.array([[1, 0, 1], [0, 1, 1]])
    assert plan_layer(cfg, 8, 12, 8, mask=int_mask) == \
        plan_layer(cfg, 8, 12, 8, mask=int_mask.astype(bool))


# BM 4, block 4x4: the smallest tile needs BM XMEM words, wpb = 4 WMEM words, 4 IDX entries
# (row_ptr[0..1], row_id[0], col[0]) and BM YMEM words.
@pytest.mark.parametrize("mem, word, need", [("xmem", 32, 4), ("wmem", 32, 4), ("idx", 16, 4),
                                             ("ymem", 129, 4)])
def test_smallest_tile_fits_each_bank_exactly(mem, word, need):
    ok = make_cfg(**{f"{mem}_kib": kib_for_depth(need, word)})
    assert ok.memories[mem].depth == need
    plan = plan_layer(ok, 4, 4, 4, name="fc1")
    assert (plan.tt, plan.kg, plan.ng) == (1, 1, 1)
    if mem == "wmem":        # the config itself refuses a WMEM bank smaller than one block
        with pytest.raises(ConfigError, match="memories.wmem_kib"):
            make_cfg(**{f"{mem}_kib": kib_for_depth(need - 1, word)})
        return
    small = make_cfg(**{f"{mem}_kib": kib_for_depth(need - 1, word)})
    with pytest.raises(TilingError) as exc:
        plan_layer(small, 4, 4, 4, name="fc1")
    assert str(exc.value) == (f"fc1: the smallest tile (one token tile, one block row, one block "
                              f"column) needs {need} {mem.upper()} words per bank but edge config "
                              f"has {need - 1}; raise memories.{mem}_kib")


def _fits(cfg, tt, kg, ng):
    """§5's bank checks for a tile of TT x KG x NG with every block kept."""
    mem, bm, wpb = cfg.memories, cfg.tile_m, cfg.words_per_block
    return (tt * bm * ng <= mem["xmem"].depth and kg * ng * wpb <= mem["wmem"].depth
            and 2 * kg + 1 + kg * ng <= mem["idx"].depth and tt * bm * kg <= mem["ymem"].depth
            and kg * ng < 1 << cfg.index_bits)


def _pow2_upto(top):
    return sorted({1 << i for i in range(top.bit_length()) if 1 << i <= top} | {top})


@pytest.mark.parametrize("m, n, k, mems", [
    (48, 64, 40, dict(xmem_kib=kib_for_depth(24, 32), wmem_kib=kib_for_depth(20, 32),
                      idx_kib=kib_for_depth(30, 16), ymem_kib=kib_for_depth(40, 129))),
    (21, 12, 36, dict(xmem_kib=kib_for_depth(64, 32), wmem_kib=kib_for_depth(12, 32),
                      idx_kib=kib_for_depth(64, 16), ymem_kib=kib_for_depth(12, 129))),
    (48, 24, 40, dict(xmem_kib=kib_for_depth(1024, 32), wmem_kib=kib_for_depth(1024, 32),
                      idx_kib=kib_for_depth(1024, 16), ymem_kib=kib_for_depth(1024, 129))),
    (48, 24, 40, dict(xmem_kib=kib_for_depth(1024, 32), wmem_kib=kib_for_depth(1024, 32),
                      idx_kib=kib_for_depth(1024, 16), ymem_kib=kib_for_depth(32, 129))),
    (77, 18, 76, dict(xmem_kib=0.25, wmem_kib=0.5, idx_kib=0.25, ymem_kib=0.50390625)),
    # block 2x2 and 64-byte beats: a Y region of 32 bytes is half a beat, so the plans differ
    # in the bytes they write, not only in those they read
    (34, 7, 28, dict(block="2x2", beat=64, xmem_kib=1.0, wmem_kib=0.25, idx_kib=0.25,
                     ymem_kib=1.0)),
    # IDX of 6 entries: NG = 4 would need 3 + 4, so NG = 2 (and KG = 1: 2 + 1 + 2 = 5)
    (8, 16, 32, dict(xmem_kib=kib_for_depth(1024, 32), wmem_kib=kib_for_depth(1024, 32),
                     idx_kib=kib_for_depth(6, 16), ymem_kib=kib_for_depth(1024, 129))),
    # IDX one entry short of KG = 4 (2 * 4 + 1 + 4 * 4 = 25 entries with NG = 4): KG <= 2
    (8, 16, 32, dict(xmem_kib=kib_for_depth(1024, 32), wmem_kib=kib_for_depth(1024, 32),
                     idx_kib=kib_for_depth(24, 16), ymem_kib=kib_for_depth(1024, 129))),
])
def test_candidates_are_every_fitting_plan_of_the_widest_column_group(m, n, k, mems):
    """§7: the widest NG that fits; every power-of-two TT and KG (or the whole extent) that fits;
    both loop orders where they give different sequences. The default and the mask's plan are
    among them, and the mask's plan is the fastest that moves no more bytes than the default."""
    from lsp_codesign.schedule import schedule
    from lsp_codesign.tiling import _candidate_plans

    cfg = make_cfg(**mems)
    mt, kb, nb = cdiv(m, 4), cdiv(k, cfg.block_k), cdiv(n, cfg.block_n)
    ng = max(g for g in _pow2_upto(nb) if _fits(cfg, 1, 1, g))
    want = set()
    for tt in _pow2_upto(mt):
        for kg in _pow2_upto(kb):
            if _fits(cfg, tt, kg, ng):
                want.add((LoopOrder.ROWS_OUTER, tt, kg, ng))
                if cdiv(mt, tt) > 1 and cdiv(kb, kg) > 1:
                    want.add((LoopOrder.TOKENS_OUTER, tt, kg, ng))
    plans = _candidate_plans(cfg, m, n, k)
    assert {(p.order, p.tt, p.kg, p.ng) for p in plans} == want
    assert len(plans) == len(want)
    default = plan_layer(cfg, m, n, k)
    assert plans[0] == default

    def score(p):
        total = 0.0
        for dens in (1.0, 0.25):
            kgs = np.asarray(p.g_sizes)[:, None]
            ngs = np.asarray(p.h_sizes)[None, :]
            nnz = np.rint(dens * kgs * ngs).astype(np.int64)
            total += schedule(cfg, p, nnz, np.minimum(kgs, nnz))["busy"] / dens
        return total
    best = min(score(p) for p in plans)
    assert score(default) == best

    rng = np.random.default_rng(m)
    mask = rng.random((kb, nb)) < 0.3
    mask[: kb // 2] = True

    def cost(p):
        nnz, rows = p.group_counts(mask)
        s = schedule(cfg, p, nnz, rows)
        return int(s["busy"]), int(s["dram_read_bytes"]) + int(s["dram_write_bytes"])
    chosen = plan_layer(cfg, m, n, k, mask=mask)
    limit = cost(default)[1]
    allowed = [cost(p)[0] for p in plans if cost(p)[1] <= limit]
    assert cost(chosen)[1] <= limit and cost(chosen)[0] == min(allowed)
    dense = plan_layer(cfg, m, n, k, mask=np.ones((kb, nb), bool))
    dcost = {p: None for p in plans}
    ones = np.ones((kb, nb), bool)
    for p in plans:
        nnz, rows = p.group_counts(ones)
        s = schedule(cfg, p, nnz, rows)
        dcost[p] = (int(s["busy"]), int(s["dram_read_bytes"]) + int(s["dram_write_bytes"]))
    dlimit = dcost[default][1]
    assert dcost[dense][1] <= dlimit
    assert dcost[dense][0] == min(c[0] for c in dcost.values() if c[1] <= dlimit)


def test_more_than_max_tiles_keeps_the_plan_with_fewest_tiles():
    """Every candidate of a long layer on tiny banks has over MAX_TILES tiles: the one with the
    fewest tiles is kept. Banks of 8 X / Y words allow TT = 1 or 2 (NG = KG = 1); with
    MT = 2 * MAX_TILES + 2 token tiles that is 2 * MAX_TILES + 2 or MAX_TILES + 1 tiles."""
    cfg = make_cfg(xmem_kib=kib_for_depth(8, 32), wmem_kib=kib_for_depth(4, 32),
                   idx_kib=kib_for_depth(4, 16), ymem_kib=kib_for_depth(8, 129), dram_mib=4)
    m = 4 * (2 * MAX_TILES + 2)
    p = plan_layer(cfg, m, 4, 4)
    assert (p.tt, p.kg, p.ng) == (2, 1, 1) and p.n_tiles == MAX_TILES + 1


def test_more_than_max_tiles_ties_keep_the_first_candidate():
    """All candidates over MAX_TILES, two with the fewest: the first generated wins (smaller TT
    first, rows outer before tokens outer). 8 X / Y words: (TT, KG) = (1, 2) or (2, 1) both
    give MT tiles (MT even), (1, 1) gives 2 MT; (2, 1) also exists tokens-outer."""
    cfg = make_cfg(xmem_kib=kib_for_depth(8, 32), wmem_kib=kib_for_depth(8, 32),
                   idx_kib=kib_for_depth(8, 16), ymem_kib=kib_for_depth(8, 129), dram_mib=4)
    mt = MAX_TILES + 2
    p = plan_layer(cfg, 4 * mt, 4, 8)
    assert (p.order, p.tt, p.kg, p.ng) == (LoopOrder.ROWS_OUTER, 1, 2, 1)
    assert p.n_tiles == mt


@pytest.mark.parametrize("mt, n, candidates", [
    # exactly MAX_TILES: (1, 2) and (2, 1) both orders are within the limit, (1, 1) is not
    (MAX_TILES, 4, {(LoopOrder.ROWS_OUTER, 1, 2), (LoopOrder.ROWS_OUTER, 2, 1),
                    (LoopOrder.TOKENS_OUTER, 2, 1)}),
    # two column groups and one block per WMEM bank (KG = NG = 1): (2, 1) has 2 MT tiles
    (MAX_TILES // 2, 8, {(LoopOrder.ROWS_OUTER, 2, 1), (LoopOrder.TOKENS_OUTER, 2, 1)}),
    (MAX_TILES // 2 + 2, 8, {(LoopOrder.ROWS_OUTER, 2, 1)}),     # none within: the fewest
])
def test_the_tile_limit_counts_every_tile_and_includes_max_tiles(mt, n, candidates):
    """Tiles = token blocks x row groups x column groups; a plan of exactly MAX_TILES tiles is
    a candidate. 8 X / Y words allow (TT, KG) = (1, 1), (1, 2) or (2, 1) for K = 8, and a
    WMEM bank of one block only KG = 1 with N = 8."""
    from lsp_codesign.tiling import _candidate_plans

    wmem = 8 if n == 4 else 4
    cfg = make_cfg(xmem_kib=kib_for_depth(8, 32), wmem_kib=kib_for_depth(wmem, 32),
                   idx_kib=kib_for_depth(8, 16), ymem_kib=kib_for_depth(8, 129), dram_mib=4)
    plans = _candidate_plans(cfg, 4 * mt, n, 8)
    assert {(p.order, p.tt, p.kg) for p in plans} == candidates
    assert all(p.ng == 1 for p in plans)
    assert min(p.n_tiles for p in plans) == cdiv(mt, 2) * 2 * (n // 4)


def _index_cfg(bits):
    """Banks big enough for 16 x 16 blocks of 4 x 4 in one tile; only index_bits limits it."""
    return make_cfg(xmem_kib=8.0, wmem_kib=8.0, idx_kib=kib_for_depth(512, bits),
                    ymem_kib=kib_for_depth(1024, 129), index_bits=bits, dram_mib=4)


def test_tiles_never_hold_more_blocks_than_index_entries_count():
    """§3: row_ptr[R] = NNZ must fit an index entry, so KG * NG < 2^index_bits. With 16-bit
    entries the 16 x 16-block layer is one tile of 256 blocks; with 8-bit entries no tile has
    more than 128 (the next power of two below 256), and a 256-column layer gets NG = 128."""
    from lsp_codesign.tiling import _candidate_plans

    wide = _candidate_plans(_index_cfg(16), 4, 64, 64)
    assert max(p.kg * p.ng for p in wide) == 256
    for cfg, n, k in ((_index_cfg(8), 64, 64), (_index_cfg(8), 1024, 4)):
        plans = _candidate_plans(cfg, 4, n, k)
        assert max(p.kg * p.ng for p in plans) == 128
    assert plan_layer(_index_cfg(16), 4, 1024, 4).ng == 256
    assert plan_layer(_index_cfg(8), 4, 1024, 4).ng == 128


def test_every_8_bit_index_plan_is_computed_exactly():
    """A dense 16 x 16-block layer with 8-bit index entries, compiled with each candidate plan
    and run on the ISS, gives the reference GEMM (a wrapped row pointer loses blocks)."""
    from lsp_codesign.iss import Memories, run_iss
    from lsp_codesign.tiling import _candidate_plans

    cfg = _index_cfg(8)
    rng = np.random.default_rng(8)
    x = rng.integers(-128, 128, (8, 64)).astype(np.int8)
    w = rng.integers(-128, 128, (64, 64)).astype(np.int8)
    want = reference_gemm(x, w, None, 4, 4)
    plans = _candidate_plans(cfg, 8, 64, 64)
    assert any(p.kg * p.ng == 128 for p in plans)
    for plan in plans:
        prog = compile_layer(cfg, x, w, plan=plan)
        res = run_iss(cfg, Memories.from_program(prog))
        assert not res.error, (plan, res.err_code)
        y = read_y(cfg, prog, res.y_words(prog.y_base, prog.y_words))
        np.testing.assert_array_equal(y, want, err_msg=str(plan))


def test_a_given_plan_beyond_the_index_width_is_refused():
    cfg = _index_cfg(8)
    x, w = np.ones((4, 64), np.int8), np.ones((64, 64), np.int8)
    with pytest.raises(CompileError) as exc:
        compile_layer(cfg, x, w, name="fc", plan=_plan(cfg, 4, 64, 64, 1, 16, 16))
    assert str(exc.value) == ("fc: the plan's tiles hold up to 256 blocks, but 8-bit index "
                              "entries count at most 255 (index_bits)")
    ok = compile_layer(cfg, x, w, plan=_plan(cfg, 4, 64, 64, 1, 8, 16))
    assert ok.n_tiles == 2


def test_a_tile_of_exactly_255_blocks_fits_8_bit_indices():
    """KG 15 x NG 17 = 255 blocks, the most an 8-bit row pointer counts: compiled as one tile
    and computed exactly on the ISS."""
    from lsp_codesign.iss import Memories, run_iss

    cfg = _index_cfg(8)
    rng = np.random.default_rng(255)
    x = rng.integers(-128, 128, (4, 68)).astype(np.int8)
    w = rng.integers(-128, 128, (60, 68)).astype(np.int8)
    prog = compile_layer(cfg, x, w, plan=_plan(cfg, 4, 68, 60, 1, 15, 17))
    assert prog.n_tiles == 1
    res = run_iss(cfg, Memories.from_program(prog))
    assert not res.error, res.err_code
    y = read_y(cfg, prog, res.y_words(prog.y_base, prog.y_words))
    np.testing.assert_array_equal(y, reference_gemm(x, w, None, 4, 4))
