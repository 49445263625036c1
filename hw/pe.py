"""One processing element: a row of the PE array.

PE row ``k`` of the ``BK x BN`` array holds row ``k`` of the current weight block (BN int8
weights), multiplies it element-wise with the broadcast token row (BN int8 activations) and
reduces the BN exact int16 products with a balanced adder tree (``docs/hw.md`` section 2).
"""

from __future__ import annotations

from amaranth import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._params import check_int, clog2

__all__ = ["PE", "psum_bits"]


def psum_bits(lanes: int, operand_bits: int = 8) -> int:
    """Width of the exact signed sum of ``lanes`` products of two ``operand_bits`` integers.

    One product lies in ``[-(2^(b-1))(2^(b-1)-1), 2^(2b-2)]``, so it needs ``2b`` signed bits;
    a sum of ``2^L`` of them needs ``L`` more.
    """
    return 2 * operand_bits + (clog2(lanes) if lanes > 1 else 0)


class PE(wiring.Component):
    """Dot product of ``lanes`` signed operand pairs, combinational.

    Parameters
    ----------
    lanes : int
        Products per cycle (BN, the block's input features).
    operand_bits : int
        Width of each signed operand (8 for the engine's int8 data).

    Attributes
    ----------
    x : Signal(lanes * operand_bits), in
        Activations (a token row); element ``j`` in bits ``[b*j + b-1 : b*j]``, two's
        complement, as in a memory word (``docs/hw.md`` section 3).
    w : Signal(lanes * operand_bits), in
        Weights (one row of the block), packed the same way.
    psum : Signal(signed(psum_bits)), out
        ``sum(x[j] * w[j])``, exact.
    """

    def __init__(self, *, lanes: int, operand_bits: int = 8) -> None:
        self._lanes = check_int("lanes", lanes, maximum=1024)
        self._operand_bits = check_int("operand_bits", operand_bits, minimum=2, maximum=32)
        self._psum_bits = psum_bits(self._lanes, self._operand_bits)
        vec = self._lanes * self._operand_bits
        super().__init__({
            "x": In(vec),
            "w": In(vec),
            "psum": Out(signed(self._psum_bits)),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def operand_bits(self) -> int:
        return self._operand_bits

    @property
    def psum_bits(self) -> int:
        return self._psum_bits

    def elaborate(self, platform):
        m = Module()
        level = []
        for j in range(self._lanes):
            p = Signal(signed(2 * self._operand_bits), name=f"prod{j}")
            b = self._operand_bits
            m.d.comb += p.eq(self.x.word_select(j, b).as_signed()
                             * self.w.word_select(j, b).as_signed())
            level.append(p)
        depth = 0
        while len(level) > 1:
            depth += 1
            nxt = []
            for j in range(0, len(level) - 1, 2):
                s = Signal(signed(2 * self._operand_bits + depth), name=f"sum{depth}_{j // 2}")
                m.d.comb += s.eq(level[j] + level[j + 1])
                nxt.append(s)
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        m.d.comb += self.psum.eq(level[0])
        return m
