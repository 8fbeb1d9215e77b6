"""Tests for qpmlib.results: hashing, atomic writes, no overwrite, round trips."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from qpmlib import results
from qpmlib.profiles import TrainConfig
from qpmlib.results import (
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
