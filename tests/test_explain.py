"""Tests for qpmlib.explain: hand-computed arrays and figure structure (Agg backend, nothing shown or closed)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from qpmlib import explain  # noqa: E402


# ------------------------------------------------------------------------------------------ colours, upsampling
def test_feature_colours_fixed_by_id():
    c = explain.feature_colours(25)
    assert c.shape == (25, 3)
    np.testing.assert_array_equal(c[3], explain.feature_colours([3])[0])
    np.testing.assert_array_equal(c[3], c[3 + len(explain.PALETTE)])  # wraps modulo the palette
    assert len({tuple(x) for x in c[: len(explain.PALETTE)]}) == len(explain.PALETTE)  # distinct within a cycle
    with pytest.raises(ValueError, match="non-negative"):
        explain.feature_colours([-1])


def test_upsample_maps_constant_and_shape():
    maps = np.stack([np.full((2, 2), 3.0), np.arange(4.0).reshape(2, 2)])
    up = explain.upsample_maps(maps, 4)
    assert up.shape == (2, 4, 4)
    np.testing.assert_allclose(up[0], 3.0)
    # half-pixel bilinear: output pixel 1 of 4 sits at input coordinate 0.25 between cells 0 and 1
    np.testing.assert_allclose(up[1, 0, :], [0.0, 0.25, 0.75, 1.0])
    assert explain.upsample_maps(maps[0], (6, 8)).shape == (6, 8)


# ---------------------------------------------------------------------------------------------------- local explanation
def test_local_explanation_array_colours_the_active_patch():
    image = np.zeros((3, 8, 8))  # black image, channel-first
    maps = np.zeros((3, 2, 2))
    maps[2, 0, 0] = 1.0  # feature 2 active top-left only
    out = explain.local_explanation_array(image, maps, [2], alpha=1.0)
    assert out.shape == (8, 8, 3)
    # a top-left pixel away from the bilinear edge gets full feature-2 colour; the bottom-right stays black
    np.testing.assert_allclose(out[0, 0], explain.feature_colours([2])[0])
    np.testing.assert_allclose(out[7, 7], 0.0)
    # no features: the image itself
    np.testing.assert_allclose(explain.local_explanation_array(image, maps, []), 0.0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        explain.local_explanation_array(image, maps, [3])


def test_local_explanation_figure_and_given_axes():
    image = np.random.default_rng(0).random((8, 8, 3))
    maps = np.random.default_rng(1).random((4, 2, 2))
    n_open = len(plt.get_fignums())
    fig = explain.local_explanation(image, maps, [0, 3], title="x")
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and len(fig.axes[0].images) == 1
    assert len(fig.axes[0].get_legend().get_texts()) == 2
    assert len(plt.get_fignums()) == n_open  # nothing registered with pyplot, nothing closed
    outer = Figure()
    ax = outer.add_subplot()
    assert explain.local_explanation(torch.tensor(image), torch.tensor(maps), [1], ax=ax) is outer


# ---------------------------------------------------------------------------------------------------- CAM
def test_cam_hand_computed():
    maps = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 1.0]]])
    g = explain.cam(maps, np.array([1.0, -2.0]))  # [[1, 2], [3, 2]] -> shift 1 -> /2
    np.testing.assert_allclose(g, [[0.0, 0.5], [1.0, 0.5]])
    np.testing.assert_allclose(explain.cam(np.ones((2, 2, 2)), np.ones(2)), 0.0)  # constant -> zeros
    with pytest.raises(ValueError, match=r"\(2, 2, 2\).*\(3,\)"):
        explain.cam(maps, np.ones(3))
    fig = explain.cam_figure(np.zeros((3, 8, 8)), g)
    assert len(fig.axes) == 1 and len(fig.axes[0].images) == 2


# ---------------------------------------------------------------------------------------------------- class pairs
def test_class_pair_features_and_figure():
    assignment = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)
    selected = [10, 20, 30, 40]
    assert explain.class_pair_features(assignment, selected, 0, 1) == {
        "shared": [20],
        "only_c1": [10],
        "only_c2": [30],
    }
    assert explain.class_pair_features(assignment, None, 0, 2) == {"shared": [], "only_c1": [0, 1], "only_c2": [2, 3]}
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        explain.class_pair_features(assignment, None, 0, 3)
    maps = np.random.default_rng(0).random((4, 2, 2))
    fig = explain.class_pair_figure(
        np.zeros((8, 8, 3)), maps, np.ones((8, 8, 3)), maps, assignment, None, 0, 1, class_names=["a", "b", "c"]
    )
    assert len(fig.axes) == 2 and all(len(ax.images) == 1 for ax in fig.axes)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["0", "1 (shared)"] and fig.axes[1].get_title() == "b"


def test_most_confused_pairs_counts_both_directions():
    y_true = np.array([0, 1, 1, 2, 2, 2, 0, 3])
    y_pred = np.array([1, 0, 0, 1, 1, 2, 0, 3])
    # (0,1): 0->1 once, 1->0 twice = 3; (1,2): 2->1 twice = 2
    assert explain.most_confused_pairs(y_true, y_pred, 5) == [(0, 1, 3), (1, 2, 2)]
    assert explain.most_confused_pairs(y_true, y_pred, 1) == [(0, 1, 3)]
    assert explain.most_confused_pairs(y_true, y_true, 3) == []


# ---------------------------------------------------------------------------------------------------- prototypes
def test_top_activating_patches_array_and_batches_agree():
    maps = np.zeros((4, 2, 3, 3))
    maps[0, 1, 2, 1] = 5.0
    maps[0, 1, 0, 0] = 4.0
    maps[2, 1, 1, 2] = 3.0
    maps[3, 0, 0, 0] = 9.0  # other feature, ignored
    expected = [(0, 2, 1, 5.0), (2, 1, 2, 3.0)]
    assert explain.top_activating_patches(maps, 1, 2) == expected
    assert explain.top_activating_patches(iter([maps[:1], maps[1:3], maps[3:]]), 1, 2) == expected
    assert explain.top_activating_patches(maps, 1, 2, one_per_image=False) == [(0, 2, 1, 5.0), (0, 0, 0, 4.0)]
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        explain.top_activating_patches(maps, 2, 1)


def test_top_patches_figure_axes():
    images = [np.random.default_rng(i).random((3, 12, 12)) for i in range(3)]
    patches = [(0, 1, 1, 2.0), (2, 0, 3, 1.0), (1, 3, 0, 0.5)]
    fig = explain.top_patches_figure(images, patches, 4, ncols=2)
    assert len(fig.axes) == 4  # 2 x 2 grid, last one blank
    assert sum(len(ax.images) for ax in fig.axes) == 3
    # crop of (0, 1, 1) with context 1 on a 4x4 grid of 3-pixel patches covers pixels 0..8
    assert fig.axes[0].images[0].get_array().shape[:2] == (9, 9)


def test_nearest_training_image_within_class():
    cls_train = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [10.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    q = np.array([1.0, 0.05])
    assert explain.nearest_training_image(q, cls_train, labels, 1) == 3  # cosine, not distance
    assert explain.nearest_training_image(q, cls_train, labels, 0) == 0
    with pytest.raises(ValueError, match="label 5"):
        explain.nearest_training_image(q, cls_train, labels, 5)


# ---------------------------------------------------------------------------------------------------- failures
def test_failure_categories_partition_and_pick_examples():
    y = np.array([0, 1, 2, 3, 4, 5])
    qpm = np.array([0, 1, 9, 9, 4, 9])
    dense = np.array([9, 1, 9, 3, 9, 5])
    cats = explain.failure_categories(y, qpm, dense)
    np.testing.assert_array_equal(cats["qpm_right_dense_wrong"], [0, 4])
    np.testing.assert_array_equal(cats["both_right"], [1])
    np.testing.assert_array_equal(cats["both_wrong"], [2])
    np.testing.assert_array_equal(cats["dense_right_qpm_wrong"], [3, 5])
    picks = explain.pick_examples(cats, 1, seed=0)
    assert {k: len(v) for k, v in picks.items()} == {k: 1 for k in explain.FAILURE_CATEGORIES}
    assert all(set(picks[k]) <= set(cats[k]) for k in cats)
    again = explain.pick_examples(cats, 1, seed=0)
    assert all(np.array_equal(picks[k], again[k]) for k in cats)
    np.testing.assert_array_equal(explain.pick_examples(cats, 10)["dense_right_qpm_wrong"], [3, 5])
