"""Run compiled layers on the RTL, on Icarus Verilog or Verilator, through cocotb.

:func:`run_programs` is the one entry point used by the benches, ``make sim`` and
``lsp-codesign verify``::

    from sim.harness import run_programs
    res = run_programs(cfg, [compile_layer(cfg, x, w, mask)], sim="verilator")
    y = read_y(cfg, prog, res[0].y_words)      # (M, K) int32, bit-exact with numpy
    res[0].counters["cycles"]                  # every counter of lsp_codesign.isa.COUNTERS

It generates (or reuses) the Verilog of the config (:func:`hw.build.build_verilog`), writes the
bench wrapper ``lsp_tb.v`` beside it, builds the simulator model once per config and simulator
(``build/<config-hash>/sim_<sim>/``, reused while its sources are unchanged), and runs every
program in ONE simulator invocation: the programs go to the cocotb test
(:mod:`sim.cocotb_engine`) in a job file of a fresh run directory, the results come back in a
results file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cocotb_tools import runner as cocotb_runner

from hw.build import REPO_ROOT, BuildResult, build_verilog, locked, write_if_changed
from lsp_codesign.compiler import LayerProgram
from lsp_codesign.config import HwConfig
from lsp_codesign.cycle_model import gemm_counters
from lsp_codesign.errors import LspError
from lsp_codesign.isa import COUNTERS, Instr, encode

__all__ = [
    "RtlResult", "run_programs", "build_simulator", "SimBuild", "SIMULATORS", "TB_TOP",
    "SimulatorError", "SimulatorNotFound", "SimulatorBuildError", "SimulationFailed",
    "WatchdogTimeout", "ProgramError", "testbench_verilog", "default_watchdog_cycles",
    "check_simulator",
]

SIMULATORS = ("icarus", "verilator")
TB_TOP = "lsp_tb"
PERIOD_NS = 10
MEMORY_ORDER = ("imem", "xmem", "wmem", "idx", "ymem")
_GEMM_WORD = encode(Instr("lsp.gemm"))
_TOOLS = {"icarus": ("iverilog", "vvp"), "verilator": ("verilator", "make", "g++")}
# Amaranth's Verilog relies on implicit width extension; Verilator must not treat it as fatal.
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-WIDTH", "-Wno-UNOPTFLAT", "-Wno-CASEINCOMPLETE",
                  "-Wno-UNSIGNED", "-Wno-CMPCONST", "-O3", "--x-assign", "fast",
                  "--x-initial", "fast", "--noassert")
_run_ids = itertools.count()
VERILATOR_STAMP = "lsp_build_stamp.json"


class SimulatorError(LspError):
    """The RTL simulation could not produce results (the message names simulator and layer)."""


class SimulatorNotFound(SimulatorError):
    """The requested simulator is not installed (run ./scripts/setup.sh)."""


class SimulatorBuildError(SimulatorError):
    """The simulator failed to compile the generated Verilog."""


class SimulationFailed(SimulatorError):
    """The simulator stopped without results for every program."""


class WatchdogTimeout(SimulatorError):
    """A program did not raise ``done`` within its watchdog limit."""


class ProgramError(LspError, ValueError):
    """A program does not fit the engine's memories (names the program, memory and address)."""


@dataclass
class RtlResult:
    """What one program did on the RTL.

    Attributes
    ----------
    y_words : list[int]
        The program's ``y_words`` YMEM words from ``y_base``, as unsigned integers
        (:func:`lsp_codesign.compiler.read_y` turns them into the (M, K) result).
    counters : dict[str, int]
        Every hardware counter, keyed by :data:`lsp_codesign.isa.COUNTERS`.
    error : bool
        The run stopped on an error.
    err_code : int
        Its cause, numbered as :data:`lsp_codesign.isa.ERRORS` (0: none).
    wall_s : float
        Wall time from ``start`` to ``done`` (the engine running on its own).
    name : str
        The program's name.
    sim_cycles : int
        Clock cycles from the edge that sampled ``start`` to the one that raised ``done``,
        measured from simulation time (equal to ``counters["cycles"]``).
    load_s, read_s : float
        Wall time of the bench's loading before, and reading back after, the run.
    regs : list[int] or None
        x0..x31 after the run, when requested.
    """

    y_words: list[int]
    counters: dict[str, int]
    error: bool
    err_code: int
    wall_s: float
    name: str = ""
    sim_cycles: int = 0
    load_s: float = 0.0
    read_s: float = 0.0
    regs: list[int] | None = field(default=None, repr=False)


