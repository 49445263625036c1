"""GEMM shapes of a ViT's prunable linear layers, read off a real timm model (no weights needed).

Each ``nn.Linear`` becomes ``Y[M x K] = X[M x N] . W^T`` with ``(K, N)`` its weight shape and M
the tokens it sees per image: ``num_patches + prefix tokens`` inside the transformer blocks, and
1 for the classifier head (it sees the pooled token). The model is built on torch's ``meta``
device, so DeiT-Base's shapes cost no memory and no download.

torch and timm are imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import LspError

__all__ = ["GemmShape", "ModelShapes", "timm_vit_shapes", "module_vit_shapes"]


@dataclass(frozen=True)
class GemmShape:
    """One prunable layer: ``name`` is its module path; the weight is ``(k, n)``."""

    name: str
    m: int
    n: int
    k: int

    @property
    def kind(self) -> str:
        """``qkv``, ``proj``, ``fc1``, ``fc2``, ``head`` or the module's last name part."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class ModelShapes:
    model: str
    tokens: int
    layers: tuple[GemmShape, ...]

    def __iter__(self):
        return iter(self.layers)


def module_vit_shapes(model: Any, name: str = "") -> ModelShapes:
    """Shapes of every ``nn.Linear`` of a timm-style ViT module, in module order."""
    import torch.nn as nn

    pe = getattr(model, "patch_embed", None)
    if pe is None or not hasattr(pe, "num_patches"):
        raise LspError(f"{name or type(model).__name__}: not a ViT with a patch embedding "
                       "(needs model.patch_embed.num_patches)")
    tokens = int(pe.num_patches) + int(getattr(model, "num_prefix_tokens", 1))
    layers = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            m = 1 if mod_name.split(".")[0].startswith("head") else tokens
            layers.append(GemmShape(mod_name, m, int(mod.in_features), int(mod.out_features)))
    if not layers:
        raise LspError(f"{name}: model has no linear layers")
    return ModelShapes(model=name, tokens=tokens, layers=tuple(layers))


def timm_vit_shapes(name: str, **kwargs: Any) -> ModelShapes:
    """Build timm model ``name`` on the meta device and return its linear-layer shapes."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm
    import torch

    if name not in timm.list_models():
        raise LspError(f"unknown timm model {name!r}")
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    return module_vit_shapes(model, name)
