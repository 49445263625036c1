"""GEMM shapes of a ViT's prunable linear layers, read off a real timm model (no weights needed).

Each ``nn.Linear`` becomes ``Y[M x K] = X[M x N] . W^T`` with ``(K, N)`` its weight shape and M
the tokens it sees per image: ``num_patches + prefix tokens`` inside the transformer blocks, and
1 for the classifier head (it sees the pooled token). The model is built on torch's ``meta``
device, so DeiT-Base's shapes cost no memory and no download.

Importing torch and timm alone takes seconds, so :func:`cached_shapes` keeps the shapes of each
model in a small JSON file (``$LSP_CACHE_DIR``, else ``$XDG_CACHE_HOME/lsp-codesign``, else
``~/.cache/lsp-codesign``; ``LSP_CACHE_DIR=off`` turns it off), keyed by the model's name and
whatever defines it (the timm version, the registry's source); a later report reads that file
and imports neither. The cache is an optimisation only: an unreadable, malformed or unwritable
cache is rebuilt or skipped, never an error.

torch and timm are imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import LspError

__all__ = ["GemmShape", "ModelShapes", "timm_vit_shapes", "module_vit_shapes", "cached_shapes",
           "cache_dir"]

CACHE_FORMAT = 1


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


def cache_dir() -> Path | None:
    """Where shapes are cached, or None when ``LSP_CACHE_DIR`` is ``off``."""
    env = os.environ.get("LSP_CACHE_DIR")
    if env:
        return None if env.lower() in ("off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lsp-codesign"


def _from_doc(doc: Any, key: Mapping[str, str]) -> ModelShapes | None:
    """The shapes in a cache document, if it is well formed and made for ``key``."""
    try:
        if doc.get("format") != CACHE_FORMAT or doc.get("key") != dict(key):
            return None
        layers = tuple(GemmShape(str(d["name"]), int(d["m"]), int(d["n"]), int(d["k"]))
                       for d in doc["layers"])
        if not layers or any(min(g.m, g.n, g.k) < 1 for g in layers):
            return None
        return ModelShapes(model=str(doc["model"]), tokens=int(doc["tokens"]), layers=layers)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def cached_shapes(key: Mapping[str, str], build: Callable[[], ModelShapes]) -> ModelShapes:
    """``build()``'s shapes, read from the cache when an entry for ``key`` exists.

    ``key`` names the model and everything its shapes depend on (strings only). A miss, or an
    entry that does not parse, calls ``build`` and stores its result (best effort).
    """
    where = cache_dir()
    if where is None:
        return build()
    blob = json.dumps(dict(key), sort_keys=True).encode()
    path = where / "shapes" / f"{hashlib.sha256(blob).hexdigest()[:20]}.json"
    try:
        hit = _from_doc(json.loads(path.read_text()), key)
    except (OSError, ValueError):
        hit = None
    if hit is not None:
        return hit
    shapes = build()
    doc = {"format": CACHE_FORMAT, "key": dict(key), "model": shapes.model,
           "tokens": shapes.tokens, "layers": [asdict(g) for g in shapes.layers]}
    try:
        from .atomic import replace_file

        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, lambda tmp: tmp.write_text(json.dumps(doc) + "\n"))
    except OSError:
        pass  # a read-only home: the report is only slower
    return shapes
