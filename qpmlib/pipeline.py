"""The whole DINO-QPM pipeline for one profile and seed: what the chapters call (reference_spec §0).

    run = run_dino_qpm("demo", seed=0, overrides={"train.ft_l1_fm": 0.0})
    run.metrics["dino_qpm"]["accuracy"], run.qpm_model(), run.predictions()
    runs = run_seeds("paper")            # the profile's 5 seeds; on a GPU the missing ones train together

Stages, each cached in the results store (:mod:`qpmlib.results`) under a hash of everything that determines it,
so that a fine-tune sweep reuses the dense model and the QP selection:

1. ``dense``: train the MLP + dense head (CE + FDL), evaluate it ("Dense F_froz", reference_spec §6.2), keep its
   eval-mode training features (§1.1) with their mean and population std.
2. ``qp``: A, R from those features, the R threshold (``qp.r_mode``; none for ``"none"``), :func:`qpmlib.qp.solve_qpm`.
3. ``qpm``: sparse head on the standardised selected features (§2.5), fine-tune the MLP, evaluate.

Metrics (keys as :data:`qpmlib.paper.METRICS`): ``accuracy``, ``plausibility`` (test split, datasets with
segmentations), ``sid_at_5`` (None when no class has 5 features), ``class_independence`` and ``contrastiveness``
(training features), ``n_features``, ``n_per_class``, ``seconds_per_epoch`` and, on SynthBirds,
``part_alignment``. A model with ``n_layers == 0`` stops after the dense stage, as the reference does (§6.1).

Paper-vs-code switches are profile fields whose defaults are the reference code's (reference_spec §10):
``model.last_layer_bn_relu``, ``model.standardise``, ``train.recalibrate_bn`` and ``train.fdl_scale``.
``train.precision="bf16"`` (not the reference) trains with bfloat16 matmuls, the fast choice on a GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from qpmlib import metrics as qmetrics
from qpmlib import qp
from qpmlib.model import POOLINGS, DinoQPM, build_model
from qpmlib.profiles import Profile, get_profile
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
from qpmlib.train import (
    TokenData,
    evaluate,
    extract_features,
    resolve_device,
    stage_config,
    train_dense,
    train_finetune,
)

__all__ = [
    "KINDS",
    "QPMRun",
    "apply_overrides",
    "check_profile",
    "run_dino_qpm",
    "run_dense",
    "run_seeds",
    "model_metrics",
    "load_run",
    "summarise",
]

#: Result kinds (sub-folders of the profile's results store).
KINDS = ("dense", "qp", "qpm")
SECTIONS = ("data", "backbone", "model", "qp", "train")
R_MODES = ("dinoqpm", "qpm", "none")


# ---------------------------------------------------------------------------------------------- configuration
def apply_overrides(profile: str | Profile, overrides: dict[str, Any] | None = None) -> Profile:
    """Apply flat dotted overrides such as ``{"train.ft_l1_fm": 0.0, "qp.n_selected": 40}`` to a profile.

    Numbers are converted to the type of the field they replace (so ``5`` and ``5.0`` give the same run).

    Args:
        profile: a profile or its name.
        overrides: ``"<section>.<field>" -> value`` with section in data, backbone, model, qp, train.

    Returns:
        The new (frozen) profile; its name is unchanged, so results stay in the same store.

    Raises:
        ValueError: for an unknown section or field (the message lists the valid ones) or a value of the
            wrong type.
    """
    prof = get_profile(profile)
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ValueError(f"override {key!r} must be '<section>.<field>' with section in {', '.join(SECTIONS)}")
        part = getattr(prof, section)
        fields = {f.name: f for f in dataclasses.fields(part)}
        if name not in fields:
            raise ValueError(f"unknown field {key!r}; valid fields of {section}: {', '.join(fields)}")
        old = getattr(part, name)
        if isinstance(old, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(old, bool)
        elif isinstance(old, float) and isinstance(value, (int, float)):
            value, ok = float(value), True
        elif isinstance(old, (int, str, tuple)):
            ok = isinstance(value, type(old))
        else:
            ok = True
        if not ok:
            raise ValueError(f"override {key!r} expects {type(old).__name__} like {old!r}, got {value!r}")
        prof = dataclasses.replace(prof, **{section: dataclasses.replace(part, **{name: value})})
    return prof


def check_profile(profile: Profile, n_classes: int | None = None) -> None:
    """Check the model, QP and training settings before any work starts.

    Args:
        profile: the profile (after overrides).
        n_classes: when known, also check that the QP can give every class a distinct feature set.

    Raises:
        ValueError: naming the field that is out of range and what would be valid.
    """
    m, q = profile.model, profile.qp
    stage_config(profile.train, "dense")  # validates every train.* field
    if m.n_layers < 0 or m.hidden_size < 1 or m.n_features < 1:
        raise ValueError(f"model.n_layers must be >= 0 and model.hidden_size, model.n_features >= 1; got "
                         f"{m.n_layers}, {m.hidden_size}, {m.n_features}")
    if m.pooling not in POOLINGS:
        raise ValueError(f"model.pooling must be one of {', '.join(POOLINGS)}, got {m.pooling!r}")
    if not 0 <= m.dropout < 1:
        raise ValueError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if q.r_mode not in R_MODES:
        raise ValueError(f"qp.r_mode must be one of {', '.join(R_MODES)}, got {q.r_mode!r}")
    if not 1 <= q.n_per_class <= q.n_selected:
        raise ValueError(f"qp.n_per_class must be in [1, qp.n_selected={q.n_selected}], got {q.n_per_class}")
    if m.n_layers > 0 and q.n_selected > m.n_features:
        raise ValueError(f"qp.n_selected={q.n_selected} exceeds model.n_features={m.n_features}")
    n_sets = math.comb(q.n_selected, q.n_per_class)
    if n_classes is not None and m.n_layers > 0 and n_sets < n_classes:
        raise ValueError(f"qp.n_selected={q.n_selected} with qp.n_per_class={q.n_per_class} allows only "
                         f"{n_sets} distinct class feature sets for {n_classes} classes")


def _embedding_id(store: Any) -> dict[str, Any]:
    """What identifies a split's embeddings, without machine-specific paths."""
    inputs = {k: v for k, v in store.manifest["inputs"].items() if k != "root"}
    return {"sha256": hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16],
            "weights_id": inputs.get("weights_id"), "pretrained": inputs.get("pretrained")}


