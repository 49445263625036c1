"""The run directory: the one module that reads and writes it.

``lsp-codesign allocate`` creates a run directory; the other commands read it and add their
results. Every file name, every JSON key and the format version live here::

    allocation.json        the allocation (FORMAT): model, checkpoint, method, target, block,
                           seed, beta/lambda, per-layer results, the hw config's hash, the
                           arguments, and the allocation's own hash (allocation_hash)
    masks.safetensors      block masks (lsp_codesign.masks_io)
    hw.yaml                the hardware config the allocation was priced with
    curves.npz             per-layer distortion curves, slopes, energy, FLOPs
    plots/                 the allocation's plots (lsp_codesign.plots_alloc)
    verify.json            `verify`: per-layer RTL/ISS counters and verdicts
    finetuned.safetensors  `finetune`: the finetuned weights
    finetune.json          `finetune`: its settings and history
    evaluate.json          `evaluate`: top-1 and KL of the dense, pruned and finetuned models
    report/                `report`: report.md, report.json and plots

**Integrity.** ``allocation_hash`` covers ``allocation.json`` and the bytes of
``masks.safetensors``; ``hw.config_hash`` the config in ``hw.yaml``. :func:`read_run` checks
both, so an edited allocation, masks file or config is refused (a different config only when
the caller passes one explicitly, and then :attr:`Run.hw_overridden` says so). Results written
later record the hashes they were computed from; a stale ``verify.json`` or a finetuned model
of another allocation is detected.

**Writers.** A run directory is built whole under a temporary name (:func:`new_run`); every
later file is replaced atomically under the run's lock (:mod:`lsp_codesign.atomic`), so two
commands never interleave their writes to one run.

Readers return typed objects (:class:`Run`, :class:`AllocationRecord`, :class:`VerifyRecord`);
every problem is one :class:`RunDirError` naming the file and the field.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .atomic import OutputError, output_dir, output_lock, replace_file
from .config import HwConfig, load_config
from .errors import LspError
from .masks_io import MaskSet, load_masks

__all__ = [
    "FORMAT", "ALLOCATION_JSON", "MASKS", "HW_YAML", "CURVES", "PLOTS", "VERIFY_JSON",
    "FINETUNED", "FINETUNE_JSON", "EVALUATE_JSON", "REPORT_DIR",
    "RunDirError", "AllocationRecord", "Run", "VerifiedLayer", "VerifyRecord",
    "read_run", "read_allocation", "read_verify", "finetuned_weights", "is_run_dir",
    "new_run", "write_run", "write_run_files", "allocation_document", "write_allocation",
    "run_lock", "weights_stamp",
    "write_verify", "write_finetune", "write_evaluate", "write_report", "write_json",
]

FORMAT = "lsp-codesign-allocation/2"
_FORMAT_NAME, _FORMAT_VERSION = FORMAT.rsplit("/", 1)
VERIFY_FORMAT = "lsp-codesign-verify/1"

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
_HASH_KEY = "allocation_hash"
_WEIGHTS_KEY = "lsp_allocation_hash"  # in finetuned.safetensors' metadata


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
    method : str
        Allocation method.
    flops_target : float or None
        FLOPs target R.
    block : tuple of int
        ``(BK, BN)``.
    seed : int
        Seed of the calibration images (verify takes its image and layer sample from it).
    hw_hash : str
        ``HwConfig.config_hash()`` of the config the allocation was priced with.
    allocation_hash : str
        The recorded hash of ``allocation.json`` and ``masks.safetensors``.
    doc : dict
        The whole parsed document.
    """

    model: str
    checkpoint: str | None
    data: str | None
    method: str
    flops_target: float | None
    block: tuple[int, int]
    seed: int
    hw_hash: str
    allocation_hash: str
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
        The config in use: ``hw.yaml``, or the one the caller passed (then ``hw_overridden``).
    hw_overridden : bool
        The caller passed a config other than the run's ``hw.yaml`` (hashes differ).
    """

    path: Path
    allocation: AllocationRecord
    masks: MaskSet
    hw: HwConfig | None = None
    hw_overridden: bool = False

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

    @property
    def allocation_hash(self) -> str:
        return self.allocation.allocation_hash

    @property
    def hw_hash(self) -> str | None:
        """Hash of the config in use (:attr:`hw`)."""
        return None if self.hw is None else self.hw.config_hash()

    def file(self, name: str) -> Path:
        """Path of one of the run's files (``rundir.VERIFY_JSON``, ...)."""
        return self.path / name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RunDirError(f"{path}: not valid JSON ({msg})") from None


