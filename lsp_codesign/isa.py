"""The engine's instruction set: the one definition of every encoding.

The engine is driven by 32-bit RISC-V instructions. Its command front-end plays the role of the
host core of a RoCC accelerator: it executes the two RV32I instructions a program needs to build
operand values (``LUI`` and ``ADDI``) into a 32-entry register file, and issues the custom-0
instructions (opcode ``0001011``, R-type: ``funct7 | rs2 | rs1 | funct3 | rd | opcode``) with the
values of their source registers. As in RoCC, ``funct3`` holds the ``xd, xs1, xs2`` bits that say
which of rd, rs1, rs2 the instruction uses; ``funct7`` selects the operation.

Decoding is strict, so that every legal word has exactly one text form: a custom-0 word whose
``funct7`` is unknown, whose ``funct3`` differs from its operation's ``xd xs1 xs2``, or whose unused
register fields are not zero is illegal, as is any opcode other than the three above, or an
OP-IMM word whose funct3 is not ADDI's. The RTL decoder (``hw/``) is generated from :data:`OPS`.

This module is used by the assembler, the disassembler, the compiler, the cycle/energy model, the
ISS and the RTL; it imports nothing beyond the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable, Sequence

from .errors import LspError

__all__ = [
    "OPCODE_CUSTOM0", "OPCODE_LUI", "OPCODE_OPIMM", "Op", "OPS", "OPS_BY_NAME", "OPS_BY_FUNCT7",
    "Instr", "IllegalInstruction", "AsmError", "encode", "decode", "assemble", "disassemble",
    "format_instr", "li", "REG_NAMES", "reg_number", "COUNTERS", "COUNTER_IDS", "ERRORS",
    "ERROR_CODES", "ErrorCode", "OpKind", "DESC_WORDS", "DescField", "SWAP_X", "SWAP_W",
    "SWAP_Y", "encode_descriptor", "decode_descriptor",
]

OPCODE_CUSTOM0 = 0b0001011
OPCODE_LUI = 0b0110111
OPCODE_OPIMM = 0b0010011
FUNCT3_ADDI = 0b000


@dataclass(frozen=True)
class Op:
    """One custom-0 operation of the engine.

    Attributes
    ----------
    mnemonic : str
        Assembly name (``lsp.gemm``).
    funct7 : int
        Operation selector, bits 31..25.
    xd, xs1, xs2 : bool
        RoCC flags: the instruction writes rd / reads rs1 / reads rs2. Together they are funct3.
    doc : str
        What it does, as written in ``docs/hw.md``.
    """

    mnemonic: str
    funct7: int
    xd: bool
    xs1: bool
    xs2: bool
    doc: str

    @property
    def funct3(self) -> int:
        return (int(self.xd) << 2) | (int(self.xs1) << 1) | int(self.xs2)

    @property
    def operands(self) -> tuple[str, ...]:
        return tuple(n for n, used in (("rd", self.xd), ("rs1", self.xs1), ("rs2", self.xs2))
                     if used)


OPS: tuple[Op, ...] = (
    Op("lsp.tiles", 0x01, False, True, True,
       "descriptor table <- rs1 (DRAM beat), tile count <- rs2"),
    Op("lsp.gemm", 0x10, False, False, False,
       "run the tiles of the descriptor table; returns when they are done"),
    Op("lsp.fence", 0x11, False, False, False, "wait until the engine is idle"),
    Op("lsp.rdctr", 0x20, True, True, False, "rd <- performance counter number rs1"),
    Op("lsp.halt", 0x7F, False, False, False, "stop; status becomes DONE"),
)
OPS_BY_NAME = {op.mnemonic: op for op in OPS}
OPS_BY_FUNCT7 = {op.funct7: op for op in OPS}


class OpKind(IntEnum):
    """What a decoded word is: the RTL decoder's ``kind`` output, numbered as here."""

    LUI = 0
    ADDI = 1
    TILES = 2
    GEMM = 3
    FENCE = 4
    RDCTR = 5
    HALT = 6

    @classmethod
    def of(cls, mnemonic: str) -> "OpKind":
        """The kind of ``lui``, ``addi`` or a custom-0 mnemonic (``lsp.gemm`` -> GEMM)."""
        return cls[mnemonic.removeprefix("lsp.").upper()]


