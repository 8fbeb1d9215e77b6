"""qpmlib.analysis.localisation and qpmlib.figures.localisation: paper Figs. 1 and 6."""

import numpy as np
import pytest
import torch

from qpmlib.analysis.localisation import ExplanationPair, plausibility_view
from qpmlib.figures.localisation import plausibility_figure, probe_vs_qpm_figure
from qpmlib.metrics import dilate_masks, plausibility_scores
from qpmlib.model import DinoQPM
from qpmlib.runs.evaluate import TestImage


def _square_mask(n=6, lo=2, hi=4):
    m = np.zeros((n, n), dtype=bool)
    m[lo:hi, lo:hi] = True
    return m


def test_dilate_masks_is_a_3x3_square_inside_the_border():
    m = np.zeros((2, 5, 5), dtype=bool)
    m[0, 2, 2] = True  # centre -> the 3x3 block around it
    m[1, 0, 4] = True  # corner -> 2x2, nothing beyond the border
    d = dilate_masks(m).numpy()
    expected0 = np.zeros((5, 5), dtype=bool)
    expected0[1:4, 1:4] = True
    expected1 = np.zeros((5, 5), dtype=bool)
    expected1[0:2, 3:5] = True
    np.testing.assert_array_equal(d[0], expected0)
    np.testing.assert_array_equal(d[1], expected1)


def test_plausibility_view_uses_the_metrics_arrays_and_scores():
    mask = _square_mask()  # rows/cols 2-3; M_dil covers 1-4
    maps = np.zeros((3, 6, 6))
    maps[0, 2, 3] = 4.0  # peak on the object
    maps[1, 1, 2] = 3.0  # peak on the ring the dilation adds
    maps[2, 5, 0] = 2.0  # peak in the background
    maps += 0.1  # a constant floor, removed by the min-shift
    weights = np.array([1.0, 1.0, 0.0])  # feature 2 is not the class's
    view = plausibility_view(maps, weights, mask)

    g = maps[0] + maps[1]
    g = g - g.min()  # reference_spec §5.5: min-shifted G
    np.testing.assert_allclose(view.cam, g)
    np.testing.assert_array_equal(view.dilated, dilate_masks(mask[None])[0].numpy())
    np.testing.assert_array_equal(view.margin, view.dilated & ~mask)
    assert view.margin.sum() == 16 - 4
    assert view.score == pytest.approx((g * view.dilated).sum() / g.sum())  # 7 / 7 = 1
    assert view.score == pytest.approx(1.0) and view.score_undilated == pytest.approx(4.0 / 7.0)
    assert view.score == pytest.approx(plausibility_scores(maps[None], weights[None], mask[None])[0])
    assert view.score_undilated == pytest.approx(
        plausibility_scores(maps[None], weights[None], mask[None], dilate=False)[0])
    assert view.peaks.feature.tolist() == [0, 1]  # default: the class's features
    assert view.peaks.region.tolist() == ["object", "margin"]
    every = plausibility_view(maps, weights, mask, feature_ids=[0, 1, 2])
    assert every.peaks.region.tolist() == ["object", "margin", "background"]
    assert every.peaks.iloc[2][["row", "col"]].tolist() == [5, 0]
    paper = plausibility_view(maps, weights, mask, subtract_min=False)  # the paper's form keeps the floor
    assert paper.score == pytest.approx(plausibility_scores(maps[None], weights[None], mask[None],
                                                            subtract_min=False)[0])
    assert paper.score < view.score
    with pytest.raises(ValueError, match=r"mask \(H, W\)"):
        plausibility_view(maps, weights, mask[:5])
    with pytest.raises(ValueError, match="feature ids"):
        plausibility_view(maps, weights, mask, feature_ids=[3])


def _view(maps, weights, prediction, image_id=7, label=0):
    return TestImage(image=np.full((24, 24, 3), 0.5), image_id=image_id, label=label, prediction=prediction,
                     feature_maps=maps, weights=weights, feature_ids=np.flatnonzero(weights), selected=None)


