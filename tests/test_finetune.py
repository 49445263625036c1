"""Masked finetuning and evaluation, on run directories made here (not by the allocator)."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy

from lsp_codesign.cli import main
from lsp_codesign.masking import FinetuneError, apply_masks, check_masked, element_masks
from lsp_codesign.masks_io import MaskSet, load_masks
from lsp_codesign.packing import expand_mask
from lsp_codesign.rundir import read_run
from lsp_codesign.training import evaluate_models, train
from lsp_codesign.vit_shapes import module_vit_shapes
from models import DEFAULT_MODEL, create_model, save_checkpoint
from models.data import test_loader, train_loader
from tests.conftest import write_test_run

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]


def random_masks(model, name: str, block: tuple[int, int], keep: float, seed: int) -> MaskSet:
    """Random block masks keeping about ``keep`` of each layer's blocks (at least one)."""
    rng = np.random.default_rng(seed)
    bk, bn = block
    shapes = module_vit_shapes(model, name)
    masks, gemms = {}, {}
    for layer in shapes:
        kb, nb = -(-layer.k // bk), -(-layer.n // bn)
        m = rng.random((kb, nb)) < keep
        m.flat[rng.integers(m.size)] = True
        masks[layer.name] = m
        gemms[layer.name] = (layer.m, layer.n, layer.k)
    return MaskSet(model=name, block_k=bk, block_n=bn, order=tuple(masks), gemms=gemms,
                   masks=masks)


def make_run(path, *, model=DEFAULT_MODEL, checkpoint=None, block=(16, 16), keep=0.5, seed=0,
             recorded_checkpoint=None):
    net = create_model(model, checkpoint, pretrained_default=True)
    ms = random_masks(net, model, block, keep, seed)
    return write_test_run(path, ms, checkpoint=recorded_checkpoint or checkpoint, seed=seed,
                          flops_target=keep)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "r16")


def pruned_blocks_are_zero(weights: dict[str, np.ndarray], ms: MaskSet) -> bool:
    """Independent check on raw arrays: every weight element outside kept blocks is 0."""
    for name in ms.order:
        w = weights[f"{name}.weight"]
        keep = expand_mask(ms.masks[name], w.shape[0], w.shape[1], ms.block_k, ms.block_n)
        if np.any(w[~keep] != 0):
            return False
    return True


# -- masks on a model ------------------------------------------------------------------------


def test_element_masks_follow_blocks_and_padding(run_dir):
    model = create_model(DEFAULT_MODEL)
    ms = load_masks(run_dir / "masks.safetensors")
    em = element_masks(model, ms)
    assert set(em) == set(ms.order) and len(em) == 17
    head = em["head"]
    assert head.shape == (10, 64) and ms.masks["head"].shape == (1, 4)  # 10 rows pad to 16
    for j in range(4):
        assert bool(head[:, 16 * j: 16 * (j + 1)].all()) == bool(ms.masks["head"][0, j])
    qkv = em["blocks.0.attn.qkv"]
    blk = ms.masks["blocks.0.attn.qkv"]
    assert qkv.shape == (192, 64) and blk.shape == (12, 4)
    assert torch.equal(qkv[::16, ::16], torch.from_numpy(blk))
    apply_masks(model, em)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    assert pruned_blocks_are_zero(sd, ms)
    assert check_masked(model, em)["head"] == int((~head).sum())


def test_check_masked_catches_a_nonzero_pruned_weight(run_dir):
    model = create_model(DEFAULT_MODEL)
    em = element_masks(model, load_masks(run_dir / "masks.safetensors"))
    apply_masks(model, em)
    check_masked(model, em)
    r, c = map(int, torch.nonzero(~em["blocks.2.mlp.fc1"])[0])
    with torch.no_grad():
        model.blocks[2].mlp.fc1.weight[r, c] = 1e-30
    with pytest.raises(FinetuneError, match=r"not zero in blocks\.2\.mlp\.fc1 \(1 nonzero\)"):
        check_masked(model, em)


