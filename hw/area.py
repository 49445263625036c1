"""Cells, flip-flops and an area estimate of the generated engine (``make area BLOCK=16x16``,
which runs ``lsp-codesign area``).

The logic is synthesised by Debian's ``yosys`` (installed by ``scripts/setup.sh``; not
Amaranth's builtin one, which has no ``synth``/``abc``) from ``build/<config-hash>/
lsp_engine.v``; the SRAMs are not synthesised. The flow (:data:`SCRIPT`):

0. :func:`dedupe_modules`: Amaranth writes one Verilog module per instance, so the BK
   processing elements are BK identical modules under different names. Each set of identical
   modules is kept once and every instance points to it;
1. ``read_verilog -lib lsp_sram.v``: the SRAM macro is a black box, so the memories stay
   ``lsp_sram`` instances instead of becoming millions of flip-flops;
2. ``synth`` (hierarchical: each module is optimised and mapped on its own, once) to Yosys's
   internal gate library (``$_AND_``, ``$_XOR_``, ``$_MUX_``, ``$_SDFFE_PP0P_`` ...);
3. ``dfflegalize -cell $_DFF_P_ 01`` and ABC (:data:`ABC_SCRIPT`): every flip-flop becomes a
   plain D flip-flop (enables and resets as gates) and the logic is mapped to NAND, NOR and NOT,
   the cells Yosys's CMOS transistor estimate knows (``stat -tech cmos``: NOT 2, NAND/NOR 4,
   D flip-flop 16 transistors).

The design's totals are each module's cells times its instances (:func:`hierarchy_totals`),
checked against Yosys's own hierarchical estimate. Two choices, measured in ``docs/rtl.md``:
ABC maps for area (``map -a`` after AIG rewriting), because the figure is an area; Yosys's
default ABC script maps for delay, about 50% more transistors on a processing element, and
spends minutes per element in SAT sweeping of its multipliers. And the hierarchy is kept, so
identical modules are synthesised once: a flat synthesis of the 8x8 engine gives 1.5% fewer
transistors (it optimises across module boundaries) at 2.4 times the memory, and its cost grows
with the whole array rather than with one processing element.

Each ``lsp_sram`` instance is counted from its own parameters (``WIDTH x DEPTH`` bits, which
the generator takes from the config) at :data:`SRAM_TRANSISTORS_PER_BIT` transistors per bit (a
6T cell; decoders and sense amplifiers not counted). An area at 45 nm, the node of the energy
figures, is derived with two published cell sizes: logic in NAND2 equivalents (4 transistors)
of :data:`NAND2_UM2`, SRAM at :data:`SRAM_BIT_UM2` per bit. These are cell areas without
wiring, placement utilisation or SRAM periphery: a lower bound for comparing blocks, not a
layout.

The result is kept as ``area.json`` beside the Verilog and reused while the Verilog, the flow
and the Yosys version are unchanged; :func:`known_area` gives it to ``lsp-codesign report``
while the generator digest it records is today's (a reuse with identical Verilog renews it).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lsp_codesign.config import HwConfig
from lsp_codesign.errors import LspError

from .build import REPO_ROOT, BuildResult, build_verilog, default_build_root, generator_digest

__all__ = ["AREA_NAME", "ABC_SCRIPT", "FLOW", "SCRIPT", "AreaError", "synthesize", "known_area",
           "sram_instances", "dedupe_modules", "hierarchy_totals", "NAND2_UM2", "SRAM_BIT_UM2",
           "SRAM_TRANSISTORS_PER_BIT"]

AREA_NAME = "area.json"
YOSYS = "yosys"
SRAM_TRANSISTORS_PER_BIT = 6
TRANSISTORS_PER_NAND2 = 4
#: NanGate 45 nm Open Cell Library, NAND2_X1: 0.57 um x 1.4 um.
NAND2_UM2 = 0.798
#: A 45 nm 6T SRAM bit cell (Intel's 45 nm high-k metal-gate process, IEDM 2007).
SRAM_BIT_UM2 = 0.346
CMOS_TRANSISTORS = {"$_NOT_": 2, "$_NAND_": 4, "$_NOR_": 4, "$_DFF_P_": 16}
#: ABC's script: AIG rewriting and choices, then a mapping for area (not for delay).
ABC_SCRIPT = "+strash;dc2;dch,-f;map,-a"
#: Names this flow in each record: a record of another flow is synthesised again.
FLOW = "dedupe+synth+abc-area/1"
SCRIPT = """\
read_verilog -lib {sram}
read_verilog {verilog}
synth -top {top}
tee -q -o {generic} stat -json
dfflegalize -cell $_DFF_P_ 01
abc -g cmos2 -script {abc}
opt_clean
tee -q -o {cmos} stat -json -tech cmos
"""
_SRAM_RE = re.compile(r"lsp_sram\s*#\((?P<params>[^;]*?)\)\s*(?P<name>\\?\S+)\s*\(", re.S)
_PARAM_RE = re.compile(r"\.(ABITS|DEPTH|WIDTH)\((?:\d+'d)?(\d+)\)")
# A module: its attribute lines, ``module NAME (`` (an escaped name ends at a space), its body.
_MODULE_RE = re.compile(r"^((?:\(\*[^\n]*\*\)\n)*)module (\\\S+ |[A-Za-z_][\w$]*)\s*\((.*?)"
                        r"^endmodule\n", re.S | re.M)
# An instance: indentation, the module's name, the instance's name and its opening parenthesis.
_INSTANCE_RE = re.compile(r"^(\s+)(\\\S+|[A-Za-z_][\w$]*)(\s+[^\s(]+\s*\()", re.M)
# Yosys 0.23 writes its hierarchy table ("  name   count") into ``stat -json``'s output.
_HIERARCHY_LINE_RE = re.compile(r'^\s+[^\s"{}\[\]]\S*\s+\d+\s*$', re.M)


class AreaError(LspError):
    """Synthesis could not run or gave something unreadable (names the tool and the file)."""


def _yosys_version() -> str:
    exe = shutil.which(YOSYS)
    if exe is None:
        raise AreaError(f"{YOSYS} not found on PATH: install Debian's yosys "
                        "(./scripts/setup.sh, or apt-get install yosys)")
    out = subprocess.run([exe, "-V"], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def sram_instances(verilog_text: str) -> dict[str, dict[str, int]]:
    """``{instance: {"width", "depth", "bits"}}`` of every ``lsp_sram`` in the Verilog."""
    out = {}
    for m in _SRAM_RE.finditer(verilog_text):
        params = {k.lower(): int(v) for k, v in _PARAM_RE.findall(m["params"])}
        if "width" not in params or "depth" not in params:
            raise AreaError(f"lsp_sram instance {m['name']}: no WIDTH/DEPTH parameters")
        name = m["name"].lstrip("\\")
        out[name] = {"width": params["width"], "depth": params["depth"],
                     "bits": params["width"] * params["depth"]}
    return out


def dedupe_modules(verilog_text: str) -> tuple[str, dict[str, str]]:
    """The Verilog with each set of identical modules kept once, and ``{dropped: kept}``.

    Two modules are identical when everything after their name (ports, body) is the same text.
    Instances of a dropped module are renamed to the kept one, which is the first in the file.
    """
    first: dict[str, str] = {}
    alias: dict[str, str] = {}
    for m in _MODULE_RE.finditer(verilog_text):
        name = m[2].strip()
        if m[3] in first:
            alias[name] = first[m[3]]
        else:
            first[m[3]] = name
    if not alias:
        return verilog_text, alias
    text = _MODULE_RE.sub(lambda m: "" if m[2].strip() in alias else m[0], verilog_text)

    def rename(m: re.Match) -> str:
        kept = alias.get(m[2])
        if kept is None:
            return m[0]
        return m[1] + kept + m[3]          # m[3] starts with the space an escaped name needs
    return _INSTANCE_RE.sub(rename, text), alias


def hierarchy_totals(modules: dict[str, dict], top: str) -> dict[str, int]:
    """Cells by type of ``top`` with every submodule instance replaced by its own cells.

    ``modules`` is ``stat -json``'s ``modules`` (names with Yosys's leading backslash; a cell
    type that names a module has none). Black boxes (``lsp_sram``) stay as cells.
    """
    memo: dict[str, dict[str, int]] = {}

    def walk(name: str, path: tuple[str, ...]) -> dict[str, int]:
        if name in path:
            raise AreaError(f"yosys statistics: module {name} instantiates itself")
        if name not in memo:
            out: dict[str, int] = {}
            for cell, n in modules[name].get("num_cells_by_type", {}).items():
                sub = "\\" + cell.lstrip("\\")
                parts = walk(sub, path + (name,)) if sub in modules else {cell: 1}
                for k, v in parts.items():
                    out[k] = out.get(k, 0) + int(n) * v
            memo[name] = out
        return memo[name]
    key = "\\" + top.lstrip("\\")
    if key not in modules:
        raise AreaError(f"yosys statistics: no module {top}")
    return walk(key, ())


def _cells(stat_file: Path, top: str) -> tuple[dict[str, int], dict[str, Any], dict[str, Any]]:
    """The design's cells by type (through the hierarchy), Yosys's own design summary and
    the modules."""
    try:
        doc = json.loads(_HIERARCHY_LINE_RE.sub("", stat_file.read_text()))
        modules = dict(doc["modules"])
        return hierarchy_totals(modules, top), dict(doc["design"]), modules
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AreaError(f"yosys statistics {stat_file}: unreadable ({exc})") from None


def _run_yosys(hw: BuildResult, work: Path, progress: bool) -> tuple[tuple, tuple]:
    generic, cmos = work / "generic.json", work / "cmos.json"
    verilog = work / "lsp_engine_deduped.v"
    verilog.write_text(dedupe_modules(hw.verilog.read_text())[0])
    script = SCRIPT.format(sram=hw.sram_model, verilog=verilog, top=hw.top, abc=ABC_SCRIPT,
                           generic=generic, cmos=cmos)
    (work / "area.ys").write_text(script)
    log = hw.directory / "area.log"
    with open(work / "stderr.txt", "w") as errf:
        proc = subprocess.Popen([YOSYS, "-q", "-l", str(log), "-s", str(work / "area.ys")],
                                stdout=subprocess.DEVNULL, stderr=errf)
        _follow(proc, log, f"yosys synth {hw.config.block_str}", progress)
    err = (work / "stderr.txt").read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join((err.strip() or log.read_text(errors="replace")).splitlines()[-8:])
        raise AreaError(f"yosys failed on {hw.verilog} (exit {proc.returncode}; log "
                        f"{log}):\n{tail}")
    return _cells(generic, hw.top), _cells(cmos, hw.top)


_PASS_RE = re.compile(r"^\d+(?:\.\d+)?\. Executing (.+?)\.?$", re.M)


def _follow(proc: subprocess.Popen, log: Path, desc: str, progress: bool) -> None:
    """Wait for ``proc``; with ``progress``, a bar with the elapsed time and the current pass."""
    if not progress:
        proc.wait()
        return
    from tqdm import tqdm

    with tqdm(desc=desc, bar_format="{desc}: {elapsed} {postfix}", file=sys.stderr) as bar:
        while proc.poll() is None:
            time.sleep(1.0)
            try:
                passes = _PASS_RE.findall(log.read_text(errors="replace"))
            except OSError:
                passes = []
            if passes:
                bar.set_postfix_str(passes[-1][:60])
            bar.update(0)


def _transistors(cells: dict[str, int], where: Path) -> int:
    unknown = sorted(set(cells) - set(CMOS_TRANSISTORS) - {"lsp_sram"})
    if unknown:
        raise AreaError(f"{where}: cells without a transistor count after mapping: "
                        f"{', '.join(unknown)}")
    return sum(CMOS_TRANSISTORS[k] * v for k, v in cells.items() if k != "lsp_sram")


def _parts(hw: BuildResult, modules: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Logic transistors of each unit the top module instantiates (and of its own glue)."""
    top = modules["\\" + hw.top]
    glue = {}
    parts = {}
    for cell, n in top.get("num_cells_by_type", {}).items():
        if "\\" + cell in modules:
            each = _transistors(hierarchy_totals(modules, cell), hw.verilog)
            unit = cell.removeprefix(hw.top + ".")
            parts[unit] = {"instances": int(n), "transistors": int(n) * each}
        else:
            glue[cell] = int(n)
    parts["(top-level logic)"] = {"instances": 1, "transistors": _transistors(glue, hw.verilog)}
    return dict(sorted(parts.items(), key=lambda kv: -kv[1]["transistors"]))


