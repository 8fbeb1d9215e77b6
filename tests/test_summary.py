"""qpmlib.analysis.summary: seed statistics, number formatting and the ours-beside-the-paper join."""

import math

import numpy as np
import pandas as pd
import pytest

from qpmlib.analysis import summary as tables


def test_mean_std_closed_forms():
    assert tables.mean_std([1.0, 3.0]) == (2.0, 1.0)  # population std (ddof=0)
    mean, std = tables.mean_std([1.0, 3.0], ddof=1)
    assert mean == 2.0 and std == pytest.approx(math.sqrt(2.0))


def test_mean_std_single_value_and_nan():
    mean, std = tables.mean_std([0.883])
    assert mean == 0.883 and math.isnan(std)
    mean, std = tables.mean_std([0.8, float("nan"), 1.0])
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.1)
    mean, std = tables.mean_std([float("nan")])
    assert math.isnan(mean) and math.isnan(std)
    mean, std = tables.mean_std([])
    assert math.isnan(mean) and math.isnan(std)


def test_mean_std_rejects_other_ddof():
    with pytest.raises(ValueError, match="ddof"):
        tables.mean_std([1.0, 2.0], ddof=2)


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((0.883, 0.002), {}, "88.3 ± 0.2"),
        ((0.883, None), {}, "88.3"),
        ((0.883, float("nan")), {}, "88.3"),
        ((float("nan"), 0.01), {}, "n/a"),
        ((None, None), {}, "n/a"),
        ((88.25, 0.04), {"percent": False, "digits": 2}, "88.25 ± 0.04"),
        ((6.0, None), {"percent": False, "digits": 0}, "6"),
        ((np.float32(0.5), np.float64(0.0)), {}, "50.0 ± 0.0"),
    ],
)
def test_format_mean_std(args, kwargs, expected):
    assert tables.format_mean_std(*args, **kwargs) == expected


def test_format_never_prints_nan():
    for mean in (float("nan"), np.nan, np.float32("nan")):
        assert "nan" not in tables.format_mean_std(mean, float("nan")).lower()


def test_summarise_groups_and_counts():
    records = pd.DataFrame({
        "method": ["dino_qpm"] * 4 + ["dense"] * 2,
        "dataset": ["cub"] * 6,
        "seed": [0, 1, 0, 1, 0, 1],
        "metric": ["accuracy", "accuracy", "sid_at_5", "sid_at_5", "accuracy", "accuracy"],
        "value": [0.8, 1.0, 0.5, float("nan"), 0.7, 0.7],
    })
    out = tables.summarise(records)
    assert list(out.columns) == ["method", "dataset", "metric", "mean", "std", "n"]
    assert len(out) == 3
    acc = out[(out.method == "dino_qpm") & (out.metric == "accuracy")].iloc[0]
    assert acc["mean"] == pytest.approx(0.9) and acc["std"] == pytest.approx(0.1) and acc["n"] == 2
    sid = out[(out.method == "dino_qpm") & (out.metric == "sid_at_5")].iloc[0]
    assert sid["n"] == 1 and math.isnan(sid["std"])
    dense = out[out.method == "dense"].iloc[0]
    assert dense["std"] == 0.0


def test_summarise_needs_columns():
    with pytest.raises(ValueError, match="seed"):
        tables.summarise(pd.DataFrame({"method": ["a"], "metric": ["accuracy"], "value": [1.0]}))


@pytest.fixture
def ours():
    return pd.DataFrame({
        "method": ["dino_qpm", "dino_qpm", "dense", "dino_qpm"],
        "dataset": ["cub", "cub", "cub", "cub"],
        "metric": ["accuracy", "plausibility", "accuracy", "patch_contextualisation"],
        "mean": [0.881, 0.90, 0.781, 0.40],
        "std": [0.002, float("nan"), 0.01, 0.0],
    })


def test_beside_paper_columns_and_differences(ours):
    out = tables.beside_paper(ours, "table1")
    assert list(out.columns)[:8] == ["row", "method", "dataset", "metric", "ours", "paper", "difference", "note"]
    qpm = out[(out["row"] == "dino_qpm") & (out["metric"] == "accuracy") & (out["dataset"] == "cub")].iloc[0]
    assert qpm["ours"] == "88.1 ± 0.2" and qpm["paper"] == "88.3"
    assert qpm["difference"] == pytest.approx(88.1 - 88.3)  # ours − paper, percentage points
    plaus = out[(out["row"] == "dino_qpm") & (out["metric"] == "plausibility")].iloc[0]
    assert plaus["ours"] == "90.0" and plaus["difference"] == pytest.approx(-5.0)


