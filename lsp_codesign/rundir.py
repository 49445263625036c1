"""The run directory: the one module that reads and writes it.

``lsp-codesign allocate`` creates a run directory; the other commands read it and add their
results. Every file name, every JSON key and the format version live here::

    allocation.json        the allocation (FORMAT): model, checkpoint, method, target, block,
                           seed, beta/lambda, per-layer results, the hw config's hash, arguments
    masks.safetensors      block masks (lsp_codesign.masks_io)
    hw.yaml                the hardware config the allocation was priced with
    curves.npz             per-layer distortion curves, slopes, energy, FLOPs
    plots/                 the allocation's plots (lsp_codesign.plots_alloc)
    verify.json            `verify`: per-layer RTL/ISS counters and verdicts
    finetuned.safetensors  `finetune`: the finetuned weights
    finetune.json          `finetune`: its settings and history
    evaluate.json          `evaluate`: top-1 and KL of the dense, pruned and finetuned models
    report/                `report`: report.md, report.json and plots

Readers return typed objects (:class:`Run`, :class:`AllocationRecord`, :class:`VerifyRecord`);
every problem is one :class:`RunDirError` naming the file and the field. A run directory is
written whole or not at all (:func:`atomic_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .config import HwConfig, load_config
from .errors import LspError
from .masks_io import MaskSet, load_masks

__all__ = [
    "FORMAT", "ALLOCATION_JSON", "MASKS", "HW_YAML", "CURVES", "PLOTS", "VERIFY_JSON",
    "FINETUNED", "FINETUNE_JSON", "EVALUATE_JSON", "REPORT_DIR",
    "RunDirError", "AllocationRecord", "Run", "VerifiedLayer", "VerifyRecord",
    "read_run", "read_allocation", "write_run", "allocation_document", "write_allocation",
    "write_verify", "read_verify", "write_finetune", "write_evaluate", "write_report",
    "atomic_dir", "write_json",
]

FORMAT = "lsp-codesign-allocation/1"
_FORMAT_NAME, _FORMAT_VERSION = FORMAT.rsplit("/", 1)

ALLOCATION_JSON = "allocation.json"
MASKS = "masks.safetensors"
HW_YAML = "hw.yaml"
CURVES = "curves.npz"
PLOTS = "plots"
VERIFY_JSON = "verify.json"
FINETUNED = "finetuned.safetensors"
FINETUNE_JSON = "finetune.json"
EVALUATE_JSON = "evaluate.json"
REPORT_DIR = "report"


class RunDirError(LspError):
    """A run directory, or one of its files, that cannot be used."""


# --------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class AllocationRecord:
    """The fields of ``allocation.json`` that other commands use, checked and typed.

    Attributes
    ----------
    model : str
        Model name.
    checkpoint : str or None
        Dense weights the allocation started from, resolved against the run directory when a
        relative path is not found as given (``None``: the model's default weights).
    data : str or None
        Image folder of the calibration images, if any.
    method : str or None
        Allocation method.
    flops_target : float or None
        FLOPs target R.
    seed : int
        Seed of the calibration images (verify takes its image and layer sample from it).
    hw_hash : str or None
        ``HwConfig.config_hash()`` of the config the allocation was priced with.
    doc : dict
        The whole parsed document.
    """

    model: str
    checkpoint: str | None
    data: str | None
    method: str | None
    flops_target: float | None
    seed: int
    hw_hash: str | None
    doc: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Run:
    """A run directory as read by :func:`read_run`.

    Attributes
    ----------
    path : pathlib.Path
        The directory.
    allocation : AllocationRecord
        ``allocation.json``.
    masks : MaskSet
        ``masks.safetensors``.
    hw : HwConfig or None
        ``hw.yaml`` (``None`` when the directory has none and none was required).
    """

    path: Path
    allocation: AllocationRecord
    masks: MaskSet
    hw: HwConfig | None = None

    @property
    def model_name(self) -> str:
        return self.allocation.model

    @property
    def checkpoint(self) -> str | None:
        return self.allocation.checkpoint

    @property
    def data(self) -> str | None:
        return self.allocation.data

    @property
    def seed(self) -> int:
        return self.allocation.seed

    def file(self, name: str) -> Path:
        """Path of one of the run's files (``rundir.VERIFY_JSON``, ...)."""
        return self.path / name

    @property
    def finetuned(self) -> Path | None:
        """The finetuned weights, when ``finetune`` has written them."""
        p = self.path / FINETUNED
        return p if p.is_file() else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunDirError(f"{path}: not valid JSON ({msg})") from None


def _check_format(doc: Mapping[str, Any], where: Path) -> None:
    fmt = doc.get("format")
    name, _, version = str(fmt).rpartition("/") if isinstance(fmt, str) else ("", "", "")
    if name != _FORMAT_NAME or not version.isdigit():
        raise RunDirError(f"{where}: format {fmt!r} is not a run directory format this "
                          f"lsp-codesign reads ({FORMAT!r}); it was written by an older "
                          "version or by hand: run 'lsp-codesign allocate' again")
    if int(version) < int(_FORMAT_VERSION):
        raise RunDirError(f"{where}: format {fmt!r} is older than this lsp-codesign reads "
                          f"({FORMAT!r}): run 'lsp-codesign allocate' again")
    if int(version) > int(_FORMAT_VERSION):
        raise RunDirError(f"{where}: format {fmt!r} was written by a newer lsp-codesign (this "
                          f"one reads {FORMAT!r}): upgrade lsp-codesign")


def _opt(doc: Mapping[str, Any], key: str, types: type | tuple, where: Path, what: str) -> Any:
    v = doc.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, types)):
        raise RunDirError(f"{where}: {key!r} must be {what} or null, got {v!r}")
    return v


