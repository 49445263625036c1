"""The one text-table printer of the project (verify, report, evaluate, ``make sim``)."""

from __future__ import annotations

from typing import Sequence

__all__ = ["format_table"]


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