def test_beside_paper_keeps_every_paper_cell_and_flags_the_rest(ours):
    out = tables.beside_paper(ours, "table1")
    assert len(out) == 8 * 9 + 1  # every paper cell, plus our metric the paper lacks
    resnet = out[out["row"] == "resnet50_qpm"]
    assert (resnet["ours"] == "n/a").all() and resnet["difference"].isna().all()
    assert resnet["note"].str.contains("reported only").all()
    assert not resnet["note"].str.contains("not run").any()
    sldd = out[out["row"] == "dino_sldd"]
    assert sldd["note"].str.contains("not run in this profile").all()
    extra = out.iloc[-1]
    assert extra["metric"] == "patch_contextualisation" and extra["paper"] == "−"
    assert "not reported in the paper" in extra["note"]
    compact_sid = out[(out["row"] == "dino_qpm_compact") & (out["metric"] == "sid_at_5")]
    assert (compact_sid["paper"] == "−").all() and not compact_sid["note"].str.contains("not run").any()


def test_beside_paper_maps_datasets_and_handles_percent_input(ours):
    demo = ours.assign(dataset="synthbirds", mean=ours["mean"] * 100, std=ours["std"] * 100)
    out = tables.beside_paper(demo, "table1", ours_in_percent=True, dataset_map={"synthbirds": "cub"})
    qpm = out[(out["row"] == "dino_qpm") & (out["metric"] == "accuracy") & (out["dataset"] == "cub")].iloc[0]
    assert qpm["ours_mean"] == pytest.approx(88.1)
    assert "ours on synthbirds" in qpm["note"]


def test_beside_paper_table2_matches_any_dataset():
    ours = pd.DataFrame({"method": ["dino_qpm", "dino_qpm"], "dataset": ["cub", "cub"],
                         "metric": ["n_features", "seconds_per_epoch"], "mean": [50.0, 7.5], "std": [0.0, 0.5]})
    out = tables.beside_paper(ours, "table2")
    assert set(out["dataset"]) == {"cub"} and len(out) == 8 * 3
    row = out[(out["row"] == "dino_qpm") & (out["metric"] == "seconds_per_epoch")].iloc[0]
    assert row["difference"] == pytest.approx(1.5) and row["ours"] == "7.5 ± 0.5" and row["paper"] == "6"
    n = out[(out["row"] == "dino_qpm") & (out["metric"] == "n_features")].iloc[0]
    assert n["ours"] == "50 ± 0" and n["difference"] == 0.0


def test_beside_paper_table3_uses_row_keys():
    ours = pd.DataFrame({"row": ["patch_reg"], "method": ["dino_qpm"], "dataset": ["cub"],
                         "metric": ["accuracy"], "mean": [0.80], "std": [float("nan")]})
    out = tables.beside_paper(ours, "table3")
    hit = out[(out["row"] == "patch_reg") & (out["metric"] == "accuracy")].iloc[0]
    assert hit["difference"] == pytest.approx(80.0 - 88.3) and hit["method"] == "dino_qpm"


def test_beside_paper_rejects_bad_input(ours):
    with pytest.raises(ValueError, match="table1"):
        tables.beside_paper(ours, "table5")
    with pytest.raises(ValueError, match="summarise"):
        tables.beside_paper(pd.concat([ours, ours]), "table1")
    with pytest.raises(ValueError, match="missing"):
        tables.beside_paper(ours.drop(columns="std"), "table1")
    with pytest.raises(ValueError, match="accuracy"):
        tables.beside_paper(ours.assign(metric="acc"), "table1")


def test_reproduction_verdict_sentences():
    agree = tables.reproduction_verdict(-0.4, 1.0, what="DINO-QPM's CUB accuracy")
    assert agree.startswith("DINO-QPM's CUB accuracy agrees") and "-0.4" in agree
    differ = tables.reproduction_verdict(3.2, 1.0)
    assert differ.startswith("This value differs") and "+3.2" in differ
    assert "cannot be compared" in tables.reproduction_verdict(float("nan"), 1.0)
    assert "agrees" in tables.reproduction_verdict(1.0, 1.0)  # the boundary counts as agreement
    with pytest.raises(ValueError, match="tolerance"):
        tables.reproduction_verdict(0.0, -1.0)


def test_styled_renders(ours):
    html = tables.styled(tables.beside_paper(ours, "table1")).to_html()
    assert "DINO-QPM" in html and ">n/a<" in html and ">nan<" not in html.lower()


