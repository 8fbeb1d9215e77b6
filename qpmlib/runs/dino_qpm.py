"""The DINO-QPM pipeline for one profile and seed: the dense, QP and fine-tune stages (reference_spec §0).

    run = run_dino_qpm("demo", seed=0, overrides={"train.ft_l1_fm": 0.0})
    run.stage_metrics()["dino_qpm"]["accuracy"], run.model(), run.predictions()
    runs = run_seeds("paper")            # the profile's 5 seeds; on a GPU the missing ones train together

Stages, each cached in the results store (:mod:`qpmlib.results`) under a hash of everything that determines it,
so that a fine-tune sweep reuses the dense model and the QP selection:

1. ``dense``: train the MLP + dense head (CE + FDL), evaluate it ("Dense F_froz", reference_spec §6.2), keep its
   eval-mode training features (§1.1) with their mean and population std.
2. ``qp``: A, R from those features, the R threshold (``qp.r_mode``; none for ``"none"``), :func:`qpmlib.qp.solve_qpm`.
3. ``qpm``: sparse head on the standardised selected features (§2.5), fine-tune the MLP, evaluate.

Every function returns :class:`qpmlib.runs.run.Run` objects (method ``"dino_qpm"``); metrics are those of
:func:`qpmlib.runs.evaluate.model_metrics`. A model with ``n_layers == 0`` stops after the dense stage, as the
reference does (§6.1). :mod:`qpmlib.runs.methods` runs the other methods of Table 1 on the same stages.

Paper-vs-code switches are profile fields whose defaults are the reference code's (reference_spec §10):
``model.last_layer_bn_relu``, ``model.standardise``, ``train.recalibrate_bn`` and ``train.fdl_scale``.
``train.precision="bf16"`` (not the reference) trains with bfloat16 matmuls, the fast choice on a GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qpmlib import qp
from qpmlib.config import Profile, apply_overrides, get_profile
from qpmlib.embeddings import get_store
from qpmlib.model import DinoQPM, build_model
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
from qpmlib.runs.checks import check_profile, check_ready
from qpmlib.runs.executor import cluster_runs, resolve_executor, torch_threads
from qpmlib.runs.evaluate import model_metrics, prediction_tensors, test_masks_and_parts
from qpmlib.runs.provenance import device_label, measured
from qpmlib.runs.run import Run
from qpmlib.train import TokenData, resolve_device, stage_config, train_dense, train_finetune

__all__ = ["KINDS", "embedding_id", "base_config", "stage_configs", "run_stages", "run_dino_qpm", "run_seeds",
           "load_run"]

#: Result kinds (sub-folders of the profile's results store).
KINDS = ("dense", "qp", "qpm")


# ---------------------------------------------------------------------------------------------- configuration
def embedding_id(inputs: dict[str, Any]) -> dict[str, Any]:
    """What identifies a split's embeddings in a stage's configuration: a hash of the store's manifest ``inputs``
    (without the machine-specific dataset folder), the weights id and the pretrained flag."""
    inputs = {k: v for k, v in inputs.items() if k != "root"}
    return {"sha256": hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16],
            "weights_id": inputs.get("weights_id"), "pretrained": inputs.get("pretrained")}


def base_config(prof: Profile, seed: int, train_inputs: dict[str, Any],
                test_inputs: dict[str, Any]) -> dict[str, Any]:
    """What every stage trained on a profile's cached tokens is keyed by: profile, seed, data, backbone, tokens.

    Args:
        prof: the run's profile (overrides applied).
        seed: the run seed.
        train_inputs, test_inputs: the ``inputs`` of the two splits' embedding-store manifests.
    """
    return {
        "profile": prof.name,
        "seed": seed,
        "data": dataclasses.asdict(prof.data),
        "backbone": {k: v for k, v in dataclasses.asdict(prof.backbone).items() if k != "batch_size"},
        "embeddings": {"train": embedding_id(train_inputs), "test": embedding_id(test_inputs)},
    }


def stage_configs(prof: Profile, seed: int, train_inputs: dict[str, Any],
                  test_inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The hashed configuration of each stage (``dense``, ``qp``, ``qpm``); each one contains the previous one.

    Args: as :func:`base_config`.
    """
    base = base_config(prof, seed, train_inputs, test_inputs)
    model = {k: v for k, v in dataclasses.asdict(prof.model).items() if k != "standardise"}  # QPM stage only
    model["last_layer_bn_relu"] = prof.model.last_layer_bn_relu
    dense = base | {
        "model": model,
        "dense": dataclasses.asdict(stage_config(prof.train, "dense")),
        "recalibrate_bn": prof.train.recalibrate_bn,
    }
    qp_cfg = dense | {"qp": dataclasses.asdict(prof.qp)}
    qpm = qp_cfg | {
        "finetune": dataclasses.asdict(stage_config(prof.train, "finetune")),
        "standardise": prof.model.standardise,
    }
    return {"dense": dense, "qp": qp_cfg, "qpm": qpm}


