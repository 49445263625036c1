"""A sweep's table: one row per point, as JSON, CSV, text or markdown.

Per point (:data:`COLUMNS`): its key, the config (name, hash, engine, block, token tile),
target and method; the FLOPs kept; cycles, latency, energy and average power of the linear
layers per image on the config's engine (the cycle/energy model); with ``--evaluate`` top-1
and the KL divergence to the dense model on the test set (and after finetuning, with
``--finetune-epochs``); with ``--verify`` the simulator and whether it agreed with the model
(outputs bit-exact, every counter equal); whether the point is on each Pareto front.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Mapping, Sequence

from ..config import HwConfig
from ..table import format_table
from .grid import Point

__all__ = ["COLUMNS", "point_record", "table_row", "to_csv", "to_text", "to_markdown",
           "to_json_rows"]

# (column, description); the CSV and JSON use these names
COLUMNS = (
    ("point", "the point's key (its record in cache/points/, masks in cache/masks/)"),
    ("label", "config, block, tile, target, method"),
    ("config", "config name"), ("config_hash", "hash of the config with block and tile"),
    ("engine", "block_sparse or systolic"), ("block", "pruning block BKxBN"),
    ("tile_m", "token tile BM"), ("target", "FLOPs target R"), ("method", "allocation method"),
    ("flops_ratio", "MACs kept / dense (whole model)"), ("flops", "MACs of one image"),
    ("kept_blocks", "blocks kept"), ("total_blocks", "blocks"),
    ("cycles", "linear layers, one image"), ("latency_us", "cycles / clock"),
    ("energy_uj", "linear layers, one image"), ("power_mw", "energy / latency"),
    ("speedup", "dense cycles / cycles"),
    ("top1", "top-1 of the pruned model on the test set (--evaluate)"),
    ("kl", "mean KL(dense || pruned) in nats (--evaluate)"),
    ("top1_finetuned", "top-1 after --finetune-epochs"), ("kl_finetuned", "KL after finetuning"),
    ("verify", "simulator of --verify"), ("rtl_agreed", "outputs bit-exact and every counter "
                                                         "equal to the model"),
    ("front_energy_top1", "on the energy / top-1 Pareto front"),
    ("front_latency_energy", "on the latency / energy Pareto front"),
)
COLUMN_NAMES = tuple(c for c, _ in COLUMNS)


def point_record(alloc: Any, cfg: HwConfig) -> dict[str, Any]:
    """The figures of one allocation priced on ``cfg`` (what the point cache holds)."""
    t = alloc.totals()
    period_ns = 1000.0 / cfg.clock_mhz

    def power(e_pj: float, cycles: int) -> float:
        return e_pj / (cycles * period_ns) if cycles else 0.0

    return {
        "flops": int(t["flops"]), "dense_flops": int(t["dense_flops"]),
        "flops_ratio": float(t["flops_ratio"]),
        "kept_blocks": int(t["kept_blocks"]), "total_blocks": int(t["total_blocks"]),
        "cycles": int(t["cycles"]), "dense_cycles": int(t["dense_cycles"]),
        "latency_us": t["cycles"] / cfg.clock_mhz,
        "dense_latency_us": t["dense_cycles"] / cfg.clock_mhz,
        "energy_uj": float(t["energy_pj"]) / 1e6,
        "dense_energy_uj": float(t["dense_energy_pj"]) / 1e6,
        "power_mw": power(t["energy_pj"], t["cycles"]),
        "dense_power_mw": power(t["dense_energy_pj"], t["dense_cycles"]),
        "speedup": float(t["speedup"]),
        "beta": alloc.beta, "lambda": alloc.lam,
        "kept_fraction_by_kind": alloc.kept_fraction_by_kind(),
        "labels": alloc.labels, "calibration_images": alloc.n_samples,
    }


def table_row(p: Point, key: str, rec: Mapping[str, Any], ev: Mapping[str, Any] | None,
              ver: Mapping[str, Any] | None) -> dict[str, Any]:
    """One row of the table (columns :data:`COLUMN_NAMES`; fronts filled in later)."""
    ev = ev or {}
    return {
        "point": key, "label": p.label, "config": p.config.name,
        "config_hash": p.config.config_hash(), "engine": p.config.engine, "block": p.block,
        "tile_m": p.tile_m, "target": p.target, "method": p.method,
        "flops_ratio": rec["flops_ratio"], "flops": rec["flops"],
        "kept_blocks": rec["kept_blocks"], "total_blocks": rec["total_blocks"],
        "cycles": rec["cycles"], "latency_us": rec["latency_us"],
        "energy_uj": rec["energy_uj"], "power_mw": rec["power_mw"], "speedup": rec["speedup"],
        "top1": ev.get("top1"), "kl": ev.get("kl"),
        "top1_finetuned": ev.get("top1_finetuned"), "kl_finetuned": ev.get("kl_finetuned"),
        "verify": None if ver is None else ver.get("sim"),
        "rtl_agreed": None if ver is None else ver.get("ok"),
        "front_energy_top1": None, "front_latency_energy": None,
    }


def to_json_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{c: r.get(c) for c in COLUMN_NAMES} for r in rows]


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMN_NAMES)
    for r in rows:
        w.writerow(["" if r.get(c) is None else _csv_cell(r.get(c)) for c in COLUMN_NAMES])
    return buf.getvalue()


def _csv_cell(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return v


def _shown(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, Any]]:
    """(title, column, formatter) of the columns a terminal table shows."""
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    flag = lambda v: "-" if v is None else ("*" if v else "")  # noqa: E731
    cols = [("config", "config", str), ("block", "block", str), ("tile", "tile_m", str),
            ("target", "target", lambda v: f"{v:g}"), ("method", "method", str),
            ("FLOPs", "flops_ratio", lambda v: f"{v:.3f}"),
            ("cycles", "cycles", lambda v: f"{v:,}"),
            ("latency us", "latency_us", lambda v: f"{v:.3f}"),
            ("energy uJ", "energy_uj", lambda v: f"{v:.2f}"),
            ("power mW", "power_mw", lambda v: f"{v:.0f}")]
    if any(r.get("top1") is not None for r in rows):
        cols += [("top-1 %", "top1", pct), ("KL", "kl", lambda v: f"{v:.4f}")]
    if any(r.get("top1_finetuned") is not None for r in rows):
        cols += [("ft top-1 %", "top1_finetuned", pct),
                 ("ft KL", "kl_finetuned", lambda v: f"{v:.4f}")]
    if any(r.get("verify") is not None for r in rows):
        cols += [("RTL", "rtl_agreed",
                  lambda v: "-" if v is None else ("agreed" if v else "MISMATCH"))]
    if any(r.get("front_energy_top1") is not None for r in rows):
        cols += [("E/top1 front", "front_energy_top1", flag)]
    cols += [("lat/E front", "front_latency_energy", flag)]
    return cols


def _cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    cols = _shown(rows)
    body = [[("-" if r.get(c) is None and f is str else f(r.get(c))) for _, c, f in cols]
            for r in rows]
    return [t for t, _, _ in cols], body


def to_text(rows: Sequence[Mapping[str, Any]]) -> str:
    header, body = _cells(rows)
    return format_table(header, body, left=5)


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    header, body = _cells(rows)
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < 5 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"
