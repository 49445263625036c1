"""Performance counters: one wrap-around counter per event, readable through numbered ports.

The engine's counters are numbered as :data:`lsp_codesign.isa.COUNTERS`; ``docs/hw.md``
section 6 gives their closed forms, which the Python model predicts and the benches check.
"""

from __future__ import annotations

from amaranth import Array, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int

__all__ = ["PerfCounters"]


class PerfCounters(wiring.Component):
    """``len(weights)`` counters of ``width`` bits; counter ``i`` adds ``weights[i]`` per event.

    Parameters
    ----------
    weights : tuple of int
        Increment of each counter per event cycle (1 for most; BK x BN for MACs).
    width : int
        Counter width; counters wrap around.
    read_ports : int
        Number of independent read ports.
    sel_bits : int
        Width of a read port's counter number. A number with no counter reads as zero.

    Attributes
    ----------
    clear : Signal(1), in
        Set every counter to zero at the end of this cycle (events of this cycle are dropped).
    event : Signal(len(weights)), in
        Bit ``i``: counter ``i`` counts this cycle.
    read_sel : list of Signal(sel_bits), in
        Counter number of each read port.
    read_value : list of Signal(width), out
        Current value of the selected counter (combinational).
    """

    def __init__(self, *, weights: tuple[int, ...], width: int = 48, read_ports: int = 1,
                 sel_bits: int = 32) -> None:
        if not isinstance(weights, (tuple, list)) or not weights:
            raise TypeError(f"weights must be a non-empty tuple of integers, not {weights!r}")
        self._width = check_int("width", width, minimum=2, maximum=64)
        self._weights = tuple(check_int(f"weights[{i}]", w, maximum=(1 << self._width) - 1)
                              for i, w in enumerate(weights))
        self._read_ports = check_int("read_ports", read_ports, maximum=8)
        self._sel_bits = check_int("sel_bits", sel_bits, maximum=32)
        if len(self._weights) > (1 << self._sel_bits):
            raise ValueError(f"sel_bits={sel_bits} cannot number {len(self._weights)} counters")
        super().__init__({
            "clear": In(1),
            "event": In(len(self._weights)),
            "read_sel": In(self._sel_bits).array(self._read_ports),
            "read_value": Out(self._width).array(self._read_ports),
        })

    @property
    def weights(self) -> tuple[int, ...]:
        return self._weights

    @property
    def width(self) -> int:
        return self._width

    @property
    def count(self) -> int:
        return len(self._weights)

    def elaborate(self, platform):
        m = Module()
        ctrs = [Signal(self._width, name=f"ctr{i}") for i in range(self.count)]
        with m.If(self.clear):
            m.d.sync += [c.eq(0) for c in ctrs]
        with m.Else():
            for i, (c, w) in enumerate(zip(ctrs, self._weights)):
                with m.If(self.event[i]):
                    m.d.sync += c.eq(c + w)
        table = Array(ctrs + [Const(0, self._width)])
        for sel, value in zip(self.read_sel, self.read_value):
            idx = Signal(range(self.count + 1))
            with m.If(sel < self.count):
                m.d.comb += idx.eq(sel)
            with m.Else():
                m.d.comb += idx.eq(self.count)
            m.d.comb += value.eq(table[idx])
        return m
