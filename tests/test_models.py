"""Model registry, checkpoint loading and the committed embedded model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import save_file

import models
from lsp_codesign.errors import LspError
from lsp_codesign.vit_shapes import module_vit_shapes
from models import (
    DEFAULT_MODEL,
    CheckpointError,
    UnknownModelError,
    create_model,
    list_models,
    model_info,
    save_checkpoint,
)

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parents[1]
DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]


@pytest.fixture(scope="module")
def vit_mnist():
    return create_model(DEFAULT_MODEL)


def test_registry_names():
    assert DEFAULT_MODEL == "vit-mnist"
    assert list_models() == ["vit-mnist", *DEIT]


def test_unknown_model_is_one_clear_error():
    with pytest.raises(UnknownModelError, match=r"unknown model 'deit_huge'.*vit-mnist"):
        model_info("deit_huge")
    with pytest.raises(LspError, match="resnet50"):
        create_model("resnet50")


@pytest.mark.parametrize("name", ["vit-mnist", *DEIT])
def test_create_model_matches_info(name):
    import timm.models.vision_transformer as vt

    info = model_info(name)
    model = create_model(name, pretrained_default=False)
    assert isinstance(model, vt.VisionTransformer)
    assert not model.training
    assert model.head.out_features == info.num_classes
    assert model.patch_embed.img_size == (info.img_size, info.img_size)
    assert model.patch_embed.proj.in_channels == info.in_chans
    assert len(info.mean) == len(info.std) == info.in_chans
    assert info.dataset == ("mnist" if name == "vit-mnist" else None)


@pytest.mark.parametrize("name", DEIT)
def test_deit_preprocessing_agrees_with_timm(name):
    import timm

    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    info = model_info(name)
    assert tuple(cfg["mean"]) == info.mean and tuple(cfg["std"]) == info.std
    assert cfg["crop_pct"] == info.crop_pct and cfg["interpolation"] == info.interpolation
    assert tuple(cfg["input_size"]) == (info.in_chans, info.img_size, info.img_size)


@pytest.mark.parametrize("name", ["vit-mnist", "deit_tiny_patch16_224"])
def test_forward_shape(name):
    info = model_info(name)
    model = create_model(name, pretrained_default=False)
    with torch.no_grad():
        out = model(torch.zeros(2, info.in_chans, info.img_size, info.img_size))
    assert out.shape == (2, info.num_classes)


def test_embedded_model_dims_tile_8_16_32(vit_mnist):
    shapes = module_vit_shapes(vit_mnist, DEFAULT_MODEL)
    assert shapes.tokens == 17
    kinds = {}
    for layer in shapes:
        kinds.setdefault(layer.kind, set()).add((layer.k, layer.n))
        if layer.kind != "head":
            assert layer.k % 32 == 0 and layer.n % 32 == 0, layer
    assert kinds == {"qkv": {(192, 64)}, "proj": {(64, 64)}, "fc1": {(256, 64)},
                     "fc2": {(64, 256)}, "head": {(10, 64)}}
    assert len(shapes.layers) == 4 * 4 + 1


def test_random_init_differs_from_default(vit_mnist):
    fresh = create_model(DEFAULT_MODEL, pretrained_default=False)
    assert not torch.equal(fresh.head.weight, vit_mnist.head.weight)


# -- checkpoint files ------------------------------------------------------------------------


def _same_params(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_round_trip(tmp_path):
    src = create_model(DEFAULT_MODEL, pretrained_default=False)
    path = tmp_path / "w.safetensors"
    save_checkpoint(src, path, model_name=DEFAULT_MODEL)
    assert _same_params(create_model(DEFAULT_MODEL, path), src)


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "module_prefix"])
def test_torch_file_round_trip(tmp_path, wrap):
    src = create_model(DEFAULT_MODEL, pretrained_default=False)
    sd = src.state_dict()
    obj = {"bare": sd, "model": {"model": sd, "epoch": 3},
           "state_dict": {"state_dict": sd},
           "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    assert _same_params(create_model(DEFAULT_MODEL, path), src)


def test_deit_checkpoint_round_trip(tmp_path):
    src = create_model("deit_tiny_patch16_224")
    path = tmp_path / "deit_tiny.safetensors"
    save_checkpoint(src, path, model_name="deit_tiny_patch16_224")
    loaded = create_model("deit_tiny_patch16_224", str(path))
    assert _same_params(loaded, src)
    # without a checkpoint a DeiT model is randomly initialised, not these weights
    assert not _same_params(create_model("deit_tiny_patch16_224"), src)


def test_mismatched_checkpoint_names_file_and_keys(tmp_path):
    deit = create_model("deit_tiny_patch16_224")
    path = tmp_path / "deit_tiny.safetensors"
    save_checkpoint(deit, path, model_name="deit_tiny_patch16_224")
    with pytest.raises(CheckpointError) as exc:
        create_model(DEFAULT_MODEL, path)
    msg = str(exc.value)
    assert str(path) in msg and "vit-mnist" in msg
    assert "shape mismatch" in msg and "cls_token (1, 1, 192) vs (1, 1, 64)" in msg
    assert "unexpected keys" in msg  # deit_tiny has 12 blocks, vit-mnist 4


def test_missing_and_extra_keys(tmp_path):
    sd = create_model(DEFAULT_MODEL, pretrained_default=False).state_dict()
    del sd["blocks.3.mlp.fc2.weight"]
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(CheckpointError, match=r"missing keys \[blocks\.3\.mlp\.fc2\.weight\]"):
        create_model(DEFAULT_MODEL, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \[extra\.weight\]"):
        create_model(DEFAULT_MODEL, path)


def test_non_finite_checkpoint(tmp_path):
    sd = create_model(DEFAULT_MODEL, pretrained_default=False).state_dict()
    sd["head.bias"][3] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"nan\.pt: non-finite values in \[head\.bias\]"):
        create_model(DEFAULT_MODEL, path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: checkpoint file not found"):
        create_model(DEFAULT_MODEL, tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match="bad.safetensors: not a readable safetensors"):
        create_model(DEFAULT_MODEL, bad)
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"not a zip or pickle")
    with pytest.raises(CheckpointError, match="bad.pt: cannot be loaded as a weights-only"):
        create_model(DEFAULT_MODEL, bad_pt)


class _Payload:
    """Stands for arbitrary pickled code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: cannot be loaded as a weights-only"):
        create_model(DEFAULT_MODEL, path)
    assert "this must never run" not in capsys.readouterr().out


