"""The names, format and typed records of a run directory, and its hashes (see the package)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..atomic import replace_file
from ..config import HwConfig
from ..errors import LspError
from ..masks_io import MaskSet

__all__ = ["FORMAT", "VERIFY_FORMAT", "ALLOCATION_JSON", "MASKS", "HW_YAML", "CURVES", "PLOTS",
           "VERIFY_JSON", "FINETUNED", "FINETUNE_JSON", "EVALUATE_JSON", "REPORT_DIR",
           "HASH_KEY", "WEIGHTS_KEY", "RunDirError", "AllocationRecord", "Run",
           "VerifiedLayer", "VerifyRecord", "read_json", "write_json", "plain_json", "allocation_hash"]

FORMAT = "lsp-codesign-allocation/2"
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
HASH_KEY = "allocation_hash"
WEIGHTS_KEY = "lsp_allocation_hash"  # in finetuned.safetensors' metadata


class RunDirError(LspError):
    """A run directory, or one of its files, that cannot be used."""


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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RunDirError(f"{path}: not valid JSON ({msg})") from None


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON (2-space indent) atomically: a temporary file renamed over ``path``."""
    text = json.dumps(data, indent=2, default=plain_json) + "\n"
    replace_file(path, lambda tmp: tmp.write_text(text))


def plain_json(o: Any) -> Any:
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


def _canonical(doc: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != HASH_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def allocation_hash(doc: Mapping[str, Any], masks_file: Path) -> str:
    h = hashlib.sha256(_canonical(doc))
    h.update(b"\0" + hashlib.sha256(masks_file.read_bytes()).digest())
    return h.hexdigest()[:16]