def _configs(prof: Profile, seed: int, train_store: Any, test_store: Any) -> dict[str, dict[str, Any]]:
    """The hashed configuration of each stage; each one contains the previous one."""
    base = {
        "profile": prof.name,
        "seed": seed,
        "data": dataclasses.asdict(prof.data),
        "backbone": {k: v for k, v in dataclasses.asdict(prof.backbone).items() if k != "batch_size"},
        "embeddings": {"train": _embedding_id(train_store), "test": _embedding_id(test_store)},
    }
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


# ---------------------------------------------------------------------------------------------- run object
@dataclass
class QPMRun:
    """A finished pipeline run (read from the results store; nothing here trains).

    Attributes:
        profile: profile name.
        seed: run seed.
        dense: the dense-stage :class:`~qpmlib.results.Result`.
        qp: the QP-stage result (None for ``n_layers == 0``).
        qpm: the fine-tuned QPM result (None for ``n_layers == 0``).
        dataset: dataset key.
    """

    profile: str
    seed: int
    dense: Result
    qp: Result | None
    qpm: Result | None
    dataset: str

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """``{"dense": {...}, "dino_qpm": {...}}`` (method keys of :data:`qpmlib.paper.METHODS`)."""
        out = {"dense": self.dense.metrics}
        if self.qpm is not None:
            out["dino_qpm"] = self.qpm.metrics
        return out

    def _require_qpm(self) -> Result:
        if self.qpm is None:
            raise ValueError("this run has no QPM stage (model.n_layers == 0 stops after the dense stage)")
        return self.qpm

    @property
    def selected(self) -> np.ndarray:
        """(N*_f,) sorted indices of the selected features."""
        return self.qp_solution()["selected"]

    @property
    def assignment(self) -> np.ndarray:
        """(N_c, N*_f) bool assignment; column j is feature ``selected[j]``."""
        return self.qp_solution()["assignment"]

    def qp_solution(self) -> dict[str, np.ndarray]:
        """The stored QP arrays: ``selected``, ``assignment`` (bool), ``A`` and ``R``."""
        if self.qp is None:
            raise ValueError("this run has no QP stage (model.n_layers == 0)")
        t = {k: v.numpy() for k, v in self.qp.tensors(SELECTION_FILE).items()}
        t["assignment"] = t["assignment"].astype(bool)
        return t

    def sparse_head(self) -> dict[str, np.ndarray]:
        """``selected``, ``assignment`` (float 0/1), ``mean`` and ``std`` (of the selected features)."""
        return {k: v.numpy() for k, v in self._require_qpm().tensors(SPARSE_FILE).items()}

    def dense_model(self) -> DinoQPM:
        """The trained dense model, rebuilt on the CPU in eval mode."""
        model = DinoQPM(**self.dense.json(MODEL_SPEC_FILE))
        model.load_state_dict(self.dense.tensors(MODEL_FILE))
        return model.eval()

    def qpm_model(self) -> DinoQPM:
        """The fine-tuned DINO-QPM model (sparse head), rebuilt on the CPU in eval mode."""
        result = self._require_qpm()
        spec = result.json(MODEL_SPEC_FILE)
        standardise = spec.pop("standardise")
        model = DinoQPM(**spec)
        head = self.sparse_head()
        model.set_sparse_head(head["selected"], head["assignment"], head["mean"], head["std"],
                              standardise=standardise)
        model.load_state_dict(result.tensors(MODEL_FILE))
        return model.eval()

    def train_features(self, method: str = "dense") -> dict[str, np.ndarray]:
        """Eval-mode training features of ``"dense"`` or ``"dino_qpm"``: ``features``, ``labels`` (+ mean/std)."""
        result = self.dense if method == "dense" else self._require_qpm()
        return {k: v.numpy() for k, v in result.tensors(FEATURES_FILE).items()}

    def predictions(self) -> pd.DataFrame:
        """Per test sample: ``image_id``, ``label``, ``dense_pred`` and (with a QPM stage) ``qpm_pred``."""
        dense = self.dense.tensors(PREDICTIONS_FILE)
        df = pd.DataFrame({"image_id": dense["image_ids"].numpy(), "label": dense["labels"].numpy(),
                           "dense_pred": dense["pred"].numpy()})
        if self.qpm is not None:
            df["qpm_pred"] = self.qpm.tensors(PREDICTIONS_FILE)["pred"].numpy()
        return df

    def history(self, method: str = "dense") -> pd.DataFrame:
        """Per-epoch training log of ``"dense"`` or ``"dino_qpm"``."""
        result = self.dense if method == "dense" else self._require_qpm()
        return pd.DataFrame(result.json(HISTORY_FILE)["epochs"])

    def records(self) -> pd.DataFrame:
        """Long table (method, dataset, profile, seed, metric, value) of the numeric metrics."""
        rows = [
            {"method": method, "dataset": self.dataset, "profile": self.profile, "seed": self.seed,
             "metric": name, "value": float("nan") if value is None else float(value)}
            for method, values in self.metrics.items()
            for name, value in values.items()
            if value is None or isinstance(value, (int, float))
        ]
        return pd.DataFrame(rows, columns=["method", "dataset", "profile", "seed", "metric", "value"])


