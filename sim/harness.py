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

import contextlib
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
from sim.tb import write_hex
from lsp_codesign.compiler import LayerProgram
from lsp_codesign.config import HwConfig
from lsp_codesign.cycle_model import estimate_layer
from lsp_codesign.errors import LspError
from lsp_codesign.isa import COUNTERS

__all__ = [
    "RtlResult", "run_programs", "build_simulator", "SimBuild", "SIMULATORS", "TB_TOP",
    "SimulatorError", "SimulatorNotFound", "SimulatorBuildError", "SimulationFailed",
    "WatchdogTimeout", "ProgramError", "testbench_verilog", "default_watchdog_cycles",
    "check_simulator", "waves_path",
]

SIMULATORS = ("icarus", "verilator")
TB_TOP = "lsp_tb"
PERIOD_NS = 10
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
    """The bench wrapper ``lsp_tb``: the engine, the DRAM behind its port, and a backdoor.

    The DRAM is an ``lsp_sram`` of the config's depth, driven by the engine while it runs and
    by the bench port ``bd_*`` while it is idle. Simulation-only backdoor (``docs/rtl.md``):
    ``tb_load_imem`` / ``tb_load_dram`` load ``lsp_load_imem.hex`` / ``lsp_load_dram.hex`` at the
    next clock edge, ``tb_clear`` zeroes IMEM, every SRAM bank and the DRAM (power-up state),
    ``tb_dump`` writes DRAM
    beats ``tb_dump_lo..tb_dump_hi`` to ``lsp_dump_dram.hex`` (files in the working directory).
    """
    top = params["top"]
    pub = "/*verilator public_flat_rw*/"   # the ports cocotb reads and writes; nothing else
    ia = params["imem"]["addr_bits"]
    cb = params["derived"]["counter_bits"]
    bb, dd, da = (params["dram"][k] for k in ("beat_bits", "depth", "addr_bits"))
    clears = "\n".join(
        f"            for (i = 0; i < {a['depth']}; i = i + 1) dut.{a['path']}[i] = 0;"
        for name, a in params["sram_arrays"].items())
    return f"""\
// Bench wrapper of {top} (config {params['config_hash']}), generated by sim/harness.py:
// the engine, the DRAM behind its port (lsp_sram, {dd} beats of {bb} bits), and the
// simulation-only tb_* backdoor (see docs/rtl.md).
module {TB_TOP} (
    input  wire            clk {pub},
    input  wire            start {pub},
    output wire            running {pub},
    output wire            done {pub},
    output wire            error {pub},
    output wire [2:0]      err_code {pub},
    input  wire [{ia - 1}:0]     imem_addr {pub},
    input  wire [31:0]     imem_wdata {pub},
    input  wire            imem_we {pub},
    input  wire [4:0]      ctr_sel {pub},
    output wire [{cb - 1}:0]     ctr_value {pub},
    input  wire [4:0]      reg_sel {pub},
    output wire [31:0]     reg_value {pub},
    input  wire [{da - 1}:0]     bd_addr {pub},
    input  wire [{bb - 1}:0]   bd_wdata {pub},
    input  wire            bd_we {pub},
    output wire [{bb - 1}:0]   bd_rdata {pub},
    input  wire            tb_load_imem {pub},
    input  wire            tb_load_dram {pub},
    input  wire            tb_clear {pub},
    input  wire            tb_dump {pub},
    input  wire [31:0]     tb_dump_lo {pub},
    input  wire [31:0]     tb_dump_hi {pub}
);
    // Reset for the first two cycles, and every input through a register: no combinational logic
    // of the engine depends on a port the simulator drives, so Verilator evaluates it once per
    // clock edge instead of at every change of an input. The bench drives ports one cycle early.
    reg [1:0] rst_count = 2'd2;
    wire rst = rst_count != 2'd0;
    reg start_q = 1'b0, imem_we_q = 1'b0, bd_we_q = 1'b0;
    reg [{ia - 1}:0] imem_addr_q = 0;
    reg [31:0] imem_wdata_q = 0;
    reg [{da - 1}:0] bd_addr_q = 0;
    reg [{bb - 1}:0] bd_wdata_q = 0;
    always @(posedge clk) begin
        if (rst) rst_count <= rst_count - 2'd1;
        start_q <= start;
        imem_addr_q <= imem_addr;
        imem_wdata_q <= imem_wdata;
        imem_we_q <= imem_we;
        bd_addr_q <= bd_addr;
        bd_wdata_q <= bd_wdata;
        bd_we_q <= bd_we;
    end
    wire [31:0] dram_addr;
    wire dram_re, dram_we;
    wire [{bb - 1}:0] dram_rdata, dram_wdata;
    {top} dut (
        .clk(clk), .rst(rst), .start(start_q), .running(running), .done(done),
        .error(error), .err_code(err_code), .imem_addr(imem_addr_q),
        .imem_wdata(imem_wdata_q), .imem_we(imem_we_q), .dram_addr(dram_addr), .dram_re(dram_re), .dram_we(dram_we),
        .dram_rdata(dram_rdata), .dram_wdata(dram_wdata), .ctr_sel(ctr_sel),
        .ctr_value(ctr_value), .reg_sel(reg_sel), .reg_value(reg_value)
    );
    wire [{da - 1}:0] dram_a = running ? dram_addr[{da - 1}:0] : bd_addr_q;
    lsp_sram #(.WIDTH({bb}), .DEPTH({dd}), .ABITS({da})) dram (
        .clk(clk), .raddr(dram_a), .rdata(dram_rdata), .waddr(dram_a),
        .wdata(running ? dram_wdata : bd_wdata_q), .we(running ? dram_we : bd_we_q)
    );
    assign bd_rdata = dram_rdata;
    integer i;
    always @(posedge clk) begin
        if (tb_load_imem) $readmemh("lsp_load_imem.hex", dut.imem.mem);
        if (tb_load_dram) $readmemh("lsp_load_dram.hex", dram.mem);
        if (tb_clear) begin
{clears}
            for (i = 0; i < {dd}; i = i + 1) dram.mem[i] = 0;
        end
        if (tb_dump) $writememh("lsp_dump_dram.hex", dram.mem, tb_dump_lo, tb_dump_hi);
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


def _build_verilator(sources: Sequence[Path], build_dir: Path, args: Sequence[str],
                     timescale: tuple[str, str], log: Path, waves: bool = False) -> None:
    """Compile the Verilator model that cocotb's runner then runs (``runner.test``).

    The same command as cocotb's own Verilator build (its C++ ``main`` and VPI library, found
    through the public :mod:`cocotb_tools.config`), without ``--public-flat-rw``: that flag
    makes every signal writable from VPI, so Verilator re-evaluates all of the engine's logic
    on every call into the model, ~8x slower. The bench touches only the wrapper's ports,
    which the wrapper marks ``public_flat_rw`` itself. ``waves`` (``--trace`` in ``args``)
    builds the model with VCD tracing compiled in (``VM_TRACE=1``).
    """
    from cocotb_tools import config as cocotb_config

    libs = cocotb_config.libs_dir
    cmd = ["verilator", "-cc", "--exe", "-Mdir", str(build_dir), "--top-module", TB_TOP,
           "--vpi", "--prefix", "Vtop", "-o", TB_TOP, "-LDFLAGS",
           f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator", *args,
           "--timescale", "/".join(timescale),
           str(cocotb_config.share_dir / "lib" / "verilator" / "verilator.cpp"),
           *map(str, sources)]
    make = ["make", "-j", str(max(1, os.cpu_count() or 1)), "-C", str(build_dir), "-f",
            "Vtop.mk", f"VM_TRACE={int(waves)}"]
    with open(log, "w") as fh:
        for c in (cmd, make):
            fh.write("$ " + " ".join(c) + "\n")
            fh.flush()
            subprocess.run(c, stdout=fh, stderr=subprocess.STDOUT, check=True)


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
                    progress: bool = False, waves: bool = False) -> SimBuild:
    """Generate the Verilog of ``cfg`` and build the ``sim`` model of it, reusing both.

    ``waves`` builds a model that can record waveforms (Icarus with a ``$dumpfile`` module,
    Verilator with ``--trace``), in its own directory ``sim_<sim>_waves`` beside the fast one.

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
    sim_dir = hw.directory / (f"sim_{sim}_waves" if waves else f"sim_{sim}")
    sources = [*hw.sources, tb]
    timescale = ("1ns", "1ps")
    log = sim_dir / "build.log"
    runner = _new_runner(sim)
    build_args = [*VERILATOR_ARGS, *(["--trace"] if waves else [])] if sim == "verilator" else []
    digest = _verilator_digest(sources, [*build_args, *timescale]) if sim == "verilator" else ""
    with locked(hw.directory / f".{sim_dir.name}.lock"):
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
                if sim == "verilator":
                    _build_verilator(sources, sim_dir, build_args, timescale, log, waves)
                    (sim_dir / VERILATOR_STAMP).write_text(json.dumps({"digest": digest}) + "\n")
                else:
                    with _waves_env(waves):
                        runner.build(sources=sources, hdl_toplevel=TB_TOP, build_dir=sim_dir,
                                     timescale=timescale, waves=waves, log_file=log)
            except (RuntimeError, SystemExit, OSError, subprocess.CalledProcessError) as exc:
                raise SimulatorBuildError(
                    f"{sim}: building {cfg.block_str} ({hw.directory}) failed: {exc}\n"
                    f"{_tail(log)}") from None
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
    """A cycle limit twice the model's prediction for the compiled layer (plus slack).

    It holds for the compiler's programs and for variants of them that stop early; pass
    ``watchdog_cycles`` to :func:`run_programs` for anything else.
    """
    est = estimate_layer(cfg, prog.m, prog.n, prog.k, prog.packed.mask)
    return 2 * est.cycles + 1000


