"""A pruned model in the forms other tools read: timm checkpoints, torch.nn.utils.prune, BSR.

Each function takes the run's model (a timm ``VisionTransformer`` holding the run's weights,
finetuned or dense, with nothing pruned yet) and its block masks, and returns plain tensors;
``lsp-codesign export`` (:mod:`lsp_codesign.commands.export`) reads the run and writes them.

``timm``
    :func:`timm_state_dict`: the model's state dict with every pruned block exactly zero. It
    loads with ``timm.create_model(name, checkpoint_path=FILE)`` (or ``model.load_state_dict``).
``prune``
    :func:`prune_state_dict`: the state dict of the model after
    ``torch.nn.utils.prune.custom_from_mask(layer, "weight", mask)`` on every masked layer:
    ``<layer>.weight_orig`` (the weights, unmasked) and ``<layer>.weight_mask`` (0/1, the
    weight's dtype) in place of ``<layer>.weight``; the other entries unchanged.
``bsr``
    :func:`bsr_layers`: per masked layer a ``torch.sparse_bsr`` tensor with blocksize
    ``(BK, BN)`` whose stored blocks are exactly the kept blocks (a kept block that happens to
    be all zero is still stored), plus the bias. A layer whose ``(K, N)`` is not a multiple of
    the block is zero-padded to whole blocks, as the hardware does; ``shape`` holds the
    unpadded ``(K, N)``: ``y = F.linear(F.pad(x, (0, N_pad - N)), W)[..., :K]``.

torch is imported inside the functions.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np

from .masking import apply_masks
from .masks_io import MaskSet

__all__ = ["EXPORT_FORMATS", "BSR_FORMAT", "timm_state_dict", "prune_state_dict", "bsr_layers"]

EXPORT_FORMATS = ("timm", "prune", "bsr")
BSR_FORMAT = "lsp-codesign bsr 1"


def _plain(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Detached, contiguous CPU tensors that share no storage (safetensors refuses sharing)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def timm_state_dict(model: Any, element_masks: Mapping[str, Any]) -> dict[str, Any]:
    """``model``'s state dict with the pruned elements zero (``model`` is not changed)."""
    pruned = copy.deepcopy(model)
    apply_masks(pruned, element_masks)
    return _plain(pruned.state_dict())


def prune_state_dict(model: Any, element_masks: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict in ``torch.nn.utils.prune`` form (``weight_orig`` + ``weight_mask``)."""
    from torch.nn.utils import prune

    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    for name, mask in element_masks.items():
        w = modules[name].weight
        prune.custom_from_mask(modules[name], "weight", mask.to(device=w.device, dtype=w.dtype))
    return _plain(pruned.state_dict())


def _bsr_weight(weight: Any, block_mask: np.ndarray, bk: int, bn: int) -> Any:
    """The kept blocks of ``weight`` (K, N) as a BSR tensor of the padded shape."""
    import torch

    k, n = weight.shape
    kb, nb = block_mask.shape
    padded = torch.zeros(kb * bk, nb * bn, dtype=weight.dtype)
    padded[:k, :n] = weight.detach().cpu()
    # row-major: the BSR order (lists: numpy's views of one element may carry odd strides)
    rows, cols = (torch.tensor(a.tolist(), dtype=torch.int64) for a in np.nonzero(block_mask))
    blocks = padded.reshape(kb, bk, nb, bn).permute(0, 2, 1, 3)
    values = blocks[rows, cols].reshape(-1, bk, bn).contiguous()
    crow = torch.tensor(np.concatenate([[0], np.cumsum(block_mask.sum(axis=1))]),
                        dtype=torch.int64)
    return torch.sparse_bsr_tensor(crow, cols, values, size=(kb * bk, nb * bn),
                                   dtype=weight.dtype, check_invariants=True)


def bsr_layers(model: Any, masks: MaskSet) -> dict[str, Any]:
    """Every masked layer as ``{"weight": sparse_bsr, "shape": [K, N], "bias": tensor|None}``.

    The pruned blocks are left out whatever their values; the kept ones are stored as they
    are in ``model``.
    """
    modules = dict(model.named_modules())
    out = {}
    for name in masks.order:
        mod = modules[name]
        k, n = mod.weight.shape
        bias = None if mod.bias is None else mod.bias.detach().cpu().clone()
        out[name] = {"weight": _bsr_weight(mod.weight, masks.masks[name], masks.block_k,
                                           masks.block_n),
                     "shape": [int(k), int(n)], "bias": bias}
    return out