def test_linear_probe_cam_is_the_weighted_sum_of_the_patch_tokens():
    torch.manual_seed(0)
    d, side = 5, 4
    probe = DinoQPM(d, 3, n_layers=0, pooling="cls").eval()  # the f_CLS linear probe (reference_spec §6.1)
    tokens = torch.randn(1, side * side + 1, d)
    with torch.no_grad():
        out = probe(tokens)
    w, b = probe.head.weight.detach(), probe.head.bias.detach()
    torch.testing.assert_close(out.logits[0], w @ tokens[0, -1] + b)  # the probe reads the CLS token
    c = int(out.logits[0].argmax())
    probe_view = _view(out.feature_maps[0].numpy(), w[c].numpy(), c)
    qpm_maps = np.abs(np.random.default_rng(0).normal(size=(4, side, side)))
    qpm_view = _view(qpm_maps, np.array([1.0, 0.0, 1.0, 0.0]), 1)
    mask = _square_mask(side, 1, 3)
    pair = ExplanationPair(probe_view, qpm_view, mask)

    by_hand = np.einsum("d,pd->p", w[c].numpy(), tokens[0, :-1].numpy()).reshape(side, side)  # row-major patches
    by_hand = (by_hand - by_hand.min()) / (by_hand.max() - by_hand.min())
    probe_cam, qpm_cam = pair.cams()
    np.testing.assert_allclose(probe_cam, by_hand, atol=1e-6)
    qpm_hand = qpm_maps[0] + qpm_maps[2]
    np.testing.assert_allclose(qpm_cam, (qpm_hand - qpm_hand.min()) / np.ptp(qpm_hand))
    scores = pair.plausibility()
    assert scores[0] == pytest.approx(
        plausibility_scores(out.feature_maps.numpy(), w[c][None].numpy(), mask[None])[0])
    assert scores[1] == pytest.approx(plausibility_scores(qpm_maps[None], qpm_view.weights[None], mask[None])[0])
    assert ExplanationPair(probe_view, qpm_view, None).plausibility() is None

    fig = probe_vs_qpm_figure([pair, pair], class_names=["a", "b", "c"])
    axes = fig.axes
    assert len(axes) == 8
    assert axes[1].get_title(loc="left").startswith("(b) ") and f"{scores[0]:.2f}" in axes[1].get_title(loc="left")
    assert "DINO-QPM" in axes[2].get_title(loc="left") and "pred: b" in axes[2].get_title(loc="left")
    assert axes[3].get_title(loc="left") == "(d) its 2 features" and not axes[3].get_title()
    with pytest.raises(ValueError, match="no image"):
        probe_vs_qpm_figure([])


def test_plausibility_figure_marks_each_peak_by_region():
    mask = _square_mask()
    maps = np.zeros((3, 6, 6))
    maps[0, 2, 3], maps[1, 1, 2], maps[2, 5, 0] = 4.0, 3.0, 2.0
    view = plausibility_view(maps, np.ones(3), mask)
    fig = plausibility_figure(np.zeros((24, 24, 3)), view, title="example")
    ax_img, ax_cam, ax_grid = fig.axes
    markers = [line.get_marker() for line in ax_cam.get_lines()]
    assert [line.get_marker() for line in ax_grid.get_lines()] == markers
    assert markers == ["o", "^", "X"]
    assert "1 of 3 peaks" in ax_cam.get_title()
    assert f"Plausibility {view.score:.2f}" in ax_grid.get_title()
    labels = [t.get_text() for t in ax_grid.get_legend().get_texts()]
    shares = [float(t.split(": ")[1].split("%")[0]) for t in labels]
    assert shares[0] + shares[1] == pytest.approx(100 * view.score, abs=1.0)  # object + ring = the score
    assert len(ax_img.collections) == 2  # the two outlines


@pytest.mark.slow
def test_views_of_stored_runs_agree_with_the_stored_plausibility(tmp_path, monkeypatch):
    from qpmlib.analysis.localisation import image_mask, margin_example, plausibility_example, probe_vs_qpm
    from qpmlib.config import apply_overrides
    from qpmlib.runs.evaluate import split_tokens, test_image
    from qpmlib.runs.methods import run_method

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    prof = apply_overrides("smoke", {"train.dense_epochs": 1, "train.ft_epochs": 1})
    qpm, probe = run_method("dino_qpm", prof, 0), run_method("linear_probe", prof, 0)
    views = [test_image(qpm, i) for i in range(len(split_tokens(prof, "test")))]
    scores = [plausibility_view(v.feature_maps, v.weights, image_mask(qpm, v)).score for v in views]
    assert np.mean(scores) == pytest.approx(qpm.metrics["plausibility"], abs=1e-6)  # the metric, image by image
    (pair,) = probe_vs_qpm(probe, qpm, [3])
    assert pair.qpm.image_id == pair.probe.image_id == views[3].image_id
    assert pair.probe.feature_maps.shape[0] == probe.model().in_dim  # the probe's maps are the patch tokens
    index = margin_example(qpm)
    gains = [plausibility_view(v.feature_maps, v.weights, image_mask(qpm, v)) for v in views]
    gains = np.array([g.score - g.score_undilated for g in gains])
    right = np.array([v.prediction == v.label for v in views])
    pool = np.flatnonzero(right) if right.any() else np.arange(len(views))
    assert gains[index] == pytest.approx(gains[pool].max())
    shown, example = plausibility_example(qpm)
    assert shown.image_id == views[index].image_id
    assert example.score == pytest.approx(scores[index]) and example.peaks.feature.tolist() == \
        views[index].feature_ids.tolist()
