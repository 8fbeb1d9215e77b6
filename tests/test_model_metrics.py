"""``model_metrics`` on a hand-built model whose predictions differ from its labels (reference_spec §5).

The model's feature maps are the first K channels of the patch tokens, so every number is known in advance; the
test data are chosen so that each plausible wiring mistake (labels instead of predictions, test instead of
training features, the unused feature kept, the dense head's dropout left on) gives another number.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qpmlib import metrics as qm
from qpmlib.model import ModelOutput
from qpmlib.runs.evaluate import model_metrics  # the one place this test needs to know where model_metrics lives
from qpmlib.train import TokenData

K, GRID = 4, 4  # 4 features on a 4 x 4 patch grid
WEIGHT = torch.tensor([[2.0, 0.0, 1.0, 0.0],  # (N_c=3, K): feature 3 has no weight in any class
                       [0.0, 1.5, 0.5, 0.0],
                       [1.0, 1.0, 0.0, 0.0]])


class HandModel(nn.Module):
    """Maps = the first K channels of the patch tokens; features = their spatial mean; logits = features @ W^T.

    ``drop`` zeroes feature 0 in training mode, as a dropout layer would: metrics must be taken in eval mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", WEIGHT.clone())
        self.drop = True

    @property
    def head_weight(self) -> torch.Tensor:
        return self.w

    def forward(self, x: torch.Tensor, noise=None) -> ModelOutput:
        patches = x[:, :-1, :K]  # (B, P, K); the CLS row is last
        maps = patches.transpose(1, 2).reshape(len(x), K, GRID, GRID)
        if self.training and self.drop:
            maps = maps * torch.tensor([0.0, 1, 1, 1]).view(1, K, 1, 1)
        features = maps.mean(dim=(2, 3))
        return ModelOutput(features @ self.w.T, features, maps)


def _tokens(maps: np.ndarray, labels) -> TokenData:
    """TokenData whose first K channels hold ``maps`` (N, K, 2, 2); channel K is noise the model ignores."""
    n = len(maps)
    patches = np.zeros((n, GRID * GRID, K + 1), np.float32)
    patches[:, :, :K] = maps.reshape(n, K, -1).transpose(0, 2, 1)
    patches[:, :, K] = np.random.default_rng(1).normal(size=(n, GRID * GRID))
    return TokenData(patches, np.zeros((n, K + 1), np.float32), np.asarray(labels), image_ids=np.arange(n) + 1)