def _program_name(prog: LayerProgram, i: int) -> str:
    name = prog.extra.get("name") if isinstance(prog.extra, dict) else None
    shape = f"{prog.m}x{prog.n}->{prog.k}"
    return f"{name} ({shape})" if name else f"program {i} ({shape})"


def _check_words(name: str, what: str, items: Any, depth: int, bits: int) -> None:
    for addr, word in items:
        if isinstance(addr, bool) or not isinstance(addr, int) or not 0 <= addr < depth:
            raise ProgramError(f"{name}: {what} address {addr!r} is outside 0..{depth - 1}")
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word < (1 << bits):
            raise ProgramError(f"{name}: {what}[{addr}] = {word!r} is not an unsigned "
                               f"{bits}-bit word")


def _job_program(cfg: HwConfig, prog: LayerProgram, i: int, watchdog: int | None,
                 read_regs: bool, clear: bool, run_dir: Path) -> dict[str, Any]:
    """One program's entry of the job file; its DRAM image goes to a hex file beside it."""
    if not isinstance(prog, LayerProgram):
        raise ProgramError(f"program {i}: expected a LayerProgram (compile_layer), "
                           f"got {type(prog).__name__}")
    name = _program_name(prog, i)
    imem, dram = cfg.memories["imem"], cfg.dram
    if len(prog.words) > imem.depth:
        raise ProgramError(f"{name}: {len(prog.words)} instructions exceed IMEM "
                           f"({imem.depth} words)")
    _check_words(name, "IMEM", enumerate(prog.words), imem.depth, 32)
    _check_words(name, "DRAM", prog.dram.items(), dram.depth, dram.beat_bits)
    if prog.y_base < 0 or prog.y_base + prog.y_words > dram.depth:
        raise ProgramError(f"{name}: Y beats {prog.y_base}..{prog.y_base + prog.y_words - 1} "
                           f"are outside DRAM (0..{dram.depth - 1})")
    hex_name = f"dram_{i}.hex"
    write_hex(run_dir / hex_name, prog.dram.items(), dram.beat_bits)
    limit = watchdog if watchdog is not None else default_watchdog_cycles(cfg, prog)
    return {"name": name, "imem": [[a, w] for a, w in enumerate(prog.words)],
            "dram_hex": hex_name, "y_base": prog.y_base, "y_words": prog.y_words,
            "watchdog_cycles": int(limit), "read_regs": bool(read_regs), "clear": bool(clear)}


