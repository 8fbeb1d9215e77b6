"""Tests for qpmlib.experiments: long-format records of Tables 1, 3 and 4 (with fake runners), backbone choice."""

import dataclasses
import math

import numpy as np
import pytest

from qpmlib import experiments as ex
from qpmlib.baselines import MethodRun
from qpmlib.paper import TABLE3_SETTINGS
from qpmlib.profiles import get_profile
from qpmlib.tables import beside_paper, summarise_runs


def _fake_runner(calls):
    def runner(method, profile, seed, *, overrides=None, verbose=False):
        calls.append((method, seed, dict(overrides or {})))
        metrics = {"accuracy": 0.5 + seed / 10, "plausibility": None, "sid_at_5": 0.9, "sid_k": 5,
                   "part_alignment": 0.3, "n_features": 8, "n_per_class": 2.0, "solver": "open"}
        return MethodRun(method, get_profile(profile), seed, metrics, lambda: None)

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
    # sid_k, part_alignment and the string are not paper metrics; None becomes NaN
    assert set(df["metric"]) == {"accuracy", "plausibility", "sid_at_5", "n_features", "n_per_class"}
    assert df.loc[df["metric"] == "plausibility", "value"].isna().all()
    acc = df[(df.metric == "accuracy") & (df.seed == 1)]["value"]
    assert np.allclose(acc, 0.6)
    summary = summarise_runs(df)
    row = summary[(summary.method == "dino_qpm") & (summary.dataset == "cub") & (summary.metric == "accuracy")]
    assert row["mean"].item() == pytest.approx(0.55) and row["std"].item() == pytest.approx(0.05)
    beside = beside_paper(summary, "table1")
    cell = beside[(beside.row == "dino_qpm") & (beside.dataset == "cub") & (beside.metric == "accuracy")]
    assert cell["difference"].item() == pytest.approx(55.0 - 88.3)


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

    def runner(profile, seed, overrides):
        calls.append(overrides)
        return MethodRun("dino_qpm", profile, seed, {"accuracy": 0.7, "plausibility": 0.4, "sid_at_5": 1.0},
                         lambda: None)

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

    def runner(profile, seed, overrides):
        return MethodRun("dino_qpm", profile, seed, {"accuracy": 0.1 * (seed + 1)}, lambda: None)

    df = ex.table4_records("demo", seeds=[0, 1], runner=runner, context=context)
    assert seen == list(get_profile("demo").sweeps.backbones)
    pc = df[df.metric == "patch_contextualisation"]
    assert len(pc) == 2 * len(seen) and np.allclose(pc["value"], 0.25)
    summary = summarise_runs(df)
    assert math.isclose(summary[summary.metric == "patch_contextualisation"]["std"].max(), 0.0)
    with pytest.raises(ValueError, match="dinov2_vits14"):
        ex.table4_records("demo", backbones=["vit_huge"], runner=runner, context=context)


def test_image_cosines_mean_is_patch_contextualisation():
    from qpmlib.metrics import patch_contextualisation

    rng = np.random.default_rng(0)
    patches = rng.normal(size=(5, 4, 3))
    cls = rng.normal(size=(5, 3))
    cls[0] = patches[0].mean(axis=0) * 2.0  # parallel: cosine 1
    cls[1] = 0.0  # zero vector: cosine 0
    values = ex.image_cosines(patches, cls)
    assert values[0] == pytest.approx(1.0) and values[1] == 0.0
    assert values.mean() == pytest.approx(patch_contextualisation(patches.astype(np.float32),
                                                                  cls.astype(np.float32)), abs=1e-6)
    with pytest.raises(ValueError, match="cls_tokens"):
        ex.image_cosines(patches, cls[:, :2])
    fig = ex.cosine_histogram(values, title="t")
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "t"


@pytest.mark.slow
def test_smoke_qp_overview_solver_comparison_and_explanations(tmp_path, monkeypatch):
    import torch

    from qpmlib import baselines

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    selection, solver = ex.qp_overview("smoke")
    prof = get_profile("smoke")
    assert len(selection) == prof.data.n_classes
    assert all(len(f) == prof.qp.n_per_class for f in selection["features"])
    assert solver["gap"] is None or solver["gap"] >= 0
    table = ex.solver_comparison("smoke", {"default": {}, "open": {"qp.solver": "open", "qp.time_limit": 0.5}})
    assert list(table["setting"]) == ["default", "open"] and table["shared_features"].iloc[0] == prof.qp.n_selected
    image, label = ex.load_test_image("smoke", 0)
    assert image.shape == (prof.data.image_size, prof.data.image_size, 3) and 0 <= image.min() <= image.max() <= 1
    qpm = ex.explanation_figure(baselines.run_dino_qpm("smoke", 0), 0)
    assert "DINO-QPM" in qpm.axes[0].get_title()
    dense = ex.explanation_figure(baselines.run_dense("smoke", 0), 0)
    assert dense.axes[0].get_title().endswith("(CAM)")
