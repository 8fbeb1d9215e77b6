"""Real processes racing for the same work, and processes killed mid-write (kill -9).

Each test starts fresh Python processes (``sys.executable -c ...``) on the repository's ``qpmlib``; a process that
computes something records it in a log file, so the tests can count how often the work was done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qpmlib.paths import REPO_ROOT

pytestmark = pytest.mark.slow

PRELUDE = """
import json, os, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch
torch.set_num_threads(1)
LOG = Path(os.environ["TEST_LOG"])
def note(**record):
    with open(LOG, "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), **record}) + "\\n")
"""

IMAGES = """
from PIL import Image
from qpmlib.backbones import build_backbone
root = Path(os.environ["TEST_DATA"])
rows = []
for i in range(10):
    path = root / f"img_{i}.png"
    if not path.exists():
        pixels = np.random.default_rng(i).integers(0, 256, (40 + 4 * i, 56, 3), dtype=np.uint8)
        tmp = root / f".img_{i}.{os.getpid()}.png"
        Image.fromarray(pixels).save(tmp)
        os.replace(tmp, path)
    rows.append({"image_id": i + 1, "path": path.name, "label": i % 2, "is_train": True})
backbone = build_backbone("tiny_vit_test", weights="random", image_size=28, seed=0)
"""

EXTRACT = PRELUDE + IMAGES + """
from qpmlib.embeddings import extract
forward = backbone.forward
def slow_forward(images):
    note(event="forward", n=len(images))
    time.sleep(float(os.environ.get("TEST_DELAY", "0")))
    return forward(images)
backbone.forward = slow_forward
store = extract(pd.DataFrame(rows), root, "train", backbone, image_size=28, dataset="synthbirds",
                out_dir=os.environ["TEST_OUT"], batch_size=2, num_workers=0, verbose=False)
note(event="done", sum=float(np.asarray(store.patch_tokens, np.float64).sum()))
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), QPMLIB_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1",
               TEST_LOG=str(tmp_path / "log.jsonl"), HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def _spawn(code: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _log(tmp_path: Path) -> list[dict]:
    path = tmp_path / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(predicate, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the child process never reached the expected point")
        time.sleep(0.05)


def _extract_env(tmp_path, delay="0.4"):
    (tmp_path / "data").mkdir(exist_ok=True)
    return _env(tmp_path, TEST_DATA=str(tmp_path / "data"), TEST_OUT=str(tmp_path / "cache"), TEST_DELAY=delay)


def _run_here(code: str, env: dict[str, str]) -> dict:
    """Run a setup snippet in this process (for a reference result) and return its names."""
    names: dict = {}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    threads = torch.get_num_threads()
    try:
        exec(textwrap.dedent(PRELUDE + code), names)  # noqa: S102 - the test's own code
    finally:
        torch.set_num_threads(threads)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return names


def _fresh_tokens(env: dict[str, str]) -> np.ndarray:
    """Patch tokens of the 10 test images from a forward pass in this process, rounded to fp16 as stored."""
    from qpmlib.data.images import load_image

    ns = _run_here(IMAGES, env)
    images = torch.stack([load_image(ns["root"] / r["path"], 28, dataset="synthbirds") for r in ns["rows"]])
    with torch.no_grad():
        return ns["backbone"](images)[1].numpy().astype(np.float16)


def test_two_processes_extracting_one_store_compute_it_once(tmp_path):
    env = _extract_env(tmp_path)
    procs = [_spawn(EXTRACT, env) for _ in range(2)]
    outputs = [_finish(p) for p in procs]
    log = _log(tmp_path)
    workers = {r["pid"] for r in log if r["event"] == "forward"}
    assert len(workers) == 1, outputs  # one process embedded, the other waited and then used its store
    assert sum(r["n"] for r in log if r["event"] == "forward") == 10  # every image embedded exactly once
    sums = [r["sum"] for r in log if r["event"] == "done"]
    assert len(sums) == 2 and sums[0] == sums[1]
    # the store both processes got equals a fresh forward pass, row for row (no zero rows from a clash)
    from qpmlib.embeddings import open_store

    shared = open_store(next((tmp_path / "cache").iterdir()))
    np.testing.assert_allclose(shared.patch_tokens, _fresh_tokens(env), rtol=1e-3, atol=4e-3)
    assert np.abs(np.asarray(shared.patch_tokens, np.float32)).sum(axis=(1, 2)).min() > 0


def test_extraction_killed_mid_write_resumes_to_the_same_store(tmp_path):
    env = _extract_env(tmp_path)
    proc = _spawn(EXTRACT, env)
    progress = lambda: list((tmp_path / "cache").glob("*/progress.json"))  # noqa: E731
    _wait_for(lambda: progress() and json.loads(progress()[0].read_text())["rows_done"] >= 4)
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up runs; the kernel drops the store's lock
    proc.wait()
    folder = progress()[0].parent
    assert not json.loads((folder / "manifest.json").read_text())["complete"]
    (tmp_path / "log.jsonl").unlink()
    _finish(_spawn(EXTRACT, env | {"TEST_DELAY": "0"}))
    redone = sum(r["n"] for r in _log(tmp_path) if r["event"] == "forward")
    assert 0 < redone <= 6  # resumed after the committed rows, not from the start
    from qpmlib.embeddings import open_store

    np.testing.assert_allclose(open_store(folder).patch_tokens, _fresh_tokens(env), rtol=1e-3, atol=4e-3)


TRAIN_SETUP = """
from qpmlib.config import TrainConfig
from qpmlib.model import DinoQPM
from qpmlib.train import TokenData, train_dense
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(3), 40)
centres = rng.normal(size=(3, 8)) * 3
data = TokenData((centres[labels][:, None] + rng.normal(size=(120, 4, 8))).astype(np.float32),
                 (centres[labels] + rng.normal(size=(120, 8))).astype(np.float32), labels)
cfg = TrainConfig(dense_epochs=6, dense_batch_size=8, dense_lr=1e-2, device="cpu")
torch.manual_seed(0)
model = DinoQPM(8, 3, n_layers=2, hidden_size=16, n_features=6)
"""

TRAIN = PRELUDE + TRAIN_SETUP + """
import qpmlib.train as train
real = train._save_checkpoint
def slow_save(*args, **kwargs):
    time.sleep(float(os.environ.get("TEST_DELAY", "0")))
    real(*args, **kwargs)
    note(event="epoch", epoch=args[2])
train._save_checkpoint = slow_save
run_dir = os.environ.get("TEST_RUN_DIR") or None
history = train_dense(model, data, cfg, seed=3, run_dir=run_dir, verbose=False)
torch.save(model.state_dict(), Path(os.environ["TEST_OUT"]) / f"{os.getpid()}.pt")
note(event="done", resumed_at=history.resumed_at, epochs=len(history.epochs))
"""


def _weights(path):
    return torch.load(path, weights_only=True)


def test_two_processes_training_one_stage_train_it_once(tmp_path):
    (tmp_path / "out").mkdir()
    env = _env(tmp_path, TEST_RUN_DIR=str(tmp_path / "run"), TEST_OUT=str(tmp_path / "out"), TEST_DELAY="0.3")
    procs = [_spawn(TRAIN, env) for _ in range(2)]
    for p in procs:
        _finish(p)
    log = _log(tmp_path)
    assert sorted(r["epoch"] for r in log if r["event"] == "epoch") == [1, 2, 3, 4, 5, 6]  # each epoch once
    done = sorted((r["resumed_at"], r["epochs"]) for r in log if r["event"] == "done")
    assert done == [(0, 6), (6, 6)]  # the second process waited, then found the finished stage
    a, b = (_weights(p) for p in sorted((tmp_path / "out").iterdir()))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_killed_mid_run_resumes_to_identical_weights(tmp_path):
    (tmp_path / "out").mkdir()
    env = _env(tmp_path, TEST_RUN_DIR=str(tmp_path / "run"), TEST_OUT=str(tmp_path / "out"), TEST_DELAY="0.3")
    proc = _spawn(TRAIN, env)
    _wait_for(lambda: any(r["event"] == "epoch" and r["epoch"] >= 2 for r in _log(tmp_path)))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _finish(_spawn(TRAIN, env | {"TEST_DELAY": "0"}))
    done = [r for r in _log(tmp_path) if r["event"] == "done"]
    assert len(done) == 1 and done[0]["resumed_at"] >= 2
    ns = _run_here(TRAIN_SETUP + "train_dense(model, data, cfg, seed=3, verbose=False)\n", env)  # uninterrupted
    resumed, single = _weights(tmp_path / "out" / f"{done[0]['pid']}.pt"), ns["model"].state_dict()
    assert all(torch.equal(resumed[k], single[k]) for k in single)


PUT = PRELUDE + """
import qpmlib.results as results
from qpmlib.results import ResultData, ResultStore
store = ResultStore(os.environ["TEST_OUT"], "dense")
real = results.save_file
def slow_save(tensors, filename):
    real(tensors, filename)
    note(event="tensor file written", name=Path(filename).name)
    time.sleep(float(os.environ.get("TEST_DELAY", "0")))
results.save_file = slow_save
def compute():
    note(event="compute")
    time.sleep(float(os.environ.get("TEST_DELAY", "0")))
    return ResultData({"accuracy": 0.75}, {"seed": 0}, tensors={"model.safetensors": {"w": torch.arange(6.0)},
                      "features.safetensors": {"f": torch.ones(3, 2)}})
result = store.get_or_run({"seed": 0, "kind": "test"}, compute)
note(event="done", accuracy=result.metrics["accuracy"], path=str(result.path))
"""


def test_two_processes_asking_for_one_result_compute_it_once(tmp_path):
    env = _env(tmp_path, TEST_OUT=str(tmp_path / "results"), TEST_DELAY="0.5")
    procs = [_spawn(PUT, env) for _ in range(2)]
    for p in procs:
        _finish(p)
    log = _log(tmp_path)
    assert sum(r["event"] == "compute" for r in log) == 1
    done = [r for r in log if r["event"] == "done"]
    assert len(done) == 2 and done[0]["path"] == done[1]["path"] and done[0]["accuracy"] == 0.75
    assert sorted(p.name for p in (tmp_path / "results" / "dense").iterdir() if not p.name.startswith(".")) == \
        [Path(done[0]["path"]).name]


def test_result_write_killed_midway_leaves_no_entry(tmp_path):
    env = _env(tmp_path, TEST_OUT=str(tmp_path / "results"), TEST_DELAY="5")
    proc = _spawn(PUT, env)
    _wait_for(lambda: any(r["event"] == "tensor file written" for r in _log(tmp_path)))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from qpmlib.results import ResultStore

    store = ResultStore(tmp_path / "results", "dense")
    assert store.get({"seed": 0, "kind": "test"}) is None and store.keys() == []
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "results" / "dense").iterdir())  # never read
    (tmp_path / "log.jsonl").unlink()
    _finish(_spawn(PUT, env | {"TEST_DELAY": "0"}))  # the lock of the killed process is gone: no wait
    assert [r["event"] for r in _log(tmp_path)].count("compute") == 1
    assert store.get({"seed": 0, "kind": "test"}).metrics == {"accuracy": 0.75}


