"""Training with fixed block masks, and top-1 evaluation of several models in one pass.

- :func:`train`: AdamW with warmup and cosine decay. With element masks
  (:func:`lsp_codesign.masking.element_masks`) the pruned weights are zeroed first, their
  gradients are masked, they are re-zeroed after every optimizer step, and
  :func:`lsp_codesign.masking.check_masked` verifies at the end that every one is exactly zero.
  Optionally distils from a dense teacher (soft targets at temperature ``T``).
- :func:`evaluate_models`: top-1 and the output distortion (KL divergence to a reference
  model's softmax) of several models in one pass over the test images.
- :func:`log_probabilities` and :func:`evaluate_against`: the same figures for one model
  against a reference's log-probabilities kept from an earlier pass (a sweep computes the
  dense model's once and evaluates every mask set against them).

The functions take a model and a loader; they know nothing of model names, data sets or run
directories (``lsp_codesign.commands`` wires those in). torch is imported inside the functions.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .masking import FinetuneError, apply_masks, check_masked, mask_weights

__all__ = ["train", "evaluate_models", "log_probabilities", "evaluate_against"]


def _lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _check_settings(loader, epochs: int, lr: float, teacher, distill_alpha: float,
                    temperature: float) -> int:
    """Validate the settings; return the batches per epoch."""
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
    return steps_per_epoch


def _optimizer(model, lr: float, weight_decay: float):
    """AdamW; no decay on biases, norms, tokens and the position embedding."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "pos_embed" not in name and "token" not in name
         else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _mask_gradients(model, masks: Mapping[str, Any] | None) -> list:
    """Zero the pruned weights and mask their gradients; returns the hooks to remove."""
    hooks = []
    if masks:
        apply_masks(model, masks)
        for name, w in mask_weights(model, masks).items():
            keep = masks[name].to(w.dtype)
            hooks.append(w.register_hook(lambda g, keep=keep: g * keep))
    return hooks


class _Objective:
    """Cross-entropy, optionally blended with distillation from a teacher."""

    def __init__(self, teacher, alpha: float, temperature: float, label_smoothing: float):
        self.teacher, self.alpha, self.t, self.smoothing = (teacher, alpha, temperature,
                                                            label_smoothing)

    def __call__(self, logits, images, labels):
        import torch
        import torch.nn.functional as F

        loss = F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
        if self.teacher is not None:
            with torch.no_grad():
                t_logits = self.teacher(images)
            kd = F.kl_div(F.log_softmax(logits / self.t, dim=-1),
                          F.log_softmax(t_logits / self.t, dim=-1),
                          reduction="batchmean", log_target=True)
            loss = (1 - self.alpha) * loss + self.alpha * self.t ** 2 * kd
        return loss


