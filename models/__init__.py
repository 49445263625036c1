"""Models and data for lsp-codesign: the model registry, the embedded MNIST ViT, data loaders.

The registry (:mod:`models.registry`) is re-exported here and imports torch and timm only when
a model is built. Data loaders live in :mod:`models.data`.
"""

from .registry import (
    DEFAULT_MODEL,
    CheckpointError,
    ModelInfo,
    UnknownModelError,
    build_model,
    create_model,
    default_checkpoint,
    embedded_metadata,
    list_models,
    load_checkpoint,
    model_info,
    save_checkpoint,
    timm_equivalent,
)

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "ModelInfo",
    "UnknownModelError",
    "build_model",
    "create_model",
    "default_checkpoint",
    "embedded_metadata",
    "list_models",
    "load_checkpoint",
    "model_info",
    "save_checkpoint",
    "timm_equivalent",
]
