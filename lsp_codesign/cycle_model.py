"""Cycle/energy model of the engines: one cost-model object per engine.

* :class:`BlockSparseCost` prices the lsp-codesign engine: the layer's tiling
  (:func:`lsp_codesign.tiling.plan_layer`) and the cycle formula of ``docs/hw.md`` §6
  (:func:`lsp_codesign.schedule.schedule`, the only place it is written), plus the compiler's
  fixed 8-instruction program. It predicts every RTL counter exactly.
* :class:`SystolicCost` prices the TPU-like array analytically (:mod:`lsp_codesign.systolic_model`).

Energy = sum(events x energy per event) + static power x time, every figure from the
:class:`~lsp_codesign.config.HwConfig`. ``p_m`` (:func:`p_m_pj`) is the on-chip energy of one
within-block matmul (BM tokens x one kept block), the quantity the LSP allocator's power term is
built on.

Pure Python + numpy: importing this module does not import torch, amaranth or cocotb.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .compiler import LAYER_PROGRAM_LENGTH
from .config import Engine, HwConfig
from .hwspec import DATA_MEMORIES, MEMORIES
from .errors import LspError
from .isa import COUNTERS
from .packing import BlockGrid
from .schedule import schedule
from .systolic_model import systolic_counters, systolic_curves
from .tiling import plan_layer

__all__ = [
    "LayerEstimate", "estimate_layer", "layer_curves", "p_m_pj", "energy_breakdown",
    "ENERGY_COMPONENTS", "CostModel", "BlockSparseCost", "SystolicCost", "cost_model",
    "CounterOverflowWarning", "INSN_CYCLES",
]

ENERGY_COMPONENTS = ("mac", *MEMORIES, "dram", "static")
INSN_CYCLES = 2  # fetch + execute, every instruction


class CounterOverflowWarning(UserWarning):
    """A predicted counter exceeds the hardware counters' width (they would wrap around)."""


@dataclass
class LayerEstimate:
    """The model's prediction for one layer.

    Attributes
    ----------
    counters : dict[str, int]
        Block-sparse: every RTL counter (:data:`lsp_codesign.isa.COUNTERS`). Systolic:
        ``cycles, folds, folds_kept, macs, xmem_bytes, wmem_bytes, ymem_bytes, dram_bytes``.
    energy_pj : dict[str, float]
        Energy by component (:data:`ENERGY_COMPONENTS`, zero where a component does not apply).
    warnings : list[str]
        Counters that would overflow the hardware's counter width.
    """

    name: str
    engine: str
    m: int
    n: int
    k: int
    block_k: int
    block_n: int
    kept_blocks: int
    total_blocks: int
    counters: dict[str, int]
    energy_pj: dict[str, float]
    clock_mhz: float
    array_size: int
    effective_macs: int
    extra: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def cycles(self) -> int:
        return int(self.counters["cycles"])

    @property
    def time_us(self) -> float:
        return self.cycles / self.clock_mhz

    @property
    def energy_total_pj(self) -> float:
        return float(sum(self.energy_pj.values()))

    @property
    def power_mw(self) -> float:
        t_ns = self.cycles * 1000.0 / self.clock_mhz
        return self.energy_total_pj / t_ns if t_ns else 0.0

    @property
    def dense_macs(self) -> int:
        return self.m * self.n * self.k

    @property
    def kept_fraction(self) -> float:
        return self.kept_blocks / self.total_blocks

    @property
    def utilization(self) -> float:
        """Useful MACs (real elements of kept blocks) over array capacity for the run."""
        cap = self.cycles * self.array_size
        return self.effective_macs / cap if cap else 0.0

    @property
    def dram_bytes(self) -> int:
        c = self.counters
        if "dram_read_bytes" in c:
            return int(c["dram_read_bytes"]) + int(c["dram_write_bytes"])
        return int(c["dram_bytes"])

    @property
    def intensity(self) -> float:
        """Arithmetic intensity: useful MACs per DRAM byte."""
        return self.effective_macs / self.dram_bytes if self.dram_bytes else float("inf")

    @property
    def memory_bound(self) -> bool:
        """The roofline's side: the DMA works longer than the array, summed over the layer
        (block-sparse). Single phases of a compute-bound layer may still stall (``dma_stall``)."""
        c = self.counters
        return "dma_cycles" in c and c["dma_cycles"] > c["compute"] + c["fill"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "engine": str(self.engine), "m": self.m, "n": self.n,
            "k": self.k, "block": f"{self.block_k}x{self.block_n}",
            "kept_blocks": self.kept_blocks, "total_blocks": self.total_blocks,
            "kept_fraction": self.kept_fraction, "cycles": self.cycles, "time_us": self.time_us,
            "energy_pj": dict(self.energy_pj), "energy_total_pj": self.energy_total_pj,
            "power_mw": self.power_mw, "utilization": self.utilization,
            "effective_macs": self.effective_macs, "dense_macs": self.dense_macs,
            "dram_bytes": self.dram_bytes, "intensity": self.intensity,
            "memory_bound": self.memory_bound, "counters": dict(self.counters),
            "warnings": list(self.warnings), **self.extra,
        }


