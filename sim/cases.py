"""Reference cases of the RTL benches and the checks that judge their results.

Shared by ``make sim`` (:mod:`sim.make_sim`) and the pytest benches (``tests/test_sim_*.py``):

* :func:`layer_cases` — layers with a numpy answer and a model prediction: random shapes and
  block masks, an all-pruned block row and column, an all-pruned layer, a dense layer, int8
  extremes (-128 x -128), a 1 x 1 x 1 layer, layers several times larger than every memory
  (tiled), each with its dense twin for the speedup;
* :func:`error_cases` — programs that must stop with a given error code (malformed instructions,
  impossible tile geometry, corrupt block indices, DMA transfers outside DRAM or longer than
  their bank, running off the end of IMEM) and one that reads counters with ``lsp.rdctr``;
* :func:`check_layer` — a layer's run against numpy (bit-exact) and the model (every counter),
  through :func:`lsp_codesign.check.check_run`;
* :func:`check_error` — an error case's run against the ISS (error code, every counter,
  registers): the ISS is the executable spec of what the engine does on bad input.

Imports numpy and ``lsp_codesign`` only: no simulator, no amaranth.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsp_codesign import table
from lsp_codesign.check import check_run
from lsp_codesign.compiler import LayerProgram, compile_layer, from_beats, reference_gemm, to_beats
from lsp_codesign.config import HwConfig
from lsp_codesign.cycle_model import energy_breakdown, estimate_layer
from lsp_codesign.isa import (COUNTERS, DESC_WORDS, DescField, ErrorCode, Instr, encode, li)
from lsp_codesign.iss import Memories, run_iss
from lsp_codesign.tiling import LoopOrder, Plan

__all__ = ["LayerCase", "ErrorCase", "CaseReport", "layer_cases", "error_cases",
           "check_layer", "check_error", "named_program", "format_table", "patch_descriptor",
           "patch_dram_words"]

_A2, _A3, _A4, _A5 = 12, 13, 14, 15


def named_program(prog: LayerProgram, name: str, **changes: Any) -> LayerProgram:
    """A copy of ``prog`` with ``extra["name"] = name`` and any field replaced."""
    extra = dict(prog.extra)
    extra["name"] = name
    return dataclasses.replace(prog, extra=extra, **changes)


@dataclass
class LayerCase:
    """A layer ``Y = X . (W * mask)^T`` with its expected result and counters.

    Attributes
    ----------
    name : str
        Case name (``dense`` twins end in ``/dense``).
    x, w : numpy.ndarray
        int8 ``(M, N)`` activations and ``(K, N)`` weight.
    mask : numpy.ndarray
        ``(KB, NB)`` block mask.
    twin : str or None
        For a dense twin, the name of the sparse case it is the baseline of.
    """

    name: str
    x: np.ndarray
    w: np.ndarray
    mask: np.ndarray
    twin: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.x.shape[0], self.x.shape[1], self.w.shape[0]

    def program(self, cfg: HwConfig) -> LayerProgram:
        return named_program(compile_layer(cfg, self.x, self.w, self.mask, name=self.name),
                             self.name)

    def expected_y(self, cfg: HwConfig) -> np.ndarray:
        return reference_gemm(self.x, self.w, self.mask, cfg.block_k, cfg.block_n)

    def estimate(self, cfg: HwConfig):
        m, n, k = self.shape
        return estimate_layer(cfg, m, n, k, self.mask, name=self.name)


@dataclass
class ErrorCase:
    """A program that must end with a given error code (or halt, code 0).

    The counters and registers it must end with are the ISS's (:func:`check_error`).
    """

    name: str
    program: LayerProgram
    err_code: int


def _rand_int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def _grid(cfg: HwConfig, n: int, k: int) -> tuple[int, int]:
    return math.ceil(k / cfg.block_k), math.ceil(n / cfg.block_n)


def _oversized(cfg: HwConfig, factor: int) -> tuple[int, int, int]:
    """A layer ``factor`` times larger than one bank of each of XMEM, WMEM and YMEM."""
    mem = cfg.memories
    x_bytes = mem["xmem"].depth * mem["xmem"].word_bytes
    w_bytes = mem["wmem"].depth * mem["wmem"].word_bytes
    y_bytes = mem["ymem"].depth * cfg.block_k * 4
    n = max(2 * cfg.block_n, int(math.sqrt(factor * w_bytes)))
    k = max(2 * cfg.block_k, -(-factor * w_bytes // n), 1)
    m = max(-(-factor * x_bytes // n), -(-factor * y_bytes // (4 * k)), 1)
    return m + 3, n + 1, k + 1          # ragged edges


def layer_cases(cfg: HwConfig, *, seed: int = 0, n_random: int = 3, twins: bool = True,
                oversize: tuple[int, ...] = ()) -> list[LayerCase]:
    """The layer cases for ``cfg``; shapes scale with the block and tile, so every block size
    gets several block rows, block columns, token tiles and ragged edges.

    Parameters
    ----------
    cfg : HwConfig
        A ``block_sparse`` config.
    seed : int
        Seed of the random shapes, masks and values.
    n_random : int
        Number of random-shape cases.
    twins : bool
        Add the dense twin of every case that has pruned blocks.
    oversize : tuple of int
        Also add a random layer this many times larger than every memory bank, for each factor
        (use small memory configs: the layer is large in absolute terms otherwise).
    """
    rng = np.random.default_rng(seed)
    bk, bn, bm = cfg.block_k, cfg.block_n, cfg.tile_m
    cases: list[LayerCase] = []
    for i in range(n_random):
        m = int(rng.integers(1, 3 * bm + 1))
        n = int(rng.integers(1, 5 * bn + 1))
        k = int(rng.integers(1, 5 * bk + 1))
        kb, nb = _grid(cfg, n, k)
        mask = rng.random((kb, nb)) < rng.uniform(0.25, 0.75)
        cases.append(LayerCase(f"random-{i + 1}", _rand_int8(rng, (m, n)),
                               _rand_int8(rng, (k, n)), mask))
    # A block row and a block column with no kept block; ragged M, N, K.
    m, n, k = 2 * bm + 3, 4 * bn - 3, 4 * bk - 1
    kb, nb = _grid(cfg, n, k)
    mask = rng.random((kb, nb)) < 0.7
    mask[1, :] = False
    mask[:, 2] = False
    mask[0, 0] = mask[-1, -1] = True
    cases.append(LayerCase("pruned-row-col", _rand_int8(rng, (m, n)), _rand_int8(rng, (k, n)),
                           mask))
    # Every block pruned: only DMA (X in, zeros out), no PE cycle.
    m, n, k = bm + 1, 3 * bn, 3 * bk
    kb, nb = _grid(cfg, n, k)
    cases.append(LayerCase("all-pruned", _rand_int8(rng, (m, n)), _rand_int8(rng, (k, n)),
                           np.zeros((kb, nb), dtype=bool)))
    # Every block kept.
    m, n, k = bm + 5, 3 * bn - 1, 2 * bk + 3
    kb, nb = _grid(cfg, n, k)
    cases.append(LayerCase("dense", _rand_int8(rng, (m, n)), _rand_int8(rng, (k, n)),
                           np.ones((kb, nb), dtype=bool)))
    # int8 extremes: -128 x -128 everywhere in row 0 / column 0, mixed -128 / 127 elsewhere.
    m, n, k = bm, 4 * bn, 2 * bk
    kb, nb = _grid(cfg, n, k)
    x = rng.choice(np.array([-128, 127], dtype=np.int8), size=(m, n))
    w = rng.choice(np.array([-128, 127], dtype=np.int8), size=(k, n))
    x[0, :] = -128
    w[0, :] = -128
    mask = rng.random((kb, nb)) < 0.5
    mask[0, :] = True
    cases.append(LayerCase("int8-extremes", x, w, mask))
    # The smallest layer: one token, one input, one output (one padded block).
    cases.append(LayerCase("1x1x1", np.array([[-128]], dtype=np.int8),
                           np.array([[-128]], dtype=np.int8), np.ones((1, 1), dtype=bool)))
    for factor in oversize:
        m, n, k = _oversized(cfg, factor)
        kb, nb = _grid(cfg, n, k)
        mask = rng.random((kb, nb)) < 0.5
        mask[kb // 2] = False
        cases.append(LayerCase(f"tiled-{factor}x", _rand_int8(rng, (m, n)),
                               _rand_int8(rng, (k, n)), mask))
    if twins:
        for c in list(cases):
            if not c.mask.all():
                cases.append(LayerCase(f"{c.name}/dense", c.x, c.w,
                                       np.ones_like(c.mask, dtype=bool), twin=c.name))
    return cases


# ---- error cases --------------------------------------------------------------------------


def patch_dram_words(cfg: HwConfig, prog: LayerProgram, beat: int, word: int,
                     value: int) -> dict[int, int]:
    """A copy of the DRAM image with 32-bit word ``word`` of the area at ``beat`` set."""
    b = cfg.dram.bytes_per_cycle
    first = beat + (4 * word) // b
    raw = bytearray(from_beats([prog.dram.get(first, 0)], b))
    off = (4 * word) % b
    raw[off: off + 4] = int(value & 0xFFFFFFFF).to_bytes(4, "little")
    dram = dict(prog.dram)
    dram[first] = to_beats(bytes(raw), b)[0]
    return dram


def patch_descriptor(cfg: HwConfig, prog: LayerProgram, tile: int, **fields: int) -> dict:
    """The DRAM image with fields of descriptor ``tile`` replaced (``tt=0``, ``x=...``)."""
    dram = dict(prog.dram)
    base = tile * cfg.dram.desc_beats            # the compiler puts the table at beat 0
    view = dataclasses.replace(prog, dram=dram)
    for name, value in fields.items():
        dram = patch_dram_words(cfg, view, base, int(DescField[name.upper()]), value)
        view = dataclasses.replace(view, dram=dram)
    return dram


def _index_entry_patch(cfg: HwConfig, prog: LayerProgram, tile: int, entry: int,
                       value: int) -> dict[int, int]:
    """The DRAM image with entry ``entry`` of tile ``tile``'s index segment set."""
    words = np.frombuffer(from_beats([prog.dram.get(tile * cfg.dram.desc_beats + i, 0)
                                      for i in range(cfg.dram.desc_beats)],
                                     cfg.dram.bytes_per_cycle)[: 4 * DESC_WORDS], "<u4")
    seg = int(words[DescField.IDX])
    b, eb = cfg.dram.bytes_per_cycle, cfg.index_bits // 8
    beat, off = seg + (entry * eb) // b, (entry * eb) % b
    raw = bytearray(from_beats([prog.dram.get(beat, 0)], b))
    raw[off: off + eb] = int(value).to_bytes(eb, "little")
    dram = dict(prog.dram)
    dram[beat] = to_beats(bytes(raw), b)[0]
    return dram


