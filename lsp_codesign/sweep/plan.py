"""What a sweep's results depend on, and the content hash (key) of each cached result.

Four kinds of result are cached in ``SWEEP_DIR/cache/`` under a key that hashes everything
they depend on (:mod:`lsp_codesign.fingerprint`):

=============== ==========================================================================
calibration     code, model and weights, calibration set (images, count, seed, folder),
                block, curvature options, excluded layers, micro-batch, device
point           its calibration's key, the config with its block and tile (every field),
                FLOPs target, method, kappa, smoothing
reference       code, model and weights, test set (the dense model's log-probabilities)
evaluation      the reference's key, the point's masks, finetuning settings
verification    code, model and weights, the point's masks, config, simulator, seed
=============== ==========================================================================

"code" is a hash of the project's Python sources (:func:`code_digest`): a new version of the
code recomputes everything rather than mixing results of two versions. A point's masks enter
the evaluation and verification keys, so points that prune alike (``uniform`` on two configs,
say) share one evaluation.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import HwConfig
from ..fingerprint import digest
from .grid import Point

__all__ = ["Settings", "code_digest", "calibration_key", "point_key", "reference_key",
           "eval_key", "verify_key"]

CODE_PACKAGES = ("lsp_codesign", "models", "hw", "sim")


def code_digest() -> str:
    """Hash of every ``.py`` file of the project's packages (found without importing them)."""
    h = hashlib.sha256()
    for pkg in CODE_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            h.update(f"{pkg}: missing\0".encode())
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        for path in sorted(root.rglob("*.py")):
            h.update(f"{pkg}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class Settings:
    """Everything a sweep's results depend on besides its grid (plain, picklable data).

    Attributes
    ----------
    model, source, checkpoint : str
        Model name, ``registry`` or ``timm``, checkpoint path (None: the default weights).
    weights : str
        Hash of the dense weights (:func:`~lsp_codesign.fingerprint.weights_digest`).
    calib, seed, data, batch_size : int, int, str, int
        Calibration images, seed, image folder (None: the model's default) and micro-batch.
    calib_set : dict
        What identifies the calibration images (``models.data.calibration_set_id``).
    exclude : tuple of str
        Layers kept dense.
    options : dict
        The curvature options (``CurvatureOptions.record()``).
    kappa, smooth : float
        Curve damping and smoothing.
    device : str
        Where calibration runs (``cpu``/``cuda``).
    evaluate : bool
        Measure top-1 and KL to the dense model on the test set.
    test_images : int or None
        Test images (None: all).
    test_set : dict or None
        What identifies the test set.
    finetune_epochs : int
        Masked finetuning before the evaluation (0: none).
    verify : str or None
        ``iss``, ``icarus`` or ``verilator``: run each point's layers on it.
    code : str
        :func:`code_digest` of the driver; every worker checks its own.
    """

    model: str
    source: str
    checkpoint: str | None
    weights: str
    calib: int
    seed: int
    data: str | None
    batch_size: int
    calib_set: Mapping[str, Any]
    exclude: tuple[str, ...]
    options: Mapping[str, Any]
    kappa: float
    smooth: float
    device: str = "cpu"
    evaluate: bool = False
    test_images: int | None = None
    test_set: Mapping[str, Any] | None = None
    finetune_epochs: int = 0
    verify: str | None = None
    code: str = field(default_factory=code_digest)

    def record(self) -> dict[str, Any]:
        """Plain data for ``sweep.json``."""
        return {"model": self.model, "source": self.source, "checkpoint": self.checkpoint,
                "weights": self.weights, "calib": self.calib, "seed": self.seed,
                "data": self.data, "batch_size": self.batch_size,
                "calibration_set": dict(self.calib_set), "exclude": list(self.exclude),
                **dict(self.options), "kappa": self.kappa, "smooth": self.smooth,
                "device": self.device, "evaluate": self.evaluate,
                "test_images": self.test_images,
                "test_set": None if self.test_set is None else dict(self.test_set),
                "finetune_epochs": self.finetune_epochs, "verify": self.verify,
                "code": self.code}


def calibration_key(s: Settings, block: tuple[int, int]) -> str:
    return digest({"kind": "calibration", "code": s.code, "model": s.model,
                   "weights": s.weights, "calibration_set": dict(s.calib_set),
                   "block": "%dx%d" % block, "options": dict(s.options),
                   "exclude": sorted(s.exclude), "batch_size": s.batch_size, "seed": s.seed,
                   "device": s.device})


def point_key(s: Settings, calib_key: str, p: Point) -> str:
    return digest({"kind": "point", "calibration": calib_key, "config": p.config.to_dict(),
                   "target": p.target, "method": p.method, "kappa": s.kappa,
                   "smooth": s.smooth})


def reference_key(s: Settings) -> str:
    return digest({"kind": "reference", "code": s.code, "model": s.model, "weights": s.weights,
                   "test_set": None if s.test_set is None else dict(s.test_set)})


def eval_key(s: Settings, masks: str) -> str:
    finetune = None
    if s.finetune_epochs:
        finetune = {"epochs": s.finetune_epochs, "seed": s.seed, "data": s.data}
    return digest({"kind": "evaluation", "reference": reference_key(s), "masks": masks,
                   "finetune": finetune})


def verify_key(s: Settings, masks: str, cfg: HwConfig) -> str:
    return digest({"kind": "verification", "code": s.code, "model": s.model,
                   "weights": s.weights, "masks": masks, "config": cfg.to_dict(),
                   "sim": s.verify, "seed": s.seed})
