"""qpmlib.runs.methods: the registry of Table 1's methods, their profile fields, Compact's sizes and SID's k."""

import numpy as np
import pytest
import torch

from qpmlib.config import DataConfig, get_profile
from qpmlib.runs import methods
from qpmlib.runs.methods import METHODS, compact_sizes, method_profile, sid_k
from qpmlib.sparse import SLDD


def test_compact_sizes_from_the_profile_or_scaled():
    assert compact_sizes("paper") == (40, 4)
    assert compact_sizes("smoke") == (6, 1)  # round(0.8 * 8), 2 - 1
    assert compact_sizes("demo") == (16, 4)  # round(0.8 * 20), 5 - 1
    # 7 classes with 1 feature each need 7 distinct features: the size is raised from 6 to 7
    smoke7 = get_profile("smoke").replace(data=DataConfig(dataset="synthbirds", image_size=112, n_classes=7))
    assert compact_sizes(smoke7) == (7, 1)
    with pytest.raises(ValueError, match="n_features"):
        compact_sizes("smoke", n_classes=100)


def test_sid_k():
    assert (sid_k("smoke"), sid_k("demo"), sid_k("paper")) == (2, 5, 5)


def test_every_method_is_one_entry_with_a_known_head():
    assert methods.METHOD_KEYS == ("linear_probe", "dense", "dino_sldd", "dino_qsenn", "dino_qpm", "dino_qpm_compact")
    assert all(m.head in methods.HEADS and m.key == k for k, m in METHODS.items())


def test_method_profiles_follow_the_reference_sizes_field():
    paper, smoke = get_profile("paper"), get_profile("smoke")
    probe = method_profile("linear_probe", paper)
    assert (probe.model.n_layers, probe.model.pooling, probe.train.dense_epochs, probe.train.ft_epochs) == \
        (0, "cls", 40, 0)
    assert method_profile("linear_probe", smoke).train.dense_epochs == smoke.train.dense_epochs
    sldd = method_profile("dino_sldd", paper)
    assert (sldd.train.dense_epochs, sldd.train.ft_epochs, sldd.train.dense_fdl, sldd.train.ft_l1_fm) == \
        (SLDD.dense_epochs, SLDD.ft_epochs, SLDD.fdl, 0.0)
    small = method_profile("dino_qsenn", smoke, {"train.ft_epochs": 1})
    assert small.train.dense_epochs == smoke.train.dense_epochs and small.train.ft_epochs == 1  # caller's last
    compact = method_profile("dino_qpm_compact", smoke)
    assert (compact.qp.n_selected, compact.qp.n_per_class) == (6, 1)
    assert method_profile("dense", smoke) == smoke


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="dino_sldd"):
        methods.run_method("sldd", "smoke", 0)


@pytest.mark.slow
def test_run_sldd_on_smoke_is_cached_and_reloadable(tmp_path, monkeypatch):
    from qpmlib.runs.evaluate import sid_at, split_tokens
    from qpmlib.train import evaluate

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    run = methods.run_method("dino_sldd", "smoke", 0)
    assert list(run.stages) == ["dense", "sldd_selection", "dino_sldd"] and run.metrics["n_features"] <= 8
    assert run.profile.train.dense_fdl == SLDD.fdl and 0.0 <= sid_at(run, 2) <= 1.0
    again = methods.run_method("dino_sldd", "smoke", 0, compute=False)
    assert again.metrics == run.metrics
    test = split_tokens(run.profile, "test")
    predictions = evaluate(again.model(), test, device="cpu").predictions
    assert np.mean(predictions == test.labels) == pytest.approx(run.metrics["accuracy"])
    assert np.array_equal(predictions, again.predictions()["pred"].to_numpy())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear_probe", "dino_qpm_compact", "dino_sldd"])