def summarise(runs: list[QPMRun], *, ddof: int = 0) -> pd.DataFrame:
    """Mean ± std over seeds of every metric (via :func:`qpmlib.tables.summarise_runs`).

    Args:
        runs: finished runs (any mix of seeds; other keys stay separate groups).
        ddof: 0 = population std (the authors' aggregation), 1 = sample std.

    Returns:
        One row per (method, dataset, profile, metric) with columns mean, std, n.
    """
    from qpmlib.tables import summarise_runs

    if not runs:
        raise ValueError("summarise needs at least one run")
    return summarise_runs(pd.concat([r.records() for r in runs], ignore_index=True), ddof=ddof)


# ---------------------------------------------------------------------------------------------- entry points
def run_dino_qpm(
    profile: str | Profile,
    seed: int = 0,
    *,
    overrides: dict[str, Any] | None = None,
    verbose: bool = True,
) -> QPMRun:
    """Run (or load) the dense stage, the QP and the fine-tune stage for one seed.

    Args:
        profile: a profile or its name.
        seed: the run seed (model init, shuffling, dropout, QP solver).
        overrides: flat dotted overrides, see :func:`apply_overrides`.
        verbose: progress bars.

    Returns:
        The :class:`QPMRun`.

    Raises:
        ValueError: for invalid overrides or settings (see :func:`check_profile`).
    """
    return _run(profile, [seed], overrides, verbose=verbose, compute=True)[0]


