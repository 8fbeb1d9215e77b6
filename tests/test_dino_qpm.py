"""Tests for qpmlib.runs.dino_qpm: stage hashing, and the whole smoke pipeline end to end."""


import numpy as np
import pytest
import torch

from qpmlib.config import SMOKE, apply_overrides
from qpmlib.results import config_hash
from qpmlib.runs import dino_qpm as pipeline
from qpmlib.runs.dino_qpm import stage_configs


@pytest.fixture
def one_thread():
    """Tiny tensors: extra threads only contend on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _fake_store(weights_id="w0", root="/a"):
    return {"root": root, "weights_id": weights_id, "pretrained": False, "images_sha256": "x"}


def test_stage_hashes_let_sweeps_reuse_earlier_stages():
    s = _fake_store()
    base = stage_configs(SMOKE, 0, s, s)
    ft = stage_configs(apply_overrides(SMOKE, {"train.ft_l1_fm": 0.0}), 0, s, s)
    qp = stage_configs(apply_overrides(SMOKE, {"qp.n_selected": 6}), 0, s, s)
    assert config_hash(ft["dense"]) == config_hash(base["dense"]) and config_hash(ft["qp"]) == config_hash(base["qp"])
    assert config_hash(ft["qpm"]) != config_hash(base["qpm"])
    assert config_hash(qp["dense"]) == config_hash(base["dense"]) and config_hash(qp["qp"]) != config_hash(base["qp"])
    # other seeds and other backbone weights are other runs; the machine's data path is not part of the identity
    assert config_hash(stage_configs(SMOKE, 1, s, s)["dense"]) != config_hash(base["dense"])
    other = _fake_store(weights_id="w1")
    assert config_hash(stage_configs(SMOKE, 0, other, other)["dense"]) != config_hash(base["dense"])
    moved = _fake_store(root="/b")
    assert config_hash(stage_configs(SMOKE, 0, moved, moved)["dense"]) == config_hash(base["dense"])
    assert base["qpm"]["standardise"] is True and base["dense"]["model"]["last_layer_bn_relu"] is True


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path, monkeypatch, one_thread):
    from qpmlib.embeddings import get_store
    from qpmlib.train import TokenData

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    overrides = {"qp.solver": "open", "qp.time_limit": 2.0}
    run = pipeline.run_dino_qpm("smoke", seed=0, overrides=overrides, verbose=False)
    m = run.stage_metrics()
    assert run.method == "dino_qpm" and list(run.stages) == ["dense", "qp", "qpm"] and run.metrics == m["dino_qpm"]
    for method in ("dense", "dino_qpm"):
        assert 0.0 <= m[method]["accuracy"] <= 1.0 and 0.0 <= m[method]["plausibility"] <= 1.0
        assert 0.0 <= m[method]["part_alignment"] <= 1.0 and m[method]["seconds_per_epoch"] > 0
        assert 0.0 <= m[method]["part_peak_alignment"] <= 1.0
    assert (m["dense"]["n_features"], m["dino_qpm"]["n_features"], m["dino_qpm"]["n_per_class"]) == (24, 8, 2.0)
    assert m["dino_qpm"]["sid_at_5"] is None and m["dense"]["sid_at_5"] is not None  # 2 features per class
    assert run.assignment.shape == (6, 8) and (run.assignment.sum(axis=1) == 2).all()
    assert len(np.unique(run.assignment, axis=0)) == 6  # no two classes share a feature set
    # the stored models reproduce the stored predictions without training
    loaded = pipeline.load_run("smoke", seed=0, overrides=overrides)
    assert loaded.stage_metrics() == m
    test = TokenData.from_store(get_store("smoke", "test", verbose=False))
    preds = loaded.predictions()
    with torch.no_grad():
        x = test.batch(np.arange(len(test)))
        assert np.array_equal(loaded.model()(x).logits.argmax(1).numpy(), preds["pred"].to_numpy())
        assert np.array_equal(loaded.dense_model()(x).logits.argmax(1).numpy(), preds["dense_pred"].to_numpy())
    assert np.array_equal(np.sort(loaded.sparse_head()["selected"]), run.selected)
    assert list(loaded.history()["epoch"]) == [0, 1, 2] and list(loaded.history("dense")["epoch"]) == [0, 1, 2, 3]
    # a fine-tune-only change reuses the dense model and the QP selection
    ft = pipeline.run_dino_qpm("smoke", seed=0, overrides=overrides | {"train.ft_l1_fm": 0.0}, verbose=False)
    assert [ft.stages[k].path == run.stages[k].path for k in ("dense", "qp", "qpm")] == [True, True, False]
    with pytest.raises(FileNotFoundError, match="run_dino_qpm"):
        pipeline.load_run("smoke", seed=1, overrides=overrides)
    leftovers = [p.name for p in (tmp_path / "results" / "smoke" / "qpm").iterdir()
                 if p.name.startswith((".tmp-", ".work-"))]
    assert not leftovers


@pytest.mark.slow
def test_seeds_trained_together_are_stored_as_single_seed_runs(tmp_path, monkeypatch, one_thread):
    from qpmlib import train

    overrides = {"qp.solver": "open", "qp.time_limit": 2.0}
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "alone"))
    alone = pipeline.run_seeds("smoke", [1, 2], overrides=overrides, stack=False, verbose=False)
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "together"))
    calls = []
    for name in ("train_dense", "train_finetune"):
        real = getattr(train, name)
        monkeypatch.setattr(pipeline, name, lambda m, *a, _real=real, **k: calls.append(k["seed"]) or _real(m, *a, **k))
    first = pipeline.run_dino_qpm("smoke", seed=2, overrides=overrides, verbose=False)
    assert calls == [2, 2]
    calls.clear()
    together = pipeline.run_seeds("smoke", [1, 2, 3], overrides=overrides, stack=True, verbose=False)
    assert calls == [[1, 3], [1, 3]]  # seed 2 was stored: only the missing seeds train, in one pass each stage
    assert together[1].stages["qpm"].path == first.stages["qpm"].path and [r.seed for r in together] == [1, 2, 3]
    assert together[0].stages["dense"].json("provenance.json")["stacked_seeds"] == [1, 3]
    assert together[0].history("dense").shape[0] == 4 and together[2].history("qpm").shape[0] == 3
    for a, b in zip(alone, together[:2]):  # same hashes, and each seed's own model
        assert all(a.stages[k].path.name == b.stages[k].path.name for k in ("dense", "qpm"))
        wa, wb = a.dense_model().state_dict(), b.dense_model().state_dict()
        assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa if k.endswith("weight"))
    assert not torch.allclose(together[0].dense_model().head.weight, together[2].dense_model().head.weight)
    calls.clear()
    assert [r.stages["qpm"].path for r in pipeline.run_seeds("smoke", [3, 1], overrides=overrides, verbose=False)] \
        == [together[2].stages["qpm"].path, together[0].stages["qpm"].path] and calls == []
    with pytest.raises(ValueError, match="distinct"):
        pipeline.run_seeds("smoke", [1, 1], overrides=overrides, verbose=False)
