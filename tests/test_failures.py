"""qpmlib.analysis.failures and qpmlib.figures.failures: failure categories, examples, the figure rows."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from qpmlib.analysis import failures  # noqa: E402
from qpmlib.figures import failures as failure_figures  # noqa: E402
from qpmlib.figures import plots  # noqa: E402

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

ATTRS = pd.DataFrame({
    "class_id": [1, 2, 3], "label": [0, 1, 2], "name": ["a", "b", "c"],
    "head_colour": ["red", "red", "blue"], "beak_shape": ["cone", "thin", "thin"], "crest": ["none"] * 3,
})


def test_category_counts_hand_split():
    counts = failures.category_counts(Y, QPM, DENSE)
    assert list(counts.index) == list(failures.FAILURE_CATEGORIES)
    assert counts["n"].tolist() == [len(EXPECTED[c]) for c in failures.FAILURE_CATEGORIES]
    np.testing.assert_allclose(counts["share"].sum(), 1.0)


def test_failure_examples_take_all_when_n_is_large_and_rows_are_consistent():
    ex = failures.failure_examples(Y, QPM, DENSE, n=10)
    for cat in failures.FAILURE_CATEGORIES:
        assert ex.loc[ex.category == cat, "index"].tolist() == EXPECTED[cat]
    # every row really belongs to its category
    right_q = ex["pred_qpm"] == ex["label"]
    right_d = ex["pred_dense"] == ex["label"]
    assert (right_q & ~right_d)[ex.category == "qpm_right_dense_wrong"].all()
    assert (~right_q & right_d)[ex.category == "dense_right_qpm_wrong"].all()
    assert (ex["label"] == Y[ex["index"]]).all() and (ex["pred_dense"] == DENSE[ex["index"]]).all()


def test_failure_examples_subsample_is_seeded_and_a_subset():
    a = failures.failure_examples(Y, QPM, DENSE, n=1, seed=3)
    b = failures.failure_examples(Y, QPM, DENSE, n=1, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a["category"].tolist() == list(failures.FAILURE_CATEGORIES)  # one per category, in order
    for row in a.itertuples():
        assert row.index in EXPECTED[row.category]
    draws = {tuple(failures.failure_examples(Y, QPM, DENSE, n=1, seed=s)["index"]) for s in range(20)}
    assert len(draws) > 1  # the seed matters


def test_failure_examples_focus_class_picks_the_busiest_class():
    # qpm_right_dense_wrong: labels 0, 1, 2 once each -> tie -> class 0; make class 2 the busiest instead
    y = np.append(Y, 2)
    q, d = np.append(QPM, 2), np.append(DENSE, 0)
    ex = failures.failure_examples(y, q, d, n=5, focus_class=True)
    first = ex[ex.category == "qpm_right_dense_wrong"]
    assert first["index"].tolist() == [6, 10] and (first["label"] == 2).all()
    tie = failures.failure_examples(Y, QPM, DENSE, n=5, focus_class=True)
    assert tie.loc[tie.category == "dense_right_qpm_wrong", "index"].tolist() == [2]  # labels 0 and 2 -> 0


def test_failure_examples_empty_category_and_errors():
    ex = failures.failure_examples([0, 1], [0, 1], [0, 1], n=2)
    assert set(ex["category"]) == {"both_right"}
    with pytest.raises(ValueError, match="equal lengths"):
        failures.failure_examples([0, 1], [0], [0, 1], n=1)
    with pytest.raises(ValueError, match="n must be"):
        failures.failure_examples(Y, QPM, DENSE, n=-1)


def test_nearest_class_follows_the_paper():
    assert failures.nearest_class("qpm_right_dense_wrong", pred_dense=4, pred_qpm=1) == 4
    assert failures.nearest_class("dense_right_qpm_wrong", pred_dense=4, pred_qpm=1) == 1
    assert failures.nearest_class("both_wrong", pred_dense=4, pred_qpm=2) == 2
    with pytest.raises(ValueError, match="valid: qpm_right_dense_wrong"):
        failures.nearest_class("nope", 0, 0)


def test_failure_figure_layout():
    rng = np.random.default_rng(0)
    ex = failures.FailureExample(
        image=rng.random((16, 16, 3)), dense_cam=rng.random((4, 4)), qpm_maps=rng.random((3, 4, 4)),
        true_features=[0, 1], pred_features=[1, 2], nearest_image=rng.random((16, 16, 3)), similarity=0.5,
        true_name="A", dense_name="B", qpm_name="A", nearest_name="B", parts={0: "head", 1: "beak", 2: "tail"},
    )
    n_open = len(plt.get_fignums())
    fig = failure_figures.failure_figure([ex, ex], title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 10
    assert fig.axes[2].get_xlabel() == "0:head, 1:beak" and "0.500" in fig.axes[4].get_xlabel()
    assert len(plt.get_fignums()) == n_open
    with pytest.raises(ValueError, match="no examples"):
        failure_figures.failure_figure([])
    png = plots.figure_png(fig, dpi=10)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(__import__("io").BytesIO(png)).size == (125, 58)  # 12.5 x (2.9 * 2) inches at 10 dpi


def test_failure_data_example_hand_computed():
    # 2 test samples, 3 training images of classes 0, 1, 1; 2 classes x 3 selected features
    cls_train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    dense_maps = np.zeros((2, 2, 2, 2))
    dense_maps[1, 0, 0, 0] = 1.0  # dense feature 0 fires top-left in sample 1
    fd = failures.FailureData(
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
    picks = failures.failure_examples(fd.labels, fd.pred_qpm, fd.pred_dense, n=5)
    assert [e.dense_name for e in fd.examples(picks, "qpm_right_dense_wrong")] == ["b"]
    with pytest.raises(ValueError, match="unknown category"):
        fd.example(1, "nope")


def test_confusing_features_table():
    assignment = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
    picks = pd.DataFrame({"category": ["both_right", "both_wrong", "dense_right_qpm_wrong"], "index": [4, 5, 6],
                          "label": [0, 0, 1], "pred_dense": [0, 2, 1], "pred_qpm": [0, 1, 2]})
    parts = pd.DataFrame({"part": ["head", "belly", "beak"]}, index=pd.Index([0, 1, 2], name="feature"))
    table = failures.confusing_features_table(picks, assignment, parts=parts, attributes=ATTRS,
                                            class_names=["a", "b", "c"])
    # sample 5: true 0 = {0, 1}, predicted 1 = {1, 2} -> shared 1, confusing feature 2 (beak); classes differ in beak
    # sample 6: true 1 = {1, 2}, predicted 2 = {0, 2} -> confusing feature 0 (head); they differ in head only
    assert table.values.tolist() == [
        ["both_wrong", 5, "a", "b", 1, "2 (beak)", "beak", True],
        ["dense_right_qpm_wrong", 6, "b", "c", 1, "0 (head)", "head", True]]
    moved = failures.confusing_features_table(picks, assignment, parts=parts.assign(part=["beak", "belly", "tail"]),
                                            attributes=ATTRS)
    assert moved["on_differing"].tolist() == [False, False]  # confusing features now on tail and beak
    plain = failures.confusing_features_table(picks, assignment)
    assert plain["confusing"].tolist() == ["2", "0"] and "differing" not in plain.columns


def test_nearest_training_image_within_class():
    cls_train = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [10.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    q = np.array([1.0, 0.05])
    assert failures.nearest_training_image(q, cls_train, labels, 1) == 3  # cosine, not distance
    assert failures.nearest_training_image(q, cls_train, labels, 0) == 0
    with pytest.raises(ValueError, match="label 5"):
        failures.nearest_training_image(q, cls_train, labels, 5)


def test_failure_categories_partition_and_pick_examples():
    y = np.array([0, 1, 2, 3, 4, 5])
    qpm = np.array([0, 1, 9, 9, 4, 9])
    dense = np.array([9, 1, 9, 3, 9, 5])
    cats = failures.failure_categories(y, qpm, dense)
    np.testing.assert_array_equal(cats["qpm_right_dense_wrong"], [0, 4])
    np.testing.assert_array_equal(cats["both_right"], [1])
    np.testing.assert_array_equal(cats["both_wrong"], [2])
    np.testing.assert_array_equal(cats["dense_right_qpm_wrong"], [3, 5])
    picks = failures.pick_examples(cats, 1, seed=0)
    assert {k: len(v) for k, v in picks.items()} == {k: 1 for k in failures.FAILURE_CATEGORIES}
    assert all(set(picks[k]) <= set(cats[k]) for k in cats)
    again = failures.pick_examples(cats, 1, seed=0)
    assert all(np.array_equal(picks[k], again[k]) for k in cats)
    np.testing.assert_array_equal(failures.pick_examples(cats, 10)["dense_right_qpm_wrong"], [3, 5])