class ErrorCode(IntEnum):
    """Why a run stopped (the ``err_code`` port; ``docs/hw.md`` section 4)."""

    NONE = 0
    ILLEGAL_INSTRUCTION = 1
    BAD_TILE = 2
    INDEX = 3
    PC_OVERFLOW = 4
    DMA_RANGE = 5


# Performance counters, in the order of their numbers (lsp.rdctr and the counter port).
COUNTERS: tuple[str, ...] = (
    "cycles",            # every cycle from start until halt or error (inclusive)
    "busy",              # cycles spent inside lsp.gemm
    "compute",           # cycles in which the PE array multiplies a token row by a block
    "fill",              # cycles a tile waits for its first block
    "dma_stall",         # phase cycles in which the DMA works after the compute is done
    "macs",              # multiply-accumulates performed: compute x BK x BN
    "insns",             # instructions retired
    "imem_reads",        # instruction words fetched
    "xmem_reads",        # activation words read by the array
    "xmem_writes",       # activation words written by the DMA
    "wmem_reads",        # weight words read into the weight buffer
    "wmem_writes",       # weight words written by the DMA
    "idx_reads",         # index entries read by the walker
    "idx_writes",        # index entries written by the DMA
    "ymem_reads",        # output words read (drains add into them; stores send them)
    "ymem_writes",       # output words written (drains; stores clear them)
    "dram_read_bytes",   # bytes read from DRAM (descriptors, X, W, index)
    "dram_write_bytes",  # bytes written to DRAM (Y)
    "dma_cycles",        # cycles the DMA works (latency included)
    "tiles",             # tiles computed
)
COUNTER_IDS = {name: i for i, name in enumerate(COUNTERS)}

# Error causes reported in the status register (0 = no error).
ERRORS: tuple[str, ...] = tuple(e.name.lower() for e in ErrorCode)
ERROR_CODES = {e.name.lower(): int(e) for e in ErrorCode}


# ---- tile descriptors (docs/hw.md section 5) --------------------------------------------------

#: 32-bit words of one descriptor.
DESC_WORDS = 16
#: Flag bits of descriptor word 0.
SWAP_X, SWAP_W, SWAP_Y = 1, 2, 4


class DescField(IntEnum):
    """Word number of each field of a tile descriptor."""

    FLAGS = 0
    TT = 1
    KG = 2
    NG = 3
    R = 4
    NNZ = 5
    X = 6
    IDX = 7
    Y = 8
    W = 9
    WLEN = 10


def encode_descriptor(**fields: int) -> list[int]:
    """The 16 words of a descriptor; fields by :class:`DescField` name (lower case), others 0."""
    words = [0] * DESC_WORDS
    for name, value in fields.items():
        v = int(value)
        if not 0 <= v < (1 << 32):
            raise ValueError(f"descriptor field {name} = {v} does not fit 32 bits")
        words[DescField[name.upper()]] = v
    return words


def decode_descriptor(words: Sequence[int]) -> dict[str, int]:
    """Field name (lower case) -> value of a descriptor's 16 words."""
    return {f.name.lower(): int(words[f]) & 0xFFFFFFFF for f in DescField}


_ABI = ("zero ra sp gp tp t0 t1 t2 s0 s1 a0 a1 a2 a3 a4 a5 a6 a7 "
        "s2 s3 s4 s5 s6 s7 s8 s9 s10 s11 t3 t4 t5 t6").split()
REG_NAMES: tuple[str, ...] = tuple(_ABI)
_REG_LOOKUP = {name: i for i, name in enumerate(_ABI)}
_REG_LOOKUP.update({f"x{i}": i for i in range(32)})
_REG_LOOKUP["fp"] = 8


