"""Plots of an allocation, written into a run directory's ``plots/`` folder.

``kept_fraction.png``  per-layer kept fraction of connections, as the paper's Fig. 3;
``delta_curves.png``   distortion curves per layer type with the chosen ratio of each layer;
``masks.png``          block masks of a few layers, as the paper's Fig. 4 (white = kept).

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KIND_COLORS", "plot_kept_fraction", "plot_delta_curves", "plot_masks",
           "write_plots"]

KIND_COLORS = {"qkv": "#4C72B0", "proj": "#DD8452", "fc1": "#55A868", "fc2": "#C44E52",
               "head": "#8172B3"}
_OTHER = "#7f7f7f"


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _title(alloc: Any) -> str:
    return (f"{alloc.model or 'model'}: {alloc.method}, block {alloc.block_k}x{alloc.block_n}, "
            f"FLOPs {alloc.flops_ratio:.3f} (target {alloc.flops_target:g})")


def plot_kept_fraction(alloc: Any, path: str | Path) -> Path:
    """Bar per linear layer (model order): percentage of connections kept (Fig. 3)."""
    from matplotlib.patches import Patch

    layers = list(alloc.layers.values())
    fig = _figure(max(6.0, 0.16 * len(layers) + 2.0), 3.6)
    ax = fig.add_subplot()
    x = np.arange(1, len(layers) + 1)
    heights = [100.0 * r.kept_fraction for r in layers]
    colors = [KIND_COLORS.get(r.kind, _OTHER) for r in layers]
    bars = ax.bar(x, heights, color=colors, width=0.8)
    for b, r in zip(bars, layers):
        if r.excluded:
            b.set_hatch("//")
            b.set_edgecolor("black")
    ax.set_xlim(0.3, len(layers) + 0.7)
    ax.set_ylim(0, 105)
    ax.set_xlabel("layer (model order)")
    ax.set_ylabel("connections kept (%)")
    ax.set_title(_title(alloc), fontsize=9)
    kinds = list(dict.fromkeys(r.kind for r in layers))
    handles = [Patch(color=KIND_COLORS.get(k, _OTHER), label=k) for k in kinds]
    if any(r.excluded for r in layers):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="excluded"))
    fig.legend(handles=handles, ncols=min(6, len(handles)), fontsize=8,
               loc="outside lower center")
    step = max(1, len(layers) // 25)
    ax.set_xticks(x[::step])
    ax.tick_params(labelsize=7)
    return _save(fig, path)


def plot_delta_curves(alloc: Any, path: str | Path) -> Path:
    """Distortion curves per layer type (normalised to each curve's largest magnitude), the
    smoothed curve as a line, the raw one faint, and a dot at each layer's chosen ratio."""
    from matplotlib import colormaps

    curves = list(alloc.curves.values())
    kinds = list(dict.fromkeys(c.shape.kind for c in curves))
    ncols = min(3, max(1, len(kinds)))
    nrows = -(-len(kinds) // ncols) if kinds else 1
    fig = _figure(4.2 * ncols, 3.0 * nrows)
    cmap = colormaps["viridis"]
    for j, kind in enumerate(kinds):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        group = [c for c in curves if c.shape.kind == kind]
        for i, c in enumerate(group):
            scale = float(np.max(np.abs(c.delta_smooth))) or 1.0
            col = cmap(i / max(1, len(group) - 1))
            a = c.alpha
            ax.plot(a, c.delta / scale, color=col, alpha=0.25, lw=0.6)
            ax.plot(a, c.delta_smooth / scale, color=col, lw=1.0)
            k = alloc.layers[c.name].total_blocks - alloc.layers[c.name].kept_blocks
            ax.plot([a[k]], [c.delta_smooth[k] / scale], "o", color=col, ms=4,
                    markeredgecolor="black", markeredgewidth=0.5)
        ax.set_title(f"{kind} ({len(group)} layers; dark = early)", fontsize=9)
        ax.set_xlabel("pruning ratio alpha")
        ax.set_ylabel("delta / max|delta|")
        ax.axhline(0, color="black", lw=0.4)
        ax.set_xlim(0, 1)
    fig.suptitle(_title(alloc) + "   (dots: chosen ratio)", fontsize=9)
    return _save(fig, path)


def _mask_selection(alloc: Any, limit: int = 9) -> list[str]:
    names = [n for n, r in alloc.layers.items() if not r.excluded] or list(alloc.layers)
    if len(names) <= limit:
        return names
    return names[:4] + names[-(limit - 4):]


def plot_masks(alloc: Any, path: str | Path, layers: list[str] | None = None) -> Path:
    """Block masks of some layers in weight coordinates (Fig. 4): white kept, black pruned.

    Default selection: the first four and the last five prunable layers (the first and last
    transformer blocks and the head).
    """
    names = layers or _mask_selection(alloc)
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig = _figure(3.4 * ncols, 3.0 * nrows)
    for j, name in enumerate(names):
        r = alloc.layers[name]
        ax = fig.add_subplot(nrows, ncols, j + 1)
        g = r.grid
        ax.imshow(r.mask.astype(float), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                  extent=(0, g.nb * g.block_n, g.kb * g.block_k, 0), aspect="auto")
        ax.set_title(f"{name}\n{r.shape.k}x{r.shape.n}, kept {100 * r.kept_fraction:.0f}%",
                     fontsize=8)
        ax.set_xlabel("input feature (N)", fontsize=7)
        ax.set_ylabel("output feature (K)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(_title(alloc) + "   (white: kept block)", fontsize=9)
    return _save(fig, path)


def write_plots(alloc: Any, folder: str | Path) -> list[Path]:
    """All three plots into ``folder`` (created); returns their paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    return [plot_kept_fraction(alloc, out / "kept_fraction.png"),
            plot_delta_curves(alloc, out / "delta_curves.png"),
            plot_masks(alloc, out / "masks.png")]


def _save(fig: Any, path: str | Path) -> Path:
    p = Path(path)
    fig.savefig(p)
    return p
