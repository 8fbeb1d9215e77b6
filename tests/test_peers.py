"""qpmlib.analysis.peers: the peer-heads comparison, the quoted numbers, explanations and named features."""

import numpy as np
import pandas as pd
import pytest
import torch

from qpmlib import paper
from qpmlib.analysis import peers
from qpmlib.config import apply_overrides, get_profile
from qpmlib.data.synthbirds import ATTRIBUTE_PART
from qpmlib.figures.explanations import peer_explanations_figure
from qpmlib.runs.methods import RunRequest


def _record(method, seed, accuracy, **extra):
    row = {"method": method, "seed": seed, "accuracy": accuracy, "plausibility": 0.5, "sid": None,
           "class_independence": 0.9, "contrastiveness": 0.8, "in_all": 10, "per_class": 2.0, "per_image": 2.0,
           "unit": peers.COMPACTNESS_UNITS[method], "seconds_per_epoch": 1.0, "n_parameters": 100}
    return row | extra


def test_peer_table_averages_seeds_in_percent_relative_to_the_probe():
    records = pd.DataFrame([_record("dino_qpm", 0, 0.8, in_all=20), _record("dino_qpm", 1, 0.6, in_all=30),
                            _record("klc", 0, 0.35), _record("linear_probe", 0, 0.5)])
    table = peers.peer_table(records)
    assert list(table.index) == ["DINO-QPM", "KLC", paper.method_display("linear_probe")]
    qpm = table.loc["DINO-QPM"]
    assert qpm["accuracy"] == pytest.approx(70.0) and qpm["in_all"] == pytest.approx(25.0)
    assert qpm["of_probe"] == pytest.approx(0.7 / 0.5) and table.loc["KLC", "of_probe"] == pytest.approx(0.7)
    assert qpm["plausibility"] == pytest.approx(50.0) and np.isnan(qpm["sid"])
    assert table.loc["KLC", "unit"] == "prototype images" and "seed" not in table.columns


def test_quoted_values_are_the_publications_numbers_with_their_sources():
    quoted = peers.quoted_values()
    assert quoted["source"].str.len().gt(0).all() and quoted["value"].notna().all()
    peer_rows = quoted[quoted["method"].isin(paper.PEER_DISPLAY.values())]
    assert len(peer_rows) == len(paper.PEER_VALUES)
    qpm = quoted[(quoted["method"] == "DINO-QPM") & (quoted["metric"] == "accuracy")]
    assert qpm["value"].tolist() == [paper.paper_value("table1", "dino_qpm", "accuracy", "cub")]
    assert paper.peer_values()["quoted"].all()


def test_klc_is_left_out_where_no_part_truth_exists_and_one_seed_by_default():
    smoke = get_profile("smoke")
    assert peers.peer_methods(smoke) == peers.PEER_METHODS
    assert "klc" not in peers.peer_methods(apply_overrides(smoke, {"data.dataset": "synthcars"}))
    assert peers.peer_requests(smoke) == [RunRequest.of(m, [smoke.seeds[0]]) for m in peers.PEER_METHODS]
    assert {r.seeds for r in peers.peer_requests(smoke, [3, 4])} == {(3, 4)}


def test_named_features_need_part_truth():
    with pytest.raises(ValueError, match="named features needs part ground truth"):
        peers.named_features(apply_overrides("smoke", {"data.dataset": "synthcars"}))


def test_peer_explanations_figure_has_one_panel_per_image_and_method():
    image = np.zeros((28, 28, 3))
    shown = peers.PeerExplanations([4, 9], [image, image], ["a", "b"], ["dino_qpm", "klc"],
                                   {"dino_qpm": [np.eye(4), np.eye(4)], "klc": [np.ones((4, 4)), np.eye(4)]},
                                   {"dino_qpm": ["a", "a"], "klc": ["a", "b"]})
    fig = peer_explanations_figure(shown)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 4
    assert titles == ["test image 4\nDINO-QPM: right", "KLC: right", "test image 9\nDINO-QPM: wrong", "KLC: right"]
    with pytest.raises(ValueError, match="no test image"):
        peer_explanations_figure(peers.PeerExplanations([], [], [], ["klc"], {"klc": []}, {"klc": []}))


@pytest.mark.slow
def test_named_features_and_examples_on_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    prof = get_profile("smoke")
    rows = peers.example_indices(prof, 3)
    from qpmlib.runs.evaluate import split_tokens

    labels = split_tokens(prof, "test").labels
    assert len(set(labels[rows])) == 3 and labels[rows[0]] == labels.min()
    named = peers.named_features(prof)
    n_classes, n_selected = prof.data.n_classes, prof.qp.n_selected
    assert len(named.table) == n_selected and len(named.explanations) == n_classes
    regions = set(named.names.part_names) | {"background", "none"}
    assert set(named.table["name"]) <= regions
    np.testing.assert_allclose(named.names.shares.sum(axis=1), 1.0, atol=1e-6)
    per_class = named.agreement.per_class
    assert len(per_class) == n_classes
    assert all(set(p) == {ATTRIBUTE_PART[a] for a in attrs}
               for p, attrs in zip(per_class["defining_parts"], per_class["defining_attributes"]))
    assert 0.0 <= named.agreement.precision <= 1.0
    assert 0.0 <= named.agreement.chance_precision <= 1.0 and 0.0 <= named.agreement.chance_recall <= 1.0
    assert ((named.names.confidence >= 0) & (named.names.confidence <= 1)).all()
