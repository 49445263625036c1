"""Reliability: each class of failure found on hostile input has a test here (docs/reliability.md).

Run directories (exclusive creation, atomic replace, signals, permissions, --out checks), the
one error path of the CLI (one line, exit 0/1/2, no library warnings) and the inputs that used
to end in a traceback. The fuzzing of configs, masks files and allocations is in test_fuzz.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from lsp_codesign.atomic import output_lock
from lsp_codesign.cli import main
from lsp_codesign.masks_io import MaskSet, save_masks
from tests.conftest import CONFIGS, ROOT, write_test_run

VITA = str(CONFIGS / "vita.yaml")


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str, command: str) -> bool:
    return (err.count("\n") == 1 and err.startswith(f"lsp-codesign {command}: error: ")
            and "Traceback" not in err and "internal error" not in err)


def toy_masks(block=(16, 16), m=17, model="toy") -> MaskSet:
    rng = np.random.default_rng(0)
    gemms = {"blocks.0.attn.qkv": (m, 64, 192), "blocks.0.mlp.fc1": (m, 64, 256),
             "head": (1, 64, 10)}
    masks = {n: rng.random((-(-k // block[0]), -(-nn // block[1]))) < 0.5
             for n, (_m, nn, k) in gemms.items()}
    return MaskSet(model, block[0], block[1], tuple(gemms), gemms, masks)


def leftovers(folder) -> list[str]:
    """Partial directories, lock files and temporary files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir()
                  if ".partial-" in p.name or p.name.endswith((".lock", ".tmp"))
                  or ".old-" in p.name)


ALLOC = ["allocate", "--hw", VITA, "--calib", "8", "--batch-size", "8", "--quiet"]


# -- 1. data loss: one writer per run directory ----------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_run_being_written_is_never_taken_over(tmp_path, capsys, monkeypatch, overwrite):
    out = tmp_path / "run"
    import models.registry

    def must_not_build(*a, **k):
        raise AssertionError("the second run computed before checking its --out")

    monkeypatch.setattr(models.registry, "build_model", must_not_build)
    with output_lock(out, "run directory"):  # another process writing this run
        rc, _, err = cli(capsys, *ALLOC, "--out", out, *(["--overwrite"] if overwrite else []))
    assert rc == 2 and one_line_error(err, "allocate")
    assert f"pid {os.getpid()}) is writing this run directory" in err
    assert not out.exists() and leftovers(tmp_path) == []


def _wait_for(pred, timeout=120.0, proc=None):
    t0 = time.time()
    while not pred():
        if proc is not None and proc.poll() is not None:
            return False
        if time.time() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