def test_beside_paper_rejects_datasets_mapped_onto_one(ours):
    both = pd.concat([ours, ours.assign(dataset="synthbirds")])
    with pytest.raises(ValueError, match="dataset_map"):
        tables.beside_paper(both, "table1", dataset_map={"synthbirds": "cub"})


def test_gather_beside_paper_values_and_reasons():
    ours = pd.DataFrame({"method": ["dino_qpm", "dense", "dino_qpm"], "dataset": ["synthbirds"] * 3,
                         "metric": ["accuracy", "plausibility", "n_features"], "mean": [0.5, 0.25, 8.0],
                         "std": [math.nan] * 3})
    table = tables.gather_beside_paper({"table1": ours}, dataset_map={"synthbirds": "cub"},
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
    both = tables.gather_beside_paper({"table1": ours, "table2": ours}, dataset_map={"synthbirds": "cub"})
    t2 = both[(both.table == "table2") & both.ours_mean.notna()]
    assert t2[["row", "metric", "ours_mean", "difference"]].values.tolist() == [["dino_qpm", "n_features", 8.0, -42.0]]
    assert tables.gather_beside_paper({}).empty
    with pytest.raises(ValueError, match="valid names: table1"):
        tables.gather_beside_paper({"table9": ours})


def test_wide_and_paper_tables_and_method_gap():
    summary = tables.summarise(pd.DataFrame({
        "method": ["dino_qpm", "dino_qpm", "dense", "dense"], "dataset": ["cub"] * 4, "seed": [0, 1, 0, 1],
        "metric": ["accuracy"] * 4, "value": [0.9, 0.8, 0.7, 0.7]}))
    wide = tables.wide_table(summary, ["accuracy"])
    assert wide.loc["DINO-QPM", "Accuracy / cub"] == "85.0 ± 5.0"
    assert wide.loc["Dense F_froz", "Accuracy / cub"] == "70.0 ± 0.0"
    assert tables.method_gap(summary, "dino_qpm", "dense").to_dict() == {"cub": pytest.approx(15.0)}
    assert tables.method_gap(summary, "dino_qpm", "linear_probe").empty
    t1 = tables.paper_table("table1")
    assert t1.loc["DINO-QPM", "Accuracy / cub"] == 88.3 and t1.shape == (8, 9)
    t3 = tables.paper_table("table3")
    assert list(t3.columns) == ["Accuracy", "Plausibility"] and t3.loc["F_froz, registers", "Accuracy"] == 88.3


def test_paper_dataset_map_and_lookups():
    from qpmlib.config import get_profile

    assert tables.paper_dataset_map(get_profile("demo")) == {"synthbirds": "cub"}
    assert tables.paper_dataset_map(get_profile("paper")) is None
    ours = pd.DataFrame({"method": ["dino_qpm"], "dataset": ["synthbirds"], "metric": ["accuracy"], "mean": [0.5],
                         "std": [math.nan]})
    beside = tables.gather_beside_paper({"table1": ours}, dataset_map={"synthbirds": "cub"})
    assert tables.beside_value(beside, "dino_qpm", "accuracy", "cub") == 50.0
    assert tables.beside_value(beside, "dino_qpm", "accuracy", "cub", column="paper_value", table="table1") == 88.3
    assert math.isnan(tables.beside_value(beside, "dino_qpm", "accuracy", "cars"))
    assert set(tables.table_rows(beside, "table1")["dataset"]) == {"cub"}



def test_headline_table_is_ours_beside_the_paper_per_method_and_metric():
    from qpmlib import paper
    from qpmlib.analysis.summary import MISSING, headline_table

    beside = pd.DataFrame([
        # row, dataset, metric, ours, paper
        ("dino_qpm", "cub", "accuracy", 71.26, 88.6),
        ("dino_qpm", "cub", "plausibility", 40.0, float("nan")),
        ("dino_qpm", "cars", "accuracy", 50.0, 91.0),
        ("dense", "cub", "accuracy", 60.04, 77.0),
        ("resnet50", "cub", "accuracy", float("nan"), 86.0),  # reported only: not ours
        ("dense", "cub", "seconds_per_epoch", 1.0, 2.0),  # not asked for
    ], columns=["row", "dataset", "metric", "ours_mean", "paper_value"])
    table = headline_table(beside, ["plausibility", "accuracy"], dataset="cub")
    assert list(table.index) == [paper.method_display("dino_qpm"), paper.method_display("dense")]
    assert list(table.columns) == [paper.metric_display("plausibility"), paper.metric_display("accuracy")]
    assert table.iloc[0].tolist() == ["40.0 (−)", "71.3 (88.6)"]
    assert table.iloc[1].tolist() == [MISSING, "60.0 (77.0)"]
