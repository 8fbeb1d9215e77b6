"""Tests of qpmlib.analysis.sweeps: grid bookkeeping with a fake runner, and cache reuse with the real pipeline."""

import dataclasses
import math
from types import SimpleNamespace

import pandas as pd
import pytest

from qpmlib.analysis import sweeps
from qpmlib.analysis.summary import summarise
from qpmlib.config import apply_overrides, get_profile


def fake_runner(calls):
    """Runs whose metrics are closed-form functions of the overrides, so the tables can be checked exactly."""

    def metrics(seed, overrides):
        acc = 0.5 + 0.01 * overrides.get("train.ft_l1_fm", 0.0) + 0.001 * seed
        out = {"dense": {"accuracy": 0.5 + 0.001 * seed, "sid_at_5": 0.9, "solver": "open"}}
        if overrides.get("model.n_layers", 1) > 0:
            out["dino_qpm"] = {"accuracy": acc, "sid_at_5": None}
        return out

    def run(method, prof, seeds, *, overrides, verbose):
        assert method == "dino_qpm"
        calls.extend((seed, dict(overrides)) for seed in seeds)
        return [SimpleNamespace(seed=s, stage_metrics=lambda s=s: metrics(s, overrides)) for s in seeds]

    return run


# ------------------------------------------------------------------ parameters and overrides
def test_overrides_for_each_kind_of_parameter():
    assert sweeps.overrides_for("l1_fm", 5.0) == {"train.ft_l1_fm": 5.0}
    assert sweeps.overrides_for("fdl", 2.0) == {"train.dense_fdl": 2.0, "train.ft_fdl": 2.0}
    assert sweeps.overrides_for("sparsity", (40, 4)) == {"qp.n_selected": 40, "qp.n_per_class": 4}
    with pytest.raises(ValueError, match="2 values"):
        sweeps.overrides_for("sparsity", 40)
    with pytest.raises(ValueError, match="valid: .*l1_fm"):
        sweeps.overrides_for("l1-fm", 1.0)


OFF_GRID = {"ft_fdl": 2.0, "dense_fdl": 2.0, "n_selected": 6, "n_per_class": 3}


@pytest.mark.parametrize("param", list(sweeps.SWEEPS))
def test_every_parameter_sets_a_real_profile_field(param):
    prof = get_profile("smoke")
    value = OFF_GRID[param] if param in OFF_GRID else sweeps.sweep_values(prof, param)[-1]
    overrides = sweeps.overrides_for(param, value)
    changed = apply_overrides(prof, overrides)
    for key, wanted in overrides.items():
        section, name = key.split(".")
        assert getattr(getattr(changed, section), name) == wanted


def test_sweep_values_come_from_the_profile():
    prof = get_profile("smoke")
    assert sweeps.sweep_values(prof, "l1_fm") == prof.sweeps.l1_fm
    assert sweeps.sweep_values(prof, "sparsity") == prof.sweeps.sparsity
    assert sweeps.sweep_values(prof, "pooling") == ("avg_pooling", "cls")
    with pytest.raises(ValueError, match="values= explicitly"):
        sweeps.sweep_values(prof, "ft_fdl")


def test_reuse_levels_match_the_fields_they_touch():
    for spec in sweeps.SWEEPS.values():
        sections = {k.split(".")[0] for k in spec.keys}
        fine_tune_only = all(k.startswith("train.ft_") for k in spec.keys)
        assert ("qp" in spec.reuses) == fine_tune_only
        assert ("dense" in spec.reuses) == (fine_tune_only or sections == {"qp"})


# ------------------------------------------------------------------ the grid
def test_sweep_grid_runs_the_product_and_writes_long_rows():
    calls = []
    df = sweeps.sweep_grid("smoke", {"n_layers": (0, 2), "l1_fm": (0.0, 5.0)}, seeds=(0, 1),
                           runner=fake_runner(calls))
    assert list(df.columns) == ["n_layers", "l1_fm", "seed", "stage", "metric", "value"]
    assert len(calls) == 2 * 2 * 2
    assert calls[0] == (0, {"model.n_layers": 0, "train.ft_l1_fm": 0.0})
    points = sweeps.sweep_requests("smoke", {"n_layers": (0, 2), "l1_fm": (0.0, 5.0)}, seeds=(0, 1))
    assert [c for c, _ in points] == [{"n_layers": 0, "l1_fm": 0.0}, {"n_layers": 0, "l1_fm": 5.0},
                                      {"n_layers": 2, "l1_fm": 0.0}, {"n_layers": 2, "l1_fm": 5.0}]
    assert [(seed, dict(r.overrides)) for _, r in points for seed in r.seeds] == calls
    # n_layers = 0 has no QPM stage; the string metric is dropped; None becomes NaN
    assert set(df.loc[df.n_layers == 0, "stage"]) == {"dense"}
    assert "solver" not in set(df.metric)
    sid = df[(df.stage == "dino_qpm") & (df.metric == "sid_at_5")]
    assert len(sid) == 4 and sid.value.isna().all()
    acc = df[(df.stage == "dino_qpm") & (df.metric == "accuracy") & (df.l1_fm == 5.0) & (df.seed == 1)]
    assert acc.value.tolist() == pytest.approx([0.551])


