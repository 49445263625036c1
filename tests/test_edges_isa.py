"""Edge cases of the ISA, the ISS front-end and the ISS's ``lsp.gemm`` (docs/hw.md §3-§6, §8).

Expected words come from the RV32I encodings and the custom-0 table of docs/hw.md §4; expected
counters of the hand-built tiles are worked by hand from the formula of §6 and the counter table
of §8 (the arithmetic is written next to each number). The programs and DRAM images here are
built without the compiler, descriptor by descriptor, so each check of §5 can be hit alone,
at its boundary (an exact fit runs, one more is refused).
"""

from __future__ import annotations

import numpy as np
import pytest

from lsp_codesign import isa
from lsp_codesign.isa import (SWAP_W, SWAP_X, SWAP_Y, AsmError, IllegalInstruction, Instr,
                              assemble, decode, encode, format_instr, li)
from lsp_codesign.iss import IssResult, Memories, run_iss
from tests.conftest import tiny_config

CUSTOM0 = 0b0001011

# ---- isa: encode --------------------------------------------------------------------------


@pytest.mark.parametrize("ins, word", [
    # RV32I reference encodings (lui/addi as any RISC-V assembler emits them)
    (Instr("lui", rd=10, imm=0x12345), 0x12345537),          # lui a0, 0x12345
    (Instr("lui", rd=1, imm=0xFFFFF), 0xFFFFF0B7),           # lui ra, 0xfffff
    (Instr("addi", rd=1, rs1=2, imm=-1), 0xFFF10093),        # addi ra, sp, -1
    (Instr("addi", rd=10, rs1=10, imm=1), 0x00150513),       # addi a0, a0, 1
    (Instr("addi", rd=31, rs1=31, imm=-2048), 0x800F8F93),   # addi t6, t6, -2048
    (Instr("addi", rd=0, rs1=0, imm=2047), 0x7FF00013),      # addi zero, zero, 2047
    # custom-0 rows of docs/hw.md §4: funct7 << 25 | rs2 << 20 | rs1 << 15 | funct3 << 12 | rd
    (Instr("lsp.tiles", rs1=10, rs2=11), (0x01 << 25) | (11 << 20) | (10 << 15) | (0b011 << 12)
     | CUSTOM0),
    (Instr("lsp.gemm"), (0x10 << 25) | CUSTOM0),
    (Instr("lsp.fence"), (0x11 << 25) | CUSTOM0),
    (Instr("lsp.rdctr", rd=31, rs1=31), (0x20 << 25) | (31 << 15) | (0b110 << 12) | (31 << 7)
     | CUSTOM0),
    (Instr("lsp.halt"), 0xFE00000B),
])
def test_encode_and_decode_match_the_reference_words(ins, word):
    assert encode(ins) == word
    assert decode(word) == ins


def test_register_numbers_0_and_31_encode_and_32_or_minus_1_are_refused_by_name():
    for field in ("rd", "rs1", "rs2"):
        for bad in (32, -1):
            with pytest.raises(AsmError) as exc:
                encode(Instr("lsp.tiles", **{field: bad}))
            assert str(exc.value) == f"{field} must be a register number 0..31, got {bad}"
    assert encode(Instr("addi", rd=0, rs1=31)) == (31 << 15) | 0b0010011


def test_lui_immediate_range_is_exactly_20_bits():
    assert encode(Instr("lui", imm=0)) == 0b0110111
    assert encode(Instr("lui", imm=(1 << 20) - 1)) == 0xFFFFF037
    for bad in (1 << 20, -1):
        with pytest.raises(AsmError) as exc:
            encode(Instr("lui", imm=bad))
        assert str(exc.value) == f"lui immediate must be 0..0xfffff, got {bad}"


def test_addi_immediate_range_is_exactly_12_signed_bits():
    for ok in (-2048, 2047):
        assert decode(encode(Instr("addi", rd=5, rs1=6, imm=ok))).imm == ok
    for bad in (-2049, 2048):
        with pytest.raises(AsmError) as exc:
            encode(Instr("addi", rd=5, imm=bad))
        assert str(exc.value) == f"addi immediate must be -2048..2047, got {bad}"


def test_encode_refuses_an_unknown_operation_and_each_unused_register_by_name():
    with pytest.raises(AsmError) as exc:
        encode(Instr("lsp.jump"))
    assert str(exc.value) == "unknown instruction 'lsp.jump'"
    for ins, name in ((Instr("lsp.gemm", rd=1), "rd"), (Instr("lsp.gemm", rs1=1), "rs1"),
                      (Instr("lsp.halt", rs2=31), "rs2"), (Instr("lsp.rdctr", rs2=3), "rs2"),
                      (Instr("lsp.tiles", rd=7), "rd")):
        with pytest.raises(AsmError) as exc:
            encode(ins)
        assert str(exc.value) == f"{ins.mnemonic} does not use {name}"


# ---- isa: decode --------------------------------------------------------------------------


@pytest.mark.parametrize("word, message", [
    (-1, "not a 32-bit word: -1"),
    (1 << 32, "not a 32-bit word: 4294967296"),
    (0, "0x00000000: opcode 0b0000000 is not custom-0, lui or addi"),
    ((1 << 32) - 1, "0xffffffff: opcode 0b1111111 is not custom-0, lui or addi"),
    ((0b111 << 12) | 0b0010011, "0x00007013: OP-IMM funct3=7 is not addi"),     # ANDI
    ((0x7E << 25) | CUSTOM0, "0xfc00000b: unknown custom-0 funct7 0x7e"),
    ((0x01 << 25) | CUSTOM0, "0x0200000b: lsp.tiles needs funct3 0b011, got 0b000"),
    ((0x20 << 25) | (0b100 << 12) | CUSTOM0,
     "0x4000400b: lsp.rdctr needs funct3 0b110, got 0b100"),
    ((0x10 << 25) | (1 << 7) | CUSTOM0, "0x2000008b: lsp.gemm has a nonzero unused rd"),
    ((0x11 << 25) | (1 << 15) | CUSTOM0, "0x2200800b: lsp.fence has a nonzero unused rs1"),
    ((0x7F << 25) | (1 << 20) | CUSTOM0, "0xfe10000b: lsp.halt has a nonzero unused rs2"),
])
def test_decode_refuses_with_a_message_naming_the_word_and_the_field(word, message):
    with pytest.raises(IllegalInstruction) as exc:
        decode(word)
    assert str(exc.value) == message


