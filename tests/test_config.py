"""qpmlib.config: the profiles and dotted overrides of them."""

import dataclasses

import pytest

from qpmlib.config import GPU_PROFILES, PRESET_FIELDS, PROFILES, SECTIONS, SMOKE, apply_overrides, get_profile


def test_overrides_replace_fields_and_coerce_numbers():
    prof = apply_overrides("smoke", {"train.ft_l1_fm": 0, "model.n_layers": 1, "qp.n_selected": 6})
    assert prof.train.ft_l1_fm == 0.0 and isinstance(prof.train.ft_l1_fm, float)
    assert prof.model.n_layers == 1 and prof.qp.n_selected == 6 and prof.name == "smoke"
    assert apply_overrides(SMOKE, None) == SMOKE


@pytest.mark.parametrize(
    "key, value, match",
    [("train.l1", 1.0, "valid fields of train: dense_epochs"), ("optim.lr", 1.0, "section in data"),
     ("model.n_layers", 2.5, "expects int"), ("model.pooling", 3, "expects str"),
     ("model.n_layers", None, "expects int")],
)
def test_bad_overrides_say_what_is_valid(key, value, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides("smoke", {key: value})


def test_none_replaces_only_fields_that_may_be_none():
    demo = get_profile("demo")  # qp.rounds = 0 and qp.time_limit = None there
    prof = apply_overrides(demo, {"qp.rounds": None, "qp.time_limit": 1.0})
    assert prof.qp.rounds is None and prof.qp.time_limit == 1.0
    assert apply_overrides(prof, {"qp.rounds": 2}).qp.rounds == 2


def test_overrides_reach_every_section():
    prof = apply_overrides("smoke", {"baselines.glm_n_lambdas": 10, "baselines.compact": (6, 1)})
    assert prof.baselines.glm_n_lambdas == 10 and prof.baselines.compact == (6, 1)
    assert set(SECTIONS) == {f.name for f in dataclasses.fields(SMOKE)} - {"name", "description", "sweeps", "seeds",
                                                                          "extra_datasets", "extra_overrides"}


def test_profiles_differ_by_fields_not_by_name():
    paper, demo = get_profile("paper"), get_profile("demo")
    assert paper.baselines.reference_sizes and paper.baselines.compact == (40, 4)
    assert paper.baselines.glm_n_lambdas == 100 and demo.baselines.glm_n_lambdas == 25
    # a renamed copy of the paper profile behaves as the paper profile: nothing reads `name` but the store
    renamed = paper.replace(name="mine")
    assert dataclasses.replace(renamed, name="paper") == paper


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError, match=", ".join(PROFILES)):
        get_profile("small")


def test_paper_presets_differ_only_in_the_preset_fields():
    paper, code = get_profile("paper"), get_profile("paper_code")
    changed = {f"train.{f.name}" for f in dataclasses.fields(paper.train)
               if getattr(paper.train, f.name) != getattr(code.train, f.name)}
    assert changed == set(PRESET_FIELDS)
    assert dataclasses.replace(code, name="paper", description=paper.description, train=paper.train) == paper
    # the paper's text (Sec. 9) and the authors' qpm/dinov2.yaml
    assert (paper.train.dense_epochs, paper.train.ft_epochs, paper.train.dense_batch_size,
            paper.train.ft_batch_size) == (40, 50, 32, 32)
    assert (code.train.dense_epochs, code.train.ft_epochs, code.train.dense_batch_size,
            code.train.ft_batch_size) == (25, 25, 32, 16)
    assert paper.backbone.weights == "pretrained" and paper.qp.time_limit == 10800.0  # the reference's TimeLimit
    assert GPU_PROFILES == ("paper", "paper_code")


def test_paper_shapes_keeps_every_shape_of_paper():
    paper, shapes = get_profile("paper"), get_profile("paper_shapes")
    assert (shapes.model, shapes.sweeps, shapes.backbone.name) == (paper.model, paper.sweeps, paper.backbone.name)
    assert (shapes.qp.n_selected, shapes.qp.n_per_class, shapes.data.n_classes) == (50, 5, 200)
    assert shapes.train.device == "cpu" and shapes.backbone.weights == "random"
    assert shapes.dataset_overrides() == {"synthbirds": {},
                                          "synthcars": {"data.dataset": "synthcars", "data.n_classes": 196}}
    assert paper.dataset_overrides() == {"cub": {}, "cars": {"data.dataset": "cars"}}
    cars = apply_overrides(shapes, shapes.dataset_overrides()["synthcars"])
    assert (cars.data.dataset, cars.data.n_classes) == ("synthcars", 196)


def test_paper_grids_can_judge_the_sweep_claims():
    sweeps = get_profile("paper").sweeps
    assert max(sweeps.hidden_size) == 4096 and 2048 in sweeps.hidden_size  # Fig. 13: past the paper's choice
    assert {(50, 5), (40, 4)} <= set(sweeps.sparsity) and len(sweeps.sparsity) == 25  # Fig. 8
    assert min(len(g) for g in (sweeps.l1_fm, sweeps.fdl, sweeps.l1_fv, sweeps.n_layers, sweeps.n_features)) >= 4


def test_overrides_read_back_from_json_and_nested_sections():
    # a run spec's overrides come back from JSON: lists become the tuples the fields hold
    assert apply_overrides("smoke", {"baselines.compact": [6, 1]}).baselines.compact == (6, 1)
    prof = apply_overrides("smoke", {"cluster.train": {"gpus": 2, "time_min": 30}, "cluster.setup": ["module load x"]})
    assert (prof.cluster.train.gpus, prof.cluster.train.time_min, prof.cluster.train.cpus) == \
        (2, 30, SMOKE.cluster.train.cpus)
    assert prof.cluster.setup == ("module load x",) and prof.cluster.embed == SMOKE.cluster.embed
    with pytest.raises(ValueError, match="takes a mapping of gpus, cpus, mem_gb, time_min"):
        apply_overrides("smoke", {"cluster.train": {"gpu": 2}})