def _epoch(model, bar, opt, objective: _Objective, masks, schedule, step: int) -> tuple:
    """One pass over the loader; returns ``(record, step)``."""
    import torch

    model.train()
    loss_sum, correct, seen, cur_lr = 0.0, 0, 0, None
    for images, labels in bar:
        if labels is None:
            raise FinetuneError("training images have no labels")
        cur_lr = schedule(step)
        for group in opt.param_groups:
            group["lr"] = cur_lr
        logits = model(images)
        loss = objective(logits, images, labels)
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
    return {"images": seen, "loss": loss_sum / seen, "train_top1": correct / seen,
            "lr_last": cur_lr}, step


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
    epochs, lr, weight_decay
        Passes over ``loader`` (at least 1), peak learning rate, AdamW decoupled weight decay
        (not applied to biases, norms, tokens, position embedding).
    masks : mapping of str to torch.Tensor, optional
        Element masks. Pruned weights are zeroed first, their gradients are masked, they are
        re-zeroed after every step, and :func:`check_masked` verifies them at the end.
    teacher : torch.nn.Module, optional
        Dense model to distil from: the loss becomes ``(1 - a) * CE + a * T^2 * KL(teacher_T ||
        student_T)`` with ``a = distill_alpha`` and ``T = temperature``.
    warmup_frac, label_smoothing
        Fraction of the steps spent in linear warmup; cross-entropy label smoothing.
    progress, desc
        Show a tqdm bar per epoch, with this label.

    Returns
    -------
    list of dict
        Per epoch: ``epoch``, ``images`` seen, ``loss`` (mean training loss), ``train_top1``
        (on the batches seen, in training mode), ``lr_last``.
    """
    from tqdm import tqdm

    total = epochs * _check_settings(loader, epochs, lr, teacher, distill_alpha, temperature)
    warmup = max(1, int(warmup_frac * total))
    opt = _optimizer(model, lr, weight_decay)
    hooks = _mask_gradients(model, masks)
    if teacher is not None:
        teacher.eval()
    objective = _Objective(teacher, distill_alpha, temperature, label_smoothing)
    history, step = [], 0
    try:
        for epoch in range(epochs):
            bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress,
                       leave=False, unit="batch", dynamic_ncols=True)
            rec, step = _epoch(model, bar, opt, objective, masks,
                               lambda s: _lr_at(s, total, lr, warmup), step)
            history.append({"epoch": epoch + 1, **rec})
    finally:
        for h in hooks:
            h.remove()
        model.eval()
    if masks:
        check_masked(model, masks)
    return history


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
    progress, desc
        Show a tqdm bar, with this label.

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
            labelled = labelled and labels is not None
            for k, lp in logp.items():
                s = stats[k]
                s["total"] += int(lp.shape[0])
                if labels is not None:
                    s["correct"] += int((lp.argmax(-1) == labels).sum())
                if reference is not None:
                    ref = logp[reference]
                    s["kl_sum"] += float((ref.exp() * (ref - lp)).sum())
    return {k: _summary(s, labelled, reference is not None) for k, s in stats.items()}


def _summary(s: dict, labelled: bool, with_reference: bool) -> dict[str, Any]:
    if s["total"] == 0:
        raise FinetuneError("evaluation set is empty")
    return {"top1": s["correct"] / s["total"] if labelled else None,
            "correct": s["correct"] if labelled else None,
            "total": s["total"],
            "kl_to_reference": s["kl_sum"] / s["total"] if with_reference else None}


def log_probabilities(model, loader, *, progress: bool = False) -> Any:
    """``(images, classes)`` float32 log-softmax outputs of ``model`` over ``loader``."""
    import torch
    import torch.nn.functional as F

    model.eval()
    out = []
    with torch.no_grad():
        for images, _labels in loader:
            out.append(F.log_softmax(model(images).float(), dim=-1))
    if not out:
        raise FinetuneError("evaluation set is empty")
    return torch.cat(out).numpy()


def evaluate_against(model, loader, reference: Any) -> dict[str, Any]:
    """Top-1 of ``model`` and its KL to ``reference`` (from :func:`log_probabilities` over the
    same loader), the figures :func:`evaluate_models` gives for the same models and batches."""
    import torch
    import torch.nn.functional as F

    model.eval()
    s = {"correct": 0, "total": 0, "kl_sum": 0.0}
    labelled = True
    ref_all = torch.from_numpy(reference)
    with torch.no_grad():
        for images, labels in loader:
            lp = F.log_softmax(model(images).float(), dim=-1)
            lo = s["total"]
            ref = ref_all[lo: lo + lp.shape[0]]
            if ref.shape != lp.shape:
                raise FinetuneError(f"reference outputs cover {ref_all.shape[0]} images, the "
                                    f"loader has more ({lo + lp.shape[0]} so far)")
            s["total"] += int(lp.shape[0])
            labelled = labelled and labels is not None
            if labels is not None:
                s["correct"] += int((lp.argmax(-1) == labels).sum())
            s["kl_sum"] += float((ref.exp() * (ref - lp)).sum())
    if s["total"] != ref_all.shape[0]:
        raise FinetuneError(f"the loader gave {s['total']} images, the reference outputs "
                            f"cover {ref_all.shape[0]}")
    return _summary(s, labelled, True)