# ---- simulator builds ---------------------------------------------------------------------


def _venv_bin_on_path() -> None:
    """Put the running interpreter's bin directory on PATH (where the set-up links verilator).

    Callers such as ``.venv/bin/python -m pytest`` need not activate the venv first.
    """
    bindir = os.path.dirname(sys.executable)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if bindir not in parts:
        os.environ["PATH"] = os.pathsep.join([bindir, *parts])


def check_simulator(sim: str) -> None:
    """Raise :class:`SimulatorNotFound` (or a ValueError naming ``sim``) if it cannot run."""
    if sim not in SIMULATORS:
        raise SimulatorError(f"sim: expected one of {', '.join(SIMULATORS)}, got {sim!r}")
    _venv_bin_on_path()
    missing = [t for t in _TOOLS[sim] if shutil.which(t) is None]
    if missing:
        raise SimulatorNotFound(f"{sim}: {', '.join(missing)} not found on PATH; run "
                                "./scripts/setup.sh and put .venv/bin first on PATH")


def testbench_verilog(params: dict[str, Any]) -> str:
    """The bench wrapper ``lsp_tb``: the engine plus the simulation-only load/dump backdoor.

    ``tb_load[i]`` loads memory ``i`` (``host_sel`` numbering) from ``lsp_load_<mem>.hex`` at
    the next clock edge; ``tb_dump`` writes YMEM words ``tb_dump_lo..tb_dump_hi`` to
    ``lsp_dump_ymem.hex``. Both files are in the simulator's working directory.
    """
    top = params["top"]
    a = params["host"]["addr_bits"]
    w = params["host"]["word_bits"]
    cb = params["derived"]["counter_bits"]
    arrays = params["sram_arrays"]
    loads = "\n".join(
        f'        if (tb_load[{i}]) $readmemh("lsp_load_{n}.hex", dut.{arrays[n]});'
        for i, n in enumerate(MEMORY_ORDER))
    return f"""\
// Bench wrapper of {top} (config {params['config_hash']}), generated by sim/harness.py.
// The tb_* ports are a simulation-only backdoor to the SRAM arrays; see docs/rtl.md.
module {TB_TOP} (
    input  wire            clk,
    input  wire            rst,
    input  wire            start,
    output wire            running,
    output wire            done,
    output wire            error,
    output wire [2:0]      err_code,
    input  wire [2:0]      host_sel,
    input  wire [{a - 1}:0]     host_addr,
    input  wire [{w - 1}:0]   host_wdata,
    input  wire            host_we,
    output wire [{w - 1}:0]   host_rdata,
    input  wire [3:0]      ctr_sel,
    output wire [{cb - 1}:0]     ctr_value,
    input  wire [4:0]      reg_sel,
    output wire [31:0]     reg_value,
    input  wire [4:0]      tb_load,
    input  wire            tb_dump,
    input  wire [31:0]     tb_dump_lo,
    input  wire [31:0]     tb_dump_hi
);
    {top} dut (
        .clk(clk), .rst(rst), .start(start), .running(running), .done(done),
        .error(error), .err_code(err_code), .host_sel(host_sel), .host_addr(host_addr),
        .host_wdata(host_wdata), .host_we(host_we), .host_rdata(host_rdata),
        .ctr_sel(ctr_sel), .ctr_value(ctr_value), .reg_sel(reg_sel), .reg_value(reg_value)
    );
    always @(posedge clk) begin
{loads}
        if (tb_dump) $writememh("lsp_dump_ymem.hex", dut.{arrays['ymem']}, tb_dump_lo, tb_dump_hi);
    end
endmodule
"""


