"""Block-sparse packing round trip and the padding rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_codesign.packing import BlockGrid, PackingError, expand_mask, pack, unpack


@given(k=st.integers(1, 70), n=st.integers(1, 70), bk=st.sampled_from([2, 4, 8, 16, 32]),
       bn=st.sampled_from([2, 4, 8, 16, 32]), seed=st.integers(0, 2**31), p=st.floats(0, 1))
@settings(max_examples=150, deadline=None)
def test_pack_unpack_round_trip(k, n, bk, bn, seed, p):
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    g = BlockGrid(k, n, bk, bn)
    mask = rng.random(g.shape) < p
    packed = pack(w, mask, bk, bn)
    assert packed.nnz == mask.sum()
    assert packed.blocks.shape == (packed.nnz, bk, bn)
    assert (packed.mask == mask).all()
    np.testing.assert_array_equal(unpack(packed), w * expand_mask(mask, k, n, bk, bn))
    # padding of edge blocks is zero
    dense = np.zeros((g.k_pad, g.n_pad), np.int8)
    dense[:k, :n] = w
    for q, (r, c) in enumerate(zip(*np.nonzero(mask))):
        np.testing.assert_array_equal(packed.blocks[q], dense[r * bk:(r + 1) * bk,
                                                              c * bn:(c + 1) * bn])


def test_bsr_index_by_hand():
    w = np.arange(4 * 6).reshape(4, 6)
    mask = np.array([[1, 0, 1], [0, 0, 0]], bool)   # 2x2 blocks over (4, 6)
    p = pack(w, mask, 2, 2)
    assert p.row_ptr.tolist() == [0, 2, 2]
    assert p.col_idx.tolist() == [0, 2]
    np.testing.assert_array_equal(p.blocks[1], [[4, 5], [10, 11]])


def test_padding_rule_counts_real_elements():
    g = BlockGrid(20, 10, 16, 8)
    assert g.shape == (2, 2) and (g.k_pad, g.n_pad) == (32, 16)
    np.testing.assert_array_equal(g.block_elements(), [[128, 32], [32, 8]])


def test_mask_errors():
    w = np.zeros((32, 32), np.int8)
    with pytest.raises(PackingError, match=r"mask has shape \(3, 2\), but a \(32, 32\) weight "
                                           r"with block 16x16 needs \(2, 2\)"):
        pack(w, np.ones((3, 2), bool), 16, 16)
    with pytest.raises(PackingError, match="only 0/1"):
        pack(w, np.full((2, 2), 2), 16, 16)
    with pytest.raises(PackingError, match="weight must be 2-D"):
        pack(np.zeros(5), np.ones((1, 1)), 16, 16)
    with pytest.raises(PackingError, match="block_k must be a positive integer"):
        BlockGrid(4, 4, 0, 4)
