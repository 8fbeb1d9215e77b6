"""qpmlib.analysis.report: the paper-vs-code table, profile differences, compute time."""

import json

import pytest

from qpmlib.analysis import report


def test_discrepancy_table_covers_section_10():
    table = report.discrepancy_table()
    assert table["row"].tolist() == list(range(1, 18))
    assert {"topic", "paper", "code", "book", "option"} <= set(table.columns)


def test_profile_differences():
    same = report.profile_differences("paper", pretrained=True)
    assert not same["differs"].any()
    code = report.profile_differences("paper_code", pretrained=True).set_index("item")
    assert code.loc["dense / fine-tune epochs"].tolist() == ["40 / 50", "25 / 25", "25 / 25", True]
    assert code.loc["dense / fine-tune batch"].tolist() == ["32 / 32", "32 / 16", "32 / 16", True]
    assert code["differs"].sum() == 2  # the presets differ in the hyperparameters of reference_spec §10 row 6
    smoke = report.profile_differences("smoke", pretrained=False).set_index("item")
    assert smoke.loc["backbone weights", "this run"] == "fixed random" and smoke.loc["dataset", "differs"]
    with pytest.raises(ValueError, match="valid profiles"):
        report.profile_differences("nope")


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