def _summary(hw: BuildResult, generic: tuple, cmos: tuple, srams: dict, yosys: str,
             seconds: float, verilog_sha: str) -> dict[str, Any]:
    by_type = {k: int(v) for k, v in generic[0].items() if k != "lsp_sram"}
    mapped = {k: int(v) for k, v in cmos[0].items() if k != "lsp_sram"}
    logic_t = _transistors(mapped, hw.verilog)
    sram_bits = sum(s["bits"] for s in srams.values())
    logic_um2 = logic_t / TRANSISTORS_PER_NAND2 * NAND2_UM2
    sram_um2 = sram_bits * SRAM_BIT_UM2
    cfg = hw.config
    return {
        "config_hash": cfg.config_hash(), "generator_digest": generator_digest(),
        "verilog_sha256": verilog_sha, "block": cfg.block_str, "tile_m": cfg.tile_m,
        "yosys": yosys, "flow": FLOW, "seconds": round(seconds, 1),
        "cells_by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
        "cells": sum(by_type.values()),
        "flip_flops": sum(v for k, v in by_type.items() if "DFF" in k or "DLATCH" in k),
        "cmos_cells": mapped, "logic_transistors": logic_t,
        "yosys_transistor_estimate": cmos[1].get("estimated_num_transistors"),
        "parts": _parts(hw, cmos[2]),
        "nand2_equivalents": logic_t / TRANSISTORS_PER_NAND2,
        "sram": srams, "sram_bits": sram_bits,
        "sram_transistors": sram_bits * SRAM_TRANSISTORS_PER_BIT,
        "total_transistors": logic_t + sram_bits * SRAM_TRANSISTORS_PER_BIT,
        "logic_mm2": logic_um2 / 1e6, "sram_mm2": sram_um2 / 1e6,
        "total_mm2": (logic_um2 + sram_um2) / 1e6,
        "per_unit": {"sram_transistors_per_bit": SRAM_TRANSISTORS_PER_BIT,
                     "nand2_um2": NAND2_UM2, "sram_bit_um2": SRAM_BIT_UM2,
                     "transistors_per_nand2": TRANSISTORS_PER_NAND2},
    }


