"""Every profile field either changes the hash of the first pipeline stage that uses it, or is listed as not
affecting results.

A field that changes results but is missing from a stage's hash would let the results store serve a run computed
with other settings: a silent wrong result. A field that changes an earlier stage's hash than it should only
costs a recomputation, but is also caught here. A new profile field fails this test until it is classified below.
"""

from __future__ import annotations

import dataclasses

import pytest

from qpmlib.config import SMOKE, Profile

STAGES = ("dense", "qp", "qpm")


def stage_hashes(profile: Profile) -> dict[str, str]:
    """The hash of each stage's configuration for seed 0 (the one place that knows where the pipeline keeps it)."""
    from qpmlib.runs.dino_qpm import stage_configs
    from qpmlib.results import config_hash

    inputs = {"root": "/data", "weights_id": "w", "pretrained": False, "images_sha256": "0" * 64}
    return {stage: config_hash(cfg) for stage, cfg in stage_configs(profile, 0, inputs, inputs).items()}


def _fields(obj, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _fields(value, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


#: The first stage whose result a field changes.
FIRST_STAGE = {
    "name": "dense",  # results of different profiles are never shared
    **{f"data.{f}": "dense" for f in ("dataset", "image_size", "normalisation", "n_classes", "n_train", "n_test",
                                       "seed", "shortcut")},
    "backbone.name": "dense",
    "backbone.weights": "dense",
    **{f"model.{f}": "dense" for f in ("n_layers", "hidden_size", "n_features", "pooling", "dropout",
                                        "last_layer_bn_relu")},
    "model.standardise": "qpm",  # the sparse head's input; the dense stage and the QP never see it
    **{f"qp.{f}": "qp" for f in ("n_selected", "n_per_class", "r_mode", "solver", "time_limit", "gurobi", "rounds")},
    **{f"train.dense_{f}": "dense" for f in ("epochs", "batch_size", "lr", "weight_decay", "fdl")},
    **{f"train.ft_{f}": "qpm" for f in ("epochs", "batch_size", "lr", "weight_decay", "fdl", "l1_fm", "l1_fv")},
    "train.recalibrate_bn": "dense",
    "train.fdl_scale": "dense",
    "train.precision": "dense",
}

#: Fields that do not change any stage's result, and why.
NO_EFFECT = {
    "description": "prose shown in the book",
    "backbone.batch_size": "images per forward pass while extracting; the tokens do not depend on it",
    "train.device": "where training runs; CPU and GPU give the same run up to floating-point rounding",
    "seeds": "which seeds a chapter runs; each run's own seed is part of its hash",
    "extra_datasets": "which other datasets the chapters show",
    "extra_overrides": "the settings of the runs on the other datasets; each such run hashes its own data.* fields",
    **{f"sweeps.{f.name}": "the grids the sweep chapters try; each point is a run of its own"
       for f in dataclasses.fields(SMOKE.sweeps)},
    **{f"baselines.{f.name}": "the other methods' settings: they reach those runs through the fields they override "
       "(qpmlib.runs.methods) or the SLDD / Q-SENN store keys (qpmlib.runs.baselines), never the DINO-QPM stages"
       for f in dataclasses.fields(SMOKE.baselines)},
    **{f"heads.{f.name}": "the peer heads' settings: they key the peer-head stages (qpmlib.runs.peer_heads, "
       "tests/test_peer_heads.py), never the DINO-QPM stages" for f in dataclasses.fields(SMOKE.heads)},
    **{name: "where and with what resources runs are computed (qpmlib.runs.executor), and the dry run's estimates"
       for name in _fields(SMOKE.cluster, "cluster.")},
}

#: Valid other values for fields whose type alone does not give one.
OTHER_VALUE = {
    "name": "demo", "description": "another", "data.dataset": "cub", "data.normalisation": "imagenet",
    "backbone.name": "dinov2_vits14", "backbone.weights": "random", "model.pooling": "cls", "qp.r_mode": "qpm",
    "qp.solver": "open", "qp.gurobi": "exact", "qp.rounds": 0, "train.fdl_scale": "map_mean", "train.precision": "bf16",
    "train.device": "cuda", "baselines.qsenn_schedule": "qsenn", "baselines.compact": (6, 1),
    "heads.cosine_epochs": 10,
    "cluster.executor": "slurm", "cluster.partition": "gpu", "cluster.account": "proj", "cluster.threads": 1,
    "extra_overrides": (("data.n_classes", 7),),
}


def _other(name: str, value):
    if name in OTHER_VALUE:
        return OTHER_VALUE[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.25
    if isinstance(value, tuple):
        return value + value[:1] if value else (1,)
    raise TypeError(f"give {name} an entry in OTHER_VALUE")


def _replace(obj, name: str, value):
    head, _, rest = name.partition(".")
    return dataclasses.replace(obj, **{head: _replace(getattr(obj, head), rest, value) if rest else value})


def _get(profile: Profile, name: str):
    obj = profile
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_profile_field_is_classified():
    fields = _fields(SMOKE)
    missing = [f for f in fields if f not in FIRST_STAGE and f not in NO_EFFECT]
    assert not missing, f"classify these profile fields in FIRST_STAGE or NO_EFFECT: {missing}"
    assert not set(FIRST_STAGE) & set(NO_EFFECT)
    assert set(FIRST_STAGE) | set(NO_EFFECT) == set(fields), "stale entries"


@pytest.mark.parametrize("name", sorted(FIRST_STAGE))
def test_field_changes_its_first_stage_and_every_later_one(name):
    base = stage_hashes(SMOKE)
    changed = stage_hashes(_replace(SMOKE, name, _other(name, _get(SMOKE, name))))
    first = STAGES.index(FIRST_STAGE[name])
    for i, stage in enumerate(STAGES):
        if i < first:
            assert changed[stage] == base[stage], f"{name} needlessly changes the {stage} hash"
        else:
            assert changed[stage] != base[stage], f"{name} does not reach the {stage} hash: stale results served"


@pytest.mark.parametrize("name", sorted(NO_EFFECT))
def test_field_without_effect_keeps_every_hash(name):
    assert stage_hashes(_replace(SMOKE, name, _other(name, _get(SMOKE, name)))) == stage_hashes(SMOKE)


def test_each_seed_and_each_embedding_store_is_its_own_run():
    from qpmlib.runs.dino_qpm import stage_configs
    from qpmlib.results import config_hash

    def store(**inputs):
        return {"root": "/data", "weights_id": "w", "pretrained": False, "images_sha256": "0" * 64, **inputs}

    def hashes(seed=0, train=None, test=None):
        return [config_hash(c) for c in stage_configs(SMOKE, seed, train or store(), test or store()).values()]

    base = hashes()
    assert all(a != b for a, b in zip(hashes(seed=1), base))
    for changed in ({"images_sha256": "1" * 64}, {"weights_id": "v"}):
        assert all(a != b for a, b in zip(hashes(train=store(**changed)), base))
        assert all(a != b for a, b in zip(hashes(test=store(**changed)), base))
    assert hashes(train=store(root="/elsewhere"), test=store(root="/elsewhere")) == base  # same data, other machine
