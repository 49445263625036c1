# amaranth: UnusedElaboratable=no
"""Weight double buffer and the two accumulator banks, cycle by cycle, in Amaranth's simulator."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.buffers import AccumulatorBanks, WeightBuffer


def pack(values, bits: int) -> int:
    """Element j in bits [bits*j + bits-1 : bits*j], two's complement."""
    return sum((int(v) & ((1 << bits) - 1)) << (bits * j) for j, v in enumerate(values))


def unpack_signed(word: int, bits: int, count: int) -> list[int]:
    vals = [(word >> (bits * j)) & ((1 << bits) - 1) for j in range(count)]
    return [v - (1 << bits) if v >> (bits - 1) else v for v in vals]


def run_sync(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def rows_of(word: int, rows: int, cols: int) -> list[list[int]]:
    flat = unpack_signed(word, 8, rows * cols)
    return [flat[r * cols:(r + 1) * cols] for r in range(rows)]


@pytest.mark.parametrize("rows,cols,gap,r", [(4, 4, 0, 1), (4, 8, 3, 1), (2, 2, 1, 1),
                                              (8, 4, 0, 2), (8, 4, 2, 4)])
def test_weight_buffer_swaps_whole_blocks(rows, cols, gap, r):
    """The engine's schedule (docs/hw.md §5) with block steps of BM = rows/r + gap cycles and
    ``r`` block rows per WMEM word: block b is swapped in at S_b = words + b*BM, and block b+1's
    words arrive in S_b+1 .. S_b+words. With gap 0 the last word of a block arrives in its own
    swap cycle and is forwarded."""
    rng = np.random.default_rng(rows + cols + gap)
    blocks = [rng.integers(-128, 128, (rows, cols)) for _ in range(4)]
    words = rows // r
    d = words + gap
    swaps = [words + b * d for b in range(len(blocks))]
    word = lambda blk, s: blk[s * r:(s + 1) * r].ravel()  # noqa: E731 - r rows per word
    arrivals = {1 + s: word(blocks[0], s) for s in range(words)}
    for b in range(1, len(blocks)):
        arrivals.update({swaps[b - 1] + 1 + s: word(blocks[b], s) for s in range(words)})
    dut = WeightBuffer(words=words, word_bits=8 * r * cols)
    seen = []

    async def bench(ctx):
        for t in range(swaps[-1] + 1):
            row = arrivals.get(t)
            ctx.set(dut.load, int(row is not None))
            ctx.set(dut.load_data, 0 if row is None else pack(row, 8))
            ctx.set(dut.swap, int(t in swaps))
            await ctx.tick()
            if t in swaps:
                seen.append(rows_of(ctx.get(dut.active), rows, cols))

    run_sync(dut, bench)
    assert seen == [b.tolist() for b in blocks]


def test_weight_buffer_forwards_the_row_arriving_at_the_swap():
    rows, cols = 4, 4
    dut = WeightBuffer(words=rows, word_bits=8 * cols)
    block = np.arange(rows * cols).reshape(rows, cols) - 8
    got = []

    async def bench(ctx):
        for r in range(rows):
            ctx.set(dut.load, 1)
            ctx.set(dut.load_data, pack(block[r], 8))
            ctx.set(dut.swap, int(r == rows - 1))   # last row and swap in the same cycle
            await ctx.tick()
        ctx.set(dut.load, 0)
        ctx.set(dut.swap, 0)
        got.append(rows_of(ctx.get(dut.active), rows, cols))

    run_sync(dut, bench)
    assert got == [block.tolist()]


def test_accumulator_banks_accumulate_and_drain_independently():
    """Bank 0 drains (and clears) row by row while bank 1 accumulates, as two consecutive block
    rows do (docs/hw.md §5); a second drain reads zeros."""
    rows, lanes, pbits = 4, 3, 19
    rng = np.random.default_rng(5)
    dut = AccumulatorBanks(rows=rows, lanes=lanes, psum_bits=pbits)
    steps = [rng.integers(-(1 << 18), 1 << 18, (rows, lanes)) for _ in range(4)]
    drained = {0: [], 1: []}

    async def bench(ctx):
        ctx.set(dut.accumulate, 1)
        ctx.set(dut.acc_bank, 0)
        for step in steps[:3]:              # three block steps into bank 0
            for m in range(rows):
                ctx.set(dut.acc_row, m)
                ctx.set(dut.psum, pack(step[m], pbits))
                await ctx.tick()
        # bank 1 accumulates step 3 while bank 0 drains, in the same cycles
        ctx.set(dut.acc_bank, 1)
        ctx.set(dut.drain, 1)
        ctx.set(dut.drain_bank, 0)
        for m in range(rows):
            ctx.set(dut.acc_row, m)
            ctx.set(dut.psum, pack(steps[3][m], pbits))
            ctx.set(dut.drain_row, m)
            drained[0].append(unpack_signed(ctx.get(dut.drain_data), 32, lanes))
            await ctx.tick()
        ctx.set(dut.accumulate, 0)
        for bank in (1, 0):                 # bank 1 holds step 3; bank 0 is clear again
            ctx.set(dut.drain_bank, bank)
            for m in range(rows):
                ctx.set(dut.drain_row, m)
                drained[bank].append(unpack_signed(ctx.get(dut.drain_data), 32, lanes))
                await ctx.tick()

    run_sync(dut, bench)
    total = sum(s.astype(np.int64) for s in steps[:3])
    assert drained[0][:rows] == total.tolist()
    assert drained[1] == steps[3].tolist()
    assert drained[0][rows:] == [[0] * lanes] * rows


def test_accumulator_wraps_around_in_32_bits():
    dut = AccumulatorBanks(rows=2, lanes=1, psum_bits=32)
    got = []

    async def bench(ctx):
        ctx.set(dut.accumulate, 1)
        for i, v in enumerate((2**31 - 1, 5, 2**31 - 1, -7)):   # row 0: max + max, row 1: 5 - 7
            ctx.set(dut.acc_row, i % 2)
            ctx.set(dut.psum, v & 0xFFFFFFFF)
            await ctx.tick()
        ctx.set(dut.accumulate, 0)
        ctx.set(dut.drain, 1)
        for m in range(2):
            ctx.set(dut.drain_row, m)
            got.append(unpack_signed(ctx.get(dut.drain_data), 32, 1)[0])
            await ctx.tick()

    run_sync(dut, bench)
    assert got == [-2, -2]      # (2^31 - 1) * 2 wraps to -2; 5 - 7 = -2


def test_buffer_parameters_are_checked():
    with pytest.raises(ValueError, match=r"^words must be at least 1, not 0$"):
        WeightBuffer(words=0, word_bits=32)
    with pytest.raises(TypeError, match=r"^word_bits must be an integer, not 32.0$"):
        WeightBuffer(words=4, word_bits=32.0)
    with pytest.raises(ValueError, match=r"^psum_bits must be at most 32, not 40$"):
        AccumulatorBanks(rows=4, lanes=4, psum_bits=40)
    with pytest.raises(ValueError, match=r"^rows must be at least 2, not 1$"):
        AccumulatorBanks(rows=1, lanes=4, psum_bits=20)
    bank = AccumulatorBanks(rows=16, lanes=8, psum_bits=20)
    assert (bank.rows, bank.lanes, bank.width) == (16, 8, 32)
    assert len(bank.drain_data) == 8 * 32 and len(bank.psum) == 8 * 20
    wb = WeightBuffer(words=16, word_bits=256)
    assert (wb.words, wb.word_bits, len(wb.active), len(wb.load_data)) == (16, 256, 4096, 256)