def read_allocation(run_dir: str | os.PathLike) -> AllocationRecord:
    """Read and check a run directory's ``allocation.json`` alone."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: run directory not found")
    where = path / ALLOCATION_JSON
    if not where.is_file():
        raise RunDirError(f"{where}: not found (is {path} a run directory written by "
                          "'lsp-codesign allocate'?)")
    doc = _read_json(where)
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
        raise RunDirError(f"{where}: 'model' must be a model name string")
    _check_format(doc, where)
    ckpt = _opt(doc, "checkpoint", str, where, "a path")
    if ckpt is not None and not Path(ckpt).is_absolute() and not Path(ckpt).exists():
        # a relative path is taken relative to the run directory when it is not found as given
        if (path / ckpt).exists():
            ckpt = str(path / ckpt)
    data = _opt(doc, "data", str, where, "a folder")
    seed = _opt(doc, "seed", int, where, "an integer >= 0")
    if seed is not None and seed < 0:
        raise RunDirError(f"{where}: 'seed' must be an integer >= 0 or null, got {seed!r}")
    target = _opt(doc, "flops_target", (int, float), where, "a number")
    hw = doc.get("hw") if isinstance(doc.get("hw"), dict) else {}
    return AllocationRecord(
        model=doc["model"], checkpoint=ckpt, data=data or None,
        method=_opt(doc, "method", str, where, "a method name"),
        flops_target=None if target is None else float(target), seed=seed or 0,
        hw_hash=hw.get("config_hash") if isinstance(hw.get("config_hash"), str) else None,
        doc=doc)


def read_run(run_dir: str | os.PathLike, *, need_hw: bool = False) -> Run:
    """Read and check a run directory's allocation, masks and (when present) hw config.

    Parameters
    ----------
    run_dir : path-like
        The run directory.
    need_hw : bool
        Fail when ``hw.yaml`` is missing (verify and report need it).

    Raises
    ------
    RunDirError
        The directory or a file is missing or malformed, the format is older or newer than
        this version reads, or the files disagree (model, block).
    """
    path = Path(run_dir)
    alloc = read_allocation(path)
    masks = load_masks(path / MASKS)
    if masks.model and masks.model != alloc.model:
        raise RunDirError(f"{path / MASKS}: masks are for model {masks.model!r}, but "
                          f"{ALLOCATION_JSON} says {alloc.model!r}")
    cfg = None
    if need_hw or (path / HW_YAML).exists():
        cfg = load_config(path / HW_YAML)
        if cfg.block != masks.block:
            raise RunDirError(f"{path}: {HW_YAML} has block {cfg.block_str} but the masks use "
                              f"{masks.block_str}")
    return Run(path=path, allocation=alloc, masks=masks, hw=cfg)


@dataclass(frozen=True)
class VerifiedLayer:
    """One layer of ``verify.json``: its verdict and the measured counters."""

    name: str
    ok: bool
    counters: dict[str, int]
    dense_cycles: int | None


@dataclass(frozen=True)
class VerifyRecord:
    """``verify.json`` as read by :func:`read_verify`."""

    sim: str
    layers: tuple[VerifiedLayer, ...]
    doc: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def source(self) -> str:
        """``ISS`` or ``RTL``: where the measured figures come from."""
        return "ISS" if self.sim == "iss" else "RTL"


def _dir(run: Run | str | os.PathLike) -> Path:
    return run.path if isinstance(run, Run) else Path(run)


def read_verify(run: Run | str | os.PathLike) -> VerifyRecord | None:
    """The run's ``verify.json``, or ``None`` when ``verify`` has not run."""
    where = _dir(run) / VERIFY_JSON
    if not where.is_file():
        return None
    doc = _read_json(where)
    try:
        layers = tuple(
            VerifiedLayer(name=str(lay["name"]), ok=bool(lay.get("ok")),
                          counters={str(k): int(v) for k, v in lay["counters_rtl"].items()},
                          dense_cycles=(None if lay.get("dense_rtl_cycles") is None
                                        else int(lay["dense_rtl_cycles"])))
            for lay in doc.get("layers", []))
        sim = str(doc.get("sim", ""))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None
    return VerifyRecord(sim=sim, layers=layers, doc=doc)