def _importable_repo() -> None:
    """Make this repository importable in the simulator process.

    cocotb's runners give the simulator process ``PYTHONPATH`` = this process's ``sys.path``;
    an empty entry there (the current directory) would point at the run directory, so the
    repository root goes in as an absolute path.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def _new_runner(sim: str) -> Any:
    """A cocotb runner for ``sim`` whose own log lines stay in the build / run logs."""
    runner = cocotb_runner.Verilator() if sim == "verilator" else cocotb_runner.Icarus()
    runner.log.setLevel(logging.ERROR)
    return runner


def _stamp_matches(build_dir: Path, digest: str) -> bool:
    """A Verilator model in ``build_dir`` was built from sources and arguments with ``digest``."""
    try:
        stamp = json.loads((build_dir / VERILATOR_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("digest") == digest and (build_dir / TB_TOP).is_file()


def _verilator_digest(sources: Sequence[Path], args: Sequence[str]) -> str:
    version = subprocess.run(["verilator", "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256(version.encode())
    for src in sources:
        h.update(Path(src).read_bytes())
    for arg in args:
        h.update(arg.encode() + b"\0")
    return h.hexdigest()


@dataclass
class SimBuild:
    """A simulator model of one configuration, ready to run.

    Attributes
    ----------
    sim : str
        ``icarus`` or ``verilator``.
    hw : hw.build.BuildResult
        The generated Verilog.
    testbench : pathlib.Path
        The wrapper ``lsp_tb.v``.
    directory : pathlib.Path
        The simulator's build directory (``<config dir>/sim_<sim>``).
    reused : bool
        Nothing had to be compiled.
    seconds : float
        Wall time of generation and build.
    """

    sim: str
    hw: BuildResult
    testbench: Path
    directory: Path
    reused: bool
    seconds: float
    runner: Any = field(repr=False, default=None)


def build_simulator(cfg: HwConfig, *, sim: str = "verilator", build_root: Path | None = None,
                    progress: bool = False) -> SimBuild:
    """Generate the Verilog of ``cfg`` and build the ``sim`` model of it, reusing both.

    Raises
    ------
    SimulatorNotFound
        ``sim`` is not installed.
    SimulatorBuildError
        The simulator could not compile the Verilog (the message holds the log's end).
    """
    check_simulator(sim)
    t0 = time.perf_counter()
    hw = build_verilog(cfg, build_root=build_root)
    params = hw.load_params()
    tb = hw.directory / f"{TB_TOP}.v"
    write_if_changed(tb, testbench_verilog(params))
    sim_dir = hw.directory / f"sim_{sim}"
    sources = [*hw.sources, tb]
    timescale = ("1ns", "1ps")
    log = sim_dir / "build.log"
    runner = _new_runner(sim)
    build_args = list(VERILATOR_ARGS) if sim == "verilator" else []
    digest = _verilator_digest(sources, [*build_args, *timescale]) if sim == "verilator" else ""
    with locked(hw.directory / f".sim_{sim}.lock"):
        sim_dir.mkdir(parents=True, exist_ok=True)
        if sim == "verilator":
            reused = _stamp_matches(sim_dir, digest)
        else:
            reused = not cocotb_runner.outdated(sim_dir / "sim.vvp", sources)
        if progress and not reused:
            what = "Verilator model (one-time, ~30-60 s)" if sim == "verilator" else \
                "Icarus model"
            print(f"[rtl] building the {what} for {cfg.block_str} in {sim_dir}",
                  file=sys.stderr, flush=True)
        if not reused:
            (sim_dir / VERILATOR_STAMP).unlink(missing_ok=True)
            try:
                runner.build(sources=sources, hdl_toplevel=TB_TOP, build_dir=sim_dir,
                             build_args=build_args, timescale=timescale, log_file=log)
            except (RuntimeError, SystemExit, OSError) as exc:
                raise SimulatorBuildError(
                    f"{sim}: building {cfg.block_str} ({hw.directory}) failed: {exc}\n"
                    f"{_tail(log)}") from None
            if sim == "verilator":
                (sim_dir / VERILATOR_STAMP).write_text(json.dumps({"digest": digest}) + "\n")
    return SimBuild(sim=sim, hw=hw, testbench=tb, directory=sim_dir, reused=reused,
                    seconds=time.perf_counter() - t0, runner=runner)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join(text[-lines:])


# ---- jobs -----------------------------------------------------------------------------------


def default_watchdog_cycles(cfg: HwConfig, prog: LayerProgram) -> int:
    """A cycle limit twice the model's prediction for the program (plus slack).

    Each ``lsp.gemm`` word counts as one GEMM of the layer's shape and NNZ, so the bound holds
    for the compiler's programs and for variants of them; pass ``watchdog_cycles`` to
    :func:`run_programs` for anything else.
    """
    gemms = max(1, sum(1 for w in prog.words if w == _GEMM_WORD))
    busy = gemm_counters(cfg, prog.mt, prog.packed.grid.kb, prog.nnz)["busy"]
    return 2 * (2 * len(prog.words) + gemms * int(busy)) + 1000


def _program_name(prog: LayerProgram, i: int) -> str:
    name = prog.extra.get("name") if isinstance(prog.extra, dict) else None
    shape = f"{prog.m}x{prog.n}->{prog.k}"
    return f"{name} ({shape})" if name else f"program {i} ({shape})"


def _image(cfg: HwConfig, name: str, mem: str, items: Any) -> list[list[int]]:
    spec = cfg.memories[mem]
    out = []
    for addr, word in items:
        if isinstance(addr, bool) or not isinstance(addr, int) or not 0 <= addr < spec.depth:
            raise ProgramError(f"{name}: {mem.upper()} address {addr!r} is outside 0.."
                               f"{spec.depth - 1}")
        if isinstance(word, bool) or not isinstance(word, int) or \
                not 0 <= word < (1 << spec.word_bits):
            raise ProgramError(f"{name}: {mem.upper()}[{addr}] = {word!r} is not an unsigned "
                               f"{spec.word_bits}-bit word")
        out.append([addr, word])
    return out


def _job_program(cfg: HwConfig, prog: LayerProgram, i: int, watchdog: int | None,
                 read_regs: bool) -> dict[str, Any]:
    if not isinstance(prog, LayerProgram):
        raise ProgramError(f"program {i}: expected a LayerProgram (compile_layer), "
                           f"got {type(prog).__name__}")
    name = _program_name(prog, i)
    if len(prog.words) > cfg.memories["imem"].depth:
        raise ProgramError(f"{name}: {len(prog.words)} instructions exceed IMEM "
                           f"({cfg.memories['imem'].depth} words)")
    ymem = cfg.memories["ymem"]
    if prog.y_base < 0 or prog.y_base + prog.y_words > ymem.depth:
        raise ProgramError(f"{name}: Y words {prog.y_base}..{prog.y_base + prog.y_words - 1} "
                           f"are outside YMEM (0..{ymem.depth - 1})")
    images = {
        "imem": _image(cfg, name, "imem", enumerate(prog.words)),
        "xmem": _image(cfg, name, "xmem", prog.xmem.items()),
        "wmem": _image(cfg, name, "wmem", prog.wmem.items()),
        "idx": _image(cfg, name, "idx", prog.idx.items()),
    }
    limit = watchdog if watchdog is not None else default_watchdog_cycles(cfg, prog)
    return {"name": name, "images": images, "y_base": prog.y_base, "y_words": prog.y_words,
            "watchdog_cycles": int(limit), "read_regs": bool(read_regs)}


def run_programs(cfg: HwConfig, programs: Sequence[LayerProgram], *, sim: str = "verilator",
                 build_root: Path | None = None, progress: bool = False,
                 host_port: bool = False, watchdog_cycles: int | None = None,
                 read_regs: bool = False, keep_run_dir: bool = False) -> list[RtlResult]:
    """Run compiled layers on the RTL in one simulator invocation.

    Parameters
    ----------
    cfg : HwConfig
        The ``block_sparse`` configuration the programs were compiled for.
    programs : list of LayerProgram
        From :func:`lsp_codesign.compiler.compile_layer` (or variants of them). They run one
        after the other on one engine; memories keep their contents between programs.
    sim : {"verilator", "icarus"}
        The simulator.
    build_root : pathlib.Path, optional
        Parent of ``<config-hash>/`` (default ``build/`` of the repository, or
        ``$LSP_BUILD_ROOT``).
    progress : bool
        Print one line per program (and build notices) to stderr. The simulator's own output
        always goes to ``sim.log`` in the run directory (kept when something fails).
    host_port : bool
        Load the memories and read Y through the engine's host port, one word per cycle,
        instead of the simulation backdoor (``$readmemh`` / ``$writememh``).
    watchdog_cycles : int, optional
        Cycle limit of every program (default :func:`default_watchdog_cycles` per program).
    read_regs : bool
        Also read x0..x31 after each program (:attr:`RtlResult.regs`).
    keep_run_dir : bool
        Keep the run directory (job, results, log, hex files) after a successful run; it is
        always kept after a failure. ``$LSP_KEEP_RUNS=1`` does the same.

    Returns
    -------
    list of RtlResult
        One per program, in order.

    Raises
    ------
    SimulatorNotFound, SimulatorBuildError, WatchdogTimeout, SimulationFailed, ProgramError
        All :class:`lsp_codesign.errors.LspError`; the message names the simulator and the
        program.
    """
    if not isinstance(cfg, HwConfig):
        raise ProgramError(f"run_programs needs an HwConfig, got {type(cfg).__name__}")
    check_simulator(sim)
    if watchdog_cycles is not None and (isinstance(watchdog_cycles, bool) or
                                        not isinstance(watchdog_cycles, int) or
                                        watchdog_cycles < 1):
        raise ProgramError(f"watchdog_cycles must be a positive integer, got "
                           f"{watchdog_cycles!r}")
    jobs = [_job_program(cfg, p, i, watchdog_cycles, read_regs)
            for i, p in enumerate(programs)]
    if not jobs:
        return []
    build = build_simulator(cfg, sim=sim, build_root=build_root, progress=progress)
    runs = build.hw.directory / "runs"
    run_dir = runs / f"{sim}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_run_ids)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    job_path, res_path, log = run_dir / "job.json", run_dir / "results.json", run_dir / "sim.log"
    progress_path = run_dir / "progress.log"
    job = {
        "sim": sim, "period_ns": PERIOD_NS, "host_port": bool(host_port),
        "progress_file": str(progress_path) if progress else None,
        "counters": list(COUNTERS),
        "word_bits": {n: cfg.memories[n].word_bits for n in MEMORY_ORDER},
        "programs": jobs,
    }
    job_path.write_text(json.dumps(job))
    env = {"LSP_SIM_JOB": str(job_path), "LSP_SIM_RESULTS": str(res_path)}
    tail = _ProgressTail(progress_path) if progress else None
    _importable_repo()
    try:
        if tail:
            tail.start()
        build.runner.test(test_module="sim.cocotb_engine", hdl_toplevel=TB_TOP,
                          hdl_toplevel_lang="verilog",
                          build_dir=build.directory, test_dir=run_dir, extra_env=env,
                          timescale=("1ns", "1ps"), log_file=log)
    except (SystemExit, RuntimeError, OSError):
        pass  # the results file says what happened; checked below
    finally:
        if tail:
            tail.stop()
    results = _read_results(res_path)
    where = f"{sim} ({cfg.block_str}, run directory {run_dir})"
    if results and results[-1].get("watchdog"):
        rec = results[-1]
        raise WatchdogTimeout(f"{where}: watchdog: {rec['name']} did not raise done within "
                              f"{rec['sim_cycles']} cycles")
    if len(results) != len(jobs):
        raise SimulationFailed(f"{where}: the simulator stopped after {len(results)} of "
                               f"{len(jobs)} programs\n{_tail(log)}")
    out = [RtlResult(y_words=r["y_words"], counters=r["counters"], error=r["error"],
                     err_code=r["err_code"], wall_s=r["wall_s"], name=r["name"],
                     sim_cycles=r["sim_cycles"], load_s=r["load_s"], read_s=r["read_s"],
                     regs=r["regs"]) for r in results]
    if not keep_run_dir and os.environ.get("LSP_KEEP_RUNS", "") in ("", "0"):
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


class _ProgressTail(threading.Thread):
    """Copies the progress lines the cocotb test appends to a file onto our stderr."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.done = threading.Event()
        self.offset = 0

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.flush()

    def flush(self) -> None:
        try:
            with open(self.path) as fh:
                fh.seek(self.offset)
                text = fh.read()
        except OSError:
            return
        end = text.rfind("\n") + 1
        if end:
            sys.stderr.write(text[:end])
            sys.stderr.flush()
            self.offset += end

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.flush()


def _read_results(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []
