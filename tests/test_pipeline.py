"""Tests for qpmlib.pipeline: overrides, validation, stage hashing, and the whole smoke pipeline end to end."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qpmlib.pipeline import QPMRun, _configs, apply_overrides, check_profile, summarise
from qpmlib.profiles import SMOKE
from qpmlib.results import ResultData, ResultStore, config_hash


@pytest.fixture
def one_thread():
    """Tiny tensors: extra threads only contend on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_overrides_replace_fields_and_coerce_numbers():
    prof = apply_overrides("smoke", {"train.ft_l1_fm": 0, "model.n_layers": 1, "qp.n_selected": 6})
    assert prof.train.ft_l1_fm == 0.0 and isinstance(prof.train.ft_l1_fm, float)
    assert prof.model.n_layers == 1 and prof.qp.n_selected == 6 and prof.name == "smoke"
    assert apply_overrides(SMOKE, None) == SMOKE


@pytest.mark.parametrize(
    "key, value, match",
    [("train.l1", 1.0, "valid fields of train: dense_epochs"), ("optim.lr", 1.0, "section in data"),
     ("model.n_layers", 2.5, "expects int"), ("model.pooling", 3, "expects str")],
)
def test_bad_overrides_say_what_is_valid(key, value, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides("smoke", {key: value})


@pytest.mark.parametrize(
    "key, value, match",
    [("qp.n_per_class", 9, "qp.n_per_class"), ("qp.n_selected", 30, "exceeds model.n_features"),
     ("train.ft_fdl", -1.0, "train.ft_fdl"), ("train.dense_epochs", -1, "train.dense_epochs"),
     ("qp.r_mode", "paper", "qp.r_mode"), ("model.dropout", 1.0, "model.dropout")],
)
def test_check_profile_names_the_field(key, value, match):
    with pytest.raises(ValueError, match=match):
        check_profile(apply_overrides("smoke", {key: value}))


def test_check_profile_needs_enough_distinct_class_sets():
    prof = apply_overrides("smoke", {"qp.n_selected": 3, "qp.n_per_class": 2})  # C(3, 2) = 3 sets
    check_profile(prof, n_classes=3)
    with pytest.raises(ValueError, match="only 3 distinct"):
        check_profile(prof, n_classes=4)


def _fake_store(weights_id="w0", root="/a"):
    inputs = {"root": root, "weights_id": weights_id, "pretrained": False, "images_sha256": "x"}
    return SimpleNamespace(manifest={"inputs": inputs})


def test_stage_hashes_let_sweeps_reuse_earlier_stages():
    s = _fake_store()
    base = _configs(SMOKE, 0, s, s)
    ft = _configs(apply_overrides(SMOKE, {"train.ft_l1_fm": 0.0}), 0, s, s)
    qp = _configs(apply_overrides(SMOKE, {"qp.n_selected": 6}), 0, s, s)
    assert config_hash(ft["dense"]) == config_hash(base["dense"]) and config_hash(ft["qp"]) == config_hash(base["qp"])
    assert config_hash(ft["qpm"]) != config_hash(base["qpm"])
    assert config_hash(qp["dense"]) == config_hash(base["dense"]) and config_hash(qp["qp"]) != config_hash(base["qp"])
    # other seeds and other backbone weights are other runs; the machine's data path is not part of the identity
    assert config_hash(_configs(SMOKE, 1, s, s)["dense"]) != config_hash(base["dense"])
    other = _fake_store(weights_id="w1")
    assert config_hash(_configs(SMOKE, 0, other, other)["dense"]) != config_hash(base["dense"])
    moved = _fake_store(root="/b")
    assert config_hash(_configs(SMOKE, 0, moved, moved)["dense"]) == config_hash(base["dense"])
    assert base["qpm"]["standardise"] is True and base["dense"]["model"]["last_layer_bn_relu"] is True


def test_records_and_summarise_from_stored_results(tmp_path):
    runs = []
    for seed, acc in ((0, 0.8), (1, 0.6)):
        store = ResultStore(tmp_path, "dense")
        dense = store.put({"seed": seed}, ResultData({"accuracy": acc, "sid_at_5": None, "solver": "x"}, {}))
        runs.append(QPMRun("smoke", seed, dense, None, None, "synthbirds"))
    rec = runs[0].records()
    assert set(rec["metric"]) == {"accuracy", "sid_at_5"}  # strings are not metrics
    table = summarise(runs).set_index("metric")
    assert table.loc["accuracy", "mean"] == pytest.approx(0.7) and table.loc["accuracy", "std"] == pytest.approx(0.1)
    assert table.loc["sid_at_5", "n"] == 0
    with pytest.raises(ValueError, match="no QPM stage"):
        runs[0].qpm_model()


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path, monkeypatch, one_thread):
    for module in ("qpmlib.embeddings", "qpmlib.qp", "qpmlib.metrics", "qpmlib.data.synthbirds", "qpmlib.tables"):
        pytest.importorskip(module, reason=f"{module} is needed for the end-to-end run")
    from qpmlib import pipeline
    from qpmlib.train import TokenData

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    overrides = {"qp.solver": "open", "qp.time_limit": 2.0}
    run = pipeline.run_dino_qpm("smoke", seed=0, overrides=overrides, verbose=False)
    m = run.metrics
    for method in ("dense", "dino_qpm"):
        assert 0.0 <= m[method]["accuracy"] <= 1.0 and 0.0 <= m[method]["plausibility"] <= 1.0
        assert 0.0 <= m[method]["part_alignment"] <= 1.0 and m[method]["seconds_per_epoch"] > 0
    assert (m["dense"]["n_features"], m["dino_qpm"]["n_features"], m["dino_qpm"]["n_per_class"]) == (24, 8, 2.0)
    assert m["dino_qpm"]["sid_at_5"] is None and m["dense"]["sid_at_5"] is not None  # 2 features per class
    assert run.assignment.shape == (6, 8) and (run.assignment.sum(axis=1) == 2).all()
    assert len(np.unique(run.assignment, axis=0)) == 6  # no two classes share a feature set
    # the stored models reproduce the stored predictions without training
    loaded = pipeline.load_run("smoke", seed=0, overrides=overrides)
    assert loaded.metrics == m
    from qpmlib.embeddings import get_store

    test = TokenData.from_store(get_store("smoke", "test", verbose=False))
    preds = loaded.predictions()
    with torch.no_grad():
        x = test.batch(np.arange(len(test)))
        assert np.array_equal(loaded.qpm_model()(x).logits.argmax(1).numpy(), preds["qpm_pred"].to_numpy())
        assert np.array_equal(loaded.dense_model()(x).logits.argmax(1).numpy(), preds["dense_pred"].to_numpy())
    assert np.array_equal(np.sort(loaded.sparse_head()["selected"]), run.selected)
    assert list(loaded.history("dino_qpm")["epoch"]) == [0, 1, 2]
    # a fine-tune-only change reuses the dense model and the QP selection
    ft = pipeline.run_dino_qpm("smoke", seed=0, overrides=overrides | {"train.ft_l1_fm": 0.0}, verbose=False)
    assert ft.dense.path == run.dense.path and ft.qp.path == run.qp.path and ft.qpm.path != run.qpm.path
    with pytest.raises(FileNotFoundError, match="run_dino_qpm"):
        pipeline.load_run("smoke", seed=1, overrides=overrides)
    leftovers = [p.name for p in (tmp_path / "results" / "smoke" / "qpm").iterdir()
                 if p.name.startswith((".tmp-", ".work-"))]
    assert not leftovers


@pytest.mark.slow
def test_seeds_trained_together_are_stored_as_single_seed_runs(tmp_path, monkeypatch, one_thread):
    from qpmlib import pipeline, train

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
    assert together[1].qpm.path == first.qpm.path and [r.seed for r in together] == [1, 2, 3]
    assert together[0].dense.json("provenance.json")["stacked_seeds"] == [1, 3]
    assert together[0].history("dense").shape[0] == 4 and together[2].history("dino_qpm").shape[0] == 3
    for a, b in zip(alone, together[:2]):  # same hashes, and each seed's own model
        assert a.dense.path.name == b.dense.path.name and a.qpm.path.name == b.qpm.path.name
        wa, wb = a.dense_model().state_dict(), b.dense_model().state_dict()
        assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa if k.endswith("weight"))
    assert not torch.allclose(together[0].dense_model().head.weight, together[2].dense_model().head.weight)
    calls.clear()
    assert [r.qpm.path for r in pipeline.run_seeds("smoke", [3, 1], overrides=overrides, verbose=False)] == \
        [together[2].qpm.path, together[0].qpm.path] and calls == []
    with pytest.raises(ValueError, match="distinct"):
        pipeline.run_seeds("smoke", [1, 1], overrides=overrides, verbose=False)
