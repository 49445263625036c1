"""The per-layer verdict: an engine run against numpy (bit for bit) and the model (every counter).

One function, :func:`check_run`, used by ``lsp-codesign verify`` and by the RTL benches
(``sim/cases.py``), so both judge a run the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .compiler import LayerProgram, read_y
from .config import HwConfig
from .isa import COUNTERS, ERRORS

__all__ = ["RunVerdict", "check_run", "first_difference"]


@dataclass
class RunVerdict:
    """What differs between a run and its references.

    Attributes
    ----------
    y : numpy.ndarray or None
        The ``(M, K)`` result read back (None when the run stopped on an error).
    y_match : bool
        Bit-exact with the reference.
    counters_match : bool
        Every counter equal to the model's.
    first_diff : str or None
        The first differing element, with its token tile and block row.
    counter_diffs : list[str]
        ``name: RTL a, model b`` for every counter that differs.
    error : str or None
        The engine stopped on an error.
    """

    y: Any
    y_match: bool
    counters_match: bool
    first_diff: str | None = None
    counter_diffs: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.y_match and self.counters_match and self.error is None

    @property
    def problems(self) -> list[str]:
        return [p for p in (self.error, self.first_diff, *self.counter_diffs) if p]


def first_difference(y: np.ndarray, ref: np.ndarray, block_k: int, tile_m: int,
                     who: str = "RTL") -> str:
    """Where two results first differ, and how many elements do."""
    r, c = (int(v) for v in np.argwhere(y != ref)[0])
    return (f"first differing element Y[{r}, {c}] (token tile {r // tile_m}, block row "
            f"{c // block_k}): {who} {int(y[r, c])}, numpy {int(ref[r, c])}; "
            f"{int((y != ref).sum())} of {y.size} elements differ")


def check_run(cfg: HwConfig, prog: LayerProgram, res: Any, ref_y: np.ndarray,
              model_counters: Mapping[str, int], *, who: str = "RTL") -> RunVerdict:
    """Judge one run (``res`` has ``y_words``, ``counters``, ``error``, ``err_code``)."""
    error = None
    if res.error:
        code = int(res.err_code)
        name = ERRORS[code] if 0 <= code < len(ERRORS) else "?"
        error = f"engine stopped with error {name} (code {code})"
    y = read_y(cfg, prog, list(res.y_words))
    y_match = bool(np.array_equal(y, ref_y))
    got = {c: int(res.counters[c]) for c in COUNTERS}
    diffs = [f"{c}: {who} {got[c]}, model {int(model_counters[c])}" for c in COUNTERS
             if got[c] != int(model_counters[c])]
    return RunVerdict(y=y, y_match=y_match, counters_match=not diffs,
                      first_diff=None if y_match else first_difference(
                          y, ref_y, cfg.block_k, cfg.tile_m, who),
                      counter_diffs=diffs, error=error)
