"""Tests for qpmlib.heads.named_features and qpmlib.heads.parts: names, explanations, agreement, part truth."""

import numpy as np
import pandas as pd
import pytest

from data_fixtures import make_cub
from qpmlib import metrics as qmetrics
from qpmlib.data import synthbirds
from qpmlib.data.synthbirds import ATTRIBUTES
from qpmlib.heads.named_features import (
    BACKGROUND,
    UNNAMED,
    attribute_agreement,
    class_explanations,
    defining_attributes,
    name_features,
    part_shares,
)
from qpmlib.heads.parts import keypoint_part_maps, part_truth, require_part_truth


def _maps():
    """Two images on a 2 x 2 grid, parts "head" (top row) and "wing" (bottom-left), bottom-right background."""
    parts = np.zeros((2, 2, 2, 2), np.float32)
    parts[:, 0, 0, :] = 1
    parts[:, 1, 1, 0] = 1
    feats = np.zeros((2, 3, 2, 2), np.float32)
    feats[:, 0, 0, :] = 2.0  # feature 0: on the head only
    feats[0, 1, 1, 0] = 1.0  # feature 1: one unit on the wing, three on the background
    feats[:, 1, 1, 1] = 1.5
    feats[:, 2] = -1.0  # feature 2: never positive
    return feats, parts


def test_features_are_named_after_the_region_with_most_activation():
    feats, parts = _maps()
    shares = part_shares(feats, parts)
    assert np.allclose(shares[0], [1, 0, 0]) and np.allclose(shares[1], [0, 0.25, 0.75])
    assert np.allclose(shares[2], 0)
    names = name_features(feats, parts, ["head", "wing"])
    assert names.names == ["head", BACKGROUND, UNNAMED]
    assert np.allclose(names.confidence, [1.0, 0.75, 0.0])
    table = names.table(feature_ids=[10, 11, 12])
    assert list(table.columns) == ["feature", "name", "confidence", "head", "wing", BACKGROUND]
    assert table["feature"].tolist() == [10, 11, 12]


def test_confidence_is_part_alignment_when_a_part_wins():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(5, 4, 4))
    parts = np.stack([(labels == k) for k in range(1, 4)], axis=1).astype(np.float32)
    feats = rng.random((5, 6, 4, 4)).astype(np.float32) * (labels[:, None] > 0) + 0.01
    names = name_features(feats, parts, ["a", "b", "c"])
    align = qmetrics.part_alignment(feats, parts)
    won = [j for j, n in enumerate(names.names) if n != BACKGROUND]
    assert won and np.allclose(names.confidence[won], align.per_feature[won])
    assert [names.names[j] for j in won] == [["a", "b", "c"][align.best_part[j]] for j in won]


def test_bad_inputs_are_named():
    feats, parts = _maps()
    with pytest.raises(ValueError, match="same images"):
        part_shares(feats[:1], parts)
    with pytest.raises(ValueError, match="coverage fractions"):
        part_shares(feats, parts * 2)
    with pytest.raises(ValueError, match="2 part maps but 3 part names"):
        name_features(feats, parts, ["a", "b", "c"])


def test_class_explanations_in_words():
    feats, parts = _maps()
    names = name_features(feats, parts, ["head", "wing"])
    text = class_explanations(np.array([[1, 1, 0], [0, 0, 0]]), names, ["Red_bird", "Blue_bird"], feature_ids=[4, 9, 7])
    assert text == ["class 0 (Red_bird) = head #4 (1.00) + background #9 (0.75)", "class 1 (Blue_bird) = nothing"]


def _classes() -> pd.DataFrame:
    base = {a: vals[0] for a, vals in ATTRIBUTES.items()}  # crest "none", eye_ring "none"
    a = dict(base, label=0, name="A")
    b = dict(base, label=1, name="B", head_colour=ATTRIBUTES["head_colour"][1])  # differs from A in the head
    c = dict(base, label=2, name="C", belly_colour=ATTRIBUTES["belly_colour"][1],
             back_colour=ATTRIBUTES["back_colour"][1], crest="crested")  # 3 from A, 4 from B
    return pd.DataFrame([a, b, c])


