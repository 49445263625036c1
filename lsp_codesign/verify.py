"""Check an allocation's layers on the engine, bit-exact and cycle-exact.

Given each layer's real input activations and masked weights (captured by
``lsp_codesign.commands.verify`` from the run's pruned model), :func:`verify_layers`

1. quantises activations and weights to int8 (:mod:`lsp_codesign.quant`);
2. packs the kept blocks and the index and compiles the program (:mod:`lsp_codesign.compiler`),
   the dense layer too;
3. runs the programs on a *runner*: the plain-Python ISS (:func:`iss_runner`) or the RTL
   simulator, which the command layer passes in (this module never imports ``sim/``);
4. compares the int32 outputs with numpy on the same operands, bit for bit, and every hardware
   counter with the cycle/energy model of the run's ``hw.yaml`` (the model the allocator used).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .check import check_run
from .compiler import LayerProgram, compile_layer, reference_gemm
from .config import Engine, HwConfig
from .cycle_model import estimate_layer
from .errors import LspError
from .isa import COUNTERS
from .masks_io import MaskSet
from .quant import dequantize, quantize_activations, quantize_weights
from .table import render

__all__ = ["LayerCheck", "VerifyResult", "VerifyMismatch", "verify_layers", "sample_layers",
           "iss_runner", "Runner", "SIMS"]

SIMS = ("verilator", "icarus", "iss")


class VerifyMismatch(LspError):
    """The RTL disagreed with numpy or with the model (exit status 1)."""

    exit_code = 1


@dataclass
class LayerCheck:
    """The verdict for one layer."""

    name: str
    m: int
    n: int
    k: int
    kept_blocks: int
    total_blocks: int
    y_match: bool
    counters_match: bool
    rtl_cycles: int
    model_cycles: int
    dense_rtl_cycles: int | None
    dense_model_cycles: int
    counters_rtl: dict[str, int]
    counters_model: dict[str, int]
    first_diff: str | None = None
    counter_diffs: list[str] = field(default_factory=list)
    float_rel_err: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.y_match and self.counters_match and self.error is None

    @property
    def measured_speedup(self) -> float | None:
        if self.dense_rtl_cycles is None or not self.rtl_cycles:
            return None
        return self.dense_rtl_cycles / self.rtl_cycles

    @property
    def model_speedup(self) -> float:
        return self.dense_model_cycles / self.model_cycles if self.model_cycles else float("inf")


@dataclass
class VerifyResult:
    run_dir: str
    sim: str
    config: dict
    layers: list[LayerCheck]
    wall_s: float

    @property
    def ok(self) -> bool:
        return all(lc.ok for lc in self.layers)

    def totals(self) -> dict[str, Any]:
        rtl = sum(lc.rtl_cycles for lc in self.layers)
        mod = sum(lc.model_cycles for lc in self.layers)
        dm = sum(lc.dense_model_cycles for lc in self.layers)
        out = {"layers": len(self.layers), "ok": self.ok,
               "layers_failed": [lc.name for lc in self.layers if not lc.ok],
               "rtl_cycles": rtl, "model_cycles": mod, "dense_model_cycles": dm,
               "model_speedup": dm / mod if mod else None}
        if all(lc.dense_rtl_cycles is not None for lc in self.layers):
            dr = sum(lc.dense_rtl_cycles for lc in self.layers)
            out["dense_rtl_cycles"] = dr
            out["measured_speedup"] = dr / rtl if rtl else None
            if out["model_speedup"] and out["measured_speedup"]:
                out["speedup_rel_diff"] = out["measured_speedup"] / out["model_speedup"] - 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "sim": self.sim, "config": self.config,
                "wall_s": self.wall_s, "totals": self.totals(),
                "layers": [dict(asdict(lc), ok=lc.ok, measured_speedup=lc.measured_speedup,
                                model_speedup=lc.model_speedup) for lc in self.layers]}

    def table(self, fmt: str = "text") -> str:
        """The per-layer table, ``text`` or ``markdown`` (:func:`lsp_codesign.table.render`)."""
        hdr = ["layer", "MxN->K", "kept", "RTL cycles", "model cycles", "dense RTL", "speedup",
               "Y", "counters"]
        rows = []
        for lc in self.layers:
            sp = lc.measured_speedup
            rows.append([lc.name, f"{lc.m}x{lc.n}->{lc.k}", f"{lc.kept_blocks}/{lc.total_blocks}",
                         f"{lc.rtl_cycles:,}", f"{lc.model_cycles:,}",
                         "-" if lc.dense_rtl_cycles is None else f"{lc.dense_rtl_cycles:,}",
                         "-" if sp is None else f"{sp:.2f}x",
                         "bit-exact" if lc.y_match else "MISMATCH",
                         "equal" if lc.counters_match else "MISMATCH"])
        t = self.totals()
        sp = t.get("measured_speedup")
        rows.append(["TOTAL", "", "", f"{t['rtl_cycles']:,}", f"{t['model_cycles']:,}",
                     f"{t['dense_rtl_cycles']:,}" if "dense_rtl_cycles" in t else "-",
                     "-" if sp is None else f"{sp:.2f}x",
                     "ok" if all(lc.y_match for lc in self.layers) else "FAIL",
                     "ok" if all(lc.counters_match for lc in self.layers) else "FAIL"])
        return render(fmt, hdr, rows[:-1], left=2, total=rows[-1])


Runner = Callable[[HwConfig, Sequence[LayerProgram]], list]


def iss_runner(cfg: HwConfig, programs: Sequence[LayerProgram], progress: bool = False) -> list:
    """Run programs on the plain-Python ISS (the executable spec), same result shape as RTL."""
    from .iss import Memories, run_iss

    out = []
    for prog in programs:
        t0 = time.perf_counter()
        r = run_iss(cfg, Memories.from_program(prog))
        out.append(_Result(r.y_words(prog.y_base, prog.y_words), r.counters, r.error,
                           r.err_code, time.perf_counter() - t0))
    return out


@dataclass
class _Result:
    y_words: list
    counters: dict
    error: bool
    err_code: int
    wall_s: float


def sample_layers(order: Sequence[str], layers: str, seed: int = 0) -> list[str]:
    """``all`` or a number N of layers sampled by ``seed``, kept in model order."""
    if layers == "all":
        return list(order)
    try:
        n = int(layers)
    except ValueError:
        raise LspError(f"--layers: expected 'all' or a positive number, got {layers!r}") from None
    if not 1 <= n <= len(order):
        raise LspError(f"--layers: {n} is not between 1 and the {len(order)} layers of the run")
    pick = set(np.random.default_rng(seed).choice(len(order), size=n, replace=False).tolist())
    return [name for i, name in enumerate(order) if i in pick]


def verify_layers(cfg: HwConfig, ms: MaskSet, names: Sequence[str],
                  inputs: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray], *,
                  runner: Runner, dense: bool = True, progress: bool = True,
                  where: str = "", who: str = "RTL") -> list[LayerCheck]:
    """Check the named layers of a mask set on ``runner`` (the RTL or the ISS).

    Parameters
    ----------
    cfg : HwConfig
        The ``block_sparse`` config the allocation was priced with.
    ms : MaskSet
        The run's masks (shapes and kept blocks).
    names : sequence of str
        Layers to check, in order.
    inputs, weights : mapping of str to numpy.ndarray
        Per layer: the real input activations ``(M, N)`` and the masked weight ``(K, N)``, in
        float64 (they are quantised to int8 here).
    runner : callable
        ``runner(cfg, programs, progress=...)`` returns one result per program (``y_words``,
        ``counters``, ``error``, ``err_code``), as :func:`iss_runner`.
    dense : bool
        Also run every layer dense (for the measured speedup).
    where : str
        Named in compile errors (the run's ``hw.yaml``).
    who : str
        The runner's name in mismatch messages (``RTL`` or ``ISS``).
    """
    if cfg.engine is not Engine.BLOCK_SPARSE:
        raise LspError(f"{where or cfg.name}: a {cfg.engine} config; only the block_sparse "
                       "engine has RTL to verify against")
    todo = _prepare(cfg, ms, names, inputs, weights, dense, where)
    programs = [lay.prog for lay in todo] + ([lay.dense_prog for lay in todo] if dense else [])
    results = runner(cfg, programs, progress=progress)
    if len(results) != len(programs):
        raise LspError(f"simulator returned {len(results)} results for {len(programs)} programs")
    return [_judge(cfg, ms, lay, results[i], results[len(todo) + i] if dense else None, who)
            for i, lay in enumerate(todo)]


@dataclass
class _Layer:
    """One layer's operands, programs and references, by name (not by tuple position)."""

    name: str
    x_scale: float
    w_scales: np.ndarray
    y_float: np.ndarray
    y_ref: np.ndarray
    y_dense_ref: np.ndarray | None
    prog: LayerProgram
    dense_prog: LayerProgram | None


def _prepare(cfg: HwConfig, ms: MaskSet, names: Sequence[str],
             inputs: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray],
             dense: bool, where: str) -> list[_Layer]:
    """Quantise and compile each layer (and its dense twin), with numpy's references."""
    layers = []
    for name in names:
        m, n, k = ms.gemms[name]
        x = inputs[name]
        if x.shape != (m, n):
            raise LspError(f"{name}: captured input is {x.shape}, the masks say M={m}, N={n}")
        w = weights[name]
        xq, xs = quantize_activations(x)
        wq, ws = quantize_weights(w)
        mask = ms.masks[name]
        try:
            prog = compile_layer(cfg, xq, wq, mask, name=name)
            dprog = compile_layer(cfg, xq, wq, None, name=f"{name} dense") if dense else None
        except LspError as exc:
            raise LspError(f"{exc} (config {where})" if where else str(exc)) from None
        layers.append(_Layer(
            name=name, x_scale=xs, w_scales=ws, y_float=x @ w.T,
            y_ref=reference_gemm(xq, wq, mask, cfg.block_k, cfg.block_n),
            y_dense_ref=reference_gemm(xq, wq, None, cfg.block_k, cfg.block_n) if dense else None,
            prog=prog, dense_prog=dprog))
    return layers


