"""``lsp-codesign export``: each format round-trips on vit-mnist, loaded the way its users load it.

* timm: ``timm.create_model(arch, checkpoint_path=FILE, **kwargs)`` gives exactly the pruned
  (or finetuned) model: equal logits, and the very top-1 that ``evaluate`` recorded;
* prune: ``prune.custom_from_mask`` on the dense model with the file's masks gives the pruned
  model's outputs, and the file loads into that model as its state dict;
* bsr: per layer a ``torch.sparse_bsr`` tensor with the run's block, storing exactly the kept
  blocks, whose product equals the masked dense layer.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from lsp_codesign.cli import main
from lsp_codesign.commands.evaluate import evaluate_run
from lsp_codesign.commands.export import export_run
from lsp_codesign.commands.finetune import finetune_run
from lsp_codesign.masking import apply_masks, element_masks
from lsp_codesign.packing import expand_mask
from lsp_codesign.rundir import finetuned_weights, read_run
from lsp_codesign.training import evaluate_models
from models import create_model, timm_equivalent
from models.data import test_loader
from tests.test_finetune import make_run

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("one_torch_thread")]

TEST_IMAGES = 1000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("export") / "run", keep=0.6, seed=3)


def _images(n=32):
    images, _labels = next(iter(test_loader("vit-mnist", n, n)))
    return images


def _pruned(run_dir, weights=None):
    run = read_run(run_dir)
    model = create_model("vit-mnist", weights)
    apply_masks(model, element_masks(model, run.masks))
    return model.eval()


def _timm_model(path):
    import timm

    arch, kwargs = timm_equivalent("vit-mnist")
    return timm.create_model(arch, checkpoint_path=str(path), **kwargs).eval()


def _top1_correct(model):
    res = evaluate_models({"m": model}, test_loader("vit-mnist", TEST_IMAGES, 250),
                          progress=False)
    return res["m"]["correct"]


def test_timm_checkpoint_reproduces_evaluate_then_the_finetuned_model(run_dir, tmp_path, capsys):
    rec = evaluate_run(run_dir, test_images=TEST_IMAGES, progress=False)
    out = tmp_path / "pruned.safetensors"
    assert main(["export", str(run_dir), "--format", "timm", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "timm.create_model('vit_tiny_patch16_224', checkpoint_path=" in printed
    loaded = _timm_model(out)
    with torch.no_grad():
        assert torch.equal(loaded(_images()), _pruned(run_dir)(_images()))
    assert _top1_correct(loaded) == rec["models"]["pruned"]["correct"]

    # with finetuned weights in the run, the export is the finetuned model
    finetune_run(run_dir, train_images=256, batch_size=64, progress=False)
    rec = evaluate_run(run_dir, test_images=TEST_IMAGES, progress=False)
    out2 = tmp_path / "finetuned.safetensors"
    info = export_run(run_dir, "timm", out2)
    assert info["weights"] == "finetuned"
    loaded = _timm_model(out2)
    assert _top1_correct(loaded) == rec["models"]["finetuned"]["correct"]
    assert rec["models"]["finetuned"]["correct"] != rec["models"]["pruned"]["correct"]
    ms = read_run(run_dir).masks
    for name in ms.order:  # every pruned block is exactly zero in the file
        w = dict(loaded.named_modules())[name].weight.detach().numpy()
        em = expand_mask(ms.masks[name], *w.shape, ms.block_k, ms.block_n)
        assert not w[~em].any() and w[em].any()


def test_prune_form_equals_custom_from_mask_on_the_dense_model(run_dir, tmp_path):
    from safetensors.torch import load_file
    from torch.nn.utils import prune

    weights = finetuned_weights(read_run(run_dir))  # None unless the test above ran first
    out = tmp_path / "prune.safetensors"
    export_run(run_dir, "prune", out)
    sd = load_file(str(out))
    ms = read_run(run_dir).masks
    assert {k[: -len(".weight_mask")] for k in sd if k.endswith(".weight_mask")} == set(ms.order)
    assert not any(k.endswith(".weight") and k[: -len(".weight")] in ms.order for k in sd)
    dense = create_model("vit-mnist", weights)
    mods = dict(dense.named_modules())
    for name in ms.order:
        prune.custom_from_mask(mods[name], "weight", sd[f"{name}.weight_mask"])
    x = _images()
    with torch.no_grad():
        expected = _pruned(run_dir, weights)(x)
        assert torch.equal(dense(x), expected)
        dense.load_state_dict(sd, strict=True)
        assert torch.equal(dense(x), expected)
    for name in ms.order:
        k, n = mods[name].weight.shape
        em = expand_mask(ms.masks[name], k, n, ms.block_k, ms.block_n)
        assert np.array_equal(sd[f"{name}.weight_mask"].numpy().astype(bool), em)


def test_bsr_tensors_hold_exactly_the_kept_blocks(run_dir, tmp_path):
    out = tmp_path / "w.pt"
    export_run(run_dir, "bsr", out)
    doc = torch.load(out, weights_only=True)
    ms = read_run(run_dir).masks
    assert doc["format"] == "lsp-codesign bsr 1" and doc["block"] == [16, 16]
    model = _pruned(run_dir, finetuned_weights(read_run(run_dir)))
    mods = dict(model.named_modules())
    x = torch.randn(17, 256, dtype=torch.float32)
    for name in ms.order:
        layer = doc["layers"][name]
        w = layer["weight"]
        k, n = layer["shape"]
        assert w.layout == torch.sparse_bsr and w.values().shape[1:] == (16, 16)
        assert w.values().shape[0] == int(ms.masks[name].sum())
        assert np.array_equal(w.col_indices().numpy(), np.nonzero(ms.masks[name])[1])
        dense_w = mods[name].weight.detach()
        assert torch.equal(w.to_dense()[:k, :n], dense_w)
        xs = x[:, :n]
        pad = torch.nn.functional.pad(xs, (0, w.shape[1] - n))
        y = torch.nn.functional.linear(pad, w, None)[:, :k] + layer["bias"]
        torch.testing.assert_close(y, mods[name](xs), rtol=1e-5, atol=1e-5)
    assert doc["layers"]["head"]["shape"] == [10, 64]
    assert doc["layers"]["head"]["weight"].shape == (16, 64)  # padded to whole blocks


def test_bad_outputs_are_one_line_and_leave_nothing(run_dir, tmp_path, capsys, monkeypatch):
    bad = [(["--format", "timm", "--out", str(tmp_path / "x.pt")], "a timm export is written "
            "as .safetensors"),
           (["--format", "bsr", "--out", str(tmp_path / "x.safetensors")], ".pt or .pth"),
           (["--format", "bsr", "--out", str(tmp_path)], "is not a regular file")]
    (tmp_path / "f").write_text("")
    bad.append((["--format", "timm", "--out", str(tmp_path / "f" / "x.safetensors")],
                "is a file, not a directory"))
    for argv, message in bad:
        assert main(["export", str(run_dir), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    target = tmp_path / "t.safetensors"
    target.write_text("keep me")
    assert main(["export", str(run_dir), "--format", "timm", "--out", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err and target.read_text() == "keep me"

    import lsp_codesign.commands.export as cmd

    def boom(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cmd, "prune_state_dict", boom)
    out = tmp_path / "half.safetensors"
    assert main(["export", str(run_dir), "--format", "prune", "--out", str(out)]) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "half" in p.name]
    assert main(["export", str(tmp_path / "nope"), "--format", "timm", "--out",
                 str(tmp_path / "n.safetensors")]) == 2


def test_export_metadata_names_the_run(run_dir, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "m.safetensors"
    export_run(run_dir, "timm", out)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    run = read_run(run_dir)
    assert meta["lsp_export"] == "timm" and meta["model"] == "vit-mnist"
    assert meta["allocation_hash"] == run.allocation_hash and meta["block"] == "16x16"
    assert json.loads(meta["timm_kwargs"])["embed_dim"] == 64
