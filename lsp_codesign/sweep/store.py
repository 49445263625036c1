"""SWEEP_DIR: the sweep's results and its cache, safe for several sweeps at once.

::

    SWEEP_DIR/sweep-format               marks the directory as a sweep's ("lsp-codesign-sweep/1")
    SWEEP_DIR/sweep.json                 the last sweep's table, fronts, grid and settings
    SWEEP_DIR/sweep.csv                  the same table
    SWEEP_DIR/plots/*.png                Pareto plots
    SWEEP_DIR/cache/calibrations/K.npz   a calibration (arrays; metadata as JSON, no pickle)
    SWEEP_DIR/cache/points/K.json        a point's allocation figures
    SWEEP_DIR/cache/masks/K.safetensors  its block masks (lsp_codesign.masks_io)
    SWEEP_DIR/cache/references/K.npy     the dense model's log-probabilities on the test set
    SWEEP_DIR/cache/evaluations/K.json   top-1 and KL of one mask set
    SWEEP_DIR/cache/verifications/K.json whether the RTL agreed on one point

Every file is written under a temporary name and renamed into place, so a reader sees a
whole file or none, and two sweeps that compute the same key (a deterministic result) only
replace a file with an equal one. A cache file that cannot be read, or whose recorded key is
not its name, counts as missing and is computed again. The table, CSV and plots are written
together under the directory's lock (:func:`~lsp_codesign.atomic.output_lock`, waiting for
another sweep that is writing its own).
"""

from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..alloc.calibration import Calibration, LayerStats
from ..alloc.options import CurvatureOptions
from ..atomic import OutputError, output_lock, replace_file
from ..errors import LspError
from ..flops import ModelCount, OpCount
from ..masks_io import MaskSet, load_masks, save_masks
from ..vit_shapes import GemmShape
from .grid import SweepError

__all__ = ["SweepStore", "FORMAT", "calibration_to_arrays", "calibration_from_arrays",
           "load_calibration"]

FORMAT = "lsp-codesign-sweep/1"
MARKER = "sweep-format"
KINDS = ("calibrations", "points", "masks", "references", "evaluations", "verifications")
LOCK_WAIT_S = 600.0
# what reading a damaged cache file raises: it then counts as missing
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def _shape(g: GemmShape) -> list:
    return [g.name, g.m, g.n, g.k]


def calibration_to_arrays(c: Calibration, key: str) -> dict[str, np.ndarray]:
    """A calibration as named arrays (metadata as UTF-8 JSON bytes), for ``np.savez``."""
    count = c.count
    meta = {"format": FORMAT, "key": key, "model": c.model, "block": [c.block_k, c.block_n],
            "n_samples": c.n_samples, "labels": c.labels, "seed": c.seed,
            "options": c.options.record(), "timings": c.timings,
            "layers": [_shape(st.shape) for st in c.layers.values()],
            "grad_mean": [st.grad_mean is not None for st in c.layers.values()],
            "excluded": [_shape(g) for g in c.excluded],
            "count": {"model": count.model, "tokens": count.tokens,
                      "linears": [_shape(g) for g in count.linears],
                      "ops": [[o.name, o.kind, o.macs] for o in count.ops],
                      "params": count.params, "linear_bias": dict(count.linear_bias)}}
    out = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for i, st in enumerate(c.layers.values()):
        out[f"{i}:weight"] = st.weight
        out[f"{i}:block_sums"] = st.block_sums
        if st.grad_mean is not None:
            out[f"{i}:grad_mean"] = st.grad_mean
    return out


def calibration_from_arrays(arrays: Any, key: str | None = None) -> Calibration:
    """The inverse of :func:`calibration_to_arrays` (``arrays``: an ``np.load`` result)."""
    meta = json.loads(bytes(arrays["meta"]).decode())
    if meta.get("format") != FORMAT or (key is not None and meta.get("key") != key):
        raise ValueError("not this calibration")
    cm = meta["count"]
    count = ModelCount(model=cm["model"], tokens=cm["tokens"],
                       linears=tuple(GemmShape(*g) for g in cm["linears"]),
                       ops=tuple(OpCount(*o) for o in cm["ops"]), params=cm["params"],
                       linear_bias=dict(cm["linear_bias"]))
    layers = {}
    for i, (g, has_grad) in enumerate(zip(meta["layers"], meta["grad_mean"])):
        shape = GemmShape(*g)
        layers[shape.name] = LayerStats(
            shape=shape, weight=np.asarray(arrays[f"{i}:weight"]),
            grad_mean=np.asarray(arrays[f"{i}:grad_mean"]) if has_grad else None,
            block_sums=np.asarray(arrays[f"{i}:block_sums"]))
    o = meta["options"]
    opts = CurvatureOptions.resolve(o["curvature"], samples=o["fisher_samples"],
                                    first_order=o["first_order"], score=o["score"])
    bk, bn = meta["block"]
    return Calibration(model=meta["model"], count=count, block_k=bk, block_n=bn,
                       n_samples=meta["n_samples"], labels=meta["labels"], layers=layers,
                       excluded=[GemmShape(*g) for g in meta["excluded"]], options=opts,
                       seed=meta["seed"], timings=dict(meta["timings"]))


