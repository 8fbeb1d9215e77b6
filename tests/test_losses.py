"""Tests for qpmlib.losses against closed-form values (reference_spec §3)."""

import math

import numpy as np
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


# ---------------------------------------------------------------------------------------------- asymmetric data
# B=3 samples, K=3 features on a 2x3 grid, N_c=4 classes: every dimension has its own size and no value repeats,
# so a softmax, max, sum or mean over the wrong dimension, or a wrong reduction, gives another number (checked).
def _asymmetric():
    g = torch.Generator().manual_seed(7)
    maps = torch.randn(3, 3, 2, 3, generator=g) * 1.5  # (B, K, H, W)
    features = torch.rand(3, 3, generator=g) * 2 + 0.1  # (B, K), positive like post-ReLU features
    logits = torch.randn(3, 4, generator=g)  # (B, N_c)
    weight = torch.randn(4, 3, generator=g)  # (N_c, K), signed: |W| matters
    labels = torch.tensor([2, 0, 3])
    return maps.double(), features.double(), logits.double(), weight.double(), labels


def _fdl_reference(maps, features, logits, weight, beta, *, scale="features", softmax_dim=2, max_dim=1,
                   position_sum=True, use_labels=None, abs_weight=True, batch_mean=True, per_sample_scale=True):
    """The FDL written out loop by loop (numpy); the keyword switches give the plausible mistakes."""
    m = maps.numpy().reshape(maps.shape[0], maps.shape[1], -1)  # (B, K, HW)
    v = features.numpy() if scale == "features" else m.mean(axis=2)
    cls = logits.numpy().argmax(axis=1) if use_labels is None else use_labels.numpy()
    w = weight.numpy()
    out = []
    for b in range(m.shape[0]):
        row = np.abs(w[cls[b]]) if abs_weight else w[cls[b]]
        omega = row / (np.sqrt((row ** 2).sum()) + 1e-5)
        e = np.exp(m[b] - m[b].max(axis=softmax_dim - 1, keepdims=True))
        soft = e / e.sum(axis=softmax_dim - 1, keepdims=True)  # softmax over positions (K, HW) -> axis 1
        top = v[b].max() if per_sample_scale else v.max()
        soft = soft * (v[b] / max(top, 1e-6))[:, None]
        weighted = omega[:, None] * soft
        best = weighted.max(axis=max_dim - 1)  # max over features -> (HW,)
        out.append(best.sum() if position_sum else best.mean())
    out = np.array(out)
    return -beta * (out.mean() if batch_mean else out.sum())


def test_fdl_matches_a_loop_reference_that_wrong_dimensions_would_not():
    maps, v, logits, w, labels = _asymmetric()
    right = _fdl_reference(maps, v, logits, w, 0.7)
    assert feature_diversity_loss(maps, v, logits, w, beta=0.7).item() == pytest.approx(right, rel=1e-9)
    paper = _fdl_reference(maps, v, logits, w, 0.7, scale="map_mean")
    paper_loss = feature_diversity_loss(maps, v, logits, w, beta=0.7, scale="map_mean").item()
    assert paper_loss == pytest.approx(paper, rel=1e-9)
    wrong = {
        "softmax over features": dict(softmax_dim=1),
        "max over positions": dict(max_dim=2),
        "mean over positions": dict(position_sum=False),
        "weights of the label, not the prediction": dict(use_labels=labels),
        "signed weights": dict(abs_weight=False),
        "sum over the batch": dict(batch_mean=False),
        "scale by the batch max": dict(per_sample_scale=False),
    }
    for name, kwargs in wrong.items():
        other = _fdl_reference(maps, v, logits, w, 0.7, **kwargs)
        assert abs(other - right) > 1e-3 * abs(right), f"the data cannot tell '{name}' from the right FDL"
    assert abs(paper - right) > 1e-3 * abs(right)


def test_total_loss_parts_on_asymmetric_data():
    maps, v, logits, w, labels = _asymmetric()
    out = ModelOutput(logits, v, maps)
    loss, parts = total_loss(out, labels, w, fdl=0.7, l1_fm=0.3, l1_fv=0.2)
    lg = logits.numpy()
    logp = lg - lg.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    ce = -logp[np.arange(3), labels.numpy()].mean()
    ce_wrong = [-logp[np.arange(3), labels.numpy()].sum(),  # sum, not mean
                -(lg - np.log(np.exp(lg).sum(axis=0, keepdims=True)))[np.arange(3), labels.numpy()].mean()]  # dim 0
    assert all(abs(c - ce) > 1e-3 for c in ce_wrong)
    fm = np.abs(maps.numpy()).mean()
    assert abs(np.abs(maps.numpy()).sum(axis=(2, 3)).mean() - fm) > 1e-3  # the mean is over every element
    fv = np.abs(v.numpy()).mean()
    expected = {"ce": ce, "fdl": _fdl_reference(maps, v, logits, w, 0.7), "l1_fm": 0.3 * fm, "l1_fv": 0.2 * fv}
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, rel=1e-9), name
    assert loss.item() == pytest.approx(sum(expected.values()), rel=1e-9)
    # L1-FV with the per-sample max (reference dense stage): each sample is divided by its own max
    per_sample = (v.numpy() / v.numpy().max(axis=1, keepdims=True)).mean()
    assert l1_feature_vector(v, norm_with_max=True).item() == pytest.approx(per_sample, rel=1e-9)
    assert abs((v.numpy() / v.numpy().max()).mean() - per_sample) > 1e-3
