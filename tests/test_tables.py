"""Tests for qpmlib.analysis.tables: long-format records of Tables 1, 3 and 4 (with fake runners), the radar."""

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from qpmlib import paper
from qpmlib.analysis import tables as ex
from qpmlib.analysis.summary import beside_paper
from qpmlib.analysis.summary import summarise
from qpmlib.config import get_profile
from qpmlib.paper import TABLE3_SETTINGS


def _runs(seeds, metrics):
    """Stand-ins for :class:`qpmlib.runs.run.Run`: what the records read (seed, metrics)."""
    return [SimpleNamespace(seed=s, metrics=metrics(s)) for s in seeds]


def _fake_runner(calls):
    def runner(method, profile, seeds, *, overrides=None, verbose=False):
        calls.extend((method, seed, dict(overrides or {})) for seed in seeds)
        return _runs(seeds, lambda seed: {"accuracy": 0.5 + seed / 10, "plausibility": None, "sid_at_5": 0.9,
                                          "part_alignment": 0.3, "n_features": 8, "n_per_class": 2.0,
                                          "solver": "open"})

    return runner


def test_dataset_overrides():
    assert ex.dataset_overrides("demo") == {"synthbirds": {}}
    assert ex.dataset_overrides("paper") == {"cub": {}, "cars": {"data.dataset": "cars"}}


def test_table1_records_long_format():
    calls = []
    df = ex.table1_records("paper", seeds=[0, 1], methods=["dense", "dino_qpm"], runner=_fake_runner(calls))
    assert list(df.columns) == ["method", "dataset", "seed", "metric", "value"]
    assert len(calls) == 2 * 2 * 2  # datasets x methods x seeds
    assert ("dense", 1, {"data.dataset": "cars"}) in calls
    # part_alignment and the string are not paper metrics; None becomes NaN
    assert set(df["metric"]) == {"accuracy", "plausibility", "sid_at_5", "n_features", "n_per_class"}
    assert df.loc[df["metric"] == "plausibility", "value"].isna().all()
    acc = df[(df.metric == "accuracy") & (df.seed == 1)]["value"]
    assert np.allclose(acc, 0.6)
    summary = summarise(df)
    row = summary[(summary.method == "dino_qpm") & (summary.dataset == "cub") & (summary.metric == "accuracy")]
    assert row["mean"].item() == pytest.approx(0.55) and row["std"].item() == pytest.approx(0.05)
    beside = beside_paper(summary, "table1")
    cell = beside[(beside.row == "dino_qpm") & (beside.dataset == "cub") & (beside.metric == "accuracy")]
    assert cell["difference"].item() == pytest.approx(55.0 - 88.3)


def test_the_records_run_exactly_their_tables_requests():
    calls = []
    ex.table1_records("paper", seeds=[0, 1], methods=["dense", "dino_qpm"], runner=_fake_runner(calls))
    requests = ex.table1_requests("paper", seeds=[0, 1], methods=["dense", "dino_qpm"])
    assert calls == [(r.method, s, dict(r.overrides)) for _, r in requests for s in r.seeds]
    assert [d for d, _ in requests] == ["cub", "cub", "cars", "cars"]
    rows = dict(ex.table3_requests("demo"))
    assert set(rows) == set(TABLE3_SETTINGS) and dict(rows["cls_noreg"].overrides)["backbone.name"] == "standin_s14"
    assert [b for b, _ in ex.table4_requests("smoke")] == ["standin_t14_reg"]


def test_table1_records_rejects_unknown_method_and_empty_seeds():
    with pytest.raises(ValueError, match="linear_probe"):
        ex.table1_records("smoke", methods=["probe"], runner=_fake_runner([]))
    with pytest.raises(ValueError, match="seeds"):
        ex.table1_records("smoke", seeds=[], runner=_fake_runner([]))


def test_table3_backbones_per_profile():
    assert ex.table3_backbones("paper") == {k: v["backbone"] for k, v in TABLE3_SETTINGS.items()}
    demo = ex.table3_backbones("demo")
    assert demo["cls_noreg"] == demo["patch_noreg"] == "standin_s14"
    assert demo["cls_reg"] == demo["patch_reg"] == "standin_s14_reg"
    smoke = ex.table3_backbones("smoke")
    assert smoke["patch_reg"] == "standin_t14_reg" and smoke["patch_noreg"] == "standin_t14"


def test_table3_records_only_available_rows():
    calls = []

    def runner(method, profile, seeds, *, overrides, verbose):
        assert method == "dino_qpm"
        calls.append(overrides)
        return _runs(seeds, lambda seed: {"accuracy": 0.7, "plausibility": 0.4, "sid_at_5": 1.0})

    df = ex.table3_records("paper", runner=runner)
    assert set(df["row"]) == set(TABLE3_SETTINGS)
    assert set(df["metric"]) == {"accuracy", "plausibility"}
    assert {"model.pooling": "cls", "backbone.name": "dinov2_vitb14_reg"} in calls
    calls.clear()
    smoke = get_profile("smoke")
    no_twin = smoke.replace(backbone=dataclasses.replace(smoke.backbone, name="tiny_vit_test"))
    df = ex.table3_records(no_twin, runner=runner)  # tiny_vit_test has registers and no twin without
    assert set(df["row"]) == {"cls_reg", "patch_reg"}
    assert {"model.pooling": "cls", "backbone.name": "tiny_vit_test"} in calls


