"""Tests for qpmlib.heads.protosvit: the losses' closed forms, the forward pass, training and evaluation."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from heads_fixtures import one_thread, planted  # noqa: F401 (one_thread is autouse)
from qpmlib.heads.base import evaluate_head
from qpmlib.heads.protosvit import (
    ProtoSViT,
    ProtoSViTConfig,
    hoyer_square_loss,
    tanh_loss,
    train_protosvit,
)

CFG = ProtoSViTConfig(n_prototypes=16, prototype_dim=16, epochs=25, batch_size=16, warmup_epochs=3,
                      cosine_epochs=None, device="cpu")


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def trained(data):
    torch.set_num_threads(1)
    return train_protosvit(data.train, CFG, seed=0, eval_data=data.test, verbose=False)


def test_tanh_loss_closed_form():
    maps = torch.full((2, 3, 2, 2), 0.25)  # every prototype holds mass 2 * 4 * 0.25 = 2 in the batch
    assert tanh_loss(maps).item() == pytest.approx(-math.log(math.tanh(2.0)))
    maps[:, 0] = 0  # an unused prototype costs -log(1e-20) / K
    assert tanh_loss(maps).item() == pytest.approx((2 * -math.log(math.tanh(2.0)) - math.log(1e-20)) / 3, rel=1e-5)


def test_hoyer_square_loss_closed_form():
    scores = torch.tensor([[2.0, 0.0, 0.0]])  # (B, K)
    weight = torch.tensor([[0.5, 1.0, 1.0], [0.5, 1.0, 1.0]])  # (N_c, K): importance = two entries of 1.0
    expected = 0.01 * 2 / math.sqrt(6) + 0.02 * math.sqrt(2)  # alpha * m / sqrt(K N_c) + gamma * a sqrt(m)
    assert hoyer_square_loss(scores, weight, alpha=0.01, gamma=0.02).item() == pytest.approx(expected, rel=1e-6)


def test_forward_shapes_and_a_softmax_over_prototypes():
    torch.manual_seed(0)
    model = ProtoSViT(8, 3, n_prototypes=5, prototype_dim=6).eval()
    out = model(torch.randn(2, 16, 8))
    assert out.logits.shape == (2, 3) and out.scores.shape == (2, 5) and out.maps.shape == (2, 5, 4, 4)
    assert torch.allclose(out.maps.sum(dim=1), torch.ones(2, 4, 4))
    assert torch.allclose(out.logits, out.scores @ model.classifier.T)
    assert (model.classifier >= 0).all()


def test_channel_dropout_drops_whole_channels_in_training_only():
    torch.manual_seed(0)
    model = ProtoSViT(8, 3, n_prototypes=5, prototype_dim=6, dropout=0.5)
    x = torch.ones(4, 16, 8)
    y = model.train()._channel_dropout(x)
    assert set(torch.unique(y).tolist()) <= {0.0, 2.0}
    assert (y == y[:, :1]).all()  # one mask per sample and channel, shared by every position
    assert torch.equal(model.eval()._channel_dropout(x), x)


def test_learns_the_planted_classes(data, trained):
    ev = evaluate_head(trained.model, data.test, CFG)
    assert np.mean(ev.predictions == ev.labels) >= 0.8  # chance is 0.25
    assert trained.history.epochs[-1]["test_accuracy"] >= 0.8
    assert {"ce", "tanh", "sparsity", "lr", "seconds"} <= set(trained.history.epochs[0])
    assert trained.history.epochs[0]["sparsity"] == 0.0  # the ramp starts at 0
    assert (trained.model.classifier >= 0).all() and (trained.model.classifier <= CFG.max_weight).all()


def test_evaluation_weights_follow_the_pruned_importance(data, trained):
    ev = evaluate_head(trained.model, data.test, CFG)
    model = trained.model
    with torch.no_grad():
        scores = model(torch.as_tensor(data.test.patches)).scores
        imp = scores[:, :, None] * model.classifier.T[None]  # (N, K, N_c)
    pred = torch.as_tensor(ev.predictions)
    kept = imp[torch.arange(len(pred)), :, pred] >= CFG.importance_threshold
    assert np.array_equal(ev.weights != 0, kept.numpy())
    assert np.allclose(ev.logits, torch.where(imp >= 0.1, imp, 0).sum(1).numpy(), atol=1e-5)
    assert ev.label_weights.shape == ev.weights.shape and ev.feature_maps.shape == (len(data.test), 16, 4, 4)


def test_same_seed_same_model_and_the_callers_rng_untouched(data, trained):
    short = dataclasses.replace(CFG, epochs=2)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = train_protosvit(data.train, short, seed=5, verbose=False)
    after = torch.rand(3)
    b = train_protosvit(data.train, short, seed=5, verbose=False)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    c = train_protosvit(data.train, short, seed=6, verbose=False)
    assert not torch.equal(a.model.classifier, c.model.classifier)


def test_too_many_prototypes_fail_before_training(data):
    cfg = dataclasses.replace(CFG, n_prototypes=16 * 16 + 1)  # a batch holds 16 images x 16 tokens
    with pytest.raises(ValueError, match="257 prototypes"):
        train_protosvit(data.train, cfg, seed=0, verbose=False)
    with pytest.raises(ValueError, match="dropout"):
        train_protosvit(data.train, dataclasses.replace(CFG, dropout=1.0), seed=0, verbose=False)


def test_parameter_count(trained):
    d, e, k, c = 16, 16, 16, 4
    expected = (d * e + e) + (d * d + d + d * e + e) + (e * e + e) + k * e + (9 * k + k) + (k + k) + 2 * k + c * k
    assert trained.n_parameters == expected


def test_a_saved_head_rebuilds_from_its_config(tmp_path, data, trained):
    torch.save(trained.model.state_dict(), tmp_path / "head.pt")
    again = ProtoSViT.from_config(trained.config, data.train.dim, data.train.n_classes)
    again.load_state_dict(torch.load(tmp_path / "head.pt", weights_only=True))
    a, b = evaluate_head(trained.model, data.test, CFG), evaluate_head(again, data.test, CFG)
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.feature_maps, b.feature_maps)
