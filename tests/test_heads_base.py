"""Tests for qpmlib.heads.base: schedule, compactness, prototype budget, pruning, and the shared metrics."""

import math

import numpy as np
import pytest
import torch

from qpmlib import metrics as qmetrics
from qpmlib.heads.base import (
    HeadEvaluation,
    TokenBatches,
    check_prototype_budget,
    head_compactness,
    head_metrics,
    learning_rate,
    pruned_importance,
)
from qpmlib.train import TokenData


def test_learning_rate_warms_up_linearly_then_follows_the_half_cosine():
    kw = dict(lr=0.01, warmup_epochs=15, cosine_epochs=300, min_lr=1e-4)
    assert learning_rate(0, **kw) == pytest.approx(0.01 / 15)
    assert learning_rate(14, **kw) == pytest.approx(0.01)
    assert learning_rate(15, **kw) == pytest.approx(0.01)
    # the reference's 80-epoch run ends a quarter of the way down its 300-epoch cosine
    expected = 1e-4 + (0.01 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 64 / 285))
    assert learning_rate(79, **kw) == pytest.approx(expected)
    assert learning_rate(300, **kw) == pytest.approx(1e-4)
    assert learning_rate(400, **kw) == pytest.approx(1e-4)  # stays at the floor
    assert learning_rate(0, lr=0.1, warmup_epochs=0, cosine_epochs=10, min_lr=0.0) == pytest.approx(0.1)


def test_compactness_counts_prototypes_in_all_per_class_and_per_image():
    w = np.array([[1, 2, 0, 0],   # class 0
                  [0, 3, 1, 0],   # class 0
                  [0, 0, 0, 4]], float)  # class 1
    out = head_compactness(w, np.array([0, 0, 1]))
    assert out == {"n_prototypes": 4, "n_per_class": pytest.approx((3 + 1) / 2),
                   "n_per_image": pytest.approx(5 / 3)}


def test_compactness_of_a_binary_assignment_is_its_features_per_class():
    rng = np.random.default_rng(0)
    assignment = np.zeros((6, 12))
    for c in range(6):
        assignment[c, rng.choice(12, 3, replace=False)] = 1
    labels = np.repeat(np.arange(6), 4)
    out = head_compactness(assignment[labels], labels)
    assert out["n_per_class"] == 3 and out["n_per_image"] == 3
    assert out["n_prototypes"] == int(assignment.any(axis=0).sum())


def test_prototype_budget_refuses_more_prototypes_than_a_batch_has_tokens():
    check_prototype_budget(64, n_patches=16, batch_size=4, n_train=100, head="x")  # exactly enough
    with pytest.raises(ValueError, match=r"65 prototypes.*4 images x 16 patch tokens = 64 tokens"):
        check_prototype_budget(65, n_patches=16, batch_size=4, n_train=100, head="protosvit")
    with pytest.raises(ValueError, match="2 images"):  # the batch cannot be larger than the split
        check_prototype_budget(40, n_patches=16, batch_size=64, n_train=2, head="x")
    with pytest.raises(ValueError, match=">= 1"):
        check_prototype_budget(0, n_patches=16, batch_size=4, n_train=100, head="x")


def test_pruned_importance_zeroes_entries_below_the_threshold():
    scores = torch.tensor([[1.0, 0.2]])
    weight = torch.tensor([[0.5, 0.4], [0.05, 1.0]])  # (N_c, K)
    imp = pruned_importance(scores, weight, 0.1)
    assert torch.allclose(imp, torch.tensor([[[0.5, 0.0], [0.0, 0.2]]]))  # 0.05 and 0.08 pruned


def _evaluation(rng, n=12, k=6, g=4, n_classes=3, with_label_weights=False):
    maps = rng.random((n, k, g, g)).astype(np.float32)
    features = maps.max(axis=(2, 3))
    weight = (rng.random((n_classes, k)) > 0.4) * rng.random((n_classes, k))
    weight[:, -1] = 0  # prototype 5 is never used
    logits = features @ weight.T
    pred = logits.argmax(1)
    labels = rng.integers(0, n_classes, n)
    return HeadEvaluation(logits, features, maps, weight[pred], labels,
                          label_weights=weight[labels] if with_label_weights else None), weight


def test_head_metrics_match_the_metrics_on_the_used_prototypes():
    rng = np.random.default_rng(1)
    test, _ = _evaluation(rng)
    train, _ = _evaluation(rng, n=30)
    masks = rng.random((12, 4, 4)) > 0.5
    out = head_metrics(test, train, k=2, masks=masks, seed=0)
    used = np.flatnonzero((test.weights != 0).any(axis=0))
    assert 5 not in used
    assert out["accuracy"] == pytest.approx(np.mean(test.predictions == test.labels))
    assert out["plausibility"] == pytest.approx(
        qmetrics.plausibility(test.feature_maps[:, used], test.weights[:, used], masks))
    assert out["sid_at_5"] == pytest.approx(qmetrics.sid_at_k(test.feature_maps[:, used], test.weights[:, used], k=2))
    assert out["class_independence"] == pytest.approx(
        qmetrics.class_independence(train.features[:, used], train.labels))
    assert out["n_prototypes"] == len(used)
    assert head_metrics(test, train, k=6)["sid_at_5"] is None  # no sample has 6 non-zero weights


def test_head_metrics_count_compactness_on_true_class_weights_when_known():
    rng = np.random.default_rng(2)
    test, weight = _evaluation(rng, with_label_weights=True)
    train, _ = _evaluation(rng, n=30)
    out = head_metrics(test, train, k=1)
    assert out["n_per_image"] == pytest.approx((weight[test.labels] != 0).sum(1).mean())
    with pytest.raises(ValueError, match="feature maps"):
        head_metrics(HeadEvaluation(test.logits, test.features, None, test.weights, test.labels), train)


def test_token_batches_serve_rows_in_request_order_preloaded_or_not(tmp_path):
    rng = np.random.default_rng(3)
    patches = rng.normal(size=(7, 4, 3)).astype(np.float16)
    np.save(tmp_path / "p.npy", patches)
    cls = rng.normal(size=(7, 3)).astype(np.float16)
    data = TokenData(np.load(tmp_path / "p.npy", mmap_mode="r"), cls, np.arange(7) % 2)
    idx = np.array([5, 0, 3])
    for max_bytes in (2**20, 0):  # preloaded, read per batch
        p, c, y = TokenBatches(data, torch.device("cpu"), max_bytes=max_bytes)(idx)
        assert p.dtype == torch.float32 and torch.equal(p, torch.as_tensor(patches[idx].astype(np.float32)))
        assert torch.equal(c, torch.as_tensor(cls[idx].astype(np.float32))) and y.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="square"):
        TokenBatches(TokenData(patches[:, :3], cls, np.zeros(7)), torch.device("cpu"))
