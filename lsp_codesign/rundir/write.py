"""Writing a run directory: whole or not at all, one writer at a time (see the package)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..atomic import OutputError, output_dir, output_lock, replace_file
from ..config import HwConfig
from ..masks_io import MaskSet
from .read import file_stamp, is_run_dir, read_allocation
from .records import (ALLOCATION_JSON, CURVES, EVALUATE_JSON, FINETUNE_JSON, FINETUNED, FORMAT,
                      HASH_KEY, HW_YAML, MASKS, PLOTS, REPORT_DIR, VERIFY_FORMAT, VERIFY_JSON,
                      WEIGHTS_KEY,
                      Run, RunDirError, allocation_hash, plain_json, write_json)

__all__ = ["new_run", "run_lock", "write_run", "write_run_files", "allocation_document",
           "write_allocation", "write_verify", "weights_stamp", "write_finetune",
           "write_evaluate", "write_report", "write_run_report"]


@contextlib.contextmanager
def new_run(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A new run directory, built in the yielded temporary directory under the run's lock.

    Call it before the computation: a name that is taken (by a finished run, by a run still
    being written, by a file) fails at once, and the lock keeps a second writer out until the
    directory is in place. With ``overwrite`` only a run directory (or an empty one) is
    replaced.
    """
    with output_dir(out, overwrite=overwrite, replaceable=is_run_dir,
                    what="run directory") as tmp:
        yield tmp


@contextlib.contextmanager
def run_lock(run: Run) -> Iterator[None]:
    """The run's writer lock (the one :func:`new_run` holds); fails at once when taken."""
    with output_lock(run.path, "run directory"):
        yield


def write_run(out: str | Path, doc: Mapping[str, Any], masks: MaskSet, cfg: HwConfig, *,
              overwrite: bool = False, extra: Callable[[Path], None] | None = None) -> Path:
    """Write a run directory (allocation, masks, hw config) whole or not at all.

    ``doc`` is the allocation document; its ``format``, ``hw.config_hash`` and
    ``allocation_hash`` are set here. ``extra(tmp_dir)`` writes further files (curves, plots).
    """
    with new_run(out, overwrite=overwrite) as tmp:
        write_run_files(tmp, doc, masks, cfg)
        if extra is not None:
            extra(tmp)
    return Path(out)


def write_run_files(tmp: Path, doc: Mapping[str, Any], masks: MaskSet, cfg: HwConfig) -> None:
    """The three files of a run directory, into a directory from :func:`new_run`."""
    from ..masks_io import save_masks

    save_masks(tmp / MASKS, masks)
    (tmp / HW_YAML).write_text(cfg.to_yaml())
    doc = {"format": FORMAT, **doc}
    doc["hw"] = {**doc.get("hw", {}), "config_hash": cfg.config_hash()}
    doc = json.loads(json.dumps(doc, default=plain_json))  # the values as they will read back
    doc[HASH_KEY] = allocation_hash(doc, tmp / MASKS)
    write_json(tmp / ALLOCATION_JSON, doc)


def allocation_document(alloc: Any, cfg: HwConfig, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``allocation.json`` document of an :class:`~lsp_codesign.allocator.Allocation`."""
    from .. import __version__

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


def write_allocation(tmp: Path, alloc: Any, cfg: HwConfig, meta: Mapping[str, Any]) -> None:
    """The files of an allocation's run directory, into a directory from :func:`new_run`."""
    import numpy as np

    from ..plots_alloc import write_plots

    write_run_files(tmp, allocation_document(alloc, cfg, meta), alloc.masks, cfg)
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


def _check_unchanged(run: Run, weights_stamp: list[int] | None = None) -> None:
    """Under the lock: the run is the one that was read (and its finetuned weights too)."""
    try:
        now = read_allocation(run.path).allocation_hash
    except RunDirError:
        now = None
    if now != run.allocation_hash:
        raise RunDirError(f"{run.path}: the run directory was replaced while this command ran; "
                          "nothing written")
    if weights_stamp is not None and file_stamp(run.path / FINETUNED) != weights_stamp:
        raise RunDirError(f"{run.path / FINETUNED}: replaced while this command ran; nothing "
                          "written")


def write_verify(run: Run, result: Any, *, weights: Path | None = None) -> Path:
    """Write ``verify.json`` from a :class:`~lsp_codesign.verify.VerifyResult`.

    It records the allocation's hash and the hash of the config used, so that ``report`` uses
    its measured figures only for this allocation on this config.
    """
    path = run.path / VERIFY_JSON
    doc = {"format": VERIFY_FORMAT, **result.to_dict(), HASH_KEY: run.allocation_hash,
           "hw_hash": run.hw_hash, "hw_overridden": run.hw_overridden,
           "weights": FINETUNED if weights is not None else "dense checkpoint"}
    with run_lock(run):
        _check_unchanged(run)
        write_json(path, doc)
    return path


def weights_stamp(run: Run) -> list[int] | None:
    """The identity of the run's finetuned weights now (pass it back to the writers)."""
    return file_stamp(run.path / FINETUNED)


def write_finetune(run: Run, save_model: Callable[[Path, dict[str, str]], None],
                   record: Mapping[str, Any], *, overwrite: bool) -> None:
    """Write ``finetuned.safetensors`` and ``finetune.json`` under the run's lock.

    ``save_model(path, metadata)`` writes the weights; the metadata ties them to this
    allocation. A stale ``evaluate.json`` (of the weights being replaced) is removed.
    """
    out = run.path / FINETUNED
    with run_lock(run):
        _check_unchanged(run)
        if out.exists() and not overwrite:
            raise RunDirError(f"{out}: already exists (pass --overwrite to replace it)")
        (run.path / EVALUATE_JSON).unlink(missing_ok=True)
        meta = {WEIGHTS_KEY: run.allocation_hash, "lsp_masks": str(run.path / MASKS)}
        replace_file(out, lambda tmp: save_model(tmp, meta))
        write_json(run.path / FINETUNE_JSON, {**record, HASH_KEY: run.allocation_hash})


def write_evaluate(run: Run, record: Mapping[str, Any], stamp: list[int] | None) -> Path:
    """Write ``evaluate.json``, if the finetuned weights are still those evaluated."""
    path = run.path / EVALUATE_JSON
    with run_lock(run):
        _check_unchanged(run, stamp)
        if stamp is None and (run.path / FINETUNED).exists():
            raise RunDirError(f"{run.path / FINETUNED}: appeared while evaluate ran; nothing "
                              "written (run evaluate again)")
        write_json(path, {**record, HASH_KEY: run.allocation_hash})
    return path


def write_report(out_dir: str | Path, rep: Any) -> Path:
    """Write a :class:`~lsp_codesign.report.ModelReport`: report.md, report.json, plots.

    The directory is created if needed; each file is replaced atomically.
    """
    from ..atomic import check_output_path
    from ..report import save_plots

    out = Path(out_dir)
    if not out.is_dir():
        check_output_path(out, overwrite=False)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--out {out}: cannot create it ({exc.strerror})") from None
    replace_file(out / "report.md", lambda tmp: tmp.write_text(rep.to_markdown()))
    write_json(out / "report.json", rep.to_dict())
    save_plots(rep, out)
    return out


def write_run_report(run: Run, rep: Any) -> Path:
    """:func:`write_report` into the run's ``report/``, under the run's lock."""
    with run_lock(run):
        _check_unchanged(run)
        return write_report(run.file(REPORT_DIR), rep)
