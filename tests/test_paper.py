"""The paper's numbers: literal spot checks against the PDF text, table shapes, and consistency checks."""

import math

import pytest

from qpmlib import paper


@pytest.mark.parametrize(
    ("table", "row", "metric", "dataset", "expected"),
    [
        ("table1", "dino_qpm", "accuracy", "cub", 88.3),
        ("table1", "dino_qpm", "accuracy", "cars", 94.0),
        ("table1", "dino_qpm", "sid_at_5", "cub", 90.1),
        ("table1", "dino_qpm", "plausibility", "cub", 95.0),
        ("table1", "linear_probe", "accuracy", "cub", 87.9),
        ("table1", "linear_probe", "class_independence", "cub", 99.2),
        ("table1", "dense", "accuracy", "cub", 78.1),
        ("table1", "resnet50_qpm", "contrastiveness", "cars", 97.1),
        ("table1", "dino_qsenn", "sid_at_5", "cars", 92.6),
        ("table1", "dino_qpm_compact", "plausibility", "cub", 94.4),
        ("table2", "linear_probe", "n_features", "any", 768),
        ("table2", "dino_qpm_compact", "n_per_class", "any", 4),
        ("table2", "resnet50_qpm", "seconds_per_epoch", "any", 40),
        ("table3", "cls_reg", "plausibility", "cub", 99.2),
        ("table3", "patch_noreg", "accuracy", "cub", 83.3),
        ("table4", "dino_vitb16", "accuracy", "cub", 37.1),
        ("table4", "dinov2_vitl14_reg", "patch_contextualisation", "cub", 2.2),
    ],
)
def test_literal_values_match_the_paper(table, row, metric, dataset, expected):
    assert paper.paper_value(table, row, metric, dataset) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("table", "rows", "columns"),
    [
        ("table1", list(paper.METHODS), 9),
        ("table2", list(paper.METHODS), 3),
        ("table3", ["cls_noreg", "cls_reg", "patch_noreg", "patch_reg"], 2),
        ("table4", list(paper.TABLE4_BACKBONES), 2),
    ],
)
def test_every_table_has_its_full_shape(table, rows, columns):
    frame = paper.paper_values(table)
    assert list(dict.fromkeys(frame["row"])) == rows
    assert len(frame) == len(rows) * columns
    assert not frame.duplicated(["row", "dataset", "metric"]).any()


def test_table1_columns_in_paper_order():
    frame = paper.paper_values("table1", row="dino_qpm")
    assert list(zip(frame["metric"], frame["dataset"])) == [
        ("accuracy", "cub"), ("accuracy", "cars"), ("plausibility", "cub"), ("sid_at_5", "cub"),
        ("sid_at_5", "cars"), ("class_independence", "cub"), ("class_independence", "cars"),
        ("contrastiveness", "cub"), ("contrastiveness", "cars"),
    ]


def test_dash_cells_are_nan_with_a_note():
    frame = paper.paper_values("table1", row="dino_qpm_compact", metric="sid_at_5")
    assert len(frame) == 2
    assert frame["value"].isna().all()
    assert frame["note"].str.contains("−").all()
    # no other cell of the four tables is missing
    assert paper.paper_values()["value"].isna().sum() == 2


def test_cross_table_consistency():
    # The base DINO-QPM appears in Tables 1, 3 and 4 with the same CUB accuracy.
    base = paper.paper_value("table1", "dino_qpm", "accuracy", "cub")
    assert paper.paper_value("table3", "patch_reg", "accuracy", "cub") == base
    assert paper.paper_value("table4", "dinov2_vitb14_reg", "accuracy", "cub") == base
    assert paper.paper_value("table3", "patch_reg", "plausibility", "cub") == paper.paper_value(
        "table1", "dino_qpm", "plausibility", "cub")
    # Sec. 1 claims DINO-QPM beats the dense model by more than 10 points on CUB.
    claim = paper.claim("sec1")
    assert claim.relation == ">" and base - paper.paper_value("table1", "dense", "accuracy", "cub") > claim.value


def test_units_and_std():
    frame = paper.paper_values()
    assert set(frame.loc[frame["table"] == "table1", "unit"]) == {"%"}
    assert set(paper.paper_values("table2")["unit"]) == {"count", "s"}
    assert frame["std"].isna().all()  # Sec. 13 is not in our copy of the paper


def test_reported_only_rows_are_the_resnet50_ones():
    reported_only = {k for k, m in paper.METHODS.items() if not m.reproduced}
    assert reported_only == {"resnet50_baseline", "resnet50_qpm"}
    notes = paper.paper_values("table1", method="resnet50_qpm")["note"]
    assert notes.str.contains("reported only").all()
    assert not paper.paper_values("table1", method="dino_qpm")["note"].str.contains("reported only").any()


def test_metric_directions_and_names():
    assert all(paper.METRICS[k].higher_is_better for k in ("accuracy", "sid_at_5", "plausibility"))
    assert not any(paper.METRICS[k].higher_is_better for k in ("n_features", "n_per_class", "seconds_per_epoch"))
    assert paper.method_display("linear_probe") == "DINOv2 f_CLS linear probe"
    assert paper.method_display("patch_reg") == "F_froz, registers"
    assert paper.method_display("not_a_method") == "not_a_method"
    assert paper.metric_display("sid_at_5") == "SID@5"


def test_table3_and_table4_rows_describe_settings():
    assert {s["backbone"] for s in paper.TABLE3_SETTINGS.values()} == {"dinov2_vitb14", "dinov2_vitb14_reg"}
    assert [s["localised"] for s in paper.TABLE3_SETTINGS.values()] == [False, False, True, True]
    assert [s["pooling"] for s in paper.TABLE3_SETTINGS.values()] == ["cls", "cls", "avg_pooling", "avg_pooling"]
    assert set(paper.paper_values("table4")["row"]) == set(paper.TABLE4_BACKBONES)


def test_claims_are_well_formed():
    keys = [c.key for c in paper.CLAIMS]
    assert len(set(keys)) == len(keys)
    for claim in paper.CLAIMS:
        assert claim.relation in {">", ">=", "<", "<=", "≈"} and isinstance(claim.value, float)
        assert claim.tolerance >= 0 and (claim.relation == "≈" or claim.tolerance == 0)
        assert claim.source.startswith(("fig", "sec")) and claim.text
    assert paper.claim("fig2").value == 98.4
    assert paper.claim("fig7_gap").stated == 10.0 and paper.claim("fig7_gap").value == 5.0
    with pytest.raises(ValueError, match="fig7_gap"):
        paper.claim("fig7")


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"table": "table9"}, "table1"), ({"method": "qpm"}, "dino_qpm"), ({"metric": "acc"}, "accuracy"),
     ({"dataset": "birds"}, "cub")],
)
def test_unknown_names_list_the_valid_ones(kwargs, word):
    with pytest.raises(ValueError, match=word):
        paper.paper_values(**kwargs)


def test_missing_cell_names_rows_and_columns():
    with pytest.raises(ValueError, match="patch_reg"):
        paper.paper_value("table3", "patch_reg", "sid_at_5", "cub")


def test_paper_values_returns_a_copy():
    frame = paper.paper_values("table1")
    frame.loc[0, "value"] = -1.0
    assert not math.isclose(paper.paper_values("table1")["value"].iloc[0], -1.0)


def test_backbone_keys_exist_in_the_pipeline():
    backbones = pytest.importorskip("qpmlib.backbones")
    used = {s["backbone"] for s in paper.TABLE3_SETTINGS.values()} | set(paper.TABLE4_BACKBONES)
    assert used <= set(backbones.BACKBONES)
