"""Tests for qpmlib.metrics: closed-form values on tiny synthetic maps (reference_spec §5)."""

import math

import numpy as np
import pytest
import torch

from qpmlib import metrics


def one_hot_map(h, w, i, j, d=1, n=1):
    f = np.zeros((n, d, h, w))
    f[:, :, i, j] = 1.0
    return f


# ---------------------------------------------------------------------------------------------------- accuracy
def test_accuracy_from_logits_and_predictions():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    assert metrics.accuracy(logits, labels) == pytest.approx(0.75)
    assert metrics.accuracy(torch.tensor([0, 1, 0, 1]), torch.tensor(labels)) == pytest.approx(0.75)


def test_accuracy_rejects_mismatch_and_empty():
    with pytest.raises(ValueError, match="shape"):
        metrics.accuracy(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy(np.zeros(0), np.zeros(0))


# ---------------------------------------------------------------------------------------------------- plausibility
def test_plausibility_one_hot_inside_outside_and_dilation():
    mask = np.zeros((1, 5, 5), bool)
    mask[0, 2, 2] = True
    w = np.ones((1, 1))
    inside = one_hot_map(5, 5, 2, 2)
    adjacent = one_hot_map(5, 5, 2, 3)
    far = one_hot_map(5, 5, 0, 0)
    # subtract_min of a one-hot map leaves it unchanged (its minimum is 0)
    assert metrics.plausibility(inside, w, mask) == pytest.approx(1.0)
    assert metrics.plausibility(far, w, mask) == pytest.approx(0.0)
    assert metrics.plausibility(adjacent, w, mask, dilate=True) == pytest.approx(1.0)
    assert metrics.plausibility(adjacent, w, mask, dilate=False) == pytest.approx(0.0)
    # diagonal neighbour is inside the 3x3 square too
    assert metrics.plausibility(one_hot_map(5, 5, 1, 1), w, mask) == pytest.approx(1.0)


def test_plausibility_weighted_sum_hand_computed():
    # two features: feature 0 on the object with weight 1, feature 1 off the object with weight 3
    f = np.zeros((1, 2, 4, 4))
    f[0, 0, 0, 0] = 1.0
    f[0, 1, 3, 3] = 1.0
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, 0] = True
    w = np.array([[1.0, 3.0]])
    assert metrics.plausibility(f, w, mask, dilate=False) == pytest.approx(1 / 4)


def test_plausibility_subtract_min_vs_paper_form():
    # constant map: min-shift removes everything -> defined score 0; paper form keeps it -> mask share
    f = np.full((1, 1, 4, 4), 2.0)
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :] = True  # 8 of 16 positions
    w = np.ones((1, 1))
    assert metrics.plausibility(f, w, mask, dilate=False, subtract_min=True) == 0.0
    assert metrics.plausibility(f, w, mask, dilate=False, subtract_min=False) == pytest.approx(0.5)
    # paper form clips negatives: -1 off-mask, +1 on-mask -> 1.0; min-shift gives 2 / (2 + 0) = 1.0 as well,
    # but with a 0 elsewhere the shift lifts it: G = [1, -1, 0, 0] -> [2, 0, 1, 1] -> 2/4
    g = np.zeros((1, 1, 2, 2))
    g[0, 0, 0, 0], g[0, 0, 0, 1] = 1.0, -1.0
    m = np.zeros((1, 2, 2), bool)
    m[0, 0, 0] = True
    assert metrics.plausibility(g, w, m, dilate=False, subtract_min=False) == pytest.approx(1.0)
    assert metrics.plausibility(g, w, m, dilate=False, subtract_min=True) == pytest.approx(0.5)


def test_plausibility_scores_defined_values_and_mean():
    f = np.concatenate([one_hot_map(4, 4, 0, 0), np.zeros((1, 1, 4, 4)), one_hot_map(4, 4, 1, 1)])
    masks = np.zeros((3, 4, 4), bool)
    masks[0, 0, 0] = True  # hit
    masks[1, 0, 0] = True  # all-zero map -> 0
    # sample 2: empty mask -> 0
    scores = metrics.plausibility_scores(f, np.ones((3, 1)), masks, dilate=False)
    np.testing.assert_allclose(scores, [1.0, 0.0, 0.0])
    assert metrics.plausibility(f, np.ones((3, 1)), masks, dilate=False) == pytest.approx(1 / 3)
    # torch input gives the same
    t = metrics.plausibility_scores(torch.tensor(f), torch.ones(3, 1), torch.tensor(masks), dilate=False)
    np.testing.assert_allclose(t, scores)


