"""``lsp-codesign estimate``: the model's counters, cycles and energy for one GEMM."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Engine
from ..cycle_model import CounterOverflowWarning, estimate_layer, p_m_pj
from ..errors import LspError
from ..report import bound
from ..table import format_markdown, to_json
from ._common import add_format_arg, add_hw_args, hw_from_args

ORDER = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "estimate", help="cycles, counters and energy of one GEMM (dense or masked)",
        description="Predict every counter, the cycles and the energy of Y[MxK] = X[MxN].W^T "
                    "(M tokens, N input features, K output features) on a hardware config.")
    add_hw_args(p, array=True)
    p.add_argument("--gemm", required=True, metavar="M=..,N=..,K=..",
                   help="GEMM shape, e.g. M=197,N=192,K=576")
    p.add_argument("--mask", metavar="FILE",
                   help="block mask: a .npy (KB, NB) array of 0/1, or a masks.safetensors "
                        "with --layer")
    p.add_argument("--layer", help="layer name inside a masks.safetensors file")
    add_format_arg(p, json_alias=True)
    p.set_defaults(func=run)


def parse_gemm(text: str) -> tuple[int, int, int]:
    """``M=197,N=192,K=576`` -> (197, 192, 576)."""
    vals: dict[str, int] = {}
    for part in text.split(","):
        m = re.fullmatch(r"\s*([MNKmnk])\s*=\s*(\d+)\s*", part)
        if not m:
            raise LspError(f"--gemm: expected M=..,N=..,K=.. with positive integers, got {text!r}")
        key = m.group(1).upper()
        if key in vals:
            raise LspError(f"--gemm: {key} given twice in {text!r}")
        vals[key] = int(m.group(2))
    missing = [k for k in "MNK" if k not in vals]
    if missing:
        raise LspError(f"--gemm: missing {', '.join(missing)} in {text!r}")
    for k, v in vals.items():
        if v <= 0:
            raise LspError(f"--gemm: {k} must be positive, got {v}")
    return vals["M"], vals["N"], vals["K"]


def load_mask_arg(path: str, layer: str | None) -> tuple[np.ndarray, Any]:
    """The mask of ``--mask`` (and ``--layer``), and the mask set it came from (or None)."""
    p = Path(path)
    if not p.is_file():
        raise LspError(f"--mask: {p}: file not found")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise LspError(f"--mask: {p}: not a readable .npy array ({msg})") from None
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype.kind not in "biuf":
            raise LspError(f"--mask: {p}: expected a 2-D array of 0/1 or booleans (KB, NB), "
                           f"got shape {getattr(arr, 'shape', '?')} of "
                           f"{getattr(arr, 'dtype', '?')}")
        return arr, None
    if p.suffix == ".safetensors":
        from ..masks_io import load_masks

        ms = load_masks(p)
        if layer is None:
            raise LspError(f"--mask: {p} holds {len(ms.order)} layers; choose one with --layer "
                           f"(e.g. {ms.order[0]})")
        if layer not in ms.masks:
            raise LspError(f"--layer: {layer[:80]!r} is not in {p}")
        return ms.masks[layer], ms
    raise LspError(f"--mask: {p}: expected a .npy or .safetensors file")


def _check_mask_file(ms: Any, layer: str, cfg: Any, n: int, k: int, path: str) -> None:
    """A masks file's layer must be used with its own block and weight shape."""
    if ms.block != cfg.block:
        raise LspError(f"--mask: {path} was made for block {ms.block_str}, but the config's "
                       f"block is {cfg.block_str}; pass --block {ms.block_str}")
    _m, n_file, k_file = ms.gemms[layer]
    if (n, k) != (n_file, k_file):
        raise LspError(f"--gemm: N={n}, K={k}, but layer {layer} of {path} has N={n_file}, "
                       f"K={k_file}")


