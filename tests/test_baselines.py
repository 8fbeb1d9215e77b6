"""Tests for qpmlib.baselines: compact sizes, SID's k, the SLDD/QSENN sparse head, fine-tuning and metrics."""

import dataclasses

import numpy as np
import pytest
import torch

from qpmlib import baselines
from qpmlib.baselines import (
    SparseHeadModel,
    compact_sizes,
    finetune_sparse,
    fit_qsenn,
    method_metrics,
    path_settings,
    sid_k,
)
from qpmlib.model import DinoQPM
from qpmlib.profiles import DataConfig, get_profile
from qpmlib.sparse_baselines import QSENN, SLDD
from qpmlib.train import StageConfig, TokenData

FAST_QSENN = dataclasses.replace(QSENN, n_lambdas=10, max_epochs=200)


def _tokens(n_per_class=6, n_classes=3, p=4, d=8, seed=0):
    """Tokens whose patch means depend on the class, so a tiny model can learn them."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centres = rng.normal(size=(n_classes, d)) * 2
    patches = centres[labels][:, None, :] + rng.normal(size=(len(labels), p, d))
    cls = patches.mean(axis=1)
    return TokenData(patches.astype(np.float32), cls.astype(np.float32), labels)


def _dense(d=8, n_classes=3, n_features=6):
    torch.manual_seed(0)
    return DinoQPM(d, n_classes, n_layers=2, hidden_size=8, n_features=n_features).eval()


def _head(n_classes=3, k=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_classes, k)).astype(np.float32), rng.normal(size=n_classes).astype(np.float32)


def test_compact_sizes_paper_and_scaled():
    assert compact_sizes("paper") == (40, 4)
    assert compact_sizes("smoke") == (6, 1)  # round(0.8 * 8), 2 - 1
    assert compact_sizes("demo") == (16, 4)  # round(0.8 * 20), 5 - 1
    # 7 classes with 1 feature each need 7 distinct features: the size is raised from 6 to 7
    smoke7 = get_profile("smoke").replace(data=DataConfig(dataset="synthbirds", image_size=112, n_classes=7))
    assert compact_sizes(smoke7) == (7, 1)
    with pytest.raises(ValueError, match="n_features"):
        compact_sizes("smoke", n_classes=100)


def test_sid_k_and_path_settings():
    assert (sid_k("smoke"), sid_k("demo"), sid_k("paper")) == (2, 5, 5)
    assert path_settings("paper", SLDD) is SLDD
    short = path_settings("smoke", QSENN)
    assert short.n_lambdas == 25 and isinstance(short, type(QSENN)) and short.n_iterations == QSENN.n_iterations


def test_sparse_head_forward_matches_formula_and_sorts_selection():
    dense = _dense()
    weight, bias = _head()
    mean, std = np.array([0.1, 0.2, 0.3], np.float32), np.array([1.0, 2.0, 0.5], np.float32)
    model = SparseHeadModel(dense, [4, 0, 2], weight, bias, mean, std).eval()
    assert model.selected.tolist() == [0, 2, 4]
    x = _tokens().batch(np.arange(5))
    out = model(x)
    pooled = dense.mlp(x)[:, :-1].mean(dim=1)  # (B, N_f)
    order = [1, 2, 0]  # positions of 0, 2, 4 in the given selection [4, 0, 2]
    z = (pooled[:, [0, 2, 4]] - torch.tensor(mean[order])) / torch.tensor(std[order])
    expected = z @ torch.tensor(weight[:, order]).T + torch.tensor(bias)
    torch.testing.assert_close(out.logits, expected)
    assert out.features.shape == (5, 3) and out.feature_maps.shape == (5, 3, 2, 2)
    assert model.head_weight.shape == (3, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"mean", "std"} <= trainable and "weight" not in trainable and "bias" not in trainable


def test_sparse_head_rejects_bad_shapes():
    dense = _dense()
    weight, bias = _head()
    with pytest.raises(ValueError, match="distinct"):
        SparseHeadModel(dense, [0, 0, 1], weight, bias, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        SparseHeadModel(dense, [0, 1], weight, bias, np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="bias"):
        SparseHeadModel(dense, [0, 1, 2], weight, bias[:2], np.zeros(3), np.ones(3))


def test_finetune_sparse_keeps_w_and_b_frozen_and_trains_the_rest():
    data = _tokens()
    dense = _dense()
    mlp_before = [p.detach().clone() for p in dense.mlp.parameters()]
    weight, bias = _head()
    stage = StageConfig("finetune", epochs=2, batch_size=6, lr=1e-2, weight_decay=0.0, fdl=0.196)
    model, history = finetune_sparse(dense, data, [1, 3, 5], weight, bias, np.zeros(3), np.ones(3), stage, seed=0)
    assert len(history.epochs) == 2
    np.testing.assert_array_equal(model.weight.numpy(), weight)
    np.testing.assert_array_equal(model.bias.numpy(), bias)
    assert not torch.allclose(model.mean.detach(), torch.zeros(3))
    assert any(not torch.equal(a, b) for a, b in zip(mlp_before, model.mlp.parameters()))


def test_fit_qsenn_gives_ternary_weights_and_one_history_per_iteration():
    data = _tokens(n_per_class=10)
    stage = StageConfig("finetune", epochs=1, batch_size=10, lr=1e-2, weight_decay=0.0, fdl=0.196)
    model, histories = fit_qsenn(_dense(), data, [0, 2, 3, 5], 1, stage, [(1, 1e-2), (2, 5e-3)], seed=0,
                                 settings=FAST_QSENN)
    assert [len(h.epochs) for h in histories] == [1, 2]
    w = model.weight.numpy()
    magnitudes = np.unique(np.abs(w[w != 0]))
    assert len(magnitudes) == 1  # {-m, 0, +m}
    assert (w != 0).sum() <= 3  # N_c * n_per_class kept
    with pytest.raises(ValueError, match="schedule"):
        fit_qsenn(_dense(), data, [0, 2], 1, stage, [], seed=0, settings=FAST_QSENN)


def test_method_metrics_keys_and_sid_threshold():
    data = _tokens()
    weight, bias = _head()
    weight[:, 0] = 0.0  # feature 0 unused: only two "rel" features, one per row at most two non-zeros
    model = SparseHeadModel(_dense(), [0, 1, 2], weight, bias, np.zeros(3), np.ones(3)).eval()
    masks = np.ones((len(data), 2, 2), dtype=bool)
    m = method_metrics(model, data, data, k=2, masks=masks, seconds_per_epoch=1.5)
    assert set(m) == {"accuracy", "plausibility", "sid_at_5", "sid_k", "class_independence", "contrastiveness",
                      "n_features", "n_per_class", "seconds_per_epoch"}
    assert m["n_features"] == 2 and m["n_per_class"] == 2.0 and m["sid_k"] == 2
    assert m["plausibility"] == pytest.approx(1.0)  # the mask covers every patch
    assert 0.0 <= m["accuracy"] <= 1.0 and m["sid_at_5"] is not None
    assert method_metrics(model, data, data, k=3)["sid_at_5"] is None  # no class has 3 weights
    assert method_metrics(model, data, data, k=2)["plausibility"] is None


def test_run_method_rejects_unknown_method():
    with pytest.raises(ValueError, match="dino_sldd"):
        baselines.run_method("sldd", "smoke", 0)


@pytest.mark.slow
def test_run_sldd_on_smoke_is_cached_and_reloadable(tmp_path, monkeypatch):
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    run = baselines.run_sldd("smoke", 0)
    assert run.metrics["n_features"] <= 8 and run.metrics["sid_k"] == 2
    again = baselines.run_sldd("smoke", 0)
    assert again.metrics == run.metrics
    from qpmlib.embeddings import get_store
    from qpmlib.train import evaluate

    test = TokenData.from_store(get_store("smoke", "test", verbose=False))
    accuracy = float(np.mean(evaluate(again.model(), test, device="cpu").predictions == test.labels))
    assert accuracy == pytest.approx(run.metrics["accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear_probe", "dino_qpm_compact", "dino_sldd"])
def test_prepare_computes_the_pipeline_stages_the_method_then_loads(method, tmp_path, monkeypatch):
    from qpmlib import pipeline

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    baselines.prepare(method, "smoke", [0, 1])

    def no_training(*args, **kwargs):
        raise AssertionError("prepare should have computed this pipeline stage")

    monkeypatch.setattr(pipeline, "train_dense", no_training)
    monkeypatch.setattr(pipeline, "train_finetune", no_training)
    for seed in (0, 1):  # SLDD still runs its own selection and fine-tune, but not the pipeline's dense stage
        assert 0.0 <= baselines.run_method(method, "smoke", seed).metrics["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="dino_sldd"):
        baselines.prepare("sldd", "smoke", [0])