def test_plausibility_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        metrics.plausibility(np.zeros((2, 3, 4, 4)), np.zeros((2, 4)), np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 5, 5\)"):
        metrics.plausibility(np.zeros((2, 3, 4, 4)), np.zeros((2, 3)), np.zeros((2, 5, 5), bool))
    with pytest.raises(ValueError, match="NaN"):
        metrics.plausibility(np.full((1, 1, 2, 2), np.nan), np.ones((1, 1)), np.ones((1, 2, 2), bool))


# ---------------------------------------------------------------------------------------------------- SID@k
def test_sid_identical_maps_gives_one_over_k():
    rng = np.random.default_rng(0)
    base = rng.random((1, 1, 4, 4))
    f = np.repeat(base, 3, axis=1)  # three identical maps
    assert metrics.sid_at_k(f, np.ones((1, 3)), k=3) == pytest.approx(1 / 3)


def test_sid_disjoint_one_hot_maps_closed_form():
    # D=2 one-hot maps of height a at distinct positions on P positions. Normalised: a / (a/P) = P at the hot
    # spot, 0 elsewhere; softmax gives e^P / (e^P + P - 1) at the hot spot and 1 / (e^P + P - 1) elsewhere.
    p = 4
    f = np.zeros((1, 2, 2, 2))
    f[0, 0, 0, 0] = 5.0
    f[0, 1, 1, 1] = 5.0
    z = math.exp(p) + p - 1
    expected = (2 * math.exp(p) / z + 2 / z) / 2  # two hot spots + two cold positions, divided by k=2
    assert metrics.sid_at_k(f, np.ones((1, 2)), k=2) == pytest.approx(expected)


def test_sid_picks_top_weighted_features_and_skips_ineligible_samples():
    f = np.zeros((2, 3, 2, 2))
    f[:, 0] = 1.0  # constant map -> uniform softmax
    f[:, 1] = 1.0
    f[:, 2, 0, 0] = 5.0
    # sample 0 weights pick features 0 and 1 (identical -> 1/2); feature 2 has a negative weight
    # sample 1 has one non-zero weight only and is excluded for k=2
    w = np.array([[2.0, 1.0, -1.0], [0.0, 0.0, 1.0]])
    assert metrics.sid_at_k(f, w, k=2) == pytest.approx(0.5)


def test_sid_no_eligible_sample_raises_with_hint():
    with pytest.raises(ValueError, match="k <= 1"):
        metrics.sid_at_k(np.ones((2, 3, 2, 2)), np.array([[1.0, 0, 0], [0, 1.0, 0]]), k=2)
    with pytest.raises(ValueError, match="between 1 and D"):
        metrics.sid_at_k(np.ones((1, 3, 2, 2)), np.ones((1, 3)), k=4)


def test_sid_all_zero_maps_is_finite():
    # zero maps: scale clamps at 1e-5, softmax uniform, identical maps -> 1/k
    assert metrics.sid_at_k(np.zeros((2, 5, 3, 3)), np.ones((2, 5)), k=5) == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------------- tau
def test_class_independence_single_class_features_is_zero():
    labels = np.array([0, 0, 1, 1, 2, 2])
    feats = np.eye(3)[labels] * 2.0  # feature c active only in class c
    assert metrics.class_independence(feats, labels) == pytest.approx(0.0)


def test_class_independence_evenly_spread_feature():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    feats = np.array([[1.0], [0.0]] * 4)  # one active sample in every class
    assert metrics.class_independence(feats, labels) == pytest.approx(1 - 1 / 4)
    # mixing: one class-specific feature (0) and one evenly spread (3/4) -> tau = 3/8
    both = np.hstack([(labels == 0).astype(float)[:, None], feats])
    assert metrics.class_independence(both, labels) == pytest.approx(3 / 8)


def test_class_independence_min_shift_and_constant_feature():
    labels = np.array([0, 1])
    # shifting a feature by a constant changes nothing (Eq. 15)
    assert metrics.class_independence(np.array([[5.0], [3.0]]), labels) == pytest.approx(0.0)
    # a constant feature has no mass: phi = 0, contributes 1
    assert metrics.class_independence(np.array([[7.0], [7.0]]), labels) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------- contrastiveness
