"""Reference cases of the RTL benches and the checks that judge their results.

Shared by ``make sim`` (:mod:`sim.make_sim`) and the pytest benches (``tests/test_sim_*.py``):

* :func:`layer_cases` — layers with a numpy answer and a model prediction: random shapes and
  block masks, an all-pruned block row and column, an all-pruned layer, a dense layer, int8
  extremes (-128 x -128), a 1 x 1 x 1 layer, each with its dense twin for the speedup;
* :func:`error_cases` — programs that must stop with a given error code (unknown and malformed
  instructions, zero dimensions, a corrupt block index, running off the end of IMEM) and a
  program that reads counters with ``lsp.rdctr``, each with the counters it must end with;
* :func:`check_layer`, :func:`check_error` — compare an :class:`~sim.harness.RtlResult` with
  numpy (bit-exact) and with :mod:`lsp_codesign.cycle_model` (every counter, exactly).

Imports numpy and ``lsp_codesign`` only: no simulator, no amaranth.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsp_codesign import table
from lsp_codesign.compiler import LayerProgram, compile_layer, read_y, reference_gemm
from lsp_codesign.config import HwConfig
from lsp_codesign.cycle_model import (energy_breakdown, estimate_layer, gemm_counters,
                                      program_counters)
from lsp_codesign.isa import COUNTERS, ERROR_CODES, Instr, encode, li

__all__ = ["LayerCase", "ErrorCase", "CaseReport", "layer_cases", "error_cases",
           "check_layer", "check_error", "named_program", "format_table"]

_A0, _A2, _A3, _A4, _A5 = 10, 12, 13, 14, 15


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
    """A program with a known ending: error code, and the counters (and registers) it leaves.

    Attributes
    ----------
    name : str
        Case name.
    program : LayerProgram
        The program (a compiled layer with words or index entries changed).
    err_code : int
        Expected :data:`lsp_codesign.isa.ERRORS` code (0: halts normally).
    counters : dict[str, int]
        Expected value of every counter.
    regs : dict[int, int]
        Expected value of some registers (``lsp.rdctr`` results).
    """

    name: str
    program: LayerProgram
    err_code: int
    counters: dict[str, int]
    regs: dict[int, int] = field(default_factory=dict)


def _rand_int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def _grid(cfg: HwConfig, n: int, k: int) -> tuple[int, int]:
    return math.ceil(k / cfg.block_k), math.ceil(n / cfg.block_n)


def layer_cases(cfg: HwConfig, *, seed: int = 0, n_random: int = 3,
                twins: bool = True) -> list[LayerCase]:
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
    # Every block pruned: only setup and drains, all outputs zero.
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
    if twins:
        for c in list(cases):
            if not c.mask.all():
                cases.append(LayerCase(f"{c.name}/dense", c.x, c.w,
                                       np.ones_like(c.mask, dtype=bool), twin=c.name))
    return cases


def _words(instrs: list[Instr]) -> list[int]:
    return [encode(i) for i in instrs]


def _front_end_counters(n_retired: int, n_fetched: int, cycles: int) -> dict[str, int]:
    c = {name: 0 for name in COUNTERS}
    c.update(insns=n_retired, imem_reads=n_fetched, cycles=cycles)
    return c


def error_cases(cfg: HwConfig, *, seed: int = 0) -> list[ErrorCase]:
    """Programs that must stop with an error, and one that reads counters by instruction.

    Every case says exactly which counters it must end with: an illegal instruction stops in
    its execute cycle without retiring, ``lsp.gemm`` with K = 0 stops in its execute cycle, a
    corrupt index stops at the end of the first token tile, and a program without ``lsp.halt``
    stops when it fetches past the last IMEM word.
    """
    rng = np.random.default_rng(seed + 1000)
    bk, bn, bm = cfg.block_k, cfg.block_n, cfg.tile_m
    d = cfg.block_step_cycles
    m, n, k = 2 * bm, 3 * bn, 3 * bk
    kb, nb = _grid(cfg, n, k)
    mask = rng.random((kb, nb)) < 0.6
    mask[:, 0] = True
    nnz = int(mask.sum())
    base = compile_layer(cfg, _rand_int8(rng, (m, n)), _rand_int8(rng, (k, n)), mask)
    words = list(base.words)
    n_words = len(words)
    gemm_at = words.index(encode(Instr("lsp.gemm")))
    out: list[ErrorCase] = []

    # Illegal words at position 4 (after `li a0, M; li a1, N`): 4 retired, 5 fetched.
    illegal = {
        "illegal-funct7": (0x55 << 25) | 0b0001011,                      # unknown custom-0 op
        "illegal-funct3": encode(Instr("lsp.gemm")) | (0b001 << 12),      # gemm with xs2 set
        "illegal-unused-rd": encode(Instr("lsp.halt")) | (5 << 7),        # halt with rd = x5
        "illegal-opcode": 0x00B50533,                                     # RV32I add a0,a0,a1
    }
    for name, word in illegal.items():
        w = words.copy()
        w[4] = word
        out.append(ErrorCase(name, named_program(base, name, words=w),
                             ERROR_CODES["illegal_instruction"],
                             _front_end_counters(4, 5, 2 * 5)))

    # K = 0: lsp.gemm fails in its execute cycle (not retired, no busy cycle).
    w = words.copy()
    k_at = 5  # li a0, K  (after li a0, M; li a1, N; lsp.dim_mn)
    w[k_at:k_at + 2] = _words(li(_A0, 0))
    out.append(ErrorCase("bad-dims-k0", named_program(base, "bad-dims-k0", words=w),
                         ERROR_CODES["bad_dims"],
                         _front_end_counters(gemm_at, gemm_at + 1, 2 * (gemm_at + 1))))

    # Corrupt index: row_ptr[KB] one short of NNZ (the walker visits NNZ - 1 blocks of tile 0)
    # or one past it (a row pointer beyond NNZ). Either stops at the end of token tile 0.
    rp_last = kb  # row pointers start at IDX 0 (compiler default bases)
    for name, value, visited in (("index-short", nnz - 1, nnz - 1),
                                 ("index-over", nnz + 1, nnz)):
        idx = dict(base.idx)
        idx[rp_last] = value
        g = gemm_counters(cfg, 1, kb, visited)
        busy = 1 + bk + visited * d + kb * cfg.drain_cycles
        c = _front_end_counters(gemm_at, gemm_at + 1, 2 * (gemm_at + 1) + busy)
        c.update(busy=busy, compute=g["compute"], macs=g["macs"], xmem_reads=g["xmem_reads"],
                 ymem_writes=g["ymem_writes"], idx_reads=kb + visited + 2,
                 stall=bk + visited * (d - bm),
                 wmem_reads=bk * (visited + 1))
        out.append(ErrorCase(name, named_program(base, name, idx=idx), ERROR_CODES["index"],
                             c))

    # No lsp.halt: IMEM full of lsp.fence, the fetch after the last word fails.
    depth = cfg.memories["imem"].depth
    fence = encode(Instr("lsp.fence"))
    out.append(ErrorCase("pc-overflow",
                         named_program(base, "pc-overflow", words=[fence] * depth),
                         ERROR_CODES["pc_overflow"],
                         _front_end_counters(depth, depth, 2 * depth + 1)))

    # lsp.rdctr after the GEMM: cycles so far, MACs, and an unknown counter number (0).
    tail = (_words(li(_A2, 0)) + _words([Instr("lsp.rdctr", rd=_A3, rs1=_A2)])
            + _words(li(_A2, COUNTERS.index("macs")))
            + _words([Instr("lsp.rdctr", rd=_A4, rs1=_A2)])
            + _words(li(_A2, 99)) + _words([Instr("lsp.rdctr", rd=_A5, rs1=_A2)])
            + _words([Instr("lsp.halt")]))
    w = words[:-1] + tail
    g = gemm_counters(cfg, math.ceil(m / bm), kb, nnz)
    counters = program_counters(len(w), [g])
    before = n_words - 1 + 2          # instructions done before the first rdctr executes
    regs = {_A3: 2 * before + g["busy"] + 1, _A4: g["macs"] & 0xFFFFFFFF, _A5: 0}
    out.append(ErrorCase("rdctr", named_program(base, "rdctr", words=w), 0, counters, regs))
    return out


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


def _counter_problems(got: dict[str, int], want: dict[str, int]) -> list[str]:
    bad = [f"{k} RTL {got.get(k)} != expected {want[k]}" for k in COUNTERS
           if got.get(k) != want[k]]
    return [f"counters: {'; '.join(bad)}"] if bad else []


def check_layer(cfg: HwConfig, case: LayerCase, prog: LayerProgram, res: Any) -> CaseReport:
    """Compare a layer's RTL result with numpy (bit-exact) and the model (every counter)."""
    m, n, k = case.shape
    est = case.estimate(cfg)
    problems = []
    if res.error:
        problems.append(f"stopped with error code {res.err_code}")
    y = read_y(cfg, prog, res.y_words)
    ref = case.expected_y(cfg)
    if not np.array_equal(y, ref):
        r, c = (int(v) for v in np.argwhere(y != ref)[0])
        problems.append(f"Y: {int((y != ref).sum())} of {y.size} elements differ, first "
                        f"Y[{r},{c}] RTL {int(y[r, c])} numpy {int(ref[r, c])}")
    problems += _counter_problems(res.counters, est.counters)
    if res.sim_cycles != res.counters["cycles"]:
        problems.append(f"cycles counter {res.counters['cycles']} != {res.sim_cycles} clock "
                        "cycles seen by the bench")
    counters = dict(res.counters)
    counters["dram_bytes"] = est.counters["dram_bytes"]
    energy = sum(float(v) for v in energy_breakdown(cfg, counters).values())
    return CaseReport(case.name, f"{m}x{n}->{k}", f"{case.mask.sum()}/{case.mask.size}",
                      res.counters["cycles"], est.cycles, energy / 1000.0, None, problems)


def check_error(cfg: HwConfig, case: ErrorCase, res: Any) -> CaseReport:
    """Compare a program's ending (error code, every counter, registers) with the expected."""
    problems = []
    want_err = case.err_code != 0
    if bool(res.error) != want_err or res.err_code != case.err_code:
        problems.append(f"ended with error={int(res.error)} code {res.err_code}, expected "
                        f"error={int(want_err)} code {case.err_code}")
    problems += _counter_problems(res.counters, case.counters)
    for r, v in case.regs.items():
        got = None if res.regs is None else res.regs[r]
        if got != v:
            problems.append(f"x{r} = {got}, expected {v}")
    p = case.program
    return CaseReport(case.name, f"{p.m}x{p.n}->{p.k}", f"err {case.err_code}",
                      res.counters["cycles"], case.counters["cycles"], None, None, problems)


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
