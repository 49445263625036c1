"""The one table printer of the project: aligned text and markdown, and JSON for scripts.

Every command that prints a table takes ``--format text|markdown|json`` (:data:`FORMATS`):
``text`` is :func:`format_table`, ``markdown`` :func:`format_markdown` (the same header, rows
and total), and ``json`` the command's own record through :func:`to_json`. :func:`render`
picks between the two tables.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

__all__ = ["FORMATS", "format_table", "format_markdown", "render", "to_json"]

FORMATS = ("text", "markdown", "json")


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1,
                 total: Sequence[str] | None = None, sep: str = "  ",
                 min_widths: Sequence[int] | None = None, rules: bool = True) -> str:
    """An aligned plain-text table.

    Parameters
    ----------
    header : sequence of str
        Column titles.
    rows : sequence of sequence of str
        The body, already formatted.
    left : int
        The first ``left`` columns are left-aligned (names, shapes); the others right-aligned
        (numbers).
    total : sequence of str, optional
        A last row set apart by a rule (``TOTAL``).
    sep : str
        Between columns.
    min_widths : sequence of int, optional
        Minimum width of each column.
    rules : bool
        A rule of dashes under the header (and above ``total``).

    Returns
    -------
    str
        The lines, without a final newline. Cells are padded, not stripped.
    """
    every = [list(header), *map(list, rows), *([list(total)] if total is not None else [])]
    widths = [max(len(r[i]) for r in every) for i in range(len(header))]
    if min_widths is not None:
        widths = [max(w, m) for w, m in zip(widths, min_widths)]

    def line(r: Sequence[str]) -> str:
        return sep.join(c.ljust(w) if i < left else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths)))

    rule = sep.join("-" * w for w in widths)
    out = [line(header)] + ([rule] if rules else []) + [line(r) for r in rows]
    if total is not None:
        out += ([rule] if rules else []) + [line(total)]
    return "\n".join(out)


def format_markdown(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1,
                    total: Sequence[str] | None = None) -> str:
    """A markdown (GitHub) table: the first ``left`` columns left-aligned, the others right.

    ``total``, when given, is the last row, its non-empty cells in bold. A ``|`` inside a cell
    is escaped.
    """
    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).strip().replace("|", "\\|") for c in r) + " |"

    out = [line(header), "|" + "|".join("---" if i < left else "---:"
                                        for i in range(len(header))) + "|"]
    out += [line(r) for r in rows]
    if total is not None:
        out.append(line([f"**{c.strip()}**" if c.strip() else "" for c in total]))
    return "\n".join(out)


def render(fmt: str, header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1,
           total: Sequence[str] | None = None, **text_options: Any) -> str:
    """The table as ``text`` (:func:`format_table`, with ``text_options``) or ``markdown``."""
    if fmt == "markdown":
        return format_markdown(header, rows, left=left, total=total)
    if fmt == "text":
        return format_table(header, rows, left=left, total=total, **text_options)
    raise ValueError(f"format: expected text or markdown for a table, got {fmt!r}")


def _finite(o: Any) -> Any:
    """``o`` with non-finite floats as None (JSON has no infinity), containers recursed, and
    numpy scalars and arrays as plain numbers and lists."""
    if hasattr(o, "tolist") and not isinstance(o, (str, bytes)):
        o = o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def to_json(data: Any) -> str:
    """``data`` as indented, strictly valid JSON (an infinite or NaN number becomes null)."""
    return json.dumps(_finite(data), indent=2, default=str)
