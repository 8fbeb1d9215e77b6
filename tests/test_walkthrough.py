"""Introduction figures: token PCA, part labels, the walkthrough panel row."""

import numpy as np
import pytest

from qpmlib.figures.walkthrough import part_label_map, token_pca_rgb, walkthrough_figure


def test_token_pca_separates_two_kinds_of_patches():
    rng = np.random.default_rng(0)
    grid = 4
    base = rng.normal(size=(2, 8))
    labels = np.array([0] * 8 + [1] * 8)
    patches = base[labels] + 0.01 * rng.normal(size=(16, 8))
    rgb = token_pca_rgb(patches, grid)
    assert rgb.shape == (4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    first = rgb.reshape(16, 3)[:, 0]
    # the first component splits the two groups completely, and is scaled to exactly 0 and 1 at the extremes
    assert set(np.round(first[labels == 0])) != set(np.round(first[labels == 1]))
    assert np.isclose(first.min(), 0) and np.isclose(first.max(), 1)


def test_token_pca_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match=r"\(9, D\)"):
        token_pca_rgb(np.zeros((16, 4)), 3)


def test_part_label_map_takes_the_dominant_part_or_background():
    f = np.zeros((2, 2, 2))
    f[0, 0, 0] = 0.9  # part 1
    f[1, 0, 1] = 0.6  # part 2
    f[0, 1, 0] = 0.1  # too little: background
    assert part_label_map(f).tolist() == [[1, 2], [0, 0]]


def test_walkthrough_figure_has_one_axis_per_panel():
    rng = np.random.default_rng(1)
    fig = walkthrough_figure(
        rng.random((32, 32, 3)), rng.random((3, 28, 28)), rng.normal(size=(4, 6)), 2,
        part_fractions=rng.random((3, 2, 2)), part_names=["a", "b", "c"], feature_map=rng.random((2, 2)), feature_id=7,
    )
    assert len(fig.axes) == 5
    assert fig.axes[-1].get_title() == "adapter feature 7"
    assert len(walkthrough_figure(rng.random((8, 8, 3)), rng.random((3, 8, 8)), rng.normal(size=(4, 6)), 2).axes) == 3
