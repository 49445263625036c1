"""Fuzzing: random and mutated programs on a small engine; the ISS and the RTL (Icarus) must end
every one of them the same way: same error code, every counter, every register, the same Y.

Programs start from compiled layers and get random instruction words, random legal instructions,
random tile counts, corrupt descriptor fields, corrupt index entries, random DRAM beats or no
``lsp.halt`` (hypothesis seeds the draws, derandomized so CI is repeatable). All programs of a test run in one
simulator invocation, each from power-up state (the bench clears the SRAMs and the DRAM).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lsp_codesign.compiler import compile_layer
from lsp_codesign.isa import COUNTERS, OPS, Instr, encode, li
from lsp_codesign.iss import Memories, run_iss
from sim.cases import _index_entry_patch, named_program, patch_descriptor, patch_dram_words
from sim.harness import SimulatorNotFound, check_simulator, run_programs
from tests.conftest import tiny_config

pytestmark = [pytest.mark.rtl]

CFG = tiny_config("4x4", 4, beat=16, latency=6, dram_mib=1 / 64)     # 1024 beats of DRAM
MUTATIONS = ("none", "random-words", "legal-instruction", "tile-count", "descriptor",
             "index", "dram-beat", "no-halt")


def need_icarus() -> None:
    try:
        check_simulator("icarus")
    except SimulatorNotFound as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the RTL fuzzing: {exc}")
        pytest.skip(str(exc))


def program(rnd) -> "LayerProgram":
    """A compiled layer with one random mutation of its program or DRAM image (``rnd``: a
    ``random.Random`` that hypothesis seeds)."""
    m, n, k = rnd.randint(1, 12), rnd.randint(1, 14), rnd.randint(1, 14)
    rng = np.random.default_rng(rnd.getrandbits(32))
    x = rng.integers(-128, 128, (m, n)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    mask = rng.random((-(-k // 4), -(-n // 4))) < rnd.random()
    prog = compile_layer(CFG, x, w, mask, name="fuzz")
    kind = rnd.choice(MUTATIONS)
    words, dram = list(prog.words), dict(prog.dram)
    word32 = lambda: rnd.getrandbits(32)                     # noqa: E731
    if kind == "random-words":
        for _ in range(rnd.randint(1, 3)):
            words[rnd.randrange(len(words))] = word32()
    elif kind == "legal-instruction":
        op = rnd.choice(OPS)
        new = [Instr(op.mnemonic, **{name: rnd.randrange(32) for name in op.operands})]
        if rnd.random() < 0.5:
            new = li(rnd.randint(1, 31), word32()) + new
        at = rnd.randrange(len(words))
        words[at:at + len(new)] = [encode(i) for i in new]
        words = words[:CFG.memories["imem"].depth]
    elif kind == "tile-count":
        words[2:4] = [encode(i) for i in li(11, rnd.randint(0, 300))]
    elif kind == "descriptor":
        field = rnd.choice(["flags", "tt", "kg", "ng", "r", "nnz", "x", "idx", "y", "w",
                            "wlen"])
        value = word32() if rnd.random() < 0.5 else rnd.randint(0, 40)
        dram = patch_descriptor(CFG, prog, rnd.randrange(prog.n_tiles), **{field: value})
    elif kind == "index":
        swaps = np.nonzero(prog.plan.swap_w)[0]
        dram = _index_entry_patch(CFG, prog, int(rnd.choice(list(swaps))), rnd.randint(0, 12),
                                  rnd.randint(0, 65535))
    elif kind == "no-halt":                                  # runs off the end of IMEM
        words = words[:-1] + [encode(Instr("lsp.fence"))] * (CFG.memories["imem"].depth -
                                                              len(words) + 1)
    elif kind == "dram-beat":
        dram = patch_dram_words(CFG, prog, rnd.randint(0, max(prog.dram)), rnd.randint(0, 3),
                                word32())
    return named_program(prog, f"{kind}-{len(words)}", words=words, dram=dram)


def check_agreement(progs) -> None:
    iss = [run_iss(CFG, Memories(imem=dict(enumerate(p.words)), dram=dict(p.dram)))
           for p in progs]
    limit = 2 * max(r.counters["cycles"] for r in iss) + 2000
    rtl = run_programs(CFG, progs, sim="icarus", read_regs=True, clear=True,
                       watchdog_cycles=limit)
    codes = set()
    for p, a, b in zip(progs, iss, rtl):
        where = p.extra["name"]
        assert (bool(b.error), b.err_code) == (a.error, a.err_code), where
        assert b.counters == {c: a.counters[c] for c in COUNTERS}, where
        assert b.regs == a.regs, where
        assert b.y_words == a.y_words(p.y_base, p.y_words), where
        codes.add(a.err_code)
    return codes


# one example (one simulator run), always the same, and no shrinking: a failure names the program
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                max_examples=1, phases=[Phase.explicit, Phase.generate])


@settings(**SETTINGS)
@given(st.randoms(use_true_random=True))
def test_iss_and_rtl_agree_on_random_programs(rnd):
    need_icarus()
    codes = check_agreement([program(rnd) for _ in range(50)])
    assert len(codes) >= 4          # the mutations reach several endings, not only one


@pytest.mark.slow
@settings(**SETTINGS)
@given(st.randoms(use_true_random=True))
def test_iss_and_rtl_agree_on_many_random_programs(rnd):
    need_icarus()
    assert len(check_agreement([program(rnd) for _ in range(400)])) == 6   # every ending