def test_non_tensor_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="list.pt: expected a state dict of tensors"):
        create_model(DEFAULT_MODEL, path)


def test_importing_models_does_not_import_torch():
    code = "import sys, models; models.model_info('vit-mnist'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the committed embedded model ------------------------------------------------------------


def test_committed_checkpoint_matches_its_record():
    ckpt = REPO / "models" / "vit_mnist.safetensors"
    meta = models.embedded_metadata()
    assert ckpt.is_file() and ckpt.stat().st_size < 1_500_000
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == meta["sha256"]
    assert meta["model"] == DEFAULT_MODEL and meta["test_images"] == 10000
    for key in ("command", "seed", "epochs", "train_seconds", "test_top1", "test_subset"):
        assert key in meta
    assert models.default_checkpoint(DEFAULT_MODEL) == ckpt
    assert json.loads((REPO / "models" / "vit_mnist.json").read_text()) == meta


def test_committed_checkpoint_reaches_recorded_accuracy(vit_mnist):
    from lsp_codesign.training import evaluate_models
    from models.data import test_loader

    meta = models.embedded_metadata()
    res = evaluate_models({"m": vit_mnist}, test_loader(DEFAULT_MODEL), progress=False)["m"]
    assert res["total"] == 10000
    # same weights, same images: only float summation order may differ between machines
    assert abs(res["correct"] - meta["test_correct"]) <= 5, (res, meta["test_correct"])
    assert res["top1"] >= 0.97
