"""The PE array: BK processing elements sharing one broadcast token row.

Its shape follows the pruning block (``docs/hw.md`` section 2): ``rows`` = BK output features,
``cols`` = BN input features, BK x BN int8 MACs per cycle. The weight double buffer and the
accumulators around it are in :mod:`hw.buffers`.
"""

from __future__ import annotations

from amaranth import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int
from .pe import PE, psum_bits

__all__ = ["PEArray"]


class PEArray(wiring.Component):
    """``rows`` x ``cols`` int8 multipliers: one partial sum per row, combinational.

    Parameters
    ----------
    rows : int
        PE rows (BK): one per output feature of the block.
    cols : int
        Lanes per row (BN): one per input feature of the block.

    Attributes
    ----------
    x : Signal(8 * cols), in
        Token row broadcast to every PE row: int8 element ``j`` in bits ``[8j+7 : 8j]``.
    w : Signal(8 * cols * rows), in
        The active weight block: row ``k`` (packed like ``x``) in bits
        ``[8*cols*(k+1) - 1 : 8*cols*k]``, feeding PE row ``k``.
    psum : Signal(psum_bits * rows), out
        ``psum[k] = sum_j x[j] * w[k][j]``, signed, in bits
        ``[psum_bits*(k+1) - 1 : psum_bits*k]``.
    """

    def __init__(self, *, rows: int, cols: int) -> None:
        self._rows = check_int("rows", rows, maximum=1024)
        self._cols = check_int("cols", cols, maximum=1024)
        self._psum_bits = psum_bits(self._cols)
        super().__init__({
            "x": In(8 * self._cols),
            "w": In(8 * self._cols * self._rows),
            "psum": Out(self._psum_bits * self._rows),
        })

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def cols(self) -> int:
        return self._cols

    @property
    def psum_bits(self) -> int:
        return self._psum_bits

    @property
    def macs_per_cycle(self) -> int:
        return self._rows * self._cols

    def elaborate(self, platform):
        m = Module()
        sums = []
        for k in range(self._rows):
            pe = PE(lanes=self._cols)
            m.submodules[f"pe{k}"] = pe
            m.d.comb += [pe.x.eq(self.x), pe.w.eq(self.w.word_select(k, 8 * self._cols))]
            sums.append(pe.psum)
        m.d.comb += self.psum.eq(Cat(*sums))
        return m
