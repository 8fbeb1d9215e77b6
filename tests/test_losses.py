"""Tests for qpmlib.losses against closed-form values (reference_spec §3)."""

import math

import pytest
import torch

from qpmlib.losses import feature_diversity_loss, l1_feature_maps, l1_feature_vector, total_loss
from qpmlib.model import ModelOutput

A = math.log(3.0)  # softmax([ln 3, 0]) = [3/4, 1/4]


def _case():
    """One sample, K=2 features on a 1x2 grid; softmaxes [3/4, 1/4] and [1/4, 3/4]."""
    maps = torch.tensor([[[[A, 0.0]], [[0.0, A]]]])  # (1, 2, 1, 2)
    features = torch.tensor([[1.0, 0.5]])
    weight = torch.tensor([[1.0, 0.0], [3.0, -4.0]])  # |W| is used
    return maps, features, weight


def test_fdl_closed_form_uses_predicted_class():
    maps, v, w = _case()
    # predicted class 1: omega = [3, 4] / (5 + 1e-5); d0: 0.6*[.75, .25]*1, d1: 0.8*0.5*[.25, .75]
    # max over d per position: [0.45, 0.30] -> 0.75 (up to the 1e-5 in the norm)
    loss = feature_diversity_loss(maps, v, torch.tensor([[0.0, 1.0]]), w, beta=2.0)
    assert loss.item() == pytest.approx(-2.0 * 0.75 * 5 / (5 + 1e-5), rel=1e-6)
    # predicted class 0: omega = [1, 0] / (1 + 1e-5) -> only d0: 0.75 + 0.25 = 1
    loss = feature_diversity_loss(maps, v, torch.tensor([[1.0, 0.0]]), w, beta=2.0)
    assert loss.item() == pytest.approx(-2.0 / (1 + 1e-5), rel=1e-6)


def test_fdl_batch_mean_and_map_mean_variant():
    maps, v, w = _case()
    maps2, v2 = torch.cat([maps, maps]), torch.cat([v, v])
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = feature_diversity_loss(maps2, v2, logits, w, beta=1.0)
    assert loss.item() == pytest.approx(-(0.75 * 5 / (5 + 1e-5) + 1 / (1 + 1e-5)) / 2, rel=1e-6)
    # paper variant: scale by spatial means (both A/2) -> scale [1, 1]; max([.45, .15], [.2, .6]) -> 1.05
    loss = feature_diversity_loss(maps, v, logits[:1], w, beta=1.0, scale="map_mean")
    assert loss.item() == pytest.approx(-1.05 * 5 / (5 + 1e-5), rel=1e-6)
    with pytest.raises(ValueError, match="features, map_mean"):
        feature_diversity_loss(maps, v, logits[:1], w, beta=1.0, scale="paper")


def test_fdl_zero_beta_zero_features_and_gradients():
    maps, v, w = _case()
    logits = torch.tensor([[0.0, 1.0]])
    assert feature_diversity_loss(maps, v, logits, w, beta=0.0).item() == 0.0
    assert feature_diversity_loss(maps, torch.zeros_like(v), logits, w, beta=1.0).item() == 0.0  # 1e-6 clamp
    maps = maps.clone().requires_grad_(True)
    v = v.clone().requires_grad_(True)
    feature_diversity_loss(maps, v, logits, w, beta=1.0).backward()
    assert maps.grad.abs().sum() > 0 and v.grad.abs().sum() > 0


def test_fdl_rejects_mismatched_shapes():
    maps, v, w = _case()
    with pytest.raises(ValueError, match="expected maps"):
        feature_diversity_loss(maps, v, torch.zeros(1, 3), w, beta=1.0)


def test_l1_terms():
    maps = torch.tensor([[[[1.0, -3.0]], [[0.0, 4.0]]]])
    assert l1_feature_maps(maps).item() == pytest.approx(2.0)
    f = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    assert l1_feature_vector(f).item() == pytest.approx(2.0)
    # per-sample max: [1/3, 1] and [1, 1] -> mean 5/6
    assert l1_feature_vector(f, norm_with_max=True).item() == pytest.approx(5 / 6)


def test_total_loss_adds_only_active_terms():
    maps, v, w = _case()
    out = ModelOutput(torch.tensor([[0.0, 1.0]]), v, maps)
    y = torch.tensor([0])
    ce = math.log(1 + math.e)  # -log softmax([0, 1])[0]
    loss, parts = total_loss(out, y, w, fdl=0.0, l1_fm=0.0, l1_fv=1e-7)
    assert loss.item() == pytest.approx(ce) and parts["l1_fv"].item() == 0.0
    loss, parts = total_loss(out, y, w, fdl=1.0, l1_fm=2.0, l1_fv=3.0)
    expected = ce - 0.75 * 5 / (5 + 1e-5) + 2 * (A / 2) + 3 * 0.75
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert sum(p.item() for p in parts.values()) == pytest.approx(expected, rel=1e-6)
