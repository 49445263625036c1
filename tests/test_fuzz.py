"""Fuzzing the command line with hypothesis: random and mutated configs, masks files, run
directories and arguments, run in-process through ``lsp_codesign.cli.main``.

Invariants on every input: the exit status is 0, 1 or 2; a failure is one line on stderr that
starts ``lsp-codesign COMMAND: error:`` (never a traceback, never an "internal error"); no
partial directory, lock or temporary file is left; and an edited run directory is never
accepted as if it were the one ``allocate`` wrote.

Example counts: ``LSP_FUZZ_EXAMPLES`` scales them (default 1). Under ``CI=true`` the examples are
derandomized, so CI is reproducible; locally each run explores new inputs. The ``slow`` tests
run longer profiles, still bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsp_codesign.cli import main
from lsp_codesign.masks_io import MaskSet
from tests.conftest import CONFIGS, write_test_run

VITA = CONFIGS / "vita.yaml"
SCALE = float(os.environ.get("LSP_FUZZ_EXAMPLES", "1"))


def fuzz_settings(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None,
                    derandomize=os.environ.get("CI", "").lower() == "true",
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large],
                    database=None)


def run_cli(capsys, argv) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc in (0, 1, 2), (argv, rc, err)
    assert "Traceback" not in err and "internal error" not in err, err
    if rc != 0:
        assert err.count("\n") == 1 and err.startswith("lsp-codesign"), err
    return rc, out, err


def no_leftovers(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*")
            if ".partial-" in p.name or p.name.endswith((".lock", ".tmp")) or ".old-" in p.name]
    assert left == []


def fresh_dir(base: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=base))


# -- values that break things -----------------------------------------------------------------

scalars = st.one_of(
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2, 3, 7, 16, 1e3, 1e20, 0.5, "16x16", "0x0", "1e3", "", " ",
                     "nan", "block_sparse", "systolic", "os", True, None, "a" * 300]),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8)
YAML_BITS = [b"&a ", b"*a", b"!!python/object:os.system ", b"[", b"]", b"{", b"}", b": ",
             b"\n- ", b"\t", b"\x00", b"\xff", b"'", b'"', b"#", b"<<: ", b"? ", b"|\n",
             b".nan", b".inf", b"1e999", b"-", b"\n  ", b"---\n", b"...\n"]


@st.composite
def mutated_bytes(draw, base: bytes):
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        if op == "insert":
            data[pos:pos] = draw(st.one_of(st.sampled_from(YAML_BITS), st.binary(max_size=6)))
        elif op == "delete":
            del data[pos: pos + draw(st.integers(1, 40))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@st.composite
def mutated_config(draw):
    raw = yaml.safe_load(VITA.read_text())
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([None, "memories", "energy"]))
        d = raw if section is None or not isinstance(raw.get(section), dict) else raw[section]
        keys = sorted(d) + ["unknown_key"]
        key = draw(st.sampled_from(keys))
        if draw(st.booleans()) and key in d:
            del d[key]
        else:
            d[key] = draw(values)
    return raw


# -- configs ----------------------------------------------------------------------------------


def _estimate_config(capsys, path: Path) -> None:
    rc, out, err = run_cli(capsys, ["estimate", "--hw", path, "--gemm", "M=17,N=64,K=64",
                                    "--json"])
    assert rc in (0, 2)
    if rc == 0:  # what was accepted is a sound config
        from lsp_codesign.config import HwConfig, load_config

        cfg = load_config(path)
        assert np.isfinite([cfg.clock_mhz, cfg.mac_pj, cfg.static_mw]).all()
        assert HwConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
        assert json.loads(out)["estimate"]["cycles"] > 0


@fuzz_settings(60)
@given(raw=mutated_config())
def test_fuzz_config_values(tmp_path, capsys, raw):
    path = fresh_dir(tmp_path) / "c.yaml"
    try:
        text = yaml.safe_dump(raw, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return
    path.write_text(text)
    _estimate_config(capsys, path)


@fuzz_settings(60)
@given(data=mutated_bytes(VITA.read_bytes()))
def test_fuzz_config_bytes(tmp_path, capsys, data):
    path = fresh_dir(tmp_path) / "c.yaml"
    path.write_bytes(data)
    _estimate_config(capsys, path)


@pytest.mark.slow
@fuzz_settings(400)
@given(data=st.one_of(mutated_bytes(VITA.read_bytes()), mutated_bytes(
    (CONFIGS / "tpu_v3.yaml").read_bytes())))
def test_fuzz_config_bytes_long(tmp_path, capsys, data):
    path = fresh_dir(tmp_path) / "c.yaml"
    path.write_bytes(data)
    _estimate_config(capsys, path)


# -- masks files ------------------------------------------------------------------------------


def toy_masks() -> MaskSet:
    rng = np.random.default_rng(0)
    gemms = {"blocks.0.attn.qkv": (17, 64, 192), "blocks.0.mlp.fc1": (17, 64, 256),
             "head": (1, 64, 10)}
    masks = {n: rng.random((-(-k // 16), -(-nn // 16))) < 0.5 for n, (_m, nn, k) in gemms.items()}
    return MaskSet("toy", 16, 16, tuple(gemms), gemms, masks)


@st.composite
def mutated_masks_file(draw, folder: Path):
    from safetensors.numpy import save_file

    ms = toy_masks()
    meta = {"format": "lsp-codesign-masks/1", "block": ms.block_str, "model": ms.model,
            "gemms": json.dumps({n: list(ms.gemms[n]) for n in ms.order}),
            "order": json.dumps(list(ms.order))}
    tensors = {n: ms.masks[n].astype(np.uint8) for n in ms.order}
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["meta", "meta_json", "tensor", "drop"]))
        if what == "meta":
            meta[draw(st.sampled_from(sorted(meta)))] = draw(st.text(max_size=20))
        elif what == "meta_json":
            key = draw(st.sampled_from(["gemms", "order", "block"]))
            meta[key] = json.dumps(draw(values))
        elif what == "tensor":
            name = draw(st.sampled_from(list(ms.order) + ["extra"]))
            shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)))
            dtype = draw(st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]))
            tensors[name] = np.asarray(draw(st.integers(-3, 3)) *
                                       np.ones(shape)).astype(dtype)
        elif tensors:
            tensors.pop(draw(st.sampled_from(sorted(tensors))))
    path = folder / "m.safetensors"
    save_file(tensors, str(path), metadata=meta)
    if draw(st.booleans()):
        path.write_bytes(draw(mutated_bytes(path.read_bytes())))
    return path


@fuzz_settings(60)
@given(data=st.data())
def test_fuzz_masks_files(tmp_path, capsys, data):
    folder = fresh_dir(tmp_path)
    path = data.draw(mutated_masks_file(folder))
    rc, _, _ = run_cli(capsys, ["estimate", "--hw", VITA, "--gemm", "M=17,N=64,K=192",
                                "--mask", path, "--layer", "blocks.0.attn.qkv"])
    assert rc in (0, 2)
    rc, _, _ = run_cli(capsys, ["report", "--hw", VITA, "--masks", path, "--format", "json"])
    assert rc in (0, 2)
    no_leftovers(folder)


# -- run directories --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return write_test_run(tmp_path_factory.mktemp("base") / "run", toy_masks())


def _edit_json(draw, doc):
    """A random edit of a JSON document (a changed, added or removed key, at any depth)."""
    target = doc
    while isinstance(target, dict) and target and draw(st.booleans()):
        child = target[draw(st.sampled_from(sorted(target)))]
        if not isinstance(child, dict) or not child:
            break
        target = child
    keys = sorted(target) + ["new_key"]
    key = draw(st.sampled_from(keys))
    if key in target and draw(st.integers(0, 3)) == 0:
        del target[key]
    else:
        target[key] = draw(values)


@fuzz_settings(50)
@given(data=st.data())
def test_fuzz_allocation_json_edits_are_never_accepted(tmp_path, capsys, base_run, data):
    run = fresh_dir(tmp_path) / "run"
    shutil.copytree(base_run, run)
    original = json.loads((run / "allocation.json").read_text())
    doc = json.loads(json.dumps(original))
    _edit_json(data.draw, doc)
    (run / "allocation.json").write_text(json.dumps(doc, indent=data.draw(st.sampled_from(
        [None, 1, 2]))))
    rc, _, err = run_cli(capsys, ["report", run, "--format", "json"])
    if json.dumps(doc, sort_keys=True) != json.dumps(original, sort_keys=True):
        assert rc == 2, "an edited allocation.json was accepted"
    else:
        assert rc == 0, err
    no_leftovers(run.parent)


@fuzz_settings(40)
@given(data=st.data())
def test_fuzz_run_directory_bytes(tmp_path, capsys, base_run, data):
    run = fresh_dir(tmp_path) / "run"
    shutil.copytree(base_run, run)
    name = data.draw(st.sampled_from(["allocation.json", "hw.yaml", "masks.safetensors"]))
    before = (run / name).read_bytes()
    (run / name).write_bytes(data.draw(mutated_bytes(before)))
    for argv in (["report", run, "--format", "json"], ["verify", run, "--sim", "iss"]):
        rc, _, _ = run_cli(capsys, argv)
        assert rc in (0, 2)
    no_leftovers(run.parent)


# -- allocate's output paths and options: nothing half-written --------------------------------

out_names = st.sampled_from(["run", "a/b/run", "file", "file/run", "dir_with_notes", "empty",
                             "run with space", "r\u00e9n", ".hidden", "run/"])
options = st.fixed_dictionaries({
    "--flops": st.sampled_from(["0.5", "0", "1", "nan", "-1", "1e-9", "0.8"]),
    "--block": st.sampled_from(["16x16", "8x8", "7x7", "0x16", "16", "100000x1"]),
    "--calib": st.sampled_from(["4", "0", "-3"]),
})


@pytest.mark.torch
@pytest.mark.slow
@fuzz_settings(12)
@given(name=out_names, opts=options, overwrite=st.booleans())
def test_fuzz_allocate_outputs(tmp_path, capsys, name, opts, overwrite):
    folder = fresh_dir(tmp_path)
    (folder / "file").write_text("keep")
    (folder / "dir_with_notes").mkdir()
    (folder / "dir_with_notes" / "notes.txt").write_text("keep")
    (folder / "empty").mkdir()
    out = folder / name
    argv = ["allocate", "--hw", VITA, "--batch-size", "4", "--quiet", "--out", out,
            *[x for kv in opts.items() for x in kv], *(["--overwrite"] if overwrite else [])]
    rc, _, _ = run_cli(capsys, argv)
    assert rc in (0, 2)
    assert (folder / "file").read_text() == "keep"
    assert (folder / "dir_with_notes" / "notes.txt").read_text() == "keep"
    if rc == 0:
        from lsp_codesign.rundir import read_run

        assert read_run(out).masks.block_str == opts["--block"]
    no_leftovers(folder)