def run_programs(cfg: HwConfig, programs: Sequence[LayerProgram], *, sim: str = "verilator",
                 build_root: Path | None = None, progress: bool = False,
                 host_port: bool = False, watchdog_cycles: int | None = None,
                 read_regs: bool = False, keep_run_dir: bool = False,
                 clear: bool | Sequence[bool] = False,
                 waves: Path | None = None) -> list[RtlResult]:
    """Run compiled layers on the RTL in one simulator invocation.

    Parameters
    ----------
    cfg : HwConfig
        The ``block_sparse`` configuration the programs were compiled for.
    programs : list of LayerProgram
        From :func:`lsp_codesign.compiler.compile_layer` (or variants of them). They run one
        after the other on one engine; DRAM and SRAMs keep their contents between programs
        (each program's DRAM image is loaded over what is there).
    sim : {"verilator", "icarus"}
        The simulator.
    build_root : pathlib.Path, optional
        Parent of ``<config-hash>/`` (default ``build/`` of the repository, or
        ``$LSP_BUILD_ROOT``).
    progress : bool
        Print one line per program (and build notices) to stderr. The simulator's own output
        always goes to ``sim.log`` in the run directory (kept when something fails).
    host_port : bool
        Load IMEM through the engine's port and DRAM through the bench's DRAM port, and read Y
        back through it, one word per cycle, instead of the simulation backdoor
        (``$readmemh`` / ``$writememh``).
    watchdog_cycles : int, optional
        Cycle limit of every program (default :func:`default_watchdog_cycles` per program).
    read_regs : bool
        Also read x0..x31 after each program (:attr:`RtlResult.regs`).
    keep_run_dir : bool
        Keep the run directory (job, results, log, hex files) after a successful run; it is
        always kept after a failure. ``$LSP_KEEP_RUNS=1`` does the same.
    clear : bool or sequence of bool
        Zero every SRAM bank and the DRAM before each program (or before the programs flagged),
        through the backdoor, so it starts from power-up state as the ISS does.
    waves : pathlib.Path, optional
        Record every signal of the whole invocation to this file: FST on Icarus, VCD on
        Verilator (:func:`waves_path` gives the usual place). Uses a separate simulator build
        with tracing, and runs slower.

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
    if not programs:
        return []
    build = build_simulator(cfg, sim=sim, build_root=build_root, progress=progress,
                            waves=waves is not None)
    runs = build.hw.directory / "runs"
    run_dir = runs / f"{sim}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_run_ids)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    try:
        clears = [bool(clear)] * len(programs) if isinstance(clear, bool) else list(clear)
        if len(clears) != len(programs):
            raise ProgramError(f"clear: {len(clears)} flags for {len(programs)} programs")
        jobs = [_job_program(cfg, p, i, watchdog_cycles, read_regs, c, run_dir)
                for i, (p, c) in enumerate(zip(programs, clears))]
    except ProgramError:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    job_path, res_path, log = run_dir / "job.json", run_dir / "results.json", run_dir / "sim.log"
    progress_path = run_dir / "progress.log"
    job = {
        "sim": sim, "period_ns": PERIOD_NS, "host_port": bool(host_port),
        "progress_file": str(progress_path) if progress else None,
        "counters": list(COUNTERS), "beat_bits": cfg.dram.beat_bits,
        "programs": jobs,
    }
    job_path.write_text(json.dumps(job))
    env = {"LSP_SIM_JOB": str(job_path), "LSP_SIM_RESULTS": str(res_path)}
    tail = _ProgressTail(progress_path) if progress else None
    _importable_repo()
    try:
        if tail:
            tail.start()
        with _waves_env(waves is not None):
            build.runner.test(test_module="sim.cocotb_engine", hdl_toplevel=TB_TOP,
                              hdl_toplevel_lang="verilog",
                              build_dir=build.directory, test_dir=run_dir, extra_env=env,
                              timescale=("1ns", "1ps"), log_file=log, **_wave_args(sim, waves))
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


def waves_path(cfg: HwConfig, name: str, sim: str, build_root: Path | None = None) -> Path:
    """``build/<config-hash>/waves/<name>-<sim>.fst`` (Icarus) or ``.vcd`` (Verilator)."""
    from hw.build import default_build_root

    root = Path(build_root) if build_root is not None else default_build_root()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return root.resolve() / cfg.config_hash() / "waves" / \
        f"{safe}-{sim}.{'fst' if sim == 'icarus' else 'vcd'}"


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _waves_env(waves: bool):
    """Hold cocotb's ``WAVES`` environment variable at ``waves`` while the runner reads it.

    cocotb lets ``WAVES`` override the ``waves`` argument of ``build``/``test``; a ``WAVES=0``
    left in the caller's environment (``make`` exports it) would silently drop a waveform that
    was asked for, and ``WAVES=1`` would slow every run. The ``waves`` argument decides.
    """
    with _ENV_LOCK:
        old = os.environ.get("WAVES")
        os.environ["WAVES"] = "1" if waves else "0"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("WAVES", None)
            else:
                os.environ["WAVES"] = old


def _wave_args(sim: str, waves: Path | None) -> dict[str, Any]:
    """``runner.test`` arguments that record waveforms to ``waves`` (none without)."""
    if waves is None:
        return {}
    Path(waves).parent.mkdir(parents=True, exist_ok=True)
    Path(waves).unlink(missing_ok=True)
    if sim == "icarus":  # the dump module cocotb compiles in reads this plusarg
        return {"waves": True, "plusargs": [f"+dumpfile_path={waves}"]}
    return {"waves": True, "test_args": ["--trace-file", str(waves)]}


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
