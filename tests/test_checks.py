"""qpmlib.runs.checks: every profile field is checked before any work, and errors list the valid values."""

import pytest

from qpmlib.config import apply_overrides, get_profile
from qpmlib.runs.checks import check_profile


@pytest.mark.parametrize("name", ["smoke", "demo", "paper", "paper_code", "paper_shapes"])
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
     ("cluster.run_overhead_s", -1.0, "cluster.run_overhead_s"), ("cluster.workers", 0, "cluster.workers"),
     ("cluster.threads", 0, "cluster.threads")],
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


def test_check_ready_lists_every_problem_with_its_fix(tmp_path, monkeypatch):
    from qpmlib.runs import checks

    monkeypatch.setenv("QPMLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(checks.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(checks, "pretrained_available", lambda name, weights: name != "dino_vitb16")
    monkeypatch.setattr(checks, "hub_offline", lambda: True)
    with pytest.raises(checks.NotReady) as info:
        checks.check_ready(get_profile("paper"), backbones=("dino_vitb16", "dinov2_vitb14_reg"))
    message = str(info.value)
    assert "no CUDA device" in message and "train.device=auto" in message
    assert "dataset 'cub'" in message and "download_cub.py" in message
    assert "dataset 'cars'" in message and "download_cars.py" in message
    assert "'dino_vitb16' has no pretrained weights" in message and "dino_vitbase16_pretrain.pth" in message
    assert "'dinov2_vitb14_reg' has no" not in message  # its weights are here
    # online, timm downloads the weights; on the CPU, only the data is missing
    monkeypatch.setattr(checks, "hub_offline", lambda: False)
    with pytest.raises(checks.NotReady) as info:
        checks.check_ready(apply_overrides("paper", {"train.device": "auto"}))
    assert "CUDA" not in str(info.value) and "weights" not in str(info.value) and "cub" in str(info.value)


def test_check_ready_passes_generated_data_and_fails_bad_fields_first(tmp_path, monkeypatch):
    from qpmlib.runs import checks

    monkeypatch.setenv("QPMLIB_DATA", str(tmp_path / "data"))  # SynthBirds is generated on first use
    checks.check_ready(get_profile("smoke"))
    checks.check_ready(get_profile("paper_shapes"), backbones=get_profile("paper_shapes").sweeps.backbones)
    with pytest.raises(ValueError, match="qp.solver"):
        checks.check_ready(apply_overrides("paper", {"qp.solver": "cplex"}))
    assert not (tmp_path / "data").exists()  # nothing generated by a check


def test_extract_script_stops_before_extracting_when_not_ready(tmp_path, monkeypatch, capsys):
    import importlib.util

    from qpmlib.paths import REPO_ROOT

    spec = importlib.util.spec_from_file_location("extract_embeddings", REPO_ROOT / "data_scripts" /
                                                  "extract_embeddings.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setenv("QPMLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "home"))
    assert script.main(["--profile", "paper", "--device", "cpu", "--weights", "random", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "download_cub.py" in err and "CUDA" not in err and "weights" not in err  # --device, --weights applied
    assert not (tmp_path / "home").exists()  # nothing extracted


def test_a_cuda_run_on_a_cpu_machine_stops_before_it_extracts(tmp_path, monkeypatch):
    from qpmlib.runs import checks
    from qpmlib.runs.dino_qpm import run_stages

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    monkeypatch.setattr(checks.torch.cuda, "is_available", lambda: False)
    with pytest.raises(checks.NotReady, match="no CUDA device"):
        run_stages(apply_overrides("smoke", {"train.device": "cuda"}), [0], verbose=False)
    assert list(tmp_path.iterdir()) == []  # no embedding store, no result