# ---------------------------------------------------------------------------------------------- entry points
def run_dino_qpm(
    profile: str | Profile,
    seed: int = 0,
    *,
    overrides: dict[str, Any] | None = None,
    verbose: bool = True,
) -> Run:
    """Run (or load) the dense stage, the QP and the fine-tune stage for one seed.

    Args:
        profile: a profile or its name.
        seed: the run seed (model init, shuffling, dropout, QP solver).
        overrides: flat dotted overrides, see :func:`qpmlib.config.apply_overrides`.
        verbose: progress bars.

    Returns:
        The :class:`~qpmlib.runs.run.Run` (stages ``dense``, ``qp``, ``qpm``).

    Raises:
        ValueError: for invalid overrides or settings (see :func:`qpmlib.runs.checks.check_profile`).
    """
    return run_seeds(profile, [seed], overrides=overrides, verbose=verbose)[0]


def load_run(
    profile: str | Profile,
    seed: int = 0,
    *,
    overrides: dict[str, Any] | None = None,
    verbose: bool = False,
) -> Run:
    """The stored run, without training (the embedding stores are opened to identify the run).

    Args:
        profile: a profile or its name.
        seed: the run seed.
        overrides: the same overrides the run was computed with.
        verbose: progress output while opening the embedding stores.

    Returns:
        The :class:`~qpmlib.runs.run.Run`.

    Raises:
        FileNotFoundError: when a stage has not been computed yet; the message says how to compute it.
    """
    prof = apply_overrides(profile, overrides)
    return Run("dino_qpm", prof, seed, run_stages(prof, [seed], compute=False, verbose=verbose)[seed])


def run_seeds(
    profile: str | Profile,
    seeds: Sequence[int] | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    stack: bool | None = None,
    dense_only: bool = False,
    verbose: bool = True,
) -> list[Run]:
    """Run (or load) the pipeline for several seeds, training the missing ones together in one pass.

    Args:
        profile: a profile or its name.
        seeds: run seeds; None: the profile's.
        overrides: flat dotted overrides, see :func:`qpmlib.config.apply_overrides`.
        stack, dense_only, verbose: see :func:`run_stages`.

    Returns:
        One :class:`~qpmlib.runs.run.Run` per seed, in the order of ``seeds``.

    With the ``slurm`` executor (:func:`qpmlib.runs.executor.resolve_executor`) the missing runs are computed as
    Slurm jobs first and only loaded here; a local computation runs with the profile's ``cluster.threads`` torch
    threads.

    Raises:
        ValueError: for invalid overrides or settings, or an empty or repeated seed list.
    """
    prof = apply_overrides(profile, overrides)
    compute = resolve_executor(None, profile) == "local"
    if not compute:  # computed as jobs first, then only loaded here (see qpmlib.runs.methods.run_methods)
        cluster_runs("dense" if dense_only else "dino_qpm", prof.seeds if seeds is None else seeds,
                     get_profile(profile), overrides=overrides, verbose=verbose)
    with torch_threads(prof.cluster.threads if compute else None):
        found = run_stages(prof, seeds, compute=compute, dense_only=dense_only, stack=stack, verbose=verbose)
    return [Run("dino_qpm", prof, seed, stages) for seed, stages in found.items()]


