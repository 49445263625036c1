# amaranth: UnusedElaboratable=no
"""The DMA issues exactly the DRAM and bank accesses of docs/hw.md §5, cycle by cycle, and stops
with the right error code on a bad descriptor or index segment."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.dma import Dma
from lsp_codesign.isa import DESC_WORDS, SWAP_W, SWAP_X, SWAP_Y, ErrorCode, encode_descriptor

GEOM = dict(x_depth=64, w_depth=64, i_depth=64, y_depth=32, tile_m=4, words_per_block=4)


def beats_of(words, bits, b):
    return -(-words * bits // b)


def pack(values, bits):
    return sum((int(v) & ((1 << bits) - 1)) << (bits * j) for j, v in enumerate(values))


def load_ref(t0, n, bits, b, dram_at, target, off):
    """(cycle, event) of a load of n words of `bits` from beat `dram_at` into bank `target`."""
    ev = []
    if bits >= b:
        k = bits // b
        ev += [(t0 + i, ("rd", dram_at + i)) for i in range(n * k)]
        ev += [(t0 + (v + 1) * k, (target, off + v)) for v in range(n)]
        return ev, n * k + 1
    k = b // bits
    ev += [(t0 + u * k, ("rd", dram_at + u)) for u in range(-(-n // k))]
    ev += [(t0 + v + 1, (target, off + v)) for v in range(n)]
    return ev, n + 1


def store_ref(t0, n, bits, b, dram_at):
    ev = []
    if bits >= b:
        k = bits // b
        ev += [(t0 + v * k, ("yr", v)) for v in range(n)]
        ev += [(t0 + v * k + 1, ("yclr", v)) for v in range(n)]
        ev += [(t0 + 1 + i, ("wr", dram_at + i)) for i in range(n * k)]
        return ev, n * k + 1
    k = b // bits
    ev += [(t0 + v, ("yr", v)) for v in range(n)] + [(t0 + v + 1, ("yclr", v)) for v in range(n)]
    ev += [(t0 + min((u + 1) * k, n), ("wr", dram_at + u)) for u in range(-(-n // k))]
    return ev, n + 1


def run_dma(b, lat, widths, job, dram, ybank, prev=None):
    dut = Dma(beat_bits=b, latency=lat, dram_depth=256, x_bits=widths["x"],
              w_bits=widths["w"], i_bits=widths["i"], y_bits=widths["y"], **GEOM)
    events, out = [], {}

    async def bench(ctx):
        ctx.set(dut.gemm_start, 1)
        await ctx.tick()
        ctx.set(dut.gemm_start, 0)
        for name, value in job.items():
            ctx.set(getattr(dut, name), value)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        rdata = ydata = 0
        for cycle in range(2000):
            ctx.set(dut.dram_rdata, rdata)
            ctx.set(dut.y_rdata, ydata)
            g = ctx.get
            if not g(dut.busy):
                break
            rdata = ydata = 0
            if g(dut.dram_re):
                events.append((cycle, ("rd", g(dut.dram_addr))))
                rdata = dram.get(g(dut.dram_addr), 0)
            if g(dut.dram_we):
                events.append((cycle, ("wr", g(dut.dram_addr))))
                out[g(dut.dram_addr)] = g(dut.dram_wdata)
            for name in ("x", "w", "i"):
                if g(getattr(dut, f"{name}_we")):
                    events.append((cycle, (name, g(getattr(dut, f"{name}_waddr")))))
                    out[name, g(getattr(dut, f"{name}_waddr"))] = g(getattr(dut, f"{name}_wdata"))
            if g(dut.y_re):
                events.append((cycle, ("yr", g(dut.y_raddr))))
                ydata = ybank.get(g(dut.y_raddr), 0)
            if g(dut.y_we):
                events.append((cycle, ("yclr", g(dut.y_waddr))))
            last = g(dut.last)
            out["error"], out["code"] = g(dut.error), g(dut.err_code)
            await ctx.tick()
            if last:
                out["cycles"] = cycle + 1
                out["tile"] = {f: g(getattr(dut, f"tile_{f}")) for f in ("tt", "kg", "ng", "r",
                                                                         "nnz")}
                break

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return sorted(events), out


@pytest.mark.parametrize("b, widths", [
    (64, {"x": 32, "w": 64, "i": 16, "y": 128}),      # words narrower and wider than a beat
    (128, {"x": 128, "w": 256, "i": 8, "y": 64}),
    (32, {"x": 64, "w": 32, "i": 32, "y": 32}),
])
def test_store_fetch_and_loads_cycle_by_cycle(b, widths):
    rng = np.random.default_rng(b)
    lat = 5
    tt, kg, ng, r, nnz = 1, 3, 2, 2, 3
    kd = 512 // b
    desc_at, x_at, i_at, w_at, y_at = 10, 40, 80, 100, 150
    flags = SWAP_X | SWAP_W | SWAP_Y
    desc = encode_descriptor(flags=flags, tt=tt, kg=kg, ng=ng, r=r, nnz=nnz, x=x_at, idx=i_at,
                             y=y_at, w=w_at, wlen=5)
    raw = pack(desc, 32)
    dram = {desc_at + i: (raw >> (b * i)) & ((1 << b) - 1) for i in range(kd)}
    index = [0, 2, 3, 0, 2, 1, 0, 1]                 # rp 0,2,3; rows 0,2; cols 1,0,1
    seg = pack(index, widths["i"])
    dram.update({i_at + u: (seg >> (b * u)) & ((1 << b) - 1)
                 for u in range(beats_of(len(index), widths["i"], b))})
    for a in list(range(x_at, x_at + 20)) + list(range(w_at, w_at + 20)):
        dram[a] = int(rng.integers(0, 1 << 62))
    ybank = {v: (1 << widths["y"]) | v for v in range(6)}     # valid words
    ybank[2] = 99                                               # not valid: stored as zero
    job = dict(do_store=1, store_addr=200, store_words=6, do_fetch=1, fetch_addr=desc_at)
    events, out = run_dma(b, lat, widths, job, dram, ybank)
    t = lat
    want, n = store_ref(t, 6, widths["y"], b, 200)
    t += n
    want += [(t + i, ("rd", desc_at + i)) for i in range(kd)]
    t += kd + 2
    x_words = tt * 4 * ng
    for name, words, at, bits in (("x", x_words, x_at, widths["x"]),
                                  ("i", len(index), i_at, widths["i"]),
                                  ("w", 5, w_at, widths["w"])):
        ev, n = load_ref(t, words, bits, b, at, name, 0)
        want += ev
        t += n
    assert events == sorted(want)
    assert out["cycles"] == t and not out["error"]
    assert out["tile"] == {"tt": tt, "kg": kg, "ng": ng, "r": r, "nnz": nnz}
    assert [out["i", e] for e in range(len(index))] == index
    ywords = [0 if v == 2 else v for v in range(6)]
    got = sum(out.get(200 + u, 0) << (b * u) for u in range(beats_of(6, widths["y"], b)))
    assert got == pack(ywords, widths["y"])


@pytest.mark.parametrize("change, code, ends_at", [
    (dict(tt=0), ErrorCode.BAD_TILE, "decode"),
    (dict(nnz=7), ErrorCode.BAD_TILE, "decode"),            # NNZ > R * NG
    (dict(x=253), ErrorCode.DMA_RANGE, "decode"),           # X tile (4 beats) leaves DRAM
    (dict(wlen=65), ErrorCode.DMA_RANGE, "decode"),         # chunk longer than the W bank
    (dict(fetch_addr=255), ErrorCode.DMA_RANGE, "fetch"),   # descriptor leaves DRAM
    (dict(index=[0, 2, 1, 0, 2, 1, 0, 1]), ErrorCode.INDEX, "index"),   # row pointers decrease
    (dict(index=[0, 2, 3, 0, 2, 1, 2, 1]), ErrorCode.INDEX, "index"),   # a column >= NG
    (dict(index=[0, 2, 3, 2, 1, 1, 0, 1]), ErrorCode.INDEX, "index"),   # row ids not increasing
])
def test_bad_descriptors_and_indices_stop_with_their_code(change, code, ends_at):
    b, lat, widths = 64, 3, {"x": 32, "w": 64, "i": 16, "y": 128}
    fields = dict(flags=SWAP_X | SWAP_W | SWAP_Y, tt=1, kg=3, ng=2, r=2, nnz=3, x=40, idx=80,
                  y=150, w=100, wlen=5)
    fields.update({k: v for k, v in change.items() if k in fields})
    raw = pack(encode_descriptor(**fields), 32)
    fetch_at = change.get("fetch_addr", 10)
    dram = {10 + i: (raw >> (b * i)) & ((1 << b) - 1) for i in range(DESC_WORDS * 32 // b)}
    index = change.get("index", [0, 2, 3, 0, 2, 1, 0, 1])
    seg = pack(index, 16)
    dram.update({80 + u: (seg >> (b * u)) & ((1 << b) - 1) for u in range(2)})
    events, out = run_dma(b, lat, widths, dict(do_fetch=1, fetch_addr=fetch_at), dram, {})
    assert out["error"] and out["code"] == code
    kd = 512 // b
    expect = {"fetch": lat + 1, "decode": lat + kd + 2,
              "index": lat + kd + 2 + (4 * 2 + 1) + (len(index) + 1)}[ends_at]
    assert out["cycles"] == expect
    assert not any(e[1][0] == "w" for e in events)          # no W chunk after an error
