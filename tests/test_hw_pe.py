# amaranth: UnusedElaboratable=no
"""PE and PE array against numpy, in Amaranth's simulator (int8 extremes included)."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.pe import PE, psum_bits
from hw.pe_array import PEArray

def pack(values, bits: int) -> int:
    """Element j in bits [bits*j + bits-1 : bits*j], two's complement."""
    word = 0
    for j, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (bits * j)
    return word


def unpack_signed(word: int, bits: int, count: int) -> list[int]:
    out = []
    for j in range(count):
        v = (word >> (bits * j)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


def run_comb(dut, vectors, probe):
    """Apply each list of ``(signal, value)`` to a combinational ``dut``; collect ``probe``."""
    got = []

    async def bench(ctx):
        for assign in vectors:
            for sig, value in assign:
                ctx.set(sig, value)
            await ctx.delay(1e-9)
            got.append(probe(ctx))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return got


def extreme_rows(lanes: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    lo = np.full(lanes, -128)
    hi = np.full(lanes, 127)
    rows = [(lo, lo), (lo, hi), (hi, hi), (hi, lo), (np.zeros(lanes, int), lo)]
    for _ in range(20):
        rows.append((rng.integers(-128, 128, lanes), rng.integers(-128, 128, lanes)))
    return rows


@pytest.mark.parametrize("lanes", [1, 2, 3, 8, 16, 32])
def test_pe_dot_product_is_exact(lanes):
    rng = np.random.default_rng(lanes)
    dut = PE(lanes=lanes)
    rows = extreme_rows(lanes, rng)
    vectors = [[(dut.x, pack(x, 8)), (dut.w, pack(w, 8))] for x, w in rows]
    got = run_comb(dut, vectors, lambda ctx: ctx.get(dut.psum))
    assert got == [int(np.dot(x.astype(np.int64), w.astype(np.int64))) for x, w in rows]
    # -128 * -128 summed over every lane is the largest value and must not overflow.
    assert got[0] == 16384 * lanes
    assert dut.psum_bits == psum_bits(lanes)


def test_psum_bits_hold_the_extremes():
    for lanes in (1, 2, 4, 16, 32, 64):
        bits = psum_bits(lanes)
        assert 16384 * lanes < (1 << (bits - 1))          # all -128 * -128
        assert -128 * 127 * lanes >= -(1 << (bits - 1))    # all -128 * 127


@pytest.mark.parametrize("rows,cols", [(4, 4), (8, 16), (16, 8), (2, 32)])
def test_pe_array_matches_numpy(rows, cols):
    rng = np.random.default_rng(rows * 100 + cols)
    dut = PEArray(rows=rows, cols=cols)
    cases = []
    for trial in range(12):
        w = rng.integers(-128, 128, (rows, cols))
        x = rng.integers(-128, 128, cols)
        if trial == 0:
            w[:] = -128
            x[:] = -128
        cases.append((x, w))
    vectors = [[(dut.x, pack(x, 8)), (dut.w, pack(w.reshape(-1), 8))] for x, w in cases]
    got = run_comb(dut, vectors, lambda ctx: ctx.get(dut.psum))
    for (x, w), word in zip(cases, got):
        expect = w.astype(np.int64) @ x.astype(np.int64)
        assert unpack_signed(word, dut.psum_bits, rows) == expect.tolist()
    assert dut.macs_per_cycle == rows * cols


def test_pe_parameters_are_checked():
    with pytest.raises(TypeError, match=r"^lanes must be an integer, not '16'$"):
        PE(lanes="16")
    with pytest.raises(ValueError, match=r"^lanes must be at least 1, not 0$"):
        PE(lanes=0)
    with pytest.raises(ValueError, match=r"^operand_bits must be at least 2, not 1$"):
        PE(lanes=4, operand_bits=1)
    with pytest.raises(TypeError, match=r"^rows must be an integer, not True$"):
        PEArray(rows=True, cols=4)
    with pytest.raises(ValueError, match=r"^cols must be at most 1024, not 2048$"):
        PEArray(rows=4, cols=2048)
    arr = PEArray(rows=4, cols=8)
    assert (arr.rows, arr.cols, arr.psum_bits) == (4, 8, 19)
    assert (len(arr.x), len(arr.w), len(arr.psum)) == (64, 256, 76)