# --------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it into place only on success.

    On any exception the partial directory is removed, so a failed run leaves nothing behind.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise LspError(f"{final}: output directory already exists (choose another --out or "
                       "pass --overwrite)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON (sorted keys off, 2-space indent) atomically next to its final name."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_plain) + "\n")
    tmp.replace(p)


def _plain(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def allocation_document(alloc: Any, cfg: HwConfig, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``allocation.json`` document of an :class:`~lsp_codesign.allocator.Allocation`."""
    from . import __version__

    return {
        "format": FORMAT,
        "model": meta["model"],
        "model_source": meta.get("model_source"),
        "checkpoint": meta.get("checkpoint"),
        "data": meta.get("data"),
        "method": alloc.method,
        "flops_target": alloc.flops_target,
        "block": f"{alloc.block_k}x{alloc.block_n}",
        "calib": alloc.n_samples,
        "seed": meta.get("seed"),
        "labels": alloc.labels,
        **alloc.options.record(),
        "kappa": alloc.kappa,
        "smooth": alloc.smooth,
        "exclude": list(meta.get("exclude", [])),
        "beta": alloc.beta,
        "lambda": alloc.lam,
        "threshold": alloc.threshold,
        "hw": {"name": cfg.name, "source": cfg.source, "engine": cfg.engine,
               "block": cfg.block_str, "tile_m": cfg.tile_m, "clock_mhz": cfg.clock_mhz,
               "config_hash": cfg.config_hash(), "p_m_pj": alloc.p_m_pj},
        "totals": alloc.totals(),
        "kept_fraction_by_kind": alloc.kept_fraction_by_kind(),
        "order": list(alloc.layers),
        "layers": alloc.layer_entries(),
        "timings_s": alloc.timings,
        "args": meta.get("args", {}),
        "lsp_codesign_version": __version__,
    }


def write_run(out: str | Path, doc: Mapping[str, Any], masks: MaskSet, cfg: HwConfig, *,
              overwrite: bool = False, extra=None) -> Path:
    """Write a run directory (allocation, masks, hw config) atomically: whole or nothing.

    ``doc`` is the allocation document; its ``format`` is set here. ``extra(tmp_dir)``, if
    given, writes further files (curves, plots) into the directory before it is renamed into
    place.
    """
    from .masks_io import save_masks

    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / ALLOCATION_JSON, {"format": FORMAT, **doc})
        save_masks(tmp / MASKS, masks)
        (tmp / HW_YAML).write_text(cfg.to_yaml())
        if extra is not None:
            extra(tmp)
    return out


def write_allocation(out: str | Path, alloc: Any, cfg: HwConfig, meta: Mapping[str, Any], *,
                     overwrite: bool = False) -> Path:
    """Write the run directory of an allocation: the three files, curves and plots."""

    def curves_and_plots(tmp: Path) -> None:
        import numpy as np

        from .plots_alloc import write_plots

        arrays = {}
        for name, c in alloc.curves.items():
            arrays[f"{name}:order"] = c.order.astype(np.int32)
            arrays[f"{name}:delta"] = c.delta
            arrays[f"{name}:delta_smooth"] = c.delta_smooth
            arrays[f"{name}:slope"] = c.slope
            arrays[f"{name}:energy_pj"] = c.energy_pj
            arrays[f"{name}:flops"] = c.flops
        np.savez_compressed(tmp / CURVES, **arrays)
        write_plots(alloc, tmp / PLOTS)

    return write_run(out, allocation_document(alloc, cfg, meta), alloc.masks, cfg,
                     overwrite=overwrite, extra=curves_and_plots)


def write_verify(run: Run | str | os.PathLike, result: Any) -> Path:
    """Write ``verify.json`` from a :class:`~lsp_codesign.verify.VerifyResult`."""
    path = _dir(run) / VERIFY_JSON
    write_json(path, result.to_dict())
    return path


def write_finetune(run: Run | str | os.PathLike, model: Any, record: Mapping[str, Any],
                   save_model) -> None:
    """Write ``finetuned.safetensors`` (with ``save_model(model, path)``) and its record."""
    save_model(model, _dir(run) / FINETUNED)
    write_json(_dir(run) / FINETUNE_JSON, dict(record))


def write_evaluate(run: Run | str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``evaluate.json``."""
    path = _dir(run) / EVALUATE_JSON
    write_json(path, dict(record))
    return path


def write_report(out_dir: str | Path, rep: Any) -> Path:
    """Write a :class:`~lsp_codesign.report.ModelReport`: report.md, report.json, plots."""
    from .report import save_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(rep.to_markdown())
    write_json(out / "report.json", rep.to_dict())
    save_plots(rep, out)
    return out
