"""Where sweep (and verify) tasks run: a process pool, Ray, and two sweeps on one SWEEP_DIR.

The Ray tests start a local Ray instance with 2 CPUs (a few seconds) and stop it; they run
in CI (Ray is one of the project's pinned packages), never skip.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lsp_codesign.cli import main

from conftest import CONFIGS, ROOT

VITA = str(CONFIGS / "vita.yaml")
GRID = ["--blocks", "16x16,32x32", "--flops", "0.5,0.7", "--methods", "lsp,uniform",
        "--calib", "32", "--batch-size", "16", "--evaluate", "--test-images", "100",
        "--quiet"]
BIGGER = GRID[:3] + ["0.3,0.5,0.7"] + GRID[4:]  # one more target

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sweep(out: Path, *extra: str) -> int:
    return main(["sweep", "--hw", VITA, "--out", str(out), *GRID, *extra])


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "sw"
    assert _sweep(out) == 0
    return out


def test_process_pool_gives_the_serial_table(serial, tmp_path):
    out = tmp_path / "sw"
    assert _sweep(out, "--workers", "2") == 0
    assert (out / "sweep.csv").read_text() == (serial / "sweep.csv").read_text()
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["run"]["computed"]["calibration"] == 2 and doc["run"]["workers"] == 2


def test_ray_with_two_cpus_gives_the_serial_table(serial, tmp_path):
    out = tmp_path / "sw"
    assert _sweep(out, "--backend", "ray", "--workers", "2") == 0
    assert (out / "sweep.csv").read_text() == (serial / "sweep.csv").read_text()
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["run"]["backend"] == "ray" and doc["run"]["computed"]["point"] == 8
    import ray

    assert not ray.is_initialized()  # the local instance stopped with the command


def test_verify_layers_as_ray_tasks(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["allocate", "--hw", VITA, "--calib", "32", "--block", "32x32", "--out",
                 str(run), "--quiet"]) == 0
    docs = []
    for extra in ([], ["--backend", "ray", "--workers", "2"]):
        assert main(["verify", str(run), "--sim", "iss", *extra]) == 0
        docs.append(json.loads((run / "verify.json").read_text()))
    strip = [[{k: v for k, v in lc.items() if k != "wall_s"} for lc in d["layers"]]
             for d in docs]
    assert strip[0] == strip[1]
    assert docs[1]["totals"]["ok"] and len(docs[1]["layers"]) == 17
    assert "bit-exact and cycle-exact" in capsys.readouterr().out


def test_unreachable_address_fails_at_once_naming_it(tmp_path, capsys):
    out = tmp_path / "sw"
    t0 = time.monotonic()
    assert main(["sweep", "--hw", VITA, "--out", str(out), "--backend", "ray", "--address",
                 "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--address 127.0.0.1:1" in err and "cannot reach" in err
    assert time.monotonic() - t0 < 30 and not out.exists()


def test_an_address_that_is_not_ray_fails_within_the_bound(tmp_path, capsys, monkeypatch):
    """Something listens there, but it is no Ray cluster: bounded by the trial connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        conns = []
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass
        for c in conns:
            c.close()
    th = threading.Thread(target=accept, daemon=True)
    th.start()
    monkeypatch.setenv("LSP_RAY_CONNECT_TIMEOUT_S", "8")
    addr = f"127.0.0.1:{srv.getsockname()[1]}"
    out = tmp_path / "sw"
    t0 = time.monotonic()
    try:
        rc = main(["sweep", "--hw", VITA, "--out", str(out), "--backend", "ray", "--address",
                   addr])
    finally:
        stop.set()
        th.join()
        srv.close()
    err = capsys.readouterr().err
    assert rc == 2 and f"--address {addr}" in err and err.count("\n") == 1, err
    assert time.monotonic() - t0 < 8 + 20 and not out.exists()


def test_two_sweeps_on_one_directory_do_not_corrupt_it(serial, tmp_path):
    out = tmp_path / "sw"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lsp_codesign", "sweep", "--hw", VITA, "--out", str(out)]
    # the same grid twice, and one of them larger: both finish, each writes a whole table
    procs = [subprocess.Popen(cmd + GRID, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True),
             subprocess.Popen(cmd + BIGGER, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-500:] for r in results]
    doc = json.loads((out / "sweep.json").read_text())
    assert len(doc["points"]) in (8, 12)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".partial" in p.name]
    # every point of both grids is in the cache now, and equals the serial sweep's
    assert main(["sweep", "--hw", VITA, "--out", str(out), *GRID]) == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["run"]["computed"]["point"] == 0
    assert (out / "sweep.csv").read_text() == (serial / "sweep.csv").read_text()
    assert main(["sweep", "--hw", VITA, "--out", str(out), *BIGGER]) == 0
    assert json.loads((out / "sweep.json").read_text())["run"]["computed"]["point"] == 0


def test_a_worker_with_other_weights_or_code_is_refused():
    from dataclasses import replace

    from lsp_codesign.commands import _sweep_tasks as tasks
    from lsp_codesign.fingerprint import weights_digest
    from lsp_codesign.sweep import SweepError
    from models.data import calibration_set_id
    from models.registry import create_model

    good = tasks.Settings(model="vit-mnist", source="registry", checkpoint=None,
                          weights=weights_digest(create_model("vit-mnist")), calib=8, seed=0,
                          data=None, batch_size=8,
                          calib_set=calibration_set_id("vit-mnist", "registry", 8, 0),
                          exclude=(), options={"curvature": "empirical", "fisher_samples": 1,
                                               "first_order": False, "score": "delta"},
                          kappa=1e-7, smooth=0.01)
    assert tasks._dense(good) is not None
    tasks._MODELS.clear()
    with pytest.raises(SweepError, match="every node needs the same checkpoint"):
        tasks._dense(replace(good, weights="0" * 20))
    with pytest.raises(SweepError, match="install the same version on every node"):
        tasks.point_task(replace(good, code="other"), None, {}, 0.5, "lsp")


def test_ray_missing_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["sweep", "--hw", VITA, "--out", str(tmp_path / "sw"), "--backend",
                 "ray"]) == 2
    assert "Ray is not installed" in capsys.readouterr().err
