"""Tests for qpmlib.train: data access, determinism, resuming, NaN stop, fine-tuning (reference_spec §4)."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qpmlib.config import TrainConfig
from qpmlib.model import DinoQPM
from qpmlib.train import (
    StageConfig,
    TokenData,
    check_train_config,
    evaluate,
    extract_features,
    stage_config,
    train_dense,
    train_finetune,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: several threads only contend on the shared CPU (BN goes from ~30 us to ~20 ms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

CFG = TrainConfig(dense_epochs=3, dense_batch_size=8, dense_lr=1e-2, ft_epochs=2, ft_batch_size=8, device="cpu")


def _data(n_per_class=8, n_classes=3, p=4, d=8, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centres = rng.normal(size=(n_classes, d)) * 3
    patches = (centres[labels][:, None] + rng.normal(size=(len(labels), p, d))).astype(dtype)
    cls = (centres[labels] + rng.normal(size=(len(labels), d))).astype(dtype)
    return TokenData(patches, cls, labels, image_ids=np.arange(len(labels)) + 1)


def _model(seed=0):
    torch.manual_seed(seed)
    return DinoQPM(8, 3, n_layers=2, hidden_size=16, n_features=6)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_batch_reads_memmap_rows_in_request_order(tmp_path):
    data = _data(dtype=np.float16)
    mm = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float16, shape=data.patches.shape)
    mm[:] = data.patches
    mapped = TokenData(np.load(tmp_path / "p.npy", mmap_mode="r"), data.cls, data.labels)
    x = mapped.batch(np.array([5, 2]))
    assert x.dtype == torch.float32 and x.shape == (2, 5, 8)
    assert torch.equal(x[0, :4], torch.from_numpy(data.patches[5]).float())
    assert torch.equal(x[1, 4], torch.from_numpy(data.cls[2]).float())  # CLS last


def test_from_store_and_shape_errors():
    data = _data()
    store = SimpleNamespace(patch_tokens=data.patches, cls_tokens=data.cls, labels=data.labels)
    assert TokenData.from_store(store).n_patches == 4
    with pytest.raises(ValueError, match="labels"):
        TokenData.from_store(SimpleNamespace(patches=data.patches, cls=data.cls))
    with pytest.raises(ValueError, match="expected patches"):
        TokenData(data.patches, data.cls[:3], data.labels)


def test_dense_training_learns_and_is_deterministic():
    data = _data()
    m1, m2, m3 = _model(), _model(), _model()
    cfg = dataclasses.replace(CFG, dense_epochs=30)
    h1 = train_dense(m1, data, cfg, seed=0, eval_data=data, verbose=False)
    train_dense(m2, data, cfg, seed=0, verbose=False)
    train_dense(m3, data, cfg, seed=1, verbose=False)
    assert len(h1.epochs) == 30 and h1.epochs[-1]["loss"] < h1.epochs[0]["loss"]
    assert h1.epochs[0]["fdl"] < 0 and h1.epochs[0]["l1_fm"] == 0.0  # dense: CE + FDL only
    assert [e["epoch"] for e in h1.epochs if "test_accuracy" in e] == [0, 5, 10, 15, 20, 25, 29]
    assert h1.epochs[-1]["test_accuracy"] == 1.0  # three well-separated classes
    assert _same_weights(m1, m2) and not _same_weights(m1, m3)
    assert not m1.training


class _Interrupt(Exception):
    pass


class _FailingData(TokenData):
    """Raises after a given number of batch reads, as a killed process would stop."""

    fail_after = 10**9

    def batch(self, idx):
        type(self).fail_after -= 1
        if type(self).fail_after < 0:
            raise _Interrupt
        return super().batch(idx)


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    base = _data()
    flaky = _FailingData(base.patches, base.cls, base.labels)
    full = _model()
    train_dense(full, base, CFG, seed=3, verbose=False)
    resumed = _model()
    _FailingData.fail_after = 3 + 1  # epoch 0 (3 batches) finishes, epoch 1 dies in its second batch
    with pytest.raises(_Interrupt):
        train_dense(resumed, flaky, CFG, seed=3, run_dir=tmp_path, verbose=False)
    _FailingData.fail_after = 10**9
    resumed = _model(seed=99)  # a fresh process: weights come from the checkpoint
    h = train_dense(resumed, flaky, CFG, seed=3, run_dir=tmp_path, verbose=False)
    assert h.resumed_at == 1 and [e["epoch"] for e in h.epochs] == [0, 1, 2]
    assert _same_weights(full, resumed)
    with pytest.raises(ValueError, match="another configuration"):
        train_dense(_model(), flaky, CFG, seed=4, run_dir=tmp_path, verbose=False)


def test_nan_loss_names_epoch_and_batch():
    data = _data()
    data.patches[20, 0, 0] = np.nan  # lands in some batch of epoch 0
    with pytest.raises(FloatingPointError, match=r"epoch 0, batch \d"):
        train_dense(_model(), data, CFG, seed=0, verbose=False)


@pytest.mark.parametrize(
    "field, value", [("ft_l1_fm", -1.0), ("dense_epochs", -1), ("ft_batch_size", 0), ("dense_lr", 0.0),
                     ("device", "tpu")],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        check_train_config(dataclasses.replace(CFG, **{field: value}))


def test_finetune_trains_only_the_mlp_and_keeps_head_frozen():
    data = _data()
    m = _model()
    with pytest.raises(ValueError, match="set_sparse_head"):
        train_finetune(m, data, CFG, seed=0, verbose=False)
    train_dense(m, data, CFG, seed=0, verbose=False)
    feats, labels = extract_features(m, data)
    assert feats.shape == (24, 6) and np.array_equal(labels, data.labels)
    w = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    m.set_sparse_head([0, 2, 5], w, feats.mean(0), feats.std(0))
    head = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("mlp")}
    mlp = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("mlp") and "weight" in k}
    with pytest.raises(ValueError, match="dense model"):
        train_dense(m, data, CFG, seed=0, verbose=False)
    h = train_finetune(m, data, CFG, seed=0, verbose=False)
    assert len(h.epochs) == 2 and h.epochs[0]["l1_fm"] > 0 and h.epochs[0]["l1_fv"] > 0
    state = m.state_dict()
    assert all(torch.equal(state[k], v) for k, v in head.items())
    assert all(not torch.equal(state[k], v) for k, v in mlp.items())


def test_recalibrated_bn_holds_full_data_statistics():
    data = _data()
    m = _model()
    train_dense(m, data, dataclasses.replace(CFG, dense_batch_size=64), seed=0, recalibrate_bn=True, verbose=False)
    h = m.mlp[0](data.batch(np.arange(24))).reshape(-1, 16).detach()
    assert torch.allclose(m.mlp[1].running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(m.mlp[1].running_var, h.var(0, unbiased=True), atol=1e-4)


def test_evaluate_matches_a_single_forward_pass():
    data = _data()
    m = _model().eval()
    ev = evaluate(m, data, batch_size=5)
    with torch.no_grad():
        out = m(data.batch(np.arange(24)))
    assert ev.feature_maps.shape == (24, 6, 2, 2)
    assert np.allclose(ev.logits, out.logits.numpy(), atol=1e-5)
    assert np.array_equal(ev.predictions, out.logits.argmax(1).numpy())


def test_stage_config_maps_profile_fields():
    st = stage_config(CFG, "finetune")
    assert st == StageConfig("finetune", 2, 8, CFG.ft_lr, CFG.ft_weight_decay, CFG.ft_fdl, CFG.ft_l1_fm, CFG.ft_l1_fv)
    assert stage_config(CFG, "dense").l1_fm == 0.0
    # every field its own value, so that taking one stage's field for the other's shows
    cfg = TrainConfig(dense_epochs=1, dense_batch_size=2, dense_lr=0.3, dense_weight_decay=0.4, dense_fdl=0.5,
                      ft_epochs=6, ft_batch_size=7, ft_lr=0.8, ft_weight_decay=0.9, ft_fdl=1.1, ft_l1_fm=1.2,
                      ft_l1_fv=1.3, fdl_scale="map_mean", precision="bf16")
    assert stage_config(cfg, "dense") == StageConfig("dense", 1, 2, 0.3, 0.4, 0.5, 0.0, 0.0, "map_mean", "bf16")
    assert stage_config(cfg, "finetune") == StageConfig("finetune", 6, 7, 0.8, 0.9, 1.1, 1.2, 1.3, "map_mean", "bf16")
    with pytest.raises(ValueError, match="dense, finetune"):
        stage_config(CFG, "sparse")


# ---------------------------------------------------------------------------------------------- several seeds
def _close_weights(a, b, atol=1e-5):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k].float(), sb[k].float(), atol=atol) for k in sa)


def _same_run(a, b):
    """Two models trained from the same start and seed, once alone and once stacked with others.

    A Linear bias right before a BatchNorm gets a gradient of pure rounding noise (BN removes the bias), which
    Adam scales up to lr-sized steps; so those biases and the BN running means that track them differ between
    mm and bmm rounding (~1e-2), and through them the eval outputs. Every other tensor agrees to 1e-5.
    """
    sa, sb = a.state_dict(), b.state_dict()
    before_bn = {f"mlp.{i}.bias" for i, m in enumerate(a.mlp) if i + 1 < len(a.mlp)
                 and isinstance(a.mlp[i + 1], torch.nn.BatchNorm1d)}
    exact = [k for k in sa if k not in before_bn and not k.endswith("running_mean")]
    return (sa.keys() == sb.keys() and len(exact) > len(sa) // 2
            and all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5) for k in exact))


def _sparse_head(model, data, seed):
    """A different valid sparse head per seed (3 classes, 3 of 6 features, 2 per class)."""
    feats, _ = extract_features(model, data)
    sel = np.random.default_rng(seed).choice(6, 3, replace=False)
    w = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    model.set_sparse_head(sel, w, feats.mean(0), feats.std(0))


def test_seeds_trained_together_match_separate_runs():
    data = _data()
    seeds = [0, 1, 2]
    alone = [_model(seed=10 + s) for s in seeds]
    together = [_model(seed=10 + s) for s in seeds]
    cfg = dataclasses.replace(CFG, dense_epochs=4)
    solo = [train_dense(m, data, cfg, seed=s, eval_data=data, verbose=False) for m, s in zip(alone, seeds)]
    stacked = train_dense(together, data, cfg, seed=seeds, eval_data=data, verbose=False)
    assert isinstance(stacked, list) and [h.n_stacked for h in stacked] == [3, 3, 3]
    per_model = np.mean([e["seconds"] for e in stacked[0].epochs]) / 3  # an epoch trains all three
    assert stacked[0].seconds_per_epoch == pytest.approx(per_model)
    for a, b, ha, hb in zip(alone, together, solo, stacked):
        assert _same_run(a, b)  # weights, BN statistics, head and logits, seed by seed
        assert np.allclose([e["loss"] for e in ha.epochs], [e["loss"] for e in hb.epochs], atol=1e-5)
        assert [e["epoch"] for e in hb.epochs if "test_accuracy" in e] == [0, 3]
        assert not b.training
    assert not _same_run(together[0], together[1])
    for a, b, s in zip(alone, together, seeds):  # the same start, a different selection per seed
        b.load_state_dict(a.state_dict())
        _sparse_head(a, data, s)
        _sparse_head(b, data, s)
    for m, s in zip(alone, seeds):
        train_finetune(m, data, CFG, seed=s, verbose=False)
    train_finetune(together, data, CFG, seed=seeds, verbose=False)
    assert all(_same_run(a, b) for a, b in zip(alone, together))


def test_seeds_together_resume_after_interruption(tmp_path):
    base = _data()
    flaky = _FailingData(base.patches, base.cls, base.labels)
    full = [_model(seed=s) for s in (0, 1)]
    train_dense(full, base, CFG, seed=[5, 6], verbose=False)
    _FailingData.fail_after = 2 * 3 + 1  # two seeds read 3 batches each in epoch 0; epoch 1 dies
    with pytest.raises(_Interrupt):
        train_dense([_model(seed=s) for s in (0, 1)], flaky, CFG, seed=[5, 6], run_dir=tmp_path, verbose=False)
    _FailingData.fail_after = 10**9
    resumed = [_model(seed=99), _model(seed=98)]
    hs = train_dense(resumed, flaky, CFG, seed=[5, 6], run_dir=tmp_path, verbose=False)
    assert [h.resumed_at for h in hs] == [1, 1] and [e["epoch"] for e in hs[1].epochs] == [0, 1, 2]
    assert all(_same_weights(a, b) for a, b in zip(full, resumed))


def test_seeds_together_name_the_seed_of_a_nan_and_check_their_inputs():
    data = _data()
    with pytest.raises(ValueError, match="one seed per model"):
        train_dense([_model(), _model()], data, CFG, seed=[0], verbose=False)
    with pytest.raises(ValueError, match="distinct"):
        train_dense([_model(), _model()], data, CFG, seed=[0, 0], verbose=False)
    with pytest.raises(ValueError, match="list of models with a list of seeds"):
        train_dense(_model(), data, CFG, seed=[0, 1], verbose=False)
    wider = DinoQPM(8, 3, n_layers=2, hidden_size=32, n_features=6)
    with pytest.raises(ValueError, match="same class, layers and widths"):
        train_dense([_model(), wider], data, CFG, seed=[0, 1], verbose=False)
    bad = [_model(), _model()]
    with torch.no_grad():
        bad[1].mlp[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"epoch 0, batch 0 \(seed 8\)"):
        train_dense(bad, data, CFG, seed=[7, 8], verbose=False)


def test_bf16_precision_trains_under_autocast():
    data = _data()
    fp32, bf16 = _model(), _model()
    cfg = dataclasses.replace(CFG, dense_epochs=10)
    train_dense(fp32, data, cfg, seed=0, verbose=False)
    h = train_dense(bf16, data, dataclasses.replace(cfg, precision="bf16"), seed=0, eval_data=data, verbose=False)
    assert h.epochs[-1]["loss"] < h.epochs[0]["loss"] and h.epochs[-1]["test_accuracy"] == 1.0
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # master weights stay float32
    assert not _close_weights(fp32, bf16, atol=1e-4)  # bfloat16 matmuls really ran
    pair = [_model(), _model(seed=1)]
    hs = train_dense(pair, data, dataclasses.replace(cfg, precision="bf16"), seed=[0, 1], verbose=False)
    assert all(h.epochs[-1]["loss"] < h.epochs[0]["loss"] for h in hs)
    with pytest.raises(ValueError, match="train.precision"):
        check_train_config(dataclasses.replace(CFG, precision="fp8"))


# ---------------------------------------------------------------------------------------------- safe checkpoints
class _Planted:
    """Unpickling this calls Path.touch on a marker file: a stand-in for os.system in a planted checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_planted_checkpoint_does_not_run_and_is_set_aside(tmp_path, caplog):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run" / "dense_checkpoint.pt"
    ckpt.parent.mkdir()
    torch.save({"key": "x", "epoch": 2, "payload": _Planted(marker)}, ckpt)
    with pytest.raises(Exception):  # the old loader (weights_only=False) would have run it
        torch.load(ckpt, weights_only=True)
    reference = _model()
    train_dense(reference, _data(), CFG, seed=0, verbose=False)
    m = _model()
    with caplog.at_level("WARNING", logger="qpmlib.train"):
        h = train_dense(m, _data(), CFG, seed=0, run_dir=tmp_path / "run", verbose=False)
    assert not marker.exists()
    assert f"checkpoint {ckpt} cannot be loaded safely" in caplog.text
    assert (tmp_path / "run" / "dense_checkpoint.pt.unreadable").exists()
    assert h.resumed_at == 0 and _same_weights(m, reference)  # started over, same result as a clean run


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a checkpoint", "other architecture"])
def test_damaged_checkpoint_is_named_and_training_starts_over(tmp_path, caplog, damage):
    run = tmp_path / "run"
    data = _data()
    full = _model()
    train_dense(full, data, CFG, seed=0, verbose=False)
    train_dense(_model(), data, dataclasses.replace(CFG, dense_epochs=1), seed=0, run_dir=run, verbose=False)
    ckpt = run / "dense_checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state["key"] = state["key"].replace('"epochs": 1', '"epochs": 3')  # as if a 3-epoch run had stopped after one
    if damage == "truncated":
        torch.save(state, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "not a checkpoint":
        torch.save([1, 2, 3], ckpt)
    else:
        state["model"] = {k: v[:1] if v.ndim else v for k, v in state["model"].items()}
        torch.save(state, ckpt)
    m = _model()
    with caplog.at_level("WARNING", logger="qpmlib.train"):
        h = train_dense(m, data, CFG, seed=0, run_dir=run, verbose=False)
    assert str(ckpt) in caplog.text and "starting the dense stage over" in caplog.text
    assert h.resumed_at == 0 and _same_weights(m, full)


def test_checkpoint_written_under_a_unique_name_and_then_renamed(tmp_path, monkeypatch):
    import os

    import qpmlib.files

    renames = []
    real = os.replace
    monkeypatch.setattr(qpmlib.files.os, "replace", lambda a, b: renames.append((str(a), str(b))) or real(a, b))
    train_dense(_model(), _data(), CFG, seed=0, run_dir=tmp_path, verbose=False)
    sources = [a for a, b in renames if b.endswith("dense_checkpoint.pt")]
    assert len(sources) == 3 and len(set(sources)) == 3  # one per epoch, never the same temporary name
    assert all(".tmp-dense_checkpoint.pt-" in a and str(os.getpid()) in a for a in sources)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dense.lock", "dense_checkpoint.pt"]


# ---------------------------------------------------------------------------------------------- training details
class _CountingData(TokenData):
    """Counts how often each sample is read for training."""

    def batch(self, idx):
        self.reads = getattr(self, "reads", np.zeros(len(self), int))
        np.add.at(self.reads, np.asarray(idx), 1)
        return super().batch(idx)


def test_every_sample_is_read_once_per_epoch_with_a_partial_last_batch():
    base = _data(n_per_class=7)  # 21 samples, batches of 8: 8 + 8 + 5
    data = _CountingData(base.patches, base.cls, base.labels)
    h = train_dense(_model(), data, dataclasses.replace(CFG, dense_epochs=2), seed=0, verbose=False)
    assert data.reads.tolist() == [2] * 21
    for e in h.epochs:
        assert e["loss"] == pytest.approx(e["ce"] + e["fdl"] + e["l1_fm"] + e["l1_fv"], rel=1e-5)  # batch means
        assert 0 <= e["accuracy"] <= 1 and abs(e["accuracy"] * 21 - round(e["accuracy"] * 21)) < 1e-9


def test_finetune_history_adds_up_and_reports_the_weighted_terms():
    data = _data()
    m = _model()
    train_dense(m, data, CFG, seed=0, verbose=False)
    _sparse_head(m, data, 0)
    cfg = dataclasses.replace(CFG, ft_l1_fm=2.0, ft_l1_fv=0.0)
    h = train_finetune(m, data, cfg, seed=0, verbose=False)
    e = h.epochs[0]
    assert e["l1_fm"] > 0 and e["l1_fv"] == 0.0 and e["fdl"] < 0
    assert e["loss"] == pytest.approx(e["ce"] + e["fdl"] + e["l1_fm"], rel=1e-5)


def test_dropout_masks_follow_the_seed_and_the_fdl_scale_reaches_training():
    data = _data()
    full = dataclasses.replace(CFG, dense_batch_size=64, dense_epochs=3)  # one batch: shuffling changes nothing

    def weights(seed, dropout=0.2, **cfg):
        torch.manual_seed(0)
        m = DinoQPM(8, 3, n_layers=2, hidden_size=16, n_features=6, dropout=dropout)
        train_dense(m, data, dataclasses.replace(full, **cfg), seed=seed, verbose=False)
        return m

    assert not _close_weights(weights(0), weights(1), atol=1e-3)  # other seed, other dropout masks
    assert _close_weights(weights(0, dropout=0.0), weights(1, dropout=0.0), atol=1e-4)  # nothing else differs
    assert not _close_weights(weights(0), weights(0, fdl_scale="map_mean"), atol=1e-3)
    assert _same_weights(weights(0), weights(0))


def test_training_accuracy_counts_the_correct_predictions_of_each_batch():
    data = _data()
    m = _model()
    # a learning rate of 1e-12 keeps the weights, dropout is off and one batch holds every sample, so the epoch's
    # training accuracy is that of the initial model in training mode on the whole split
    cfg = dataclasses.replace(CFG, dense_epochs=1, dense_batch_size=64, dense_lr=1e-12, dense_weight_decay=0.0)
    m.dropout.p = 0.0
    with torch.no_grad():
        expected = float((m.train()(data.batch(np.arange(24))).logits.argmax(1).numpy() == data.labels).mean())
    h = train_dense(m, data, cfg, seed=0, verbose=False)
    assert 0 < expected < 1 and h.epochs[0]["accuracy"] == pytest.approx(expected)
