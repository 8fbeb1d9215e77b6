"""qpmlib.config: the profiles and dotted overrides of them."""

import dataclasses

import pytest

from qpmlib.config import PROFILES, SECTIONS, SMOKE, apply_overrides, get_profile


def test_overrides_replace_fields_and_coerce_numbers():
    prof = apply_overrides("smoke", {"train.ft_l1_fm": 0, "model.n_layers": 1, "qp.n_selected": 6})
    assert prof.train.ft_l1_fm == 0.0 and isinstance(prof.train.ft_l1_fm, float)
    assert prof.model.n_layers == 1 and prof.qp.n_selected == 6 and prof.name == "smoke"
    assert apply_overrides(SMOKE, None) == SMOKE


@pytest.mark.parametrize(
    "key, value, match",
    [("train.l1", 1.0, "valid fields of train: dense_epochs"), ("optim.lr", 1.0, "section in data"),
     ("model.n_layers", 2.5, "expects int"), ("model.pooling", 3, "expects str")],
)
def test_bad_overrides_say_what_is_valid(key, value, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides("smoke", {key: value})


def test_overrides_reach_every_section():
    prof = apply_overrides("smoke", {"baselines.glm_n_lambdas": 10, "baselines.compact": (6, 1)})
    assert prof.baselines.glm_n_lambdas == 10 and prof.baselines.compact == (6, 1)
    assert set(SECTIONS) == {f.name for f in dataclasses.fields(SMOKE)} - {"name", "description", "sweeps", "seeds",
                                                                          "extra_datasets"}


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


def test_overrides_read_back_from_json_and_nested_sections():
    # a run spec's overrides come back from JSON: lists become the tuples the fields hold
    assert apply_overrides("smoke", {"baselines.compact": [6, 1]}).baselines.compact == (6, 1)
    prof = apply_overrides("smoke", {"cluster.train": {"gpus": 2, "time_min": 30}, "cluster.setup": ["module load x"]})
    assert (prof.cluster.train.gpus, prof.cluster.train.time_min, prof.cluster.train.cpus) == \
        (2, 30, SMOKE.cluster.train.cpus)
    assert prof.cluster.setup == ("module load x",) and prof.cluster.embed == SMOKE.cluster.embed
    with pytest.raises(ValueError, match="takes a mapping of gpus, cpus, mem_gb, time_min"):
        apply_overrides("smoke", {"cluster.train": {"gpu": 2}})
