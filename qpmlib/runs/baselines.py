"""The DINO-SLDD and DINO-QSENN stages on top of a dense stage (reference_spec §6.3-6.4).

Each baseline starts from its own dense stage of :mod:`qpmlib.runs.dino_qpm` (FDL 0.196; the two share it), then

1. ``sldd_selection``: SLDD's feature selection on the dense training features (:func:`qpmlib.sparse.sldd_select`);
   it depends on the SLDD settings only, so DINO-SLDD and DINO-QSENN share it;
2. ``dino_sldd``: SLDD's real weights and bias (:func:`qpmlib.sparse.sldd_weights`) under a
   :class:`~qpmlib.model.SparseHeadModel`, fine-tuned once (:func:`finetune_sparse`); or ``dino_qsenn``:
   Q-SENN's iterations of ternary weights and fine-tuning (:func:`fit_qsenn`).

Both stages are cached in the results store; :func:`method_settings` puts the profile's
``baselines.glm_n_lambdas`` and ``baselines.qsenn_schedule`` into the methods' constants. The fine-tune stage
is the profile's own (:func:`qpmlib.train.stage_config` of ``train``, after the method's overrides), so
``train.precision``, ``train.fdl_scale``, ``train.device`` and ``train.recalibrate_bn`` act here as in DINO-QPM;
the glm paths (selection, SLDD's weights, Q-SENN's iterations) run on ``train.device`` too (float32 on CUDA,
float64 on the CPU, :func:`qpmlib.glm.glm_device`).
:mod:`qpmlib.runs.methods` sets the methods' profile fields and calls :func:`run_sparse_head`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qpmlib.config import Profile
from qpmlib.model import DinoQPM, SparseHeadModel
from qpmlib.results import (
    FEATURES_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    MODEL_SPEC_FILE,
    PREDICTIONS_FILE,
    SELECTION_FILE,
    SPARSE_FILE,
    Result,
    ResultData,
    ResultStore,
    provenance,
)
from qpmlib.runs.evaluate import model_metrics, prediction_tensors, split_tokens, test_masks_and_parts
from qpmlib.runs.provenance import device_label, measured
from qpmlib.runs.run import load_dense
from qpmlib.sparse import (
    QSENN,
    SELECTION_FIELDS,
    SLDD,
    QSENNSettings,
    SLDDSettings,
    qsenn_schedule,
    qsenn_weights,
    sldd_select,
    sldd_weights,
)
from qpmlib.train import History, StageConfig, TokenData, extract_features, resolve_device, stage_config, train_dense

__all__ = ["SELECTION_KIND", "SPARSE_HEADS", "method_settings", "finetune_sparse", "fit_qsenn", "sparse_head_configs",
           "run_sparse_head"]

#: Results-store kind of SLDD's feature selection.
SELECTION_KIND = "sldd_selection"
#: Method key -> its constants; the key is also the results-store kind of its fine-tuned stage.
SPARSE_HEADS: dict[str, SLDDSettings] = {"dino_sldd": SLDD, "dino_qsenn": QSENN}


def method_settings(prof: Profile, method: str) -> SLDDSettings:
    """The constants of ``method`` (:data:`SPARSE_HEADS`) with the profile's choices put in.

    ``baselines.glm_n_lambdas`` sets the lambda-path length: the reference's 100-step path (reference_spec §6.3)
    costs seconds per fit even on the smoke profile's 8 features, and Q-SENN fits it four times; the smoke and
    demo profiles use 25 steps over the same range (lambda_max down to 1e-3 lambda_max), which picks the entries
    by the same rules. ``baselines.qsenn_schedule`` sets Q-SENN's schedule.

    Raises:
        ValueError: for an unknown method (lists the valid ones).
    """
    if method not in SPARSE_HEADS:
        raise ValueError(f"unknown sparse-head method {method!r}; valid: {', '.join(SPARSE_HEADS)}")
    settings = dataclasses.replace(SPARSE_HEADS[method], n_lambdas=prof.baselines.glm_n_lambdas)
    if isinstance(settings, QSENNSettings):
        settings = dataclasses.replace(settings, schedule=prof.baselines.qsenn_schedule)
    return settings


def _subdir(run_dir: str | Path | None, name: str) -> Path | None:
    if run_dir is None:
        return None
    path = Path(run_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def finetune_sparse(dense: DinoQPM, train: TokenData, selected, weight, bias, mean, std, stage: StageConfig, *,
                    seed: int, dropout: float = 0.1, train_normalisation: bool = True,
                    eval_data: TokenData | None = None, run_dir=None, recalibrate_bn: bool = False,
                    device: str = "auto", verbose: bool = False) -> tuple[SparseHeadModel, History]:
    """Put a :class:`~qpmlib.model.SparseHeadModel` on ``dense`` and fine-tune it (reference_spec §6.3).

    Args:
        dense: trained dense model (its MLP is trained further in place).
        train: training tokens.
        selected, weight, bias, mean, std: see :class:`~qpmlib.model.SparseHeadModel`.
        stage: epochs, batch size, lr, weight decay and loss weights of the fine-tune (stage "finetune").
        seed: shuffling and dropout seed.
        dropout: head dropout.
        train_normalisation: train mu and sigma.
        eval_data: optional test tokens for the history's test accuracy.
        run_dir: folder for resumable checkpoints (None: none).
        recalibrate_bn: recompute BN statistics for the averaged weights (False = reference).
        device: "auto", "cpu" or "cuda".
        verbose: progress bar.

    Returns:
        ``(model, history)``; the model in eval mode.
    """
    model = SparseHeadModel(dense, selected, weight, bias, mean, std, dropout=dropout,
                            train_normalisation=train_normalisation)
    history = train_dense(model, train, stage, seed=seed, run_dir=run_dir, eval_data=eval_data,
                          recalibrate_bn=recalibrate_bn, device=device, verbose=verbose)
    return model, history


def fit_qsenn(dense: DinoQPM, train: TokenData, selected, n_per_class: int, stage: StageConfig,
              schedule: list[tuple[int, float]], *, seed: int, settings: QSENNSettings = QSENN,
              eval_data: TokenData | None = None, run_dir=None, recalibrate_bn: bool = False,
              device: str = "auto", verbose: bool = False) -> tuple[SparseHeadModel, list[History]]:
    """Q-SENN's iterations on a dense model (reference_spec §6.4).

    Each iteration recomputes the current model's selected training features (eval mode), fits the glm path
    on them (:func:`qpmlib.sparse.qsenn_weights`: ternary weights and Q-SENN's bias), sets mu and sigma to those
    features' mean and population std, and fine-tunes with a fresh optimiser for the iteration's
    ``(epochs, lr)``.

    Args:
        dense: trained dense model (its MLP is trained further in place).
        train: training tokens.
        selected: (K,) SLDD's selected features.
        n_per_class: N^c_f (ternary weights keep ``N_c * n_per_class`` entries).
        stage: the fine-tune stage (its epochs and lr are replaced by the schedule's).
        schedule: ``(epochs, lr)`` per iteration (:func:`qpmlib.sparse.qsenn_schedule`).
        seed: seed of the glm splits, shuffling and dropout (iteration i uses ``seed + i`` for shuffling).
        settings: QSENN constants (head dropout).
        eval_data: optional test tokens.
        run_dir: folder for resumable checkpoints (one sub-folder per iteration).
        recalibrate_bn: see :func:`finetune_sparse`.
        device: "auto", "cpu" or "cuda".
        verbose: progress bars.

    Returns:
        ``(model, histories)``: the final model (eval mode) and one :class:`~qpmlib.train.History` per iteration.

    Raises:
        ValueError: for an empty schedule.
    """
    if not schedule:
        raise ValueError("schedule must hold at least one (epochs, lr) iteration")
    sel = np.sort(np.asarray(selected, dtype=np.int64))
    feats, _ = extract_features(dense, train, device=device)
    feats = feats[:, sel]
    model, histories = None, []
    for i, (epochs, lr) in enumerate(schedule):
        weight, bias = qsenn_weights(feats, train.labels, n_per_class, seed=seed, settings=settings,
                                     device=resolve_device(device))
        mean, std = feats.mean(axis=0), feats.std(axis=0)
        it_stage = dataclasses.replace(stage, epochs=int(epochs), lr=float(lr))
        sub = _subdir(run_dir, f"iteration_{i}")
        if model is None:
            model, history = finetune_sparse(dense, train, sel, weight, bias, mean, std, it_stage, seed=seed + i,
                                             dropout=settings.head_dropout, eval_data=eval_data, run_dir=sub,
                                             recalibrate_bn=recalibrate_bn, device=device, verbose=verbose)
        else:
            with torch.no_grad():
                model.weight.copy_(torch.as_tensor(weight))
                model.bias.copy_(torch.as_tensor(bias))
                model.mean.copy_(torch.as_tensor(mean))
                model.std.copy_(torch.as_tensor(std))
            history = train_dense(model, train, it_stage, seed=seed + i, run_dir=sub, eval_data=eval_data,
                                  recalibrate_bn=recalibrate_bn, device=device, verbose=verbose)
        histories.append(history)
        feats, _ = extract_features(model, train, device=device)
    return model, histories


def sparse_head_configs(method: str, prof: Profile, dense_config: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                           dict[str, Any]]:
    """The hashed configurations of SLDD's selection and of the method's fine-tuned stage (see the module docstring).

    Args:
        method: "dino_sldd" or "dino_qsenn" (:data:`SPARSE_HEADS`).
        prof: the method's profile.
        dense_config: the configuration of the method's dense stage (it contains the seed).

    Returns:
        ``(selection config, stage config)``; the selection depends on the SLDD fields only, so DINO-SLDD and
        DINO-QSENN share it.

    Raises:
        ValueError: for an unknown method (lists the valid ones).
    """
    settings = method_settings(prof, method)
    q, t = prof.qp, prof.train
    steps = [] if method == "dino_sldd" else qsenn_schedule(
        t.ft_epochs, t.ft_lr, n_iterations=settings.n_iterations, variant=settings.schedule,
        qsenn_epochs=settings.qsenn_epochs, lr_decay=settings.qsenn_lr_decay)
    head = {"dropout": settings.head_dropout, "train_normalisation": True, "bias": True}
    common = {"dense": dense_config, "n_selected": q.n_selected,
              "settings": {name: getattr(settings, name) for name in SELECTION_FIELDS}}
    config = common | {"method": method, "n_per_class": q.n_per_class, "all_settings": dataclasses.asdict(settings),
                       "finetune": dataclasses.asdict(stage_config(t, "finetune")), "head": head,
                       "schedule": [list(s) for s in steps]}
    if t.recalibrate_bn:  # part of the identity only when set, so runs with the reference default keep their key
        config["recalibrate_bn"] = True
    return common, config


def run_sparse_head(method: str, prof: Profile, seed: int, dense: Result, *, compute: bool = True,
                    verbose: bool = False) -> dict[str, Result]:
    """Run (or load) the selection and the fine-tuned stage of DINO-SLDD or DINO-QSENN for one seed.

    Args:
        method: "dino_sldd" or "dino_qsenn" (:data:`SPARSE_HEADS`).
        prof: the method's profile (its overrides applied, see :mod:`qpmlib.runs.methods`).
        seed: run seed (glm splits, shuffling, dropout).
        dense: the method's stored dense stage.
        compute: compute missing stages; False raises instead.
        verbose: progress bars.

    Returns:
        ``{"sldd_selection": Result, method: Result}``.

    Raises:
        ValueError: for an unknown method (lists the valid ones).
        FileNotFoundError: with ``compute=False``, when a stage has not been computed yet.
    """
    settings = method_settings(prof, method)
    q, t = prof.qp, prof.train
    stage = stage_config(t, "finetune")
    common, config = sparse_head_configs(method, prof, dense.config)
    steps, head = config["schedule"], config["head"]
    stored = dense.tensors(FEATURES_FILE)
    X, y = stored["features"].numpy(), stored["labels"].numpy()
    selection_store = ResultStore.for_profile(prof.name, SELECTION_KIND)
    store = ResultStore.for_profile(prof.name, method)

    device = resolve_device(t.device)  # the glm paths run there too, in float32 on CUDA (qpmlib.glm.glm_device)

    def select() -> ResultData:
        selected = sldd_select(X, y, q.n_selected, seed=seed, settings=settings, device=device, verbose=verbose)
        return ResultData(metrics={}, provenance=provenance(seed=seed, device=device_label(device), pretrained=None),
                          tensors={SELECTION_FILE: {"selected": selected}})

    def fit(selection: Result, work_dir: Path) -> ResultData:
        t0 = time.perf_counter()
        train, test = split_tokens(prof, "train", verbose=verbose), split_tokens(prof, "test", verbose=verbose)
        sel = selection.tensors(SELECTION_FILE)["selected"].numpy()
        common_args = {"seed": seed, "eval_data": test, "run_dir": work_dir, "recalibrate_bn": t.recalibrate_bn,
                       "device": t.device, "verbose": verbose}
        if method == "dino_sldd":
            weight, bias = sldd_weights(X[:, sel], y, q.n_per_class, seed=seed, settings=settings, device=device)
            model, history = finetune_sparse(load_dense(dense), train, sel, weight, bias, stored["mean"].numpy()[sel],
                                             stored["std"].numpy()[sel], stage, dropout=head["dropout"],
                                             train_normalisation=head["train_normalisation"], **common_args)
            histories = [history]
        else:
            model, histories = fit_qsenn(load_dense(dense), train, sel, q.n_per_class, stage, steps,
                                         settings=settings, **common_args)
        epochs = [e["seconds"] for h in histories for e in h.epochs]
        masks, parts = test_masks_and_parts(prof, test)
        metrics, ev, _ = model_metrics(model, train, test, masks=masks, parts=parts, seed=seed, device=t.device,
                                       seconds_per_epoch=float(np.mean(epochs)) if epochs else float("nan"))
        return ResultData(
            metrics=metrics,
            provenance=provenance(seed=seed, device=device_label(t.device),
                                  pretrained=bool(dense.provenance.get("pretrained")),
                                  total_seconds=time.perf_counter() - t0),
            tensors={MODEL_FILE: model.state_dict(),
                     SPARSE_FILE: {"selected": model.selected, "weight": model.weight, "bias": model.bias},
                     PREDICTIONS_FILE: prediction_tensors(test, ev)},
            json_files={HISTORY_FILE: {"iterations": [h.to_dict() for h in histories]},
                        MODEL_SPEC_FILE: dense.json(MODEL_SPEC_FILE) | {"head": head}},
        )

    found = {SELECTION_KIND: selection_store.get(common), method: store.get(config)}
    if not compute and None in found.values():
        kind = SELECTION_KIND if found[SELECTION_KIND] is None else method
        raise FileNotFoundError(f"no stored {kind} result for profile {prof.name!r}, seed {seed}; compute it with "
                                f"qpmlib.runs.methods.run_method({method!r}, ...)")
    # get_or_run: two processes that miss the same stage compute it once (the second waits, then loads it)
    if found[SELECTION_KIND] is None:
        found[SELECTION_KIND] = selection_store.get_or_run(common, lambda: measured(select, device))
    if found[method] is None:
        found[method] = store.get_or_run(
            config, lambda: measured(lambda: fit(found[SELECTION_KIND], store.work_dir(config)), device))
    return found

