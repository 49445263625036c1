"""Whole-model multiply-accumulate (MAC) and parameter counter for timm-style ViTs.

FLOPs in lsp-codesign are **multiply-accumulates of one image**, the convention of the published
DeiT figures (DeiT-Tiny 1.3 G, DeiT-Small 4.6 G, DeiT-Base 17.6 G at 224x224). Counted:

``patch_embed``  the patch projection (a convolution): ``patches x out x in x kh x kw``;
``linear``       every ``nn.Linear``: ``M x N x K`` with M the tokens it sees (``T`` inside the
                 blocks, 1 for the classifier head, which sees the pooled token only);
``attention``    the two attention products of every attention module, never pruned:
                 ``Q K^T`` and ``A V``, each ``T x T x attn_dim``.

Normalisation, softmax, GELU, residual adds and the position embedding are not MACs and are not
counted (together they are well under 1 % of the total). A pruned linear layer costs
``M x`` (real weight elements of its kept blocks), so padding of edge blocks is never counted.

The counter reads only shapes, so a model built on torch's ``meta`` device works
(:func:`count_timm` does that: DeiT-Base is counted without allocating its weights).
torch and timm are imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import LspError
from .packing import BlockGrid
from .vit_shapes import GemmShape, module_vit_shapes

__all__ = ["OpCount", "ModelCount", "count_model", "count_timm", "linear_macs"]


@dataclass(frozen=True)
class OpCount:
    """One counted operation of one image.

    Attributes
    ----------
    name : str
        Module path (``blocks.0.mlp.fc1``); attention products are ``<attn module>.qk`` and
        ``<attn module>.av``.
    kind : str
        ``linear``, ``attention`` or ``patch_embed``.
    macs : int
        Multiply-accumulates of one image, dense.
    """

    name: str
    kind: str
    macs: int


@dataclass(frozen=True)
class ModelCount:
    """Dense MACs and parameters of a ViT, and the means to count a pruned one.

    Attributes
    ----------
    model : str
        Model name.
    tokens : int
        Tokens per image inside the transformer blocks (patches + class/distillation tokens).
    linears : tuple of GemmShape
        Every linear layer in module order (head with ``m == 1``).
    ops : tuple of OpCount
        Every counted operation in module order.
    params : int
        All parameters of the model (weights, biases, embeddings, norms).
    linear_bias : dict
        Bias elements of each linear layer (0 where it has none).
    """

    model: str
    tokens: int
    linears: tuple[GemmShape, ...]
    ops: tuple[OpCount, ...]
    params: int
    linear_bias: Mapping[str, int]

    @property
    def macs(self) -> int:
        """Dense MACs of one image."""
        return int(sum(op.macs for op in self.ops))

    def macs_by_kind(self) -> dict[str, int]:
        """Dense MACs split into ``patch_embed``, ``linear`` and ``attention``."""
        out = {"patch_embed": 0, "linear": 0, "attention": 0}
        for op in self.ops:
            out[op.kind] += op.macs
        return out

    @property
    def linear(self) -> dict[str, GemmShape]:
        return {g.name: g for g in self.linears}

    def pruned(self, masks: Mapping[str, np.ndarray], block_k: int,
               block_n: int) -> dict[str, Any]:
        """MACs and parameters with block masks applied to some linear layers.

        Parameters
        ----------
        masks : mapping
            ``{layer name: (KB, NB) bool mask}``, True = kept; layers not named stay dense.
        block_k, block_n : int
            The block the masks were made for.

        Returns
        -------
        dict
            ``macs``, ``params``, ``macs_ratio``, ``params_ratio`` and ``layers``
            (``{name: macs}`` of every linear layer after pruning).
        """
        lin = self.linear
        unknown = sorted(set(masks) - set(lin))
        if unknown:
            raise LspError(f"{self.model}: masks for layers the model does not have: "
                           f"{unknown[:4]}")
        macs = self.macs
        params = self.params
        layers = {}
        for name, g in lin.items():
            dense = g.m * g.n * g.k
            if name in masks:
                grid = BlockGrid(g.k, g.n, block_k, block_n)
                kept = int((grid.block_elements() * grid.check_mask(masks[name])).sum())
                layers[name] = g.m * kept
                macs -= dense - g.m * kept
                params -= g.n * g.k - kept
            else:
                layers[name] = dense
        return {"macs": int(macs), "params": int(params), "macs_ratio": macs / self.macs,
                "params_ratio": params / self.params, "layers": layers}


def linear_macs(m: int, n: int, k: int, mask: np.ndarray | None = None, block_k: int = 1,
                block_n: int = 1) -> int:
    """MACs of ``Y[M x K] = X[M x N] W^T`` with an optional ``(KB, NB)`` block mask."""
    if mask is None:
        return int(m * n * k)
    grid = BlockGrid(k, n, block_k, block_n)
    return int(m * (grid.block_elements() * grid.check_mask(mask)).sum())


def count_model(model: Any, name: str = "") -> ModelCount:
    """Count the MACs and parameters of a timm-style ViT module.

    Parameters
    ----------
    model : torch.nn.Module
        A ``VisionTransformer`` (any depth/width, class and distillation tokens, token or
        average pooling); it may live on the ``meta`` device.
    name : str
        Name recorded in the result and used in messages.

    Raises
    ------
    LspError
        The module is not a ViT this counter understands (no patch embedding, convolutions
        outside it, an attention-pool head).
    """
    import torch.nn as nn

    label = name or type(model).__name__
    shapes = module_vit_shapes(model, name)
    if getattr(model, "attn_pool", None) is not None:
        raise LspError(f"{label}: attention-pool heads are not supported by the FLOPs counter")
    pe = model.patch_embed
    tokens = shapes.tokens
    ops: list[OpCount] = []
    lin = {g.name: g for g in shapes.layers}
    bias = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            if not mod_name.startswith("patch_embed"):
                raise LspError(f"{label}: convolution {mod_name} outside the patch embedding "
                               "(hybrid ViTs are not supported by the FLOPs counter)")
            positions = int(pe.num_patches)
            ops.append(OpCount(mod_name, "patch_embed", positions * int(mod.weight.numel())))
        elif isinstance(mod, nn.Linear):
            g = lin[mod_name]
            ops.append(OpCount(mod_name, "linear", g.m * g.n * g.k))
            bias[mod_name] = 0 if mod.bias is None else int(mod.bias.numel())
        if _is_attention(mod):
            attn_dim = int(getattr(mod, "attn_dim", mod.num_heads * mod.head_dim))
            per = tokens * tokens * attn_dim
            ops.append(OpCount(f"{mod_name}.qk", "attention", per))
            ops.append(OpCount(f"{mod_name}.av", "attention", per))
    params = int(sum(p.numel() for p in model.parameters()))
    return ModelCount(model=name, tokens=tokens, linears=shapes.layers, ops=tuple(ops),
                      params=params, linear_bias=bias)


def _is_attention(mod: Any) -> bool:
    """A timm self-attention module: a fused ``qkv`` linear, ``num_heads`` and ``head_dim``."""
    import torch.nn as nn

    return (isinstance(getattr(mod, "qkv", None), nn.Linear) and hasattr(mod, "num_heads")
            and hasattr(mod, "head_dim"))


def count_timm(name: str, **kwargs: Any) -> ModelCount:
    """Build timm model ``name`` on the meta device (no weights, no download) and count it."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm
    import torch

    if not timm.is_model(name):
        raise LspError(f"unknown timm model {name!r}")
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    return count_model(model, name)

