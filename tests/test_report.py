"""Tests for qpmlib.report: failure-category examples, class-pair logic, the beside-the-paper gathering."""

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from qpmlib import report  # noqa: E402
from qpmlib.explain import FAILURE_CATEGORIES  # noqa: E402

# 10 test samples: true labels, QPM and dense predictions, with a hand-made split into the four categories.
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
QPM = np.array([0, 0, 1, 1, 1, 0, 2, 2, 0, 1])
DENSE = np.array([1, 0, 0, 0, 1, 2, 1, 2, 0, 2])
EXPECTED = {  # by hand: (qpm right, dense right)
    "qpm_right_dense_wrong": [0, 3, 6],
    "both_right": [1, 4, 7],
    "both_wrong": [5, 8],
    "dense_right_qpm_wrong": [2, 9],
}


# ------------------------------------------------------------------------------------------- failure categories
def test_category_counts_hand_split():
    counts = report.category_counts(Y, QPM, DENSE)
    assert list(counts.index) == list(FAILURE_CATEGORIES)
    assert counts["n"].tolist() == [len(EXPECTED[c]) for c in FAILURE_CATEGORIES]
    np.testing.assert_allclose(counts["share"].sum(), 1.0)


def test_failure_examples_take_all_when_n_is_large_and_rows_are_consistent():
    ex = report.failure_examples(Y, QPM, DENSE, n=10)
    for cat in FAILURE_CATEGORIES:
        assert ex.loc[ex.category == cat, "index"].tolist() == EXPECTED[cat]
    # every row really belongs to its category
    right_q = ex["pred_qpm"] == ex["label"]
    right_d = ex["pred_dense"] == ex["label"]
    assert (right_q & ~right_d)[ex.category == "qpm_right_dense_wrong"].all()
    assert (~right_q & right_d)[ex.category == "dense_right_qpm_wrong"].all()
    assert (ex["label"] == Y[ex["index"]]).all() and (ex["pred_dense"] == DENSE[ex["index"]]).all()


