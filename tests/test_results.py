"""Tests for qpmlib.results: hashing, atomic writes, no overwrite, round trips."""

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from qpmlib import results
from qpmlib.config import TrainConfig
from qpmlib.files import IntegrityError
from qpmlib.results import (
    CHECKSUMS_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    PREDICTIONS_FILE,
    ResultData,
    ResultStore,
    canonical_json,
    config_hash,
    provenance,
)


@dataclass(frozen=True)
class _Cfg:
    a: int
    b: tuple = (1.5, 2)


def _data(acc=0.5):
    return ResultData(
        metrics={"accuracy": acc, "sid": float("nan")},
        provenance=provenance(seed=0, device="cpu", pretrained=False, seconds=1.0),
        tensors={MODEL_FILE: {"w": torch.arange(6.0).reshape(2, 3)},
                 PREDICTIONS_FILE: {"pred": np.array([2, 0, 1])}},
        json_files={"history.json": [{"epoch": 0}]},
    )


def test_canonical_json_and_hash():
    assert canonical_json({"b": (1, 2), "a": _Cfg(1)}) == '{"a":{"a":1,"b":[1.5,2]},"b":[1,2]}'
    assert config_hash({"x": 1, "y": 2}) == config_hash({"y": 2, "x": 1})
    assert config_hash(TrainConfig()) != config_hash(TrainConfig(ft_l1_fm=0.0))
    assert len(config_hash({})) == 16
    with pytest.raises(TypeError, match="cannot put Tensor"):
        config_hash({"w": torch.zeros(1)})


def test_hash_covers_format_version(monkeypatch):
    h = config_hash({"x": 1})
    monkeypatch.setattr(results, "FORMAT_VERSION", results.FORMAT_VERSION + 1)
    assert config_hash({"x": 1}) != h


def test_put_get_round_trip(tmp_path):
    store = ResultStore(tmp_path, "dense")
    cfg = {"profile": "smoke", "seed": 0}
    assert store.get(cfg) is None
    r = store.put(cfg, _data())
    assert r.path == tmp_path / "dense" / config_hash(cfg)
    again = store.get(cfg)
    assert again.metrics == {"accuracy": 0.5, "sid": None}  # NaN is stored as null
    assert again.config == cfg and again.provenance["seed"] == 0 and "torch" in again.provenance
    assert torch.equal(again.tensors(MODEL_FILE)["w"], torch.arange(6.0).reshape(2, 3))
    assert again.tensors(PREDICTIONS_FILE)["pred"].tolist() == [2, 0, 1]
    assert again.json("history.json") == [{"epoch": 0}]
    assert store.keys() == [r.key]
    with pytest.raises(FileNotFoundError, match="config.json"):
        again.tensors("missing.safetensors")


def test_finished_result_is_never_overwritten(tmp_path):
    store = ResultStore(tmp_path, "qpm")
    cfg = {"seed": 1}
    store.put(cfg, _data(acc=0.5))
    assert store.put(cfg, _data(acc=0.9)).metrics["accuracy"] == 0.5
    calls = []
    r = store.get_or_run(cfg, lambda: calls.append(1) or _data(acc=0.1))
    assert r.metrics["accuracy"] == 0.5 and calls == []
    r = store.get_or_run({"seed": 2}, lambda: calls.append(1) or _data(acc=0.1))
    assert r.metrics["accuracy"] == 0.1 and calls == [1]


def test_failed_write_leaves_nothing_and_work_dir_is_cleaned(tmp_path):
    store = ResultStore(tmp_path, "dense")
    cfg = {"seed": 3}
    work = store.work_dir(cfg)
    (work / "checkpoint.pt").write_text("x")
    bad = _data()
    bad.tensors["bad.safetensors"] = {"x": object()}
    with pytest.raises((TypeError, RuntimeError, ValueError)):
        store.put(cfg, bad)
    assert store.get(cfg) is None
    assert [p.name for p in (tmp_path / "dense").iterdir()] == [work.name]  # no temp folder left behind
    store.put(cfg, _data())
    assert not work.exists()
    assert json.loads((store.path(cfg) / CONFIG_FILE).read_text()) == cfg


@pytest.mark.parametrize("name", ["../x.safetensors", "config.json", "model.pt"])
def test_bad_file_names_are_rejected(tmp_path, name):
    data = _data()
    data.tensors[name] = {"w": torch.zeros(1)}
    with pytest.raises(ValueError, match="name|safetensors"):
        ResultStore(tmp_path, "dense").put({"a": 1}, data)
    with pytest.raises(ValueError, match="simple name"):
        ResultStore(tmp_path, "../dense")


# ---------------------------------------------------------------------------------------------- damaged entries
def _edit_same_size(path):
    text = path.read_text()
    edited = text.replace("0.5", "0.9")
    assert edited != text and len(edited) == len(text)
    st = path.stat()
    path.write_text(edited)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