def synthesize(cfg: HwConfig, *, build_root: str | Path | None = None, force: bool = False,
               progress: bool = True) -> dict[str, Any]:
    """The area record of ``cfg``'s engine (synthesised now, or reused from ``area.json``).

    Raises
    ------
    AreaError
        Yosys is missing or failed.
    """
    yosys = _yosys_version()
    hw = build_verilog(cfg, build_root=build_root)
    text = hw.verilog.read_text()
    sha = hashlib.sha256(text.encode()).hexdigest()
    record = hw.directory / AREA_NAME
    if not force:
        old = _read(record)
        if old and old.get("verilog_sha256") == sha and old.get("yosys") == yosys and \
                old.get("flow") == FLOW:
            if old.get("generator_digest") != generator_digest():  # same Verilog: still true
                old["generator_digest"] = generator_digest()
                _write(record, old)
            return old
    srams = sram_instances(text)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lsp-area-") as tmp:
        generic, cmos = _run_yosys(hw, Path(tmp), progress)
    doc = _summary(hw, generic, cmos, srams, yosys, time.perf_counter() - t0, sha)
    _write(record, doc)
    return doc


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def known_area(cfg: HwConfig, *, build_root: str | Path | None = None,
               tables: tuple[Path, ...] = (REPO_ROOT / "bench" / "results" / "area.json",)
               ) -> dict[str, Any] | None:
    """The area of ``cfg``'s engine if it was synthesised for today's generator, else None.

    Looked up in ``build/<config-hash>/area.json`` (``make area``), then in the table of
    ``bench/area.py``. A record of another generator digest (the RTL changed since) is not
    used. Never synthesises; never raises.
    """
    if cfg.engine != "block_sparse":
        return None
    try:
        digest = generator_digest()
    except Exception:  # noqa: BLE001 -- a lookup for a report must not fail it
        return None
    root = Path(build_root) if build_root is not None else default_build_root()
    candidates = [_read(root / cfg.config_hash() / AREA_NAME)]
    for table in tables:
        doc = _read(table) or {}
        candidates += [r for r in doc.get("rows", []) if isinstance(r, dict)]
    for rec in candidates:
        if rec and rec.get("config_hash") == cfg.config_hash() and \
                rec.get("generator_digest") == digest and rec.get("flow") == FLOW:
            return rec
    return None
