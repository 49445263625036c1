"""Strict, bounded YAML reading of the files a user hands the tools (hardware configs).

:func:`read_yaml` returns plain data (dicts, lists, strings, numbers) or raises one
:class:`YamlError` whose message is a single line naming the file, the line and the problem:

- the file must be UTF-8 text under :data:`MAX_BYTES` (a binary file is refused at once);
- aliases (``*name``) are refused: a config never needs them, and nested aliases are how a
  two-kilobyte file expands to gigabytes; nesting deeper than :data:`MAX_DEPTH` is refused;
- a key given twice in one mapping is an error, not a silent overwrite;
- numbers in exponent form without a dot (``1e3``, ``2E-4``) are numbers, as in YAML 1.2 and
  JSON (PyYAML's YAML 1.1 rules read them as strings); ``.nan`` and ``.inf`` stay floats, for
  the caller's checks to refuse;
- only the safe tags are constructed (no Python objects), as :func:`yaml.safe_load`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent

from .errors import LspError

__all__ = ["YamlError", "read_yaml", "parse_yaml", "MAX_BYTES", "MAX_DEPTH"]

MAX_BYTES = 1 << 20
MAX_DEPTH = 32


class YamlError(LspError, ValueError):
    """A YAML file that cannot be read; the message is one line naming the file."""


class _Refused(Exception):
    def __init__(self, mark: Any, problem: str) -> None:
        super().__init__(problem)
        self.mark, self.problem = mark, problem


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases or duplicate keys, bounded in depth, with 1e3 as a number."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise _Refused(event.start_mark, f"YAML aliases are not allowed (*{event.anchor})")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(self.peek_event().start_mark,
                               f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: set = set()
            for key_node, _value in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:
                    raise _Refused(key_node.start_mark, "a mapping key must be a plain value, "
                                   "not a list or a mapping") from None
                if dup:
                    raise _Refused(key_node.start_mark, f"duplicate key {_short(key)}")
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _short(v: Any, limit: int = 40) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def parse_yaml(text: str, where: str = "<string>") -> Any:
    """Parse YAML text under the rules of this module; errors name ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _Refused as exc:
        raise YamlError(f"{where}: {_where(exc.mark)}{exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise YamlError(f"{where}: not valid YAML: {_where(exc.problem_mark)}{problem}") from None
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())[:200]
        raise YamlError(f"{where}: not valid YAML: {first}") from None
    except RecursionError:
        raise YamlError(f"{where}: nested too deeply") from None


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """Read and parse a YAML file (see the module docstring); ``what`` names it in errors."""
    p = Path(path)
    if not p.is_file():
        raise YamlError(f"{path}: {what} not found")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if len(data) > MAX_BYTES:
        raise YamlError(f"{path}: larger than {MAX_BYTES // 1024} KiB; not a {what}")
    nul = data.find(b"\0")
    if nul >= 0:
        raise YamlError(f"{path}: binary data (a NUL byte at offset {nul}); a {what} is YAML "
                        "text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(f"{path}: not UTF-8 text (byte {exc.start}); a {what} is YAML "
                        "text") from None
    return parse_yaml(text, str(path))
