"""Performance counters: one wrap-around counter per event, readable through numbered ports.

The engine's counters are numbered as :data:`lsp_codesign.isa.COUNTERS`; ``docs/hw.md`` §8 says
what each counts. The Python model predicts every one of them and the benches check it.
"""

from __future__ import annotations

from amaranth import Array, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int

__all__ = ["PerfCounters"]


class PerfCounters(wiring.Component):
    """``count`` counters of ``width`` bits; counter ``i`` adds ``inc[i]`` every cycle.

    Parameters
    ----------
    count : int
        Number of counters.
    width : int
        Counter width; counters wrap around.
    inc_bits : int
        Width of each increment (an event count or a byte count of one cycle).
    read_ports : int
        Number of independent read ports.
    sel_bits : int
        Width of a read port's counter number. A number with no counter reads as zero.

    Attributes
    ----------
    clear : Signal(1), in
        Set every counter to zero at the end of this cycle (increments of this cycle dropped).
    inc : list of Signal(inc_bits), in
        What each counter adds this cycle.
    read_sel : list of Signal(sel_bits), in
        Counter number of each read port.
    read_value : list of Signal(width), out
        Current value of the selected counter (combinational).
    """

    def __init__(self, *, count: int, width: int = 48, inc_bits: int = 16, read_ports: int = 1,
                 sel_bits: int = 32) -> None:
        self._count = check_int("count", count, maximum=1024)
        self._width = check_int("width", width, minimum=2, maximum=64)
        self._inc_bits = check_int("inc_bits", inc_bits, maximum=self._width)
        self._read_ports = check_int("read_ports", read_ports, maximum=8)
        self._sel_bits = check_int("sel_bits", sel_bits, maximum=32)
        if self._count > (1 << self._sel_bits):
            raise ValueError(f"sel_bits={sel_bits} cannot number {count} counters")
        super().__init__({
            "clear": In(1),
            "inc": In(self._inc_bits).array(self._count),
            "read_sel": In(self._sel_bits).array(self._read_ports),
            "read_value": Out(self._width).array(self._read_ports),
        })

    @property
    def width(self) -> int:
        return self._width

    @property
    def count(self) -> int:
        return self._count

    def elaborate(self, platform):
        m = Module()
        ctrs = [Signal(self._width, name=f"ctr{i}") for i in range(self.count)]
        with m.If(self.clear):
            m.d.sync += [c.eq(0) for c in ctrs]
        with m.Else():
            m.d.sync += [c.eq(c + inc) for c, inc in zip(ctrs, self.inc)]
        table = Array(ctrs + [Const(0, self._width)])
        for sel, value in zip(self.read_sel, self.read_value):
            idx = Signal(range(self.count + 1))
            with m.If(sel < self.count):
                m.d.comb += idx.eq(sel)
            with m.Else():
                m.d.comb += idx.eq(self.count)
            m.d.comb += value.eq(table[idx])
        return m
