"""Tests for qpmlib.pretrain.probe: probes, PCA as RGB and token norms, on constructed inputs with known answers."""

import numpy as np
import pytest
import torch

from qpmlib.backbones import build_backbone
from qpmlib.pretrain import probe


def blobs(n_per_class, n_classes, dim, spread, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 5
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(size=(len(y), dim)) * spread, y


def test_probe_features_concatenate_cls_and_mean_patch():
    cls = np.ones((2, 3))
    patches = np.arange(2 * 4 * 3, dtype=float).reshape(2, 4, 3)
    out = probe.probe_features(cls, patches)
    assert out.shape == (2, 6)
    np.testing.assert_allclose(out[:, 3:], patches.mean(1))


def test_part_labels_take_the_largest_cover_or_the_background():
    maps = np.zeros((1, 2, 2, 2))
    maps[0, 0, 0, 0] = 0.6  # part 0 wins over the background (0.4)
    maps[0, 1, 0, 1] = 0.3  # the background (0.7) wins
    maps[0, 0, 1, 0] = maps[0, 1, 1, 0] = 0.5  # a tie goes to the lower label
    assert probe.part_labels(maps).tolist() == [[0, 2, 0, 2]]


def test_part_probe_finds_a_rare_part_and_not_shuffled_labels():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(2000, int), np.ones(20, int), np.full(200, 2)]  # a background-like class and a rare part
    x = np.eye(3)[y] * 6 + rng.normal(size=(len(y), 3))
    recall = probe.part_probe_recall(x, y, x[::2], y[::2], 4)
    assert recall[:3] == pytest.approx([1, 1, 1], abs=0.1) and np.isnan(recall[3])  # class 3 is absent
    noise = probe.part_probe_recall(x, rng.permutation(y), x, y, 3)
    assert np.nanmean(noise) < 0.6


def test_linear_probe_separates_separable_classes_and_not_noise():
    x, y = blobs(10, 4, 8, 0.1, 0)
    xt, yt = blobs(5, 4, 8, 0.1, 0)
    assert probe.linear_probe_accuracy(x, y, xt, yt) == 1.0
    rng = np.random.default_rng(1)
    noise_acc = probe.linear_probe_accuracy(rng.normal(size=(200, 8)), rng.integers(0, 4, 200),
                                            rng.normal(size=(400, 8)), rng.integers(0, 4, 400))
    assert noise_acc < 0.4  # chance is 0.25


def test_knn_closed_form():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 1])
    test = np.array([[1.0, 0.05], [0.1, 1.0]])
    assert probe.knn_accuracy(train, labels, test, np.array([0, 1]), k=1) == 1.0
    # with k = 3 every training point votes; the two class-0 points outvote the closer class-1 point
    far = np.array([[0.5, 0.9]])
    assert probe.knn_accuracy(train, labels, far, np.array([0]), k=3, temperature=10.0) == 1.0
    assert probe.knn_accuracy(train, labels, far, np.array([1]), k=1) == 1.0


def test_pca_rgb_recovers_the_main_directions():
    rng = np.random.default_rng(0)
    n, grid, d = 3, 4, 10
    codes = rng.normal(size=(n * grid * grid, 3)) * np.array([10.0, 5.0, 2.0])
    basis = np.linalg.qr(rng.normal(size=(d, 3)))[0].T  # (3, D) orthonormal
    patches = (codes @ basis + rng.normal(size=(n * grid * grid, d)) * 0.01).reshape(n, grid * grid, d)
    rgb = probe.pca_rgb(patches)
    assert rgb.shape == (n, grid, grid, 3) and rgb.min() >= 0 and rgb.max() <= 1
    for c in range(3):  # each channel is monotone in its code (up to sign)
        r = np.corrcoef(rgb[..., c].ravel(), codes[:, c])[0, 1]
        assert abs(r) > 0.95
    fg = np.zeros((n, grid * grid), bool)
    fg[:, :5] = True
    masked = probe.pca_rgb(patches, foreground=fg)
    assert (masked.reshape(n, -1, 3)[~fg] == 0).all()
    with pytest.raises(ValueError, match="square grid"):
        probe.pca_rgb(np.zeros((1, 5, 3)))


@pytest.mark.parametrize("name, n_reg", [("standin_t14_reg", 4), ("standin_t14", 0)])
def test_token_norms_split_cls_registers_and_patches(name, n_reg):
    bb = build_backbone(name, weights="random", image_size=56)
    x = torch.rand(2, 3, 56, 56)
    norms = probe.token_norms(bb, x)
    assert norms["cls"].shape == (2,) and norms["registers"].shape == (2, n_reg) and norms["patches"].shape == (2, 16)
    vit = bb.model
    tokens = vit.blocks(vit._pos_embed(vit.patch_embed(x)))
    np.testing.assert_allclose(norms["patches"], tokens[:, 1 + n_reg:].norm(dim=-1).numpy(), rtol=1e-5)


def test_high_norm_share_closed_form():
    norms = np.array([1.0, 1.0, 1.1, 0.9, 5.0, 1.0, 1.0, 1.0, 1.0, 3.0])
    assert probe.high_norm_share(norms, factor=2.0) == pytest.approx(0.2)
    assert probe.high_norm_share(norms, factor=4.0) == pytest.approx(0.1)