def _data():
    rng = np.random.default_rng(0)
    train_maps = rng.gamma(2.0, 1.0, size=(9, K, GRID, GRID)).astype(np.float32)
    train_maps[[0, 1, 2], 0] += 3.0  # class 0 leans on feature 0, class 1 on feature 1, ...
    train_maps[[3, 4, 5], 1] += 3.0
    train_maps[[6, 7, 8], 2] += 2.0
    test_maps = rng.gamma(2.0, 1.0, size=(6, K, GRID, GRID)).astype(np.float32)
    test_maps[0, 0, 0, 0] += 40.0  # sample 0: feature 0 peaks top-left -> class 0 (label 0, right)
    test_maps[1, 1, 3, 3] += 40.0  # sample 1: feature 1 peaks bottom-right -> class 1 (label 0: wrong)
    test_maps[2, 2, 0, 1] += 60.0  # sample 2: feature 2 -> class 0 (label 2: wrong)
    test_maps[3, 1, 1, 0] += 40.0  # sample 3: -> class 1 (label 1, right)
    test_maps[4, 0, 3, 0] += 40.0  # sample 4: -> class 0 (label 2: wrong)
    test_maps[5, :3] = np.array([6.0, 10.0, 0.1])[:, None, None]  # sample 5: class 2 (label 2, right) ...
    test_maps[5, 1, :2] += 2.0
    test_maps[5, 1, 2:] -= 2.0
    test_maps[5, 3, 0, 0] += 500.0  # ... and the unused feature fires on part 0
    train = _tokens(train_maps, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    test = _tokens(test_maps, [0, 0, 2, 1, 2, 2])
    masks = np.zeros((6, GRID, GRID), bool)
    masks[:, 0, 0] = True  # the object is the top-left patch (dilated: the top-left 2 x 2)
    parts = np.zeros((6, 2, GRID, GRID), np.float32)
    parts[:, 0, 0, 0] = 1.0
    parts[:, 1, 3, :] = 0.5
    return train, test, masks, parts


def _maps(data: TokenData) -> np.ndarray:
    return data.patches[:, :, :K].transpose(0, 2, 1).reshape(len(data), K, GRID, GRID)


def test_model_metrics_wire_predictions_training_features_and_used_features():
    train, test, masks, parts = _data()
    model = HandModel().train()  # model_metrics must switch it to eval mode itself
    out, ev, train_feats = model_metrics(model, train, test, k=2, masks=masks, parts=parts, seconds_per_epoch=1.25,
                                         seed=0, device="cpu")
    w = WEIGHT.numpy()
    test_maps, train_maps = _maps(test), _maps(train)
    pred = (test_maps.mean(axis=(2, 3)) @ w.T).argmax(axis=1)
    assert pred.tolist() == [0, 1, 0, 1, 0, 2] and test.labels.tolist() == [0, 0, 2, 1, 2, 2]
    assert np.array_equal(ev.predictions, pred)
    rel = [0, 1, 2]  # feature 3 has no weight: it is not one of the model's features
    rows = w[pred][:, rel]
    train_f = train_maps.mean(axis=(2, 3))
    expected = {
        "accuracy": 0.5,  # 3 of 6
        "plausibility": qm.plausibility(test_maps[:, rel], rows, masks),
        "sid_at_5": qm.sid_at_k(test_maps[:, rel], rows, k=2),
        "class_independence": qm.class_independence(train_f[:, rel], train.labels),
        "contrastiveness": qm.contrastiveness(train_f[:, rel], seed=0),
        "n_features": 3,
        "n_per_class": 2.0,
        "seconds_per_epoch": 1.25,
        "part_alignment": qm.part_alignment(test_maps[:, rel], parts).score,
        "part_peak_alignment": qm.part_peak_alignment(test_maps[:, rel], parts).score,
    }
    assert set(out) == set(expected)
    for name, value in expected.items():
        assert out[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    np.testing.assert_allclose(train_feats, train_f, rtol=1e-6)
    assert not model.training

    # the data tell each wiring mistake apart from the right one
    by_label = w[test.labels][:, rel]
    mistakes = {
        "plausibility with the label's weights": qm.plausibility(test_maps[:, rel], by_label, masks),
        "SID with the label's weights": qm.sid_at_k(test_maps[:, rel], by_label, k=2),
        "class independence of test features": qm.class_independence(test_maps.mean(axis=(2, 3))[:, rel],
                                                                      test.labels),
        "class independence with the unused feature": qm.class_independence(train_f, train.labels),
        "contrastiveness with the unused feature": qm.contrastiveness(train_f, seed=0),
        "part alignment with the unused feature": qm.part_alignment(test_maps, parts).score,
        "part peak alignment with the unused feature": qm.part_peak_alignment(test_maps, parts).score,
    }
    right = {"plausibility": expected["plausibility"], "SID": expected["sid_at_5"],
             "class independence": expected["class_independence"], "contrastiveness": expected["contrastiveness"],
             "part alignment": expected["part_alignment"], "part peak alignment": expected["part_peak_alignment"]}
    for name, value in mistakes.items():
        key = next(k for k in right if name.lower().startswith(k.lower()))
        assert abs(value - right[key]) > 1e-3, f"the test data cannot catch: {name}"
    dropped = HandModel().train()
    with torch.no_grad():
        train_mode_acc = qm.accuracy(dropped(test.batch(np.arange(6))).logits, test.labels)
    assert train_mode_acc != expected["accuracy"]  # evaluating with the dropout-like switch on would show


def test_model_metrics_without_masks_parts_or_k_features():
    train, test, _, _ = _data()
    out, _, _ = model_metrics(HandModel(), train, test, k=5, device="cpu")
    assert out["plausibility"] is None and out["sid_at_5"] is None and "part_alignment" not in out
    assert "part_peak_alignment" not in out
    assert out["accuracy"] == 0.5 and np.isnan(out["seconds_per_epoch"])
