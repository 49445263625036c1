"""ISA: encodings, strict decoding, assembler/disassembler round trip, li expansion."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_codesign import isa
from lsp_codesign.isa import (OPS, AsmError, IllegalInstruction, Instr, assemble, decode,
                              disassemble, encode, li)

regs = st.integers(0, 31)


@st.composite
def instrs(draw) -> Instr:
    kind = draw(st.sampled_from(["lui", "addi"] + [op.mnemonic for op in OPS]))
    if kind == "lui":
        return Instr("lui", rd=draw(regs), imm=draw(st.integers(0, (1 << 20) - 1)))
    if kind == "addi":
        return Instr("addi", rd=draw(regs), rs1=draw(regs), imm=draw(st.integers(-2048, 2047)))
    op = isa.OPS_BY_NAME[kind]
    return Instr(kind, **{name: draw(regs) for name in op.operands})


@given(st.lists(instrs(), min_size=1, max_size=20))
def test_round_trip_instrs_words_text(prog):
    words = [encode(i) for i in prog]
    assert [decode(w) for w in words] == prog
    text = disassemble(words)
    assert assemble(text) == words
    assert disassemble(assemble(text)) == text


@given(st.integers(0, (1 << 32) - 1))
@settings(max_examples=3000)
def test_every_word_decodes_or_is_illegal_and_legal_words_round_trip(word):
    try:
        ins = decode(word)
    except IllegalInstruction:
        return
    assert encode(ins) == word
    assert assemble(disassemble([word])) == [word]


def test_custom0_layout_is_rtype_with_rocc_funct3():
    w = encode(Instr("lsp.rdctr", rd=5, rs1=6))
    assert w & 0x7F == 0b0001011
    assert (w >> 7) & 0x1F == 5 and (w >> 15) & 0x1F == 6
    assert (w >> 12) & 0x7 == 0b110  # xd, xs1
    assert w >> 25 == 0x20
    assert encode(Instr("lsp.gemm")) == (0x10 << 25) | 0b0001011


@pytest.mark.parametrize("word, why", [
    (0x00000000, "opcode"),                                  # all zeros: not custom-0/lui/addi
    (0x00000033, "opcode"),                                  # RV32I ADD
    ((0x7E << 25) | 0b0001011, "unknown custom-0 funct7"),
    ((0x10 << 25) | (0b010 << 12) | 0b0001011, "needs funct3 0b000"),   # gemm with xs1 set
    ((0x10 << 25) | (3 << 7) | 0b0001011, "nonzero unused rd"),         # gemm with rd
    ((0x20 << 25) | (5 << 20) | (0b110 << 12) | 0b0001011, "nonzero unused rs2"),  # rdctr
    ((0b001 << 12) | 0b0010011, "OP-IMM funct3=1 is not addi"),         # SLLI
])
def test_illegal_words(word, why):
    with pytest.raises(IllegalInstruction, match=why):
        decode(word)


@given(st.integers(-(1 << 31), (1 << 32) - 1))
def test_li_is_two_words_and_builds_the_value(value):
    lui, addi = li(7, value)
    assert lui.mnemonic == "lui" and addi.mnemonic == "addi" and addi.rs1 == addi.rd == 7
    built = ((lui.imm << 12) + addi.imm) & 0xFFFFFFFF
    assert built == value & 0xFFFFFFFF


def test_assembler_syntax_and_errors():
    words = assemble("""
        # comment line
        li a0, 197          ; trailing comment
        lsp.tiles a0, x11
        lsp.halt
    """)
    assert len(words) == 4
    assert disassemble(words).splitlines()[2] == "lsp.tiles a0, a1"
    with pytest.raises(AsmError, match=r"line 2: unknown instruction 'lsp.jump'"):
        assemble("lsp.halt\nlsp.jump a0\n")
    with pytest.raises(AsmError, match=r"line 1: lsp.tiles takes 2 operand\(s\), got 1"):
        assemble("lsp.tiles a0")
    with pytest.raises(AsmError, match="unknown register 'x32'"):
        assemble("lsp.rdctr a0, x32")
    with pytest.raises(AsmError, match="addi immediate must be -2048..2047"):
        assemble("addi a0, a0, 4096")
    with pytest.raises(AsmError, match="expected a number"):
        assemble("li a0, many")


def test_counter_and_error_tables_are_unique():
    assert len(set(isa.COUNTERS)) == len(isa.COUNTERS) == 20
    assert isa.ERRORS[0] == "none" and len(set(isa.ERRORS)) == len(isa.ERRORS)
    assert isa.ERRORS == tuple(e.name.lower() for e in isa.ErrorCode)
    assert len({op.funct7 for op in OPS}) == len(OPS)


def test_every_operation_has_a_decoder_kind():
    """OpKind numbers the decoder's output: LUI, ADDI, then one per custom-0 operation."""
    kinds = {isa.OpKind.of(op.mnemonic) for op in OPS} | {isa.OpKind.LUI, isa.OpKind.ADDI}
    assert kinds == set(isa.OpKind)
    with pytest.raises(KeyError):
        isa.OpKind.of("lsp.jump")


@given(st.dictionaries(st.sampled_from([f.name.lower() for f in isa.DescField]),
                       st.integers(0, (1 << 32) - 1)))
def test_descriptor_encoding_round_trips(fields):
    words = isa.encode_descriptor(**fields)
    assert len(words) == isa.DESC_WORDS == 16
    back = isa.decode_descriptor(words)
    assert back == {f.name.lower(): fields.get(f.name.lower(), 0) for f in isa.DescField}
    with pytest.raises(ValueError, match="does not fit 32 bits"):
        isa.encode_descriptor(tt=1 << 32)