def test_decode_reads_each_field_from_its_bits():
    # every register field different, so a field read from a neighbour's bits shows
    assert decode((0x01 << 25) | (17 << 20) | (9 << 15) | (0b011 << 12) | CUSTOM0) == \
        Instr("lsp.tiles", rs1=9, rs2=17)
    assert decode((0x20 << 25) | (30 << 15) | (0b110 << 12) | (3 << 7) | CUSTOM0) == \
        Instr("lsp.rdctr", rd=3, rs1=30)
    assert decode(0xFFFFFFB7) == Instr("lui", rd=31, imm=0xFFFFF)
    assert decode(0x00108093) == Instr("addi", rd=1, rs1=1, imm=1)          # addi ra, ra, 1
    assert decode(0x80000013).imm == -2048 and decode(0x7FF00013).imm == 2047
    assert decode(0x00100013).imm == 1 and decode(0xFFF00013).imm == -1


# ---- isa: text, li, descriptors, kinds ----------------------------------------------------


def test_format_instr_and_program_text_are_the_assembler_syntax():
    assert format_instr(Instr("lui", rd=10, imm=0x12345)) == "lui a0, 0x12345"
    assert format_instr(Instr("addi", rd=1, rs1=2, imm=-1)) == "addi ra, sp, -1"
    assert format_instr(Instr("lsp.tiles", rs1=10, rs2=11)) == "lsp.tiles a0, a1"
    assert format_instr(Instr("lsp.rdctr", rd=12, rs1=0)) == "lsp.rdctr a2, zero"
    assert format_instr(Instr("lsp.gemm")) == "lsp.gemm"
    assert isa.program_text([Instr("lsp.fence"), Instr("addi", rd=5, imm=3)]) == \
        "lsp.fence\naddi t0, zero, 3\n"


@pytest.mark.parametrize("value, hi, lo", [
    (0, 0, 0),
    (0x7FF, 0, 2047),               # largest value addi alone reaches
    (0x800, 1, -2048),              # bit 11 set: lui rounds up, addi subtracts
    (0x12345678, 0x12345, 0x678),
    (0xFFFFFFFF, 0, -1),            # -1: lui 0 (0x100000 wraps), addi -1
    (-1, 0, -1),
    (-(1 << 31), 0x80000, 0),
    (0x7FFFF800, 0x80000, -2048),    # rounds up to 0x80000000
])
def test_li_splits_values_as_rv32i_lui_addi(value, hi, lo):
    assert li(3, value) == [Instr("lui", rd=3, imm=hi), Instr("addi", rd=3, rs1=3, imm=lo)]


def test_li_range_is_signed_or_unsigned_32_bits():
    assert li(1, (1 << 32) - 1)[0].imm == 0 and li(1, -(1 << 31))[0].imm == 0x80000
    for bad in (1 << 32, -(1 << 31) - 1):
        with pytest.raises(AsmError) as exc:
            li(1, bad)
        assert str(exc.value) == f"li value does not fit 32 bits: {bad}"


def test_descriptor_fields_accept_0_to_2_32_minus_1_and_name_a_bad_one():
    assert isa.encode_descriptor() == [0] * 16
    words = isa.encode_descriptor(flags=0, wlen=(1 << 32) - 1, x=0)
    assert words == [0] * 10 + [(1 << 32) - 1] + [0] * 5
    for bad in (-1, 1 << 32):
        with pytest.raises(ValueError) as exc:
            isa.encode_descriptor(nnz=bad)
        assert str(exc.value) == f"descriptor field nnz = {bad} does not fit 32 bits"
    # decoding keeps the low 32 bits of each word and names the fields in lower case
    back = isa.decode_descriptor([(1 << 32) | 5, 1, 2, 3] + [0] * 12)
    assert back["flags"] == 5 and back["tt"] == 1 and back["ng"] == 3 and back["wlen"] == 0


def test_opkind_of_strips_only_the_lsp_prefix():
    assert isa.OpKind.of("lui") is isa.OpKind.LUI
    assert isa.OpKind.of("addi") is isa.OpKind.ADDI
    assert isa.OpKind.of("lsp.rdctr") is isa.OpKind.RDCTR
    assert isa.OpKind.of("lsp.halt") is isa.OpKind.HALT


def test_a_comment_ends_the_line_wherever_it_starts():
    assert assemble("lsp.gemm ; a # b ; c\n# lsp.halt\n  ; x\nlsp.halt # end") == \
        [encode(Instr("lsp.gemm")), encode(Instr("lsp.halt"))]


# ---- iss: the front-end -------------------------------------------------------------------


def _run_text(cfg, text):
    return run_iss(cfg, Memories(imem=dict(enumerate(assemble(text)))))


def test_lui_addi_build_32_bit_register_values_and_x0_stays_zero():
    r = _run_text(tiny_config(), """
        addi zero, zero, 5
        addi a0, zero, -1         # sign-extended, then 32 bits
        lui a1, 0xfffff
        addi a2, a1, 0x7ff
        li a3, 0xffffffff
        addi a3, a3, 1            # wraps to 0
        addi a4, zero, 3
        addi a4, a4, -5           # 3 - 5 = -2
        lsp.halt
    """)
    assert not r.error and r.err_code == 0
    assert len(r.regs) == 32 and r.regs[0] == 0
    assert r.regs[10:15] == [0xFFFFFFFF, 0xFFFFF000, 0xFFFFF7FF, 0, 0xFFFFFFFE]
    # 10 instructions, halt included, 2 cycles each
    assert (r.counters["insns"], r.counters["imem_reads"], r.counters["cycles"]) == (10, 10, 20)