def test_failure_examples_subsample_is_seeded_and_a_subset():
    a = report.failure_examples(Y, QPM, DENSE, n=1, seed=3)
    b = report.failure_examples(Y, QPM, DENSE, n=1, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a["category"].tolist() == list(FAILURE_CATEGORIES)  # one per category, in order
    for row in a.itertuples():
        assert row.index in EXPECTED[row.category]
    draws = {tuple(report.failure_examples(Y, QPM, DENSE, n=1, seed=s)["index"]) for s in range(20)}
    assert len(draws) > 1  # the seed matters


def test_failure_examples_focus_class_picks_the_busiest_class():
    # qpm_right_dense_wrong: labels 0, 1, 2 once each -> tie -> class 0; make class 2 the busiest instead
    y = np.append(Y, 2)
    q, d = np.append(QPM, 2), np.append(DENSE, 0)
    ex = report.failure_examples(y, q, d, n=5, focus_class=True)
    first = ex[ex.category == "qpm_right_dense_wrong"]
    assert first["index"].tolist() == [6, 10] and (first["label"] == 2).all()
    tie = report.failure_examples(Y, QPM, DENSE, n=5, focus_class=True)
    assert tie.loc[tie.category == "dense_right_qpm_wrong", "index"].tolist() == [2]  # labels 0 and 2 -> 0


def test_failure_examples_empty_category_and_errors():
    ex = report.failure_examples([0, 1], [0, 1], [0, 1], n=2)
    assert set(ex["category"]) == {"both_right"}
    with pytest.raises(ValueError, match="equal lengths"):
        report.failure_examples([0, 1], [0], [0, 1], n=1)
    with pytest.raises(ValueError, match="n must be"):
        report.failure_examples(Y, QPM, DENSE, n=-1)


def test_nearest_class_follows_the_paper():
    assert report.nearest_class("qpm_right_dense_wrong", pred_dense=4, pred_qpm=1) == 4
    assert report.nearest_class("dense_right_qpm_wrong", pred_dense=4, pred_qpm=1) == 1
    assert report.nearest_class("both_wrong", pred_dense=4, pred_qpm=2) == 2
    with pytest.raises(ValueError, match="valid: qpm_right_dense_wrong"):
        report.nearest_class("nope", 0, 0)


def test_failure_figure_layout():
    rng = np.random.default_rng(0)
    ex = report.FailureExample(
        image=rng.random((16, 16, 3)), dense_cam=rng.random((4, 4)), qpm_maps=rng.random((3, 4, 4)),
        true_features=[0, 1], pred_features=[1, 2], nearest_image=rng.random((16, 16, 3)), similarity=0.5,
        true_name="A", dense_name="B", qpm_name="A", nearest_name="B", parts={0: "head", 1: "beak", 2: "tail"},
    )
    n_open = len(plt.get_fignums())
    fig = report.failure_figure([ex, ex], title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 10
    assert fig.axes[2].get_xlabel() == "0:head, 1:beak" and "0.500" in fig.axes[4].get_xlabel()
    assert len(plt.get_fignums()) == n_open
    with pytest.raises(ValueError, match="no examples"):
        report.failure_figure([])
    png = report.figure_png(fig, dpi=10)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(__import__("io").BytesIO(png)).size == (125, 58)  # 12.5 x (2.9 * 2) inches at 10 dpi


# ---------------------------------------------------------------------------------------------------- class pairs
ATTRS = pd.DataFrame({
    "class_id": [1, 2, 3], "label": [0, 1, 2], "name": ["a", "b", "c"],
    "head_colour": ["red", "red", "blue"], "beak_shape": ["cone", "thin", "thin"], "crest": ["none"] * 3,
})


def test_distinguishing_attributes():
    diff = report.distinguishing_attributes(ATTRS, 0, 1)
    assert diff.to_dict("records") == [{"attribute": "beak_shape", "part": "beak", "first": "cone", "second": "thin"}]
    assert report.distinguishing_attributes(ATTRS, 0, 2)["part"].tolist() == ["head", "beak"]
    assert report.distinguishing_attributes(ATTRS, 1, 1).empty
    with pytest.raises(ValueError, match="no class with label 7"):
        report.distinguishing_attributes(ATTRS, 0, 7)


def one_part_maps():
    """4 features on a 2x2 grid over 2 images; parts: 0 = top row, 1 = bottom-left patch."""
    maps = np.zeros((2, 4, 2, 2))
    maps[:, 0, 0, :] = 1.0  # feature 0: top row -> part 0, share 1
    maps[:, 1, 1, 0] = 2.0  # feature 1: bottom-left -> part 1, share 1
    maps[:, 2, 1, 1] = 1.0  # feature 2: bottom-right = background -> share 0, on_bird 0
    maps[:, 2, 0, 0] = 1.0  # ... and half of it on part 0 -> part 0 share 0.5
    parts = np.zeros((2, 2, 2, 2))
    parts[:, 0, 0, :] = 1.0
    parts[:, 1, 1, 0] = 1.0
    return maps, parts  # feature 3 is never active


def test_feature_parts_hand_computed():
    maps, parts = one_part_maps()
    table = report.feature_parts(maps, parts, ["top", "corner"], feature_ids=[10, 11, 12, 13])
    assert table.index.tolist() == [10, 11, 12, 13]
    assert table["part"].tolist() == ["top", "corner", "top", "(none)"]
    np.testing.assert_allclose(table["share"], [1.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(table["on_bird"], [1.0, 1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="one name per part"):
        report.feature_parts(maps, parts, ["top"])
    with pytest.raises(ValueError, match="one id per channel"):
        report.feature_parts(maps, parts, ["top", "corner"], feature_ids=[1, 2])


def test_class_pair_table_roles_and_parts():
    # 3 classes x 4 selected features (ids 3, 5, 8, 9); classes 0 and 1 share feature 5
    assignment = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)
    parts = pd.DataFrame({"part": ["head", "belly", "beak", "tail"], "share": [0.9, 0.8, 0.7, 0.6],
                          "on_bird": [1.0] * 4}, index=pd.Index([3, 5, 8, 9], name="feature"))
    table = report.class_pair_table(assignment, [3, 5, 8, 9], 0, 1, parts=parts, class_names=["A", "B", "C"])
    assert table[["feature", "role", "used_by", "part"]].values.tolist() == [
        [5, "shared", "both", "belly"], [3, "only_c1", "A", "head"], [8, "only_c2", "B", "beak"]]
    # the distinct features sit on head and beak; the classes differ in beak only -> 1 of 2
    differing = pd.DataFrame({"attribute": ["beak_shape"], "part": ["beak"], "first": ["cone"], "second": ["thin"]})
    assert report.distinct_on_differing_parts(table, differing) == 0.5
    same = report.class_pair_table(assignment, [3, 5, 8, 9], 0, 0, parts=parts)
    assert (same["role"] == "shared").all() and math.isnan(report.distinct_on_differing_parts(same, differing))
    with pytest.raises(ValueError, match="no 'part' column"):
        report.distinct_on_differing_parts(report.class_pair_table(assignment, None, 0, 1), differing)
    with pytest.raises(ValueError, match=r"no row for feature\(s\) \[3\]"):
        report.class_pair_table(assignment, [3, 5, 8, 9], 0, 1, parts=parts.drop(index=3))


def test_confused_pairs_table():
    y = [0, 0, 1, 1, 2, 2]
    p = [1, 1, 0, 1, 0, 2]  # (0,1) confused 3 times, (0,2) once
    table = report.confused_pairs_table(y, p, 5, class_names=["a", "b", "c"], attributes=ATTRS)
    assert table[["c1", "c2", "confusions", "n_differing"]].values.tolist() == [[0, 1, 3, 1], [0, 2, 1, 2]]
    assert table["differing"].iloc[0] == "beak_shape: cone/thin"
    assert list(report.confused_pairs_table(y, p, 1).columns) == ["c1", "c2", "confusions"]


# ----------------------------------------------------------------------------------------------------- images
def test_class_names_and_images(tmp_path):
    (tmp_path / "classes.txt").write_text("2 002.Beta_Bird\n1 001.Alpha_Bird\n")
    assert report.class_names(tmp_path, "synthbirds") == ["Alpha Bird", "Beta Bird"]
    with pytest.raises(ValueError, match="valid datasets"):
        report.class_names(tmp_path, "imagenet")
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 0] = 255
    Image.fromarray(pixels).save(tmp_path / "red.png")
    img = report.display_image(tmp_path / "red.png", 8)
    assert img.shape == (8, 8, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., 0], 1.0) and np.testing.assert_allclose(img[..., 1:], 0.0)
    images = report.ImageList([tmp_path / "red.png"] * 3, 5)
    assert len(images) == 3 and images[2].shape == (5, 5, 3) and images[-1] is images[2]
    with pytest.raises(IndexError):
        images[3]


# ------------------------------------------------------------------------------------------ reproducibility report
def test_discrepancy_table_covers_section_10():
    table = report.discrepancy_table()
    assert table["row"].tolist() == list(range(1, 16))
    assert {"topic", "paper", "code", "book", "option"} <= set(table.columns)


def test_profile_differences():
    same = report.profile_differences("paper", pretrained=True)
    assert not same["differs"].any()
    smoke = report.profile_differences("smoke", pretrained=False).set_index("item")
    assert smoke.loc["backbone weights", "this run"] == "fixed random" and smoke.loc["dataset", "differs"]
    with pytest.raises(ValueError, match="valid profiles"):
        report.profile_differences("nope")


def test_gather_beside_paper_values_and_reasons():
    ours = pd.DataFrame({"method": ["dino_qpm", "dense", "dino_qpm"], "dataset": ["synthbirds"] * 3,
                         "metric": ["accuracy", "plausibility", "n_features"], "mean": [0.5, 0.25, 8.0],
                         "std": [math.nan] * 3})
    table = report.gather_beside_paper({"table1": ours}, dataset_map={"synthbirds": "cub"},
                                       setting_reason="SynthBirds")
    qpm = table[(table.row == "dino_qpm") & (table.metric == "accuracy") & (table.dataset == "cub")].iloc[0]
    assert qpm["ours_mean"] == 50.0 and qpm["paper_value"] == 88.3
    assert qpm["difference"] == pytest.approx(50.0 - 88.3)
    assert qpm["reason"].startswith("SynthBirds")
    plaus = table[(table.row == "dense") & (table.metric == "plausibility")].iloc[0]
    assert "test split" in plaus["reason"]
    assert not table["row"].str.startswith("resnet50").any()  # reported-only rows left out
    not_run = table[(table.row == "dino_sldd") & (table.metric == "accuracy") & (table.dataset == "cub")]
    assert "not run in this profile" in not_run["reason"].iloc[0]
    assert "n_features" not in set(table["metric"])  # a Table 2 column, ignored for Table 1
    both = report.gather_beside_paper({"table1": ours, "table2": ours}, dataset_map={"synthbirds": "cub"})
    t2 = both[(both.table == "table2") & both.ours_mean.notna()]
    assert t2[["row", "metric", "ours_mean", "difference"]].values.tolist() == [["dino_qpm", "n_features", 8.0, -42.0]]
    assert report.gather_beside_paper({}).empty
    with pytest.raises(ValueError, match="valid names: table1"):
        report.gather_beside_paper({"table9": ours})


def test_compute_time_reads_run_json_and_stored_stages(tmp_path):
    build, results = tmp_path / "build", tmp_path / "results"
    build.mkdir()
    (build / "run.json").write_text(json.dumps({"chapters": {
        "01_intro": {"seconds": 2.5, "reused": False}, "02_x": {"seconds": 4.0, "reused": True}}}))
    for kind, key, seconds in (("dense", "a", 10.0), ("dense", "b", 5.0), ("qp", "c", 1.0), ("qp", ".tmp-d", 99.0)):
        (results / kind / key).mkdir(parents=True)
        (results / kind / key / "provenance.json").write_text(json.dumps({"total_seconds": seconds}))
    table = report.compute_time("smoke", build_root=build, results_root=results)
    assert table.values.tolist() == [
        ["chapter", "01_intro", 1, 2.5], ["chapter", "02_x (reused)", 1, 4.0],
        ["stored stage", "dense", 2, 15.0], ["stored stage", "qp", 1, 1.0]]
    empty = report.compute_time("smoke", build_root=tmp_path / "none", results_root=tmp_path / "none")
    assert empty.empty


def test_default_pairs_and_example_index():
    # QPM confuses (0, 1) twice; dense confuses (1, 2) and (0, 1)
    y = np.array([0, 0, 1, 1, 2, 2])
    q = np.array([1, 1, 1, 1, 2, 2])
    d = np.array([0, 0, 2, 0, 2, 2])
    assert report.default_pairs(y, q, d, 5) == [(0, 1), (1, 2)]
    assert report.default_pairs(y, q, d, 1) == [(0, 1)]
    assert report.default_pairs(y, y, y, 3) == [(0, 1)]  # nothing confused
    with pytest.raises(ValueError, match="n must be"):
        report.default_pairs(y, q, d, 0)
    assert report.example_index(y, q, 0) == 0  # class 0 never right -> first sample
    assert report.example_index(y, q, 1) == 2  # first sample of class 1, and right
    assert report.example_index(y, np.array([0, 0, 2, 1, 2, 2]), 1) == 3  # the first right one, not the first
    with pytest.raises(ValueError, match="no test sample has label 7"):
        report.example_index(y, q, 7)


def test_failure_data_example_hand_computed():
    # 2 test samples, 3 training images of classes 0, 1, 1; 2 classes x 3 selected features
    cls_train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    dense_maps = np.zeros((2, 2, 2, 2))
    dense_maps[1, 0, 0, 0] = 1.0  # dense feature 0 fires top-left in sample 1
    fd = report.FailureData(
        labels=np.array([0, 0]), pred_dense=np.array([0, 1]), pred_qpm=np.array([0, 0]),
        dense_maps=dense_maps, dense_weight=np.array([[0.0, 1.0], [2.0, 0.0]]),
        qpm_maps={1: np.ones((3, 2, 2))}, assignment=np.array([[1, 1, 0], [0, 1, 1]], bool),
        cls_test=np.array([[0.0, 1.0], [1.0, 0.2]]), cls_train=cls_train, train_labels=np.array([0, 1, 1]),
        test_images=np.zeros((2, 4, 4, 3)), train_images=np.arange(3)[:, None, None, None] * np.ones((3, 4, 4, 3)),
        class_names=["a", "b"],
    )
    ex = fd.example(1, "qpm_right_dense_wrong")
    # nearest of the dense-predicted class 1: cos([1, .2], [0, 1]) < cos([1, .2], [1, 1]) -> training image 2
    assert ex.nearest_name == "b" and ex.nearest_image[0, 0, 0] == 2.0
    assert ex.similarity == pytest.approx(1.2 / (np.sqrt(1.04) * np.sqrt(2)))
    np.testing.assert_allclose(ex.dense_cam, [[1.0, 0.0], [0.0, 0.0]])  # class-1 weight on dense feature 0
    assert ex.true_features == [0, 1] and ex.pred_features == [0, 1]
    assert (ex.true_name, ex.dense_name, ex.qpm_name) == ("a", "b", "a")
    picks = report.failure_examples(fd.labels, fd.pred_qpm, fd.pred_dense, n=5)
    assert [e.dense_name for e in fd.examples(picks, "qpm_right_dense_wrong")] == ["b"]
    with pytest.raises(ValueError, match="unknown category"):
        fd.example(1, "nope")


def test_confusing_features_table():
    assignment = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
    picks = pd.DataFrame({"category": ["both_right", "both_wrong", "dense_right_qpm_wrong"], "index": [4, 5, 6],
                          "label": [0, 0, 1], "pred_dense": [0, 2, 1], "pred_qpm": [0, 1, 2]})
    parts = pd.DataFrame({"part": ["head", "belly", "beak"]}, index=pd.Index([0, 1, 2], name="feature"))
    table = report.confusing_features_table(picks, assignment, parts=parts, attributes=ATTRS,
                                            class_names=["a", "b", "c"])
    # sample 5: true 0 = {0, 1}, predicted 1 = {1, 2} -> shared 1, confusing feature 2 (beak); classes differ in beak
    # sample 6: true 1 = {1, 2}, predicted 2 = {0, 2} -> confusing feature 0 (head); they differ in head only
    assert table.values.tolist() == [
        ["both_wrong", 5, "a", "b", 1, "2 (beak)", "beak", True],
        ["dense_right_qpm_wrong", 6, "b", "c", 1, "0 (head)", "head", True]]
    moved = report.confusing_features_table(picks, assignment, parts=parts.assign(part=["beak", "belly", "tail"]),
                                            attributes=ATTRS)
    assert moved["on_differing"].tolist() == [False, False]  # confusing features now on tail and beak
    plain = report.confusing_features_table(picks, assignment)
    assert plain["confusing"].tolist() == ["2", "0"] and "differing" not in plain.columns


def test_maps_for_rows_matches_a_full_evaluation():
    from types import SimpleNamespace

    import torch

    from qpmlib.model import DinoQPM
    from qpmlib.train import TokenData, evaluate

    rng = np.random.default_rng(0)
    store = SimpleNamespace(patch_tokens=rng.normal(size=(5, 4, 3)).astype(np.float32),
                            cls=rng.normal(size=(5, 3)).astype(np.float32), labels=np.array([0, 1, 0, 1, 0]))
    torch.manual_seed(0)
    model = DinoQPM(3, 2, n_layers=1, hidden_size=4, n_features=6).eval()
    full = evaluate(model, TokenData(store.patch_tokens, store.cls, store.labels), device="cpu").feature_maps
    some = report.maps_for_rows(model, store, [3, 1, 3])
    assert sorted(some) == [1, 3] and some[3].shape == (6, 2, 2)
    np.testing.assert_allclose(some[3], full[3], atol=1e-6)
    np.testing.assert_allclose(some[1], full[1], atol=1e-6)
    assert report.maps_for_rows(model, store, []) == {}


def test_pair_part_scores_all_pairs():
    assignment = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
    parts = pd.DataFrame({"part": ["head", "belly", "beak"], "share": [1.0] * 3, "on_bird": [1.0] * 3},
                         index=pd.Index([0, 1, 2], name="feature"))
    scores = report.pair_part_scores(assignment, parts, ATTRS, n_parts=4)
    # (0,1): distinct 0 (head), 2 (beak); differ in beak -> 1/2, chance 1/4
    # (0,2): distinct 1 (belly), 2 (beak); differ in head, beak -> 1/2, chance 2/4
    # (1,2): distinct 1 (belly), 0 (head); differ in head -> 1/2, chance 1/4
    assert scores.values.tolist() == [[0, 1, 0.5, 0.25], [0, 2, 0.5, 0.5], [1, 2, 0.5, 0.25]]
    with pytest.raises(ValueError, match="n_parts"):
        report.pair_part_scores(assignment, parts, ATTRS, n_parts=0)