def test_sweep_defaults_to_profile_grid_and_seeds_and_keeps_fixed_overrides():
    calls = []
    prof = get_profile("smoke")
    df = sweeps.sweep(prof, "sparsity", fixed={"train.ft_epochs": 1}, stages=("dino_qpm",),
                      runner=fake_runner(calls))
    assert len(calls) == len(prof.sweeps.sparsity) * len(prof.seeds)
    assert all(c[1]["train.ft_epochs"] == 1 for c in calls)
    assert list(zip(df.n_selected, df.n_per_class))[0] == prof.sweeps.sparsity[0]
    assert set(df.stage) == {"dino_qpm"}


def test_figure_sweeps_are_the_figures_grids():
    calls = []
    prof = get_profile("smoke")
    df = sweeps.figure_sweep(prof, "fig7", runner=fake_runner(calls))
    assert list(df.columns)[:2] == ["n_layers", "pooling"]
    assert len(calls) == len(prof.sweeps.n_layers) * 2 * len(prof.sweeps.seeds or prof.seeds)
    with pytest.raises(ValueError, match="fig7"):
        sweeps.figure_sweep(prof, "fig10", runner=fake_runner(calls))


def test_sweep_grid_rejects_bad_input():
    run = fake_runner([])
    with pytest.raises(ValueError, match="both set train.ft_fdl"):
        sweeps.sweep_grid("smoke", {"fdl": (1.0,), "ft_fdl": (1.0,)}, runner=run)
    with pytest.raises(ValueError, match="both set"):
        sweeps.sweep("smoke", "l1_fm", fixed={"train.ft_l1_fm": 0.0}, runner=run)
    with pytest.raises(ValueError, match="stages"):
        sweeps.sweep("smoke", "l1_fm", stages=("qpm",), runner=run)
    with pytest.raises(ValueError, match="seeds is empty"):
        sweeps.sweep("smoke", "l1_fm", seeds=(), runner=run)
    with pytest.raises(ValueError, match="grid is empty"):
        sweeps.sweep_grid("smoke", {}, runner=run)


# ------------------------------------------------------------------ summaries
def _table():
    rows = []
    for x, dense, qpm in ((0.0, 0.50, 0.40), (1.0, 0.52, 0.60), (5.0, 0.51, 0.70)):
        for seed, shift in ((0, -0.01), (1, 0.01)):
            rows += [{"l1_fm": x, "seed": seed, "stage": "dense", "metric": "accuracy", "value": dense + shift},
                     {"l1_fm": x, "seed": seed, "stage": "dino_qpm", "metric": "accuracy", "value": qpm + shift}]
    return pd.DataFrame(rows)


def test_summarise_mean_std_and_count():
    s = summarise(_table())
    assert list(s.columns) == ["l1_fm", "stage", "metric", "mean", "std", "n"]
    row = s[(s.l1_fm == 1.0) & (s.stage == "dino_qpm")].iloc[0]
    assert row["mean"] == pytest.approx(0.60) and row["std"] == pytest.approx(0.01) and row["n"] == 2
    with pytest.raises(ValueError, match="seed and value"):
        summarise(_table().drop(columns="seed"))


def test_means_table_in_percent_with_display_names():
    s = summarise(_table())
    table = sweeps.means_table(s, "l1_fm", ["accuracy"])
    assert table.columns.tolist() == [("Dense F_froz", "Accuracy"), ("DINO-QPM", "Accuracy")]
    assert table.index.tolist() == [0.0, 1.0, 5.0]
    assert table.loc[5.0, ("DINO-QPM", "Accuracy")] == pytest.approx(70.0)
    with pytest.raises(ValueError, match="none of"):
        sweeps.means_table(s, "l1_fm", ["plausibility"])


