"""The import layering of docs/architecture.md, and the size limits, checked on the source.

Every ``import`` and ``from ... import`` statement is read with :mod:`ast` (function-level
imports included, relative imports resolved, ``importlib.import_module("...")`` with a literal
name too) and held against the rules below. Nothing is imported, so the test is fast and
independent of what happens to be installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The core: lsp_codesign/ without the command layer (commands/, cli.py).
CORE_FORBIDDEN = ("sim", "models", "hw", "lsp_codesign.commands", "lsp_codesign.cli")
# The command layer's files outside commands/: the parser and `python -m lsp_codesign`.
COMMAND_LAYER_FILES = ("lsp_codesign/cli.py", "lsp_codesign/__main__.py")
# models/ sits beside the command layer: it may use the core's errors and its training loop.
MODELS_MAY_USE = ("lsp_codesign.errors", "lsp_codesign.training")
# hw/ implements the config and the ISA it is given.
HW_MAY_USE = ("lsp_codesign.config", "lsp_codesign.hwspec", "lsp_codesign.isa",
              "lsp_codesign.errors")
SIM_FORBIDDEN = ("models", "lsp_codesign.commands", "lsp_codesign.cli")

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
SIZE_EXEMPT_FILES: set[str] = set()


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source`` (of module ``module``)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import name` may import the submodule pkg.name
            found += [(node.lineno, f"{prefix}.{a.name}") for a in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))):
            found.append((node.lineno, node.args[0].value))
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(path: Path, source: str | None = None) -> list[str]:
    """The layering rules broken by one file."""
    rel = path.relative_to(ROOT).as_posix()
    top = rel.split("/")[0]
    source = path.read_text() if source is None else source
    out = []
    for line, name in imports_of(source, _module_name(path), path.name == "__init__.py"):
        bad = False
        if top == "lsp_codesign" and not (rel.startswith("lsp_codesign/commands/")
                                          or rel in COMMAND_LAYER_FILES):
            bad = _within(name, CORE_FORBIDDEN)
        elif top == "models":
            bad = (_within(name, ("sim", "hw"))
                   or (_within(name, ("lsp_codesign",)) and not _within(name, MODELS_MAY_USE)
                       and name != "lsp_codesign"))
        elif top == "hw":
            bad = (_within(name, ("sim", "models"))
                   or (_within(name, ("lsp_codesign",)) and not _within(name, HW_MAY_USE)
                       and name != "lsp_codesign"))
        elif top == "sim":
            bad = _within(name, SIM_FORBIDDEN)
        if bad:
            out.append(f"{rel}:{line} imports {name}")
    return out


def _sources(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def test_the_checker_catches_a_forbidden_import():
    core = ROOT / "lsp_codesign" / "example.py"
    assert violations(core, "def f():\n    from sim.harness import run_programs\n") == [
        "lsp_codesign/example.py:2 imports sim.harness.run_programs"]
    assert violations(core, "from .commands import verify\n") == [
        "lsp_codesign/example.py:1 imports lsp_codesign.commands.verify"]
    assert violations(core, "import importlib\nimportlib.import_module('models.data')\n") == [
        "lsp_codesign/example.py:2 imports models.data"]
    assert violations(core, "from . import config\nimport numpy\n") == []
    model = ROOT / "models" / "example.py"
    assert violations(model, "from lsp_codesign.training import train\n") == []
    assert violations(model, "from lsp_codesign.commands.verify import run\n") != []
    assert violations(ROOT / "lsp_codesign" / "commands" / "x.py", "import sim.harness\n") == []


def test_the_layering_holds():
    found = [v for p in _sources("lsp_codesign", "models", "hw", "sim") for v in violations(p)]
    assert found == []


def _long_functions(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name} "
                           f"({n} lines)")
    return out


@pytest.mark.parametrize("path", [p for p in _sources("lsp_codesign")
                                  if p.relative_to(ROOT).as_posix() not in SIZE_EXEMPT_FILES],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_files_and_functions_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_FILE_LINES
    assert _long_functions(path) == []
