"""The ISS's ``lsp.gemm``: phases of DMA and compute over banked memories (``docs/hw.md`` §5).

Written from the spec's rules, phase by phase: at a phase start the computing tile's swaps take
effect; its compute runs on the compute banks; the DMA, after the DRAM latency, stores a finished
Y region, fetches and checks the next descriptor and loads that tile's data into the other
banks. Each side's cycles come from walking what it does; the phase lasts as long as the longer
side. Nothing here is shared with the closed-form model (:mod:`lsp_codesign.schedule`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import HwConfig
from .hwspec import DATA_MEMORIES
from .isa import DESC_WORDS, SWAP_W, SWAP_X, SWAP_Y, ErrorCode, decode_descriptor

__all__ = ["TileEngine", "Tile"]

_DT = {8: "<u1", 16: "<u2", 32: "<u4"}   # index entries are unsigned


@dataclass(frozen=True)
class Tile:
    """A decoded descriptor."""

    swap_x: bool
    swap_w: bool
    swap_y: bool
    tt: int
    kg: int
    ng: int
    r: int
    nnz: int
    x: int
    idx: int
    y: int
    w: int
    wlen: int

    @classmethod
    def decode(cls, words: list[int]) -> "Tile":
        f = decode_descriptor(words)
        return cls(bool(f["flags"] & SWAP_X), bool(f["flags"] & SWAP_W),
                   bool(f["flags"] & SWAP_Y), f["tt"], f["kg"], f["ng"], f["r"], f["nnz"],
                   f["x"], f["idx"], f["y"], f["w"], f["wlen"])


class _Stop(Exception):
    """The DMA found an error after ``cycles`` cycles of its operations."""

    def __init__(self, code: ErrorCode, cycles: int) -> None:
        super().__init__(code)
        self.code, self.cycles = code, cycles


class TileEngine:
    """Runs ``lsp.gemm`` on memories ``mem`` and adds every event to the counter dict ``c``."""

    def __init__(self, cfg: HwConfig, mem, c: dict[str, int]) -> None:
        self.cfg, self.mem, self.c = cfg, mem, c
        s = cfg.memories
        self.depth = {n: s[n].depth for n in DATA_MEMORIES}
        self.bits = {n: s[n].word_bits for n in ("xmem", "wmem", "idx")}
        self.bits["ymem"] = cfg.block_k * 32
        self.beat = cfg.dram.bytes_per_cycle
        if not mem.banks:
            mem.banks.update({
                "xmem": [bytearray(self.depth["xmem"] * self.bits["xmem"] // 8) for _ in "01"],
                "wmem": [bytearray(self.depth["wmem"] * self.bits["wmem"] // 8) for _ in "01"],
                "idx": [bytearray(self.depth["idx"] * self.bits["idx"] // 8) for _ in "01"],
                "ymem": [np.zeros((self.depth["ymem"], cfg.block_k), np.int64) for _ in "01"],
                "valid": [np.zeros(self.depth["ymem"], bool) for _ in "01"],
            })

    # ---- the run --------------------------------------------------------------------------

    def gemm(self, desc_base: int, n_tiles: int) -> ErrorCode:
        c = self.c
        self.desc_base, self.n_tiles = desc_base, n_tiles
        self.bank = {"x": 0, "w": 0, "y": 0}
        self.prev = (0, 0, 0, 0, 0)          # TT, KG, NG, R, NNZ of the previous tile
        self.wfill = 0
        regions: list = []                    # [current, previous] Y regions
        busy = 1
        tile = None
        code = ErrorCode.NONE
        phases = n_tiles + 2 if n_tiles else 0
        for k in range(phases):
            comp = 0
            store = None
            if 1 <= k <= n_tiles:
                store = self._swap(tile, regions)
                comp = self._compute(tile)
                c["tiles"] += 1
            elif k == n_tiles + 1:
                self.bank["y"] ^= 1          # the last region moves to the store side
                store = regions[0]
            dma, nxt, code = self._dma(k, store)
            length = max(comp, dma, 1)
            busy += length
            c["dma_cycles"] += dma
            c["dma_stall"] += max(0, dma - comp)
            tile = nxt
            if code != ErrorCode.NONE:
                break
        c["busy"] += busy
        c["cycles"] += busy
        return code

    def _swap(self, tile: Tile, regions: list):
        """Phase start: the computing tile's swaps; returns the Y region to store, if any."""
        store = None
        if tile.swap_x:
            self.bank["x"] ^= 1
        if tile.swap_w:
            self.bank["w"] ^= 1
            self.wfill = 0
        if tile.swap_y:
            self.bank["y"] ^= 1
            if regions:
                store = regions[0]
            regions[:] = [(tile.y, tile.tt * self.cfg.tile_m * tile.kg)]
        return store

    def _dma(self, k: int, store) -> tuple[int, Tile | None, ErrorCode]:
        """The DMA's work in phase ``k``: its cycles, the tile it decoded, and any error."""
        ops_cycles = 0
        nxt = None
        code = ErrorCode.NONE
        busy = store is not None or k < self.n_tiles
        try:
            if store is not None:
                ops_cycles += self._store(*store)
            if k < self.n_tiles:
                ops_cycles, nxt = self._fetch_and_load(k, ops_cycles)
        except _Stop as stop:
            code, ops_cycles = stop.code, stop.cycles
        dma = self.cfg.dram.latency_cycles + ops_cycles if busy else 0
        return dma, nxt, code

    def _fetch_and_load(self, k: int, cyc: int) -> tuple[int, Tile]:
        cfg, c = self.cfg, self.c
        kd = cfg.dram.desc_beats
        at = self.desc_base + k * kd
        if at + kd > cfg.dram.depth:
            raise _Stop(ErrorCode.DMA_RANGE, cyc + 1)
        raw = self._dram_read(at, kd)
        c["dram_read_bytes"] += kd * self.beat
        cyc += kd + 2
        t = Tile.decode(list(np.frombuffer(raw[: 4 * DESC_WORDS], "<u4")))
        code = self._check(t)
        if code != ErrorCode.NONE:
            raise _Stop(code, cyc)
        self.prev = (t.tt, t.kg, t.ng, t.r, t.nnz)
        bm = cfg.tile_m
        if t.swap_x:
            cyc += self._load("xmem", 1 - self.bank["x"], 0, t.x, t.tt * bm * t.ng)
        if t.swap_w:
            n = 2 * t.r + 1 + t.nnz
            cyc += self._load("idx", 1 - self.bank["w"], 0, t.idx, n)
            if not self._index_ok(t):
                raise _Stop(ErrorCode.INDEX, cyc)
        if t.wlen:
            cyc += self._load("wmem", 1 - self.bank["w"], self.wfill, t.w, t.wlen)
            self.wfill += t.wlen
        return cyc, t

    def _check(self, t: Tile) -> ErrorCode:
        """Decode checks of ``docs/hw.md`` §5, bad_tile first."""
        cfg, bm = self.cfg, self.cfg.tile_m
        ptt, pkg, png, pr, pnnz = self.prev
        if 0 in (t.tt, t.kg, t.ng) or t.r > t.kg or t.nnz < t.r or t.nnz > t.r * t.ng:
            return ErrorCode.BAD_TILE
        if (not t.swap_x and (t.tt, t.ng) != (ptt, png)) or \
                (not t.swap_w and (t.kg, t.ng, t.r, t.nnz) != (pkg, png, pr, pnnz)) or \
                (not t.swap_y and (t.tt, t.kg) != (ptt, pkg)):
            return ErrorCode.BAD_TILE
        d = self.depth
        checks = []
        if t.swap_x:
            checks += [t.tt * bm * t.ng <= d["xmem"],
                       self._in_dram(t.x, t.tt * bm * t.ng, self.bits["xmem"])]
        if t.swap_w:
            n = 2 * t.r + 1 + t.nnz
            checks += [n <= d["idx"], t.nnz * cfg.words_per_block <= d["wmem"],
                       self._in_dram(t.idx, n, self.bits["idx"])]
        if t.swap_y:
            checks += [t.tt * bm * t.kg <= d["ymem"],
                       self._in_dram(t.y, t.tt * bm * t.kg, self.bits["ymem"])]
        if t.wlen:
            checks += [self.wfill + t.wlen <= d["wmem"],
                       self._in_dram(t.w, t.wlen, self.bits["wmem"])]
        return ErrorCode.NONE if all(checks) else ErrorCode.DMA_RANGE

    def _in_dram(self, addr: int, words: int, bits: int) -> bool:
        return addr + -(-words * bits // (8 * self.beat)) <= self.cfg.dram.depth

    # ---- transfers ------------------------------------------------------------------------

    def _cost(self, n: int, bits: int) -> int:
        return n * max(1, bits // (8 * self.beat)) + 1

    def _dram_read(self, addr: int, beats: int) -> bytes:
        get = self.mem.dram.get
        return b"".join(get(addr + i, 0).to_bytes(self.beat, "little") for i in range(beats))

    def _load(self, name: str, bank: int, offset: int, addr: int, n: int) -> int:
        bits = self.bits[name]
        beats = -(-n * bits // (8 * self.beat))
        data = self._dram_read(addr, beats)[: n * bits // 8]
        buf = self.mem.banks[name][bank]
        buf[offset * bits // 8: offset * bits // 8 + len(data)] = data
        self.c["dram_read_bytes"] += beats * self.beat
        self.c[f"{name}_writes"] += n
        return self._cost(n, bits)

    def _store(self, addr: int, n: int) -> int:
        y, valid = self.mem.banks["ymem"][1 - self.bank["y"]], \
            self.mem.banks["valid"][1 - self.bank["y"]]
        vals = np.where(valid[:n, None], y[:n], 0).astype("<i4").tobytes()
        y[:n] = 0
        valid[:n] = False
        bits = self.bits["ymem"]
        beats = -(-n * bits // (8 * self.beat))
        vals += bytes(beats * self.beat - len(vals))
        for i in range(beats):
            self.mem.dram[addr + i] = int.from_bytes(vals[i * self.beat:(i + 1) * self.beat],
                                                     "little")
        self.c["dram_write_bytes"] += beats * self.beat
        self.c["ymem_reads"] += n
        self.c["ymem_writes"] += n
        return self._cost(n, bits)

    def _index(self, t: Tile, bank: int) -> np.ndarray:
        n = 2 * t.r + 1 + t.nnz
        raw = bytes(self.mem.banks["idx"][bank][: n * self.bits["idx"] // 8])
        return np.frombuffer(raw, _DT[self.bits["idx"]]).astype(np.int64)

    def _index_ok(self, t: Tile) -> bool:
        """The rules of an index segment (``docs/hw.md`` §3), checked as the DMA loads it."""
        e = self._index(t, 1 - self.bank["w"])
        rp, rid, col = e[: t.r + 1], e[t.r + 1: 2 * t.r + 1], e[2 * t.r + 1:]
        return bool(rp[0] == 0 and np.all(np.diff(rp) > 0) and rp[-1] == t.nnz
                    and np.all(np.diff(rid) > 0) and np.all(rid < t.kg) and np.all(col < t.ng))

    # ---- compute --------------------------------------------------------------------------

    def _compute(self, t: Tile) -> int:
        """One tile on the compute banks; returns its cycles (0 when it has no kept block)."""
        if t.nnz == 0:
            return 0
        cfg, c = self.cfg, self.c
        bm, bk, bn, wpb = cfg.tile_m, cfg.block_k, cfg.block_n, cfg.words_per_block
        e = self._index(t, self.bank["w"])
        rp, rid, col = e[: t.r + 1], e[t.r + 1: 2 * t.r + 1], e[2 * t.r + 1:]
        xb = self.mem.banks["xmem"][self.bank["x"]]
        x = np.frombuffer(bytes(xb[: t.tt * bm * t.ng * bn]), np.int8).astype(np.int64)
        x = x.reshape(t.tt, bm, t.ng, bn)
        wb = self.mem.banks["wmem"][self.bank["w"]]
        w = np.frombuffer(bytes(wb[: t.nnz * bk * bn]), np.int8).astype(np.int64)
        w = w.reshape(t.nnz, bk, bn)
        y, valid = self.mem.banks["ymem"][self.bank["y"]], self.mem.banks["valid"][self.bank["y"]]
        for tt in range(t.tt):
            for j in range(t.r):
                q0, q1 = rp[j], rp[j + 1]
                acc = np.einsum("mqn,qkn->mk", x[tt][:, col[q0:q1], :], w[q0:q1])
                addr = (tt * bm + np.arange(bm)) * t.kg + rid[j]
                old = np.where(valid[addr, None], y[addr], 0)
                y[addr] = (old + acc + (1 << 31)) % (1 << 32) - (1 << 31)
                valid[addr] = True
        steps = t.tt * t.nnz
        c["compute"] += steps * bm
        c["macs"] += steps * bm * bk * bn
        c["fill"] += cfg.fill_cycles
        c["xmem_reads"] += steps * bm
        c["wmem_reads"] += steps * wpb
        c["idx_reads"] += t.tt * (t.nnz + 2 * t.r)
        c["ymem_reads"] += t.tt * t.r * bm
        c["ymem_writes"] += t.tt * t.r * bm
        return cfg.fill_cycles + steps * bm + bm + 1
