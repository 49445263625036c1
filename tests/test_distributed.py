"""Calibration sharded over torch.distributed ranks (gloo on this machine's CPU).

``torchrun --nproc-per-node 2 -m lsp_codesign allocate`` must give the curves of the
single-process run to 1e-6 relative and identical masks, with only rank 0 writing; ranks
that would calibrate different image sets are refused. Every process runs with one thread
(as torchrun sets it), so that the comparison is of the sharding alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lsp_codesign.alloc.distributed import Group, Shard, env_world
from lsp_codesign.alloc.options import AllocError

from conftest import CONFIGS, ROOT

VITA = str(CONFIGS / "vita.yaml")
# fisher with 2 samples per image and the first-order term: seeds replayed across ranks,
# gradient sums gathered, labels from the data set
OPTS = ["--calib", "64", "--batch-size", "16", "--curvature", "fisher", "--fisher-samples", "2",
        "--first-order", "on", "--block", "16x16", "--flops", "0.5", "--quiet"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=_env(**env), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    r = _run([sys.executable, "-m", "lsp_codesign", "allocate", "--hw", VITA, *OPTS,
              "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _same_run(a: Path, b: Path) -> None:
    from lsp_codesign.masks_io import load_masks

    ca, cb = np.load(a / "curves.npz"), np.load(b / "curves.npz")
    assert sorted(ca.files) == sorted(cb.files)
    for k in ca.files:
        x, y = ca[k].astype(float), cb[k].astype(float)
        scale = max(float(np.abs(x).max()), 1e-300)
        assert float(np.abs(x - y).max()) <= 1e-6 * scale, k
    ma, mb = load_masks(a / "masks.safetensors"), load_masks(b / "masks.safetensors")
    assert ma.order == mb.order
    assert all(np.array_equal(ma.masks[n], mb.masks[n]) for n in ma.order)
    ja, jb = (json.loads((p / "allocation.json").read_text()) for p in (a, b))
    assert ja["calib"] == jb["calib"] == 64 and ja["labels"] == jb["labels"] == "dataset"
    assert ja["totals"] == jb["totals"]


def test_torchrun_two_gloo_ranks_match_one_process(single, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    out = tmp_path / "run"
    r = _run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "lsp_codesign",
              "allocate", "--hw", VITA, *OPTS, "--out", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    _same_run(single, out)
    assert json.loads((out / "allocation.json").read_text())["args"]["ranks"] == 2
    # rank 0 wrote the run; nothing else appeared beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_nproc_flag_launches_the_ranks_itself(single, tmp_path):
    out = tmp_path / "run"
    r = _run([sys.executable, "-m", "lsp_codesign", "allocate", "--hw", VITA, *OPTS,
              "--out", str(out), "--nproc", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    _same_run(single, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_ranks_with_different_calibration_sets_are_refused(tmp_path):
    """Two ranks started by hand, one with another --calib and --seed: both exit 2."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = tmp_path / "run"
    base = [sys.executable, "-m", "lsp_codesign", "allocate", "--hw", VITA, "--out", str(out),
            "--quiet", "--batch-size", "16"]
    procs = [subprocess.Popen(base + extra, env=_env(RANK=str(r), LOCAL_RANK=str(r),
                                                     WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                                     MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, extra in enumerate([["--calib", "64"], ["--calib", "48", "--seed", "1"]])]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    err0 = results[0][1].strip().splitlines()
    assert len(err0) == 1 and "different calibrations" in err0[0]
    assert "count: rank 0 64, rank 1 48" in err0[0] and "seed: rank 0 0, rank 1 1" in err0[0]
    assert results[1][1].strip() == ""  # rank 1 stays quiet: rank 0 reports
    assert list(tmp_path.iterdir()) == []


def test_bad_input_under_nproc_is_one_line_before_any_rank_starts(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    r = _run([sys.executable, "-m", "lsp_codesign", "allocate", "--hw", VITA, "--out", str(out),
              "--nproc", "2"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
    r = _run([sys.executable, "-m", "lsp_codesign", "allocate", "--hw", VITA, "--out",
              str(tmp_path / "x"), "--nproc", "2", "--calib", "16", "--batch-size", "16"])
    assert r.returncode == 2 and "fewer than the 2 ranks" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "x").exists()


def test_shards_are_contiguous_whole_micro_batches():
    for total, mb, world in [(64, 16, 2), (100, 16, 3), (17, 4, 5), (5, 1, 5), (1000, 7, 4)]:
        shards = [Shard.split(Group(rank=r, world=world), total, mb, {}) for r in range(world)]
        assert shards[0].first == 0
        for a, b in zip(shards, shards[1:]):
            assert a.first + a.count == b.first and a.first % mb == 0 and b.first % mb == 0
        assert sum(s.count for s in shards) == total and min(s.count for s in shards) >= 1
        assert shards[-1].preceding() == [mb] * (shards[-1].first // mb)
        sizes = [-(-s.count // mb) for s in shards]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(AllocError, match="fewer than the 3 ranks"):
        Shard.split(Group(rank=0, world=3), 32, 16, {})


def test_env_world(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert env_world() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert env_world() == (2, 4, 0)
    monkeypatch.setenv("RANK", "7")
    with pytest.raises(Exception, match="outside"):
        env_world()


def _rank_main(rank: int, port: int, queue) -> None:  # pragma: no cover - child process
    import torch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    group = Group.from_env()
    try:
        for curv, samples, fo in (("ggn", 3, "off"), ("empirical", 1, "on")):
            shard = Shard.split(group, 40, 8, {"set": "mnist"})
            c = _calibrate(curv, samples, fo, shard)
            if rank == 0:
                queue.put({n: (st.block_sums, st.grad_mean) for n, st in c.layers.items()})
            else:
                assert c is None
    finally:
        group.close()


def _calibrate(curv, samples, fo, shard=None):
    from lsp_codesign.allocator import CurvatureOptions, calibrate
    from models.data import calibration_loader
    from models.registry import create_model

    part = None if shard is None else (shard.first, shard.count)
    return calibrate(create_model("vit-mnist"),
                     calibration_loader("vit-mnist", 40, 0, 8, part=part), block_k=32,
                     block_n=32, options=CurvatureOptions.resolve(curv, samples=samples,
                                                                  first_order=fo),
                     micro_batch=8, seed=5, progress=False, model_name="vit-mnist",
                     shard=shard)


def test_sharded_block_sums_equal_one_process_for_ggn_and_empirical(one_torch_thread):
    """Library level: the gathered block sums are bit-identical (seed draws replayed)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=600) for _ in range(2)]
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    for (curv, samples, fo), sharded in zip((("ggn", 3, "off"), ("empirical", 1, "on")), got):
        ref = _calibrate(curv, samples, fo)
        for name, st in ref.layers.items():
            sums, grad = sharded[name]
            assert np.array_equal(sums, st.block_sums), (curv, name)
            if st.grad_mean is None:
                assert grad is None
            else:
                np.testing.assert_allclose(grad, st.grad_mean, rtol=1e-12, atol=1e-20)