def test_rdctr_reads_the_value_before_its_execute_cycle_and_0_past_the_last_counter():
    n = len(isa.COUNTERS)
    r = _run_text(tiny_config(), f"""
        lsp.rdctr a6, zero        # cycles: its own fetch cycle only
        li a1, {isa.COUNTER_IDS["imem_reads"]}
        lsp.rdctr a2, a1          # 4 fetches so far, its own included
        li a1, {n - 1}
        lsp.rdctr a3, a1          # tiles: none yet
        li a1, {n}
        lsp.rdctr a4, a1          # one past the last counter number
        li a1, 0xffffffff
        lsp.rdctr a5, a1
        lsp.rdctr zero, zero      # rd = x0: nothing written
        lsp.rdctr a7, zero        # pc 14: 14 instructions of 2 cycles, then its fetch
        lsp.halt
    """)
    assert r.regs[12:16] == [4, 0, 0, 0] and r.regs[16:18] == [1, 2 * 14 + 1]
    assert r.regs[0] == 0
    assert r.counters["insns"] == 16 and r.counters["cycles"] == 32


def test_front_end_stops_count_exactly_the_work_done():
    cfg = tiny_config()
    depth = cfg.memories["imem"].depth
    # an empty IMEM reads zeros: illegal at pc 0, in its execute cycle, not retired
    r = run_iss(cfg, Memories())
    assert (r.error, r.err_code) == (True, isa.ErrorCode.ILLEGAL_INSTRUCTION)
    assert (r.counters["cycles"], r.counters["insns"], r.counters["imem_reads"]) == (2, 0, 1)
    # IMEM full of lsp.fence: `depth` instructions, then the fetch at pc = depth fails
    fence = encode(Instr("lsp.fence"))
    r = run_iss(cfg, Memories(imem=dict.fromkeys(range(depth), fence)))
    assert (r.error, r.err_code) == (True, isa.ErrorCode.PC_OVERFLOW)
    assert (r.counters["cycles"], r.counters["insns"], r.counters["imem_reads"]) == \
        (2 * depth + 1, depth, depth)
    # lsp.halt one word before the end: no overflow, halt retired
    r = run_iss(cfg, Memories(imem={**dict.fromkeys(range(depth - 1), fence),
                                    depth - 1: encode(Instr("lsp.halt"))}))
    assert (r.error, r.err_code) == (False, 0)
    assert (r.counters["cycles"], r.counters["insns"]) == (2 * depth, depth)


def test_y_words_reads_consecutive_beats_and_zero_where_nothing_was_written():
    res = IssResult({}, [0] * 32, False, 0, Memories(dram={5: 7, 6: 8, 9: 1}))
    assert res.y_words(5, 3) == [7, 8, 0]
    assert res.y_words(9, 1) == [1] and res.y_words(0, 0) == []


# ---- iss: lsp.gemm on hand-built descriptor tables ----------------------------------------
#
# The config: block 4x4, BM = 4, so r = 1, wpb = 4, F = max(4, 3) = 4; a beat is B = 16 bytes
# (b = 128 bits), latency L = 8, a descriptor is 512/b = 4 beats. Words: X and W 32 bits, index
# 16 bits, Y 128 bits (one beat). Banks: X 32, W 32, index 16 and Y 32 words (ymem_kib 1.01
# makes the Y bank a multiple of BM), DRAM 4096 beats. The table is at beat 0, data from beat
# 64 on. The program is `li a0, table; li a1, T; lsp.tiles a0, a1; lsp.gemm; lsp.halt`: 7
# instructions, 12 cycles before lsp.gemm holds the front-end, 14 in all when it halts.

B, L, KD, BM, BK, BN = 16, 8, 4, 4, 4, 4
ALL = SWAP_X | SWAP_W | SWAP_Y
DATA = 64
FETCH = KD + 2                    # a descriptor fetch and decode (§6)


def edge_cfg():
    return tiny_config(idx_kib=0.0625, ymem_kib=1.01)


def test_edge_config_is_the_one_the_numbers_below_assume():
    cfg = edge_cfg()
    depths = {n: cfg.memories[n].depth for n in ("xmem", "wmem", "idx", "ymem")}
    assert depths == {"xmem": 32, "wmem": 32, "idx": 16, "ymem": 32}
    assert (cfg.dram.depth, cfg.dram.desc_beats, cfg.dram.bytes_per_cycle,
            cfg.dram.latency_cycles) == (4096, KD, B, L)
    assert (cfg.block_k, cfg.block_n, cfg.tile_m, cfg.fill_cycles) == (BK, BN, BM, 4)


