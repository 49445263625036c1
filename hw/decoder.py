"""Instruction decoder, generated from the ISA table :data:`lsp_codesign.isa.OPS`.

Decoding is strict, as ``docs/hw.md`` section 4 and :func:`lsp_codesign.isa.decode` define it:
LUI, ADDI (OP-IMM with funct3 0) and the custom-0 operations of the table are legal; a custom-0
word with an unknown funct7, a funct3 other than its operation's ``xd xs1 xs2`` flags, or a
nonzero register field the operation does not use is illegal, as is every other opcode.
"""

from __future__ import annotations

from typing import Sequence

from amaranth import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from lsp_codesign import isa

__all__ = ["Decoder"]


class Decoder(wiring.Component):
    """Combinational decoder of one 32-bit instruction word.

    Parameters
    ----------
    ops : sequence of lsp_codesign.isa.Op
        The custom-0 operations (default: :data:`lsp_codesign.isa.OPS`).

    Attributes
    ----------
    insn : Signal(32), in
        Instruction word.
    illegal : Signal(1), out
        The word is not a legal instruction.
    kind : Signal(range(len(isa.OpKind))), out
        Which instruction it is, numbered as :class:`lsp_codesign.isa.OpKind` (meaningless when
        ``illegal``).
    rd, rs1, rs2 : Signal(5), out
        Register fields.
    imm_i : Signal(signed(32)), out
        Sign-extended I-type immediate (ADDI).
    imm_u : Signal(32), out
        U-type immediate already shifted left by 12 (LUI).
    """

    def __init__(self, *, ops: Sequence[isa.Op] = isa.OPS) -> None:
        if not isinstance(ops, (tuple, list)) or not ops:
            raise TypeError(f"ops must be a non-empty sequence of isa.Op, not {ops!r}")
        seen: dict[int, str] = {}
        for op in ops:
            if not isinstance(op, isa.Op):
                raise TypeError(f"ops must hold isa.Op entries, not {op!r}")
            if not 0 <= op.funct7 < 128:
                raise ValueError(f"{op.mnemonic}: funct7 must be 0..127, not {op.funct7!r}")
            if op.funct7 in seen:
                raise ValueError(f"{op.mnemonic}: funct7 0x{op.funct7:02x} is already used by "
                                 f"{seen[op.funct7]}")
            seen[op.funct7] = op.mnemonic
        self._ops = tuple(ops)
        self._kinds = {"lui": int(isa.OpKind.LUI), "addi": int(isa.OpKind.ADDI)}
        for op in self._ops:
            try:
                self._kinds[op.mnemonic] = int(isa.OpKind.of(op.mnemonic))
            except KeyError:
                raise ValueError(f"{op.mnemonic}: no isa.OpKind names this operation") from None
        super().__init__({
            "insn": In(32),
            "illegal": Out(1),
            "kind": Out(range(len(isa.OpKind))),
            "rd": Out(5),
            "rs1": Out(5),
            "rs2": Out(5),
            "imm_i": Out(signed(32)),
            "imm_u": Out(32),
        })

    @property
    def ops(self) -> tuple[isa.Op, ...]:
        return self._ops

    @property
    def kinds(self) -> dict[str, int]:
        """``kind`` number of each mnemonic (``lui``, ``addi`` and every custom-0 operation)."""
        return dict(self._kinds)

    def kind_of(self, mnemonic: str) -> int:
        """The ``kind`` number of ``mnemonic``; raise naming it if the decoder does not know it."""
        try:
            return self._kinds[mnemonic]
        except KeyError:
            raise ValueError(f"the decoder has no instruction {mnemonic!r}; known: "
                             f"{', '.join(self._kinds)}") from None

    def elaborate(self, platform):
        m = Module()
        insn = self.insn
        opcode = insn[0:7]
        funct3 = insn[12:15]
        funct7 = insn[25:32]
        m.d.comb += [
            self.rd.eq(insn[7:12]),
            self.rs1.eq(insn[15:20]),
            self.rs2.eq(insn[20:25]),
            self.imm_i.eq(insn[20:32].as_signed()),
            self.imm_u.eq(insn[12:32] << 12),
            self.illegal.eq(1),
        ]
        with m.Switch(opcode):
            with m.Case(isa.OPCODE_LUI):
                m.d.comb += [self.kind.eq(self._kinds["lui"]), self.illegal.eq(0)]
            with m.Case(isa.OPCODE_OPIMM):
                m.d.comb += [self.kind.eq(self._kinds["addi"]),
                             self.illegal.eq(funct3 != isa.FUNCT3_ADDI)]
            with m.Case(isa.OPCODE_CUSTOM0):
                with m.Switch(funct7):
                    for op in self._ops:
                        with m.Case(op.funct7):
                            ok = funct3 == op.funct3
                            for used, field in ((op.xd, self.rd), (op.xs1, self.rs1),
                                                (op.xs2, self.rs2)):
                                if not used:
                                    ok = ok & (field == 0)
                            m.d.comb += [self.kind.eq(self._kinds[op.mnemonic]),
                                         self.illegal.eq(~ok)]
        return m
