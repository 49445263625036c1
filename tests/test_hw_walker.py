# amaranth: UnusedElaboratable=no
"""The block walker issues exactly the memory accesses of docs/hw.md section 5, cycle by cycle.

The reference below restates the spec's loop nest and reference micro-schedule directly (no
incremental address registers), so it checks the RTL's address arithmetic as well as its
timing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.walker import BlockWalker
from lsp_codesign.config import HwConfig, load_config
from lsp_codesign.cycle_model import gemm_counters

VITA = Path(__file__).resolve().parent.parent / "configs" / "vita.yaml"
FIELDS = ("idx", "x", "w", "y", "swap", "stall")


@dataclass(frozen=True)
class Bases:
    x: int = 0
    w: int = 0
    y: int = 0
    rp: int = 0
    ci: int = 0


def reference_trace(bm, bk, m, n, k, bn, row_ptr, col_idx, b: Bases) -> list[tuple]:
    """Per busy cycle: (IDX read, XMEM read, WMEM read, YMEM write, swap, stall)."""
    d = max(bm, bk)
    mt, kb, nb = math.ceil(m / bm), math.ceil(k / bk), math.ceil(n / bn)
    nnz = len(col_idx)
    out = []

    def cycle(idx=None, x=None, w=None, y=None, swap=0, stall=0):
        out.append((idx, x, w, y, swap, stall))

    cycle(idx=b.rp + 1)                                           # setup: row_ptr[1]
    if nnz:
        for r in range(bk):                                       # fill: block 0
            cycle(idx=b.ci if r == 0 else None, w=b.w + r, stall=1)
    sequence = [q for _ in range(mt) for q in range(nnz)]         # blocks in visiting order
    pos = 0
    for t in range(mt):
        for i in range(kb):
            for q in range(row_ptr[i], row_ptr[i + 1]):
                nxt = sequence[pos + 1] if pos + 1 < len(sequence) else None
                for c in range(d):
                    x = b.x + (t * bm + c) * nb + col_idx[q] if c < bm else None
                    w = b.w + nxt * bk + c if nxt is not None and c < bk else None
                    idx = b.ci + nxt if nxt is not None and c == 0 else None
                    cycle(idx=idx, x=x, w=w, swap=int(c == 0), stall=int(c >= bm))
                pos += 1
            if i + 1 < kb:                                        # drain
                cycle(idx=b.rp + i + 2)
            elif t + 1 < mt:
                cycle(idx=b.rp + 1)
            else:
                cycle()
            for r in range(bm):
                cycle(y=b.y + (t * bm + r) * kb + i)
    return out


def run_walker(bk, bn, bm, m, n, k, row_ptr, col_idx, b: Bases, nnz=None, limit=100000):
    dut = BlockWalker(block_k=bk, block_n=bn, tile_m=bm, index_bits=16)
    idx_mem = {b.rp + i: v for i, v in enumerate(row_ptr)}
    idx_mem.update({b.ci + q: v for q, v in enumerate(col_idx)})
    trace, ending = [], []

    async def bench(ctx):
        for name, value in (("m", m), ("n", n), ("k", k), ("x_base", b.x), ("w_base", b.w),
                            ("y_base", b.y), ("rp_base", b.rp), ("ci_base", b.ci),
                            ("nnz", len(col_idx) if nnz is None else nnz)):
            ctx.set(getattr(dut, name), value)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        data = 0
        for _ in range(limit):
            ctx.set(dut.idx_data, data)
            assert ctx.get(dut.busy)
            get = ctx.get
            rec = (get(dut.idx_addr) if get(dut.idx_re) else None,
                   get(dut.x_addr) if get(dut.x_re) else None,
                   get(dut.w_addr) if get(dut.w_re) else None,
                   get(dut.y_addr) if get(dut.y_we) else None,
                   get(dut.swap), get(dut.stall))
            trace.append(rec)
            data = idx_mem.get(rec[0], 0) if rec[0] is not None else 0
            done, error = get(dut.done), get(dut.error)
            await ctx.tick()
            if done or error:
                ending.append("error" if error else "done")
                assert not ctx.get(dut.busy)
                return

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return trace, ending[0]


def bsr(mask: np.ndarray) -> tuple[list[int], list[int]]:
    row_ptr = [0] + np.cumsum(mask.sum(axis=1)).tolist()
    col_idx = [int(c) for i in range(mask.shape[0]) for c in np.nonzero(mask[i])[0]]
    return row_ptr, col_idx


@pytest.mark.parametrize("bk,bn,bm", [(4, 4, 4), (8, 4, 4), (4, 8, 8), (2, 2, 2), (2, 4, 8)])
@pytest.mark.parametrize("density", [0.0, 0.4, 1.0])
def test_walker_matches_the_spec_cycle_by_cycle(bk, bn, bm, density):
    rng = np.random.default_rng(bk * 100 + bn * 10 + bm + int(density * 7))
    m, n, k = 2 * bm + 1, 3 * bn - 1, 4 * bk - 1
    kb, nb = math.ceil(k / bk), math.ceil(n / bn)
    mask = rng.random((kb, nb)) < density
    if 0 < density < 1:
        mask[1] = False                      # an empty block row
        mask[0, 0] = True
    row_ptr, col_idx = bsr(mask)
    b = Bases(x=3, w=5, y=7, rp=11, ci=40)   # nonzero bases: every address is offset
    trace, ending = run_walker(bk, bn, bm, m, n, k, row_ptr, col_idx, b)
    expect = reference_trace(bm, bk, m, n, k, bn, row_ptr, col_idx, b)
    assert ending == "done"
    assert len(trace) == len(expect)
    for cyc, (got, want) in enumerate(zip(trace, expect)):
        assert got == want, f"cycle {cyc}: {dict(zip(FIELDS, got))} != {dict(zip(FIELDS, want))}"
    # busy cycles are the spec's formula
    raw = load_config(VITA).to_dict()
    raw.update(block=f"{bk}x{bn}", tile_m=bm)
    g = gemm_counters(HwConfig.from_dict(raw), math.ceil(m / bm), kb, len(col_idx))
    assert len(trace) == g["busy"]
    assert sum(1 for r in trace if r[1] is not None) == g["xmem_reads"]
    assert sum(1 for r in trace if r[2] is not None) == g["wmem_reads"]
    assert sum(1 for r in trace if r[0] is not None) == g["idx_reads"]
    assert sum(1 for r in trace if r[3] is not None) == g["ymem_writes"]
    assert sum(r[5] for r in trace) == g["stall"]


@pytest.mark.parametrize("last,nnz_arg,visited", [(4, None, 4), (6, None, 5), (5, 3, 3)])
def test_walker_flags_an_inconsistent_index_at_the_end_of_a_tile(last, nnz_arg, visited):
    """row_ptr[KB] short of NNZ, past it, or NNZ smaller than the index: error after tile 0,
    having visited at most NNZ blocks."""
    bk = bn = bm = 4
    mask = np.ones((2, 3), dtype=bool)
    mask[1, 2] = False                            # NNZ = 5 in the index: row_ptr [0, 3, 5]
    row_ptr, col_idx = bsr(mask)
    row_ptr[-1] = last
    nnz = len(col_idx) if nnz_arg is None else nnz_arg
    trace, ending = run_walker(bk, bn, bm, 2 * bm, 3 * bn, 2 * bk, row_ptr, col_idx, Bases(ci=3),
                               nnz=nnz)
    assert ending == "error"
    steps = sum(r[4] for r in trace)
    assert steps == visited
    assert len(trace) == 1 + bk + visited * max(bm, bk) + 2 * (bm + 1)


def test_walker_parameters_are_checked():
    with pytest.raises(ValueError, match=r"^block_k must be a power of two, not 12$"):
        BlockWalker(block_k=12, block_n=4, tile_m=4, index_bits=16)
    with pytest.raises(ValueError, match=r"^tile_m must be at least 2, not 1$"):
        BlockWalker(block_k=4, block_n=4, tile_m=1, index_bits=16)
    with pytest.raises(ValueError, match=r"^index_bits must be at least 8, not 4$"):
        BlockWalker(block_k=4, block_n=4, tile_m=4, index_bits=4)
    wk = BlockWalker(block_k=32, block_n=16, tile_m=16, index_bits=16)
    assert (wk.block_k, wk.block_n, wk.tile_m, wk.step_cycles) == (32, 16, 16, 32)
