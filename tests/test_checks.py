"""qpmlib.runs.checks: every profile field is checked before any work, and errors list the valid values."""

import pytest

from qpmlib.config import apply_overrides, get_profile
from qpmlib.runs.checks import check_profile


@pytest.mark.parametrize("name", ["smoke", "demo", "paper"])
def test_the_book_profiles_pass(name):
    check_profile(get_profile(name))


@pytest.mark.parametrize(
    "key, value, match",
    [("qp.n_per_class", 9, "qp.n_per_class"), ("qp.n_selected", 30, "exceeds model.n_features"),
     ("train.ft_fdl", -1.0, "train.ft_fdl"), ("train.dense_epochs", -1, "train.dense_epochs"),
     ("qp.r_mode", "paper", "qp.r_mode"), ("model.dropout", 1.0, "model.dropout"),
     ("qp.solver", "cplex", "qp.solver must be one of auto, open, gurobi, exhaustive"),
     ("qp.time_limit", 0.0, "qp.time_limit"), ("qp.gurobi", "fast", "qp.gurobi must be one of reference, exact"),
     ("data.dataset", "mnist", "synthbirds, cub, cars, synthcars"),
     ("data.normalisation", "none", "reference, imagenet"), ("backbone.name", "vit_huge", "dinov2_vits14"),
     ("backbone.weights", "/no/such/file.pth", "auto, pretrained, random"), ("backbone.batch_size", 0, "batch"),
     ("train.device", "tpu", "train.device"), ("train.precision", "fp16", "bf16"),
     ("baselines.qsenn_schedule", "fast", "reference, qsenn"), ("baselines.compact", (4, 5), "baselines.compact"),
     ("baselines.glm_n_lambdas", 1, "glm_n_lambdas"), ("data.n_classes", 0, "data.n_classes"),
     ("cluster.executor", "ray", "cluster.executor must be one of local, slurm"),
     ("cluster.train", {"cpus": 0}, "cluster.train.cpus"), ("cluster.embed", {"mem_gb": 0.0}, "cluster.embed.mem_gb"),
     ("cluster.partition", " ", "cluster.partition"), ("cluster.poll_s", 0.0, "cluster.poll_s"),
     ("cluster.run_overhead_s", -1.0, "cluster.run_overhead_s")],
)
def test_check_profile_names_the_field(key, value, match):
    with pytest.raises(ValueError, match=match):
        check_profile(apply_overrides("smoke", {key: value}))


def test_generated_datasets_in_either_layout_need_their_sizes():
    check_profile(apply_overrides("smoke", {"data.dataset": "synthcars"}))
    with pytest.raises(ValueError, match="data.n_train"):
        check_profile(apply_overrides("smoke", {"data.dataset": "synthcars", "data.n_train": 0}))
    check_profile(apply_overrides("smoke", {"data.dataset": "cars", "data.n_train": 0}))  # real data: unused


def test_check_profile_needs_enough_distinct_class_sets():
    prof = apply_overrides("smoke", {"qp.n_selected": 3, "qp.n_per_class": 2})  # C(3, 2) = 3 sets
    check_profile(prof, n_classes=3)
    with pytest.raises(ValueError, match="only 3 distinct"):
        check_profile(prof, n_classes=4)


def test_seeds_and_sweep_backbones_are_checked():
    smoke = get_profile("smoke")
    with pytest.raises(ValueError, match="distinct"):
        check_profile(smoke.replace(seeds=(0, 0)))
    with pytest.raises(ValueError, match="sweeps.backbones"):
        check_profile(smoke.replace(sweeps=smoke.sweeps.__class__(backbones=("nope",))))


def test_a_bad_solver_fails_before_any_training(monkeypatch):
    from qpmlib.runs import dino_qpm

    monkeypatch.setattr(dino_qpm, "get_store", lambda *a, **k: pytest.fail("embeddings were opened"))
    with pytest.raises(ValueError, match="qp.solver"):
        dino_qpm.run_dino_qpm("smoke", overrides={"qp.solver": "cplex"})
