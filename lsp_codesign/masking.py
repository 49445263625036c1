"""Block masks on a torch model: element masks, applying them, and checking them.

A mask set (:class:`lsp_codesign.masks_io.MaskSet`) holds one ``(KB, NB)`` block mask per
``nn.Linear`` of a model. Here they become boolean element masks of the weights (padding rule of
:mod:`lsp_codesign.packing`), are applied in place, and are checked: :func:`masked_nonzeros`
counts the pruned weights that are not exactly zero, and :func:`check_masked` raises when any is.
Biases are never pruned: a block mask covers weight elements only.

torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import LspError
from .masks_io import MaskSet
from .packing import expand_mask

__all__ = ["FinetuneError", "element_masks", "apply_masks", "masked_nonzeros", "check_masked",
           "mask_weights"]


class FinetuneError(LspError):
    """A mask set, model or finetuning result that cannot be used together."""


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


def mask_weights(model, masks: Mapping[str, Any]) -> dict[str, Any]:
    """The weight tensors of the masked layers, ``{name: parameter}``."""
    modules = dict(model.named_modules())
    return {name: modules[name].weight for name in masks}


def apply_masks(model, masks: Mapping[str, Any]) -> None:
    """Zero the pruned weight elements of ``model`` in place."""
    import torch

    with torch.no_grad():
        for name, w in mask_weights(model, masks).items():
            w.mul_(masks[name].to(w.dtype))


def masked_nonzeros(model, masks: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """Per layer ``(pruned elements, pruned elements that are not exactly zero)``."""
    out = {}
    for name, w in mask_weights(model, masks).items():
        off = ~masks[name]
        out[name] = (int(off.sum()), int((w.detach()[off] != 0).sum()))
    return out


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
    counts = masked_nonzeros(model, masks)
    bad = [f"{name} ({nonzero} nonzero)" for name, (_p, nonzero) in counts.items() if nonzero]
    if bad:
        raise FinetuneError("pruned weights are not zero in " + ", ".join(bad))
    return {name: pruned for name, (pruned, _n) in counts.items()}
