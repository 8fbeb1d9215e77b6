"""qpmlib.runs.baselines: the DINO-SLDD / DINO-QSENN fine-tune and Q-SENN's iterations, and their settings."""

import dataclasses

import numpy as np
import pytest
import torch
from model_fixtures import class_tokens, real_head, tiny_dense

from qpmlib.config import get_profile
from qpmlib.runs.baselines import finetune_sparse, fit_qsenn, method_settings
from qpmlib.sparse import QSENN, SLDD
from qpmlib.train import StageConfig

FAST_QSENN = dataclasses.replace(QSENN, n_lambdas=10, max_epochs=200)


def test_method_settings_take_the_profile_fields():
    assert method_settings(get_profile("paper"), "dino_sldd") == SLDD
    short = method_settings(get_profile("smoke"), "dino_qsenn")
    assert short.n_lambdas == 25 and isinstance(short, type(QSENN)) and short.n_iterations == QSENN.n_iterations
    intended = method_settings(get_profile("smoke").replace(
        baselines=dataclasses.replace(get_profile("smoke").baselines, qsenn_schedule="qsenn")), "dino_qsenn")
    assert intended.schedule == "qsenn"
    with pytest.raises(ValueError, match="dino_sldd, dino_qsenn"):
        method_settings(get_profile("smoke"), "sldd")


def test_finetune_sparse_keeps_w_and_b_frozen_and_trains_the_rest():
    data = class_tokens()
    dense = tiny_dense()
    mlp_before = [p.detach().clone() for p in dense.mlp.parameters()]
    weight, bias = real_head()
    stage = StageConfig("finetune", epochs=2, batch_size=6, lr=1e-2, weight_decay=0.0, fdl=0.196)
    model, history = finetune_sparse(dense, data, [1, 3, 5], weight, bias, np.zeros(3), np.ones(3), stage, seed=0)
    assert len(history.epochs) == 2
    np.testing.assert_array_equal(model.weight.numpy(), weight)
    np.testing.assert_array_equal(model.bias.numpy(), bias)
    assert not torch.allclose(model.mean.detach(), torch.zeros(3))
    assert any(not torch.equal(a, b) for a, b in zip(mlp_before, model.mlp.parameters()))


def test_fit_qsenn_gives_ternary_weights_and_one_history_per_iteration():
    data = class_tokens(n_per_class=10)
    stage = StageConfig("finetune", epochs=1, batch_size=10, lr=1e-2, weight_decay=0.0, fdl=0.196)
    model, histories = fit_qsenn(tiny_dense(), data, [0, 2, 3, 5], 1, stage, [(1, 1e-2), (2, 5e-3)], seed=0,
                                 settings=FAST_QSENN)
    assert [len(h.epochs) for h in histories] == [1, 2]
    w = model.weight.numpy()
    magnitudes = np.unique(np.abs(w[w != 0]))
    assert len(magnitudes) == 1  # {-m, 0, +m}
    assert (w != 0).sum() <= 3  # N_c * n_per_class kept
    with pytest.raises(ValueError, match="schedule"):
        fit_qsenn(tiny_dense(), data, [0, 2], 1, stage, [], seed=0, settings=FAST_QSENN)


def test_fit_qsenn_runs_its_glm_paths_on_the_training_device(monkeypatch):
    from qpmlib.runs import baselines

    seen, real = [], baselines.qsenn_weights

    def spy(*args, device=None, **kwargs):
        seen.append(device)
        return real(*args, device=device, **kwargs)

    monkeypatch.setattr(baselines, "qsenn_weights", spy)
    data = class_tokens(n_per_class=10)
    stage = StageConfig("finetune", epochs=1, batch_size=10, lr=1e-2, weight_decay=0.0, fdl=0.196)
    fit_qsenn(tiny_dense(), data, [0, 2, 3, 5], 1, stage, [(1, 1e-2), (1, 1e-2)], seed=0, settings=FAST_QSENN,
              device="cpu")
    assert seen == [torch.device("cpu")] * 2  # one glm path per iteration, where the fine-tune trains
