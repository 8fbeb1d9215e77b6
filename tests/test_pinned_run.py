"""A whole seed-0 pipeline run on 1 CPU thread, every dense and QPM metric pinned to 1e-3.

The run uses the smoke SynthBirds images, masks and part maps, but its embedding stores are planted: each patch
token is noise plus, on the bird's patches, a direction of its class, so the models learn well above chance
(a random tiny ViT's tokens leave every model at chance, where accuracy cannot reveal a regression). Planting the
stores also keeps the pins independent of the backbone code. The stores are written where
:func:`qpmlib.embeddings.get_store` looks for them, so the pipeline finds them up to date and extracts nothing.

Re-pinning after a deliberate change of the numbers: run ``pytest tests/test_pinned_run.py -s -k pinned`` and
copy the ``PINNED = {...}`` line it prints over the one below (one line).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qpmlib import data, embeddings
from qpmlib.config import BackboneConfig, DataConfig, ModelConfig, Profile, QPConfig, TrainConfig
from qpmlib.data import cub
from qpmlib.runs import dino_qpm as pipeline

pytestmark = pytest.mark.slow

PROFILE = Profile(
    name="pinned",
    description="smoke SynthBirds with planted embeddings: models that learn, for pinned numbers",
    data=DataConfig(dataset="synthbirds", image_size=112, n_classes=6, n_train=8, n_test=4, seed=0),
    backbone=BackboneConfig(name="tiny_vit_test", weights="random", batch_size=32),
    model=ModelConfig(n_layers=2, hidden_size=32, n_features=12, dropout=0.2),
    qp=QPConfig(n_selected=6, n_per_class=2, solver="open", time_limit=None),  # no time limit: deterministic
    train=TrainConfig(dense_epochs=30, dense_batch_size=16, dense_lr=1e-2, ft_epochs=10, ft_batch_size=16,
                      ft_lr=5e-3, device="cpu"),
    seeds=(0,),
)

PINNED = {'dense': {'accuracy': 0.75, 'class_independence': 0.6686772170965666, 'contrastiveness': 0.8647266138954497, 'n_features': 12, 'n_per_class': 12.0, 'part_alignment': 0.04322248516025995, 'part_peak_alignment': 0.0753819760093375, 'plausibility': 0.5600081980228424, 'sid_at_5': 0.8622920354207357}, 'dino_qpm': {'accuracy': 0.7916666666666666, 'class_independence': 0.631250885802181, 'contrastiveness': 0.9426312596927923, 'n_features': 6, 'n_per_class': 2.0, 'part_alignment': 0.05376914623636997, 'part_peak_alignment': 0.10192946307943646, 'plausibility': 0.6605310365557671, 'sid_at_5': None}}  # noqa: E501


def _plant_stores(profile: Profile) -> None:
    """Write both embedding stores of ``profile``: tokens = N(0, 1) + 3 * class direction on the bird's patches."""
    root = data.prepare(profile.data, verbose=False)
    index = data.read_index(root, profile.data.dataset)
    backbone = embeddings._profile_backbone(profile.backbone.name, str(profile.backbone.weights),
                                            profile.data.image_size)
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(profile.data.n_classes, backbone.embed_dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    for split in embeddings.SPLITS:
        rows = index[index["is_train"] == (split == "train")].sort_values("image_id").reset_index(drop=True)
        folder = embeddings.store_dir(root, split, backbone, dataset=profile.data.dataset,
                                      normalisation=profile.data.normalisation)
        _, manifest = embeddings._fingerprint(rows, root, split, backbone, profile.data.dataset,
                                              profile.data.normalisation, stamp=folder / embeddings.IMAGE_STAMP_FILE)
        masks = cub.patch_masks(root, rows["image_id"].to_numpy(), backbone.grid).reshape(len(rows), -1)  # (N, P)
        signal = 3.0 * directions[rows["label"].to_numpy()]  # (N, D)
        patches = rng.normal(size=(len(rows), backbone.grid ** 2, backbone.embed_dim))
        patches += masks[:, :, None] * signal[:, None, :]
        cls = rng.normal(size=(len(rows), backbone.embed_dim)) + signal
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / embeddings.PATCH_FILE, patches.astype(np.float16))
        np.save(folder / embeddings.CLS_FILE, cls.astype(np.float16))
        embeddings._seal(folder, manifest, rows["label"].to_numpy(), rows["image_id"].to_numpy())


