"""Masked finetuning and top-1 evaluation of pruned ViTs.

A run directory written by ``lsp-codesign allocate`` holds ``allocation.json`` (model name,
checkpoint, method, FLOPs target, block, seed) and ``masks.safetensors`` (block masks, see
:mod:`lsp_codesign.masks_io`). This module

- turns the block masks into element masks of the model's ``nn.Linear`` weights
  (:func:`element_masks`, padding rule of :mod:`lsp_codesign.packing`) and applies them;
- trains with the masks fixed (:func:`train`): gradients of pruned weights are masked and the
  pruned weights are re-zeroed after every optimizer step, and :func:`check_masked` verifies at
  the end that every pruned block is exactly zero (it raises otherwise);
- optionally distils from the dense model (soft targets at temperature ``T``);
- measures top-1 and the output distortion (KL divergence to the dense model's softmax)
  in one pass over the test images (:func:`evaluate_models`);
- drives both from a run directory (:func:`finetune_run`, :func:`evaluate_run`), writing
  ``finetuned.safetensors`` + ``finetune.json`` and ``evaluate.json``.

Biases are never pruned: a block mask covers weight elements only.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import LspError
from .masks_io import MaskSet, load_masks
from .packing import expand_mask
from .rundir import write_json

__all__ = [
    "FinetuneError",
    "Run",
    "load_run",
    "element_masks",
    "apply_masks",
    "check_masked",
    "train",
    "evaluate_models",
    "finetune_run",
    "evaluate_run",
    "FINETUNED",
]

FINETUNED = "finetuned.safetensors"
FINETUNE_JSON = "finetune.json"
EVALUATE_JSON = "evaluate.json"


class FinetuneError(LspError):
    """A run directory, mask set or finetuning result that cannot be used."""


# --------------------------------------------------------------------------------------------
# Masks on a model.


def element_masks(model, masks: MaskSet) -> dict[str, Any]:
    """Boolean element masks ``(K, N)`` for the model's linear layers named in ``masks``.

    Parameters
    ----------
    model : torch.nn.Module
        The model the masks were made for.
    masks : MaskSet
        Block masks; ``masks.masks[name]`` is ``(KB, NB)`` for the ``nn.Linear`` ``name``.

    Returns
    -------
    dict of str to torch.Tensor
        ``{name: bool tensor of the weight's shape}``, True where the weight is kept.

    Raises
    ------
    FinetuneError
        A layer is missing from the model, is not ``nn.Linear``, or its weight shape differs
        from the mask file's GEMM shape.
    """
    import torch
    import torch.nn as nn

    modules = dict(model.named_modules())
    out = {}
    for name in masks.order:
        mod = modules.get(name)
        if not isinstance(mod, nn.Linear):
            what = "not found" if mod is None else f"a {type(mod).__name__}, not nn.Linear"
            raise FinetuneError(f"mask layer {name!r}: {what} in model {masks.model!r}")
        _m, n, k = masks.gemms[name]
        if tuple(mod.weight.shape) != (k, n):
            raise FinetuneError(f"mask layer {name!r}: the mask file says weight (K, N) = "
                                f"({k}, {n}), the model has {tuple(mod.weight.shape)}")
        em = expand_mask(masks.masks[name], k, n, masks.block_k, masks.block_n)
        out[name] = torch.from_numpy(em.copy()).to(mod.weight.device)
    return out


def _weights(model, masks: Mapping[str, Any]) -> dict[str, Any]:
    modules = dict(model.named_modules())
    return {name: modules[name].weight for name in masks}


def apply_masks(model, masks: Mapping[str, Any]) -> None:
    """Zero the pruned weight elements of ``model`` in place."""
    import torch

    with torch.no_grad():
        for name, w in _weights(model, masks).items():
            w.mul_(masks[name].to(w.dtype))


def check_masked(model, masks: Mapping[str, Any]) -> dict[str, int]:
    """Verify that every pruned weight element is exactly zero.

    Returns
    -------
    dict of str to int
        Pruned element count per layer.

    Raises
    ------
    FinetuneError
        Naming each layer that has a nonzero pruned element and how many.
    """
    bad, pruned = [], {}
    for name, w in _weights(model, masks).items():
        off = ~masks[name]
        pruned[name] = int(off.sum())
        nonzero = int((w.detach()[off] != 0).sum())
        if nonzero:
            bad.append(f"{name} ({nonzero} nonzero)")
    if bad:
        raise FinetuneError("pruned weights are not zero in " + ", ".join(bad))
    return pruned


# --------------------------------------------------------------------------------------------
# Training.


def _lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(model, loader, *, epochs: int, lr: float, weight_decay: float = 0.05,
          masks: Mapping[str, Any] | None = None, teacher=None, distill_alpha: float = 0.5,
          temperature: float = 2.0, warmup_frac: float = 0.05, label_smoothing: float = 0.0,
          progress: bool = True, desc: str = "train") -> list[dict[str, float]]:
    """Train ``model`` with AdamW and a warmup + cosine learning-rate schedule.

    Parameters
    ----------
    model : torch.nn.Module
        Trained in place; left in eval mode.
    loader : sized iterable
        Yields ``(images, labels)`` with int64 labels; iterated once per epoch; ``len`` gives
        the batches per epoch (for the learning-rate schedule).
    epochs : int
        Passes over ``loader`` (at least 1).
    lr : float
        Peak learning rate.
    weight_decay : float
        AdamW decoupled weight decay (not applied to biases, norms, tokens, position embedding).
    masks : mapping of str to torch.Tensor, optional
        Element masks (:func:`element_masks`). Pruned weights are zeroed first, their gradients
        are masked, they are re-zeroed after every step, and :func:`check_masked` verifies them
        at the end.
    teacher : torch.nn.Module, optional
        Dense model to distil from: the loss becomes ``(1 - a) * CE + a * T^2 * KL(teacher_T ||
        student_T)`` with ``a = distill_alpha`` and ``T = temperature``.
    distill_alpha, temperature : float
        Distillation weight and temperature.
    warmup_frac : float
        Fraction of the steps spent in linear warmup.
    label_smoothing : float
        Cross-entropy label smoothing.
    progress : bool
        Show a tqdm bar per epoch.
    desc : str
        Bar label.

    Returns
    -------
    list of dict
        Per epoch: ``epoch``, ``images`` seen, ``loss`` (mean training loss), ``train_top1``
        (on the batches seen, in training mode), ``lr_last``.
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise FinetuneError(f"epochs must be a positive integer, got {epochs!r}")
    if not (lr > 0):
        raise FinetuneError(f"learning rate must be positive, got {lr!r}")
    if teacher is not None and not (0.0 <= distill_alpha <= 1.0 and temperature > 0):
        raise FinetuneError(f"distillation needs 0 <= alpha <= 1 and T > 0, got alpha "
                            f"{distill_alpha!r}, T {temperature!r}")
    try:
        steps_per_epoch = len(loader)
    except TypeError:
        raise FinetuneError("the training loader must have a length (batches per epoch), "
                            "as a torch DataLoader has") from None
    if steps_per_epoch == 0:
        raise FinetuneError("training set is empty")
    total = epochs * steps_per_epoch
    warmup = max(1, int(warmup_frac * total))

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "pos_embed" not in name and "token" not in name
         else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)

    hooks = []
    if masks:
        apply_masks(model, masks)
        for name, w in _weights(model, masks).items():
            keep = masks[name].to(w.dtype)
            hooks.append(w.register_hook(lambda g, keep=keep: g * keep))
    if teacher is not None:
        teacher.eval()

    history = []
    step = 0
    try:
        for epoch in range(epochs):
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress,
                       leave=False, unit="batch", dynamic_ncols=True)
            for images, labels in bar:
                if labels is None:
                    raise FinetuneError("training images have no labels")
                cur_lr = _lr_at(step, total, lr, warmup)
                for group in opt.param_groups:
                    group["lr"] = cur_lr
                logits = model(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(images)
                    kd = F.kl_div(F.log_softmax(logits / temperature, dim=-1),
                                  F.log_softmax(t_logits / temperature, dim=-1),
                                  reduction="batchmean", log_target=True)
                    loss = (1 - distill_alpha) * loss + distill_alpha * temperature ** 2 * kd
                if not torch.isfinite(loss):
                    raise FinetuneError(f"training diverged (loss {loss.item()}) at step {step}; "
                                        "lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if masks:
                    apply_masks(model, masks)
                step += 1
                n = int(labels.shape[0])
                loss_sum += float(loss.detach()) * n
                correct += int((logits.detach().argmax(-1) == labels).sum())
                seen += n
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
            history.append({"epoch": epoch + 1, "images": seen, "loss": loss_sum / seen,
                            "train_top1": correct / seen, "lr_last": cur_lr})
    finally:
        for h in hooks:
            h.remove()
        model.eval()
    if masks:
        check_masked(model, masks)
    return history


# --------------------------------------------------------------------------------------------
# Evaluation.


def evaluate_models(models: Mapping[str, Any], loader, *, reference: str | None = None,
                    progress: bool = True, desc: str = "evaluate") -> dict[str, dict[str, Any]]:
    """Top-1 of several models in one pass over ``loader``, and their KL to a reference.

    Parameters
    ----------
    models : mapping of str to torch.nn.Module
        Models to evaluate (put in eval mode).
    loader : iterable
        Yields ``(images, labels)``; labels may be ``None`` (then only the KL is measured).
    reference : str, optional
        Key of the reference model (the dense one): each model also gets ``kl_to_reference``,
        the mean over images of ``KL(softmax(reference) || softmax(model))`` in nats.
    progress : bool
        Show a tqdm bar.
    desc : str
        Bar label.

    Returns
    -------
    dict
        ``{key: {"top1", "correct", "total", "kl_to_reference"}}``; ``top1`` is a fraction in
        [0, 1] (``None`` without labels).
    """
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    if reference is not None and reference not in models:
        raise FinetuneError(f"reference model {reference!r} is not among {list(models)}")
    stats = {k: {"correct": 0, "total": 0, "kl_sum": 0.0} for k in models}
    labelled = True
    for m in models.values():
        m.eval()
    with torch.no_grad():
        for images, labels in tqdm(loader, desc=desc, disable=not progress, leave=False,
                                   unit="batch", dynamic_ncols=True):
            logp = {k: F.log_softmax(m(images).float(), dim=-1) for k, m in models.items()}
            for k, lp in logp.items():
                s = stats[k]
                s["total"] += int(lp.shape[0])
                if labels is None:
                    labelled = False
                else:
                    s["correct"] += int((lp.argmax(-1) == labels).sum())
                if reference is not None:
                    ref = logp[reference]
                    s["kl_sum"] += float((ref.exp() * (ref - lp)).sum())
    out = {}
    for k, s in stats.items():
        if s["total"] == 0:
            raise FinetuneError("evaluation set is empty")
        out[k] = {
            "top1": s["correct"] / s["total"] if labelled else None,
            "correct": s["correct"] if labelled else None,
            "total": s["total"],
            "kl_to_reference": s["kl_sum"] / s["total"] if reference is not None else None,
        }
    return out


# --------------------------------------------------------------------------------------------
# Run directories.


@dataclass(frozen=True)
class Run:
    """What finetune and evaluate need from a run directory.

    Attributes
    ----------
    path : pathlib.Path
        The run directory.
    allocation : dict
        Parsed ``allocation.json``.
    model_name : str
        Registry name of the model.
    checkpoint : str or None
        Dense checkpoint the allocation started from (``None``: the model's default weights).
    masks : MaskSet
        Parsed ``masks.safetensors``.
    """

    path: Path
    allocation: dict[str, Any]
    model_name: str
    checkpoint: str | None
    masks: MaskSet

    def dense_model(self):
        """The dense model of the run (eval mode)."""
        from models import create_model

        return create_model(self.model_name, self.checkpoint)

    def pruned_model(self):
        """The dense model with the run's masks applied, and its element masks."""
        model = self.dense_model()
        em = element_masks(model, self.masks)
        apply_masks(model, em)
        return model, em

    @property
    def data(self) -> str | None:
        """Image folder recorded by the allocation (``data`` key), if any."""
        d = self.allocation.get("data")
        return str(d) if d else None


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read and check a run directory's ``allocation.json`` and ``masks.safetensors``.

    Raises
    ------
    FinetuneError
        The directory or a file is missing, ``allocation.json`` is malformed, or the masks
        were made for another model.
    """
    from models import list_models

    path = Path(run_dir)
    if not path.is_dir():
        raise FinetuneError(f"{path}: run directory not found")
    alloc_path = path / "allocation.json"
    if not alloc_path.is_file():
        raise FinetuneError(f"{alloc_path}: not found (is {path} a run directory written by "
                            "'lsp-codesign allocate'?)")
    try:
        alloc = json.loads(alloc_path.read_text())
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"{alloc_path}: not valid JSON ({exc})") from None
    if not isinstance(alloc, dict) or not isinstance(alloc.get("model"), str):
        raise FinetuneError(f"{alloc_path}: 'model' must be a model name string")
    name = alloc["model"]
    if name not in list_models():
        raise FinetuneError(f"{alloc_path}: unknown model {name!r}: finetune and evaluate "
                            f"support the registered models ({', '.join(list_models())})")
    ckpt = alloc.get("checkpoint")
    if ckpt is not None and not isinstance(ckpt, str):
        raise FinetuneError(f"{alloc_path}: 'checkpoint' must be a path or null, got {ckpt!r}")
    if ckpt is not None and not Path(ckpt).is_absolute() and not Path(ckpt).exists():
        # a relative path is taken relative to the run directory when it is not found as given
        if (path / ckpt).exists():
            ckpt = str(path / ckpt)
    masks = load_masks(path / "masks.safetensors")
    if masks.model and masks.model != name:
        raise FinetuneError(f"{path / 'masks.safetensors'}: masks are for model "
                            f"{masks.model!r}, but allocation.json says {name!r}")
    return Run(path=path, allocation=alloc, model_name=name, checkpoint=ckpt, masks=masks)


def _block_counts(masks: MaskSet) -> dict[str, int]:
    kept = sum(int(m.sum()) for m in masks.masks.values())
    total = sum(int(m.size) for m in masks.masks.values())
    return {"blocks_kept": kept, "blocks_total": total}


def finetune_run(run_dir: str | os.PathLike, *, epochs: int = 1, lr: float | None = None,
                 batch_size: int = 128, train_images: int | None = None, seed: int = 0,
                 distill: bool = True, distill_alpha: float = 0.5, temperature: float = 2.0,
                 data: str | os.PathLike | None = None, overwrite: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Finetune a run's pruned model with its masks fixed; write the checkpoint and a record.

    Parameters
    ----------
    run_dir : path-like
        Run directory with ``allocation.json`` and ``masks.safetensors``.
    epochs : int
        Passes over the training images.
    lr : float, optional
        Peak AdamW learning rate (default: the model's ``finetune_lr``, 2e-3 for
        ``vit-mnist``, 1e-4 for DeiT).
    batch_size : int
        Images per step.
    train_images : int, optional
        Train on a subset of this many images chosen by ``seed`` (default: all).
    seed : int
        Seeds the subset, shuffling, augmentation and torch.
    distill : bool
        Distil from the dense model (default true).
    distill_alpha, temperature : float
        Distillation weight and temperature.
    data : path-like, optional
        Labelled training images (ImageFolder layout); needed for DeiT. Defaults to the run's
        recorded ``data`` folder, if any.
    overwrite : bool
        Replace an existing ``finetuned.safetensors``.
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        The record written to ``finetune.json``.
    """
    import torch

    from models import model_info, save_checkpoint
    from models.data import train_loader

    run = load_run(run_dir)
    if lr is None:
        lr = model_info(run.model_name).finetune_lr
    out = run.path / FINETUNED
    if out.exists() and not overwrite:
        raise FinetuneError(f"{out}: already exists (pass --overwrite to replace it)")
    folder = data if data is not None else run.data
    loader = train_loader(run.model_name, train_images, seed, batch_size, folder=folder)
    torch.manual_seed(seed)
    model, em = run.pruned_model()
    teacher = run.dense_model() if distill else None
    t0 = time.perf_counter()
    history = train(model, loader, epochs=epochs, lr=lr, masks=em, teacher=teacher,
                    distill_alpha=distill_alpha, temperature=temperature, progress=progress,
                    desc="finetune")
    seconds = time.perf_counter() - t0
    pruned_elements = check_masked(model, em)  # verified again on the model being saved
    record = {
        "model": run.model_name,
        "checkpoint_in": run.checkpoint,
        "checkpoint_out": FINETUNED,
        "masks": "masks.safetensors",
        "block": run.masks.block,
        **_block_counts(run.masks),
        "pruned_weights": sum(pruned_elements.values()),
        "pruned_blocks_zero": True,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "train_images": history[0]["images"],
        "seed": seed,
        "distill": distill,
        "distill_alpha": distill_alpha if distill else None,
        "temperature": temperature if distill else None,
        "data": str(folder) if folder is not None else None,
        "history": history,
        "seconds": round(seconds, 2),
        "torch": torch.__version__,
    }
    save_checkpoint(model, out, model_name=run.model_name,
                    metadata={"lsp_masks": str(run.path / "masks.safetensors")})
    write_json(run.path / FINETUNE_JSON, record)
    return record


def evaluate_run(run_dir: str | os.PathLike, *, test_images: int | None = None,
                 batch_size: int = 256, data: str | os.PathLike | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Top-1 of a run's dense, pruned and (if present) finetuned models; writes evaluate.json.

    The finetuned checkpoint is checked against the run's masks: a pruned block that is not
    exactly zero is an error, not a number.

    Parameters
    ----------
    run_dir : path-like
        Run directory.
    test_images : int, optional
        Evaluate on a fixed subset of this many test images (default: all).
    batch_size : int
        Images per batch.
    data : path-like, optional
        Labelled test images (ImageFolder layout); needed for DeiT.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        The record written to ``evaluate.json``: per model ``top1``, ``correct``, ``total``,
        ``kl_to_dense``.
    """
    from models import create_model
    from models.data import test_loader

    run = load_run(run_dir)
    folder = data if data is not None else run.data
    loader = test_loader(run.model_name, test_images, batch_size, folder=folder)
    dense = run.dense_model()
    pruned, em = run.pruned_model()
    models = {"dense": dense, "pruned": pruned}
    ft_path = run.path / FINETUNED
    if ft_path.exists():
        finetuned = create_model(run.model_name, ft_path)
        try:
            check_masked(finetuned, em)
        except FinetuneError as exc:
            raise FinetuneError(f"{ft_path}: does not respect the run's masks: {exc}") from None
        models["finetuned"] = finetuned
    res = evaluate_models(models, loader, reference="dense", progress=progress)
    record = {
        "model": run.model_name,
        "method": run.allocation.get("method"),
        "flops_target": run.allocation.get("flops_target"),
        "block": run.masks.block,
        **_block_counts(run.masks),
        "test_images": res["dense"]["total"],
        "data": str(folder) if folder is not None else None,
        "models": {k: {"top1": v["top1"], "correct": v["correct"], "total": v["total"],
                       "kl_to_dense": v["kl_to_reference"]} for k, v in res.items()},
    }
    if "finetuned" not in models:
        record["models"]["finetuned"] = None
    write_json(run.path / EVALUATE_JSON, record)
    return record
