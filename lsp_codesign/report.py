"""Hardware cycle/energy reports of a model: per layer and in total, dense against pruned.

A report is built from a list of GEMM shapes (:mod:`lsp_codesign.vit_shapes`), optional block
masks (:mod:`lsp_codesign.masks_io`) and a config, with the cycle/energy model. It renders as
plain text, markdown or JSON. Figures come from the model; a later stage may mark layers whose
figures were measured in RTL (``measured`` column).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import Engine, HwConfig
from .cycle_model import ENERGY_COMPONENTS, LayerEstimate, energy_breakdown, estimate_layer, p_m_pj
from .table import format_markdown, format_table

__all__ = ["LayerReport", "ModelReport", "build_report", "measured_from_verify", "save_plots",
           "bound", "roofline_plot"]


def bound(est: LayerEstimate) -> str:
    """``compute``, or ``memory`` with the share of cycles the array waits for the DMA."""
    c = est.counters
    if "dma_stall" not in c:
        return "-"
    if not est.memory_bound:
        return "compute"
    return f"memory ({100 * c['dma_stall'] / max(est.cycles, 1):.0f}%)"


@dataclass
class LayerReport:
    name: str
    dense: LayerEstimate
    pruned: LayerEstimate
    measured: bool = False
    source: str = "model"

    @property
    def speedup(self) -> float:
        return self.dense.cycles / self.pruned.cycles if self.pruned.cycles else float("inf")

    @property
    def energy_saving(self) -> float:
        d = self.dense.energy_total_pj
        return 1.0 - self.pruned.energy_total_pj / d if d else 0.0


@dataclass
class ModelReport:
    model: str
    cfg: HwConfig
    layers: list[LayerReport]
    pruned_given: bool
    extra: dict = field(default_factory=dict)
    area: dict | None = None  # the engine's synthesis record (``hw.area``), when known

    # ---- totals -----------------------------------------------------------------------------

    def total(self, which: str, attr: str) -> float:
        return float(sum(getattr(getattr(lr, which), attr) for lr in self.layers))

    def energy_by_component(self, which: str) -> dict[str, float]:
        return {c: float(sum(getattr(lr, which).energy_pj[c] for lr in self.layers))
                for c in ENERGY_COMPONENTS}

    @property
    def totals(self) -> dict[str, Any]:
        cyc_d, cyc_p = self.total("dense", "cycles"), self.total("pruned", "cycles")
        e_d = self.total("dense", "energy_total_pj")
        e_p = self.total("pruned", "energy_total_pj")
        t_d, t_p = cyc_d / self.cfg.clock_mhz, cyc_p / self.cfg.clock_mhz
        macs_d = self.total("dense", "effective_macs")
        macs_p = self.total("pruned", "effective_macs")
        cap = self.layers[0].dense.array_size if self.layers else 1
        return {
            "cycles_dense": int(cyc_d), "cycles_pruned": int(cyc_p),
            "time_us_dense": t_d, "time_us_pruned": t_p,
            "speedup": cyc_d / cyc_p if cyc_p else float("inf"),
            "energy_uj_dense": e_d / 1e6, "energy_uj_pruned": e_p / 1e6,
            "energy_saving": 1 - e_p / e_d if e_d else 0.0,
            "power_mw_dense": e_d / (t_d * 1000) if t_d else 0.0,
            "power_mw_pruned": e_p / (t_p * 1000) if t_p else 0.0,
            "utilization_dense": macs_d / (cyc_d * cap) if cyc_d else 0.0,
            "utilization_pruned": macs_p / (cyc_p * cap) if cyc_p else 0.0,
            "linear_macs_dense": int(macs_d), "linear_macs_pruned": int(macs_p),
            "kept_blocks": int(sum(lr.pruned.kept_blocks for lr in self.layers)),
            "total_blocks": int(sum(lr.pruned.total_blocks for lr in self.layers)),
            "energy_pj_by_component_dense": self.energy_by_component("dense"),
            "energy_pj_by_component_pruned": self.energy_by_component("pruned"),
            "memory_bound_layers_dense": sum(lr.dense.memory_bound for lr in self.layers),
            "memory_bound_layers_pruned": sum(lr.pruned.memory_bound for lr in self.layers),
            "dram_bytes_dense": int(sum(lr.dense.dram_bytes for lr in self.layers)),
            "dram_bytes_pruned": int(sum(lr.pruned.dram_bytes for lr in self.layers)),
        }

    # ---- rendering ----------------------------------------------------------------------------

    def _rows(self) -> list[list[str]]:
        rows = []
        for lr in self.layers:
            d, p = lr.dense, lr.pruned
            row = [lr.name, f"{d.m}x{d.n}->{d.k}"]
            if self.pruned_given:
                row += [f"{p.kept_blocks}/{p.total_blocks}", f"{d.cycles:,}", f"{p.cycles:,}",
                        f"{lr.speedup:.2f}x", f"{p.time_us:.2f}", f"{d.energy_total_pj / 1e6:.3f}",
                        f"{p.energy_total_pj / 1e6:.3f}", f"{100 * lr.energy_saving:.1f}%",
                        f"{100 * p.utilization:.1f}%", bound(p)]
                if any(x.measured for x in self.layers):
                    row.append(lr.source)
            else:
                row += [f"{d.cycles:,}", f"{d.time_us:.2f}", f"{d.energy_total_pj / 1e6:.3f}",
                        f"{d.power_mw:.1f}", f"{100 * d.utilization:.1f}%", bound(d)]
            rows.append(row)
        return rows

    def _header(self) -> list[str]:
        if self.pruned_given:
            h = ["layer", "MxN->K", "kept blocks", "cycles dense", "cycles pruned", "speedup",
                 "time us", "energy uJ dense", "energy uJ pruned", "saving", "util", "bound"]
            if any(x.measured for x in self.layers):
                h.append("source")
            return h
        return ["layer", "MxN->K", "cycles", "time us", "energy uJ", "power mW", "util", "bound"]

    def _total_row(self) -> list[str]:
        t = self.totals
        if self.pruned_given:
            row = ["TOTAL", "", f"{t['kept_blocks']}/{t['total_blocks']}",
                   f"{t['cycles_dense']:,}", f"{t['cycles_pruned']:,}", f"{t['speedup']:.2f}x",
                   f"{t['time_us_pruned']:.2f}", f"{t['energy_uj_dense']:.3f}",
                   f"{t['energy_uj_pruned']:.3f}", f"{100 * t['energy_saving']:.1f}%",
                   f"{100 * t['utilization_pruned']:.1f}%",
                   f"{t['memory_bound_layers_pruned']} mem"]
            if any(x.measured for x in self.layers):
                row.append("")
            return row
        return ["TOTAL", "", f"{t['cycles_dense']:,}", f"{t['time_us_dense']:.2f}",
                f"{t['energy_uj_dense']:.3f}", f"{t['power_mw_dense']:.1f}",
                f"{100 * t['utilization_dense']:.1f}%", f"{t['memory_bound_layers_dense']} mem"]

    def _title(self) -> str:
        c = self.cfg
        arr = f"{c.array_rows}x{c.array_cols} array" + (
            f", {c.dataflow}" if c.engine is Engine.SYSTOLIC else "")
        return (f"{self.model} on {c.name} ({c.engine}, block {c.block_str}, BM={c.tile_m}, "
                f"{arr}, {c.clock_mhz:g} MHz); p_m = {p_m_pj(c):.1f} pJ")

    def to_text(self) -> str:
        table = format_table(self._header(), self._rows(), left=2, total=self._total_row())
        lines = [self._title(), "", table, "", self._energy_line()]
        return "\n".join(lines + ([self._area_line()] if self.area else [])) + "\n"

    def _area_line(self) -> str:
        a = self.area or {}
        return (f"engine area (yosys synth of build/{a.get('config_hash')}): "
                f"{a.get('logic_transistors', 0):,} logic transistors "
                f"({a.get('flip_flops', 0):,} flip-flops), SRAM "
                f"{a.get('sram_bits', 0) / 8192:,.0f} KiB; {a.get('total_mm2', 0):.2f} mm2 of "
                f"cells at 45 nm (logic {a.get('logic_mm2', 0):.2f}, SRAM "
                f"{a.get('sram_mm2', 0):.2f})")

    def _energy_line(self) -> str:
        which = "pruned" if self.pruned_given else "dense"
        e = self.energy_by_component(which)
        tot = sum(e.values()) or 1.0
        parts = ", ".join(f"{k} {100 * v / tot:.1f}%" for k, v in e.items() if v)
        return f"energy by component ({which}): {parts}"

    def to_markdown(self) -> str:
        table = format_markdown(self._header(), self._rows(), left=2, total=self._total_row())
        ed, ep = self.energy_by_component("dense"), self.energy_by_component("pruned")
        tot = sum(ep.values()) or 1.0
        energy = format_markdown(
            ["component", "dense", "pruned", "share of pruned"],
            [[comp, f"{ed[comp] / 1e6:.3f}", f"{ep[comp] / 1e6:.3f}",
              f"{100 * ep[comp] / tot:.1f}%"] for comp in ENERGY_COMPONENTS])
        out = [f"**{self._title()}**", "", table, "", "Energy by component (uJ):", "", energy]
        out += ["", "bound: `memory` when the layer's DMA works longer than its array "
                "(DRAM traffic sets its time; the share is the cycles the array waits for the "
                "DMA), `compute` otherwise."]
        if self.area:
            out += ["", self._area_line().replace("engine area", "Engine area", 1) + "."]
        if any(lr.measured for lr in self.layers):
            out += ["", "Layers marked RTL: cycles and every event count (DRAM bytes included) "
                    "measured on the RTL simulator by `lsp-codesign verify`; energy = measured "
                    "events x the config's energy per event."]
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "config": self.cfg.to_dict(),
            "p_m_pj": p_m_pj(self.cfg),
            "pruned_given": self.pruned_given,
            "layers": [{"name": lr.name, "measured": lr.measured, "source": lr.source,
                        "speedup": lr.speedup,
                        "energy_saving": lr.energy_saving, "dense": lr.dense.to_dict(),
                        "pruned": lr.pruned.to_dict()} for lr in self.layers],
            "totals": self.totals,
            "area": self.area,
            **self.extra,
        }


def _with_measured(cfg: HwConfig, est: LayerEstimate, counters: dict[str, int]) -> LayerEstimate:
    """The estimate with its counters replaced by the measured ones."""
    c = dict(est.counters)
    c.update({k: int(v) for k, v in counters.items() if k in c})
    e = energy_breakdown(cfg, c)
    return replace(est, counters=c, energy_pj={k: float(v) for k, v in e.items()})


def build_report(cfg: HwConfig, model: str, gemms: Sequence[tuple[str, int, int, int]],
                 masks: dict[str, np.ndarray] | None = None,
                 measured: dict[str, dict[str, Any]] | None = None) -> ModelReport:
    """Report for layers ``(name, M, N, K)``; ``masks[name]`` (KB, NB) gives the pruned model.

    Without masks the pruned figures equal the dense ones and only dense columns are shown.
    ``measured[name]`` (from ``verify.json``) holds RTL counters ``pruned`` and optionally the
    dense run's ``dense_cycles``; those layers' figures are taken from the RTL and marked so.
    """
    layers = []
    for name, m, n, k in gemms:
        dense = estimate_layer(cfg, m, n, k, None, name=name)
        mask = None if masks is None else masks.get(name)
        pruned = dense if mask is None else estimate_layer(cfg, m, n, k, mask, name=name)
        meas = (measured or {}).get(name)
        if meas is not None:
            pruned = _with_measured(cfg, pruned, meas["pruned"])
            if meas.get("dense_cycles") is not None:
                dense = _with_measured(cfg, dense, {"cycles": meas["dense_cycles"]})
        layers.append(LayerReport(name=name, dense=dense, pruned=pruned,
                                  measured=meas is not None,
                                  source=meas.get("source", "RTL") if meas else "model"))
    return ModelReport(model=model, cfg=cfg, layers=layers, pruned_given=masks is not None)


def measured_from_verify(record: Any) -> dict[str, dict[str, Any]]:
    """``{layer: {"pruned": counters, "dense_cycles": int | None, "source": ...}}``.

    ``record`` is a :class:`lsp_codesign.rundir.VerifyRecord`; only layers that passed count.
    """
    return {lay.name: {"pruned": lay.counters, "dense_cycles": lay.dense_cycles,
                       "source": record.source}
            for lay in record.layers if lay.ok}


def save_plots(rep: ModelReport, out_dir: str | Path) -> list[Path]:
    """Per-layer speedup and energy bars, energy breakdown, speedup against FLOPs kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [lr.name for lr in rep.layers]
    x = np.arange(len(names))
    paths = []
    colors = ["tab:green" if lr.measured else "tab:blue" for lr in rep.layers]

    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.28 * len(names) + 2), 7), sharex=True)
    axes[0].bar(x, [lr.speedup for lr in rep.layers], color=colors)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_ylabel("speedup over dense")
    src = next((lr.source for lr in rep.layers if lr.measured), None)
    axes[0].set_title(f"{rep.model} on {rep.cfg.name} (block {rep.cfg.block_str}); "
                      + (f"green = measured ({src}), blue = model" if src else "model figures"))
    w = 0.4
    axes[1].bar(x - w / 2, [lr.dense.energy_total_pj / 1e6 for lr in rep.layers], w,
                label="dense", color="lightgrey")
    axes[1].bar(x + w / 2, [lr.pruned.energy_total_pj / 1e6 for lr in rep.layers], w,
                label="pruned", color=colors)
    axes[1].set_ylabel("energy (uJ)")
    axes[1].legend()
    axes[1].set_xticks(x, names, rotation=90, fontsize=7)
    fig.tight_layout()
    paths.append(out / "layers_speedup_energy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ed, ep = rep.energy_by_component("dense"), rep.energy_by_component("pruned")
    bottom = np.zeros(2)
    for comp in ENERGY_COMPONENTS:
        vals = np.array([ed[comp], ep[comp]]) / 1e6
        if vals.any():
            ax.bar(["dense", "pruned"], vals, bottom=bottom, label=comp)
            bottom += vals
    ax.set_ylabel("energy (uJ)")
    ax.set_title("energy by component")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "energy_breakdown.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    paths.append(roofline_plot(rep, out / "roofline.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    kept = np.array([lr.pruned.effective_macs / lr.dense.effective_macs for lr in rep.layers])
    ax.scatter(kept, [lr.speedup for lr in rep.layers], c=colors, s=18)
    xs = np.linspace(max(kept.min(initial=1.0), 0.02), 1.0, 100)
    ax.plot(xs, 1 / xs, "k--", lw=0.8, label="ideal: 1 / FLOPs kept")
    t = rep.totals
    ax.scatter([t["linear_macs_pruned"] / max(t["linear_macs_dense"], 1)], [t["speedup"]],
               marker="*", s=160, color="tab:red", label="whole model")
    ax.set_xlabel("FLOPs kept (fraction of the dense layer)")
    ax.set_ylabel("speedup")
    ax.legend()
    ax.set_title("speedup against FLOPs kept")
    fig.tight_layout()
    paths.append(out / "speedup_vs_flops.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def roofline_plot(rep: ModelReport, path: str | Path) -> Path:
    """Achieved useful MACs per cycle against arithmetic intensity (useful MACs per DRAM byte),
    one point per layer, dense and pruned, under the config's two ceilings: the array's
    BK x BN MACs per cycle and the DRAM's bytes per cycle x intensity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = rep.cfg
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    pts = {}
    for which, colour in (("dense", "lightgrey"), ("pruned", "tab:blue")):
        ests = [getattr(lr, which) for lr in rep.layers if getattr(lr, which).dram_bytes]
        ai = np.array([e.intensity for e in ests])
        perf = np.array([e.effective_macs / max(e.cycles, 1) for e in ests])
        pts[which] = (ai, perf)
        if which == "pruned" and not rep.pruned_given:
            continue
        mem = [e.memory_bound for e in ests]
        ax.scatter(ai, perf, s=18, c=colour, edgecolors=["tab:red" if b else "none" for b in mem],
                   label=f"{which} layers" + (" (red edge: memory-bound)" if any(mem) else ""))
    peak = cfg.array_rows * cfg.array_cols
    lo = min(float(a.min()) for a, _ in pts.values() if len(a)) / 2 if rep.layers else 0.1
    hi = max(float(a.max()) for a, _ in pts.values() if len(a)) * 2 if rep.layers else 100.0
    xs = np.geomspace(max(lo, 1e-3), max(hi, 1.0), 200)
    ax.plot(xs, np.full_like(xs, peak), "k-", lw=1, label=f"array: {peak} MACs/cycle")
    if cfg.dram is not None:
        bw = cfg.dram.bytes_per_cycle
        ax.plot(xs, bw * xs, "k--", lw=1, label=f"DRAM: {bw} B/cycle x intensity")
        ax.axvline(peak / bw, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (useful MACs per DRAM byte)")
    ax.set_ylabel("achieved useful MACs per cycle")
    ax.set_title(f"roofline: {rep.model} on {cfg.name} (block {cfg.block_str})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
