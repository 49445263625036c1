"""The tasks of ``lsp-codesign sweep``, run in worker processes or as Ray tasks.

Each is a module-level function of plain, picklable arguments (the sweep's
:class:`~lsp_codesign.sweep.plan.Settings`, a calibration, a config as a dict, a mask set),
so that a spawned process or a Ray worker on another machine can import and run it. A worker
first checks that it runs the same code as the driver and, when it builds the model, that the
weights hash to what the driver hashed: a node with another version or another checkpoint
file at the same path is refused, not mixed in.
"""

from __future__ import annotations

import copy
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from ..config import HwConfig
from ..sweep.grid import SweepError
from ..sweep.plan import Settings, code_digest

__all__ = ["TASKS", "calibrate_task", "point_task", "reference_task", "evaluate_task",
           "verify_task", "test_set_id", "TEST_BATCH"]

TEST_BATCH = 256
_CODE: dict[str, str] = {}
_MODELS: dict[tuple, Any] = {}


def _check_code(s: Settings) -> None:
    if "code" not in _CODE:
        _CODE["code"] = code_digest()
    if _CODE["code"] != s.code:
        raise SweepError(f"worker on {socket.gethostname()} runs lsp-codesign code {_CODE['code']}"
                         f", the driver {s.code}: install the same version on every node")


def _dense(s: Settings) -> Any:
    """The dense model of the sweep (built once per process, weights checked)."""
    from ..fingerprint import weights_digest
    from ._alloc_args import build_seeded_model

    _check_code(s)
    key = (s.model, s.checkpoint, s.seed)
    if key not in _MODELS:
        model, _source = build_seeded_model(s.model, s.checkpoint, s.seed)
        got = weights_digest(model)
        if got != s.weights:
            raise SweepError(f"worker on {socket.gethostname()}: the weights of {s.model} "
                             f"({s.checkpoint or 'default'}) hash to {got}, the driver's to "
                             f"{s.weights}; every node needs the same checkpoint")
        _MODELS.clear()
        _MODELS[key] = model
    return _MODELS[key]


def calibrate_task(s: Settings, block: tuple[int, int]) -> Any:
    """One calibration pass for ``block`` (model, images and options from ``s``)."""
    from models.data import calibration_data

    from ..allocator import CurvatureOptions, calibrate

    model = _dense(s).to(s.device)
    loader = calibration_data(s.model, s.source, model, s.calib, s.seed, s.batch_size, s.data)
    o = s.options
    opts = CurvatureOptions.resolve(o["curvature"], samples=o["fisher_samples"],
                                    first_order=o["first_order"], score=o["score"])
    try:
        return calibrate(model, loader, block_k=block[0], block_n=block[1], options=opts,
                         exclude=s.exclude, micro_batch=s.batch_size, seed=s.seed,
                         progress=False, model_name=s.model)
    finally:
        model.to("cpu")


def point_task(s: Settings, calib: Any, cfg: dict, target: float, method: str) -> tuple:
    """The allocation of one point from its block's calibration: ``(record, masks)``."""
    from ..allocator import allocate_from_calibration
    from ..sweep.results import point_record

    _check_code(s)
    hw = HwConfig.from_dict(cfg)
    alloc = allocate_from_calibration(calib, hw, flops_target=target, method=method,
                                      kappa=s.kappa, smooth=s.smooth)
    return point_record(alloc, hw), alloc.masks


def _test_loader(s: Settings) -> Any:
    from models.data import test_loader

    return test_loader(s.model, s.test_images, TEST_BATCH, folder=s.data)


def test_set_id(model: str, test_images: int | None, data: str | None) -> dict[str, Any]:
    """What identifies the test set (checked by building its loader once)."""
    from models.data import test_loader

    test_loader(model, test_images, TEST_BATCH, folder=data)  # a bad request fails here
    return {"model": model, "images": test_images,
            "data": None if data is None else str(Path(data).resolve()), "batch": TEST_BATCH}


test_set_id.__test__ = False  # not a pytest test


def reference_task(s: Settings) -> Any:
    """The dense model's log-probabilities over the test set."""
    from ..training import log_probabilities

    return log_probabilities(_dense(s), _test_loader(s))


def evaluate_task(s: Settings, masks: Any, reference: Any) -> dict[str, Any]:
    """Top-1 and KL to the dense model of the pruned model (and after finetuning)."""
    from ..masking import apply_masks, check_masked, element_masks
    from ..training import evaluate_against

    dense = _dense(s)
    model = copy.deepcopy(dense)
    em = element_masks(model, masks)
    apply_masks(model, em)
    res = evaluate_against(model, _test_loader(s), reference)
    out = {"top1": res["top1"], "kl": res["kl_to_reference"], "correct": res["correct"],
           "images": res["total"]}
    if s.finetune_epochs:
        import torch

        from models import model_info
        from models.data import train_loader

        from ..training import train

        torch.manual_seed(s.seed)
        loader = train_loader(s.model, None, s.seed, 128, folder=s.data)
        train(model, loader, epochs=s.finetune_epochs, lr=model_info(s.model).finetune_lr,
              masks=em, teacher=dense, distill_alpha=0.5, temperature=2.0, progress=False,
              desc="finetune")
        check_masked(model, em)
        ft = evaluate_against(model, _test_loader(s), reference)
        out.update(top1_finetuned=ft["top1"], kl_finetuned=ft["kl_to_reference"])
    return out


def verify_task(s: Settings, masks: Any, cfg: dict) -> dict[str, Any]:
    """Every layer of one point on ``s.verify`` (a temporary run directory for verify)."""
    from ..rundir import write_run
    from .verify import verify_run

    _check_code(s)
    hw = HwConfig.from_dict(cfg, source=f"sweep config {cfg.get('name', '')}")
    with tempfile.TemporaryDirectory(prefix="lsp-sweep-verify-") as tmp:
        run_dir = Path(tmp) / "run"
        doc = {"model": s.model, "checkpoint": s.checkpoint, "data": s.data,
               "method": "sweep", "flops_target": None, "block": masks.block_str,
               "seed": s.seed, "hw": {"name": hw.name}}
        write_run(run_dir, doc, masks, hw)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        res = verify_run(run_dir, sim=s.verify, layers="all", dense=False, progress=False)
    t = res.totals()
    return {"sim": s.verify, "ok": bool(res.ok), "layers": len(res.layers),
            "layers_failed": list(t["layers_failed"]), "rtl_cycles": int(t["rtl_cycles"]),
            "model_cycles": int(t["model_cycles"])}


def _tasks() -> Any:
    from ..sweep.engine import Tasks

    return Tasks(calibrate=calibrate_task, point=point_task, reference=reference_task,
                 evaluate=evaluate_task, verify=verify_task)


TASKS = _tasks()