def _check_format(doc: Mapping[str, Any], where: Path) -> None:
    fmt = doc.get("format")
    name, _, version = fmt.rpartition("/") if isinstance(fmt, str) else ("", "", "")
    shown = repr(fmt)[:60]
    if name != _FORMAT_NAME or not version.isdigit():
        raise RunDirError(f"{where}: format {shown} is not a run directory format this "
                          f"lsp-codesign reads ({FORMAT!r}); it was written by an older "
                          "version or by hand: run 'lsp-codesign allocate' again")
    if int(version) < int(_FORMAT_VERSION):
        raise RunDirError(f"{where}: format {shown} is older than this lsp-codesign reads "
                          f"({FORMAT!r}): run 'lsp-codesign allocate' again")
    if int(version) > int(_FORMAT_VERSION):
        raise RunDirError(f"{where}: format {shown} was written by a newer lsp-codesign (this "
                          f"one reads {FORMAT!r}): upgrade lsp-codesign")


_MISSING = object()


def _field(doc: Mapping[str, Any], key: str, types: type | tuple, where: Path, what: str, *,
           null: bool = False) -> Any:
    v = doc.get(key, _MISSING)
    if v is _MISSING:
        raise RunDirError(f"{where}: {key!r} is missing")
    if v is None and null:
        return None
    if isinstance(v, bool) or not isinstance(v, types):
        raise RunDirError(f"{where}: {key!r} must be {what}{' or null' if null else ''}, got "
                          f"{repr(v)[:60]}")
    return v


def read_allocation(run_dir: str | os.PathLike) -> AllocationRecord:
    """Read and check a run directory's ``allocation.json`` alone (not its hash)."""
    from .config_schema import ConfigError, parse_block

    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: run directory not found")
    where = path / ALLOCATION_JSON
    if not where.is_file():
        raise RunDirError(f"{where}: not found (is {path} a run directory written by "
                          "'lsp-codesign allocate'?)")
    doc = _read_json(where)
    if not isinstance(doc, dict):
        raise RunDirError(f"{where}: expected a JSON object")
    _check_format(doc, where)
    model = _field(doc, "model", str, where, "a model name")
    ckpt = _field(doc, "checkpoint", str, where, "a path", null=True)
    if ckpt is not None and not Path(ckpt).is_absolute() and not Path(ckpt).exists():
        # a relative path is taken relative to the run directory when it is not found as given
        if (path / ckpt).exists():
            ckpt = str(path / ckpt)
    seed = _field(doc, "seed", int, where, "an integer >= 0")
    if seed < 0:
        raise RunDirError(f"{where}: 'seed' must be an integer >= 0, got {seed}")
    try:
        block = parse_block(_field(doc, "block", str, where, "BKxBN"), where=str(where))
    except ConfigError as exc:
        raise RunDirError(str(exc)) from None
    target = _field(doc, "flops_target", (int, float), where, "a number", null=True)
    hw = _field(doc, "hw", dict, where, "an object")
    return AllocationRecord(
        model=model, checkpoint=ckpt,
        data=_field(doc, "data", str, where, "a folder", null=True) or None,
        method=_field(doc, "method", str, where, "a method name"),
        flops_target=None if target is None else float(target), block=block, seed=seed,
        hw_hash=_field(hw, "config_hash", str, where, "a config hash (in 'hw')"),
        allocation_hash=_field(doc, _HASH_KEY, str, where, "a hash"), doc=doc)