class IllegalInstruction(LspError, ValueError):
    """A 32-bit word is not a legal instruction of the engine."""


class AsmError(LspError, ValueError):
    """Assembly text could not be assembled; the message names the line."""


def reg_number(name: str) -> int:
    """Register number of ``x7`` / ``t2`` / ``zero``."""
    try:
        return _REG_LOOKUP[name.strip().lower()]
    except KeyError:
        raise AsmError(f"unknown register {name!r}") from None


@dataclass(frozen=True)
class Instr:
    """A decoded instruction. ``imm`` is used by ``lui`` (20-bit upper value) and ``addi``."""

    mnemonic: str
    rd: int = 0
    rs1: int = 0
    rs2: int = 0
    imm: int = 0


def _check_reg(v: int, what: str) -> int:
    if not 0 <= v < 32:
        raise AsmError(f"{what} must be a register number 0..31, got {v}")
    return v


def encode(ins: Instr) -> int:
    """Encode one instruction into its 32-bit word."""
    rd, rs1, rs2 = (_check_reg(ins.rd, "rd"), _check_reg(ins.rs1, "rs1"),
                    _check_reg(ins.rs2, "rs2"))
    if ins.mnemonic == "lui":
        if not 0 <= ins.imm < (1 << 20):
            raise AsmError(f"lui immediate must be 0..0xfffff, got {ins.imm}")
        return (ins.imm << 12) | (rd << 7) | OPCODE_LUI
    if ins.mnemonic == "addi":
        if not -2048 <= ins.imm <= 2047:
            raise AsmError(f"addi immediate must be -2048..2047, got {ins.imm}")
        return ((ins.imm & 0xFFF) << 20) | (rs1 << 15) | (FUNCT3_ADDI << 12) | (rd << 7) \
            | OPCODE_OPIMM
    op = OPS_BY_NAME.get(ins.mnemonic)
    if op is None:
        raise AsmError(f"unknown instruction {ins.mnemonic!r}")
    for used, name, v in ((op.xd, "rd", rd), (op.xs1, "rs1", rs1), (op.xs2, "rs2", rs2)):
        if not used and v:
            raise AsmError(f"{op.mnemonic} does not use {name}")
    return (op.funct7 << 25) | (rs2 << 20) | (rs1 << 15) | (op.funct3 << 12) | (rd << 7) \
        | OPCODE_CUSTOM0


def decode(word: int) -> Instr:
    """Decode a 32-bit word; raise :class:`IllegalInstruction` for anything the engine rejects."""
    if not 0 <= word < (1 << 32):
        raise IllegalInstruction(f"not a 32-bit word: {word!r}")
    opcode = word & 0x7F
    rd = (word >> 7) & 0x1F
    funct3 = (word >> 12) & 0x7
    rs1 = (word >> 15) & 0x1F
    rs2 = (word >> 20) & 0x1F
    funct7 = word >> 25
    if opcode == OPCODE_LUI:
        return Instr("lui", rd=rd, imm=word >> 12)
    if opcode == OPCODE_OPIMM:
        if funct3 != FUNCT3_ADDI:
            raise IllegalInstruction(f"0x{word:08x}: OP-IMM funct3={funct3} is not addi")
        imm = word >> 20
        if imm & 0x800:
            imm -= 0x1000
        return Instr("addi", rd=rd, rs1=rs1, imm=imm)
    if opcode != OPCODE_CUSTOM0:
        raise IllegalInstruction(f"0x{word:08x}: opcode 0b{opcode:07b} is not custom-0, lui or "
                                 "addi")
    op = OPS_BY_FUNCT7.get(funct7)
    if op is None:
        raise IllegalInstruction(f"0x{word:08x}: unknown custom-0 funct7 0x{funct7:02x}")
    if funct3 != op.funct3:
        raise IllegalInstruction(f"0x{word:08x}: {op.mnemonic} needs funct3 0b{op.funct3:03b}, "
                                 f"got 0b{funct3:03b}")
    for used, name, v in ((op.xd, "rd", rd), (op.xs1, "rs1", rs1), (op.xs2, "rs2", rs2)):
        if not used and v:
            raise IllegalInstruction(f"0x{word:08x}: {op.mnemonic} has a nonzero unused {name}")
    return Instr(op.mnemonic, rd=rd, rs1=rs1, rs2=rs2)