def load_calibration(path: str | Path, key: str | None = None) -> Calibration:
    """Read a cached calibration (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        return calibration_from_arrays(z, key)


class SweepStore:
    """The files of one SWEEP_DIR (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- the directory ---------------------------------------------------------------------

    def check(self) -> None:
        """Refuse a path that is a file, or a directory with files that is not a sweep's."""
        r = self.root
        for parent in reversed(r.absolute().parents):
            if parent.exists() and not parent.is_dir():
                raise OutputError(f"--out {r}: {parent} is a file, not a directory")
        if r.is_symlink() or (r.exists() and not r.is_dir()):
            raise OutputError(f"--out {r}: exists and is not a directory")
        if r.is_dir() and any(r.iterdir()) and not (r / MARKER).is_file():
            raise OutputError(f"--out {r}: a directory that is not a sweep's (no {MARKER}); "
                              "choose an empty or new directory")
        if (r / MARKER).is_file():
            found = (r / MARKER).read_text(errors="replace").strip()
            if found != FORMAT:
                raise OutputError(f"{r / MARKER}: sweep format {found[:40]!r}, this version "
                                  f"reads {FORMAT!r}; use another --out")

    def open(self) -> None:
        """Create the directory, its marker and the cache folders (checked first)."""
        self.check()
        try:
            for kind in KINDS:
                (self.root / "cache" / kind).mkdir(parents=True, exist_ok=True)
            if not (self.root / MARKER).is_file():
                replace_file(self.root / MARKER, lambda t: t.write_text(FORMAT + "\n"))
        except OSError as exc:
            raise OutputError(f"--out {self.root}: cannot write ({exc.strerror})") from None

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / "cache" / kind / f"{key}{suffix}"

    # ---- JSON records ------------------------------------------------------------------------

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """A cached record, or None when missing, unreadable or of another key."""
        try:
            doc = json.loads(self.path(kind, key, ".json").read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return doc if isinstance(doc, dict) and doc.get("key") == key else None

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        text = json.dumps({**record, "key": key}, indent=1, sort_keys=True) + "\n"
        replace_file(self.path(kind, key, ".json"), lambda t: t.write_text(text))

    # ---- arrays ------------------------------------------------------------------------------

    def get_calibration(self, key: str) -> Calibration | None:
        try:
            return load_calibration(self.path("calibrations", key, ".npz"), key)
        except _UNREADABLE:
            return None

    def put_calibration(self, key: str, calib: Calibration) -> Path:
        arrays = calibration_to_arrays(calib, key)
        path = self.path("calibrations", key, ".npz")

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        replace_file(path, write)
        return path

    def get_reference(self, key: str) -> np.ndarray | None:
        try:
            return np.load(self.path("references", key, ".npy"), allow_pickle=False)
        except _UNREADABLE:
            return None

    def put_reference(self, key: str, logp: np.ndarray) -> Path:
        path = self.path("references", key, ".npy")

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(logp, dtype=np.float32))
        replace_file(path, write)
        return path

    def get_masks(self, key: str) -> MaskSet | None:
        try:
            return load_masks(self.path("masks", key, ".safetensors"))
        except (LspError, OSError, ValueError):
            return None

    def put_masks(self, key: str, masks: MaskSet) -> Path:
        path = self.path("masks", key, ".safetensors")
        replace_file(path, lambda tmp: save_masks(tmp, masks))
        return path

    # ---- the results -------------------------------------------------------------------------

    @contextlib.contextmanager
    def results_lock(self) -> Iterator[None]:
        """The directory's lock, waited for (another sweep may be writing its results)."""
        try:
            with output_lock(self.root, "sweep directory", wait_s=LOCK_WAIT_S):
                yield
        except OutputError as exc:
            raise SweepError(str(exc)) from None

    def write_results(self, files: dict[str, Callable[[Path], None]]) -> None:
        """Write each ``{relative path: writer}`` atomically, all under the lock."""
        with self.results_lock():
            for rel, write in files.items():
                path = self.root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                replace_file(path, write)