def _spawn(argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "lsp_codesign.cli", *map(str, argv)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.torch
@pytest.mark.slow
def test_two_processes_one_out(tmp_path):
    """The issue's case: a second allocate on the same --out while the first runs."""
    out = tmp_path / "run"
    first = _spawn([*ALLOC[:3], "--calib", "256", "--batch-size", "32", "--quiet", "--out",
                    out])
    assert _wait_for(lambda: (tmp_path / ".run.lock").exists(), proc=first)
    second = _spawn([*ALLOC, "--out", out])
    _, err2 = second.communicate(timeout=300)
    _, err1 = first.communicate(timeout=600)
    assert first.returncode == 0, err1
    assert second.returncode == 2 and one_line_error(err2, "allocate"), err2
    assert "is writing this run directory" in err2 or "already exists" in err2
    doc = json.loads((out / "allocation.json").read_text())
    assert doc["calib"] == 256  # the first run's directory, whole
    assert leftovers(tmp_path) == []


@pytest.mark.torch
@pytest.mark.slow
def test_sigterm_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    proc = _spawn([*ALLOC[:3], "--calib", "512", "--batch-size", "32", "--quiet", "--out", out])
    assert _wait_for(lambda: any(".partial-" in p.name for p in tmp_path.iterdir()), proc=proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().endswith("lsp-codesign allocate: terminated (SIGTERM)")
    assert "Traceback" not in err
    assert not out.exists() and leftovers(tmp_path) == []


# -- 7. half-written output: --out checked before the computation ---------------------------


@pytest.mark.torch
@pytest.mark.parametrize("case", ["file", "file_overwrite", "under_file", "not_a_run"])
def test_a_bad_out_fails_before_the_computation(tmp_path, capsys, monkeypatch, case):
    import models.registry

    monkeypatch.setattr(models.registry, "build_model",
                        lambda *a, **k: pytest.fail("computed before checking --out"))
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me too")
    out, extra, message = {
        "file": (afile, [], "exists and is not a directory"),
        "file_overwrite": (afile, ["--overwrite"], "exists and is not a directory"),
        "under_file": (afile / "run", [], "is a file, not a directory"),
        "not_a_run": (mine, ["--overwrite"], "is not a run directory written by lsp-codesign"),
    }[case]
    rc, _, err = cli(capsys, *ALLOC, "--out", out, *extra)
    assert rc == 2 and one_line_error(err, "allocate") and message in err, err
    assert afile.read_text() == "keep me" and (mine / "notes.txt").read_text() == "keep me too"
    assert leftovers(tmp_path) == []


def test_report_out_naming_a_file_is_one_line_before_any_output(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    rc, out, err = cli(capsys, "report", "--hw", VITA, "--masks",
                       _masks_file(tmp_path), "--out", afile)
    assert rc == 2 and out == "" and one_line_error(err, "report")
    assert "--out" in err and "exists and is not a directory" in err


def _masks_file(tmp_path, ms=None):
    p = tmp_path / "m.safetensors"
    save_masks(p, ms or toy_masks())
    return p


def test_a_run_directory_has_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        rd = write_test_run(tmp_path / "run", toy_masks())
    finally:
        os.umask(old)
    assert rd.stat().st_mode & 0o777 == 0o755
    for f in rd.iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f.name
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_a_run_whole(tmp_path):
    rd = write_test_run(tmp_path / "run", toy_masks(), seed=1)
    (rd / "verify.json").write_text("{}")  # a result of the old run
    write_test_run(rd, toy_masks(), seed=2, overwrite=True)
    assert json.loads((rd / "allocation.json").read_text())["seed"] == 2
    assert not (rd / "verify.json").exists() and leftovers(tmp_path) == []


# -- 6, 9, 10. one line, not a traceback ------------------------------------------------------


def test_inputs_that_used_to_give_a_traceback(tmp_path, capsys):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)))
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    ms = toy_masks()
    gemms = dict(ms.gemms)
    zero_m = _masks_file(tmp_path, ms)
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(zero_m), framework="numpy") as f:
        meta = dict(f.metadata())
    gemms["head"] = (0, 64, 10)
    meta["gemms"] = json.dumps({k: list(v) for k, v in gemms.items()})
    save_file(load_file(str(zero_m)), str(zero_m), metadata=meta)
    cases = [
        (["estimate", "--hw", binary, "--gemm", "M=1,N=16,K=16"], "binary data"),
        (["estimate", "--hw", VITA, "--gemm", "M=1,N=16,K=16", "--mask", empty],
         "not a readable .npy array"),
        (["report", "--hw", VITA, "--masks", zero_m], "the GEMM (M, N, K) must be three"),
        (["estimate", "--hw", VITA, "--gemm", "M=1,N=64,K=16", "--mask", zero_m, "--layer",
          "head"], "the GEMM (M, N, K) must be three"),
    ]
    for argv, message in cases:
        rc, out, err = cli(capsys, *argv)
        assert rc == 2 and one_line_error(err, argv[0]) and message in err, (argv, err)


@pytest.mark.torch
def test_a_non_vit_model_is_one_line(tmp_path, capsys):
    rc, _, err = cli(capsys, *ALLOC, "--model", "resnet18", "--out", tmp_path / "r")
    assert rc == 2 and one_line_error(err, "allocate")
    assert "'resnet18' is a timm model but not a Vision Transformer" in err


def test_a_non_integer_seed_in_allocation_json_is_one_line(tmp_path, capsys):
    rd = write_test_run(tmp_path / "run", toy_masks())
    doc = json.loads((rd / "allocation.json").read_text())
    doc["seed"] = "abc"
    (rd / "allocation.json").write_text(json.dumps(doc))
    for argv in (["report", rd], ["verify", rd, "--sim", "iss"]):
        rc, _, err = cli(capsys, *argv)
        assert rc == 2 and one_line_error(err, argv[0])
        assert "'seed' must be an integer >= 0, got 'abc'" in err