def run_dense(
    profile: str | Profile,
    seed: int = 0,
    *,
    overrides: dict[str, Any] | None = None,
    verbose: bool = True,
) -> QPMRun:
    """Run (or load) only the dense stage; the returned run has no QP or fine-tune stage.

    Baselines that start from their own dense model (DINO-SLDD, DINO-QSENN) use this instead of a full
    :func:`run_dino_qpm`, whose QP and fine-tune stage they would not use.
    """
    return _run(profile, [seed], overrides, verbose=verbose, compute=True, dense_only=True)[0]


def load_run(
    profile: str | Profile,
    seed: int = 0,
    *,
    overrides: dict[str, Any] | None = None,
    verbose: bool = False,
) -> QPMRun:
    """The stored run, without training (the embedding stores are opened to identify the run).

    Args:
        profile: a profile or its name.
        seed: the run seed.
        overrides: the same overrides the run was computed with.
        verbose: progress output while opening the embedding stores.

    Returns:
        The :class:`QPMRun`.

    Raises:
        FileNotFoundError: when a stage has not been computed yet; the message says how to compute it.
    """
    return _run(profile, [seed], overrides, verbose=verbose, compute=False)[0]


def run_seeds(
    profile: str | Profile,
    seeds: Sequence[int] | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    stack: bool | None = None,
    dense_only: bool = False,
    verbose: bool = True,
) -> list[QPMRun]:
    """Run (or load) the pipeline for several seeds, training the missing ones together in one pass.

    Each seed's stages are stored exactly as :func:`run_dino_qpm` stores them (same hashes), so a later
    single-seed call finds them. With ``stack`` the dense stages of all missing seeds train as one stacked model
    (:func:`qpmlib.train.train_dense` with a list), then every seed solves its own QP, then the fine-tune stages
    train together; the results equal separate runs up to floating-point rounding.

    Args:
        profile: a profile or its name.
        seeds: run seeds; None: the profile's.
        overrides: flat dotted overrides, see :func:`apply_overrides`.
        stack: train the missing seeds together; None (default) stacks on a GPU, where one small model leaves
            most of the device idle, and trains one after another on a CPU, where the batched matmuls of a
            stacked step run slower than the plain ones (``benchmarks/bench_training.py``).
        dense_only: stop after the dense stage (see :func:`run_dense`).
        verbose: progress bars.

    Returns:
        One :class:`QPMRun` per seed, in the order of ``seeds``.

    Raises:
        ValueError: for invalid overrides or settings, or an empty or repeated seed list.
    """
    return _run(profile, seeds, overrides, verbose=verbose, compute=True, dense_only=dense_only, stack=stack)