def test_masks_for_another_shape_are_refused(run_dir):
    deit = create_model("deit_tiny_patch16_224")
    with pytest.raises(FinetuneError, match=r"blocks\.0\.attn\.qkv.*\(192, 64\).*\(576, 192\)"):
        element_masks(deit, load_masks(run_dir / "masks.safetensors"))
    ms = load_masks(run_dir / "masks.safetensors")
    renamed = MaskSet(model=ms.model, block_k=16, block_n=16,
                      order=("blocks.9.attn.qkv",),
                      gemms={"blocks.9.attn.qkv": ms.gemms["blocks.0.attn.qkv"]},
                      masks={"blocks.9.attn.qkv": ms.masks["blocks.0.attn.qkv"]})
    with pytest.raises(FinetuneError, match=r"'blocks\.9\.attn\.qkv': not found"):
        element_masks(create_model(DEFAULT_MODEL), renamed)


# -- training --------------------------------------------------------------------------------


@pytest.mark.parametrize("distill", [False, True])
def test_train_keeps_pruned_weights_zero_and_moves_kept_ones(run_dir, distill):
    torch.manual_seed(0)
    model = create_model(DEFAULT_MODEL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    em = element_masks(model, load_masks(run_dir / "masks.safetensors"))
    loader = train_loader(DEFAULT_MODEL, 256, 0, 64)
    teacher = create_model(DEFAULT_MODEL) if distill else None
    # a large learning rate and weight decay would move pruned weights if masking failed
    hist = train(model, loader, epochs=2, lr=1e-2, weight_decay=0.5, masks=em, teacher=teacher,
                 progress=False)
    assert [h["epoch"] for h in hist] == [1, 2] and all(h["images"] == 256 for h in hist)
    assert all(np.isfinite(h["loss"]) for h in hist)
    after = model.state_dict()
    for name, keep in em.items():
        w0, w1 = before[f"{name}.weight"], after[f"{name}.weight"]
        assert torch.all(w1[~keep] == 0), name
        assert not torch.equal(w1[keep], w0[keep]), name
    assert not model.training


@pytest.mark.parametrize("kept", ["gradient hooks", "re-zeroing", "neither"])
def test_each_mask_safeguard_holds_on_its_own(run_dir, monkeypatch, kept):
    """train() masks gradients and re-zeroes after every step; either alone keeps the pruned
    weights at exactly zero, and with both removed check_masked stops the run."""
    import lsp_codesign.training as training

    if kept != "gradient hooks":  # no hooks: the weights are only zeroed, once, up front
        monkeypatch.setattr(training, "_mask_gradients",
                            lambda model, masks: (apply_masks(model, masks), [])[1])
    if kept != "re-zeroing":  # the first apply_masks (in _mask_gradients) only
        calls = []
        real = training.apply_masks

        def first_only(model, masks):
            calls.append(1)
            if len(calls) == 1:
                real(model, masks)
        monkeypatch.setattr(training, "apply_masks", first_only)
    torch.manual_seed(0)
    model = create_model(DEFAULT_MODEL)
    em = element_masks(model, load_masks(run_dir / "masks.safetensors"))
    loader = train_loader(DEFAULT_MODEL, 128, 0, 64)
    run = lambda: train(model, loader, epochs=1, lr=1e-2, weight_decay=0.5,  # noqa: E731
                        masks=em, progress=False)
    if kept == "neither":
        with pytest.raises(FinetuneError, match="pruned"):
            run()
        return
    run()
    weights = model.state_dict()
    for name, keep in em.items():
        assert torch.all(weights[f"{name}.weight"][~keep] == 0), (kept, name)


def test_train_rejects_bad_settings():
    model = create_model(DEFAULT_MODEL)
    loader = train_loader(DEFAULT_MODEL, 64, 0, 64)
    with pytest.raises(FinetuneError, match="epochs must be a positive integer, got 0"):
        train(model, loader, epochs=0, lr=1e-3)
    with pytest.raises(FinetuneError, match="learning rate must be positive"):
        train(model, loader, epochs=1, lr=0.0)
    with pytest.raises(FinetuneError, match="distillation needs"):
        train(model, loader, epochs=1, lr=1e-3, teacher=model, distill_alpha=2.0)


def test_evaluate_models_top1_and_kl():
    dense = create_model(DEFAULT_MODEL)
    rand = create_model(DEFAULT_MODEL, pretrained_default=False)
    loader = test_loader(DEFAULT_MODEL, 500)
    res = evaluate_models({"dense": dense, "rand": rand}, loader, reference="dense",
                          progress=False)
    assert res["dense"]["total"] == res["rand"]["total"] == 500
    assert res["dense"]["kl_to_reference"] == 0.0
    assert res["rand"]["kl_to_reference"] > 0.5
    assert res["dense"]["top1"] > 0.95 > 0.3 > res["rand"]["top1"]
    labels = torch.cat([y for _, y in loader])
    with torch.no_grad():
        pred = torch.cat([dense(x).argmax(-1) for x, _ in loader])
    assert res["dense"]["correct"] == int((pred == labels).sum())


# -- the commands on a run directory ---------------------------------------------------------


def test_finetune_and_evaluate_commands(tmp_path, capsys):
    run = make_run(tmp_path / "run", block=(16, 16), keep=0.5, seed=1)
    assert main(["evaluate", str(run), "--test-images", "1000", "--no-progress"]) == 0
    first = json.loads((run / "evaluate.json").read_text())
    assert first["models"]["finetuned"] is None
    assert "not finetuned yet" in capsys.readouterr().out

    assert main(["finetune", str(run), "--epochs", "1", "--train-images", "2048",
                 "--lr", "1e-3", "--no-progress"]) == 0
    assert "pruned blocks verified zero" in capsys.readouterr().out
    rec = json.loads((run / "finetune.json").read_text())
    assert rec["train_images"] == 2048 and rec["epochs"] == 1 and rec["distill"] is True
    assert rec["pruned_blocks_zero"] is True and rec["block"] == "16x16"
    ms = load_masks(run / "masks.safetensors")
    weights = load_numpy(str(run / "finetuned.safetensors"))
    assert pruned_blocks_are_zero(weights, ms)

    assert main(["evaluate", str(run), "--test-images", "1000", "--no-progress"]) == 0
    out = capsys.readouterr().out
    ev = json.loads((run / "evaluate.json").read_text())
    dense, pruned, tuned = (ev["models"][k] for k in ("dense", "pruned", "finetuned"))
    assert ev["test_images"] == 1000 and dense["total"] == 1000
    assert dense["kl_to_dense"] == 0.0 and dense["top1"] > 0.95
    assert pruned == first["models"]["pruned"]
    # random half-pruning hurts; a short masked finetune recovers much of it
    assert pruned["top1"] < dense["top1"] - 0.05
    assert tuned["top1"] > pruned["top1"] + 0.05
    assert tuned["kl_to_dense"] < pruned["kl_to_dense"]
    assert "finetuned" in out and f"{100 * tuned['top1']:.2f}" in out


def test_finetune_refuses_to_overwrite_without_flag(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    args = ["finetune", str(run), "--train-images", "128", "--no-distill", "--no-progress"]
    assert main(args) == 0
    first = (run / "finetuned.safetensors").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "finetuned.safetensors: already exists" in err
    assert (run / "finetuned.safetensors").read_bytes() == first
    assert main(args + ["--overwrite", "--seed", "1"]) == 0
    assert (run / "finetuned.safetensors").read_bytes() != first


def test_evaluate_rejects_a_finetuned_file_that_breaks_the_masks(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    tie = {"lsp_allocation_hash": read_run(run).allocation_hash}
    save_checkpoint(create_model(DEFAULT_MODEL), run / "finetuned.safetensors",
                    model_name=DEFAULT_MODEL, metadata=tie)  # dense: pruned blocks not zero
    assert main(["evaluate", str(run), "--test-images", "100", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "finetuned.safetensors: does not respect the run's masks" in err
    assert not (run / "evaluate.json").exists()


def test_a_finetuned_file_of_another_allocation_is_refused(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    from lsp_codesign.commands._runs import pruned_model

    model, _em = pruned_model(read_run(run))
    save_checkpoint(model, run / "finetuned.safetensors", model_name=DEFAULT_MODEL,
                    metadata={"lsp_allocation_hash": "0123456789abcdef"})
    for cmd in ("evaluate", "verify"):
        assert main([cmd, str(run), "--no-progress"] if cmd == "evaluate"
                    else [cmd, str(run), "--sim", "iss", "--layers", "1"]) == 2
        err = capsys.readouterr().err
        assert "finetuned.safetensors: made for another allocation" in err, err


def test_finetune_overwrite_removes_the_stale_evaluation(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    args = ["finetune", str(run), "--train-images", "128", "--no-distill", "--no-progress"]
    assert main(args) == 0
    assert main(["evaluate", str(run), "--test-images", "50", "--no-progress"]) == 0
    assert (run / "evaluate.json").is_file()
    assert main(args + ["--overwrite", "--seed", "3"]) == 0
    assert not (run / "evaluate.json").exists()
    capsys.readouterr()
    for f in ("finetuned.safetensors", "finetune.json"):
        assert (run / f).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("breakage,message", [
    ("no_dir", "run directory not found"),
    ("no_alloc", "allocation.json: not found"),
    ("bad_json", "allocation.json: not valid JSON"),
    ("bad_model", "unknown model 'vit-cifar'"),
    ("no_masks", "masks.safetensors: mask file not found"),
    ("other_model", "masks are for model 'vit-mnist', but allocation.json says 'deit_tiny"),
    ("bad_ckpt", "nothing.pt: checkpoint file not found"),
])
def test_broken_run_dirs_are_one_line_errors(tmp_path, capsys, breakage, message):
    run = make_run(tmp_path / "run", recorded_checkpoint=(tmp_path / "nothing.pt"
                                                          if breakage == "bad_ckpt" else None))
    alloc = json.loads((run / "allocation.json").read_text())
    if breakage == "no_dir":
        shutil.rmtree(run)
    elif breakage == "no_alloc":
        (run / "allocation.json").unlink()
    elif breakage == "bad_json":
        (run / "allocation.json").write_text("{not json")
    elif breakage == "no_masks":
        (run / "masks.safetensors").unlink()
    else:
        if breakage == "bad_model":
            alloc["model"] = "vit-cifar"
        elif breakage == "other_model":
            alloc["model"] = "deit_tiny_patch16_224"
        else:
            alloc["checkpoint"] = str(tmp_path / "nothing.pt")
        (run / "allocation.json").write_text(json.dumps(alloc))
    for cmd in ("finetune", "evaluate"):
        assert main([cmd, str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"lsp-codesign {cmd}: error: ") and err.count("\n") == 0
        assert message in err
    assert not (run / "finetuned.safetensors").exists()


def test_deit_run_needs_images(tmp_path, capsys):
    run = tmp_path / "deit"
    net = create_model("deit_tiny_patch16_224")
    write_test_run(run, random_masks(net, "deit_tiny_patch16_224", (32, 32), 0.5, 0))
    assert read_run(run).model_name == "deit_tiny_patch16_224"
    assert main(["finetune", str(run), "--no-progress"]) == 2
    assert "no bundled training images" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--no-progress"]) == 2
    assert "no bundled test images" in capsys.readouterr().err


def test_relative_checkpoint_is_found_in_the_run_dir(tmp_path):
    src = create_model(DEFAULT_MODEL, pretrained_default=False)
    run = make_run(tmp_path / "run", recorded_checkpoint="dense.safetensors")
    save_checkpoint(src, run / "dense.safetensors", model_name=DEFAULT_MODEL)
    r = read_run(run)
    assert r.checkpoint == str(run / "dense.safetensors")
    from lsp_codesign.commands._runs import dense_model

    assert torch.equal(dense_model(r).head.weight, src.head.weight)


def test_deit_run_with_an_imagenet_style_folder(tmp_path, capsys):
    """DeiT end to end on a user's ImageFolder with 1000 class folders (one image each)."""
    from PIL import Image

    data = tmp_path / "imagenet"
    rng = np.random.default_rng(0)
    for c in range(1000):
        (data / f"n{c:08d}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
            data / f"n{c:08d}" / "img.png")
    name = "deit_tiny_patch16_224"
    run = tmp_path / "run"
    ckpt = tmp_path / "deit_tiny.safetensors"
    save_checkpoint(create_model(name), ckpt, model_name=name)
    write_test_run(run, random_masks(create_model(name, ckpt), name, (32, 32), 0.5, 0),
                   checkpoint=ckpt, data=data, flops_target=0.5)
    assert main(["finetune", str(run), "--train-images", "4", "--batch-size", "2",
                 "--no-progress"]) == 0
    rec = json.loads((run / "finetune.json").read_text())
    assert rec["data"] == str(data) and rec["train_images"] == 4 and rec["lr"] == 1e-4
    ms = load_masks(run / "masks.safetensors")
    assert pruned_blocks_are_zero(load_numpy(str(run / "finetuned.safetensors")), ms)
    assert main(["evaluate", str(run), "--test-images", "3", "--no-progress"]) == 0
    ev = json.loads((run / "evaluate.json").read_text())
    assert ev["test_images"] == 3 and set(ev["models"]) == {"dense", "pruned", "finetuned"}
    assert ev["models"]["dense"]["kl_to_dense"] == 0.0
    assert ev["models"]["pruned"]["kl_to_dense"] > 0.0