def _rounded(metrics: dict) -> dict:
    return {method: {k: v for k, v in sorted(values.items()) if k != "seconds_per_epoch"}
            for method, values in metrics.items()}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A results home with the planted stores, and the seed-0 run on 1 thread (computed once per module)."""
    home = tmp_path_factory.mktemp("pinned_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QPMLIB_HOME", str(home))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _plant_stores(PROFILE)
            run = pipeline.run_dino_qpm(PROFILE, seed=0, verbose=False)
            yield home, run
        finally:
            torch.set_num_threads(threads)


def test_seed_0_run_on_one_thread_reproduces_the_pinned_metrics(planted):
    _, run = planted
    got = _rounded(run.stage_metrics())
    print("PINNED =", got)
    assert got["dense"]["accuracy"] > 0.5 and got["dino_qpm"]["accuracy"] > 0.5  # 6 classes: chance is 1/6
    assert set(got) == set(PINNED) and all(set(got[m]) == set(PINNED[m]) for m in PINNED), got
    for method, values in PINNED.items():
        for name, value in values.items():
            if value is None:
                assert got[method][name] is None, f"{method} {name}: {got[method][name]}"
            else:
                assert got[method][name] == pytest.approx(value, abs=1e-3), f"{method} {name}: {got[method][name]}"


def _stored_models_reproduce_stored_predictions(run) -> None:
    from qpmlib.train import TokenData

    test = TokenData.from_store(embeddings.get_store(PROFILE, "test", verbose=False))
    preds = run.predictions()
    with torch.no_grad():
        x = test.batch(np.arange(len(test)))
        np.testing.assert_array_equal(run.dense_model()(x).logits.argmax(1).numpy(), preds["dense_pred"])
        np.testing.assert_array_equal(run.model("qpm")(x).logits.argmax(1).numpy(), preds["pred"])
    np.testing.assert_array_equal(preds["label"], test.labels)


def test_stored_run_rebuilds_its_models_and_switches_reach_their_stage(planted, monkeypatch):
    home, run = planted
    monkeypatch.setenv("QPMLIB_HOME", str(home))
    torch.set_num_threads(1)
    _stored_models_reproduce_stored_predictions(run)
    plain = pipeline.run_dino_qpm(PROFILE, seed=0, overrides={"model.standardise": False}, verbose=False)
    assert [plain.stages[k].path == run.stages[k].path for k in ("dense", "qp", "qpm")] == [True, True, False]
    assert plain.metrics != run.metrics
    _stored_models_reproduce_stored_predictions(plain)  # the fine-tune used the sparse head it stored
    recal = pipeline.run_dino_qpm(PROFILE, seed=0, overrides={"train.recalibrate_bn": True}, verbose=False)
    assert recal.stages["dense"].path != run.stages["dense"].path
    from qpmlib.train import TokenData

    train = TokenData.from_store(embeddings.get_store(PROFILE, "train", verbose=False))
    model = recal.dense_model()
    with torch.no_grad():
        h = model.mlp[0](train.batch(np.arange(len(train)))).reshape(-1, model.mlp[0].out_features)
    np.testing.assert_allclose(model.mlp[1].running_mean.numpy(), h.mean(0).numpy(), atol=1e-4)  # full-data BN stats
    original = pipeline.run_dino_qpm(PROFILE, seed=0, overrides={"qp.r_mode": "qpm"}, verbose=False)
    assert original.stages["qp"].path != run.stages["qp"].path
    from qpmlib import qp

    sol = original.qp_solution()
    expected = qp.r_threshold(sol["R"], PROFILE.qp.n_selected, mode="qpm")
    assert original.stages["qp"].metrics["r_threshold"] == pytest.approx(expected.threshold)
    assert original.stages["qp"].metrics["n_penalised"] == expected.n_penalised
