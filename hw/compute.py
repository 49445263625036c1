"""The compute side of a tile: walks its index and drives the array, the buffers and the drains.

It implements the compute micro-schedule of ``docs/hw.md`` §5 exactly: a setup of F cycles
(block 0's weights; ``col[0]``, ``row_ptr[1]``, ``row_id[0]``), one block step of BM cycles per
visit (token tile t, kept block q), and a tail of BM + 1 cycles for the last block row's drain,
so a tile takes ``F + TT*NNZ*BM + BM + 1`` cycles. While block step v runs, the next visit's
block loads into the shadow buffer and its index entries are read; when a block row ends its
accumulator bank drains into YMEM (read, add if valid, write back) while the next row
accumulates in the other bank.

The tile's index was checked by the DMA when it was loaded (``docs/hw.md`` §3), so every address
this unit produces lies inside its bank.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int, check_pow2

__all__ = ["TileCompute"]


class TileCompute(wiring.Component):
    """Compute side of the block-sparse engine for one tile at a time.

    Parameters
    ----------
    block_k, block_n, tile_m : int
        BK, BN and BM (powers of two; BM >= 4).
    index_bits : int
        Width of an index entry.

    Attributes
    ----------
    start : Signal(1), in
        Pulse in the cycle before the tile's first cycle (the tile has NNZ > 0).
    tt, kg, ng, r, nnz : Signal(32), in
        The tile's geometry, stable while it runs.
    busy, last : Signal(1), out
        A cycle of the tile; its final cycle.
    fill : Signal(1), out
        A setup cycle (the array waits for the first block).
    idx_addr, x_addr, w_addr : Signal(32), out
        Compute-bank addresses, valid with ``idx_re``, ``x_re``, ``w_re``.
    idx_re, x_re, w_re : Signal(1), out
    idx_data : Signal(index_bits), in
        Index entry read in the previous cycle.
    swap : Signal(1), out
        The shadow block becomes active at the end of this cycle.
    mac, mac_bank : Signal(1), out
        The XMEM word read in the previous cycle is multiplied now, into this bank...
    mac_row : Signal(range(tile_m)), out
        ...and this accumulator row.
    y_raddr, y_waddr : Signal(32), out
        YMEM word a drain reads (``y_re``) / writes (``y_we``).
    y_re, y_we : Signal(1), out
    drain, drain_bank : Signal(1), out
        Accumulator row ``drain_row`` of ``drain_bank`` is written out (and cleared) now.
    drain_row : Signal(range(tile_m)), out
    """

    def __init__(self, *, block_k: int, block_n: int, tile_m: int, index_bits: int) -> None:
        self._bk = check_pow2("block_k", block_k)
        self._bn = check_pow2("block_n", block_n)
        self._bm = check_pow2("tile_m", tile_m, minimum=4)
        self._index_bits = check_int("index_bits", index_bits, minimum=8, maximum=32)
        ports = {"start": In(1)}
        for name in ("tt", "kg", "ng", "r", "nnz"):
            ports[name] = In(32)
        ports.update({
            "busy": Out(1), "last": Out(1), "fill": Out(1),
            "idx_addr": Out(32), "idx_re": Out(1), "idx_data": In(self._index_bits),
            "x_addr": Out(32), "x_re": Out(1), "w_addr": Out(32), "w_re": Out(1),
            "swap": Out(1), "mac": Out(1), "mac_bank": Out(1), "mac_row": Out(range(tile_m)),
            "y_raddr": Out(32), "y_re": Out(1), "y_waddr": Out(32), "y_we": Out(1),
            "drain": Out(1), "drain_bank": Out(1), "drain_row": Out(range(tile_m)),
        })
        super().__init__(ports)

    @property
    def words_per_block(self) -> int:
        return min(self._bk, self._bm)

    @property
    def fill_cycles(self) -> int:
        return max(self.words_per_block, 3)

    def elaborate(self, platform):
        m = Module()
        bm, wpb, fill = self._bm, self.words_per_block, self.fill_cycles
        lg_bm = bm.bit_length() - 1
        c = Signal(range(max(fill, bm + 1)))    # cycle within the phase of the walk
        t, q, j = Signal(32), Signal(32), Signal(32)
        row_end = Signal(32)      # row_ptr[j + 1]
        next_col = Signal(32)     # column of the visit whose step comes next
        rid_cur, rid_next = Signal(32), Signal(32)
        new_row = Signal()        # the next visit starts a block row (latched at step cycle 1)
        bank = Signal()           # accumulator bank of the current block row
        x_tile, y_tile = Signal(32), Signal(32)
        x_run, w_run = Signal(32), Signal(32)
        land_col, land_rp, land_rid, land_rid0 = Signal(), Signal(), Signal(), Signal()

        # ---- index entries land one cycle after their read ------------------------------
        m.d.sync += [land_col.eq(0), land_rp.eq(0), land_rid.eq(0), land_rid0.eq(0)]
        with m.If(land_col):
            m.d.sync += next_col.eq(self.idx_data)
        with m.If(land_rp):
            m.d.sync += row_end.eq(self.idx_data)
        with m.If(land_rid):
            m.d.sync += rid_next.eq(self.idx_data)
        with m.If(land_rid0):
            m.d.sync += rid_cur.eq(self.idx_data)
        rid_next_now = Mux(land_rid, self.idx_data, rid_next)

        def read_idx(entry, flag):
            m.d.comb += [self.idx_addr.eq(entry), self.idx_re.eq(1)]
            m.d.sync += flag.eq(1)

        def load_weights(first_of_block, restart):
            addr = Mux(first_of_block & restart, 0, w_run)
            m.d.comb += [self.w_addr.eq(addr), self.w_re.eq(1)]
            m.d.sync += w_run.eq(addr + 1)

        # ---- the next visit of the walk ----------------------------------------------------
        q1 = Signal(32)
        m.d.comb += q1.eq(q + 1)
        wraps = q1 >= self.nnz                     # next visit: block 0 of the next token tile
        has_next = ~(wraps & (t + 1 >= self.tt))
        nxt_q = Mux(wraps, 0, q1)
        nxt_j = Mux(wraps, 0, j + 1)
        starts_row = has_next & (wraps | (q1 >= row_end))

        # ---- drains: read stage (BM cycles from a row's end) and write stage ----------------
        d_on, d_m = Signal(), Signal(range(bm))
        d_addr = Signal(32)
        d_bank = Signal()
        trigger = Signal()
        t_base = Signal(32)       # YMEM word of (token 0, row_id) of the finished row
        t_bank = Signal()
        with m.If(trigger):
            m.d.sync += [d_on.eq(1), d_m.eq(0), d_addr.eq(t_base), d_bank.eq(t_bank)]
        with m.Elif(d_on):
            m.d.sync += [d_m.eq(d_m + 1), d_addr.eq(d_addr + self.kg)]
            with m.If(d_m == bm - 1):
                m.d.sync += d_on.eq(0)
        m.d.comb += [self.y_raddr.eq(d_addr), self.y_re.eq(d_on)]
        w_on, w_row, w_addr_q, w_bank = Signal(), Signal(range(bm)), Signal(32), Signal()
        m.d.sync += [w_on.eq(d_on), w_row.eq(d_m), w_addr_q.eq(d_addr), w_bank.eq(d_bank)]
        m.d.comb += [self.drain.eq(w_on), self.drain_row.eq(w_row), self.drain_bank.eq(w_bank),
                     self.y_we.eq(w_on), self.y_waddr.eq(w_addr_q)]

        # ---- products land one cycle after the XMEM read -----------------------------------
        mac_row, mac_bank = Signal(range(bm)), Signal()
        m.d.sync += [self.mac.eq(self.x_re), mac_row.eq(c[:lg_bm]), mac_bank.eq(bank)]
        m.d.comb += [self.mac_row.eq(mac_row), self.mac_bank.eq(mac_bank)]

        def begin():
            m.d.sync += [c.eq(0), t.eq(0), q.eq(0), j.eq(0), bank.eq(0), x_tile.eq(0),
                         y_tile.eq(0)]
            m.next = "SETUP"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    begin()
            with m.State("SETUP"):
                m.d.comb += [self.busy.eq(1), self.fill.eq(1)]
                with m.If(c < wpb):
                    load_weights(c == 0, 1)
                with m.If(c == 0):
                    read_idx(2 * self.r + 1, land_col)
                with m.Elif(c == 1):
                    read_idx(1, land_rp)
                with m.Elif(c == 2):
                    read_idx(self.r + 1, land_rid0)
                with m.If(c == fill - 1):
                    m.d.sync += c.eq(0)
                    m.next = "STEP"
                with m.Else():
                    m.d.sync += c.eq(c + 1)
            with m.State("STEP"):
                m.d.comb += [self.busy.eq(1), self.swap.eq(c == 0)]
                x_addr = Mux(c == 0, x_tile + next_col, x_run)
                m.d.comb += [self.x_addr.eq(x_addr), self.x_re.eq(1)]
                m.d.sync += x_run.eq(x_addr + self.ng)
                with m.If(has_next):
                    with m.If(c < wpb):
                        load_weights(c == 0, wraps)
                    with m.If(c == 0):
                        read_idx(2 * self.r + 1 + nxt_q, land_col)
                    with m.Elif((c == 1) & starts_row):
                        read_idx(nxt_j + 1, land_rp)
                    with m.Elif((c == 2) & new_row):
                        read_idx(self.r + 1 + Mux(wraps, 0, j + 1), land_rid)
                with m.If(c == 1):
                    m.d.sync += new_row.eq(starts_row)
                with m.If(c == bm - 1):
                    m.d.sync += c.eq(0)
                    with m.If(~has_next):
                        m.d.comb += trigger.eq(1)
                        m.next = "TAIL"
                    with m.Else():
                        m.d.sync += [q.eq(nxt_q)]
                        with m.If(wraps):
                            m.d.sync += [t.eq(t + 1), x_tile.eq(x_tile + (self.ng << lg_bm)),
                                         y_tile.eq(y_tile + (self.kg << lg_bm))]
                        with m.If(new_row):
                            m.d.comb += trigger.eq(1)
                            m.d.sync += [j.eq(nxt_j), bank.eq(~bank), rid_cur.eq(rid_next_now)]
                with m.Else():
                    m.d.sync += c.eq(c + 1)
            with m.State("TAIL"):
                m.d.comb += [self.busy.eq(1), self.last.eq(c == bm)]
                with m.If(c == bm):
                    with m.If(self.start):      # the next phase's tile starts right away
                        begin()
                    with m.Else():
                        m.next = "IDLE"
                with m.Else():
                    m.d.sync += c.eq(c + 1)
        m.d.comb += [t_base.eq(y_tile + rid_cur), t_bank.eq(bank)]
        return m