def run_stages(
    prof: Profile,
    seeds: Sequence[int] | None = None,
    *,
    compute: bool = True,
    dense_only: bool = False,
    stack: bool | None = None,
    verbose: bool = True,
) -> dict[int, dict[str, Result]]:
    """The stored stages of a profile for several seeds, computing the missing ones (the engine of this module).

    Each seed's stages are stored under the same hashes whether it trains alone or with others, so a later
    single-seed call finds them. With ``stack`` the dense stages of all missing seeds train as one stacked model
    (:func:`qpmlib.train.train_dense` with a list), then every seed solves its own QP, then the fine-tune stages
    train together; the results equal separate runs up to floating-point rounding.

    Args:
        prof: the profile, overrides applied (checked here with :func:`~qpmlib.runs.checks.check_profile`).
        seeds: run seeds; None: the profile's.
        compute: compute missing stages; False raises instead.
        dense_only: stop after the dense stage (the linear probe, Dense F_froz and the SLDD/QSENN baselines).
        stack: train the missing seeds together; None (default) stacks on a GPU, where one small model leaves
            most of the device idle, and trains one after another on a CPU, where the batched matmuls of a
            stacked step run slower than the plain ones (``benchmarks/bench_training.py``).
        verbose: progress bars.

    Returns:
        ``{seed: {"dense": Result, "qp": Result, "qpm": Result}}`` in the order of ``seeds`` (``dense`` only with
        ``dense_only`` or ``model.n_layers == 0``).

    Raises:
        ValueError: for invalid settings, or an empty or repeated seed list.
        FileNotFoundError: with ``compute=False``, when a stage has not been computed yet.
    """
    check_ready(prof)  # the fields, then CUDA, data and weights: before anything is extracted
    seeds = [int(s) for s in (prof.seeds if seeds is None else seeds)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    device = resolve_device(prof.train.device)
    train_store, test_store = get_store(prof, "train", verbose=verbose), get_store(prof, "test", verbose=verbose)
    train, test = TokenData.from_store(train_store), TokenData.from_store(test_store)
    n_classes = max(train.n_classes, test.n_classes)
    check_profile(prof, n_classes)
    cfgs = {seed: stage_configs(prof, seed, train_store.manifest["inputs"], test_store.manifest["inputs"])
            for seed in seeds}
    stores = {kind: ResultStore.for_profile(prof.name, kind) for kind in KINDS}
    ctx = _Context(prof, train, test, n_classes, bool(train_store.pretrained), verbose)
    if stack is None:
        stack = device.type == "cuda"

    def stage(kind: str, fn, todo: Sequence[int]) -> dict[int, Result]:
        """The stored results of ``kind`` for ``todo``; ``fn(missing seeds, work_dir)`` computes the rest."""
        found = {seed: stores[kind].get(cfgs[seed][kind]) for seed in todo}
        missing = [seed for seed, r in found.items() if r is None]
        if missing and not compute:
            seed = missing[0]
            raise FileNotFoundError(
                f"no stored {kind} result for profile {prof.name!r}, seed {seed} and these overrides "
                f"(looked in {stores[kind].path(cfgs[seed][kind])}); compute it with "
                "qpmlib.runs.dino_qpm.run_dino_qpm"
            )
        groups = [missing] if stack and kind != "qp" and missing else [[seed] for seed in missing]
        for group in groups:
            with stores[kind].lock(*[cfgs[s][kind] for s in group]):  # another process may be computing them
                found.update({s: stores[kind].get(cfgs[s][kind]) for s in group})
                group = [s for s in group if found[s] is None]
                if not group:
                    continue
                # one seed resumes from its own folder; a stacked group from a folder of the whole group
                key = cfgs[group[0]][kind] if len(group) == 1 else {"stacked": [cfgs[s][kind] for s in group]}
                for seed, data in zip(group, measured(lambda: fn(group, stores[kind].work_dir(key)), device)):
                    found[seed] = stores[kind].put(cfgs[seed][kind], data)
        return found

    dense = stage("dense", ctx.run_dense, seeds)
    if dense_only or prof.model.n_layers == 0:
        return {seed: {"dense": dense[seed]} for seed in seeds}
    qp_results = stage("qp", lambda group, _: [ctx.run_qp(group[0], dense[group[0]])], seeds)
    qpm = stage("qpm", lambda group, work: ctx.run_qpm(group, work, dense, qp_results), seeds)
    return {seed: {"dense": dense[seed], "qp": qp_results[seed], "qpm": qpm[seed]} for seed in seeds}


@dataclass
class _Context:
    prof: Profile
    train: TokenData
    test: TokenData
    n_classes: int
    pretrained: bool
    verbose: bool
    _cache: dict = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ helpers
    def _spec(self) -> dict[str, Any]:
        m = self.prof.model
        return {"in_dim": self.train.dim, "n_classes": self.n_classes, "n_layers": m.n_layers,
                "hidden_size": m.hidden_size, "n_features": m.n_features, "pooling": m.pooling,
                "dropout": m.dropout, "last_layer_bn_relu": self.prof.model.last_layer_bn_relu}

    def _metrics(self, model: DinoQPM, history, seed: int) -> tuple[dict[str, Any], Any, np.ndarray]:
        """Test-split and train-split metrics of one model (reference_spec §5)."""
        if "masks" not in self._cache:  # read once per run
            self._cache["masks"], self._cache["parts"] = test_masks_and_parts(self.prof, self.test)
        return model_metrics(model, self.train, self.test, masks=self._cache["masks"], parts=self._cache["parts"],
                             seconds_per_epoch=history.seconds_per_epoch, seed=seed,
                             device=self.prof.train.device)

    def _train(self, train_fn, models: list[DinoQPM], seeds: list[int], work_dir) -> tuple[list, float]:
        """Train the models of ``seeds`` (together when several) and return their histories and the seconds."""
        t0 = time.perf_counter()
        histories = train_fn(models if len(seeds) > 1 else models[0], self.train, self.prof.train,
                             seed=seeds if len(seeds) > 1 else seeds[0], run_dir=work_dir, eval_data=self.test,
                             recalibrate_bn=self.prof.train.recalibrate_bn, verbose=self.verbose)
        return (histories if len(seeds) > 1 else [histories]), time.perf_counter() - t0

    def _provenance(self, seed: int, seeds: list[int], train_seconds: float, t0: float) -> dict[str, Any]:
        extra = {"stacked_seeds": seeds} if len(seeds) > 1 else {}
        return provenance(seed=seed, device=device_label(self.prof.train.device), pretrained=self.pretrained,
                          train_seconds=train_seconds,
                          total_seconds=time.perf_counter() - t0, **extra)

    # ------------------------------------------------------------------ stages
    def run_dense(self, seeds: list[int], work_dir) -> list[ResultData]:
        t0 = time.perf_counter()
        spec = self._spec()
        models = [build_model(self.prof.model, spec["in_dim"], self.n_classes, seed=seed,
                              last_layer_bn_relu=spec["last_layer_bn_relu"]) for seed in seeds]
        histories, train_seconds = self._train(train_dense, models, seeds, work_dir)
        out = []
        for seed, model, history in zip(seeds, models, histories):
            metrics, ev, feats = self._metrics(model, history, seed)
            out.append(ResultData(
                metrics=metrics,
                provenance=self._provenance(seed, seeds, train_seconds, t0),
                tensors={
                    MODEL_FILE: model.state_dict(),
                    FEATURES_FILE: {"features": feats, "labels": self.train.labels,
                                    "mean": feats.mean(axis=0), "std": feats.std(axis=0)},  # population std (§1.1)
                    PREDICTIONS_FILE: prediction_tensors(self.test, ev),
                },
                json_files={HISTORY_FILE: history.to_dict(), MODEL_SPEC_FILE: spec},
            ))
        return out

    def run_qp(self, seed: int, dense: Result) -> ResultData:
        t0 = time.perf_counter()
        q = self.prof.qp
        stored = dense.tensors(FEATURES_FILE)
        A, R = qp.qpm_matrices(stored["features"].numpy(), stored["labels"].numpy())
        threshold = None if q.r_mode == "none" else qp.r_threshold(R, q.n_selected, mode=q.r_mode)
        sol = qp.solve_qpm(A, R, q.n_selected, q.n_per_class, r_threshold=threshold, solver=q.solver,
                           time_limit=q.time_limit, seed=seed, verbose=self.verbose, gurobi=q.gurobi,
                           rounds=q.rounds)
        metrics = {"objective": sol.objective, "bound": sol.bound, "gap": sol.gap, "solver": sol.solver,
                   "solve_seconds": sol.runtime, "r_threshold": sol.r_threshold,
                   "n_penalised": None if threshold is None else threshold.n_penalised}
        return ResultData(
            metrics=metrics,
            provenance=provenance(seed=seed, device=device_label("cpu"), pretrained=self.pretrained,
                                  total_seconds=time.perf_counter() - t0, solver_settings=sol.solver_settings),
            tensors={SELECTION_FILE: {"selected": sol.selected, "assignment": sol.assignment.astype(np.uint8),
                                      "A": A.astype(np.float32), "R": R.astype(np.float32)}},
        )

    def run_qpm(self, seeds: list[int], work_dir, dense: dict[int, Result],
                qp_results: dict[int, Result]) -> list[ResultData]:
        t0 = time.perf_counter()
        standardise = self.prof.model.standardise
        models, specs = [], []
        for seed in seeds:
            spec = dense[seed].json(MODEL_SPEC_FILE)
            model = DinoQPM(**spec)
            model.load_state_dict(dense[seed].tensors(MODEL_FILE))
            sel = qp_results[seed].tensors(SELECTION_FILE)
            stats = dense[seed].tensors(FEATURES_FILE)
            model.set_sparse_head(sel["selected"], sel["assignment"].float(), stats["mean"], stats["std"],
                                  standardise=standardise)
            models.append(model)
            specs.append(spec)
        histories, train_seconds = self._train(train_finetune, models, seeds, work_dir)
        out = []
        for seed, model, spec, history in zip(seeds, models, specs, histories):
            metrics, ev, feats = self._metrics(model, history, seed)
            out.append(ResultData(
                metrics=metrics,
                provenance=self._provenance(seed, seeds, train_seconds, t0),
                tensors={
                    MODEL_FILE: model.state_dict(),
                    SPARSE_FILE: {"selected": model.selected, "assignment": model.assignment,
                                  "mean": model.feature_mean, "std": model.feature_std},
                    FEATURES_FILE: {"features": feats, "labels": self.train.labels},
                    PREDICTIONS_FILE: prediction_tensors(self.test, ev),
                },
                json_files={HISTORY_FILE: history.to_dict(),
                            MODEL_SPEC_FILE: spec | {"standardise": standardise}},
            ))
        return out
