"""Tests for qpmlib.figures.explanations: hand-computed arrays and figure structure (Agg, nothing shown or closed)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from qpmlib.figures import explanations  # noqa: E402
from qpmlib.runs.evaluate import TestImage  # noqa: E402


def test_feature_colours_fixed_by_id():
    c = explanations.feature_colours(25)
    assert c.shape == (25, 3)
    np.testing.assert_array_equal(c[3], explanations.feature_colours([3])[0])
    np.testing.assert_array_equal(c[3], c[3 + len(explanations.PALETTE)])  # wraps modulo the palette
    n = len(explanations.PALETTE)
    assert len({tuple(x) for x in c[:n]}) == n  # distinct within a cycle
    with pytest.raises(ValueError, match="non-negative"):
        explanations.feature_colours([-1])

def test_upsample_maps_constant_and_shape():
    maps = np.stack([np.full((2, 2), 3.0), np.arange(4.0).reshape(2, 2)])
    up = explanations.upsample_maps(maps, 4)
    assert up.shape == (2, 4, 4)
    np.testing.assert_allclose(up[0], 3.0)
    # half-pixel bilinear: output pixel 1 of 4 sits at input coordinate 0.25 between cells 0 and 1
    np.testing.assert_allclose(up[1, 0, :], [0.0, 0.25, 0.75, 1.0])
    assert explanations.upsample_maps(maps[0], (6, 8)).shape == (6, 8)

def test_local_explanation_array_colours_the_active_patch():
    image = np.zeros((3, 8, 8))  # black image, channel-first
    maps = np.zeros((3, 2, 2))
    maps[2, 0, 0] = 1.0  # feature 2 active top-left only
    out = explanations.local_explanation_array(image, maps, [2], alpha=1.0)
    assert out.shape == (8, 8, 3)
    # a top-left pixel away from the bilinear edge gets full feature-2 colour; the bottom-right stays black
    np.testing.assert_allclose(out[0, 0], explanations.feature_colours([2])[0])
    np.testing.assert_allclose(out[7, 7], 0.0)
    # no features: the image itself
    np.testing.assert_allclose(explanations.local_explanation_array(image, maps, []), 0.0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        explanations.local_explanation_array(image, maps, [3])

def test_local_explanation_figure_and_given_axes():
    image = np.random.default_rng(0).random((8, 8, 3))
    maps = np.random.default_rng(1).random((4, 2, 2))
    n_open = len(plt.get_fignums())
    fig = explanations.local_explanation(image, maps, [0, 3], title="x")
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and len(fig.axes[0].images) == 1
    assert len(fig.axes[0].get_legend().get_texts()) == 2
    assert len(plt.get_fignums()) == n_open  # nothing registered with pyplot, nothing closed
    outer = Figure()
    ax = outer.add_subplot()
    assert explanations.local_explanation(torch.tensor(image), torch.tensor(maps), [1], ax=ax) is outer

def test_top_patches_figure_axes():
    images = [np.random.default_rng(i).random((3, 12, 12)) for i in range(3)]
    patches = [(0, 1, 1, 2.0), (2, 0, 3, 1.0), (1, 3, 0, 0.5)]
    fig = explanations.top_patches_figure(images, patches, 4, ncols=2)
    assert len(fig.axes) == 4  # 2 x 2 grid, last one blank
    assert sum(len(ax.images) for ax in fig.axes) == 3
    # crop of (0, 1, 1) with context 1 on a 4x4 grid of 3-pixel patches covers pixels 0..8
    assert fig.axes[0].images[0].get_array().shape[:2] == (9, 9)


def _view(n_ids):
    maps = np.zeros((6, 4, 4))
    maps[:, 1, 2] = 3.0
    return TestImage(image=np.full((8, 8, 3), 0.5), image_id=7, label=1, prediction=2, feature_maps=maps,
                     weights=np.ones(6), feature_ids=np.arange(n_ids), selected=np.arange(10, 16))


def test_feature_maps_figure_layout():
    fig = explanations.feature_maps_figure({"without": _view(2), "with": _view(3)})
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 + 2 + 3  # one explanation per row, then 2 and 3 maps
    shown = images[1].images[0].get_array()
    assert shown.max() == pytest.approx(1.0) and shown[1, 2] == pytest.approx(1.0)  # each map / its max
    assert "predicted 2" in images[0].get_title()
    with pytest.raises(ValueError, match="empty"):
        explanations.feature_maps_figure({})