def _words(instrs: list[Instr]) -> list[int]:
    return [encode(i) for i in instrs]


def error_cases(cfg: HwConfig, *, seed: int = 0) -> list[ErrorCase]:
    """Programs that must stop with an error, and one that reads counters by instruction.

    The base layer has two block rows per tile and at least two tiles, so a corrupt index or
    descriptor can be placed in the first tile (found in phase 0) or in a later one (found while
    an earlier tile computes).
    """
    rng = np.random.default_rng(seed + 1000)
    bk, bn, bm = cfg.block_k, cfg.block_n, cfg.tile_m
    m, n, k = 2 * bm, 3 * bn, 3 * bk
    kb, nb = _grid(cfg, n, k)
    mask = rng.random((kb, nb)) < 0.6
    mask[:, 0] = True                    # every block row non-empty: R = KG in every tile
    kg = 2 if _widest(cfg, nb, 2) else 1     # two block rows per tile where the banks allow
    plan = Plan(m, n, k, LoopOrder.ROWS_OUTER, 1, kg, _widest(cfg, nb, kg), bk, bn, bm)
    base = compile_layer(cfg, _rand_int8(rng, (m, n)), _rand_int8(rng, (k, n)), mask,
                         name="base", plan=plan)
    words = list(base.words)
    code = ErrorCode
    out: list[ErrorCase] = []

    def add(name: str, err: ErrorCode, **changes: Any) -> None:
        out.append(ErrorCase(name, named_program(base, name, **changes), int(err)))

    # Illegal words at position 4 (the lsp.tiles after `li a0, D; li a1, T`).
    for name, word in {
        "illegal-funct7": (0x55 << 25) | 0b0001011,                      # unknown custom-0 op
        "illegal-funct3": encode(Instr("lsp.gemm")) | (0b001 << 12),      # gemm with xs2 set
        "illegal-unused-rd": encode(Instr("lsp.halt")) | (5 << 7),        # halt with rd = x5
        "illegal-opcode": 0x00B50533,                                     # RV32I add a0,a0,a1
    }.items():
        w = words.copy()
        w[4] = word
        add(name, code.ILLEGAL_INSTRUCTION, words=w)
    last = base.n_tiles - 1
    last_w = int(np.nonzero(base.plan.swap_w)[0][-1])     # the last tile that loads an index
    add("bad-tile-tt0", code.BAD_TILE, dram=patch_descriptor(cfg, base, 0, tt=0))
    add("bad-tile-nnz", code.BAD_TILE,
        dram=patch_descriptor(cfg, base, last, nnz=(1 << 32) - 1))
    add("dma-x-outside-dram", code.DMA_RANGE,
        dram=patch_descriptor(cfg, base, 0, x=cfg.dram.depth - 1))
    add("dma-w-longer-than-bank", code.DMA_RANGE,
        dram=patch_descriptor(cfg, base, 0, wlen=cfg.memories["wmem"].depth + 1))
    w = words.copy()
    w[0:2] = _words(li(10, cfg.dram.depth - 1))   # descriptor table at the end of DRAM
    add("dma-descriptor-outside-dram", code.DMA_RANGE, words=w)
    # corrupt indices: tile 0's row pointers decrease, a later tile's column index >= NG
    add("index-row-ptr-decreases", code.INDEX,
        dram=_index_entry_patch(cfg, base, 0, 1, (1 << cfg.index_bits) - 1))
    add("index-column-past-ng", code.INDEX,
        dram=_index_entry_patch(cfg, base, last_w, 2 * _tile_rows(cfg, base, last_w) + 1,
                                (1 << cfg.index_bits) - 1))
    depth = cfg.memories["imem"].depth
    add("pc-overflow", code.PC_OVERFLOW, words=[encode(Instr("lsp.fence"))] * depth)
    # lsp.rdctr after the GEMM: cycles so far, MACs, and an unknown counter number (0).
    tail = (_words(li(_A2, 0)) + _words([Instr("lsp.rdctr", rd=_A3, rs1=_A2)])
            + _words(li(_A2, COUNTERS.index("macs")))
            + _words([Instr("lsp.rdctr", rd=_A4, rs1=_A2)])
            + _words(li(_A2, 99)) + _words([Instr("lsp.rdctr", rd=_A5, rs1=_A2)])
            + _words([Instr("lsp.halt")]))
    add("rdctr", code.NONE, words=words[:-1] + tail)
    return out


