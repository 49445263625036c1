"""Calibration pass on a tiny timm ViT, checked against explicit per-sample autograd.

The model runs in float64 so that the incremental curve can be compared with the explicit
quadratic form (curvature matrix built in full) to 1e-6 relative. The ``calib`` fixture is the
paper-faithful setting (empirical curvature, first-order term, Taylor score); the other
curvatures are checked against per-sample gradients computed independently with ``torch.func``
further down. Padding is
exercised: the embedding width 24 is not a multiple of the 16-wide block, and the 5-class head
is not a multiple of the 8-high block.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import torch
from timm.models.vision_transformer import VisionTransformer

from lsp_codesign.allocator import (AllocError, CurvatureOptions, block_reduce, calibrate,
                                    layer_curve)
from lsp_codesign.packing import BlockGrid

BLOCK = (8, 16)


def tiny_vit(seed: int = 0, dtype=torch.float64) -> VisionTransformer:
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2,
                          mlp_ratio=2.0, num_classes=5)
    # larger weights than timm's init so that every layer's gradient matters
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    return m.to(dtype).eval()


def batches(n: int = 12, bs: int = 5, labels: bool = True, seed: int = 1,
            dtype=torch.float64) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for lo in range(0, n, bs):
        b = min(bs, n - lo)
        x = torch.randn((b, 3, 32, 32), generator=g, dtype=dtype)
        y = torch.randint(0, 5, (b,), generator=g) if labels else None
        out.append((x, y))
    return out


def linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def per_sample_grads(model, data, use_labels: bool = True) -> dict[str, np.ndarray]:
    """Explicit per-sample loss gradients of every linear weight: ``{name: (N, K, N_in)}``."""
    mods = dict(model.named_modules())
    names = linear_names(model)
    weights = [mods[n].weight for n in names]
    out = {n: [] for n in names}
    for x, y in data:
        for i in range(x.shape[0]):
            logits = model(x[i:i + 1])
            target = y[i:i + 1] if use_labels else logits.detach().argmax(1)
            loss = torch.nn.functional.cross_entropy(logits, target)
            grads = torch.autograd.grad(loss, weights)
            for n, g in zip(names, grads):
                out[n].append(g.detach().numpy().copy())
    return {n: np.stack(v) for n, v in out.items()}


@pytest.fixture(scope="module")
def model():
    return tiny_vit()


@pytest.fixture(scope="module")
def data():
    return batches()


PAPER = CurvatureOptions.resolve("empirical", first_order="on", score="taylor")


@pytest.fixture(scope="module")
def calib(model, data):
    return calibrate(model, data, block_k=BLOCK[0], block_n=BLOCK[1], micro_batch=3,
                     options=PAPER, progress=False, model_name="tiny")


@pytest.fixture(scope="module")
def grads(model, data):
    return per_sample_grads(model, data)


def test_every_linear_layer_is_prunable_by_default_head_included(calib, model):
    assert list(calib.layers) == linear_names(model)
    assert "head" in calib.layers
    assert calib.layers["head"].shape.m == 1
    assert calib.layers["blocks.0.attn.qkv"].shape.m == 17
    assert calib.n_samples == 12
    assert calib.labels == "dataset"


def test_block_sums_and_mean_gradient_match_per_sample_autograd(calib, grads):
    # per-sample loss gradients (not the gradient of a mean of f^2, not a batch gradient)
    for name, st in calib.layers.items():
        g = grads[name]
        grid = BlockGrid(st.shape.k, st.shape.n, *BLOCK)
        want = np.stack([block_reduce(gi * st.weight, grid).ravel() for gi in g])
        np.testing.assert_allclose(st.block_sums, want, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(st.grad_mean, g.mean(axis=0), rtol=1e-9, atol=1e-14)


def test_empirical_fisher_is_not_rank_one(calib):
    # gradients of mean(f(x)^2) over a batch would give one direction; per-sample gradients
    # give as many as there are samples (here up to 12)
    s = calib.layers["blocks.1.mlp.fc1"].block_sums
    assert np.linalg.matrix_rank(s) >= 6


@pytest.mark.parametrize("kappa", [0.0, 0.05])
def test_incremental_curve_matches_full_fisher_quadratic_form(calib, grads, vita, kappa):
    cfg = vita.with_overrides(block=f"{BLOCK[0]}x{BLOCK[1]}")
    for name, st in calib.layers.items():
        c = layer_curve(st, cfg, kappa=kappa, smooth=0.0, options=PAPER)
        g = grads[name].reshape(calib.n_samples, -1)
        w = st.weight.ravel()
        fisher = kappa * np.eye(w.size) + g.T @ g / calib.n_samples
        gbar = g.mean(axis=0)
        grid = c.grid
        bid = ((np.arange(grid.k)[:, None] // grid.block_k) * grid.nb
               + np.arange(grid.n)[None, :] // grid.block_n).ravel()
        want = [0.0]
        for k in range(1, grid.n_blocks + 1):
            dw = np.where(np.isin(bid, c.order[:k]), -w, 0.0)
            want.append(gbar @ dw + 0.5 * dw @ fisher @ dw)
        want = np.array(want)
        assert c.delta[0] == 0.0
        np.testing.assert_allclose(c.delta, want, rtol=0, atol=1e-6 * np.abs(want).max(),
                                   err_msg=name)
        # scores: mean |W * gbar| per block, real elements only
        sc = block_reduce(np.abs(st.weight * grads[name].mean(0)), grid)
        np.testing.assert_allclose(c.scores, sc / grid.block_elements(), rtol=1e-9)
        assert np.all(np.diff(c.scores.ravel()[c.order]) >= 0)


def test_model_predictions_are_the_labels_when_the_data_has_none(model):
    data = batches(n=7, bs=4, labels=False, seed=4)
    cal = calibrate(model, data, block_k=BLOCK[0], block_n=BLOCK[1], options=PAPER,
                    progress=False)
    assert cal.labels == "model"
    g = per_sample_grads(model, data, use_labels=False)
    st = cal.layers["blocks.0.mlp.fc2"]
    grid = BlockGrid(st.shape.k, st.shape.n, *BLOCK)
    want = np.stack([block_reduce(gi * st.weight, grid).ravel() for gi in g["blocks.0.mlp.fc2"]])
    np.testing.assert_allclose(st.block_sums, want, rtol=1e-9, atol=1e-14)


def test_chunking_does_not_change_results(model, data, calib):
    # chunk_mib tiny: one sample's per-sample gradient at a time; micro-batch of one image
    small = calibrate(model, data, block_k=BLOCK[0], block_n=BLOCK[1], micro_batch=1,
                      chunk_mib=1e-6, options=PAPER, progress=False)
    for name, st in calib.layers.items():
        np.testing.assert_allclose(small.layers[name].block_sums, st.block_sums, rtol=1e-12,
                                   atol=1e-15)
        np.testing.assert_allclose(small.layers[name].grad_mean, st.grad_mean, rtol=1e-12,
                                   atol=1e-15)


def test_model_is_left_as_it_was(data):
    m = tiny_vit(seed=2)
    m.train()
    m.pos_embed.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    calibrate(m, data, block_k=BLOCK[0], block_n=BLOCK[1], progress=False)
    assert m.training
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in m.parameters())
    assert not m._forward_hooks and all(not mod._forward_hooks for mod in m.modules())


def test_exclusion_skips_layers(model, data):
    cal = calibrate(model, data, block_k=BLOCK[0], block_n=BLOCK[1], exclude=["head"],
                    progress=False)
    assert "head" not in cal.layers
    assert [g.name for g in cal.excluded] == ["head"]


def test_empty_calibration_set_is_an_error(model):
    with pytest.raises(AllocError, match="empty"):
        calibrate(model, [], block_k=BLOCK[0], block_n=BLOCK[1], progress=False)


def test_out_of_range_labels_are_an_error(model):
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with pytest.raises(AllocError, match="labels"):
        calibrate(model, [(x, torch.tensor([0, 7]))], block_k=BLOCK[0], block_n=BLOCK[1],
                  progress=False)


def test_float32_model_works_and_bare_image_batches_are_accepted():
    m = tiny_vit(seed=3, dtype=torch.float32)
    imgs = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    cal = calibrate(m, imgs, block_k=BLOCK[0], block_n=BLOCK[1], options=PAPER,
                    progress=False)
    assert cal.labels == "model" and cal.n_samples == 8
    st = cal.layers["blocks.0.attn.qkv"]
    assert st.block_sums.shape == (8, 9 * 2)
    assert np.isfinite(st.block_sums).all()


# ---------------------------------------------------------------------------------------------
# The other curvatures, against per-sample gradients computed independently with torch.func


def func_grads(model, data, seed_of) -> dict[str, np.ndarray]:
    """Per-sample gradients of ``seed_of(z_n, n)^T z_n`` w.r.t. every linear weight, with
    torch.func (vmap over grad of a functional call): ``{name: (rows, K, N_in)}``.

    ``seed_of(logits, batch_index)`` gives, for one loader batch, a list of ``(B, C)`` seeds
    (one per curvature sample); the gradient of ``sum_c seed[n, c] z[n, c]`` is the
    per-sample gradient that seed defines. Rows are in the order calibrate() emits them.
    """
    from torch.func import functional_call, grad, vmap

    names = linear_names(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    wkeys = [f"{n}.weight" for n in names]

    def one(ws, x, s):
        p = dict(params)
        p.update(dict(zip(wkeys, ws)))
        z = functional_call(model, p, (x[None],))[0]
        return (s * z).sum()

    g_one = vmap(grad(one), in_dims=(None, 0, 0))
    out = {n: [] for n in names}
    for bi, (x, _) in enumerate(data):
        with torch.no_grad():
            z = model(x)
        for s in seed_of(z, bi):
            with warnings.catch_warnings():  # vmap's fallback for attention: slow, not wrong
                warnings.simplefilter("ignore", UserWarning)
                gs = g_one(tuple(params[k] for k in wkeys), x, s)
            for n, g in zip(names, gs):
                out[n].append(g.numpy().copy())
    return {n: np.concatenate(v) for n, v in out.items()}


def fisher_seeds(samples: int, seed: int = 0):
    """The documented draw: one generator seeded with ``seed``; per loader batch (one
    micro-batch here) and per sample, ``torch.multinomial(softmax(z), 1)``."""
    gen = torch.Generator().manual_seed(seed)

    def seeds(z, bi):
        p = torch.softmax(z, dim=1)
        out = []
        for _ in range(samples):
            y = torch.multinomial(p, 1, generator=gen)[:, 0]
            out.append(p - torch.nn.functional.one_hot(y, z.shape[1]).to(z.dtype))
        return out
    return seeds


def ggn_seeds(samples: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def seeds(z, bi):
        return [torch.randn(z.shape, generator=gen, dtype=torch.float64)
                for _ in range(samples)]
    return seeds


def _check_against(cal, want_grads, vita, kappa=0.01, first_order_grads=None):
    cfg = vita.with_overrides(block=f"{BLOCK[0]}x{BLOCK[1]}")
    for name, st in cal.layers.items():
        g = want_grads[name]
        grid = BlockGrid(st.shape.k, st.shape.n, *BLOCK)
        want = np.stack([block_reduce(gi * st.weight, grid).ravel() for gi in g])
        np.testing.assert_allclose(st.block_sums, want, rtol=1e-9, atol=1e-14, err_msg=name)
        # the curve equals the explicit quadratic form of these gradients
        c = layer_curve(st, cfg, kappa=kappa, smooth=0.0, options=cal.options)
        gv = g.reshape(g.shape[0], -1)
        w = st.weight.ravel()
        h = kappa * np.eye(w.size) + gv.T @ gv / gv.shape[0]
        gbar = (np.zeros(w.size) if first_order_grads is None
                else first_order_grads[name].reshape(-1, w.size).mean(0))
        bid = ((np.arange(grid.k)[:, None] // grid.block_k) * grid.nb
               + np.arange(grid.n)[None, :] // grid.block_n).ravel()
        ref = [0.0]
        for k in range(1, grid.n_blocks + 1):
            dw = np.where(np.isin(bid, c.order[:k]), -w, 0.0)
            ref.append(gbar @ dw + 0.5 * dw @ h @ dw)
        ref = np.array(ref)
        np.testing.assert_allclose(c.delta, ref, rtol=0, atol=1e-6 * np.abs(ref).max(),
                                   err_msg=name)


@pytest.mark.parametrize("samples", [1, 3])
def test_fisher_block_sums_and_curve_match_torch_func(model, vita, samples):
    data = batches(n=8, bs=4, seed=5)
    opts = CurvatureOptions.resolve("fisher", samples=samples)
    cal = calibrate(model, data, block_k=BLOCK[0], block_n=BLOCK[1], micro_batch=4,
                    options=opts, seed=7, progress=False)
    assert cal.labels == "unused" and cal.n_samples == 8
    assert all(st.grad_mean is None for st in cal.layers.values())  # not needed: not computed
    assert cal.layers["head"].block_sums.shape[0] == 8 * samples
    _check_against(cal, func_grads(model, data, fisher_seeds(samples, seed=7)), vita)


def test_ggn_block_sums_and_curve_match_torch_func(model, vita):
    data = batches(n=8, bs=4, seed=6)
    opts = CurvatureOptions.resolve("ggn", samples=2)
    cal = calibrate(model, data, block_k=BLOCK[0], block_n=BLOCK[1], micro_batch=4,
                    options=opts, seed=3, progress=False)
    _check_against(cal, func_grads(model, data, ggn_seeds(2, seed=3)), vita)


def test_fisher_with_the_first_order_term_takes_the_loss_gradient(model, vita):
    # the first-order term is gbar^T dW with gbar the cross entropy's gradient at the data
    # set's labels, collected by one more backward pass; the curvature stays the Fisher
    data = batches(n=8, bs=4, seed=5)
    opts = CurvatureOptions.resolve("fisher", first_order="on")
    cal = calibrate(model, data, block_k=BLOCK[0], block_n=BLOCK[1], micro_batch=4,
                    options=opts, seed=7, progress=False)
    assert cal.labels == "dataset"
    loss_grads = per_sample_grads(model, data)
    for name, st in cal.layers.items():
        np.testing.assert_allclose(st.grad_mean, loss_grads[name].mean(0), rtol=1e-9,
                                   atol=1e-14)
    _check_against(cal, func_grads(model, data, fisher_seeds(1, seed=7)), vita,
                   first_order_grads=loss_grads)


def test_sampled_fisher_converges_to_the_exact_fisher(model):
    # E over y ~ p of s[n, b]^2 = sum_c p_c <grad log p_c, W_b>^2: the true Fisher (= the
    # Gauss-Newton matrix of the cross entropy). 400 draws per image: within ~10%.
    data = [(batches(n=2, bs=2, seed=9)[0][0], None)]
    cal = calibrate(model, data, block_k=BLOCK[0], block_n=BLOCK[1], micro_batch=2,
                    options=CurvatureOptions.resolve("fisher", samples=400), seed=1,
                    progress=False)
    x = data[0][0]
    st = cal.layers["blocks.1.mlp.fc2"]
    grid = BlockGrid(st.shape.k, st.shape.n, *BLOCK)
    w_mod = dict(model.named_modules())["blocks.1.mlp.fc2"].weight
    exact = np.zeros(grid.n_blocks)
    for i in range(2):
        logp = torch.log_softmax(model(x[i:i + 1]), dim=1)[0]
        p = logp.exp().detach()
        for c in range(logp.shape[0]):
            (gc,) = torch.autograd.grad(logp[c], w_mod, retain_graph=True)
            exact += float(p[c]) * block_reduce(gc.numpy() * st.weight, grid).ravel() ** 2
    exact /= 2
    est = (st.block_sums ** 2).mean(axis=0)
    big = exact > 0.05 * exact.max()
    np.testing.assert_allclose(est[big], exact[big], rtol=0.15)
    assert np.corrcoef(est, exact)[0, 1] > 0.97


def test_taylor_score_without_the_gradient_is_a_clear_error(model, vita):
    cal = calibrate(model, batches(n=4, bs=4), block_k=BLOCK[0], block_n=BLOCK[1],
                    progress=False)
    st = cal.layers["head"]
    cfg = vita.with_overrides(block=f"{BLOCK[0]}x{BLOCK[1]}")
    with pytest.raises(AllocError, match="mean gradient"):
        layer_curve(st, cfg, options=CurvatureOptions.resolve("fisher", score="taylor"))
    with pytest.raises(AllocError, match="mean gradient"):
        layer_curve(st, cfg, options=CurvatureOptions.resolve("fisher", first_order="on"))


def test_curvature_options_resolve_defaults_and_reject_bad_values():
    assert CurvatureOptions.resolve().record() == {
        "curvature": "empirical", "fisher_samples": 1, "first_order": False, "score": "delta"}
    assert CurvatureOptions.resolve("empirical").first_order is False
    assert CurvatureOptions.resolve("ggn").first_order is False
    assert CurvatureOptions.resolve("ggn", first_order="on").needs_gradient
    assert CurvatureOptions.resolve(score="taylor").needs_gradient
    for bad in (0, -1, 1.5, "abc", True):
        with pytest.raises(AllocError, match="positive integer"):
            CurvatureOptions.resolve(samples=bad)
    with pytest.raises(AllocError, match="unknown curvature 'hessian'"):
        CurvatureOptions.resolve("hessian")
    with pytest.raises(AllocError, match="on or off"):
        CurvatureOptions.resolve(first_order="yes")
    with pytest.raises(AllocError, match="unknown score"):
        CurvatureOptions.resolve(score="l1")
