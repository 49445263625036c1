"""The buffers around the PE array: weight double buffer and token-row accumulators.

``docs/hw.md`` section 2: weights are double buffered (the *active* block feeds the array while
the *shadow* buffer fills with the next kept block, one block row per cycle) and the
accumulators hold one BK-wide int32 row per token of the tile.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int

__all__ = ["WeightBuffer", "AccumulatorBank"]


class WeightBuffer(wiring.Component):
    """Double-buffered weight block: ``rows`` rows of ``cols`` int8.

    The *shadow* block fills one row per ``load``, in row order, a whole block at a time (row
    ``r`` of a block is the ``r``-th row loaded since the previous block was complete); rows
    are written in place, so a load changes one row register only. ``swap`` copies the shadow
    block into the *active* block at the end of the cycle, with a row arriving in that same cycle
    forwarded straight into the active block (the reference micro-schedule of ``docs/hw.md``
    section 5: when D = BK the last row of the next block lands in the swap cycle).

    Parameters
    ----------
    rows : int
        Rows of a block (BK).
    cols : int
        Int8 elements per row (BN).

    Attributes
    ----------
    load : Signal(1), in
        ``load_data`` is the next block row.
    load_data : Signal(8 * cols), in
        One block row (one WMEM word: int8 element ``j`` in bits ``[8j+7 : 8j]``).
    swap : Signal(1), in
        Make the shadow block active at the end of this cycle.
    active : Signal(8 * cols * rows), out
        The block feeding the PE array, row ``r`` in bits ``[8*cols*(r+1) - 1 : 8*cols*r]``.
    """

    def __init__(self, *, rows: int, cols: int) -> None:
        self._rows = check_int("rows", rows, maximum=1024)
        self._cols = check_int("cols", cols, maximum=1024)
        super().__init__({
            "load": In(1),
            "load_data": In(8 * self._cols),
            "swap": In(1),
            "active": Out(8 * self._cols * self._rows),
        })

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def cols(self) -> int:
        return self._cols

    def elaborate(self, platform):
        m = Module()
        row = 8 * self._cols
        # Weight registers need no reset: a block is always loaded before it is used.
        shadow = [Signal(row, name=f"shadow{r}", reset_less=True) for r in range(self._rows)]
        active = [Signal(row, name=f"active{r}", reset_less=True) for r in range(self._rows)]
        wr = Signal(range(self._rows))   # shadow row the next load writes
        with m.If(self.load):
            m.d.sync += wr.eq(Mux(wr == self._rows - 1, 0, wr + 1))
        for r in range(self._rows):
            arriving = self.load & (wr == r)
            with m.If(arriving):
                m.d.sync += shadow[r].eq(self.load_data)
            with m.If(self.swap):
                m.d.sync += active[r].eq(Mux(arriving, self.load_data, shadow[r]))
        m.d.comb += self.active.eq(Cat(*active))
        return m


class AccumulatorBank(wiring.Component):
    """``rows`` accumulator rows of ``lanes`` wrap-around ``width``-bit integers, kept in a ring.

    Token rows of a block step arrive in order 0..rows-1 and a drain writes rows in the same
    order, so the bank is a ring of rows rather than an addressed register file: the row at the
    head is the one the next token (or drain cycle) needs. ``accumulate`` retires the head into
    the tail as ``head + psum``; ``drain`` retires it as zero while ``head`` is written out. After
    ``rows`` accumulations the ring is back in token order.

    Parameters
    ----------
    rows : int
        Accumulator rows (BM, tokens per tile).
    lanes : int
        Accumulators per row (BK, output features per block).
    psum_bits : int
        Width of the signed partial sums added in.
    width : int
        Accumulator width (32); sums wrap around in two's complement.

    Attributes
    ----------
    accumulate : Signal(1), in
        Add ``psum`` into the head row and rotate.
    psum : Signal(psum_bits * lanes), in
        Signed partial sums of the current token row, lane ``k`` in bits
        ``[psum_bits*(k+1) - 1 : psum_bits*k]``.
    drain : Signal(1), in
        Retire the head row as zero (its value is on ``head`` this cycle).
    head : Signal(width * lanes), out
        The head row: lane ``k`` in bits ``[width*k + width-1 : width*k]`` (a YMEM word).
    """

    def __init__(self, *, rows: int, lanes: int, psum_bits: int, width: int = 32) -> None:
        self._rows = check_int("rows", rows, maximum=4096)
        self._lanes = check_int("lanes", lanes, maximum=1024)
        self._width = check_int("width", width, minimum=2, maximum=64)
        self._psum_bits = check_int("psum_bits", psum_bits, minimum=2, maximum=self._width)
        super().__init__({
            "accumulate": In(1),
            "psum": In(self._psum_bits * self._lanes),
            "drain": In(1),
            "head": Out(self._width * self._lanes),
        })

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def width(self) -> int:
        return self._width

    def elaborate(self, platform):
        m = Module()
        w, pb = self._width, self._psum_bits
        ring = [Signal(w * self._lanes, name=f"acc{r}") for r in range(self._rows)]
        tail = Signal(w * self._lanes)
        m.d.comb += tail.eq(Cat(*(
            (ring[0].word_select(k, w).as_signed()
             + self.psum.word_select(k, pb).as_signed())[:w]
            for k in range(self._lanes))))
        with m.If(self.accumulate | self.drain):
            for r in range(self._rows - 1):
                m.d.sync += ring[r].eq(ring[r + 1])
            with m.If(self.accumulate):
                m.d.sync += ring[-1].eq(tail)
            with m.Else():
                m.d.sync += ring[-1].eq(0)
        m.d.comb += self.head.eq(ring[0])
        return m