@pytest.mark.torch
def test_a_truncated_jpeg_is_one_line(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "digits"
    for c in range(10):
        (data / str(c)).mkdir(parents=True)
        img = Image.fromarray(np.full((28, 28), 25 * c, np.uint8))
        img.save(data / str(c) / "a.jpg", quality=95)
    bad = data / "3" / "a.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    rc, _, err = cli(capsys, *ALLOC[:3], "--calib", "10", "--quiet", "--data", data, "--out",
                     tmp_path / "run")
    assert rc == 2 and one_line_error(err, "allocate"), err
    assert "a.jpg: cannot read this image" in err and leftovers(tmp_path) == []
    from lsp_codesign.masks_io import load_masks

    good = tmp_path / "good"
    assert main([*ALLOC[:3], "--calib", "8", "--quiet", "--out", str(good)]) == 0
    capsys.readouterr()
    assert load_masks(good / "masks.safetensors").model == "vit-mnist"
    for command in ("finetune", "evaluate"):
        rc, _, err = cli(capsys, command, good, "--data", data, "--no-progress")
        assert rc == 2 and one_line_error(err, command), err
        assert "a.jpg: cannot read this image" in err


def test_estimate_uses_a_masks_file_only_with_its_own_block(tmp_path, capsys):
    path = _masks_file(tmp_path, toy_masks(block=(16, 16)))
    rc, _, err = cli(capsys, "estimate", "--hw", VITA, "--block", "32x32", "--gemm",
                     "M=17,N=64,K=192", "--mask", path, "--layer", "blocks.0.attn.qkv")
    assert rc == 2 and one_line_error(err, "estimate")
    assert "was made for block 16x16, but the config's block is 32x32; pass --block 16x16" in err
    rc, _, err = cli(capsys, "estimate", "--hw", VITA, "--gemm", "M=17,N=64,K=256", "--mask",
                     path, "--layer", "blocks.0.attn.qkv")
    assert rc == 2 and "layer blocks.0.attn.qkv of" in err and "has N=64, K=192" in err
    rc, out, _ = cli(capsys, "estimate", "--hw", VITA, "--gemm", "M=17,N=64,K=192", "--mask",
                     path, "--layer", "blocks.0.attn.qkv")
    assert rc == 0 and "kept blocks" in out


def test_library_warnings_are_not_shown(capsys, monkeypatch):
    import lsp_codesign.commands.estimate as est

    real = est.estimate_layer

    def noisy(*a, **k):
        warnings.warn("a library talks", UserWarning)
        warnings.warn("and is deprecated", DeprecationWarning)
        return real(*a, **k)

    monkeypatch.setattr(est, "estimate_layer", noisy)
    rc, _, err = cli(capsys, "estimate", "--hw", VITA, "--gemm", "M=1,N=16,K=16")
    assert rc == 0 and err == ""


def test_unexpected_errors_are_one_line_and_say_they_are_bugs(capsys, monkeypatch):
    import lsp_codesign.commands.estimate as est

    monkeypatch.setattr(est, "estimate_layer", lambda *a, **k: {}["x"])
    rc, _, err = cli(capsys, "estimate", "--hw", VITA, "--gemm", "M=1,N=16,K=16")
    assert rc == 1 and err.count("\n") == 1
    assert "internal error (a bug in lsp-codesign" in err and "KeyError" in err
    monkeypatch.setenv("LSP_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["estimate", "--hw", VITA, "--gemm", "M=1,N=16,K=16"])


def test_os_errors_name_the_file(tmp_path, capsys, monkeypatch):
    import lsp_codesign.commands.estimate as est

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.npy"))

    monkeypatch.setattr(est, "estimate_layer", denied)
    rc, _, err = cli(capsys, "estimate", "--hw", VITA, "--gemm", "M=1,N=16,K=16")
    assert rc == 2 and one_line_error(err, "estimate")
    assert f"{tmp_path / 'x.npy'}: Permission denied" in err


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["estimate", "--hw", VITA, "--gemm"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("fmt, message", [
    ("lsp-codesign-allocation/1", "is older than this lsp-codesign reads"),
    ("lsp-codesign-allocation/3", "was written by a newer lsp-codesign"),
    (None, "is not a run directory format this lsp-codesign reads"),
])
def test_other_run_directory_formats_are_named(tmp_path, capsys, fmt, message):
    rd = write_test_run(tmp_path / "run", toy_masks())
    doc = json.loads((rd / "allocation.json").read_text())
    if fmt is None:
        del doc["format"]
    else:
        doc["format"] = fmt
    (rd / "allocation.json").write_text(json.dumps(doc))
    rc, _, err = cli(capsys, "report", rd)
    assert rc == 2 and one_line_error(err, "report") and message in err