def format_instr(ins: Instr) -> str:
    """Assembly text of one instruction (ABI register names)."""
    r = REG_NAMES
    if ins.mnemonic == "lui":
        return f"lui {r[ins.rd]}, 0x{ins.imm:x}"
    if ins.mnemonic == "addi":
        return f"addi {r[ins.rd]}, {r[ins.rs1]}, {ins.imm}"
    op = OPS_BY_NAME[ins.mnemonic]
    regs = [r[getattr(ins, name)] for name in op.operands]
    return op.mnemonic + (" " + ", ".join(regs) if regs else "")


def li(rd: int, value: int) -> list[Instr]:
    """``li rd, value`` as exactly two instructions (lui + addi), whatever the value.

    The fixed length keeps a program's length, and so its cycle count, independent of the
    operand values.
    """
    if not -(1 << 31) <= value < (1 << 32):
        raise AsmError(f"li value does not fit 32 bits: {value}")
    value &= 0xFFFFFFFF
    lo = value & 0xFFF
    if lo & 0x800:
        lo -= 0x1000
    hi = ((value - lo) >> 12) & 0xFFFFF
    return [Instr("lui", rd=rd, imm=hi), Instr("addi", rd=rd, rs1=rd, imm=lo)]


def _parse_int(tok: str) -> int:
    try:
        return int(tok.strip(), 0)
    except ValueError:
        raise AsmError(f"expected a number, got {tok.strip()!r}") from None


def _parse_line(text: str) -> list[Instr]:
    parts = text.split(None, 1)
    mnem = parts[0].lower()
    args = [a.strip() for a in parts[1].split(",")] if len(parts) > 1 else []
    args = [a for a in args if a]

    def need(n: int) -> None:
        if len(args) != n:
            raise AsmError(f"{mnem} takes {n} operand(s), got {len(args)}")

    if mnem == "li":
        need(2)
        return li(reg_number(args[0]), _parse_int(args[1]))
    if mnem == "lui":
        need(2)
        return [Instr("lui", rd=reg_number(args[0]), imm=_parse_int(args[1]))]
    if mnem == "addi":
        need(3)
        return [Instr("addi", rd=reg_number(args[0]), rs1=reg_number(args[1]),
                      imm=_parse_int(args[2]))]
    op = OPS_BY_NAME.get(mnem)
    if op is None:
        raise AsmError(f"unknown instruction {mnem!r}")
    need(len(op.operands))
    fields = {name: reg_number(a) for name, a in zip(op.operands, args)}
    return [Instr(mnem, **fields)]


def assemble(text: str) -> list[int]:
    """Assemble program text into 32-bit words.

    One instruction per line; ``#`` or ``;`` start a comment. ``li rd, value`` is a pseudo
    instruction that always expands to ``lui`` + ``addi``.
    """
    words: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"[#;]", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        try:
            for ins in _parse_line(line):
                words.append(encode(ins))
        except AsmError as exc:
            raise AsmError(f"line {lineno}: {exc} (in {raw.strip()!r})") from None
    return words


def disassemble(words: Iterable[int]) -> str:
    """Disassemble words into text, one instruction per line (raises on an illegal word)."""
    return "\n".join(format_instr(decode(w)) for w in words) + "\n"


def program_text(instrs: Sequence[Instr]) -> str:
    return "\n".join(format_instr(i) for i in instrs) + "\n"
