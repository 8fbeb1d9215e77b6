"""Tests for qpmlib.heads.named_features and qpmlib.heads.parts: names, explanations, agreement, part truth."""

import itertools

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
    region_areas,
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


def test_features_are_named_after_the_region_whose_share_most_exceeds_its_area():
    feats, parts = _maps()  # areas: head 1/2, wing 1/4, background 1/4
    shares = part_shares(feats, parts)
    assert np.allclose(shares[0], [1, 0, 0]) and np.allclose(shares[1], [0, 0.25, 0.75])
    assert np.allclose(shares[2], 0)
    assert np.allclose(region_areas(parts), [0.5, 0.25, 0.25])
    names = name_features(feats, parts, ["head", "wing"])
    assert names.names == ["head", BACKGROUND, UNNAMED]
    # head: (1 - 1/2) / (1 - 1/2); background: (3/4 - 1/4) / (1 - 1/4)
    assert np.allclose(names.confidence, [1.0, 2 / 3, 0.0])
    table = names.table(feature_ids=[10, 11, 12])
    assert list(table.columns) == ["feature", "name", "confidence", "share", "area", "head", "wing", BACKGROUND]
    assert table["feature"].tolist() == [10, 11, 12]
    assert np.allclose(table["share"][:2], [1.0, 0.75]) and np.allclose(table["area"][:2], [0.5, 0.25])
    assert np.isnan(table.loc[2, "share"]) and np.isnan(table.loc[2, "area"])


def _small_part_on_background():
    """Four 5 x 5 images of background with a one-patch "eye" and a 2 x 2 "wing" (areas 1/25, 4/25, 20/25)."""
    parts = np.zeros((4, 2, 5, 5), np.float32)
    parts[:, 0, 0, 0] = 1
    parts[:, 1, 3:, 3:] = 1
    return parts


def test_closed_form_confidences():
    parts = _small_part_on_background()
    feats = np.zeros((4, 4, 5, 5), np.float32)
    feats[:, 0] = 0.7  # uniform over the image: no better than chance anywhere
    feats[:, 1, 0, 0] = 3.0  # all on the small eye
    feats[:, 2, 1:3, :3] = 1.0  # background only
    feats[:, 3] = 0.3  # mostly on the background, but its excess is on the wing
    feats[:, 3, 3:, 3:] = 1.0
    names = name_features(feats, parts, ["eye", "wing"])
    assert names.confidence[0] == pytest.approx(0.0, abs=1e-12)
    assert names.names[1:] == ["eye", BACKGROUND, "wing"]
    assert names.confidence[1:3] == pytest.approx([1.0, 1.0])
    share = 4.0 / (4.0 + 21 * 0.3)  # wing mass over total mass per image
    assert names.shares[3, 2] > names.shares[3, 1] > names.areas[1]  # the background holds the largest raw share
    assert names.confidence[3] == pytest.approx((share - 4 / 25) / (1 - 4 / 25))


def test_part_shares_match_part_alignment():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(5, 4, 4))
    parts = np.stack([(labels == k) for k in range(1, 4)], axis=1).astype(np.float32)
    feats = rng.random((5, 6, 4, 4)).astype(np.float32) * (labels[:, None] > 0) + 0.01
    shares = part_shares(feats, parts)
    align = qmetrics.part_alignment(feats, parts)
    assert np.allclose(shares[:, :-1].max(axis=1), align.per_feature)
    assert np.allclose(shares.sum(axis=1), 1) and np.isclose(region_areas(parts).sum(), 1)


def test_bad_inputs_are_named():
    feats, parts = _maps()
    with pytest.raises(ValueError, match="same images"):
        part_shares(feats[:1], parts)
    with pytest.raises(ValueError, match="coverage fractions"):
        part_shares(feats, parts * 2)
    with pytest.raises(ValueError, match="coverage fractions"):
        region_areas(-parts)
    with pytest.raises(ValueError, match="2 part maps but 3 part names"):
        name_features(feats, parts, ["a", "b", "c"])


def test_class_explanations_in_words():
    feats, parts = _maps()
    names = name_features(feats, parts, ["head", "wing"])
    text = class_explanations(np.array([[1, 1, 0], [0, 0, 0]]), names, ["Red_bird", "Blue_bird"], feature_ids=[4, 9, 7])
    assert text == ["class 0 (Red_bird) = head #4 (1.00) + background #9 (0.67)", "class 1 (Blue_bird) = nothing"]


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


def _named_maps():
    """Four features, each on one patch of a 2 x 2 image: head, belly, crest and the background."""
    feats = np.zeros((1, 4, 2, 2), np.float32)
    parts = np.zeros((1, 3, 2, 2), np.float32)
    for j, (y, x) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        feats[0, j, y, x] = 1.0
    parts[0, 0, 0, 0] = parts[0, 1, 0, 1] = parts[0, 2, 1, 0] = 1  # head, belly, crest; (1, 1) background
    return feats, parts, ["head", "belly", "crest"]


def test_agreement_scores_the_words_against_the_defining_parts():
    names = name_features(*_named_maps())
    assert names.names == ["head", "belly", "crest", BACKGROUND]
    assignment = np.array([[1, 1, 0, 0],   # A: head (defining) + belly -> precision 1/2, recall 1/1
                           [0, 0, 0, 1],   # B: background only -> 0, 0
                           [0, 1, 1, 1]])  # C: belly, crest (defining; back is not named) + background
    out = attribute_agreement(assignment, names, _classes())
    assert out.per_class["precision"].tolist() == pytest.approx([0.5, 0.0, 2 / 3])
    assert out.per_class["recall"].tolist() == pytest.approx([1.0, 0.0, 2 / 3])
    assert out.precision == pytest.approx((0.5 + 0 + 2 / 3) / 3) and out.mode == "nearest"
    assert out.per_class.loc[2, "defining_parts"] == ["back", "belly", "crest"]
    # chance: of the 4 features, one is named head, belly, crest each; A draws 2, B 1, C 3 at random
    assert out.per_class["chance_precision"].tolist() == pytest.approx([1 / 4, 1 / 4, 2 / 4])
    assert out.per_class["chance_recall"].tolist() == pytest.approx([1 - 3 / 6, 1 - 3 / 4, (0 + 3 / 4 + 3 / 4) / 3])
    assert out.chance_precision == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="assignment must be"):
        attribute_agreement(assignment[:2], names, _classes())


def test_chance_agreement_is_the_mean_over_all_random_draws():
    names = name_features(*_named_maps())
    assignment = np.array([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0]])
    out = attribute_agreement(assignment, names, _classes(), mode="visible")
    drawn = []
    for label, k in enumerate(assignment.sum(axis=1)):  # every k-subset of the 4 features, equally likely
        draws = [attribute_agreement(_one_row(label, cols, 3), names, _classes(), mode="visible").per_class.loc[label]
                 for cols in itertools.combinations(range(4), int(k))]
        drawn.append([np.mean([d["precision"] for d in draws]), np.mean([d["recall"] for d in draws])])
    assert out.per_class[["chance_precision", "chance_recall"]].to_numpy() == pytest.approx(np.array(drawn))


def _one_row(label: int, cols, n_classes: int) -> np.ndarray:
    assignment = np.zeros((n_classes, 4), int)
    assignment[label, list(cols)] = 1
    return assignment


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