def test_table4_records_context_once_per_backbone():
    seen = []

    def context(profile, backbone):
        seen.append(backbone)
        return 0.25

    def runner(method, profile, seeds, *, overrides, verbose):
        return _runs(seeds, lambda seed: {"accuracy": 0.1 * (seed + 1)})

    df = ex.table4_records("demo", seeds=[0, 1], runner=runner, context=context)
    assert seen == list(get_profile("demo").sweeps.backbones)
    pc = df[df.metric == "patch_contextualisation"]
    assert len(pc) == 2 * len(seen) and np.allclose(pc["value"], 0.25)
    summary = summarise(df)
    assert math.isclose(summary[summary.metric == "patch_contextualisation"]["std"].max(), 0.0)
    with pytest.raises(ValueError, match="dinov2_vits14"):
        ex.table4_records("demo", backbones=["vit_huge"], runner=runner, context=context)


@pytest.mark.slow
def test_smoke_qp_overview_solver_comparison_and_backbone_cosines(tmp_path, monkeypatch):
    import torch

    from qpmlib.metrics import patch_contextualisation
    from qpmlib.embeddings import get_store

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    selection, solver = ex.qp_overview("smoke")
    prof = get_profile("smoke")
    assert len(selection) == prof.data.n_classes
    assert all(len(f) == prof.qp.n_per_class for f in selection["features"])
    assert solver["gap"] is None or solver["gap"] >= 0
    table = ex.solver_comparison("smoke", {"default": {}, "open": {"qp.solver": "open", "qp.time_limit": 0.5}})
    assert list(table["setting"]) == ["default", "open"] and table["shared_features"].iloc[0] == prof.qp.n_selected
    cosines = ex.backbone_cosines("smoke", prof.backbone.name)
    store = get_store("smoke", "test", verbose=False)
    assert cosines.shape == (len(store.labels),)
    assert cosines.mean() == pytest.approx(patch_contextualisation(store.patch_tokens, store.cls), abs=1e-12)


# ---------------------------------------------------------------------------------------------------------- radar
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0] * 7, 1.0),
        ([0.5] * 7, 0.25),
        ([1.0, 0.0] * 3, 0.0),
        ([0.0] * 5, 0.0),
        ([1.0, 1.0, 0.0], 1.0 / 3.0),  # one of three triangle sectors
        ([1.0, 0.5, 1.0, 0.5], 0.5),  # (0.5 + 0.5 + 0.5 + 0.5) / 4
    ],
)
def test_polygon_area_closed_forms(values, expected):
    assert ex.radar_area_fraction(values) == pytest.approx(expected)


def test_convex_hull_area_is_at_least_the_polygon_and_equal_when_convex():
    for values in ([1.0] * 7, [0.5] * 7, [0.9, 0.8, 1.0, 0.95, 0.85, 0.9, 1.0]):
        assert ex.radar_area_fraction(values, method="convex_hull") == pytest.approx(
            ex.radar_area_fraction(values))
    # alternating 1/0 on a hexagon: the hull is the triangle of the three unit vertices plus the origin
    hull = ex.radar_area_fraction([1.0, 0.0] * 3, method="convex_hull")
    triangle = 3 * math.sqrt(3) / 4
    hexagon = 3 * math.sqrt(3) / 2
    assert hull == pytest.approx(triangle / hexagon)
    assert ex.radar_area_fraction([0.0] * 4, method="convex_hull") == 0.0


@pytest.mark.parametrize("values", [[1.0, 1.0], [1.2, 0.5, 0.5], [0.5, float("nan"), 0.5], [-0.1, 0.5, 0.5]])
def test_radar_area_rejects_bad_values(values):
    with pytest.raises(ValueError):
        ex.radar_area_fraction(values)


def test_radar_area_rejects_unknown_method():
    with pytest.raises(ValueError, match="polygon"):
        ex.radar_area_fraction([1.0] * 3, method="shoelace")


def test_fig2_area_from_the_papers_tables_is_98_4_percent():
    frame = ex.radar_frame(paper.paper_values(), paper.FIG2_AXES, methods=paper.FIG2_METHODS)
    assert list(frame.columns) == [m for m, _ in paper.FIG2_AXES]
    assert not frame.isna().any().any()
    scores = ex.radar_scores(frame)
    assert scores.max().tolist() == pytest.approx([1.0] * 7)  # best model on each axis sits at 1
    assert scores.loc["dino_qpm", "n_per_class"] == 1.0  # 1/5 is the largest 1/N^c_f
    claim = paper.claim("fig2").value
    for method in ("polygon", "convex_hull"):
        fraction = ex.radar_area_fraction(scores.loc["dino_qpm"], method=method)
        assert round(100 * fraction, 1) == claim


def test_radar_scores_inversion_and_zero_axis():
    table = pd.DataFrame({"accuracy": [50.0, 100.0], "n_features": [10.0, 40.0], "sid_at_5": [0.0, 0.0]},
                         index=["a", "b"])
    scores = ex.radar_scores(table)
    assert scores.loc["a"].tolist() == [0.5, 1.0, 0.0]
    assert scores.loc["b"].tolist() == [1.0, 0.25, 0.0]
    with pytest.raises(ValueError, match="invert"):
        ex.radar_scores(table.assign(n_features=[0.0, 1.0]))


def test_paper_radar_gives_the_papers_984_percent():
    areas = ex.radar_areas(ex.paper_radar())
    assert 100 * areas["dino_qpm"] == pytest.approx(paper.claim("fig2").value, abs=0.05)


def test_our_radar_maps_our_dataset_onto_the_papers_axes():
    rows = [{"method": m, "dataset": "synthbirds", "metric": k, "mean": v}
            for m, v in (("dino_qpm", 0.9), ("dense", 0.5)) for k, _ in paper.FIG2_AXES]
    table = ex.our_radar(pd.DataFrame(rows), {"synthbirds": "cub"})
    assert list(table.index) == ["dense", "dino_qpm"] and table.shape == (2, 7)
    assert ex.our_radar(pd.DataFrame(rows)).empty  # nothing on CUB without the mapping