def test_run_methods_computes_all_seeds_then_only_loads(method, tmp_path, monkeypatch):
    from qpmlib.runs import baselines, dino_qpm

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    first = methods.run_methods(method, "smoke", [0, 1])

    def no_training(*args, **kwargs):
        raise AssertionError("run_methods should have stored this stage")

    for module, name in ((dino_qpm, "train_dense"), (dino_qpm, "train_finetune"), (baselines, "train_dense")):
        monkeypatch.setattr(module, name, no_training)
    for run, seed in zip(first, (0, 1)):
        again = methods.run_method(method, "smoke", seed)
        assert again.method == method and again.seed == seed and again.metrics == run.metrics
        assert 0.0 <= again.metrics["accuracy"] <= 1.0
    with pytest.raises(FileNotFoundError, match="no stored"):
        methods.run_method(method, "smoke", 2, compute=False)


def test_a_run_computes_on_the_profiles_torch_threads_then_restores_the_count(tmp_path, monkeypatch):
    from qpmlib.runs import dino_qpm

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(2)
    seen = []
    real = dino_qpm.train_dense
    monkeypatch.setattr(dino_qpm, "train_dense", lambda *a, **kw: seen.append(torch.get_num_threads()) or
                        real(*a, **kw))
    try:
        pinned = methods.run_method("dense", "smoke", 0, overrides={"cluster.threads": 1, "train.dense_epochs": 1})
        assert seen == [1] and torch.get_num_threads() == 2
        methods.run_method("dense", "smoke", 0, overrides={"train.dense_epochs": 2})  # None: the count as it is
        assert seen == [1, 2] and torch.get_num_threads() == 2
        # cluster.* says only how a run is computed: the same stage, found without training
        again = methods.run_method("dense", "smoke", 0, overrides={"train.dense_epochs": 1})
        assert seen == [1, 2] and again.stages["dense"].key == pinned.stages["dense"].key
    finally:
        torch.set_num_threads(1)


@pytest.mark.slow
def test_the_baselines_fine_tune_with_the_profiles_training_settings(tmp_path, monkeypatch):
    """The SLDD/QSENN fine-tune takes precision, FDL scale, device and BN recalibration from the profile."""
    from qpmlib.runs import baselines

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    seen = []
    real = baselines.train_dense
    monkeypatch.setattr(baselines, "train_dense", lambda model, data, st, **kw: seen.append((st, kw)) or
                        real(model, data, st, **kw))
    overrides = {"train.dense_epochs": 1, "train.ft_epochs": 1, "train.precision": "bf16",
                 "train.fdl_scale": "map_mean", "train.recalibrate_bn": True}
    run = methods.run_method("dino_sldd", "smoke", 0, overrides=overrides)
    (stage, kwargs), = seen
    assert (stage.stage, stage.epochs, stage.precision, stage.fdl_scale) == ("finetune", 1, "bf16", "map_mean")
    assert kwargs["device"] == "cpu" and kwargs["recalibrate_bn"] is True
    assert run.stages["dino_sldd"].config["recalibrate_bn"] is True
    assert run.stages["dino_sldd"].config["finetune"]["precision"] == "bf16"


def test_qsenn_runs_its_own_epochs_and_dino_v1_its_own_config():
    paper, smoke = get_profile("paper"), get_profile("smoke")
    sldd, qsenn = method_profile("dino_sldd", paper), method_profile("dino_qsenn", paper)
    assert (sldd.train.ft_epochs, qsenn.train.ft_epochs) == (50, 25)  # sldd/ and qsenn/dinov2.yaml: 4 x 25
    assert sldd.train.dense_epochs == qsenn.train.dense_epochs == 40  # one shared dense stage
    v1 = methods.backbone_overrides(paper, "dino_vitb16")
    assert v1 == {"backbone.name": "dino_vitb16", "train.ft_l1_fv": 0.0, "train.dense_epochs": 40,
                  "train.ft_epochs": 50, "train.dense_batch_size": 32, "train.ft_batch_size": 16}  # qpm/dino.yaml
    assert methods.backbone_overrides(smoke, "dino_vitb16") == {"backbone.name": "dino_vitb16", "train.ft_l1_fv": 0.0}
    assert methods.backbone_overrides(paper, "dinov2_vitl14_reg") == {"backbone.name": "dinov2_vitl14_reg"}