def bimodal_and_unimodal(n=600, seed=0):
    rng = np.random.default_rng(seed)
    bimodal = np.concatenate([rng.normal(0, 0.1, n // 2), rng.normal(10, 0.1, n // 2)])
    unimodal = rng.normal(0, 1, n)
    return bimodal, unimodal


@pytest.mark.parametrize("method", metrics.CONTRASTIVENESS_METHODS)
def test_contrastiveness_bimodal_vs_unimodal(method):
    bimodal, unimodal = bimodal_and_unimodal()
    assert metrics.contrastiveness(bimodal[:, None], method=method) > 0.99
    assert metrics.contrastiveness(unimodal[:, None], method=method) < 0.6
    ov = metrics.contrastiveness_overlaps(np.stack([bimodal, unimodal], 1), method=method)
    assert ov[0] < 0.01 and ov[1] > 0.4


def test_contrastiveness_batched_matches_sklearn_and_repeats():
    rng = np.random.default_rng(1)
    n = 800
    x = np.stack(
        [
            np.concatenate([rng.normal(0, 1, n // 2), rng.normal(4, 1.5, n // 2)]),
            np.maximum(rng.normal(0, 1, n), 0),  # ReLU feature: many exact zeros
            rng.exponential(1.0, n),
            rng.uniform(0, 1, n),
        ],
        axis=1,
    )
    a = metrics.contrastiveness_overlaps(x, seed=0, method="batched")
    b = metrics.contrastiveness_overlaps(x, seed=0, method="sklearn")
    np.testing.assert_allclose(a, b, atol=5e-3)
    assert metrics.contrastiveness(x, seed=3, method="sklearn") == metrics.contrastiveness(x, seed=3, method="sklearn")
    assert metrics.contrastiveness(x) == metrics.contrastiveness(x)


def test_contrastiveness_constant_feature_has_overlap_one():
    x = np.stack([np.full(50, 3.0), np.r_[np.zeros(25), np.full(25, 9.0)]], axis=1)
    ov = metrics.contrastiveness_overlaps(x)
    assert ov[0] == 1.0 and ov[1] < 1e-6
    assert metrics.contrastiveness(x) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="valid: batched, sklearn"):
        metrics.contrastiveness(x, method="gmm")


# ---------------------------------------------------------------------------------------------------- patch ctx
def test_patch_contextualisation_parallel_and_orthogonal():
    cls = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    same = np.repeat(cls[:, None, :], 4, axis=1)
    assert metrics.patch_contextualisation(same, cls) == pytest.approx(1.0)
    ortho = np.zeros((2, 4, 3))
    ortho[:, :, 2] = 1.0
    assert metrics.patch_contextualisation(ortho, cls) == pytest.approx(0.0, abs=1e-7)
    # patches whose mean is cls, although each patch differs: (1, 1, 0) and (1, -1, 0) average to (1, 0, 0)
    mixed = np.array([[[1.0, 1.0, 0.0], [1.0, -1.0, 0.0]]])
    assert metrics.patch_contextualisation(mixed, cls[:1]) == pytest.approx(1.0)


def test_patch_contextualisation_memmap_equals_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(37, 5, 8)).astype(np.float16)
    cls = rng.normal(size=(37, 8)).astype(np.float16)
    mm = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float16, shape=patches.shape)
    mm[:] = patches
    mm.flush()
    mm = np.load(tmp_path / "p.npy", mmap_mode="r")
    in_memory = metrics.patch_contextualisation(patches, cls, batch_size=1000)
    streamed = metrics.patch_contextualisation(mm, cls, batch_size=4)
    assert streamed == pytest.approx(in_memory, abs=1e-6)
    p32 = patches.astype(np.float64).mean(1)
    c32 = cls.astype(np.float64)
    direct = np.mean((p32 * c32).sum(1) / np.linalg.norm(p32, axis=1) / np.linalg.norm(c32, axis=1))
    assert in_memory == pytest.approx(direct, abs=1e-5)


def test_patch_contextualisation_shape_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        metrics.patch_contextualisation(np.zeros((2, 5, 3)), np.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------------- compactness
def test_compactness_counts():
    w = np.zeros((3, 6))
    w[0, [0, 1]] = 1
    w[1, [1, 2]] = 1
    w[2, [2, 3, 4]] = 0.5
    assert metrics.compactness(w) == {"n_features": 5, "n_per_class": pytest.approx(7 / 3)}


# ---------------------------------------------------------------------------------------------------- part alignment
def test_part_alignment_hand_computed():
    f = np.zeros((1, 3, 2, 2))
    f[0, 0, 0, 0] = 2.0  # all on part 0
    f[0, 1, 0, 1] = 1.0  # half on part 1 (patch half covered), rest background
    f[0, 1, 1, 1] = 1.0
    f[0, 1, 1, 0] = -4.0  # negative activation ignored
    # feature 2: all zero -> 0, best part -1
    parts = np.zeros((1, 2, 2, 2))
    parts[0, 0, 0, 0] = 1.0
    parts[0, 1, 0, 1] = 1.0
    parts[0, 1, 1, 1] = 0.5
    res = metrics.part_alignment(f, parts)
    np.testing.assert_allclose(res.per_feature, [1.0, 0.75, 0.0])
    np.testing.assert_array_equal(res.best_part, [0, 1, -1])
    assert res.score == pytest.approx(1.75 / 3)
    with pytest.raises(ValueError, match=r"\(1, 3, 2, 2\).*\(1, 2, 3, 3\)"):
        metrics.part_alignment(f, np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.part_alignment(f, parts * 3)


def test_part_peak_alignment_closed_form():
    # 4 images, 2x2 grid; part 0 covers patch (0, 0), part 1 covers patch (0, 1), the bottom row is background
    parts = np.zeros((4, 2, 2, 2))
    parts[:, 0, 0, 0] = 1.0
    parts[:, 1, 0, 1] = 1.0
    f = np.full((4, 5, 2, 2), 0.1)  # a positive floor everywhere
    f[:, 0, 0, 1] = 2.0  # feature 0 always peaks on part 1
    f[:2, 1, 0, 0] = 3.0  # feature 1 peaks half the time on part 0 ...
    f[2:, 1, 0, 1] = 3.0  # ... and half the time on part 1
    f[:, 2, 1, 0] = 5.0  # feature 2 always peaks on background
    f[:, 3] = -1.0  # feature 3 is never positive
    f[:, 4, 0, 1] = 1.0  # feature 4 peaks on part 1 where it is positive (images 0, 1) ...
    f[2:, 4] = -2.0  # ... and is never positive in images 2, 3, which do not count
    res = metrics.part_peak_alignment(f, parts)
    np.testing.assert_allclose(res.per_feature, [1.0, 0.5, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(res.best_part, [1, 0, 0, -1, 1])  # a tie between parts takes the first
    assert res.score == pytest.approx(2.5 / 5)
    # the mass-based twin is pulled down by the background floor of the same maps
    assert metrics.part_alignment(f, parts).per_feature[0] == pytest.approx(2.0 / 2.3)


def test_part_peak_alignment_weights_images_by_peak_value():
    parts = np.zeros((2, 2, 2, 2))
    parts[:, 0, 0, 0] = 1.0
    parts[:, 1, 0, 1] = 1.0
    f = np.zeros((2, 1, 2, 2))
    f[0, 0, 0, 0] = 3.0  # a strong peak on part 0
    f[1, 0, 0, 1] = 1.0  # a weak peak on part 1
    res = metrics.part_peak_alignment(f, parts)
    np.testing.assert_allclose(res.per_feature, [0.75])
    np.testing.assert_array_equal(res.best_part, [0])


def test_part_peak_alignment_ties_and_coverage_fractions():
    parts = np.zeros((1, 1, 2, 2))
    parts[0, 0, 0, 0] = 0.25  # a part that covers a quarter of the first patch
    f = np.ones((1, 2, 2, 2))  # feature 0: all patches tie, the first (row-major) wins
    f[0, 1, 1, 1] = 1.5  # feature 1 peaks on the uncovered last patch
    res = metrics.part_peak_alignment(torch.tensor(f), torch.tensor(parts))
    np.testing.assert_allclose(res.per_feature, [0.25, 0.0])
    np.testing.assert_array_equal(res.best_part, [0, 0])


def test_part_peak_alignment_rejects_bad_inputs():
    f = np.ones((1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"\(1, 3, 2, 2\).*\(1, 2, 3, 3\)"):
        metrics.part_peak_alignment(f, np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"\(N, D, H, W\)"):
        metrics.part_peak_alignment(np.ones((3, 2, 2)), np.zeros((1, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.part_peak_alignment(f, np.full((1, 2, 2, 2), 1.5))
    with pytest.raises(ValueError, match="NaN"):
        metrics.part_peak_alignment(np.full((1, 3, 2, 2), np.nan), np.zeros((1, 2, 2, 2)))