def test_defining_attributes_are_what_separates_the_nearest_classes():
    nearest = defining_attributes(_classes())
    assert nearest == {0: ["head_colour"], 1: ["head_colour"], 2: ["belly_colour", "back_colour", "crest"]}
    visible = defining_attributes(_classes(), "visible")
    assert "crest" not in visible[0] and "eye_ring" not in visible[0] and "crest" in visible[2]
    with pytest.raises(ValueError, match="unknown mode"):
        defining_attributes(_classes(), "all")


def test_agreement_scores_the_words_against_the_defining_parts():
    feats = np.zeros((1, 4, 2, 2), np.float32)
    parts = np.zeros((1, 3, 2, 2), np.float32)
    for j, (y, x) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        feats[0, j, y, x] = 1.0
    parts[0, 0, 0, 0] = parts[0, 1, 0, 1] = parts[0, 2, 1, 0] = 1  # head, belly, crest; (1, 1) background
    names = name_features(feats, parts, ["head", "belly", "crest"])
    assert names.names == ["head", "belly", "crest", BACKGROUND]
    assignment = np.array([[1, 1, 0, 0],   # A: head (defining) + belly -> precision 1/2, recall 1/1
                           [0, 0, 0, 1],   # B: background only -> 0, 0
                           [0, 1, 1, 1]])  # C: belly, crest (defining; back is not named) + background
    out = attribute_agreement(assignment, names, _classes())
    assert out.per_class["precision"].tolist() == pytest.approx([0.5, 0.0, 2 / 3])
    assert out.per_class["recall"].tolist() == pytest.approx([1.0, 0.0, 2 / 3])
    assert out.precision == pytest.approx((0.5 + 0 + 2 / 3) / 3) and out.mode == "nearest"
    assert out.per_class.loc[2, "defining_parts"] == ["back", "belly", "crest"]
    with pytest.raises(ValueError, match="assignment must be"):
        attribute_agreement(assignment[:2], names, _classes())


def test_keypoint_part_maps_split_the_mask_by_the_nearest_visible_keypoint():
    masks = np.ones((1, 2, 4), bool)
    masks[0, :, 3] = False  # last column is background
    kp = np.array([[[0.1, 0.5], [0.6, 0.5], [0.9, 0.9]]])
    vis = np.array([[True, True, False]])
    maps = keypoint_part_maps(kp, vis, masks)
    assert maps.shape == (1, 3, 2, 4)
    assert maps[0, 0].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]  # centres x = 0.125 nearest to 0.1
    assert maps[0, 1].tolist() == [[0, 1, 1, 0], [0, 1, 1, 0]]
    assert not maps[0, 2].any()  # invisible keypoint


def test_part_truth_on_synthbirds_cub_and_a_dataset_without_parts(tmp_path):
    root = synthbirds.generate(tmp_path / "sb", n_classes=2, n_train=1, n_test=1, image_size=32, seed=0,
                               verbose=False)
    truth = part_truth(root, "synthbirds", [1, 3], grid=4)
    assert np.array_equal(truth.maps, synthbirds.part_maps(root, [1, 3], 4))
    assert truth.names == list(synthbirds.PART_NAMES)
    cub_root = make_cub(tmp_path / "cub")
    cub = part_truth(cub_root, "cub", [2], grid=10)  # mask all foreground; back (10, 12), beak (25.5, 8) of 30 px
    assert cub.names == ["back", "beak", "left eye"] and cub.maps.shape == (1, 3, 10, 10)
    assert cub.maps[0, 0, 4, 3] == 1 and cub.maps[0, 1, 2, 8] == 1 and not cub.maps[0, 2].any()
    assert np.allclose(cub.maps[0].sum(axis=0), 1)
    merged = part_truth(cub_root, "cub", [2], grid=10, merge_sides=True)
    assert merged.names == ["back", "beak", "eye"]
    with pytest.raises(ValueError, match="part_segmentations.*part_locs"):
        part_truth(tmp_path, "cars", [1], grid=4)
    with pytest.raises(ValueError, match="KLC needs part ground truth"):
        require_part_truth("cars", "KLC")
