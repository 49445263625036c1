# amaranth: UnusedElaboratable=no
"""The compute side of a tile issues exactly the accesses of docs/hw.md §5, cycle by cycle.

The reference below restates the spec's compute micro-schedule directly (absolute addresses,
no running registers), so it checks the RTL's address arithmetic as well as its timing.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.compute import TileCompute

FIELDS = ("fill", "idx", "x", "w", "swap", "mac", "yr", "yw", "drain")


def dcsr(mask: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    rows = [i for i in range(mask.shape[0]) if mask[i].any()]
    row_ptr = [0] + np.cumsum([mask[i].sum() for i in rows]).tolist()
    col = [int(c) for i in rows for c in np.nonzero(mask[i])[0]]
    return row_ptr, rows, col


def reference(bm, bk, tt, kg, ng, row_ptr, row_id, col):
    r, nnz = len(row_id), len(col)
    wpb = min(bk, bm)
    fill = max(wpb, 3)
    total = fill + tt * nnz * bm + bm + 1
    cyc = [dict.fromkeys(FIELDS) for _ in range(total)]
    for s in range(wpb):
        cyc[s]["w"] = s
    for c, entry in ((0, 2 * r + 1), (1, 1), (2, r + 1)):
        cyc[c]["idx"] = entry
    for c in range(fill):
        cyc[c]["fill"] = 1
    row_of = lambda q: max(j for j in range(r) if row_ptr[j] <= q)  # noqa: E731
    visits = [(t, q) for t in range(tt) for q in range(nnz)]
    for v, (t, q) in enumerate(visits):
        s0 = fill + v * bm
        j = row_of(q)
        bank = (t * r + j) % 2
        cyc[s0]["swap"] = 1
        for m in range(bm):
            cyc[s0 + m]["x"] = (t * bm + m) * ng + col[q]
            cyc[s0 + m + 1]["mac"] = (m, bank)
        new_row = True
        if v + 1 < len(visits):
            t2, q2 = visits[v + 1]
            j2 = row_of(q2)
            new_row = (t2, j2) != (t, j)
            for s in range(wpb):
                cyc[s0 + s]["w"] = q2 * wpb + s
            cyc[s0]["idx"] = 2 * r + 1 + q2
            if new_row:
                cyc[s0 + 1]["idx"] = j2 + 1
                cyc[s0 + 2]["idx"] = r + 1 + j2
        if new_row:                                   # the row ends: drain its bank
            e = s0 + bm
            for m in range(bm):
                addr = (t * bm + m) * kg + row_id[j]
                cyc[e + m]["yr"] = addr
                cyc[e + 1 + m]["yw"] = addr
                cyc[e + 1 + m]["drain"] = (m, bank)
    return [tuple(c[f] for f in FIELDS) for c in cyc]


def run_compute(bk, bn, bm, tt, kg, ng, row_ptr, row_id, col):
    dut = TileCompute(block_k=bk, block_n=bn, tile_m=bm, index_bits=16)
    r = len(row_id)
    index = row_ptr + row_id + col
    trace, ends = [], []

    async def bench(ctx):
        for name, value in (("tt", tt), ("kg", kg), ("ng", ng), ("r", r), ("nnz", len(col))):
            ctx.set(getattr(dut, name), value)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        data = 0
        for _ in range(100_000):
            ctx.set(dut.idx_data, data)
            g = ctx.get
            assert g(dut.busy)
            rec = (g(dut.fill) or None, g(dut.idx_addr) if g(dut.idx_re) else None,
                   g(dut.x_addr) if g(dut.x_re) else None,
                   g(dut.w_addr) if g(dut.w_re) else None, g(dut.swap) or None,
                   (g(dut.mac_row), g(dut.mac_bank)) if g(dut.mac) else None,
                   g(dut.y_raddr) if g(dut.y_re) else None,
                   g(dut.y_waddr) if g(dut.y_we) else None,
                   (g(dut.drain_row), g(dut.drain_bank)) if g(dut.drain) else None)
            trace.append(rec)
            data = index[rec[1]] if rec[1] is not None else 0
            last = g(dut.last)
            await ctx.tick()
            if last:
                ends.append(ctx.get(dut.busy))
                return

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return trace, ends


@pytest.mark.parametrize("bk,bn,bm", [(4, 4, 4), (8, 4, 4), (4, 8, 8), (2, 2, 4), (2, 4, 8),
                                      (16, 4, 4)])
@pytest.mark.parametrize("pattern", ["dense", "sparse", "one-per-row"])
def test_compute_matches_the_spec_cycle_by_cycle(bk, bn, bm, pattern):
    rng = np.random.default_rng(bk * 100 + bn * 10 + bm + len(pattern))
    tt, kg, ng = 2, 5, 3
    if pattern == "dense":
        mask = np.ones((kg, ng), bool)
    elif pattern == "sparse":
        mask = rng.random((kg, ng)) < 0.4
        mask[1] = mask[3] = False                 # empty rows: not in the index
        mask[0, 0] = mask[4, 2] = True
    else:
        mask = np.eye(kg, ng, dtype=bool)         # one block per row: back-to-back drains
        mask[3:] = False
        mask[4, 1] = True
    row_ptr, row_id, col = dcsr(mask)
    trace, ends = run_compute(bk, bn, bm, tt, kg, ng, row_ptr, row_id, col)
    expect = reference(bm, bk, tt, kg, ng, row_ptr, row_id, col)
    assert ends == [0]
    assert len(trace) == len(expect) == max(min(bk, bm), 3) + tt * int(mask.sum()) * bm + bm + 1
    for cyc, (got, want) in enumerate(zip(trace, expect)):
        assert got == want, f"cycle {cyc}: {dict(zip(FIELDS, got))} != {dict(zip(FIELDS, want))}"


def test_compute_parameters_are_checked():
    with pytest.raises(ValueError, match=r"^block_k must be a power of two, not 12$"):
        TileCompute(block_k=12, block_n=4, tile_m=4, index_bits=16)
    with pytest.raises(ValueError, match=r"^tile_m must be at least 4, not 2$"):
        TileCompute(block_k=4, block_n=4, tile_m=2, index_bits=16)
    c = TileCompute(block_k=32, block_n=16, tile_m=16, index_bits=16)
    assert (c.words_per_block, c.fill_cycles) == (16, 16)
