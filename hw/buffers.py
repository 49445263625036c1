"""The buffers around the PE array: the weight double buffer and the two accumulator banks.

``docs/hw.md`` §2: weights are double buffered (the *active* block feeds the array while the
*shadow* buffer fills with the next kept block, one WMEM word of ``r`` block rows per cycle) and
the accumulators are two banks of BM rows x BK int32, so one block row drains while the next one
accumulates.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ._params import check_int

__all__ = ["WeightBuffer", "AccumulatorBanks"]


class WeightBuffer(wiring.Component):
    """Double-buffered weight block of ``words`` WMEM words of ``word_bits`` bits each.

    The *shadow* block fills one word per ``load``, in word order, a whole block at a time (word
    ``s`` of a block is the ``s``-th word loaded since the previous block was complete); words
    are written in place, so a load changes one word register only. ``swap`` copies the shadow
    block into the *active* block at the end of the cycle, with a word landing in that same cycle
    forwarded straight into the active block (``docs/hw.md`` §5).

    Parameters
    ----------
    words : int
        WMEM words per block (``wpb = min(BK, BM)``).
    word_bits : int
        Bits per word (``8 * r * BN``: ``r`` block rows of BN int8).

    Attributes
    ----------
    load : Signal(1), in
        ``load_data`` is the next word of the shadow block.
    load_data : Signal(word_bits), in
        One WMEM word.
    swap : Signal(1), in
        Make the shadow block active at the end of this cycle.
    active : Signal(words * word_bits), out
        The block feeding the PE array: word ``s`` in bits ``[word_bits*(s+1) - 1 : word_bits*s]``.
    """

    def __init__(self, *, words: int, word_bits: int) -> None:
        self._words = check_int("words", words, maximum=1024)
        self._word_bits = check_int("word_bits", word_bits, minimum=8, maximum=1 << 16)
        super().__init__({
            "load": In(1),
            "load_data": In(self._word_bits),
            "swap": In(1),
            "active": Out(self._words * self._word_bits),
        })

    @property
    def words(self) -> int:
        return self._words

    @property
    def word_bits(self) -> int:
        return self._word_bits

    def elaborate(self, platform):
        m = Module()
        n, w = self._words, self._word_bits
        # Weight registers need no reset: a block is always loaded before it is used.
        shadow = [Signal(w, name=f"shadow{s}", reset_less=True) for s in range(n)]
        active = [Signal(w, name=f"active{s}", reset_less=True) for s in range(n)]
        wr = Signal(range(n))   # shadow word the next load writes
        with m.If(self.load):
            m.d.sync += wr.eq(Mux(wr == n - 1, 0, wr + 1))
        for s in range(n):
            arriving = self.load & (wr == s)
            with m.If(arriving):
                m.d.sync += shadow[s].eq(self.load_data)
            with m.If(self.swap):
                m.d.sync += active[s].eq(Mux(arriving, self.load_data, shadow[s]))
        m.d.comb += self.active.eq(Cat(*active))
        return m


class AccumulatorBanks(wiring.Component):
    """Two banks of ``rows`` x ``lanes`` wrap-around ``width``-bit accumulators.

    ``accumulate`` adds ``psum`` into row ``acc_row`` of bank ``acc_bank``; ``drain`` presents row
    ``drain_row`` of bank ``drain_bank`` on ``drain_data`` (combinationally) and clears it at the
    end of the cycle. The engine never accumulates into and drains from the same bank in one
    cycle (``docs/hw.md`` §5); if it did, the accumulation would win.

    Parameters
    ----------
    rows : int
        Rows per bank (BM, tokens per tile).
    lanes : int
        Accumulators per row (BK, output features per block).
    psum_bits : int
        Width of the signed partial sums added in.
    width : int
        Accumulator width (32); sums wrap around in two's complement.

    Attributes
    ----------
    accumulate : Signal(1), in
    acc_bank : Signal(1), in
    acc_row : Signal(range(rows)), in
    psum : Signal(psum_bits * lanes), in
        Signed partial sums, lane ``k`` in bits ``[psum_bits*(k+1) - 1 : psum_bits*k]``.
    drain : Signal(1), in
    drain_bank : Signal(1), in
    drain_row : Signal(range(rows)), in
    drain_data : Signal(width * lanes), out
        Lane ``k`` in bits ``[width*k + width-1 : width*k]``.
    """

    def __init__(self, *, rows: int, lanes: int, psum_bits: int, width: int = 32) -> None:
        self._rows = check_int("rows", rows, minimum=2, maximum=4096)
        self._lanes = check_int("lanes", lanes, maximum=1024)
        self._width = check_int("width", width, minimum=2, maximum=64)
        self._psum_bits = check_int("psum_bits", psum_bits, minimum=2, maximum=self._width)
        super().__init__({
            "accumulate": In(1),
            "acc_bank": In(1),
            "acc_row": In(range(self._rows)),
            "psum": In(self._psum_bits * self._lanes),
            "drain": In(1),
            "drain_bank": In(1),
            "drain_row": In(range(self._rows)),
            "drain_data": Out(self._width * self._lanes),
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
        w, pb, lanes = self._width, self._psum_bits, self._lanes
        datas = []
        for b in range(2):
            mem = Memory(shape=w * lanes, depth=self._rows, init=[])
            m.submodules[f"bank{b}"] = mem
            rd = mem.read_port(domain="comb")
            wr = mem.write_port()
            acc = self.accumulate & (self.acc_bank == b)
            dr = self.drain & (self.drain_bank == b)
            total = Cat(*((rd.data.word_select(k, w).as_signed()
                           + self.psum.word_select(k, pb).as_signed())[:w]
                          for k in range(lanes)))
            m.d.comb += [
                rd.addr.eq(Mux(acc, self.acc_row, self.drain_row)),
                wr.addr.eq(rd.addr),
                wr.data.eq(Mux(acc, total, 0)),
                wr.en.eq(acc | dr),
            ]
            datas.append(rd.data)
        m.d.comb += self.drain_data.eq(Mux(self.drain_bank, datas[1], datas[0]))
        return m
