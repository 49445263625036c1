"""``lsp-codesign allocate``: the run directory and its contract, and every bad input.

The registry's ``vit-mnist`` architecture is used with a checkpoint written here (so the tests
do not depend on the embedded weights); ``test_vit`` exercises the plain-timm path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lsp_codesign.cli import main
from lsp_codesign.commands import allocate as cmd
from lsp_codesign.config import load_config
from lsp_codesign.masks_io import load_masks

from conftest import CONFIGS

VITA = str(CONFIGS / "vita.yaml")
LAYER_KEYS = {"m", "n", "k", "kept_blocks", "total_blocks", "ratio", "flops", "cycles",
              "energy_pj", "kind", "kept_fraction", "excluded", "lambda_i", "dense_flops"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from models.registry import create_model, save_checkpoint

    torch.manual_seed(0)
    m = create_model("vit-mnist", pretrained_default=False)
    p = tmp_path_factory.mktemp("ckpt") / "vit_mnist_random.safetensors"
    save_checkpoint(m, p, model_name="vit-mnist")
    return p


@pytest.fixture(scope="module")
def run_dir(ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "r1"
    rc = main(["allocate", "--hw", VITA, "--model", "vit-mnist", "--checkpoint", str(ckpt),
               "--calib", "24", "--batch-size", "8", "--flops", "0.5", "--out", str(out),
               "--quiet"])
    assert rc == 0
    return out


def test_run_directory_holds_everything(run_dir):
    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert {"allocation.json", "masks.safetensors", "hw.yaml", "curves.npz",
            "plots/kept_fraction.png", "plots/delta_curves.png", "plots/masks.png"} <= names
    for png in run_dir.glob("plots/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.parent.glob(".*partial*"))


def test_allocation_json_contract(run_dir, ckpt):
    doc = json.loads((run_dir / "allocation.json").read_text())
    for key in ("model", "checkpoint", "method", "flops_target", "block", "calib", "seed",
                "beta", "lambda", "layers", "totals", "order", "args", "hw"):
        assert key in doc, key
    assert doc["model"] == "vit-mnist"
    assert doc["checkpoint"] == str(ckpt.resolve())
    assert (doc["method"], doc["flops_target"], doc["block"], doc["calib"], doc["seed"]) == \
        ("lsp", 0.5, "16x16", 24, 0)
    assert doc["labels"] == "dataset"  # MNIST labels from the registry's loader
    assert (doc["curvature"], doc["fisher_samples"], doc["first_order"], doc["score"]) == \
        ("empirical", 1, False, "delta")
    assert doc["args"]["curvature"] == "empirical"
    assert doc["beta"] > 0 and isinstance(doc["lambda"], float)
    t = doc["totals"]
    assert t["flops"] <= 0.5 * t["dense_flops"]
    assert t["flops"] > 0.5 * t["dense_flops"] - t["max_block_flops"]
    assert t["flops_ratio"] == pytest.approx(t["flops"] / t["dense_flops"])
    assert list(doc["layers"]) == doc["order"]
    for name, e in doc["layers"].items():
        assert LAYER_KEYS <= set(e), name
        assert e["ratio"] == pytest.approx(1 - e["kept_blocks"] / e["total_blocks"])
    assert doc["layers"]["head"]["m"] == 1
    assert sum(e["cycles"] for e in doc["layers"].values()) == t["cycles"]
    assert doc["args"]["calib"] == 24 and doc["args"]["block"] == "16x16"


def test_masks_and_config_agree_with_the_json(run_dir):
    doc = json.loads((run_dir / "allocation.json").read_text())
    ms = load_masks(run_dir / "masks.safetensors")
    assert ms.model == "vit-mnist" and ms.block == (16, 16)
    assert list(ms.order) == doc["order"]
    for name, e in doc["layers"].items():
        assert int(ms.masks[name].sum()) == e["kept_blocks"]
        assert ms.gemms[name] == (e["m"], e["n"], e["k"])
    cfg = load_config(run_dir / "hw.yaml")
    assert cfg.block_str == "16x16" and cfg.name == "vita"
    curves = np.load(run_dir / "curves.npz")
    assert curves["blocks.0.mlp.fc1:delta"].shape == (doc["layers"]["blocks.0.mlp.fc1"]
                                                      ["total_blocks"] + 1,)


def test_report_and_finetune_read_the_run_directory(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert "blocks.0.attn.qkv" in capsys.readouterr().out
    from lsp_codesign.rundir import read_run

    run = read_run(run_dir, need_hw=True)
    assert run.model_name == "vit-mnist" and run.masks.order[0] == "blocks.0.attn.qkv"


def test_block_override_and_baseline_method(ckpt, tmp_path):
    out = tmp_path / "r"
    assert main(["allocate", "--hw", VITA, "--model", "vit-mnist", "--checkpoint", str(ckpt),
                 "--calib", "8", "--block", "8x8", "--method", "uniform", "--flops", "0.7",
                 "--exclude", "head", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "allocation.json").read_text())
    assert doc["block"] == "8x8" and doc["method"] == "uniform" and doc["beta"] is None
    assert doc["layers"]["head"]["excluded"] and doc["exclude"] == ["head"]
    assert load_config(out / "hw.yaml").block_str == "8x8"
    assert load_masks(out / "masks.safetensors").block_str == "8x8"


def test_paper_curves_and_ggn_are_recorded(ckpt, tmp_path):
    out = tmp_path / "paper"
    assert main(["allocate", "--hw", VITA, "--model", "vit-mnist", "--checkpoint", str(ckpt),
                 "--calib", "8", "--curvature", "empirical", "--first-order", "on", "--score",
                 "taylor", "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "allocation.json").read_text())
    assert doc["labels"] == "dataset"  # MNIST labels from the registry's loader
    assert (doc["curvature"], doc["first_order"], doc["score"]) == ("empirical", True, "taylor")
    out2 = tmp_path / "ggn"
    assert main(["allocate", "--hw", VITA, "--model", "vit-mnist", "--checkpoint", str(ckpt),
                 "--calib", "8", "--curvature", "ggn", "--fisher-samples", "2",
                 "--first-order", "on", "--out", str(out2), "--quiet"]) == 0
    doc = json.loads((out2 / "allocation.json").read_text())
    assert (doc["curvature"], doc["fisher_samples"], doc["first_order"]) == ("ggn", 2, True)
    assert doc["labels"] == "dataset"  # the first-order term is the loss's gradient


@pytest.mark.parametrize("argv,expect", [
    (["--fisher-samples", "0"], "--fisher-samples: must be a positive integer"),
    (["--fisher-samples", "-1"], "--fisher-samples: must be a positive integer"),
    (["--fisher-samples", "1.5"], "--fisher-samples: must be a positive integer"),
    (["--fisher-samples", "abc"], "--fisher-samples: must be a positive integer"),
    (["--curvature", "hessian"], "choose from fisher, ggn, empirical"),
    (["--first-order", "yes"], "choose from on, off"),
    (["--score", "l1"], "choose from delta, taylor"),
])
def test_bad_curvature_options_are_one_line_exit_2_and_write_nothing(argv, expect, tmp_path,
                                                                     capsys):
    out = tmp_path / "r"
    with pytest.raises(SystemExit) as exc:
        main(["allocate", "--hw", VITA, "--calib", "4", "--out", str(out), "--quiet"] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("lsp-codesign allocate: error: argument "), err
    assert expect in err.replace("'", ""), err
    assert list(tmp_path.iterdir()) == []


def test_fisher_samples_with_the_empirical_curvature_is_an_error(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["allocate", "--hw", VITA, "--calib", "4", "--curvature", "empirical",
                 "--fisher-samples", "3", "--out", str(out), "--quiet"]) == 2
    assert "fisher samples" in capsys.readouterr().err
    assert not out.exists()


def test_plain_timm_model_with_synthetic_images(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["allocate", "--hw", VITA, "--model", "test_vit", "--calib", "4", "--out",
                 str(out), "--flops", "0.6", "--curvature", "empirical"]) == 0
    printed = capsys.readouterr()
    assert "calibration" in printed.err  # progress bar
    assert "FLOPs" in printed.out and str(out) in printed.out
    doc = json.loads((out / "allocation.json").read_text())
    assert doc["model"] == "test_vit" and doc["model_source"] == "timm"
    assert doc["labels"] == "model" and doc["checkpoint"] is None


def test_default_model_comes_from_the_registry():
    from models import registry

    assert cmd.default_model_name() == registry.DEFAULT_MODEL


def test_plain_timm_model_with_a_checkpoint(tmp_path):
    import timm
    from safetensors.torch import save_file

    from models.registry import CheckpointError, build_model

    m = timm.create_model("test_vit", pretrained=False)
    p = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))
    got, src = build_model("test_vit", str(p))
    assert src == "timm"
    assert torch.equal(got.state_dict()["head.weight"], m.state_dict()["head.weight"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        build_model("test_vit", str(bad))


class Unsafe:
    pass


def _bad_inputs(tmp_path: Path, ckpt: Path) -> list[tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage" * 10)
    pickled = tmp_path / "unsafe.pt"
    torch.save({"model": Unsafe()}, pickled)
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"head.weight": torch.zeros(3, 3)}, str(wrong))
    base = ["allocate", "--hw", VITA, "--model", "vit-mnist", "--checkpoint", str(ckpt),
            "--calib", "4", "--quiet"]
    return [
        (base + ["--flops", "0"], "(0, 1]"),
        (base + ["--flops", "1.5"], "(0, 1]"),
        (base + ["--flops", "nan"], "(0, 1]"),
        (base + ["--flops", "0.01"], "below what pruning can reach"),
        (base + ["--block", "64x64"], "does not suit layer"),
        (base + ["--block", "24x24"], "block"),
        (base + ["--calib", "0"], "calibration set is empty"),
        (base + ["--seed", "-1"], "--seed"),
        (base + ["--kappa", "-1"], "--kappa"),
        (base + ["--exclude", "nothing.*"], "matches no linear layer"),
        (["allocate", "--hw", VITA, "--model", "no_such_vit", "--quiet"], "unknown model"),
        (["allocate", "--hw", VITA, "--model", "vit-mnist", "--checkpoint",
          str(tmp_path / "missing.safetensors"), "--quiet"], "not found"),
        (["allocate", "--hw", VITA, "--model", "vit-mnist", "--checkpoint", str(corrupt),
          "--quiet"], "safetensors"),
        (["allocate", "--hw", VITA, "--model", "vit-mnist", "--checkpoint", str(pickled),
          "--quiet"], "weights-only"),
        (["allocate", "--hw", VITA, "--model", "vit-mnist", "--checkpoint", str(wrong),
          "--quiet"], "does not fit"),
        (["allocate", "--hw", str(tmp_path / "nope.yaml"), "--quiet"], "not found"),
    ]


def test_bad_input_is_one_clear_error_and_leaves_nothing(ckpt, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    for i, (argv, expect) in enumerate(_bad_inputs(tmp_path, ckpt)):
        out = work / f"run{i}"
        rc = main(argv + ["--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert rc == 2, (argv, err)
        assert err.startswith("lsp-codesign allocate: error:"), err
        assert len(err.splitlines()) == 1, err
        assert expect in err, (expect, err)
    assert list(work.iterdir()) == []  # no run directory, no partial directory


def test_existing_output_and_failure_midway_leave_no_partial_run(ckpt, tmp_path, capsys,
                                                                  monkeypatch):
    out = tmp_path / "exists"
    out.mkdir()
    base = ["allocate", "--hw", VITA, "--model", "vit-mnist", "--checkpoint", str(ckpt),
            "--calib", "4", "--quiet"]
    assert main(base + ["--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err

    import lsp_codesign.plots_alloc as plots

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "write_plots", boom)
    target = tmp_path / "half"
    assert main(base + ["--out", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" in err and "RuntimeError: disk full" in err
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["exists"]


def test_default_command_on_the_embedded_model(tmp_path, monkeypatch, capsys):
    # `lsp-codesign allocate --hw vita.yaml` from an empty directory: the preset by name, no
    # model, no checkpoint, default out
    monkeypatch.chdir(tmp_path)
    assert not any(tmp_path.iterdir())
    assert main(["allocate", "--hw", "vita.yaml", "--calib", "32"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "vit-mnist-lsp-16x16-f0.5"
    assert str(run.relative_to(tmp_path)) in out
    doc = json.loads((run / "allocation.json").read_text())
    assert doc["model"] == "vit-mnist" and doc["checkpoint"] is None
    assert doc["curvature"] == "empirical" and doc["labels"] == "dataset"
    assert doc["totals"]["flops_ratio"] <= 0.5
    assert (run / "plots" / "kept_fraction.png").is_file()
