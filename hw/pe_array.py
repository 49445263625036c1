"""The PE array: BK processing elements sharing one broadcast token row.

Its shape follows the pruning block (``docs/hw.md`` section 2): ``rows`` = BK output features,
``cols`` = BN input features, BK x BN int8 MACs per cycle. The weight double buffer and the
accumulators around it are in :mod:`hw.buffers`.
"""

from __future__ import annotations

from amaranth import Module, signed
from amaranth.lib import data, wiring
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
    x : View(ArrayLayout(signed(8), cols)), in
        Token row broadcast to every PE row.
    w : View(ArrayLayout(ArrayLayout(signed(8), cols), rows)), in
        The active weight block, row ``k`` feeding PE row ``k``.
    psum : View(ArrayLayout(signed(psum_bits), rows)), out
        ``psum[k] = sum_j x[j] * w[k][j]``.
    """

    def __init__(self, *, rows: int, cols: int) -> None:
        self._rows = check_int("rows", rows, maximum=1024)
        self._cols = check_int("cols", cols, maximum=1024)
        self._psum_bits = psum_bits(self._cols)
        row = data.ArrayLayout(signed(8), self._cols)
        super().__init__({
            "x": In(row),
            "w": In(data.ArrayLayout(row, self._rows)),
            "psum": Out(data.ArrayLayout(signed(self._psum_bits), self._rows)),
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
        for k in range(self._rows):
            pe = PE(lanes=self._cols)
            m.submodules[f"pe{k}"] = pe
            m.d.comb += [
                pe.x.eq(self.x),
                pe.w.eq(self.w[k]),
                self.psum[k].eq(pe.psum),
            ]
        return m
