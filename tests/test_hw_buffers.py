# amaranth: UnusedElaboratable=no
"""Weight double buffer and accumulator ring, cycle by cycle, in Amaranth's simulator."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.buffers import AccumulatorBank, WeightBuffer


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


@pytest.mark.parametrize("rows,cols,gap", [(4, 4, 0), (4, 8, 3), (2, 2, 1), (8, 4, 0)])
def test_weight_buffer_swaps_whole_blocks(rows, cols, gap):
    """The engine's schedule (docs/hw.md section 5) with block steps of D = rows + gap cycles:
    block b is swapped in at S_b = rows + b*D, and block b+1's rows arrive in S_b+1 .. S_b+rows.
    With gap 0 the last row of a block arrives in its own swap cycle and is forwarded."""
    rng = np.random.default_rng(rows + cols + gap)
    blocks = [rng.integers(-128, 128, (rows, cols)) for _ in range(4)]
    d = rows + gap
    swaps = [rows + b * d for b in range(len(blocks))]
    arrivals = {1 + r: blocks[0][r] for r in range(rows)}
    for b in range(1, len(blocks)):
        arrivals.update({swaps[b - 1] + 1 + r: blocks[b][r] for r in range(rows)})
    dut = WeightBuffer(rows=rows, cols=cols)
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
    dut = WeightBuffer(rows=rows, cols=cols)
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


def test_accumulator_ring_accumulates_rotates_and_drains():
    rows, lanes, pbits = 4, 3, 19
    rng = np.random.default_rng(5)
    dut = AccumulatorBank(rows=rows, lanes=lanes, psum_bits=pbits)
    steps = [rng.integers(-(1 << 18), 1 << 18, (rows, lanes)) for _ in range(3)]
    drained = []

    async def bench(ctx):
        for step in steps:              # three block steps of `rows` token rows each
            ctx.set(dut.accumulate, 1)
            for m in range(rows):
                ctx.set(dut.psum, pack(step[m], pbits))
                await ctx.tick()
            ctx.set(dut.accumulate, 0)
        ctx.set(dut.drain, 1)
        for m in range(2 * rows):       # drain twice: the second pass must read zeros
            drained.append(unpack_signed(ctx.get(dut.head), 32, lanes))
            await ctx.tick()
        ctx.set(dut.drain, 0)

    run_sync(dut, bench)
    total = sum(s.astype(np.int64) for s in steps)
    assert drained[:rows] == total.tolist()
    assert drained[rows:] == [[0] * lanes] * rows


def test_accumulator_wraps_around_in_32_bits():
    dut = AccumulatorBank(rows=2, lanes=1, psum_bits=32)
    got = []

    async def bench(ctx):
        ctx.set(dut.accumulate, 1)
        for v in (2**31 - 1, 5, 2**31 - 1, -7):   # row 0: max + max, row 1: 5 - 7
            ctx.set(dut.psum, v & 0xFFFFFFFF)
            await ctx.tick()
        ctx.set(dut.accumulate, 0)
        ctx.set(dut.drain, 1)
        for _ in range(2):
            got.append(unpack_signed(ctx.get(dut.head), 32, 1)[0])
            await ctx.tick()

    run_sync(dut, bench)
    assert got == [-2, -2]      # (2^31 - 1) * 2 wraps to -2; 5 - 7 = -2


def test_buffer_parameters_are_checked():
    with pytest.raises(ValueError, match=r"^rows must be at least 1, not 0$"):
        WeightBuffer(rows=0, cols=4)
    with pytest.raises(TypeError, match=r"^cols must be an integer, not 4.0$"):
        WeightBuffer(rows=4, cols=4.0)
    with pytest.raises(ValueError, match=r"^psum_bits must be at most 32, not 40$"):
        AccumulatorBank(rows=4, lanes=4, psum_bits=40)
    bank = AccumulatorBank(rows=16, lanes=8, psum_bits=20)
    assert (bank.rows, bank.lanes, bank.width) == (16, 8, 32)
    assert len(bank.head) == 8 * 32 and len(bank.psum) == 8 * 20
    wb = WeightBuffer(rows=16, cols=32)
    assert (wb.rows, wb.cols, len(wb.active), len(wb.load_data)) == (16, 32, 16 * 32 * 8, 256)