def _judge(cfg: HwConfig, ms: MaskSet, lay: _Layer, res: Any, dres: Any, who: str) -> LayerCheck:
    """The verdict for one layer: its run, and its dense twin's (cycles and result)."""
    m, n, k = ms.gemms[lay.name]
    model_est = estimate_layer(cfg, m, n, k, ms.masks[lay.name], name=lay.name)
    dense_est = estimate_layer(cfg, m, n, k, None, name=lay.name)
    v = check_run(cfg, lay.prog, res, lay.y_ref, model_est.counters, who=who)
    err, diffs = v.error, list(v.counter_diffs)
    dense_rtl = None
    if dres is not None:
        dense_rtl = int(dres.counters["cycles"])
        dv = check_run(cfg, lay.dense_prog, dres, lay.y_dense_ref, dense_est.counters, who=who)
        if not dv.y_match:
            err = (err + "; " if err else "") + "dense run: " + dv.first_diff
        if dv.error:
            err = (err + "; " if err else "") + "dense run: " + dv.error
        if dense_rtl != dense_est.cycles:
            diffs.append(f"dense cycles: {who} {dense_rtl}, model {dense_est.cycles}")
    # quantisation error of the int8 layer against the float (pruned) layer, for reference
    y_deq = dequantize(lay.y_ref, lay.x_scale, lay.w_scales)
    rel = float(np.abs(y_deq - lay.y_float).max() / max(np.abs(lay.y_float).max(), 1e-12))
    return LayerCheck(
        name=lay.name, m=m, n=n, k=k, kept_blocks=model_est.kept_blocks,
        total_blocks=model_est.total_blocks, y_match=v.y_match, counters_match=not diffs,
        rtl_cycles=int(res.counters["cycles"]), model_cycles=model_est.cycles,
        dense_rtl_cycles=dense_rtl, dense_model_cycles=dense_est.cycles,
        counters_rtl={c: int(res.counters[c]) for c in COUNTERS},
        counters_model={c: int(model_est.counters[c]) for c in COUNTERS},
        first_diff=v.first_diff, counter_diffs=diffs, float_rel_err=rel, error=err)