def _widest(cfg: HwConfig, nb: int, kg: int) -> int:
    """The most block columns a tile of ``kg`` block rows and one token tile can have (0: none)."""
    mem = cfg.memories
    ng = min(nb, mem["xmem"].depth // cfg.tile_m,
             mem["wmem"].depth // (kg * cfg.words_per_block),
             (mem["idx"].depth - 2 * kg - 1) // kg)
    return max(ng, 0) if kg * cfg.tile_m <= mem["ymem"].depth else 0


def _tile_rows(cfg: HwConfig, prog: LayerProgram, tile: int) -> int:
    """R (non-empty block rows) of a tile, from its descriptor in the image."""
    raw = from_beats([prog.dram.get(tile * cfg.dram.desc_beats + i, 0)
                      for i in range(cfg.dram.desc_beats)], cfg.dram.bytes_per_cycle)
    return int(np.frombuffer(raw[: 4 * DESC_WORDS], "<u4")[DescField.R])


# ---- checks ---------------------------------------------------------------------------------


@dataclass
class CaseReport:
    """One row of the summary: what the RTL did and whether it matched."""

    name: str
    shape: str
    kept: str
    rtl_cycles: int
    model_cycles: int | None
    energy_nj: float | None
    speedup: float | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_layer(cfg: HwConfig, case: LayerCase, prog: LayerProgram, res: Any) -> CaseReport:
    """Compare a layer's RTL result with numpy (bit-exact) and the model (every counter)."""
    m, n, k = case.shape
    est = case.estimate(cfg)
    verdict = check_run(cfg, prog, res, case.expected_y(cfg), est.counters)
    problems = verdict.problems
    if res.sim_cycles != res.counters["cycles"]:
        problems.append(f"cycles counter {res.counters['cycles']} != {res.sim_cycles} clock "
                        "cycles seen by the bench")
    energy = sum(float(v) for v in energy_breakdown(cfg, res.counters).values())
    return CaseReport(case.name, f"{m}x{n}->{k}", f"{case.mask.sum()}/{case.mask.size}",
                      res.counters["cycles"], est.cycles, energy / 1000.0, None, problems)


def check_error(cfg: HwConfig, case: ErrorCase, res: Any) -> CaseReport:
    """Compare a program's ending (error code, every counter, registers) with the ISS's."""
    iss = run_iss(cfg, Memories.from_program(case.program))
    problems = []
    if iss.err_code != case.err_code:
        problems.append(f"the ISS ends with code {iss.err_code}, the case expects "
                        f"{case.err_code}")
    if bool(res.error) != bool(iss.error) or res.err_code != iss.err_code:
        problems.append(f"ended with error={int(res.error)} code {res.err_code}, the ISS with "
                        f"error={int(iss.error)} code {iss.err_code}")
    bad = [f"{c} RTL {res.counters.get(c)} != ISS {iss.counters[c]}" for c in COUNTERS
           if res.counters.get(c) != iss.counters[c]]
    if bad:
        problems.append(f"counters: {'; '.join(bad)}")
    if res.regs is not None and res.regs != iss.regs:
        diff = [f"x{r} RTL {a} ISS {b}" for r, (a, b) in enumerate(zip(res.regs, iss.regs))
                if a != b]
        problems.append(f"registers: {'; '.join(diff)}")
    p = case.program
    return CaseReport(case.name, f"{p.m}x{p.n}->{p.k}", f"err {case.err_code}",
                      res.counters["cycles"], iss.counters["cycles"], None, None, problems)


def format_table(rows: list[CaseReport]) -> str:
    """The summary table printed by ``make sim``."""
    head = ("case", "shape MxN->K", "blocks kept", "RTL cycles", "model cycles", "energy nJ",
            "speedup", "check")
    body = []
    for r in rows:
        body.append((
            r.name, r.shape, r.kept, str(r.rtl_cycles),
            "-" if r.model_cycles is None else str(r.model_cycles),
            "-" if r.energy_nj is None else f"{r.energy_nj:.2f}",
            "-" if r.speedup is None else f"{r.speedup:.2f}x",
            "ok" if r.ok else "MISMATCH",
        ))
    return table.format_table(head, body, left=len(head))
