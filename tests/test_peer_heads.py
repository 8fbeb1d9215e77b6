"""qpmlib.runs.peer_heads: ProtoS-ViT, ProtoFM and KLC as methods of the registry, stored once, checked first."""

import dataclasses

import numpy as np
import pytest
import torch

from qpmlib.config import SMOKE, get_profile
from qpmlib.heads import evaluate_head
from qpmlib.results import ResultStore, config_hash
from qpmlib.runs import methods, peer_heads
from qpmlib.runs.evaluate import split_tokens
from qpmlib.runs.peer_heads import head_config, head_evaluation, peer_config


def test_the_heads_are_methods_outside_table_1():
    assert methods.PEER_KEYS == ("protosvit", "protofm", "klc")
    assert not set(methods.PEER_KEYS) & set(methods.METHOD_KEYS)
    assert all(methods.METHODS[k].head == k for k in methods.PEER_KEYS)


def test_head_config_takes_the_profiles_heads_section():
    smoke, paper = get_profile("smoke"), get_profile("paper")
    cfg = head_config(smoke, "protosvit")
    assert (cfg.n_prototypes, cfg.prototype_dim, cfg.hidden_dim, cfg.epochs, cfg.batch_size, cfg.cosine_epochs,
            cfg.device) == (16, 16, 16, 4, 16, None, "cpu")
    assert head_config(smoke, "protofm").proj_dim == 16
    # the paper profile keeps each head's reference values, widths included
    ref = head_config(paper, "protosvit")
    assert (ref.n_prototypes, ref.prototype_dim, ref.hidden_dim, ref.epochs, ref.batch_size, ref.cosine_epochs) == \
        (300, 512, None, 80, 256, 300)
    assert head_config(paper, "protofm").proj_dim == 256
    klc = head_config(smoke, "klc", seed=3)
    assert (klc.prototypes_per_class, klc.top_k, klc.seed) == (3, 3, 3)
    with pytest.raises(ValueError, match="protosvit, protofm, klc"):
        head_config(smoke, "protopnet")


def _key(prof, method, seed=0, k=2):
    inputs = {"root": "/data", "weights_id": "w", "pretrained": False}
    return config_hash(peer_config(prof, method, seed, inputs, inputs, k=k))


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(SMOKE.heads)])
def test_every_heads_field_keys_the_heads_that_use_it(field):
    value = getattr(SMOKE.heads, field)
    changed = SMOKE.replace(heads=dataclasses.replace(SMOKE.heads, **{field: 1 if value is None else value + 1}))
    users = ("klc",) if field.startswith("klc_") else ("protosvit", "protofm")
    for method in peer_heads.PEER_HEADS:
        assert (_key(changed, method) != _key(SMOKE, method)) == (method in users), (field, method)


def test_seed_sid_k_and_head_key_a_stage_but_the_device_does_not():
    for method in peer_heads.PEER_HEADS:
        assert len({_key(SMOKE, method), _key(SMOKE, method, seed=1), _key(SMOKE, method, k=5)}) == 3
        on_gpu = SMOKE.replace(train=dataclasses.replace(SMOKE.train, device="cuda"))
        assert _key(on_gpu, method) == _key(SMOKE, method)
    assert len({_key(SMOKE, m) for m in peer_heads.PEER_HEADS}) == 3


@pytest.mark.parametrize("overrides, match", [
    ({"heads.n_prototypes": 0}, "heads.n_prototypes"),
    ({"heads.warmup_epochs": 4, "heads.cosine_epochs": 4}, "heads.cosine_epochs"),
    ({"heads.klc_top_k": 100}, "heads.klc_top_k"),
    ({"heads.prototype_dim": 0}, "heads.prototype_dim"),
])
def test_the_heads_section_is_checked_before_any_work(overrides, match):
    with pytest.raises(ValueError, match=match):
        methods.method_profile("protosvit", "smoke", overrides)


def test_klc_without_part_truth_names_the_data_it_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="part ground truth.*part_segmentations"):
        methods.run_method("klc", "smoke", 0, overrides={"data.dataset": "synthcars"})
    assert not (tmp_path / "cache").exists()  # failed before any token was extracted


@pytest.mark.slow
def test_too_many_prototypes_fail_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)

    def no_training(*args, **kwargs):
        raise AssertionError("the prototype budget must be checked before training")

    monkeypatch.setattr(peer_heads, "train_protofm", no_training)
    with pytest.raises(ValueError, match="protofm: 100000 prototypes but a batch holds only"):
        methods.run_method("protofm", "smoke", 0, overrides={"heads.n_prototypes": 100_000})
    assert ResultStore.for_profile("smoke", "protofm").keys() == []


@pytest.mark.slow
@pytest.mark.parametrize("method", ["protosvit", "protofm", "klc"])
def test_a_peer_head_is_stored_once_and_reloads(method, tmp_path, monkeypatch):
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path))
    torch.set_num_threads(1)
    small = {"heads.epochs": 2}
    run = methods.run_method(method, "smoke", 0, overrides=small)
    m = run.metrics
    assert list(run.stages) == [method] and m["sid_k"] == methods.sid_k("smoke")
    for key in ("accuracy", "plausibility", "sid_at_5", "class_independence", "contrastiveness"):
        assert 0.0 <= m[key] <= 1.0 + 1e-9, key
    assert m["n_prototypes"] >= m["n_per_class"] > 0 and m["seconds_per_epoch"] > 0

    monkeypatch.setattr(peer_heads, "_fit", lambda *a, **k: pytest.fail("the stored stage must be loaded"))
    again = methods.run_method(method, "smoke", 0, overrides=small, compute=False)
    assert again.metrics == m
    with pytest.raises(FileNotFoundError, match="no stored"):  # the heads section is part of the key
        methods.run_method(method, "smoke", 0, overrides=small | {"heads.n_prototypes": 8,
                                                                   "heads.klc_prototypes_per_class": 2},
                           compute=False)

    test = split_tokens(run.profile, "test")
    stored = run.stages[method].tensors("predictions.safetensors")["pred"].numpy()
    if method == "klc":
        ev = head_evaluation(again, np.arange(len(test)))
        assert m["n_prototypes"] == 3 * test.n_classes and m["n_parameters"] == 0
    else:
        ev = evaluate_head(again.model(), test, head_config(again.profile, method))
        assert m["n_parameters"] == sum(p.numel() for p in again.model().parameters() if p.requires_grad)
    assert np.array_equal(ev.predictions, stored)
    assert np.array_equal(again.predictions()["pred"].to_numpy(), stored) and again.stage_metrics() == {method: m}
    assert np.mean(ev.predictions == test.labels) == pytest.approx(m["accuracy"])