DAMAGE = {
    "truncated metrics.json": (lambda p: (p / "metrics.json").write_text('{"accur'), "metrics.json: holds 7 bytes"),
    "edited metrics.json (same size, same mtime)": (lambda p: _edit_same_size(p / "metrics.json"),
                                                    "metrics.json: content changed since it was written"),
    "truncated safetensors": (lambda p: (p / MODEL_FILE).write_bytes((p / MODEL_FILE).read_bytes()[:20]),
                              "model.safetensors: holds 20 bytes"),
    "missing safetensors": (lambda p: (p / PREDICTIONS_FILE).unlink(), "predictions.safetensors: is missing"),
    "checksums.json is a list": (lambda p: (p / CHECKSUMS_FILE).write_text("[]"),
                                 "checksums.json: holds a JSON list, not an object"),
    "no checksums (older qpmlib)": (lambda p: (p / CHECKSUMS_FILE).unlink(), "checksums.json: is missing"),
    "config of another run": (lambda p: _rewrite_config(p, {"seed": 5}), "config.json: hashes to"),
}


def _rewrite_config(folder, config):
    """Replace config.json and re-record its checksum, as a hand edit that also fixed the checksums would."""
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    sums = json.loads((folder / CHECKSUMS_FILE).read_text())
    sums[CONFIG_FILE] = results.checksums(folder, [CONFIG_FILE])[CONFIG_FILE]
    (folder / CHECKSUMS_FILE).write_text(json.dumps(sums))


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_result_is_named_and_recomputed(tmp_path, caplog, case):
    store = ResultStore(tmp_path, "dense")
    cfg = {"seed": 0}
    first = store.put(cfg, _data(acc=0.5))
    damage, problem = DAMAGE[case]
    damage(first.path)
    with caplog.at_level(logging.WARNING, logger="qpmlib.results"):
        assert store.get(cfg) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(first.path) in lines[0] and problem in lines[0] and "recomputed" in lines[0]
    calls = []
    with caplog.at_level(logging.WARNING, logger="qpmlib.results"):
        again = store.get_or_run(cfg, lambda: calls.append(1) or _data(acc=0.5))
    assert len(caplog.records) == 1  # reported once, not again by each check of the recomputation
    assert calls == [1] and again.metrics["accuracy"] == 0.5 and again.path == first.path
    assert torch.equal(again.tensors(MODEL_FILE)["w"], torch.arange(6.0).reshape(2, 3))
    aside = [p for p in (tmp_path / "dense").iterdir() if p.name.startswith(".damaged-")]
    assert len(aside) == 1  # the damaged copy is kept aside, not deleted and never read
    assert store.keys() == [first.key]


def test_file_changed_after_opening_is_refused_with_its_path(tmp_path):
    store = ResultStore(tmp_path, "dense")
    r = store.put({"seed": 0}, _data())
    (r.path / MODEL_FILE).write_bytes((r.path / MODEL_FILE).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IntegrityError, match=re.escape(str(r.path / MODEL_FILE)) + ": content changed"):
        r.tensors(MODEL_FILE)
    (r.path / "history.json").write_text("[{}]   ")
    with pytest.raises(IntegrityError, match="history.json: holds"):
        r.json("history.json")
    (r.path / "extra.safetensors").write_bytes(b"x")  # not written by put: not part of the result
    with pytest.raises(FileNotFoundError, match="has no extra.safetensors"):
        r.tensors("extra.safetensors")


def test_put_flushes_every_file_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "rename", lambda a, b: events.append(("rename", str(b))) or real_rename(a, b))
    r = ResultStore(tmp_path, "dense").put({"seed": 0}, _data())
    rename = events.index(("rename", str(r.path)))
    synced = {Path(p).name for kind, p in events[:rename] if kind == "fsync"}
    assert set(r.files) | {CHECKSUMS_FILE} <= synced
    names = set(r.files) | {CHECKSUMS_FILE}
    written = [Path(p).name for kind, p in events[:rename] if kind == "fsync" and Path(p).name in names]
    assert written[-1] == CHECKSUMS_FILE  # the checksums are the last file written
    assert any(kind == "fsync" and p == str(tmp_path / "dense") for kind, p in events[rename:])  # the rename too


def test_lock_orders_keys_so_two_callers_never_deadlock(tmp_path):
    store = ResultStore(tmp_path, "qpm")
    with store.lock({"seed": 1}, {"seed": 0}, {"seed": 1}):
        locks = sorted(p.name for p in (tmp_path / "qpm" / ".locks").iterdir())
    assert locks == sorted(f"{config_hash({'seed': s})}.lock" for s in (0, 1))
    assert store.keys() == []
