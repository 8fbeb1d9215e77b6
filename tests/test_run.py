"""qpmlib.runs.run: one run type for every method; models rebuilt from the store equal the stored ones."""

import numpy as np
import pytest
import torch

from qpmlib.config import SMOKE
from qpmlib.model import DinoQPM, SparseHeadModel
from qpmlib.results import (
    HISTORY_FILE,
    MODEL_FILE,
    MODEL_SPEC_FILE,
    PREDICTIONS_FILE,
    SELECTION_FILE,
    SPARSE_FILE,
    ResultData,
    ResultStore,
)
from qpmlib.runs.run import Run

SPEC = {"in_dim": 6, "n_classes": 3, "n_layers": 1, "hidden_size": 4, "n_features": 5, "pooling": "avg_pooling",
        "dropout": 0.2, "last_layer_bn_relu": True}
TOKENS = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(0))  # (B, P+1, D), P = 4


def _dense() -> DinoQPM:
    torch.manual_seed(0)
    return DinoQPM(**SPEC).eval()


def _predictions(pred) -> dict:
    return {"image_ids": np.arange(4), "labels": np.array([0, 1, 2, 0]), "pred": np.asarray(pred),
            "logits": np.zeros((4, 3), np.float32)}


def _stages(tmp_path) -> dict:
    dense = _dense()
    stores = {k: ResultStore(tmp_path, k) for k in ("dense", "qp", "qpm", "dino_sldd")}
    history = {"stage": "dense", "device": "cpu", "epochs": [{"epoch": 0, "loss": 1.0}], "resumed_at": 0,
               "n_stacked": 1}
    out = {"dense": stores["dense"].put({"k": "dense"}, ResultData(
        {"accuracy": 0.5, "sid_at_5": None, "solver": "x"}, {}, {MODEL_FILE: dense.state_dict(),
                                                                 PREDICTIONS_FILE: _predictions([0, 1, 1, 0])},
        {MODEL_SPEC_FILE: SPEC, HISTORY_FILE: history}))}
    selected, assignment = np.array([1, 3]), np.array([[1, 0], [0, 1], [1, 1]], np.uint8)
    out["qp"] = stores["qp"].put({"k": "qp"}, ResultData({"objective": 1.0}, {}, {SELECTION_FILE: {
        "selected": selected, "assignment": assignment, "A": np.zeros((5, 3), np.float32),
        "R": np.zeros((5, 5), np.float32)}}))
    qpm = _dense()
    qpm.set_sparse_head(selected, assignment, np.zeros(5), np.ones(5))
    out["qpm"] = stores["qpm"].put({"k": "qpm"}, ResultData(
        {"accuracy": 0.75}, {}, {MODEL_FILE: qpm.state_dict(), PREDICTIONS_FILE: _predictions([0, 1, 2, 2]),
                                 SPARSE_FILE: {"selected": qpm.selected, "assignment": qpm.assignment,
                                               "mean": qpm.feature_mean, "std": qpm.feature_std}},
        {MODEL_SPEC_FILE: SPEC | {"standardise": True}, HISTORY_FILE: history | {"stage": "finetune"}}))
    return out, dense, qpm


def test_a_dino_qpm_run_reads_its_stages(tmp_path):
    stages, dense, qpm = _stages(tmp_path)
    run = Run("dino_qpm", SMOKE, 0, stages)
    assert run.last == "qpm" and run.metrics == {"accuracy": 0.75} and run.dataset == "synthbirds"
    assert run.stage_metrics() == {"dense": stages["dense"].metrics, "dino_qpm": {"accuracy": 0.75}}
    with torch.no_grad():
        torch.testing.assert_close(run.model()(TOKENS).logits, qpm(TOKENS).logits)
        torch.testing.assert_close(run.dense_model()(TOKENS).logits, dense(TOKENS).logits)
    assert run.selected.tolist() == [1, 3] and run.assignment.dtype == bool and run.assignment.shape == (3, 2)
    preds = run.predictions()
    assert list(preds.columns) == ["image_id", "label", "dense_pred", "pred"]
    assert preds["pred"].tolist() == [0, 1, 2, 2] and preds["dense_pred"].tolist() == [0, 1, 1, 0]
    assert run.history("dense")["loss"].tolist() == [1.0]
    with pytest.raises(ValueError, match="holds no model"):
        run.model("qp")


def test_a_dense_only_run_says_why_a_stage_is_missing(tmp_path):
    stages, _, _ = _stages(tmp_path)
    run = Run("dino_qpm", SMOKE, 0, {"dense": stages["dense"]})
    assert run.last == "dense" and run.stage_metrics() == {"dense": stages["dense"].metrics}
    assert run.predictions()["pred"].tolist() == run.predictions()["dense_pred"].tolist()
    with pytest.raises(ValueError, match="n_layers == 0"):
        run.sparse_head()


def test_a_sparse_head_run_rebuilds_its_model(tmp_path):
    stages, dense, _ = _stages(tmp_path)
    weight, bias = np.array([[0.5, 0.0], [0.0, -1.0], [1.0, 1.0]], np.float32), np.array([0.1, 0.2, 0.3], np.float32)
    model = SparseHeadModel(dense, [3, 1], weight, bias, np.array([0.2, 0.1]), np.array([2.0, 1.0])).eval()
    head = {"dropout": 0.1, "train_normalisation": True, "bias": True}
    stages["dino_sldd"] = ResultStore(tmp_path, "dino_sldd").put({"k": "s"}, ResultData(
        {"accuracy": 0.5}, {}, {MODEL_FILE: model.state_dict(),
                                SPARSE_FILE: {"selected": model.selected, "weight": model.weight, "bias": model.bias}},
        {MODEL_SPEC_FILE: SPEC | {"head": head}}))
    run = Run("dino_sldd", SMOKE, 0, {"dense": stages["dense"], "dino_sldd": stages["dino_sldd"]})
    rebuilt = run.model()
    assert isinstance(rebuilt, SparseHeadModel) and rebuilt.selected.tolist() == [1, 3]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(TOKENS).logits, model(TOKENS).logits)
