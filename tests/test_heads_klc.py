"""Tests for qpmlib.heads.klc: best buddies, segment descriptors, the vote, prototype selection."""

import numpy as np
import pytest

from heads_fixtures import one_thread, planted  # noqa: F401 (one_thread is autouse)
from qpmlib import metrics as qmetrics
from qpmlib.heads.klc import (
    KLCConfig,
    KLCModel,
    best_buddies,
    fit_klc,
    klc_compactness,
    predict_klc,
    segment_descriptors,
)
from qpmlib.train import TokenData


def test_best_buddies_on_a_hand_built_correspondence():
    e = np.eye(4)
    a = np.stack([e[0], e[1], e[2] + 0.1 * e[3], e[1] + 0.5 * e[0]])  # query segments
    b = np.stack([e[1] + 0.1 * e[2], e[0], e[2] + 0.9 * e[3], e[2] + 0.5 * e[3]])  # prototype segments
    buddy_a, buddy_b, nn_a, nn_b = best_buddies(a, b)
    # a0 <-> b1 and a1 <-> b0 are mutual; a2's nearest is b3, whose nearest is a2; b2 also picks a2 (not mutual);
    # a3's nearest is b0, which prefers a1
    assert nn_a.tolist() == [1, 0, 3, 0]
    assert nn_b.tolist() == [1, 0, 2, 2]
    assert buddy_a.tolist() == [True, True, True, False]
    assert buddy_b.tolist() == [True, True, False, True]
    scaled = best_buddies(3 * a, b)  # cosine: the scale of a descriptor does not matter
    assert all(np.array_equal(x, y) for x, y in zip(scaled, (buddy_a, buddy_b, nn_a, nn_b)))
    empty = best_buddies(np.zeros((0, 4)), b)
    assert empty[0].shape == (0,) and not empty[1].any()


def test_segment_descriptors_are_coverage_weighted_means():
    patches = np.arange(8, dtype=np.float32).reshape(4, 2)  # 2 x 2 grid, D = 2
    parts = np.zeros((3, 2, 2), np.float32)
    parts[0, 0, 0], parts[0, 0, 1] = 1.0, 0.5  # part 0: patch 0 fully, patch 1 half
    parts[1, 1, 1] = 0.3  # part 1: too small
    desc, which = segment_descriptors(patches, parts, min_area=0.5)
    assert which.tolist() == [0]
    assert np.allclose(desc[0], (patches[0] + 0.5 * patches[1]) / 1.5)


def _bank() -> tuple[KLCModel, TokenData, np.ndarray]:
    """Two classes, one prototype each; the query's CLS sits between them, its segments decide."""
    e = np.eye(6, dtype=np.float32)
    grid_parts = np.zeros((2, 2, 2), np.float32)
    grid_parts[0, 0], grid_parts[1, 1] = 1, 1  # part 0 = top row, part 1 = bottom row
    model = KLCModel(
        rows=np.array([0, 1]), labels=np.array([0, 1]), cls=np.stack([e[4], e[5]]),
        segments=[np.stack([e[0], e[1]]), np.stack([e[2], e[3]])],
        segment_parts=[np.array([0, 1]), np.array([0, 1])], part_names=["head", "tail"], n_classes=2,
        config=KLCConfig(prototypes_per_class=1, top_k=2), fit_seconds=0.0)
    # query: its head looks like class 1's head, its tail like class 1's tail, CLS slightly closer to class 0
    patches = np.stack([e[2], e[2], e[3], e[3]])[None]
    query = TokenData(patches, (e[4] + 0.9 * e[5])[None], np.array([1]))
    return model, query, grid_parts[None]


def test_the_vote_follows_matched_segments_not_the_cls_ranking():
    model, query, parts = _bank()
    ev = predict_klc(model, query, parts)
    assert ev.predictions.tolist() == [1]
    assert np.allclose(ev.logits, [[0.0, 1.0]])  # both matches belong to class 1's prototype
    assert ev.weights.tolist() == [[1.0, 1.0]]  # one matched segment per part
    assert np.allclose(ev.features, [[1.0, 1.0]])  # each part's best cosine to a consulted segment


def test_semantic_filter_drops_matches_between_different_parts():
    model, query, parts = _bank()
    model.segment_parts = [np.array([0, 1]), np.array([1, 0])]  # class 1's segments carry swapped names
    assert predict_klc(model, query, parts).predictions.tolist() == [1]  # the code counts them anyway
    model.config = KLCConfig(prototypes_per_class=1, top_k=2, semantic_filter=True)
    ev = predict_klc(model, query, parts)
    # no label-consistent match is left: the most CLS-similar prototype's class (0) is predicted
    assert ev.weights.sum() == 0 and ev.predictions.tolist() == [0]


def test_fits_on_planted_parts_and_feeds_the_shared_metrics():
    pl = planted(seed=1)
    cfg = KLCConfig(prototypes_per_class=3, top_k=3)
    model = fit_klc(pl.train, pl.train_parts, ["block", "strip"], cfg)
    assert len(model.rows) == 12 and len(set(model.rows.tolist())) == 12
    assert np.array_equal(model.labels, pl.train.labels[model.rows])
    ev = predict_klc(model, pl.test, pl.test_parts)
    assert np.mean(ev.predictions == ev.labels) >= 0.8  # chance is 0.25
    assert klc_compactness(model, ev)["n_prototypes"] == 12
    masks = pl.test_parts.sum(axis=1) > 0
    assert qmetrics.plausibility(ev.feature_maps, ev.weights, masks) == pytest.approx(1.0)  # parts are the object


def test_too_many_prototypes_per_class_fail_before_fitting():
    pl = planted(n_train=3)
    with pytest.raises(ValueError, match="class 0 has only 3 training images"):
        fit_klc(pl.train, pl.train_parts, ["block", "strip"], KLCConfig(prototypes_per_class=4))
    with pytest.raises(ValueError, match="parts must be"):
        fit_klc(pl.train, pl.train_parts[:, :1], ["block", "strip"], KLCConfig(prototypes_per_class=2, top_k=2))