class CostModel:
    """Prices layers on one engine; :func:`cost_model` picks the class for a config."""

    def __init__(self, cfg: HwConfig, *, replan: bool = True) -> None:
        self.cfg = cfg
        self.replan = replan    # block-sparse: tile for the mask (False: the shape's plan)

    @property
    def array_size(self) -> int:
        return self.cfg.array_rows * self.cfg.array_cols

    def counters(self, m: int, n: int, k: int, mask: np.ndarray | None,
                 name: str) -> dict[str, int]:
        raise NotImplementedError

    def curves(self, m: int, n: int, k: int, order: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def energy(self, counters: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def p_m(self) -> float:
        raise NotImplementedError


class BlockSparseCost(CostModel):
    """The lsp-codesign engine: tiling + the cycle formula + the compiler's program."""

    def counters(self, m, n, k, mask, name):
        cfg = self.cfg
        grid = BlockGrid(k, n, cfg.block_k, cfg.block_n)
        mask = np.ones(grid.shape, dtype=bool) if mask is None else mask
        plan = plan_layer(cfg, m, n, k, name=name, mask=mask if self.replan else None)
        nnz, rows = plan.group_counts(mask)
        return self._program(schedule(cfg, plan, nnz, rows))

    @staticmethod
    def _program(gemm: dict[str, Any]) -> dict[str, Any]:
        c = {name: 0 for name in COUNTERS}
        c.update(gemm)
        c["insns"] = c["imem_reads"] = LAYER_PROGRAM_LENGTH
        c["cycles"] = INSN_CYCLES * LAYER_PROGRAM_LENGTH + gemm["busy"]
        return c

    def curves(self, m, n, k, order):
        cfg = self.cfg
        plan = plan_layer(cfg, m, n, k)
        grid = BlockGrid(k, n, cfg.block_k, cfg.block_n)
        nblk = grid.n_blocks
        order = np.asarray(order)
        if order.shape != (nblk,) or not np.array_equal(np.sort(order), np.arange(nblk)):
            raise ValueError(f"order must be a permutation of the {nblk} block indices")
        rank = np.empty(nblk, dtype=np.int64)
        rank[order] = np.arange(nblk)
        rank = rank.reshape(grid.shape)
        gk, gn = plan.groups
        row_g = np.arange(grid.kb) // plan.kg
        col_h = np.arange(grid.nb) // plan.ng
        # a block is kept at pruned = p while p <= rank; counts of ranks per group, reversed
        nnz = np.zeros((gk, gn, nblk + 2), dtype=np.int64)
        np.add.at(nnz, (row_g[:, None], col_h[None, :], rank), 1)
        # a block row of a column group is non-empty while p <= its highest rank
        top = np.full((grid.kb, gn), -1, dtype=np.int64)
        np.maximum.at(top, (np.arange(grid.kb)[:, None], col_h[None, :]), rank)
        rows = np.zeros((gk, gn, nblk + 2), dtype=np.int64)
        np.add.at(rows, (row_g[:, None], np.arange(gn)[None, :], top), 1)
        nnz = nnz[..., ::-1].cumsum(axis=-1)[..., ::-1][..., : nblk + 1]
        rows = rows[..., ::-1].cumsum(axis=-1)[..., ::-1][..., : nblk + 1]
        parts = []
        step = max(1, 4_000_000 // max(1, plan.n_tiles + 2))
        for s in range(0, nblk + 1, step):
            parts.append(schedule(cfg, plan, nnz[..., s: s + step], rows[..., s: s + step]))
        gemm = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        return self._program(gemm)

    def energy(self, counters):
        cfg, mem = self.cfg, self.cfg.memories
        e = {comp: 0.0 for comp in ENERGY_COMPONENTS}
        e["mac"] = counters["macs"] * cfg.mac_pj
        e["imem"] = counters["imem_reads"] * mem["imem"].access_pj
        for name in DATA_MEMORIES:
            e[name] = (counters[f"{name}_reads"] + counters[f"{name}_writes"]) * \
                mem[name].access_pj
        e["dram"] = (counters["dram_read_bytes"] + counters["dram_write_bytes"]) * \
            cfg.dram_pj_per_byte
        e["static"] = counters["cycles"] * cfg.static_pj_per_cycle
        return e

    def p_m(self):
        cfg, mem = self.cfg, self.cfg.memories
        bm, bk, bn = cfg.tile_m, cfg.block_k, cfg.block_n
        return (bm * bk * bn * cfg.mac_pj + bm * mem["xmem"].access_pj
                + cfg.words_per_block * mem["wmem"].access_pj + mem["idx"].access_pj
                + bm * cfg.static_pj_per_cycle)


class SystolicCost(CostModel):
    """The TPU-like array, SCALE-Sim's convention (:mod:`lsp_codesign.systolic_model`)."""

    def counters(self, m, n, k, mask, name):
        return systolic_counters(self.cfg, m, n, k, mask)

    def curves(self, m, n, k, order):
        return systolic_curves(self.cfg, m, n, k, np.asarray(order))

    def energy(self, counters):
        cfg, mem = self.cfg, self.cfg.memories
        e = {comp: 0.0 for comp in ENERGY_COMPONENTS}
        e["mac"] = counters["macs"] * cfg.mac_pj
        for name in ("xmem", "wmem", "ymem"):
            e[name] = counters[f"{name}_bytes"] * mem[name].pj_per_byte
        e["dram"] = counters["dram_bytes"] * cfg.dram_pj_per_byte
        e["static"] = counters["cycles"] * cfg.static_pj_per_cycle
        return e

    def p_m(self):
        cfg, mem = self.cfg, self.cfg.memories
        bm, bk, bn = cfg.tile_m, cfg.block_k, cfg.block_n
        return (bm * bk * bn * cfg.mac_pj + bm * bn * mem["xmem"].pj_per_byte
                + bk * bn * mem["wmem"].pj_per_byte + bm * bk * 4 * mem["ymem"].pj_per_byte)


_COST_MODELS = {Engine.BLOCK_SPARSE: BlockSparseCost, Engine.SYSTOLIC: SystolicCost}


def cost_model(cfg: HwConfig, *, replan: bool = True) -> CostModel:
    """The cost model of ``cfg``'s engine (``replan``: see :func:`estimate_layer`)."""
    return _COST_MODELS[cfg.engine](cfg, replan=replan)


def p_m_pj(cfg: HwConfig) -> float:
    """Energy of one within-block matmul: BM token rows times one kept block (``docs/hw.md``)."""
    return cost_model(cfg).p_m()


def energy_breakdown(cfg: HwConfig, counters: dict[str, Any]) -> dict[str, Any]:
    """Energy (pJ) by component from a counter dict (works on scalars or numpy arrays)."""
    return cost_model(cfg).energy(counters)


def _check_shape(m: Any, n: Any, k: Any, name: str) -> None:
    for nm, v in (("M", m), ("N", n), ("K", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name or 'gemm'}: {nm} must be a positive integer, got {v!r}")
        if v >= 1 << 32:
            raise LspError(f"{name or 'gemm'}: {nm}={v} is beyond the 32-bit shapes the "
                           "engines handle")


def _overflow(cfg: HwConfig, counters: dict[str, int], name: str) -> list[str]:
    if cfg.engine is not Engine.BLOCK_SPARSE:     # only the RTL engine has counters
        return []
    limit = 1 << cfg.counter_bits
    out = [f"{name or 'gemm'}: counter {key} = {v:,} exceeds the {cfg.counter_bits}-bit "
           f"hardware counters (they would wrap around)"
           for key, v in counters.items() if key in COUNTERS and int(v) >= limit]
    for msg in out:
        warnings.warn(msg, CounterOverflowWarning, stacklevel=3)
    return out


def estimate_layer(cfg: HwConfig, m: int, n: int, k: int, mask: np.ndarray | None = None,
                   *, name: str = "", replan: bool = True) -> LayerEstimate:
    """Predict every counter, the cycles and the energy of ``Y[M x K] = X[M x N] . W^T``.

    For the block-sparse engine the prediction is for the compiler's program
    (:func:`lsp_codesign.compiler.compile_layer`), instruction overheads included, and equals
    the RTL's counters exactly. The compiler tiles for the mask (the plan with the fewest
    cycles for it); ``replan=False`` prices the shape's default plan instead, as
    :func:`layer_curves` does at every pruning level (never fewer cycles than the mask's plan).
    """
    _check_shape(m, n, k, name)
    m, n, k = int(m), int(n), int(k)
    grid = BlockGrid(k, n, cfg.block_k, cfg.block_n)
    dense = mask is None
    mask = None if dense else grid.check_mask(mask)
    model = cost_model(cfg, replan=replan)
    counters = {key: int(v) for key, v in model.counters(m, n, k, mask, name).items()}
    energy = model.energy(counters)
    kept = grid.n_blocks if dense else int(mask.sum())
    eff = m * n * k if dense else m * int((grid.block_elements() * mask).sum())
    return LayerEstimate(
        name=name, engine=str(cfg.engine), m=m, n=n, k=k, block_k=cfg.block_k,
        block_n=cfg.block_n, kept_blocks=kept, total_blocks=grid.n_blocks, counters=counters,
        energy_pj={k_: float(v) for k_, v in energy.items()}, clock_mhz=cfg.clock_mhz,
        array_size=model.array_size, effective_macs=eff,
        warnings=_overflow(cfg, counters, name))


def layer_curves(cfg: HwConfig, m: int, n: int, k: int,
                 order: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Cycles and energy of a layer at every number of pruned blocks, in one vectorised pass.

    Parameters
    ----------
    order : numpy.ndarray, optional
        Flat block indices (row-major over the ``(KB, NB)`` grid) in the order they are pruned.
        The systolic engine needs it (it skips a fold once all its blocks are gone); for the
        block-sparse engine, which skips empty block rows and prices each row group, it
        defaults to row-major order. The block-sparse engine is priced with the shape's default
        tiling at every level, so each point is an upper bound of what the compiler's
        mask-specific tiling achieves (``estimate_layer(..., replan=False)`` equals it).

    Returns
    -------
    dict
        ``pruned`` (0..n_blocks), ``kept``, ``cycles``, ``energy_pj`` (total) and
        ``energy_<component>`` arrays, each of length ``n_blocks + 1``.
    """
    _check_shape(m, n, k, "")
    grid = BlockGrid(k, n, cfg.block_k, cfg.block_n)
    nblk = grid.n_blocks
    if order is None:
        if cfg.engine is Engine.SYSTOLIC:
            raise ValueError("layer_curves: the systolic engine needs the pruning order")
        order = np.arange(nblk)
    model = cost_model(cfg)
    c = model.curves(int(m), int(n), int(k), order)
    e = model.energy(c)
    pruned = np.arange(nblk + 1)
    out = {"pruned": pruned, "kept": nblk - pruned,
           "cycles": np.asarray(c["cycles"], dtype=np.int64)}
    total = np.zeros(nblk + 1)
    for comp, v in e.items():
        arr = np.broadcast_to(np.asarray(v, dtype=float), (nblk + 1,)).copy()
        out[f"energy_{comp}"] = arr
        total += arr
    out["energy_pj"] = total
    return out
