"""Pareto fronts of a sweep, their plots and a one-line summary.

Two fronts: **energy against top-1** (less energy, more top-1; needs ``--evaluate``; the
finetuned top-1 when the sweep finetuned) and **latency against energy** (both lower). A
point is on a front when no other point is at least as good in both and better in one.
Plots: every point (colour = method, marker = block), the front joined by a staircase line,
and each front point labelled with its config, block, tile, target and method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["pareto_front", "mark_fronts", "accuracy_column", "plot_front", "front_summary",
           "FRONTS"]

# name: (x column, y column, maximise y, x label, y label, file)
FRONTS = {
    "front_energy_top1": ("energy_uj", None, True, "energy per image (uJ)", "top-1 (%)",
                          "energy_vs_top1.png"),
    "front_latency_energy": ("latency_us", "energy_uj", False, "latency per image (us)",
                             "energy per image (uJ)", "latency_vs_energy.png"),
}
METHOD_COLORS = {"lsp": "#C44E52", "beta0": "#4C72B0", "uniform": "#55A868",
                 "global": "#8172B3"}
MARKERS = "osD^v<>ph*"


def accuracy_column(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """``top1_finetuned`` when the sweep finetuned, ``top1`` when it evaluated, else None."""
    if rows and all(r.get("top1_finetuned") is not None for r in rows):
        return "top1_finetuned"
    if rows and all(r.get("top1") is not None for r in rows):
        return "top1"
    return None


def pareto_front(x: Sequence[float], y: Sequence[float], *, maximize_y: bool) -> list[bool]:
    """Whether each point is Pareto-optimal for (lower ``x``, higher or lower ``y``)."""
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float) * (-1.0 if maximize_y else 1.0)  # both minimised now
    on = []
    for i in range(len(xa)):
        better_eq = (xa <= xa[i]) & (ya <= ya[i])
        strictly = (xa < xa[i]) | (ya < ya[i])
        on.append(not bool(np.any(better_eq & strictly)))
    return on


def mark_fronts(rows: list[dict[str, Any]]) -> None:
    """Fill in the rows' front columns (None where the front cannot be formed)."""
    acc = accuracy_column(rows)
    for col, (xc, yc, maximize, *_rest) in FRONTS.items():
        yc = yc or acc
        if yc is None or not rows:
            continue
        on = pareto_front([r[xc] for r in rows], [r[yc] for r in rows], maximize_y=maximize)
        for r, flag in zip(rows, on):
            r[col] = flag


def plot_front(rows: Sequence[Mapping[str, Any]], col: str, path: Path, title: str) -> Path:
    """One front's scatter plot with the front marked and labelled."""
    from matplotlib.figure import Figure

    xc, yc, maximize, xlabel, ylabel, _file = FRONTS[col]
    yc = yc or accuracy_column(rows)
    scale = 100.0 if yc and yc.startswith("top1") else 1.0
    fig = Figure(figsize=(9.0, 6.0), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    blocks = sorted({r["block"] for r in rows}, key=lambda b: [int(v) for v in b.split("x")])
    for r in rows:
        ax.scatter(r[xc], r[yc] * scale, s=28, alpha=0.55 if not r[col] else 0.95,
                   color=METHOD_COLORS.get(r["method"], "#7f7f7f"),
                   marker=MARKERS[blocks.index(r["block"]) % len(MARKERS)],
                   edgecolors="black" if r[col] else "none", linewidths=0.8)
    front = sorted((r for r in rows if r[col]), key=lambda r: (r[xc], r[yc]))
    if front:
        xs = [r[xc] for r in front]
        ys = [r[yc] * scale for r in front]
        ax.step(xs, ys, where="post", color="black", lw=1.0, alpha=0.7, label="Pareto front")
        offsets = _label_offsets(ax, list(zip(xs, ys)), [r["label"] for r in front])
        for r, x, y, off in zip(front, xs, ys, offsets):
            ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=off,
                        fontsize=6.5, alpha=0.9,
                        arrowprops=None if off == (4.0, 4.0) else
                        {"arrowstyle": "-", "lw": 0.4, "alpha": 0.5})
    for m, c in METHOD_COLORS.items():
        if any(r["method"] == m for r in rows):
            ax.scatter([], [], color=c, s=28, label=m)
    for i, b in enumerate(blocks):
        ax.scatter([], [], color="#7f7f7f", marker=MARKERS[i % len(MARKERS)], s=28,
                   label=f"block {b}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if scale == 1.0 or "finetuned" not in (yc or "")
                  else "top-1 after finetuning (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path, format="png")
    return path


def _label_offsets(ax: Any, points: Sequence[tuple[float, float]],
                   labels: Sequence[str], size: float = 6.5) -> list[tuple[float, float]]:
    """Offsets (in points) that keep the front's labels from overprinting each other.

    Each label starts up and right of its point; one that would overlap a label already
    placed moves down a line at a time (greedy, from the top of the plot)."""
    ax.autoscale_view()
    to_pt = 72.0 / ax.figure.dpi
    disp = [tuple(v * to_pt for v in ax.transData.transform(p)) for p in points]
    height = 1.25 * size
    right = ax.transAxes.transform((1.0, 0.0))[0] * to_pt
    placed: list[tuple[float, float, float]] = []  # x0, y0, width of each placed label
    out: list[tuple[float, float]] = [(4.0, 4.0)] * len(points)
    for i in sorted(range(len(points)), key=lambda i: -disp[i][1]):
        width = 0.55 * size * len(labels[i])
        x0, y0 = disp[i][0] + 4.0, disp[i][1] + 4.0
        if x0 + width > right:  # near the right edge: the label goes to the left
            x0 = disp[i][0] - 4.0 - width
        while any(abs(y0 - py) < height and x0 < px + pw and px < x0 + width
                  for px, py, pw in placed):
            y0 -= height
        placed.append((x0, y0, width))
        out[i] = (x0 - disp[i][0], y0 - disp[i][1])
    return out


def _best(rows: Sequence[Mapping[str, Any]], key: str, sign: float) -> Mapping[str, Any]:
    return min(rows, key=lambda r: (sign * r[key], r["energy_uj"]))


def front_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line: the size of each front and its end points."""
    if not rows:
        return "front: no points"
    parts = []
    acc = accuracy_column(rows)
    if acc is not None:
        front = [r for r in rows if r["front_energy_top1"]]
        top = _best(front, acc, -1.0)
        low = _best(front, "energy_uj", 1.0)
        parts.append(f"energy/top-1 front {len(front)} of {len(rows)}: best top-1 "
                     f"{100 * top[acc]:.2f}% at {top['energy_uj']:.2f} uJ ({top['label']}), "
                     f"least energy {low['energy_uj']:.2f} uJ at {100 * low[acc]:.2f}% "
                     f"({low['label']})")
    front = [r for r in rows if r["front_latency_energy"]]
    fast = _best(front, "latency_us", 1.0)
    low = _best(front, "energy_uj", 1.0)
    parts.append(f"latency/energy front {len(front)} of {len(rows)}: fastest "
                 f"{fast['latency_us']:.3f} us ({fast['label']}), least energy "
                 f"{low['energy_uj']:.2f} uJ ({low['label']})")
    return "; ".join(parts)
