"""Reading a run directory: every file checked, typed, and tied to the allocation's hash."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..config import HwConfig, load_config
from ..masks_io import load_masks
from .records import (ALLOCATION_JSON, FINETUNED, FORMAT, HASH_KEY, HW_YAML, MASKS, VERIFY_JSON,
                      WEIGHTS_KEY, AllocationRecord, Run, RunDirError, VerifiedLayer,
                      VerifyRecord, allocation_hash, read_json)

_FORMAT_NAME, _FORMAT_VERSION = FORMAT.rsplit("/", 1)

__all__ = ["read_allocation", "read_run", "read_verify", "finetuned_weights", "is_run_dir",
           "file_stamp"]


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
    from ..config_schema import ConfigError, parse_block

    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"{path}: run directory not found")
    where = path / ALLOCATION_JSON
    if not where.is_file():
        raise RunDirError(f"{where}: not found (is {path} a run directory written by "
                          "'lsp-codesign allocate'?)")
    doc = read_json(where)
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
        allocation_hash=_field(doc, HASH_KEY, str, where, "a hash"), doc=doc)


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
    if allocation_hash(alloc.doc, path / MASKS) != alloc.allocation_hash:
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


def file_stamp(path: Path) -> list[int] | None:
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
            recorded = (f.metadata() or {}).get(WEIGHTS_KEY)
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise RunDirError(f"{p}: not a readable safetensors file ({str(exc)[:200]})") from None
    if recorded != run.allocation_hash:
        raise RunDirError(f"{p}: made for another allocation (recorded {recorded!r}, this run "
                          f"is {run.allocation_hash}); run 'lsp-codesign finetune "
                          "--overwrite'")
    return p


def read_verify(run: Run) -> VerifyRecord | None:
    """The run's ``verify.json``, or ``None`` when ``verify`` has not run."""
    where = run.path / VERIFY_JSON
    if not where.is_file():
        return None
    doc = read_json(where)
    try:
        layers = tuple(
            VerifiedLayer(name=str(lay["name"]), ok=lay.get("ok") is True,
                          counters={str(k): int(v) for k, v in lay["counters_rtl"].items()},
                          dense_cycles=(None if lay.get("dense_rtl_cycles") is None
                                        else int(lay["dense_rtl_cycles"])))
            for lay in doc.get("layers", []))
        return VerifyRecord(sim=str(doc.get("sim", "")), layers=layers,
                            allocation_hash=doc.get(HASH_KEY), hw_hash=doc.get("hw_hash"),
                            doc=doc)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise RunDirError(f"{where}: malformed ({type(exc).__name__}: "
                          f"{str(exc)[:100]})") from None


