"""Registry of the models lsp-codesign prunes, by name.

Four names are registered:

``vit-mnist``
    The embedded default: a small timm ``VisionTransformer`` (28x28 grey images, 7x7 patches,
    17 tokens, width 64, depth 4, 4 heads, MLP 256) trained on MNIST by
    ``models/train_vit_mnist.py``. Its checkpoint ``models/vit_mnist.safetensors`` ships with the
    package and is loaded by default, so nothing is downloaded.
``deit_tiny_patch16_224``, ``deit_small_patch16_224``, ``deit_base_patch16_224``
    timm's DeiT models (ImageNet, 224x224). Random weights unless a checkpoint file is given:
    there are no hub downloads at run time.

A checkpoint is a ``.safetensors`` file or a torch file that ``torch.load(weights_only=True)``
can read (a bare state dict, or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``,
keys optionally prefixed ``module.``). Keys and shapes must match the model exactly; a
mismatch is a :class:`CheckpointError` naming the file and the first offending keys.

torch and timm are imported inside the functions, so :func:`list_models` and
:func:`model_info` stay light.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsp_codesign.errors import LspError

__all__ = [
    "DEFAULT_MODEL",
    "ModelInfo",
    "UnknownModelError",
    "CheckpointError",
    "list_models",
    "model_info",
    "create_model",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
    "default_checkpoint",
    "embedded_metadata",
    "timm_equivalent",
]

DEFAULT_MODEL = "vit-mnist"

_HERE = Path(__file__).resolve().parent
_VIT_MNIST_CKPT = _HERE / "vit_mnist.safetensors"
_VIT_MNIST_META = _HERE / "vit_mnist.json"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class UnknownModelError(LspError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(LspError, ValueError):
    """A checkpoint file that is missing, unreadable, unsafe or does not fit the model."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model expects and produces.

    Attributes
    ----------
    name : str
        Registry name.
    num_classes : int
        Width of the classifier head.
    img_size : int
        Square input side in pixels.
    in_chans : int
        Input channels (1 for the MNIST model, 3 for DeiT).
    dataset : str or None
        ``"mnist"`` when the model has a bundled data set (training, calibration and test
        images come from it); ``None`` when the user brings images (an ImageFolder).
    mean, std : tuple of float
        Per-channel normalisation applied after scaling pixels to [0, 1].
    description : str
        One line for listings.
    interpolation : str
        Resize interpolation for user images (``bicubic`` for DeiT, as timm).
    crop_pct : float
        Center-crop fraction for user images: resize the short side to
        ``img_size / crop_pct``, then crop ``img_size``.
    finetune_lr : float
        Default peak AdamW learning rate of ``lsp-codesign finetune`` at batch size 128.
    """

    name: str
    num_classes: int
    img_size: int
    in_chans: int
    dataset: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    finetune_lr: float = 1e-4


@dataclass(frozen=True)
class _Spec:
    info: ModelInfo
    timm_name: str | None  # None: built directly from VisionTransformer(**kwargs)
    kwargs: dict[str, Any] = field(default_factory=dict)
    default_checkpoint: Path | None = None
    # the registered timm architecture that builds the same model with ``kwargs``
    timm_base: str | None = None


# The embedded model's architecture. Every prunable layer's K and N are multiples of 32
# (qkv 192x64, proj 64x64, fc1 256x64, fc2 64x256), so 8, 16 and 32 blocks tile them; the
# 10-class head is padded by the packing rule.
VIT_MNIST_KWARGS: dict[str, Any] = dict(
    img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4,
    mlp_ratio=4.0, global_pool="token",
)

_SPECS: dict[str, _Spec] = {
    "vit-mnist": _Spec(
        ModelInfo("vit-mnist", 10, 28, 1, "mnist", MNIST_MEAN, MNIST_STD,
                  "embedded default: ViT 28px/7px patches, dim 64, depth 4, MNIST-trained",
                  interpolation="bilinear", crop_pct=1.0, finetune_lr=2e-3),
        timm_name=None, kwargs=VIT_MNIST_KWARGS, default_checkpoint=_VIT_MNIST_CKPT,
        timm_base="vit_tiny_patch16_224"),
    **{
        f"deit_{size}_patch16_224": _Spec(
            ModelInfo(f"deit_{size}_patch16_224", 1000, 224, 3, None, IMAGENET_MEAN,
                      IMAGENET_STD, f"timm DeiT-{size.capitalize()} 224px (ImageNet classes)",
                      interpolation="bicubic", crop_pct=0.9, finetune_lr=1e-4),
            timm_name=f"deit_{size}_patch16_224")
        for size in ("tiny", "small", "base")
    },
}


def list_models() -> list[str]:
    """Registered model names, the embedded default first."""
    return list(_SPECS)


def _spec(name: str) -> _Spec:
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise UnknownModelError(
            f"unknown model {name!r} (known: {', '.join(list_models())})") from None


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model; :class:`UnknownModelError` otherwise."""
    return _spec(name).info


def default_checkpoint(name: str) -> Path | None:
    """The checkpoint shipped with the package for ``name`` (only ``vit-mnist`` has one)."""
    return _spec(name).default_checkpoint