PIPELINE = PRELUDE + """
import qpmlib.runs.dino_qpm as pipeline
for name in ("train_dense", "train_finetune"):
    real = getattr(pipeline, name)
    def counted(*args, _real=real, _name=name, **kwargs):
        note(event=_name)
        return _real(*args, **kwargs)
    setattr(pipeline, name, counted)
run = pipeline.run_dino_qpm("smoke", seed=0, overrides={"qp.solver": "open", "qp.time_limit": 2.0}, verbose=False)
note(event="done", metrics=run.metrics, paths=[str(run.stages["dense"].path), str(run.stages["qpm"].path)])
"""


def test_two_processes_running_one_pipeline_config_train_it_once(tmp_path):
    env = _env(tmp_path, QPMLIB_DATA=os.environ.get("QPMLIB_DATA", str(tmp_path / "data")))
    procs = [_spawn(PIPELINE, env) for _ in range(2)]
    for p in procs:
        _finish(p, timeout=400)
    log = _log(tmp_path)
    assert [r["event"] for r in log].count("train_dense") == 1
    assert [r["event"] for r in log].count("train_finetune") == 1
    done = [r for r in log if r["event"] == "done"]
    assert len(done) == 2 and done[0]["metrics"] == done[1]["metrics"] and done[0]["paths"] == done[1]["paths"]
