"""qpmlib.analysis.report: the paper-vs-code table, profile differences, compute time."""

import json
import math

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
    demo = report.profile_differences("demo", pretrained=True).set_index("item")
    assert demo.loc["backbone weights", "this run"] == "stand-in pretrained here on SynthBirds"
    assert demo.loc["backbone weights", "differs"]


def test_setting_reason_names_the_stand_in():
    assert report.setting_reason("paper", pretrained=True, n_seeds=5) == ""
    demo = report.setting_reason("demo", pretrained=True, n_seeds=3)
    assert demo.startswith("SynthBirds (demo profile) for CUB") and "stand-in for DINOv2" in demo
    assert "3 seed(s), not 5" in demo
    assert "random backbone weights" in report.setting_reason("demo", pretrained=False, n_seeds=3)
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


def test_stage_figures_sum_time_and_keep_the_peak(tmp_path):
    stages = [("dense", "a", {"stage_seconds": 10.0, "peak_rss_mib": 900.0, "peak_cuda_mib": None}),
              ("dense", "b", {"stage_seconds": 10.0, "peak_rss_mib": 900.0, "peak_cuda_mib": None}),  # stacked with a
              ("dense", "c", {"stage_seconds": 4.0, "peak_rss_mib": 1500.0, "peak_cuda_mib": 30.0}),
              ("qp", "d", {"stage_seconds": 2.0, "peak_rss_mib": 700.0, "peak_cuda_mib": None}),
              ("qp", "e", {"total_seconds": 3.0}),  # stored before the meter: skipped
              ("qp", ".tmp-f", {"stage_seconds": 99.0, "peak_rss_mib": 1.0})]
    for kind, key, prov in stages:
        (tmp_path / kind / key).mkdir(parents=True)
        (tmp_path / kind / key / "provenance.json").write_text(json.dumps(prov))
    table = report.stage_figures("smoke", results_root=tmp_path).set_index("stage")
    assert table.loc["dense", ["count", "seconds", "max_seconds", "peak_rss_mib", "peak_cuda_mib"]].tolist() == \
        [2, 14.0, 10.0, 1500.0, 30.0]
    assert table.loc["qp", ["count", "seconds", "peak_rss_mib"]].tolist() == [1, 2.0, 700.0]
    assert math.isnan(table.loc["qp", "peak_cuda_mib"])
    assert report.stage_figures("smoke", results_root=tmp_path / "none").empty