def test_trend_spread_and_gap_closed_form():
    s = summarise(_table())
    assert sweeps.trend(s, "l1_fm", "accuracy", stage="dino_qpm") == pytest.approx(1.0)
    assert sweeps.trend(s, "l1_fm", "accuracy", stage="dense") == pytest.approx(0.5)
    assert math.isnan(sweeps.trend(s, "l1_fm", "accuracy", where={"l1_fm": 1.0}))
    assert sweeps.spread(s, "accuracy", stage="dense") == pytest.approx(0.02)
    gap = sweeps.stage_gap(s, "l1_fm")
    assert gap.index.tolist() == [0.0, 1.0, 5.0]
    assert gap.to_numpy() == pytest.approx([-0.10, 0.08, 0.19])
    with pytest.raises(ValueError, match="metrics: \\['accuracy'\\]"):
        sweeps.spread(s, "plausibility")


def test_chapter_helpers_closed_form():
    s = summarise(_table())
    assert sweeps.stage_means(s, "dense")["accuracy"] == pytest.approx(s[s.stage == "dense"]["mean"].mean())
    assert sweeps.value_at(s, "l1_fm", 1.0) == pytest.approx(s[(s.stage == "dino_qpm") & (s.l1_fm == 1.0)]
                                                            ["mean"].item())
    with pytest.raises(ValueError, match="not on the grid"):
        sweeps.value_at(s, "l1_fm", 3.0)
    assert sweeps.min_trend(s.assign(n_features=16), "l1_fm", "accuracy", over="n_features") == pytest.approx(1.0)
    undefined = pd.DataFrame([{"l1_fm": 0.0, "stage": "dino_qpm", "metric": "sid_at_5", "mean": math.nan}])
    assert sweeps.defined_metrics([pd.concat([s, undefined])], ["accuracy", "sid_at_5"]) == ["accuracy"]
    assert sweeps.shown_value("smoke", "l1_fm") == 5.0  # the profile's own value is on the grid
    assert sweeps.shown_value(apply_overrides("smoke", {"train.ft_l1_fm": 2.0}), "l1_fm") == 5.0  # else the largest


# ------------------------------------------------------------------ the real pipeline: reuse of cached stages
@pytest.fixture
def counted_pipeline(monkeypatch, tmp_path):
    """The smoke pipeline with 1-epoch stages, an empty results store in tmp_path, and counters."""
    from qpmlib import paths, qp
    from qpmlib.runs import dino_qpm as pipeline

    monkeypatch.setattr(paths, "results_dir", lambda profile: tmp_path / profile)
    counts = {"dense": 0, "qp": 0, "finetune": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(pipeline, "train_dense", counting("dense", pipeline.train_dense))
    monkeypatch.setattr(pipeline, "train_finetune", counting("finetune", pipeline.train_finetune))
    monkeypatch.setattr(qp, "solve_qpm", counting("qp", qp.solve_qpm))
    smoke = get_profile("smoke")
    prof = smoke.replace(train=dataclasses.replace(smoke.train, dense_epochs=1, ft_epochs=1))
    return prof, counts, tmp_path


@pytest.mark.slow
def test_fine_tune_sweeps_reuse_dense_model_and_qp_selection(counted_pipeline):
    from qpmlib.results import ResultStore

    prof, counts, root = counted_pipeline
    store = {kind: ResultStore(root / prof.name, kind) for kind in ("dense", "qp", "qpm")}
    df = sweeps.sweep(prof, "l1_fm", (0.0, 5.0), seeds=(0,))
    assert counts == {"dense": 1, "qp": 1, "finetune": 2}
    assert [len(store[k].keys()) for k in ("dense", "qp", "qpm")] == [1, 1, 2]
    assert set(df.stage) == {"dense", "dino_qpm"} and df.value.notna().any()
    dense_acc = df[(df.stage == "dense") & (df.metric == "accuracy")].value
    assert dense_acc.nunique() == 1  # one dense model behind both rows

    # a sparsity sweep reuses the dense model only; (8, 2) with l1_fm 5 is the default run, already stored
    sweeps.sweep(prof, "sparsity", ((6, 2), (8, 2)), seeds=(0,))
    assert counts == {"dense": 1, "qp": 2, "finetune": 3}
    assert [len(store[k].keys()) for k in ("dense", "qp", "qpm")] == [1, 2, 3]

    sweeps.sweep(prof, "l1_fm", (0.0, 5.0), seeds=(0,))  # everything cached: nothing trains
    assert counts == {"dense": 1, "qp": 2, "finetune": 3}
