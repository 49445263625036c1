# amaranth: UnusedElaboratable=no
"""The RTL decoder agrees with lsp_codesign.isa.decode on every operation and on random words."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hw.decoder import Decoder
from lsp_codesign import isa


def decode_rtl(words: list[int]) -> list[dict]:
    dut = Decoder()
    out = []

    async def bench(ctx):
        for w in words:
            ctx.set(dut.insn, w)
            await ctx.delay(1e-9)
            out.append({"illegal": ctx.get(dut.illegal), "kind": ctx.get(dut.kind),
                        "rd": ctx.get(dut.rd), "rs1": ctx.get(dut.rs1), "rs2": ctx.get(dut.rs2),
                        "imm_i": ctx.get(dut.imm_i), "imm_u": ctx.get(dut.imm_u)})

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return out


def reference(word: int) -> dict | None:
    try:
        return isa.decode(word).__dict__
    except isa.IllegalInstruction:
        return None


def check(words: list[int]) -> None:
    kinds = Decoder().kinds
    for word, got in zip(words, decode_rtl(words)):
        ref = reference(word)
        assert got["illegal"] == (ref is None), hex(word)
        if ref is None:
            continue
        assert got["kind"] == kinds[ref["mnemonic"]], hex(word)
        if ref["mnemonic"] == "lui":
            assert (got["rd"], got["imm_u"]) == (ref["rd"], ref["imm"] << 12), hex(word)
        elif ref["mnemonic"] == "addi":
            assert (got["rd"], got["rs1"], got["imm_i"]) == (ref["rd"], ref["rs1"], ref["imm"])
        else:
            assert (got["rd"], got["rs1"], got["rs2"]) == (ref["rd"], ref["rs1"], ref["rs2"])


def test_every_operation_decodes():
    words = []
    for op in isa.OPS:
        regs = {name: 5 + i for i, name in enumerate(op.operands)}
        words.append(isa.encode(isa.Instr(op.mnemonic, **regs)))
    words += isa.assemble("lui t0, 0xfffff\naddi a0, a1, -2048\naddi x0, x0, 2047\n"
                          "li a3, 0x12345678\n")
    check(words)
    assert not any(r["illegal"] for r in decode_rtl(words))


def test_near_misses_are_illegal():
    words = []
    for op in isa.OPS:
        base = isa.encode(isa.Instr(op.mnemonic))
        for f3 in range(8):                       # every other funct3
            if f3 != op.funct3:
                words.append((base & ~(7 << 12)) | (f3 << 12))
        for used, shift in ((op.xd, 7), (op.xs1, 15), (op.xs2, 20)):
            if not used:                          # a nonzero register field it does not use
                words.append(base | (1 << shift))
    used = {op.funct7 for op in isa.OPS}
    words += [(f7 << 25) | isa.OPCODE_CUSTOM0 for f7 in range(128) if f7 not in used]
    words += [(f3 << 12) | isa.OPCODE_OPIMM for f3 in range(1, 8)]   # slti, sltiu, ...
    words += [0, 0xFFFFFFFF, 0x00B50533, 0x0000006F]                   # add, jal
    assert all(reference(w) is None for w in words)
    assert all(r["illegal"] for r in decode_rtl(words))


def test_random_words_agree_with_the_isa_module():
    rng = random.Random(1234)
    words = [rng.getrandbits(32) for _ in range(1500)]
    # bias half of them to the three legal opcodes, where the interesting cases are
    for i in range(0, len(words), 2):
        opcode = rng.choice((isa.OPCODE_CUSTOM0, isa.OPCODE_LUI, isa.OPCODE_OPIMM))
        words[i] = (words[i] & ~0x7F) | opcode
    check(words)


def test_decoder_kinds_and_parameters():
    dec = Decoder()
    assert dec.kind_of("lui") == isa.OpKind.LUI and dec.kind_of("addi") == isa.OpKind.ADDI
    assert [dec.kind_of(op.mnemonic) for op in isa.OPS] == \
        [isa.OpKind.of(op.mnemonic) for op in isa.OPS]
    with pytest.raises(ValueError, match="lsp.new: no isa.OpKind names this operation"):
        Decoder(ops=isa.OPS + (isa.Op("lsp.new", 0x30, False, False, False, ""),))
    with pytest.raises(ValueError, match="the decoder has no instruction 'lsp.nop'"):
        dec.kind_of("lsp.nop")
    with pytest.raises(TypeError, match=r"^ops must be a non-empty sequence of isa.Op"):
        Decoder(ops=())
    dup = (isa.OPS[0], isa.Op("lsp.other", isa.OPS[0].funct7, False, False, False, ""))
    with pytest.raises(ValueError, match=r"^lsp.other: funct7 0x01 is already used by "
                                         r"lsp.tiles$"):
        Decoder(ops=dup)