def put(dram: dict, at: int, data: bytes) -> int:
    """Write ``data`` at beat ``at`` (zero padded to whole beats); returns the next free beat."""
    data += bytes(-len(data) % B)
    for i in range(len(data) // B):
        dram[at + i] = int.from_bytes(data[i * B:(i + 1) * B], "little")
    return at + len(data) // B


def put_desc(dram: dict, k: int, **fields) -> None:
    put(dram, k * KD, b"".join(v.to_bytes(4, "little")
                               for v in isa.encode_descriptor(**fields)))


def put_tile(dram, k, at, *, tt=1, kg=1, ng=1, rp=(0, 1), rid=(0,), col=(0,), flags=ALL,
             seed=0, where=None, desc=None):
    """Descriptor k and its X, index, W (all its blocks) and Y region from beat ``at``.

    ``where`` places a region (x, idx, w, y) at another beat; ``desc`` overrides descriptor
    fields only. Returns (next free beat, Y beat, the tile's expected Y as a (TT*BM, KG*BK)
    array, None for an index out of the tile): every kept block q of row j adds
    X[:, col[q]] . W_q^T into output block row rid[j].
    """
    rng = np.random.default_rng(seed)
    where = where or {}
    r, nnz = len(rid), len(col)
    x = rng.integers(-128, 128, (tt * BM, ng * BN)).astype(np.int8)
    wb = rng.integers(-128, 128, (nnz, BK, BN)).astype(np.int8)
    f = dict(flags=flags, tt=tt, kg=kg, ng=ng, r=r, nnz=nnz, wlen=nnz * BK)
    for name, data in (("x", x.tobytes()), ("idx", np.array([*rp, *rid, *col], "<u2").tobytes()),
                       ("w", wb.tobytes()), ("y", bytes(tt * BM * kg * B))):
        f[name] = where.get(name, at)
        end = put(dram, f[name], data) if name != "y" else f[name] + len(data) // B
        at = at if name in where else end
    f.update(desc or {})
    put_desc(dram, k, **f)
    y = np.zeros((tt * BM, kg * BK), np.int64)
    if max(rid) >= kg or max(col) >= ng:
        return at, f["y"], None                       # a broken index: no result to expect
    for j in range(r):
        for q in range(rp[j], rp[j + 1]):
            y[:, rid[j] * BK:(rid[j] + 1) * BK] += \
                x[:, col[q] * BN:(col[q] + 1) * BN].astype(np.int64) @ wb[q].T.astype(np.int64)
    return at, f["y"], y


def run_table(dram, n_tiles, table=0, cfg=None):
    words = [encode(i) for i in li(10, table) + li(11, n_tiles)] + \
        [encode(Instr(m, **a)) for m, a in (("lsp.tiles", {"rs1": 10, "rs2": 11}),
                                             ("lsp.gemm", {}), ("lsp.halt", {}))]
    return run_iss(cfg or edge_cfg(), Memories(imem=dict(enumerate(words)), dram=dram))


def y_of(res, at, rows, kg=1):
    raw = b"".join(res.mem.dram.get(at + i, 0).to_bytes(B, "little") for i in range(rows * kg))
    return np.frombuffer(raw, "<i4").reshape(rows, kg * BK).astype(np.int64)


def test_one_tile_worked_by_hand():
    """One kept block: every counter from the formula of §6 and the table of §8."""
    dram: dict = {}
    _, y_at, y = put_tile(dram, 0, DATA)
    res = run_table(dram, 1)
    assert not res.error and res.err_code == 0
    np.testing.assert_array_equal(y_of(res, y_at, BM), y)
    # phase 0: L + fetch 6 + X (4 words: 4+1) + index (4 entries: 4+1) + W (4 words: 4+1) = 29
    # phase 1: compute F + TT*NNZ*BM + BM + 1 = 4 + 4 + 4 + 1 = 13, no DMA
    # phase 2: store of 4 Y words: L + 4 + 1 = 13
    d = [29, 0, 13]
    c = [0, 13, 0]
    busy = 1 + sum(max(a, b, 1) for a, b in zip(c, d))
    assert busy == 56
    assert res.counters == {
        "cycles": 14 + busy, "busy": busy, "compute": 4, "fill": 4,
        "dma_stall": sum(max(0, a - b) for a, b in zip(d, c)), "macs": 4 * BK * BN,
        "insns": 7, "imem_reads": 7, "xmem_reads": 4, "xmem_writes": 4, "wmem_reads": 4,
        "wmem_writes": 4, "idx_reads": 1 + 2, "idx_writes": 4,
        "ymem_reads": 4 + 4, "ymem_writes": 4 + 4,       # a drain of 4 rows, a store of 4 words
        "dram_read_bytes": (KD + 3) * B, "dram_write_bytes": 4 * B, "dma_cycles": sum(d),
        "tiles": 1}


def test_a_tile_that_swaps_nothing_reuses_every_bank_and_adds_into_the_y_region():
    dram: dict = {}
    _, y_at, y = put_tile(dram, 0, DATA)
    put_desc(dram, 1, flags=0, tt=1, kg=1, ng=1, r=1, nnz=1)   # same geometry, no data
    res = run_table(dram, 2)
    assert not res.error
    np.testing.assert_array_equal(y_of(res, y_at, BM), 2 * y)   # valid bits: added, stored once
    # phases: 29 (tile 0's loads) | max(13, L + 6 = 14) | 13, no DMA | store 13
    assert res.counters["busy"] == 1 + 29 + 14 + 13 + 13
    assert res.counters["dma_stall"] == 29 + 1 + 0 + 13
    assert res.counters["dma_cycles"] == 29 + 14 + 0 + 13
    assert (res.counters["tiles"], res.counters["compute"], res.counters["idx_reads"]) == \
        (2, 8, 6)
    assert (res.counters["macs"], res.counters["fill"], res.counters["xmem_reads"],
            res.counters["wmem_reads"]) == (2 * 4 * BK * BN, 2 * 4, 2 * 4, 2 * 4)
    assert (res.counters["ymem_reads"], res.counters["xmem_writes"],
            res.counters["dram_read_bytes"]) == (4 + 4 + 4, 4, (2 * KD + 3) * B)


@pytest.mark.parametrize("geometry", [
    dict(tt=1, kg=1, ng=2, rp=(0, 2), rid=(0,), col=(0, 1)),           # NNZ = R*NG
    dict(tt=2, kg=2, ng=1, rp=(0, 1, 2), rid=(0, 1), col=(0, 0)),      # R = KG, NNZ = R
    dict(tt=1, kg=3, ng=2, rp=(0, 2, 3), rid=(0, 2), col=(0, 1, 1)),   # an empty block row
    dict(tt=1, kg=2, ng=8, rp=(0, 1), rid=(1,), col=(7,)),             # X bank exactly full
    dict(tt=2, kg=4, ng=2, rp=(0, 1, 3, 5, 7), rid=(0, 1, 2, 3),       # index bank exactly
         col=(1, 0, 1, 0, 1, 0, 1)),                                   # full, Y bank too
    dict(tt=1, kg=3, ng=3, rp=(0, 3, 6, 8), rid=(0, 1, 2),             # W bank exactly full
         col=(0, 1, 2) * 2 + (0, 1), seed=3),
])
def test_tiles_at_every_geometry_boundary_run_and_compute_the_blocks(geometry):
    dram: dict = {}
    _, y_at, y = put_tile(dram, 0, DATA, **geometry)
    res = run_table(dram, 1)
    assert (res.error, res.err_code) == (False, 0)
    np.testing.assert_array_equal(y_of(res, y_at, geometry["tt"] * BM, geometry["kg"]), y)
    tt, nnz, r = geometry["tt"], len(geometry["col"]), len(geometry["rid"])
    assert res.counters["compute"] == tt * nnz * BM
    assert res.counters["idx_reads"] == tt * (nnz + 2 * r)
    assert res.counters["idx_writes"] == 2 * r + 1 + nnz
    # drains: TT*R*BM reads and writes; the store: one read and one clear per Y word
    assert res.counters["ymem_reads"] == res.counters["ymem_writes"] == \
        tt * r * BM + tt * BM * geometry["kg"]


def _decode_error(res, code):
    """A tile-0 descriptor refused at decode: phase 0 is L + the fetch, then the run stops."""
    assert (res.error, res.err_code) == (True, code)
    c = res.counters
    assert c["busy"] == 1 + L + FETCH and c["cycles"] == 12 + c["busy"]
    assert (c["insns"], c["tiles"], c["dma_cycles"], c["dma_stall"]) == (5, 0, L + FETCH,
                                                                           L + FETCH)
    assert c["dram_read_bytes"] == KD * B
    assert c["xmem_writes"] == c["idx_writes"] == c["wmem_writes"] == 0


BAD = isa.ErrorCode.BAD_TILE


@pytest.mark.parametrize("fields", [
    dict(tt=0), dict(kg=0), dict(ng=0),
    dict(kg=1, r=2, ng=2, nnz=2),            # R > KG (only)
    dict(kg=2, r=2, ng=1, nnz=1),            # NNZ < R (only)
    dict(kg=1, r=1, ng=2, nnz=3),            # NNZ > R*NG (only)
    dict(flags=SWAP_W | SWAP_Y),             # tile 0 must swap X ...
    dict(flags=SWAP_X | SWAP_Y),             # ... W ...
    dict(flags=SWAP_X | SWAP_W),             # ... and Y
])
def test_each_impossible_geometry_alone_is_a_bad_tile(fields):
    dram: dict = {}
    put_tile(dram, 0, DATA, desc=fields)
    _decode_error(run_table(dram, 1), BAD)


@pytest.mark.parametrize("tile1", [
    dict(flags=SWAP_W | SWAP_Y, ng=2, col=(1,)),                      # X kept, NG differs
    dict(flags=SWAP_X | SWAP_Y, kg=2, rp=(0, 1, 2), rid=(0, 1), col=(0, 0)),  # W: R, NNZ
    dict(flags=SWAP_X | SWAP_W, tt=1),                                # Y kept, TT differs
])
def test_a_bank_reused_with_other_geometry_is_a_bad_tile_found_while_tile_0_runs(tile1):
    dram: dict = {}
    at, _, _ = put_tile(dram, 0, DATA, tt=2, kg=2, rp=(0, 1), rid=(1,))
    put_tile(dram, 1, at, **{"tt": 2, "kg": 2, "rp": (0, 1), "rid": (1,), **tile1})
    res = run_table(dram, 2)
    assert (res.error, res.err_code) == (True, BAD)
    # phase 0 loads tile 0 (X 8 words, index 4, W 4): L + 6 + 9 + 5 + 5 = 33; phase 1
    # computes tile 0 (F + 2*1*4 + 4 + 1 = 17) while the DMA fails after L + 6 = 14: the phase
    # ends with the compute
    assert res.counters["busy"] == 1 + 33 + 17
    assert res.counters["tiles"] == 1 and res.counters["insns"] == 5
    assert res.counters["dma_stall"] == 33


def test_the_descriptor_table_must_lie_in_dram_checked_when_the_fetch_starts():
    # the last descriptor that fits (beats 4092..4095) is fetched: all zeros, a bad tile
    _decode_error(run_table({}, 1, table=4096 - KD), BAD)
    # one beat further: refused before anything is read
    res = run_table({}, 1, table=4096 - KD + 1)
    assert (res.error, res.err_code) == (True, isa.ErrorCode.DMA_RANGE)
    assert res.counters["busy"] == 1 + L + 1 and res.counters["cycles"] == 12 + 1 + L + 1
    assert res.counters["dram_read_bytes"] == 0 and res.counters["dma_cycles"] == L + 1


RANGE = isa.ErrorCode.DMA_RANGE


TWO_ROWS = dict(tt=2, kg=2, rp=(0, 1), rid=(1,))        # Y region: 8 rows x 2 = 16 beats
WIDE_X = dict(ng=8, col=(7,))                          # X tile: 4 rows x 8 words = 8 beats
FULL_INDEX_17 = dict(kg=4, ng=2, rp=(0, 2, 4, 6, 8), rid=(0, 1, 2, 3), col=(0, 1) * 4)
NNZ_9 = dict(kg=3, ng=3, rp=(0, 3, 6, 9), rid=(0, 1, 2), col=(0, 1, 2) * 3)


@pytest.mark.parametrize("fits, geometry, where, desc", [
    # X bank (32 words): TT*BM*NG = 36 (NG = 8 fills it: the geometry test above)
    (False, {}, {}, dict(ng=9)),
    # X tile in DRAM: 4 words of 32 bits = 1 beat
    (True, {}, dict(x=4095), {}), (False, {}, {}, dict(x=4096)),
    (True, WIDE_X, dict(x=4096 - 8), {}), (False, WIDE_X, {}, dict(x=4096 - 7)),
    # index bank (16 entries): 2R + 1 + NNZ = 17 (the W bank and the chunk, 32 words, fit)
    (False, FULL_INDEX_17, {}, {}),
    # index segment in DRAM: 4 entries of 16 bits = 1 beat
    (True, {}, dict(idx=4095), {}), (False, {}, {}, dict(idx=4096)),
    # W bank: NNZ * wpb = 36 > 32 (the index, 6 + 1 + 9 = 16 entries, and a 32-word chunk fit)
    (False, NNZ_9, {}, dict(wlen=32)),
    # Y bank (32 words): TT*BM*KG = 36, with the X tile (12 or 4 words) fitting
    (False, {}, {}, dict(tt=3, kg=3)), (False, {}, {}, dict(kg=9)),
    # Y region in DRAM: TT*BM*KG words of 128 bits, one beat each
    (True, {}, dict(y=4092), {}), (False, {}, {}, dict(y=4093)),
    (True, TWO_ROWS, dict(y=4096 - 16), {}), (False, TWO_ROWS, {}, dict(y=4096 - 15)),
    # W chunk: fill offset 0 + WLEN <= 32 words; in DRAM: 4 words of 32 bits = 1 beat
    (True, {}, {}, dict(wlen=32)), (False, {}, {}, dict(wlen=33)),
    (True, {}, dict(w=4095), {}), (False, {}, {}, dict(w=4096)),
])
def test_each_transfer_check_at_its_boundary(fits, geometry, where, desc):
    dram: dict = {}
    _, y_at, y = put_tile(dram, 0, DATA, where=where, desc=desc, **geometry)
    res = run_table(dram, 1)
    if fits:
        assert (res.error, res.err_code) == (False, 0)
        np.testing.assert_array_equal(y_of(res, y_at, y.shape[0], y.shape[1] // BK), y)
    else:
        _decode_error(res, RANGE)


@pytest.mark.parametrize("geometry", [
    dict(kg=1, ng=2, rp=(1, 2), rid=(0,), col=(0, 1)),           # row_ptr[0] != 0
    dict(kg=2, ng=1, rp=(0, 0, 2), rid=(0, 1), col=(0, 0)),      # row_ptr not increasing
    dict(kg=1, ng=2, rp=(0, 1), rid=(0,), col=(0, 1)),           # row_ptr[R] != NNZ
    dict(kg=2, ng=1, rp=(0, 1, 2), rid=(1, 1), col=(0, 0)),      # row_id not increasing
    dict(kg=2, ng=1, rp=(0, 1), rid=(2,), col=(0,)),             # row_id = KG
    dict(kg=1, ng=2, rp=(0, 1), rid=(0,), col=(2,)),             # col = NG
])
def test_each_index_rule_alone_stops_the_run_after_the_index_is_loaded(geometry):
    dram: dict = {}
    put_tile(dram, 0, DATA, **geometry)
    res = run_table(dram, 1)
    assert (res.error, res.err_code) == (True, isa.ErrorCode.INDEX)
    n = 2 * len(geometry["rid"]) + 1 + len(geometry["col"])     # index entries loaded
    x_words = BM * geometry["ng"]                                # X words loaded (TT = 1)
    c = res.counters
    # phase 0: L + fetch + X load (x_words + 1) + index load (n + 1); the W chunk never starts
    assert c["busy"] == 1 + L + FETCH + (x_words + 1) + (n + 1)
    assert c["cycles"] == 12 + c["busy"] and c["insns"] == 5 and c["tiles"] == 0
    assert (c["idx_writes"], c["xmem_writes"], c["wmem_writes"]) == (n, x_words, 0)
    # beats: descriptor + X (x_words * 4 bytes) + index (n * 2 bytes), each rounded up
    assert c["dram_read_bytes"] == (KD + -(-x_words * 4 // B) + -(-n * 2 // B)) * B


def _streamed_w(wlen3: int):
    """Tile 0 computes block A; tiles 1 and 2 reuse every bank and stream words 0 and 1 of block
    C into the W fill bank; tile 3 swaps W (its own index, words 2-3 of C at fill offset 2) and
    computes C. X and the Y region stay: Y = 3 X.A^T + X.C^T."""
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, (BM, BN)).astype(np.int8)
    a, cb = rng.integers(-128, 128, (2, BK, BN)).astype(np.int8)
    dram: dict = {}
    put(dram, 64, x.tobytes())
    put(dram, 65, np.array([0, 1, 0, 0], "<u2").tobytes())
    put(dram, 66, a.tobytes())
    put(dram, 67, cb[0].tobytes())           # word 0 of C
    put(dram, 68, cb[1].tobytes())           # word 1
    put(dram, 69, cb[2:].tobytes())          # words 2-3
    one = dict(tt=1, kg=1, ng=1, r=1, nnz=1)
    put_desc(dram, 0, flags=ALL, x=64, idx=65, w=66, wlen=4, y=70, **one)
    put_desc(dram, 1, flags=0, w=67, wlen=1, **one)
    put_desc(dram, 2, flags=0, w=68, wlen=1, **one)
    put_desc(dram, 3, flags=SWAP_W, idx=65, w=69, wlen=wlen3, **one)
    y = 3 * x.astype(np.int64) @ a.T.astype(np.int64) + x.astype(np.int64) @ cb.T
    return run_table(dram, 4), y


def test_w_chunks_stream_over_phases_and_restart_at_each_w_swap():
    res, y = _streamed_w(2)
    assert (res.error, res.err_code) == (False, 0)
    np.testing.assert_array_equal(y_of(res, 70, BM), y)
    # phases: 29 | max(13, L + 6 + chunk 1+1 = 16) twice | max(13, L + 6 + index 5 + chunk 3
    #         = 22) | 13 (tile 3, no DMA) | store 13
    assert res.counters["busy"] == 1 + 29 + 16 + 16 + 22 + 13 + 13
    assert res.counters["wmem_writes"] == 4 + 1 + 1 + 2 and res.counters["idx_writes"] == 8
    # the fill offset is 2 when tile 3's chunk is checked: 2 + 30 words fit, 2 + 31 do not
    assert not _streamed_w(30)[0].error
    late, _ = _streamed_w(31)
    assert (late.err_code, late.counters["tiles"]) == (RANGE, 3)
    assert late.counters["busy"] == 1 + 29 + 16 + 16 + max(13, L + FETCH)


def test_three_y_regions_each_is_stored_while_the_next_tile_computes():
    dram: dict = {}
    at, y0_at, y0 = put_tile(dram, 0, DATA)
    at, y1_at, y1 = put_tile(dram, 1, at, seed=1)
    _, y2_at, y2 = put_tile(dram, 2, at, seed=2)
    res = run_table(dram, 3)
    assert not res.error
    for at, y in ((y0_at, y0), (y1_at, y1), (y2_at, y2)):
        np.testing.assert_array_equal(y_of(res, at, BM), y)
    # phases: 29 | max(13, tile 1's loads 29) | max(13, store of region 0 (4 + 1) then tile 2's
    # fetch and loads (6 + 15): L + 26 = 34) | max(13, store of region 1: L + 5) | store 13
    assert res.counters["busy"] == 1 + 29 + 29 + 34 + 13 + 13
    assert res.counters["dma_stall"] == 29 + 16 + 21 + 0 + 13
    assert res.counters["ymem_reads"] == res.counters["ymem_writes"] == 3 * (4 + 4)
    assert res.counters["dram_write_bytes"] == 12 * B


def test_an_8_bit_index_entry_of_128_or_more_is_unsigned():
    """Index entries are unsigned (docs/hw.md §3 counts them from 0): with index_bits 8, column
    128 is block column 128, as the compiler writes it and the RTL reads it."""
    cfg = tiny_config(kib=4.5, index_bits=8)          # X bank: 4.5 * 8192 / 2 / 32 = 576 words
    assert cfg.memories["xmem"].depth >= BM * 129
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (BM, 129 * BN)).astype(np.int8)
    w = rng.integers(-128, 128, (BK, BN)).astype(np.int8)
    dram: dict = {}
    at = put(dram, DATA, x.tobytes())                  # 129 beats
    put(dram, at, bytes([0, 1, 0, 128]))               # row_ptr 0 1, row_id 0, col 128
    put(dram, at + 1, w.tobytes())
    put_desc(dram, 0, flags=ALL, tt=1, kg=1, ng=129, r=1, nnz=1, x=DATA, idx=at, w=at + 1,
             wlen=BK, y=at + 2)
    res = run_table(dram, 1, cfg=cfg)
    assert (res.error, res.err_code) == (False, 0)
    y = x[:, 128 * BN:129 * BN].astype(np.int64) @ w.T.astype(np.int64)
    np.testing.assert_array_equal(y_of(res, at + 2, BM), y)


def test_a_tile_with_no_kept_block_computes_nothing_and_stores_zeros():
    dram: dict = {}
    put(dram, DATA, bytes(range(16)))                          # X (never multiplied)
    put(dram, DATA + 1, bytes(2))                              # index: row_ptr[0] = 0
    for i in range(4):
        dram[DATA + 2 + i] = (1 << 128) - 1                    # stale data in the Y region
    put_desc(dram, 0, flags=ALL, tt=1, kg=1, ng=1, r=0, nnz=0, x=DATA, idx=DATA + 1, w=0,
             wlen=0, y=DATA + 2)
    res = run_table(dram, 1)
    assert (res.error, res.err_code) == (False, 0)
    assert [res.mem.dram[DATA + 2 + i] for i in range(4)] == [0] * 4
    # phase 0: L + fetch 6 + X 5 + index (1 entry: 1 + 1) = 21, no W chunk;
    # phase 1: no compute, no DMA: 1 cycle; phase 2: store L + 5 = 13
    c = res.counters
    assert c["busy"] == 1 + 21 + 1 + 13 and c["dma_cycles"] == 21 + 13
    assert (c["compute"], c["fill"], c["macs"], c["tiles"]) == (0, 0, 0, 1)
    assert (c["idx_reads"], c["wmem_writes"], c["ymem_reads"], c["ymem_writes"]) == (0, 0, 4, 4)


def test_a_w_segment_streamed_in_two_chunks_fills_the_bank_to_its_last_word():
    """Tile 1 (no swaps) streams words 0-28 of an 8-block W segment, tile 2 words 29-31 at fill
    offset 29 and swaps W in: 8 blocks x wpb 4 = the whole 32-word bank."""
    rng = np.random.default_rng(11)
    geo = dict(tt=1, kg=3, ng=3)
    x = rng.integers(-128, 128, (BM, 3 * BN)).astype(np.int8)
    a = rng.integers(-128, 128, (BK, BN)).astype(np.int8)
    wb = rng.integers(-128, 128, (8, BK, BN)).astype(np.int8)
    rp, rid, col = (0, 3, 6, 8), (0, 1, 2), (0, 1, 2, 0, 1, 2, 0, 2)
    dram: dict = {}
    put(dram, 64, x.tobytes())                                     # 12 words: 64-66
    put(dram, 67, np.array([0, 1, 1, 0], "<u2").tobytes())         # tile 0: block (1, 0)
    put(dram, 68, a.tobytes())
    put(dram, 69, np.array([*rp, *rid, *col], "<u2").tobytes())    # 15 entries: 69-70
    put(dram, 71, wb.tobytes()[: 29 * 4])                          # words 0-28: 71-78
    put(dram, 79, wb.tobytes()[29 * 4:])                           # words 29-31
    put_desc(dram, 0, flags=ALL, r=1, nnz=1, x=64, idx=67, w=68, wlen=4, y=80, **geo)
    put_desc(dram, 1, flags=0, r=1, nnz=1, w=71, wlen=29, **geo)
    put_desc(dram, 2, flags=SWAP_W, r=3, nnz=8, idx=69, w=79, wlen=3, **geo)
    res = run_table(dram, 3)
    assert (res.error, res.err_code) == (False, 0)
    x64, y = x.astype(np.int64), np.zeros((BM, 3 * BK), np.int64)
    y[:, BK:2 * BK] += 2 * x64[:, :BN] @ a.T.astype(np.int64)    # tiles 0 and 1
    for j in range(3):
        for q in range(rp[j], rp[j + 1]):
            y[:, rid[j] * BK:(rid[j] + 1) * BK] += \
                x64[:, col[q] * BN:(col[q] + 1) * BN] @ wb[q].T.astype(np.int64)
    np.testing.assert_array_equal(y_of(res, 80, BM, 3), y)
    assert res.counters["wmem_writes"] == 4 + 29 + 3


def test_dram_beats_never_written_read_as_zero():
    dram: dict = {}
    _, y_at, _ = put_tile(dram, 0, DATA)
    del dram[DATA]                                             # the X tile: all zero
    res = run_table(dram, 1)
    assert not res.error
    assert (y_of(res, y_at, BM) == 0).all()


def test_a_tile_count_of_zero_runs_only_the_setup_cycle():
    res = run_table({}, 0)
    assert (res.error, res.err_code) == (False, 0)
    assert (res.counters["busy"], res.counters["cycles"], res.counters["dma_cycles"]) == \
        (1, 14 + 1, 0)


def test_two_gemms_add_their_counters_and_recompute_the_same_y():
    dram: dict = {}
    _, y_at, y = put_tile(dram, 0, DATA)
    words = [encode(i) for i in li(10, 0) + li(11, 1)] + [
        encode(Instr("lsp.tiles", rs1=10, rs2=11)), encode(Instr("lsp.gemm")),
        encode(Instr("lsp.gemm")), encode(Instr("lsp.halt"))]
    res = run_iss(edge_cfg(), Memories(imem=dict(enumerate(words)), dram=dram))
    assert not res.error
    np.testing.assert_array_equal(y_of(res, y_at, BM), y)
    # each lsp.gemm as in test_one_tile_worked_by_hand: busy 56; 8 instructions
    assert (res.counters["busy"], res.counters["cycles"], res.counters["tiles"]) == \
        (2 * 56, 16 + 2 * 56, 2)


def test_an_index_is_checked_by_its_own_entries_not_by_a_longer_one_left_in_the_bank():
    """Tiles 0 and 2 load their index into the same IDX bank; tile 0's 7 entries leave a 1 at
    entry 4, which tile 2 (4 entries, NG = 1) must not read as a fifth column."""
    dram: dict = {}
    at, y0_at, y0 = put_tile(dram, 0, DATA, kg=2, ng=2, rp=(0, 1, 2), rid=(0, 1), col=(0, 1))
    at, _, _ = put_tile(dram, 1, at, seed=1)
    _, y2_at, y2 = put_tile(dram, 2, at, seed=2)
    res = run_table(dram, 3)
    assert (res.error, res.err_code) == (False, 0)
    np.testing.assert_array_equal(y_of(res, y0_at, BM, 2), y0)
    np.testing.assert_array_equal(y_of(res, y2_at, BM), y2)


def test_a_y_word_wider_than_a_beat_costs_w_over_b_cycles_per_word():
    """The one-tile layer of test_one_tile_worked_by_hand with 4-byte beats (b = 32 bits): a
    descriptor is 16 beats, X and W words are one beat, an index beat holds 2 entries, a Y word
    is 4 beats."""
    cfg = tiny_config(beat=4, idx_kib=0.0625, ymem_kib=1.01)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (BM, BN)).astype(np.int8)
    w = rng.integers(-128, 128, (BK, BN)).astype(np.int8)
    beats = {}
    for at, data in ((16, x.tobytes()), (20, np.array([0, 1, 0, 0], "<u2").tobytes()),
                     (22, w.tobytes()),
                     (0, b"".join(v.to_bytes(4, "little") for v in isa.encode_descriptor(
                         flags=ALL, tt=1, kg=1, ng=1, r=1, nnz=1, x=16, idx=20, w=22, wlen=4,
                         y=26)))):
        for i in range(len(data) // 4):
            beats[at + i] = int.from_bytes(data[4 * i:4 * i + 4], "little")
    res = run_table(beats, 1, cfg=cfg)
    assert not res.error
    raw = b"".join(res.mem.dram[26 + i].to_bytes(4, "little") for i in range(16))
    np.testing.assert_array_equal(np.frombuffer(raw, "<i4").reshape(BM, BK),
                                  x.astype(np.int64) @ w.T.astype(np.int64))
    # phase 0: L + fetch (16 + 2) + X (4 + 1) + index (4 + 1) + W (4 + 1) = 41;
    # phase 1: compute 13; phase 2: store of 4 words of 4 beats each: L + 4 * 4 + 1 = 25
    c = res.counters
    assert (c["busy"], c["dma_cycles"], c["dma_stall"]) == (1 + 41 + 13 + 25, 41 + 25, 41 + 25)
    assert (c["dram_read_bytes"], c["dram_write_bytes"]) == ((16 + 4 + 2 + 4) * 4, 16 * 4)
    assert all(type(v) is int for v in c.values())


def test_a_tile_with_no_kept_block_leaves_the_whole_phase_to_the_dma():
    """Tile 0 keeps no block while the DMA loads tile 1: the phase is a DMA stall throughout."""
    dram: dict = {}
    put(dram, DATA, bytes(16))
    put(dram, DATA + 1, bytes(2))
    put_desc(dram, 0, flags=ALL, tt=1, kg=1, ng=1, r=0, nnz=0, x=DATA, idx=DATA + 1, w=0,
             wlen=0, y=DATA + 2)
    _, y_at, y = put_tile(dram, 1, DATA + 6)
    res = run_table(dram, 2)
    assert not res.error
    np.testing.assert_array_equal(y_of(res, y_at, BM), y)
    # phases: 21 (tile 0's X and index) | max(0, tile 1's fetch and loads 29) |
    #         max(13, store of region 0: 13) | store 13
    assert res.counters["busy"] == 1 + 21 + 29 + 13 + 13
    assert res.counters["dma_stall"] == 21 + 29 + 0 + 13
