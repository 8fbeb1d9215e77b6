"""qpmlib.analysis.pairs: class pairs, the parts features sit on, prototype patches (hand-computed cases)."""

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from qpmlib.analysis import pairs  # noqa: E402
from qpmlib.figures import explanations  # noqa: E402

ATTRS = pd.DataFrame({
    "class_id": [1, 2, 3], "label": [0, 1, 2], "name": ["a", "b", "c"],
    "head_colour": ["red", "red", "blue"], "beak_shape": ["cone", "thin", "thin"], "crest": ["none"] * 3,
})


def test_distinguishing_attributes():
    diff = pairs.distinguishing_attributes(ATTRS, 0, 1)
    assert diff.to_dict("records") == [{"attribute": "beak_shape", "part": "beak", "first": "cone", "second": "thin"}]
    assert pairs.distinguishing_attributes(ATTRS, 0, 2)["part"].tolist() == ["head", "beak"]
    assert pairs.distinguishing_attributes(ATTRS, 1, 1).empty
    with pytest.raises(ValueError, match="no class with label 7"):
        pairs.distinguishing_attributes(ATTRS, 0, 7)


def one_part_maps():
    """4 features on a 2x2 grid over 2 images; parts: 0 = top row, 1 = bottom-left patch."""
    maps = np.zeros((2, 4, 2, 2))
    maps[:, 0, 0, :] = 1.0  # feature 0: top row -> part 0, share 1
    maps[:, 1, 1, 0] = 2.0  # feature 1: bottom-left -> part 1, share 1
    maps[:, 2, 1, 1] = 1.0  # feature 2: bottom-right = background -> share 0, on_bird 0
    maps[:, 2, 0, 0] = 1.0  # ... and half of it on part 0 -> part 0 share 0.5; its peak (first of a tie) on part 0
    parts = np.zeros((2, 2, 2, 2))
    parts[:, 0, 0, :] = 1.0
    parts[:, 1, 1, 0] = 1.0
    return maps, parts  # feature 3 is never active


