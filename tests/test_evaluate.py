"""qpmlib.runs.evaluate: the metrics every stage stores, the CAM, and one test image under a model."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from model_fixtures import class_tokens, real_head, tiny_dense

from qpmlib.figures.explanations import cam_figure
from qpmlib.model import DinoQPM, SparseHeadModel
from qpmlib.runs.evaluate import cam, maps_for_rows, model_metrics, part_peak_alignment_of
from qpmlib.train import TokenData


def test_model_metrics_keys_and_sid_threshold():
    data = class_tokens()
    weight, bias = real_head()
    weight[:, 0] = 0.0  # feature 0 unused: only two "rel" features, one per row at most two non-zeros
    model = SparseHeadModel(tiny_dense(), [0, 1, 2], weight, bias, np.zeros(3), np.ones(3)).eval()
    masks = np.ones((len(data), 2, 2), dtype=bool)
    m, ev, feats = model_metrics(model, data, data, k=2, masks=masks, seconds_per_epoch=1.5)
    assert set(m) == {"accuracy", "plausibility", "sid_at_5", "class_independence", "contrastiveness",
                      "n_features", "n_per_class", "seconds_per_epoch"}
    assert m["n_features"] == 2 and m["n_per_class"] == 2.0 and ev.logits.shape == (len(data), 3)
    assert feats.shape == (len(data), 3)
    assert m["plausibility"] == pytest.approx(1.0)  # the mask covers every patch
    assert 0.0 <= m["accuracy"] <= 1.0 and m["sid_at_5"] is not None
    assert model_metrics(model, data, data, k=3)[0]["sid_at_5"] is None  # no class has 3 weights
    assert model_metrics(model, data, data, k=2)[0]["plausibility"] is None
    parts = np.zeros((len(data), 2, 2, 2))
    parts[:, 0] = 1.0
    with_parts = model_metrics(model, data, data, k=2, parts=parts)[0]
    assert with_parts["part_alignment"] == pytest.approx(1.0)
    assert with_parts["part_peak_alignment"] == pytest.approx(1.0)  # every peak lies on part 0


def test_sid_is_none_when_only_unpredicted_classes_have_k_weights():
    # class 2 alone has 3 non-zero weights and is never predicted (paper_shapes' sparse glm heads at 200 classes
    # with 1 test image each): SID@3 averages no sample, so it is "−", not an error
    data = class_tokens()
    weight = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    bias = np.array([0.0, 0.0, -1e6], dtype=np.float32)
    model = SparseHeadModel(tiny_dense(), [0, 1, 2], weight, bias, np.zeros(3), np.ones(3)).eval()
    m, ev, _ = model_metrics(model, data, data, k=3)
    assert 2 not in set(ev.predictions.tolist())
    assert m["sid_at_5"] is None
    assert model_metrics(model, data, data, k=1)[0]["sid_at_5"] is not None


def test_cam_hand_computed():
    maps = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 1.0]]])
    g = cam(maps, np.array([1.0, -2.0]))  # [[1, 2], [3, 2]] -> shift 1 -> /2
    np.testing.assert_allclose(g, [[0.0, 0.5], [1.0, 0.5]])
    np.testing.assert_allclose(cam(np.ones((2, 2, 2)), np.ones(2)), 0.0)  # constant -> zeros
    with pytest.raises(ValueError, match=r"\(2, 2, 2\).*\(3,\)"):
        cam(maps, np.ones(3))
    fig = cam_figure(np.zeros((3, 8, 8)), g)
    assert len(fig.axes) == 1 and len(fig.axes[0].images) == 2


def test_maps_for_rows_matches_a_full_evaluation():
    from qpmlib.train import evaluate

    rng = np.random.default_rng(0)
    store = SimpleNamespace(patch_tokens=rng.normal(size=(5, 4, 3)).astype(np.float32),
                            cls=rng.normal(size=(5, 3)).astype(np.float32), labels=np.array([0, 1, 0, 1, 0]))
    torch.manual_seed(0)
    model = DinoQPM(3, 2, n_layers=1, hidden_size=4, n_features=6).eval()
    full = evaluate(model, TokenData(store.patch_tokens, store.cls, store.labels), device="cpu").feature_maps
    some = maps_for_rows(model, store, [3, 1, 3])
    assert sorted(some) == [1, 3] and some[3].shape == (6, 2, 2)
    np.testing.assert_allclose(some[3], full[3], atol=1e-6)
    np.testing.assert_allclose(some[1], full[1], atol=1e-6)
    assert maps_for_rows(model, store, []) == {}


@pytest.mark.slow
def test_test_image_sid_and_explanations_of_stored_runs(tmp_path, monkeypatch):
    from qpmlib.config import apply_overrides
    from qpmlib.figures.explanations import explanation_figure
    from qpmlib.runs.evaluate import sid_at, test_image
    from qpmlib.runs.methods import run_method

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    prof = apply_overrides("smoke", {"train.dense_epochs": 1, "train.ft_epochs": 1})
    run = run_method("dino_qpm", prof, 0)
    view = test_image(run, 1)
    grid = prof.data.image_size // 14  # tiny_vit_test has 14-px patches
    assert view.image.shape == (prof.data.image_size, prof.data.image_size, 3)
    assert 0.0 <= view.image.min() and view.image.max() <= 1.0
    assert view.feature_maps.shape == (prof.qp.n_selected, grid, grid)
    assert len(view.feature_ids) == prof.qp.n_per_class and set(np.unique(view.weights)) == {0.0, 1.0}
    assert view.prediction == int(run.predictions()["pred"].iloc[1])
    assert np.array_equal(view.selected, run.selected)
    with pytest.raises(ValueError, match="test images"):
        test_image(run, 10_000)
    assert sid_at(run, 5) is None and 0.5 <= sid_at(run, 2) <= 1.0  # 2 features per class: SID@2 in [1/2, 1]
    assert "DINO-QPM" in explanation_figure(run, 0).axes[0].get_title()
    dense = run_method("dense", prof, 0)
    assert dense.stages["dense"].path == run.stages["dense"].path
    assert explanation_figure(dense, 0).axes[0].get_title().endswith("(CAM)")
    assert sid_at(dense, 5) == dense.metrics["sid_at_5"]
    # a run stored before part_peak_alignment existed: the stored model gives the value the stage stored
    assert part_peak_alignment_of(run) == run.metrics["part_peak_alignment"]
    older = SimpleNamespace(metrics={k: v for k, v in run.metrics.items() if k != "part_peak_alignment"},
                            model=run.model, profile=run.profile)
    assert part_peak_alignment_of(older) == pytest.approx(run.metrics["part_peak_alignment"], abs=1e-6)


def test_test_masks_and_parts_are_read_once_per_process_and_read_only(monkeypatch):
    from qpmlib.config import get_profile
    from qpmlib.data import prepare
    from qpmlib.data.cub import patch_masks
    from qpmlib.data.synthbirds import part_maps
    from qpmlib.runs import evaluate

    prof = get_profile("smoke")
    root = prepare(prof.data, verbose=False)
    ids = np.array([3, 1, 2])
    test = SimpleNamespace(image_ids=ids, n_patches=16)
    evaluate._masks_and_parts.cache_clear()
    reads = []
    monkeypatch.setattr(evaluate, "patch_masks", lambda *a: reads.append(a) or patch_masks(*a))
    masks, parts = evaluate.test_masks_and_parts(prof, test)
    np.testing.assert_array_equal(masks, patch_masks(root, ids, 4))
    np.testing.assert_array_equal(parts, part_maps(root, ids, 4))
    assert masks.shape == (3, 4, 4) and parts.shape[0] == 3 and parts.shape[2:] == (4, 4)
    again = evaluate.test_masks_and_parts(prof, test)
    assert again[0] is masks and again[1] is parts and len(reads) == 1  # the second run reads nothing
    with pytest.raises(ValueError, match="read-only"):
        masks[0, 0, 0] = not masks[0, 0, 0]
    other = evaluate.test_masks_and_parts(prof, SimpleNamespace(image_ids=ids[:2], n_patches=16))
    assert other[0].shape == (2, 4, 4) and len(reads) == 2  # other images: read, not served from the cache
    evaluate._masks_and_parts.cache_clear()