def _canonical(doc: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != _HASH_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _allocation_hash(doc: Mapping[str, Any], masks_file: Path) -> str:
    h = hashlib.sha256(_canonical(doc))
    h.update(b"\0" + hashlib.sha256(masks_file.read_bytes()).digest())
    return h.hexdigest()[:16]


def read_run(run_dir: str | os.PathLike, *, need_hw: bool = True,
             hw: HwConfig | None = None) -> Run:
    """Read and check a run directory: allocation, masks, their hash, and the hw config.

    Parameters
    ----------
    run_dir : path-like
        The run directory.
    need_hw : bool
        Read ``hw.yaml`` and check it against the hash the allocation recorded.
    hw : HwConfig, optional
        A config the user chose explicitly (``--hw``): used instead of ``hw.yaml``; its block
        must still be the masks' block. :attr:`Run.hw_overridden` tells whether it differs
        from the config the allocation was priced with.

    Raises
    ------
    RunDirError
        A missing or malformed file, a format older or newer than this version reads, files
        that disagree (model, block), an allocation or masks file changed after ``allocate``
        wrote it, or a ``hw.yaml`` changed since (without ``hw``).
    """
    path = Path(run_dir)
    alloc = read_allocation(path)
    masks = load_masks(path / MASKS)
    if masks.model and masks.model != alloc.model:
        raise RunDirError(f"{path / MASKS}: masks are for model {masks.model!r}, but "
                          f"{ALLOCATION_JSON} says {alloc.model!r}")
    if _allocation_hash(alloc.doc, path / MASKS) != alloc.allocation_hash:
        raise RunDirError(f"{path}: {ALLOCATION_JSON} or {MASKS} changed after 'lsp-codesign "
                          f"allocate' wrote them (their hash is not the recorded "
                          f"{alloc.allocation_hash}); run allocate again")
    cfg = hw
    if cfg is None and need_hw:
        cfg = load_config(path / HW_YAML)
        if cfg.config_hash() != alloc.hw_hash:
            raise RunDirError(
                f"{path / HW_YAML}: changed since 'lsp-codesign allocate' priced this run "
                f"(config hash {cfg.config_hash()}, the allocation was priced with "
                f"{alloc.hw_hash}); restore it, run allocate again, or pass --hw CFG to use "
                "another config on purpose")
    if cfg is not None and cfg.block != masks.block:
        name = HW_YAML if hw is None else (cfg.source or "--hw")
        raise RunDirError(f"{path}: {name} has block {cfg.block_str} but the masks use "
                          f"{masks.block_str}")
    return Run(path=path, allocation=alloc, masks=masks, hw=cfg,
               hw_overridden=cfg is not None and cfg.config_hash() != alloc.hw_hash)


def is_run_dir(path: Path) -> bool:
    """A directory ``allocate`` may replace with ``--overwrite``: a run directory, or empty."""
    return path.is_dir() and ((path / ALLOCATION_JSON).is_file() or not any(path.iterdir()))


def _stamp(path: Path) -> list[int] | None:
    """Identity of a file's current contents (inode, size, mtime), or None if absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def finetuned_weights(run: Run) -> Path | None:
    """``finetuned.safetensors`` when ``finetune`` wrote it for this very allocation.

    Raises
    ------
    RunDirError
        The file records another allocation (or none): it is stale.
    """
    p = run.path / FINETUNED
    if not p.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="numpy") as f:
            recorded = (f.metadata() or {}).get(_WEIGHTS_KEY)
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise RunDirError(f"{p}: not a readable safetensors file ({str(exc)[:200]})") from None
    if recorded != run.allocation_hash:
        raise RunDirError(f"{p}: made for another allocation (recorded {recorded!r}, this run "
                          f"is {run.allocation_hash}); run 'lsp-codesign finetune "
                          "--overwrite'")
    return p


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
    allocation_hash: str | None
    hw_hash: str | None
    doc: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def source(self) -> str:
        """``ISS`` or ``RTL``: where the measured figures come from."""
        return "ISS" if self.sim == "iss" else "RTL"

    def matches(self, run: Run) -> bool:
        """Whether it was measured on this allocation with the config ``run`` uses."""
        return self.allocation_hash == run.allocation_hash and self.hw_hash == run.hw_hash


def read_verify(run: Run) -> VerifyRecord | None:
    """The run's ``verify.json``, or ``None`` when ``verify`` has not run."""
    where = run.path / VERIFY_JSON
    if not where.is_file():
        return None
    doc = _read_json(where)
    try:
        layers = tuple(
            VerifiedLayer(name=str(lay["name"]), ok=lay.get("ok") is True,
                          counters={str(k): int(v) for k, v in lay["counters_rtl"].items()},
                          dense_cycles=(None if lay.get("dense_rtl_cycles") is None
                                        else int(lay["dense_rtl_cycles"])))
            for lay in doc.get("layers", []))
        return VerifyRecord(sim=str(doc.get("sim", "")), layers=layers,
                            allocation_hash=doc.get(_HASH_KEY), hw_hash=doc.get("hw_hash"),
                            doc=doc)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise RunDirError(f"{where}: malformed ({type(exc).__name__}: "
                          f"{str(exc)[:100]})") from None


# --------------------------------------------------------------------------------------------
# Writing


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON (2-space indent) atomically: a temporary file renamed over ``path``."""
    text = json.dumps(data, indent=2, default=_plain) + "\n"
    replace_file(path, lambda tmp: tmp.write_text(text))


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
    from .masks_io import save_masks

    save_masks(tmp / MASKS, masks)
    (tmp / HW_YAML).write_text(cfg.to_yaml())
    doc = {"format": FORMAT, **doc}
    doc["hw"] = {**doc.get("hw", {}), "config_hash": cfg.config_hash()}
    doc = json.loads(json.dumps(doc, default=_plain))  # the values as they will read back
    doc[_HASH_KEY] = _allocation_hash(doc, tmp / MASKS)
    write_json(tmp / ALLOCATION_JSON, doc)


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


def write_allocation(tmp: Path, alloc: Any, cfg: HwConfig, meta: Mapping[str, Any]) -> None:
    """The files of an allocation's run directory, into a directory from :func:`new_run`."""
    import numpy as np

    from .plots_alloc import write_plots

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
    if weights_stamp is not None and _stamp(run.path / FINETUNED) != weights_stamp:
        raise RunDirError(f"{run.path / FINETUNED}: replaced while this command ran; nothing "
                          "written")


def write_verify(run: Run, result: Any, *, weights: Path | None = None) -> Path:
    """Write ``verify.json`` from a :class:`~lsp_codesign.verify.VerifyResult`.

    It records the allocation's hash and the hash of the config used, so that ``report`` uses
    its measured figures only for this allocation on this config.
    """
    path = run.path / VERIFY_JSON
    doc = {"format": VERIFY_FORMAT, **result.to_dict(), _HASH_KEY: run.allocation_hash,
           "hw_hash": run.hw_hash, "hw_overridden": run.hw_overridden,
           "weights": FINETUNED if weights is not None else "dense checkpoint"}
    with run_lock(run):
        _check_unchanged(run)
        write_json(path, doc)
    return path


def weights_stamp(run: Run) -> list[int] | None:
    """The identity of the run's finetuned weights now (pass it back to the writers)."""
    return _stamp(run.path / FINETUNED)


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
        meta = {_WEIGHTS_KEY: run.allocation_hash, "lsp_masks": str(run.path / MASKS)}
        replace_file(out, lambda tmp: save_model(tmp, meta))
        write_json(run.path / FINETUNE_JSON, {**record, _HASH_KEY: run.allocation_hash})


def write_evaluate(run: Run, record: Mapping[str, Any], stamp: list[int] | None) -> Path:
    """Write ``evaluate.json``, if the finetuned weights are still those evaluated."""
    path = run.path / EVALUATE_JSON
    with run_lock(run):
        _check_unchanged(run, stamp)
        if stamp is None and (run.path / FINETUNED).exists():
            raise RunDirError(f"{run.path / FINETUNED}: appeared while evaluate ran; nothing "
                              "written (run evaluate again)")
        write_json(path, {**record, _HASH_KEY: run.allocation_hash})
    return path


def write_report(out_dir: str | Path, rep: Any) -> Path:
    """Write a :class:`~lsp_codesign.report.ModelReport`: report.md, report.json, plots.

    The directory is created if needed; each file is replaced atomically.
    """
    from .atomic import check_output_path
    from .report import save_plots

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