def test_feature_parts_hand_computed():
    maps, parts = one_part_maps()
    table = pairs.feature_parts(maps, parts, ["top", "corner"], feature_ids=[10, 11, 12, 13])
    assert table.index.tolist() == [10, 11, 12, 13]
    assert table["part"].tolist() == ["top", "corner", "top", "(none)"]
    np.testing.assert_allclose(table["share"], [1.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(table["on_bird"], [1.0, 1.0, 0.5, 0.0])
    assert table["peak_part"].tolist() == ["top", "corner", "top", "(none)"]
    np.testing.assert_allclose(table["peak_share"], [1.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="one name per part"):
        pairs.feature_parts(maps, parts, ["top"])
    with pytest.raises(ValueError, match="one id per channel"):
        pairs.feature_parts(maps, parts, ["top", "corner"], feature_ids=[1, 2])


def test_class_pair_table_roles_and_parts():
    # 3 classes x 4 selected features (ids 3, 5, 8, 9); classes 0 and 1 share feature 5
    assignment = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)
    parts = pd.DataFrame({"part": ["head", "belly", "beak", "tail"], "share": [0.9, 0.8, 0.7, 0.6],
                          "on_bird": [1.0] * 4}, index=pd.Index([3, 5, 8, 9], name="feature"))
    table = pairs.class_pair_table(assignment, [3, 5, 8, 9], 0, 1, parts=parts, class_names=["A", "B", "C"])
    assert table[["feature", "role", "used_by", "part"]].values.tolist() == [
        [5, "shared", "both", "belly"], [3, "only_c1", "A", "head"], [8, "only_c2", "B", "beak"]]
    # the distinct features sit on head and beak; the classes differ in beak only -> 1 of 2
    differing = pd.DataFrame({"attribute": ["beak_shape"], "part": ["beak"], "first": ["cone"], "second": ["thin"]})
    assert pairs.distinct_on_differing_parts(table, differing) == 0.5
    same = pairs.class_pair_table(assignment, [3, 5, 8, 9], 0, 0, parts=parts)
    assert (same["role"] == "shared").all() and math.isnan(pairs.distinct_on_differing_parts(same, differing))
    with pytest.raises(ValueError, match="no 'part' column"):
        pairs.distinct_on_differing_parts(pairs.class_pair_table(assignment, None, 0, 1), differing)
    with pytest.raises(ValueError, match=r"no row for feature\(s\) \[3\]"):
        pairs.class_pair_table(assignment, [3, 5, 8, 9], 0, 1, parts=parts.drop(index=3))


def test_confused_pairs_table():
    y = [0, 0, 1, 1, 2, 2]
    p = [1, 1, 0, 1, 0, 2]  # (0,1) confused 3 times, (0,2) once
    table = pairs.confused_pairs_table(y, p, 5, class_names=["a", "b", "c"], attributes=ATTRS)
    assert table[["c1", "c2", "confusions", "n_differing"]].values.tolist() == [[0, 1, 3, 1], [0, 2, 1, 2]]
    assert table["differing"].iloc[0] == "beak_shape: cone/thin"
    assert list(pairs.confused_pairs_table(y, p, 1).columns) == ["c1", "c2", "confusions"]


def test_default_pairs_and_example_index():
    # QPM confuses (0, 1) twice; dense confuses (1, 2) and (0, 1)
    y = np.array([0, 0, 1, 1, 2, 2])
    q = np.array([1, 1, 1, 1, 2, 2])
    d = np.array([0, 0, 2, 0, 2, 2])
    assert pairs.default_pairs(y, q, d, 5) == [(0, 1), (1, 2)]
    assert pairs.default_pairs(y, q, d, 1) == [(0, 1)]
    assert pairs.default_pairs(y, y, y, 3) == [(0, 1)]  # nothing confused
    with pytest.raises(ValueError, match="n must be"):
        pairs.default_pairs(y, q, d, 0)
    assert pairs.default_pairs(y, q, d, 5, first=[(0, 2)]) == [(0, 2), (0, 1), (1, 2)]  # given pairs lead
    assert pairs.default_pairs(y, q, d, 2, first=[(0, 1), (0, 2)]) == [(0, 1), (0, 2)]  # no repeats, at most n
    assert pairs.example_index(y, q, 0) == 0  # class 0 never right -> first sample
    assert pairs.example_index(y, q, 1) == 2  # first sample of class 1, and right
    assert pairs.example_index(y, np.array([0, 0, 2, 1, 2, 2]), 1) == 3  # the first right one, not the first
    with pytest.raises(ValueError, match="no test sample has label 7"):
        pairs.example_index(y, q, 7)


def test_pair_part_scores_all_pairs():
    assignment = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
    parts = pd.DataFrame({"part": ["head", "belly", "beak"], "share": [1.0] * 3, "on_bird": [1.0] * 3},
                         index=pd.Index([0, 1, 2], name="feature"))
    scores = pairs.pair_part_scores(assignment, parts, ATTRS, n_parts=4)
    # (0,1): distinct 0 (head), 2 (beak); differ in beak -> 1/2, chance 1/4
    # (0,2): distinct 1 (belly), 2 (beak); differ in head, beak -> 1/2, chance 2/4
    # (1,2): distinct 1 (belly), 0 (head); differ in head -> 1/2, chance 1/4
    assert scores.values.tolist() == [[0, 1, 0.5, 0.25], [0, 2, 0.5, 0.5], [1, 2, 0.5, 0.25]]
    with pytest.raises(ValueError, match="n_parts"):
        pairs.pair_part_scores(assignment, parts, ATTRS, n_parts=0)


def test_class_pair_features_and_figure():
    assignment = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)
    selected = [10, 20, 30, 40]
    assert pairs.class_pair_features(assignment, selected, 0, 1) == {
        "shared": [20],
        "only_c1": [10],
        "only_c2": [30],
    }
    assert pairs.class_pair_features(assignment, None, 0, 2) == {"shared": [], "only_c1": [0, 1], "only_c2": [2, 3]}
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        pairs.class_pair_features(assignment, None, 0, 3)
    maps = np.random.default_rng(0).random((4, 2, 2))
    fig = explanations.class_pair_figure(
        np.zeros((8, 8, 3)), maps, np.ones((8, 8, 3)), maps, assignment, None, 0, 1, class_names=["a", "b", "c"]
    )
    assert len(fig.axes) == 2 and all(len(ax.images) == 1 for ax in fig.axes)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["0", "1 (shared)"] and fig.axes[1].get_title() == "b"


def test_most_confused_pairs_counts_both_directions():
    y_true = np.array([0, 1, 1, 2, 2, 2, 0, 3])
    y_pred = np.array([1, 0, 0, 1, 1, 2, 0, 3])
    # (0,1): 0->1 once, 1->0 twice = 3; (1,2): 2->1 twice = 2
    assert pairs.most_confused_pairs(y_true, y_pred, 5) == [(0, 1, 3), (1, 2, 2)]
    assert pairs.most_confused_pairs(y_true, y_pred, 1) == [(0, 1, 3)]
    assert pairs.most_confused_pairs(y_true, y_true, 3) == []


def test_top_activating_patches_array_and_batches_agree():
    maps = np.zeros((4, 2, 3, 3))
    maps[0, 1, 2, 1] = 5.0
    maps[0, 1, 0, 0] = 4.0
    maps[2, 1, 1, 2] = 3.0
    maps[3, 0, 0, 0] = 9.0  # other feature, ignored
    expected = [(0, 2, 1, 5.0), (2, 1, 2, 3.0)]
    assert pairs.top_activating_patches(maps, 1, 2) == expected
    assert pairs.top_activating_patches(iter([maps[:1], maps[1:3], maps[3:]]), 1, 2) == expected
    assert pairs.top_activating_patches(maps, 1, 2, one_per_image=False) == [(0, 2, 1, 5.0), (0, 0, 0, 4.0)]
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        pairs.top_activating_patches(maps, 2, 1)


def test_paper_pairs_found_by_name_in_cub_and_cars_lists():
    cub = ["001.Black_footed_Albatross", "010.Red_winged_Blackbird", "009.Brewer_Blackbird", "097.Orchard_Oriole",
           "095.Baltimore_Oriole", "096.Hooded_Oriole", "164.Cerulean_Warbler", "165.Chestnut_sided_Warbler",
           "161.Blue_winged_Warbler", "169.Magnolia_Warbler", "170.Mourning_Warbler", "160.Black_throated_Blue_Warbler",
           "167.Hooded_Warbler", "168.Kentucky_Warbler", "011.Rusty_Blackbird"]
    names = [n.split(".", 1)[1].replace("_", " ") for n in cub]  # what class_names gives
    found = pairs.paper_pairs(names)
    assert found == {"Fig. 5": (2, 14), "Fig. 14": (5, 12), "Fig. 15": (8, 13)}
    assert pairs.paper_pairs(cub) == found  # the raw folder names match too
    cars = ["AM General Hummer SUV 2000", "Bentley Continental Flying Spur Sedan 2007", "Acura RL Sedan 2012",
            "Bentley Continental GT Coupe 2007", "Cadillac CTS-V Sedan 2012"]
    assert pairs.paper_pairs(cars) == {"Fig. 16": (2, 4), "Fig. 17": (1, 3)}
    assert pairs.paper_pairs(["Blue Sparrow", "Red Finch"]) == {}  # SynthBirds: none
    assert pairs.paper_pairs(["Hooded Oriole"]) == {}  # one class of a pair is not enough


def test_inspect_run_names_the_profiles_datasets():
    from qpmlib.analysis.inspection import inspect_run

    with pytest.raises(ValueError, match="no dataset 'cars'; its datasets: synthbirds"):
        inspect_run("smoke", dataset="cars")


@pytest.mark.slow
def test_inspect_run_on_an_extra_dataset_and_its_pairs(tmp_path, monkeypatch):
    import torch

    from qpmlib.analysis.inspection import inspect_run
    from qpmlib.book.views import show_class_pairs
    from qpmlib.config import apply_overrides
    from qpmlib.runs.methods import run_method

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    prof = apply_overrides("smoke", {"train.dense_epochs": 1, "train.ft_epochs": 1}).replace(
        extra_datasets=("synthcars",))
    cars = inspect_run(prof, dataset="synthcars")
    assert cars.profile.data.dataset == "synthcars" and cars.run.profile.data.dataset == "synthcars"
    assert not cars.has_parts and cars.parts is None
    table1_run = run_method("dino_qpm", prof, 0, overrides=prof.dataset_overrides()["synthcars"], compute=False)
    assert cars.run.stages["qpm"].path == table1_run.stages["qpm"].path  # Table 1's run on that dataset, not a new one
    assert len(cars.names) == prof.data.n_classes and cars.maps("test").shape[0] == len(cars.predictions)
    shown = show_class_pairs(cars, 2, n_patches=2)
    assert 1 <= len(shown) <= 2 and all(a < b for a, b in shown)
    assert shown == cars.class_pairs(2)