def _run(profile, seeds: Sequence[int] | None, overrides, *, verbose: bool, compute: bool,
         dense_only: bool = False, stack: bool | None = None) -> list[QPMRun]:
    from qpmlib.embeddings import get_store

    prof = apply_overrides(profile, overrides)
    check_profile(prof)
    seeds = [int(s) for s in (prof.seeds if seeds is None else seeds)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    train_store, test_store = get_store(prof, "train", verbose=verbose), get_store(prof, "test", verbose=verbose)
    train, test = TokenData.from_store(train_store), TokenData.from_store(test_store)
    n_classes = max(train.n_classes, test.n_classes)
    check_profile(prof, n_classes)
    cfgs = {seed: _configs(prof, seed, train_store, test_store) for seed in seeds}
    stores = {kind: ResultStore.for_profile(prof.name, kind) for kind in KINDS}
    ctx = _Context(prof, train, test, n_classes, bool(train_store.pretrained), verbose)
    if stack is None:
        stack = resolve_device(prof.train.device).type == "cuda"

    def stage(kind: str, fn, todo: Sequence[int]) -> dict[int, Result]:
        """The stored results of ``kind`` for ``todo``; ``fn(missing seeds, work_dir)`` computes the rest."""
        found = {seed: stores[kind].get(cfgs[seed][kind]) for seed in todo}
        missing = [seed for seed, r in found.items() if r is None]
        if missing and not compute:
            seed = missing[0]
            raise FileNotFoundError(
                f"no stored {kind} result for profile {prof.name!r}, seed {seed} and these overrides "
                f"(looked in {stores[kind].path(cfgs[seed][kind])}); compute it with qpmlib.pipeline.run_dino_qpm"
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
                for seed, data in zip(group, fn(group, stores[kind].work_dir(key))):
                    found[seed] = stores[kind].put(cfgs[seed][kind], data)
        return found

    dense = stage("dense", ctx.run_dense, seeds)
    if dense_only or prof.model.n_layers == 0:
        return [QPMRun(prof.name, seed, dense[seed], None, None, prof.data.dataset) for seed in seeds]
    qp_results = stage("qp", lambda group, _: [ctx.run_qp(group[0], dense[group[0]])], seeds)
    qpm = stage("qpm", lambda group, work: ctx.run_qpm(group, work, dense, qp_results), seeds)
    return [QPMRun(prof.name, seed, dense[seed], qp_results[seed], qpm[seed], prof.data.dataset) for seed in seeds]


def model_metrics(
    model: torch.nn.Module,
    train: TokenData,
    test: TokenData,
    *,
    k: int = 5,
    masks: np.ndarray | None = None,
    parts: np.ndarray | None = None,
    seconds_per_epoch: float = float("nan"),
    seed: int = 0,
    device: str = "cpu",
) -> tuple[dict[str, Any], Any, np.ndarray]:
    """The Table 1-2 metrics of a trained model with a ``head_weight`` (reference_spec §5).

    Only the features with a non-zero weight in some class (the reference's "rel features") enter the metrics.

    Args:
        model: a dense or sparse model; ``head_weight`` is (N_c, K).
        train: training tokens (Class-Independence and Contrastiveness on train features, §5.3-5.4).
        test: test tokens (Accuracy, Plausibility and SID@k with the predicted class, §5.1-5.2, §5.5).
        k: the k of SID@k, stored under ``sid_at_5`` (None when no class has k non-zero weights).
        masks: (N_test, H, W) bool object masks on the patch grid, or None (Plausibility is then None).
        parts: (N_test, n_parts, H, W) SynthBirds part fractions, or None (no ``part_alignment``).
        seconds_per_epoch: mean training time per epoch to report.
        seed: Contrastiveness's GMM seed.
        device: where the model is evaluated.

    Returns:
        ``(metrics, test evaluation, train features (N_train, K))``.
    """
    ev = evaluate(model, test, device=device)
    train_feats, _ = extract_features(model, train, device=device)
    weight = model.head_weight.detach().cpu().numpy()  # (N_c, K)
    rel = np.flatnonzero((weight != 0).any(axis=0))
    rows = weight[ev.predictions][:, rel]  # (N, K_rel): each test sample's predicted-class weights
    maps = ev.feature_maps[:, rel]
    out: dict[str, Any] = {
        "accuracy": qmetrics.accuracy(ev.logits, ev.labels),
        "plausibility": None if masks is None else qmetrics.plausibility(maps, rows, masks),
        "sid_at_5": qmetrics.sid_at_k(maps, rows, k=k) if (weight != 0).sum(axis=1).max() >= k else None,
        "class_independence": qmetrics.class_independence(train_feats[:, rel], train.labels),
        "contrastiveness": qmetrics.contrastiveness(train_feats[:, rel], seed=seed),
        **qmetrics.compactness(weight),
        "seconds_per_epoch": seconds_per_epoch,
    }
    if parts is not None:
        out["part_alignment"] = qmetrics.part_alignment(maps, parts).score
    return out, ev, train_feats


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
    def _device(self) -> str:
        dev = resolve_device(self.prof.train.device)
        return f"cuda ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)

    def _spec(self) -> dict[str, Any]:
        m = self.prof.model
        return {"in_dim": self.train.dim, "n_classes": self.n_classes, "n_layers": m.n_layers,
                "hidden_size": m.hidden_size, "n_features": m.n_features, "pooling": m.pooling,
                "dropout": m.dropout, "last_layer_bn_relu": self.prof.model.last_layer_bn_relu}

    def _masks_and_parts(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Test-split object masks (CUB format) and SynthBirds part maps on the patch grid (read once)."""
        from qpmlib import data
        from qpmlib.data import cub, synthbirds

        dataset = self.prof.data.dataset
        if dataset not in ("cub", "synthbirds") or self.test.image_ids is None:
            return None, None
        if "masks" not in self._cache:
            root = data.prepare(self.prof.data, verbose=False)
            grid = math.isqrt(self.test.n_patches)
            ids = np.asarray(self.test.image_ids)
            self._cache["masks"] = cub.patch_masks(root, ids, grid)
            self._cache["parts"] = synthbirds.part_maps(root, ids, grid) if dataset == "synthbirds" else None
        return self._cache["masks"], self._cache["parts"]

    def _metrics(self, model: DinoQPM, history, seed: int) -> tuple[dict[str, Any], Any, np.ndarray]:
        """Test-split and train-split metrics of one model (reference_spec §5)."""
        masks, parts = self._masks_and_parts()
        return model_metrics(model, self.train, self.test, masks=masks, parts=parts,
                             seconds_per_epoch=history.seconds_per_epoch, seed=seed,
                             device=self.prof.train.device)

    def _predictions(self, ev) -> dict[str, np.ndarray]:
        ids = self.test.image_ids if self.test.image_ids is not None else np.arange(len(self.test))
        return {"image_ids": np.asarray(ids, dtype=np.int64), "labels": ev.labels,
                "pred": ev.predictions.astype(np.int64), "logits": ev.logits}

    def _train(self, train_fn, models: list[DinoQPM], seeds: list[int], work_dir) -> tuple[list, float]:
        """Train the models of ``seeds`` (together when several) and return their histories and the seconds."""
        t0 = time.perf_counter()
        histories = train_fn(models if len(seeds) > 1 else models[0], self.train, self.prof.train,
                             seed=seeds if len(seeds) > 1 else seeds[0], run_dir=work_dir, eval_data=self.test,
                             recalibrate_bn=self.prof.train.recalibrate_bn, verbose=self.verbose)
        return (histories if len(seeds) > 1 else [histories]), time.perf_counter() - t0

    def _provenance(self, seed: int, seeds: list[int], train_seconds: float, t0: float) -> dict[str, Any]:
        extra = {"stacked_seeds": seeds} if len(seeds) > 1 else {}
        return provenance(seed=seed, device=self._device(), pretrained=self.pretrained, train_seconds=train_seconds,
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
                    PREDICTIONS_FILE: self._predictions(ev),
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
                           time_limit=q.time_limit, seed=seed, verbose=self.verbose)
        metrics = {"objective": sol.objective, "bound": sol.bound, "gap": sol.gap, "solver": sol.solver,
                   "solve_seconds": sol.runtime, "r_threshold": sol.r_threshold,
                   "n_penalised": None if threshold is None else threshold.n_penalised}
        return ResultData(
            metrics=metrics,
            provenance=provenance(seed=seed, device="cpu", pretrained=self.pretrained,
                                  total_seconds=time.perf_counter() - t0),
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
                    PREDICTIONS_FILE: self._predictions(ev),
                },
                json_files={HISTORY_FILE: history.to_dict(),
                            MODEL_SPEC_FILE: spec | {"standardise": standardise}},
            ))
        return out
