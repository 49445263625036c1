"""The buffers around the PE array: weight double buffer and token-row accumulators.

``docs/hw.md`` section 2: weights are double buffered (the *active* block feeds the array while
the *shadow* buffer fills with the next kept block, one block row per cycle) and the
accumulators hold one BK-wide int32 row per token of the tile.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int

__all__ = ["WeightBuffer", "AccumulatorBank"]


class WeightBuffer(wiring.Component):
    """Double-buffered weight block: ``rows`` rows of ``cols`` int8.

    The shadow buffer is a shift register: each arriving row (``load``) enters at row
    ``rows - 1`` and moves the others down by one, so after ``rows`` loads row ``r`` holds the
    ``r``-th row loaded. ``swap`` copies into the active buffer the value the shadow buffer takes
    at the same clock edge, so a row arriving in the swap cycle is forwarded straight into the
    active block (the reference micro-schedule of ``docs/hw.md`` section 5).

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
    load_data : View(ArrayLayout(signed(8), cols)), in
        One block row (one WMEM word).
    swap : Signal(1), in
        Make the shadow block active at the end of this cycle.
    active : View(ArrayLayout(ArrayLayout(signed(8), cols), rows)), out
        The block feeding the PE array.
    """

    def __init__(self, *, rows: int, cols: int) -> None:
        self._rows = check_int("rows", rows, maximum=1024)
        self._cols = check_int("cols", cols, maximum=1024)
        row = data.ArrayLayout(signed(8), self._cols)
        super().__init__({
            "load": In(1),
            "load_data": In(row),
            "swap": In(1),
            "active": Out(data.ArrayLayout(row, self._rows)),
        })

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def cols(self) -> int:
        return self._cols

    def elaborate(self, platform):
        m = Module()
        layout = data.ArrayLayout(data.ArrayLayout(signed(8), self._cols), self._rows)
        shadow = Signal(layout)
        shadow_next = Signal(layout)
        active = Signal(layout)
        m.d.comb += shadow_next.eq(shadow)
        with m.If(self.load):
            for r in range(self._rows - 1):
                m.d.comb += shadow_next[r].eq(shadow[r + 1])
            m.d.comb += shadow_next[self._rows - 1].eq(self.load_data)
        m.d.sync += shadow.eq(shadow_next)
        with m.If(self.swap):
            m.d.sync += active.eq(shadow_next)
        m.d.comb += self.active.eq(active)
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
    psum : View(ArrayLayout(signed(psum_bits), lanes)), in
        Partial sums of the current token row.
    drain : Signal(1), in
        Retire the head row as zero (its value is on ``head`` this cycle).
    head : View(ArrayLayout(signed(width), lanes)), out
        The head row: element ``k`` in bits ``[width*k + width-1 : width*k]``.
    """

    def __init__(self, *, rows: int, lanes: int, psum_bits: int, width: int = 32) -> None:
        self._rows = check_int("rows", rows, maximum=4096)
        self._lanes = check_int("lanes", lanes, maximum=1024)
        self._width = check_int("width", width, minimum=2, maximum=64)
        self._psum_bits = check_int("psum_bits", psum_bits, minimum=2, maximum=self._width)
        super().__init__({
            "accumulate": In(1),
            "psum": In(data.ArrayLayout(signed(self._psum_bits), self._lanes)),
            "drain": In(1),
            "head": Out(data.ArrayLayout(signed(self._width), self._lanes)),
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
        row = data.ArrayLayout(signed(self._width), self._lanes)
        ring = [Signal(row, name=f"acc{r}") for r in range(self._rows)]
        tail = Signal(row)
        for k in range(self._lanes):
            m.d.comb += tail[k].eq(ring[0][k] + self.psum[k])
        with m.If(self.accumulate | self.drain):
            for r in range(self._rows - 1):
                m.d.sync += ring[r].eq(ring[r + 1])
            with m.If(self.accumulate):
                m.d.sync += ring[-1].eq(tail)
            with m.Else():
                m.d.sync += ring[-1].eq(0)
        m.d.comb += self.head.eq(ring[0])
        return m
