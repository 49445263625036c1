"""``allocate()`` end to end on a tiny ViT: every method, the FLOPs target, masks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from lsp_codesign.allocator import (METHODS, AllocError, allocate, allocate_from_calibration,
                                    calibrate)
from lsp_codesign.cycle_model import estimate_layer
from lsp_codesign.flops import count_model
from lsp_codesign.masks_io import load_masks, save_masks


def tiny_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                          num_classes=10)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.2)
    return m.eval()


def images(n: int = 24, bs: int = 8) -> list:
    g = torch.Generator().manual_seed(0)
    return [torch.randn((bs, 3, 32, 32), generator=g) for _ in range(n // bs)]


class NotIterated:
    """A loader that fails the test if the allocator starts calibrating."""

    def __iter__(self):
        raise AssertionError("calibration started although the input was invalid")


@pytest.fixture(scope="module")
def cfg(vita):
    return vita.with_overrides(block="8x8")


@pytest.fixture(scope="module")
def model():
    return tiny_vit()


@pytest.fixture(scope="module")
def calib(model, cfg):
    return calibrate(model, images(), block_k=cfg.block_k, block_n=cfg.block_n, progress=False,
                     model_name="tiny")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [0.35, 0.5, 0.8])
def test_flops_within_one_block_below_target(calib, cfg, method, target):
    a = allocate_from_calibration(calib, cfg, flops_target=target, method=method)
    t = a.totals()
    assert a.flops <= target * a.dense_flops
    assert a.flops > target * a.dense_flops - t["max_block_flops"]
    assert t["flops_ratio"] == pytest.approx(a.flops / a.dense_flops)
    # the counted FLOPs are those of the masks
    assert count_model(tiny_vit(), "tiny").pruned(a.masks.masks, 8, 8)["macs"] == a.flops
    assert 0 < t["kept_blocks"] < t["total_blocks"]
    if method == "lsp":
        assert a.beta > 0 and a.lam is not None
    elif method == "beta0":
        assert a.beta == 0.0 and a.lam is not None
    else:
        assert a.beta is None and a.lam is None and a.threshold is not None


def test_masks_follow_the_pruning_order_and_the_contract(calib, cfg, tmp_path):
    a = allocate_from_calibration(calib, cfg, flops_target=0.5)
    ms = a.masks
    assert ms.order == tuple(a.layers)
    assert (ms.block_k, ms.block_n) == (8, 8)
    assert ms.gemms["head"] == (1, 32, 10)
    assert ms.gemms["blocks.0.mlp.fc1"] == (17, 32, 128)
    for name, r in a.layers.items():
        c = a.curves[name]
        pruned = r.total_blocks - r.kept_blocks
        flat = ms.masks[name].ravel()
        assert not flat[c.order[:pruned]].any() and flat[c.order[pruned:]].all()
        assert r.ratio == pytest.approx(pruned / r.total_blocks)
        est = estimate_layer(cfg, r.shape.m, r.shape.n, r.shape.k, ms.masks[name])
        assert (r.cycles, r.energy_pj) == (est.cycles, est.energy_total_pj)
    save_masks(tmp_path / "m.safetensors", ms)
    back = load_masks(tmp_path / "m.safetensors")
    assert back.order == ms.order and back.model == "tiny"


def test_power_term_prunes_larger_layers_more_than_beta0(calib, cfg):
    # fc1/fc2 (4096 weights) against proj (1024 weights) and head (320 weights, M = 1):
    # the power term raises the target slope of high-energy layers
    lsp = allocate_from_calibration(calib, cfg, flops_target=0.5, method="lsp")
    b0 = allocate_from_calibration(calib, cfg, flops_target=0.5, method="beta0")
    big = ("fc1", "fc2")
    kf_lsp, kf_b0 = lsp.kept_fraction_by_kind(), b0.kept_fraction_by_kind()
    mean_big = lambda kf: np.mean([kf[k] for k in big])  # noqa: E731
    assert mean_big(kf_lsp) <= mean_big(kf_b0)
    assert kf_lsp["head"] >= kf_b0["head"]
    for name, r in lsp.layers.items():
        c = lsp.curves[name]
        assert r.lambda_i == pytest.approx(lsp.lam + lsp.beta * c.dp_dalpha)


def test_exclusion_keeps_layers_dense(model, cfg):
    a = allocate(model, cfg, images(16), flops_target=0.8, exclude=["head", "blocks.1.*"],
                 progress=False)
    for name, r in a.layers.items():
        if name == "head" or name.startswith("blocks.1."):
            assert r.excluded and r.kept_blocks == r.total_blocks
            assert a.masks.masks[name].all()
            assert name not in a.curves
        else:
            assert not r.excluded
    assert "head" not in a.kept_fraction_by_kind()
    assert a.flops <= 0.8 * a.dense_flops


def test_target_of_one_prunes_nothing(calib, cfg):
    a = allocate_from_calibration(calib, cfg, flops_target=1.0)
    assert a.flops == a.dense_flops
    assert all(r.kept_blocks == r.total_blocks for r in a.layers.values())
    assert a.lam is None


@pytest.mark.parametrize("bad", [0, 0.0, -0.2, 1.0001, 2, float("nan"), float("inf"), "0.5",
                                 True])
def test_target_outside_0_1_is_an_error_before_calibration(model, cfg, bad):
    with pytest.raises(AllocError, match=r"\(0, 1\]"):
        allocate(model, cfg, NotIterated(), flops_target=bad, progress=False)


def test_target_below_reach_is_an_error_before_calibration(model, cfg):
    lowest = count_model(model).macs_by_kind()
    floor = (lowest["attention"] + lowest["patch_embed"]) / count_model(model).macs
    with pytest.raises(AllocError, match="below what pruning can reach"):
        allocate(model, cfg, NotIterated(), flops_target=floor * 0.9, progress=False)
    # excluded layers raise the floor
    with pytest.raises(AllocError, match="excluded"):
        allocate(model, cfg, NotIterated(), flops_target=0.3, exclude=["blocks.*"],
                 progress=False)


def test_block_that_does_not_suit_a_layer_is_an_error(model, vita):
    # a 32x32 block makes proj (32x32) a single block: it could only be kept or removed whole
    cfg = vita.with_overrides(block="32x32")
    with pytest.raises(AllocError, match="does not suit layer blocks.0.attn.proj"):
        allocate(model, cfg, NotIterated(), flops_target=0.5, progress=False)
    # excluding those layers makes the same block usable
    with pytest.raises(AllocError, match="does not suit layer head"):
        allocate(model, cfg, NotIterated(), flops_target=0.5, exclude=["*.proj"],
                 progress=False)


def test_unknown_method_and_bad_exclusion_are_errors(model, cfg, calib):
    with pytest.raises(AllocError, match="unknown method"):
        allocate(model, cfg, NotIterated(), flops_target=0.5, method="magic", progress=False)
    with pytest.raises(AllocError, match="matches no linear layer"):
        allocate(model, cfg, NotIterated(), flops_target=0.5, exclude=["blocks.9.*"],
                 progress=False)
    with pytest.raises(AllocError, match="block"):
        allocate_from_calibration(calib, cfg.with_overrides(block="16x16"), flops_target=0.5)


@pytest.mark.parametrize("opts", [{"kappa": -1.0}, {"kappa": float("nan")}, {"smooth": 1.5},
                                  {"smooth": -0.1}])
def test_bad_kappa_or_smoothing_is_an_error_before_calibration(model, cfg, opts):
    with pytest.raises(AllocError, match="kappa|smooth"):
        allocate(model, cfg, NotIterated(), flops_target=0.5, progress=False, **opts)


def test_empty_loader_is_an_error(model, cfg):
    with pytest.raises(AllocError, match="empty"):
        allocate(model, cfg, [], flops_target=0.5, progress=False)


def test_systolic_config_gives_a_power_term_too(calib, tpu):
    cfg = tpu.with_overrides(block="8x8", array="32x32")
    a = allocate_from_calibration(calib, cfg, flops_target=0.5)
    assert a.beta > 0
    assert all(c.dp_dalpha >= 0 for c in a.curves.values())
    assert a.flops <= 0.5 * a.dense_flops