def run(args: argparse.Namespace) -> int:
    cfg = hw_from_args(args)
    m, n, k = parse_gemm(args.gemm)
    mask, ms = load_mask_arg(args.mask, args.layer) if args.mask else (None, None)
    if ms is not None:
        _check_mask_file(ms, args.layer, cfg, n, k, args.mask)
    with warnings.catch_warnings():          # said once below, as a line of its own
        warnings.simplefilter("ignore", CounterOverflowWarning)
        est = estimate_layer(cfg, m, n, k, mask, name="gemm")
        dense = estimate_layer(cfg, m, n, k, None, name="gemm") if mask is not None else est
    for line in est.warnings:
        print(f"lsp-codesign estimate: warning: {line}", file=sys.stderr)
    if args.format == "json":
        out = {"config": cfg.to_dict(), "p_m_pj": p_m_pj(cfg), "estimate": est.to_dict()}
        if mask is not None:
            out["dense"] = dense.to_dict()
            out["speedup"] = dense.cycles / est.cycles if est.cycles else None
        print(to_json(out))
    elif args.format == "markdown":
        print(_markdown(cfg, m, n, k, est, dense if mask is not None else None))
    else:
        print(_text(cfg, m, n, k, est, dense if mask is not None else None))
    return 0


def _title(cfg: Any) -> str:
    c = cfg
    return (f"{c.name}: {c.engine}, block {c.block_str}, BM={c.tile_m}, "
            f"array {c.array_rows}x{c.array_cols}"
            + (f", dataflow {c.dataflow}" if c.engine is Engine.SYSTOLIC else "")
            + f", {c.clock_mhz:g} MHz")


def _text(cfg: Any, m: int, n: int, k: int, est: Any, dense: Any) -> str:
    lines = [_title(cfg), f"GEMM M={m} N={n} K={k}: kept blocks {est.kept_blocks}/"
             f"{est.total_blocks}", f"  cycles        {est.cycles:,}   ({est.time_us:.2f} us)"]
    if dense is not None:
        lines.append(f"  dense cycles  {dense.cycles:,}   speedup "
                     f"{dense.cycles / max(est.cycles, 1):.2f}x")
    lines += [f"  energy        {est.energy_total_pj / 1e6:.4f} uJ   power {est.power_mw:.1f} mW"
              f"   utilisation {100 * est.utilization:.1f}%",
              f"  p_m           {p_m_pj(cfg):.1f} pJ (one within-block matmul)"]
    if "dma_cycles" in est.counters:
        c = est.counters
        lines.append(f"  bound         {bound(est)}: DMA {c['dma_cycles']:,} cycles, array "
                     f"{c['compute'] + c['fill']:,}; DRAM {est.dram_bytes:,} bytes, "
                     f"{est.intensity:.1f} useful MACs per byte")
    lines.append("  counters:")
    lines += [f"    {key:<12} {v:,}" for key, v in est.counters.items()]
    lines.append("  energy by component (pJ):")
    lines += [f"    {key:<12} {v:,.1f}" for key, v in est.energy_pj.items() if v]
    return "\n".join(lines)


def _markdown(cfg: Any, m: int, n: int, k: int, est: Any, dense: Any) -> str:
    rows = [["kept blocks", f"{est.kept_blocks}/{est.total_blocks}"],
            ["cycles", f"{est.cycles:,}"], ["time us", f"{est.time_us:.2f}"]]
    if dense is not None:
        rows += [["dense cycles", f"{dense.cycles:,}"],
                 ["speedup", f"{dense.cycles / max(est.cycles, 1):.2f}x"]]
    rows += [["energy uJ", f"{est.energy_total_pj / 1e6:.4f}"],
             ["power mW", f"{est.power_mw:.1f}"],
             ["utilisation", f"{100 * est.utilization:.1f}%"],
             ["p_m pJ", f"{p_m_pj(cfg):.1f}"]]
    if "dma_cycles" in est.counters:
        rows += [["bound", bound(est)], ["DRAM bytes", f"{est.dram_bytes:,}"],
                 ["useful MACs per byte", f"{est.intensity:.1f}"]]
    rows += [[f"counter {key}", f"{v:,}"] for key, v in est.counters.items()]
    rows += [[f"energy pJ {key}", f"{v:,.1f}"] for key, v in est.energy_pj.items() if v]
    return (f"**{_title(cfg)}; GEMM M={m} N={n} K={k}**\n\n"
            + format_markdown(["quantity", "value"], rows))