def timm_equivalent(name: str) -> tuple[str, dict[str, Any]]:
    """How a timm user builds ``name``'s model: ``timm.create_model(arch, **kwargs)``.

    For the DeiT models that is their own name and no arguments. ``vit-mnist`` is not a timm
    name: it is timm's ``vit_tiny_patch16_224`` architecture with the embedded model's sizes
    (image 28, patch 7, 1 channel, 10 classes, width 64, depth 4, 4 heads), which gives the
    same modules and state-dict keys as :func:`create_model`.
    """
    spec = _spec(name)
    if spec.timm_name is not None:
        return spec.timm_name, dict(spec.kwargs)
    return str(spec.timm_base), dict(spec.kwargs)


def embedded_metadata() -> dict[str, Any]:
    """The embedded model's training record (``models/vit_mnist.json``)."""
    try:
        return json.loads(_VIT_MNIST_META.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{_VIT_MNIST_META}: cannot read the embedded model's metadata "
                              f"({exc})") from None


def _build(spec: _Spec):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if spec.timm_name is None:
        return VisionTransformer(**spec.kwargs)
    return timm.create_model(spec.timm_name, pretrained=False, **spec.kwargs)


def create_model(name: str, checkpoint: str | os.PathLike | None = None, *,
                 pretrained_default: bool = True):
    """Build a registered model in eval mode, optionally loading a checkpoint.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.
    checkpoint : path-like, optional
        Weights to load (safetensors, or a torch file read with ``weights_only=True``). When
        omitted, ``vit-mnist`` loads its shipped checkpoint (unless ``pretrained_default`` is
        false) and the DeiT models keep timm's random initialisation.
    pretrained_default : bool
        Load the shipped checkpoint when no ``checkpoint`` is given (default true). Set false
        for a randomly initialised model, as the training script does.

    Returns
    -------
    torch.nn.Module
        A timm ``VisionTransformer`` in eval mode; its classifier is ``model.head``.

    Raises
    ------
    UnknownModelError
        ``name`` is not registered.
    CheckpointError
        The checkpoint is missing, unreadable, not weights-only, or its keys or shapes do not
        match the model.
    """
    spec = _spec(name)
    model = _build(spec)
    if checkpoint is None and pretrained_default:
        checkpoint = spec.default_checkpoint
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, model_name=name)
    return model.eval()


def build_model(name: str, checkpoint: str | os.PathLike | None = None) -> tuple[Any, str]:
    """A registered model, or any other timm ViT by name; returns ``(model, source)``.

    ``source`` is ``"registry"`` for a registered name (:func:`create_model`), ``"timm"`` for
    another timm model: random weights unless ``checkpoint`` (loaded by
    :func:`load_checkpoint`). The model is in eval mode.

    Raises
    ------
    UnknownModelError
        Neither registered nor a timm model; the message suggests close names.
    CheckpointError
        As :func:`load_checkpoint`.
    """
    if name in _SPECS:
        return create_model(name, checkpoint), "registry"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    if not timm.is_model(name):
        import difflib

        pool = list(dict.fromkeys(list_models() + timm.list_models("deit*")
                                  + timm.list_models("*vit*")))
        close = ([n for n in pool if n.startswith(name)][:3]
                 or difflib.get_close_matches(name, pool, n=3))
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r} (registered: "
                                f"{', '.join(list_models())}; or any timm ViT name){hint}")
    model = timm.create_model(name, pretrained=False)
    if not (hasattr(model, "patch_embed") and hasattr(model, "blocks")):
        raise UnknownModelError(f"{name!r} is a timm model but not a Vision Transformer (no "
                                "patch embedding and transformer blocks); give a ViT or DeiT "
                                "name")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, model_name=name)
    return model.eval(), "timm"


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unsafe-global errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot be loaded as a weights-only torch checkpoint ({first})") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_ema", "state_dict_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (optionally under "
                              "'model' or 'state_dict'), got something else")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_checkpoint(model, checkpoint: str | os.PathLike, *, model_name: str = "") -> None:
    """Load ``checkpoint`` into ``model`` after checking every key and shape.

    Parameters
    ----------
    model : torch.nn.Module
        The model to fill (its parameters and buffers are overwritten in place).
    checkpoint : path-like
        A safetensors or weights-only torch file.
    model_name : str
        Used in error messages.

    Raises
    ------
    CheckpointError
        Missing/unreadable file, unexpected or missing keys, shape mismatches, non-finite
        values.
    """
    import torch

    path = Path(checkpoint)
    sd = _read_state_dict(path)
    what = f"{path}: does not fit model {model_name!r}" if model_name else f"{path}: mismatch"
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch (file vs model) {_few(wrong)}")
    if problems:
        raise CheckpointError(f"{what}: {'; '.join(problems)}")
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {_few(bad)}")
    model.load_state_dict(sd, strict=True)


def save_checkpoint(model, path: str | os.PathLike, *, model_name: str,
                    metadata: dict[str, str] | None = None) -> None:
    """Save ``model``'s state dict as safetensors, atomically (temporary name, then rename).

    Parameters
    ----------
    model : torch.nn.Module
        The model to save.
    path : path-like
        Destination ``.safetensors`` file.
    model_name : str
        Registry name, stored in the file's metadata under ``model``.
    metadata : dict of str, optional
        Extra string metadata.
    """
    from safetensors.torch import save_file

    p = Path(path)
    meta = {"format": "pt", "model": model_name, **(metadata or {})}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = p.with_name(p.name + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(p)


def _few(items: list[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)} in all)"
