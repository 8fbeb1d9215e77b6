"""Every row of Table 1 that this book trains: one run function per method, all cached in the results store.

Each ``run_*`` function takes ``(profile, seed, *, overrides=None, verbose=False)`` and returns a
:class:`MethodRun` whose ``metrics`` has the keys of :func:`qpmlib.pipeline.run_dino_qpm`'s metrics
(``accuracy``, ``plausibility``, ``sid_at_5``, ``class_independence``, ``contrastiveness``, ``n_features``,
``n_per_class``, ``seconds_per_epoch``) plus ``sid_k``:

* :func:`run_linear_probe`: the CLS linear probe (reference_spec §6.1): no MLP, pooling "cls", no fine-tune;
  its CAM is the probe's weights applied to the frozen patch tokens (§5.7).
* :func:`run_dense`: Dense F_froz, the dense stage of DINO-QPM (§6.2).
* :func:`run_sldd`, :func:`run_qsenn`: DINO-SLDD and DINO-QSENN (§6.3, §6.4). Each has its own dense stage
  (FDL 0.196; the two share it), SLDD's feature selection, real (SLDD) or ternary (QSENN) frozen weights and a
  frozen bias, a sparse head whose mean/std are trainable, head dropout 0.1, and fine-tuning (§2.5, §10 row 14).
* :func:`run_dino_qpm`, :func:`run_dino_qpm_compact`: DINO-QPM and its compact variant (:func:`compact_sizes`).

``sid_at_5`` is SID@k with ``k = sid_k(profile) = min(5, N^c_f of the profile)``: on the paper and demo
profiles k = 5 as in the paper; on the smoke profile (2 features per class) it is SID@2, and ``sid_k`` says so.
A model with fewer than k weights in every class row gets None, as the paper's "−" for DINO-QPM Compact.

:data:`RUNNERS` maps the method keys of :data:`qpmlib.paper.METHODS` to these functions.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from qpmlib import metrics as qmetrics
from qpmlib import pipeline
from qpmlib.model import STD_FLOOR, DinoQPM, ModelOutput, check_selection
from qpmlib.profiles import Profile, get_profile
from qpmlib.results import (
    HISTORY_FILE,
    MODEL_FILE,
    MODEL_SPEC_FILE,
    FEATURES_FILE,
    SPARSE_FILE,
    Result,
    ResultData,
    ResultStore,
    provenance,
)
from qpmlib.sparse_baselines import (
    QSENN,
    SLDD,
    QSENNSettings,
    SLDDSettings,
    linear_probe_config,
    qsenn_config,
    qsenn_weights,
    sldd_config,
    sldd_select,
    sldd_weights,
)
from qpmlib.train import (
    History,
    StageConfig,
    TokenData,
    evaluate,
    extract_features,
    resolve_device,
    train_dense,
)

__all__ = [
    "METHOD_KEYS",
    "RUNNERS",
    "MethodRun",
    "SparseHeadModel",
    "sid_k",
    "path_settings",
    "compact_sizes",
    "finetune_sparse",
    "fit_qsenn",
    "method_metrics",
    "run_method",
    "prepare",
    "run_linear_probe",
    "run_dense",
    "run_sldd",
    "run_qsenn",
    "run_dino_qpm",
    "run_dino_qpm_compact",
]

#: The reproduced rows of Table 1, in the paper's order (ResNet50 rows are reported only).
METHOD_KEYS = ("linear_probe", "dense", "dino_sldd", "dino_qsenn", "dino_qpm", "dino_qpm_compact")
#: Results-store kinds of this module.
SELECTION_KIND = "sldd_selection"
_PIPELINE_SECTIONS = ("data.", "backbone.", "model.", "qp.", "train.")


# ---------------------------------------------------------------------------------------------- results
@dataclass
class MethodRun:
    """One method's finished run for one seed.

    Attributes:
        method: a key of :data:`METHOD_KEYS`.
        profile: the profile after overrides.
        seed: run seed.
        metrics: the Table 1-2 metrics (see the module docstring) and ``sid_k``.
        model_loader: rebuilds the trained model (CPU, eval mode) from the results store.
    """

    method: str
    profile: Profile
    seed: int
    metrics: dict[str, Any]
    model_loader: Callable[[], nn.Module]

    @property
    def dataset(self) -> str:
        """Dataset key of the run."""
        return self.profile.data.dataset

    def model(self) -> nn.Module:
        """The trained model, rebuilt on the CPU in eval mode (its ``head_weight`` is the (N_c, K) head)."""
        return self.model_loader()


def path_settings(profile: str | Profile, settings: SLDDSettings) -> SLDDSettings:
    """The glm-path constants used on a profile: ``settings`` on the paper profile, a 25-step path elsewhere.

    The reference's 100-step lambda path (reference_spec §6.3) costs seconds per fit even on the smoke
    profile's 8 features, and Q-SENN fits it four times; the smoke and demo profiles use 25 steps over the same
    range (lambda_max down to 1e-3 lambda_max), which picks the entries by the same rules.
    """
    return settings if get_profile(profile).name == "paper" else dataclasses.replace(settings, n_lambdas=25)


def sid_k(profile: str | Profile) -> int:
    """k of the SID@k this book reports as ``sid_at_5``: ``min(5, profile.qp.n_per_class)`` (paper: 5)."""
    return min(5, get_profile(profile).qp.n_per_class)


def compact_sizes(profile: str | Profile, n_classes: int | None = None) -> tuple[int, int]:
    """(N*_f, N^c_f) of DINO-QPM Compact: (40, 4) on the paper profile, scaled like it elsewhere.

    Elsewhere: ``N^c_f - 1`` (at least 1) features per class and ``round(0.8 N*_f)`` features, raised until
    ``comb(N*_f, N^c_f) >= n_classes`` so that every class can get its own feature set (reference_spec §1.7),
    and at most ``model.n_features``.

    Args:
        profile: profile name or object.
        n_classes: number of classes (default: the profile's SynthBirds ``data.n_classes``).

    Returns:
        ``(n_selected, n_per_class)``.

    Raises:
        ValueError: when no size up to ``model.n_features`` gives enough distinct feature sets.
    """
    prof = get_profile(profile)
    if prof.name == "paper":
        return 40, 4
    n_classes = prof.data.n_classes if n_classes is None else n_classes
    per_class = max(1, prof.qp.n_per_class - 1)
    n_selected = max(per_class, round(0.8 * prof.qp.n_selected))
    while math.comb(n_selected, per_class) < n_classes:
        n_selected += 1
    if n_selected > prof.model.n_features:
        raise ValueError(f"no compact size fits: need {n_selected} features for {n_classes} classes with "
                         f"{per_class} per class, but model.n_features is {prof.model.n_features}")
    return n_selected, per_class


# ---------------------------------------------------------------------------------------------- sparse head
class SparseHeadModel(nn.Module):
    """The MLP of a dense model under the SLDD/QSENN sparse layer (reference_spec §2.5, §6.3-6.4).

    ``logits = W ((Dropout(f)_S - mu) / max(sigma, 1e-6)) + b`` with W and b frozen; mu and sigma are trainable
    when ``train_normalisation`` (the SLDD/QSENN default), frozen otherwise. Unlike DINO-QPM's sparse head, W is
    real-valued (SLDD) or ternary (QSENN) and there is a bias.

    Args:
        dense: the trained dense model; its MLP is reused (and trained further), its head is dropped.
        selected: (K,) distinct feature indices; sorted ascending here (columns of ``weight`` follow them).
        weight: (N_c, K) frozen weights in the order of ``selected``.
        bias: (N_c,) frozen bias.
        mean: (K,) initial mu, in the order of ``selected``.
        std: (K,) initial sigma.
        dropout: head dropout (0.1 for SLDD/QSENN).
        train_normalisation: whether mu and sigma are trained.

    Raises:
        ValueError: for mismatched shapes or indices out of range.
    """

    sparse = False  # for qpmlib.train: this model is trained with an explicit StageConfig, not train_finetune

    def __init__(self, dense: DinoQPM, selected, weight, bias, mean, std, *, dropout: float = 0.1,
                 train_normalisation: bool = True) -> None:
        super().__init__()
        sel, order, w = check_selection(selected, weight, dense.n_features, dense.n_classes)
        k = sel.numel()
        vectors = [torch.as_tensor(np.asarray(v), dtype=torch.float32).flatten() for v in (bias, mean, std)]
        if vectors[0].numel() != dense.n_classes or vectors[1].numel() != k or vectors[2].numel() != k:
            raise ValueError(f"expected bias ({dense.n_classes},), mean ({k},) and std ({k},); got "
                             f"{[v.numel() for v in vectors]}")
        self.mlp = dense.mlp
        self.pooling = dense.pooling
        self.n_classes = dense.n_classes
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("selected", sel[order])
        self.register_buffer("weight", w[:, order])
        self.register_buffer("bias", vectors[0])
        self.mean = nn.Parameter(vectors[1][order], requires_grad=train_normalisation)
        self.std = nn.Parameter(vectors[2][order], requires_grad=train_normalisation)

    @property
    def head_weight(self) -> torch.Tensor:
        """(N_c, K) frozen weights (what the FDL and the metrics see)."""
        return self.weight

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor | None = None) -> ModelOutput:
        """Logits, the selected (post-dropout, un-standardised) features and their maps.

        Args:
            tokens: (B, P + 1, D) patch tokens followed by the CLS token.
            noise: (B, K) dropout multipliers to use instead of the dropout layer (see
                :meth:`qpmlib.model.DinoQPM.forward`).

        Returns:
            :class:`~qpmlib.model.ModelOutput` with logits (B, N_c), features (B, K), feature_maps (B, K, H, W).
        """
        t = self.mlp(tokens)  # (B, P+1, N_f)
        n_patches = t.shape[1] - 1
        side = math.isqrt(n_patches)
        patches = t[:, :n_patches]  # (B, P, N_f)
        pooled = patches.mean(dim=1) if self.pooling == "avg_pooling" else t[:, n_patches]  # (B, N_f)
        v = pooled[:, self.selected]
        v = self.dropout(v) if noise is None else v * noise  # (B, K)
        z = (v - self.mean) / self.std.clamp_min(STD_FLOOR)
        maps = patches[:, :, self.selected].transpose(1, 2).reshape(t.shape[0], -1, side, side)  # (B, K, H, W)
        return ModelOutput(z @ self.weight.T + self.bias, v, maps)


def finetune_sparse(dense: DinoQPM, train: TokenData, selected, weight, bias, mean, std, stage: StageConfig, *,
                    seed: int, dropout: float = 0.1, train_normalisation: bool = True,
                    eval_data: TokenData | None = None, run_dir=None,
                    verbose: bool = False) -> tuple[SparseHeadModel, History]:
    """Put a :class:`SparseHeadModel` on ``dense`` and fine-tune it (reference_spec §6.3 "Fine-tune").

    Args:
        dense: trained dense model (its MLP is trained further in place).
        train: training tokens.
        selected, weight, bias, mean, std: see :class:`SparseHeadModel`.
        stage: epochs, batch size, lr, weight decay and loss weights of the fine-tune (stage "finetune").
        seed: shuffling and dropout seed.
        dropout: head dropout.
        train_normalisation: train mu and sigma.
        eval_data: optional test tokens for the history's test accuracy.
        run_dir: folder for resumable checkpoints (None: none).
        verbose: progress bar.

    Returns:
        ``(model, history)``; the model in eval mode.
    """
    model = SparseHeadModel(dense, selected, weight, bias, mean, std, dropout=dropout,
                            train_normalisation=train_normalisation)
    history = train_dense(model, train, stage, seed=seed, run_dir=run_dir, eval_data=eval_data,
                          verbose=verbose)
    return model, history


def fit_qsenn(dense: DinoQPM, train: TokenData, selected, n_per_class: int, stage: StageConfig,
              schedule: list[tuple[int, float]], *, seed: int, settings: QSENNSettings = QSENN,
              eval_data: TokenData | None = None, run_dir=None,
              verbose: bool = False) -> tuple[SparseHeadModel, list[History]]:
    """Q-SENN's iterations on a dense model (reference_spec §6.4).

    Each iteration recomputes the current model's selected training features (eval mode), fits the glm path
    on them (:func:`qpmlib.sparse_baselines.qsenn_weights`: ternary weights and Q-SENN's bias), sets mu and sigma
    to those features' mean and population std, and fine-tunes with a fresh optimiser for the iteration's
    ``(epochs, lr)``.

    Args:
        dense: trained dense model (its MLP is trained further in place).
        train: training tokens.
        selected: (K,) SLDD's selected features.
        n_per_class: N^c_f (ternary weights keep ``N_c * n_per_class`` entries).
        stage: the fine-tune stage (its epochs and lr are replaced by the schedule's).
        schedule: ``(epochs, lr)`` per iteration (:func:`qpmlib.sparse_baselines.qsenn_schedule`).
        seed: seed of the glm splits, shuffling and dropout (iteration i uses ``seed + i`` for shuffling).
        settings: QSENN constants (head dropout).
        eval_data: optional test tokens.
        run_dir: folder for resumable checkpoints (one sub-folder per iteration).
        verbose: progress bars.

    Returns:
        ``(model, histories)``: the final model (eval mode) and one :class:`~qpmlib.train.History` per iteration.

    Raises:
        ValueError: for an empty schedule.
    """
    if not schedule:
        raise ValueError("schedule must hold at least one (epochs, lr) iteration")
    sel = np.sort(np.asarray(selected, dtype=np.int64))
    feats, _ = extract_features(dense, train, device="cpu")
    feats = feats[:, sel]
    model, histories = None, []
    for i, (epochs, lr) in enumerate(schedule):
        weight, bias = qsenn_weights(feats, train.labels, n_per_class, seed=seed, settings=settings)
        mean, std = feats.mean(axis=0), feats.std(axis=0)
        it_stage = dataclasses.replace(stage, epochs=int(epochs), lr=float(lr))
        sub = None if run_dir is None else _subdir(run_dir, f"iteration_{i}")
        if model is None:
            model, history = finetune_sparse(dense, train, sel, weight, bias, mean, std, it_stage, seed=seed + i,
                                             dropout=settings.head_dropout, eval_data=eval_data, run_dir=sub,
                                             verbose=verbose)
        else:
            with torch.no_grad():
                model.weight.copy_(torch.as_tensor(weight))
                model.bias.copy_(torch.as_tensor(bias))
                model.mean.copy_(torch.as_tensor(mean))
                model.std.copy_(torch.as_tensor(std))
            history = train_dense(model, train, it_stage, seed=seed + i, run_dir=sub, eval_data=eval_data,
                                  verbose=verbose)
        histories.append(history)
        feats, _ = extract_features(model, train, device="cpu")
    return model, histories


def _subdir(run_dir, name: str):
    from pathlib import Path

    path = Path(run_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------- metrics
def method_metrics(model: nn.Module, train: TokenData, test: TokenData, *, k: int = 5,
                   masks: np.ndarray | None = None, seconds_per_epoch: float = float("nan"),
                   seed: int = 0) -> dict[str, Any]:
    """The Table 1-2 metrics of a trained model (reference_spec §5), as the pipeline computes them.

    Only the features with a non-zero weight in some class ("rel features", §5) enter the metrics.

    Args:
        model: a dense, sparse or :class:`SparseHeadModel` model (``head_weight`` (N_c, K)).
        train: training tokens (Class-Independence and Contrastiveness, §5.3-5.4).
        test: test tokens (Accuracy, Plausibility, SID@k; predicted class, §5.1-5.2, §5.5).
        k: the k of SID@k, stored under ``sid_at_5`` (None when no class has k non-zero weights).
        masks: (N_test, H, W) bool object masks on the patch grid, or None (Plausibility is then None).
        seconds_per_epoch: mean training time per epoch to report.
        seed: Contrastiveness's GMM seed.

    Returns:
        dict with accuracy, plausibility, sid_at_5, sid_k, class_independence, contrastiveness, n_features,
        n_per_class and seconds_per_epoch.
    """
    metrics, _, _ = pipeline.model_metrics(model, train, test, k=k, masks=masks,
                                           seconds_per_epoch=seconds_per_epoch, seed=seed)
    return {**metrics, "sid_k": k}


def _test_masks(prof: Profile, test: TokenData) -> np.ndarray | None:
    from qpmlib import data
    from qpmlib.data import cub

    if prof.data.dataset not in ("cub", "synthbirds") or test.image_ids is None:
        return None
    root = data.prepare(prof.data, verbose=False)
    return cub.patch_masks(root, np.asarray(test.image_ids), math.isqrt(test.n_patches))


def _tokens(prof: Profile, verbose: bool) -> tuple[TokenData, TokenData]:
    from qpmlib.embeddings import get_store

    return (TokenData.from_store(get_store(prof, "train", verbose=verbose)),
            TokenData.from_store(get_store(prof, "test", verbose=verbose)))


# ---------------------------------------------------------------------------------------------- run functions
def _split(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pipeline overrides (data/backbone/model/qp/train) and the rest (head.*, qsenn.*)."""
    ours = {k: v for k, v in config.items() if k.startswith(_PIPELINE_SECTIONS)}
    return ours, {k: v for k, v in config.items() if k not in ours}


def _pipeline_run(method: str, profile, seed: int, overrides: dict[str, Any], k: int, verbose: bool) -> MethodRun:
    """A method that is one stage of the pipeline: "dense" / "linear_probe" (dense stage) or "dino_qpm"."""
    run = pipeline.run_dino_qpm(profile, seed, overrides=overrides, verbose=verbose)
    prof = pipeline.apply_overrides(profile, overrides)
    stage = "dense" if method in ("dense", "linear_probe") else "dino_qpm"
    loader = run.dense_model if stage == "dense" else run.qpm_model
    metrics = dict(run.metrics[stage])
    metrics["sid_k"] = k
    if k != 5:  # the pipeline stores SID@5; recompute SID@k from the stored model (smoke profile)
        from qpmlib.embeddings import get_store

        test = TokenData.from_store(get_store(prof, "test", verbose=False))
        model = loader()
        ev = evaluate(model, test, device="cpu")
        weight = model.head_weight.detach().cpu().numpy()
        enough = (weight != 0).sum(axis=1).max() >= k
        metrics["sid_at_5"] = qmetrics.sid_at_k(ev.feature_maps, weight[ev.predictions], k=k) if enough else None
    return MethodRun(method, prof, seed, metrics, loader)


def run_linear_probe(profile: str | Profile, seed: int = 0, *, overrides: dict[str, Any] | None = None,
                     verbose: bool = False) -> MethodRun:
    """The DINOv2 f_CLS linear probe (reference_spec §6.1): dropout 0.2 + Linear on the frozen CLS token.

    Args:
        profile: profile name or object.
        seed: run seed.
        overrides: extra pipeline overrides (e.g. ``{"data.dataset": "cars"}``), applied after the probe's.
        verbose: progress bars.

    Returns:
        :class:`MethodRun`; its model's feature maps are the frozen patch tokens (the CAM of §5.7).
    """
    probe, _ = _split(linear_probe_config(profile))
    return _pipeline_run("linear_probe", profile, seed, probe | (overrides or {}), sid_k(profile), verbose)


def run_dense(profile: str | Profile, seed: int = 0, *, overrides: dict[str, Any] | None = None,
              verbose: bool = False) -> MethodRun:
    """Dense F_froz: the dense stage of DINO-QPM (reference_spec §6.2); shares the run of :func:`run_dino_qpm`.

    Args and Returns as :func:`run_linear_probe`.
    """
    return _pipeline_run("dense", profile, seed, dict(overrides or {}), sid_k(profile), verbose)


def run_dino_qpm(profile: str | Profile, seed: int = 0, *, overrides: dict[str, Any] | None = None,
                 verbose: bool = False) -> MethodRun:
    """DINO-QPM (:func:`qpmlib.pipeline.run_dino_qpm`), with ``sid_at_5`` as SID@``sid_k(profile)``.

    Args and Returns as :func:`run_linear_probe`.
    """
    return _pipeline_run("dino_qpm", profile, seed, dict(overrides or {}), sid_k(profile), verbose)


def run_dino_qpm_compact(profile: str | Profile, seed: int = 0, *, overrides: dict[str, Any] | None = None,
                         verbose: bool = False) -> MethodRun:
    """DINO-QPM Compact: DINO-QPM with :func:`compact_sizes` (paper: 40 features, 4 per class).

    Args and Returns as :func:`run_linear_probe`; ``sid_at_5`` uses the base profile's k, so it is None when
    Compact has fewer features per class (the paper's "−").
    """
    run = _pipeline_run("dino_qpm", profile, seed, _compact_overrides(profile) | (overrides or {}),
                        sid_k(profile), verbose)
    run.method = "dino_qpm_compact"
    return run


def _compact_overrides(profile) -> dict[str, int]:
    n_selected, per_class = compact_sizes(profile)
    return {"qp.n_selected": n_selected, "qp.n_per_class": per_class}


def _sparse_config(method: str, profile, settings: SLDDSettings, schedule: str | None = None) -> dict[str, Any]:
    if method == "dino_sldd":
        return sldd_config(profile, settings)
    return qsenn_config(profile, settings, schedule=schedule)


def _dense_overrides(pipe: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The overrides of a sparse baseline's dense stage: its pipeline fields without the fine-tune ones."""
    return {k: v for k, v in pipe.items() if not k.startswith("train.ft_")} | (overrides or {})


def _sparse_baseline(method: str, profile, seed: int, overrides, verbose: bool, *,
                     settings: SLDDSettings, schedule: str | None = None) -> MethodRun:
    settings = path_settings(profile, settings)
    pipe, extra = _split(_sparse_config(method, profile, settings, schedule))
    dense_overrides = _dense_overrides(pipe, overrides)
    prof = pipeline.apply_overrides(profile, pipe | (overrides or {}))
    k = sid_k(profile)
    base = pipeline.run_dense(profile, seed, overrides=dense_overrides, verbose=verbose)
    dense_result: Result = base.dense
    stage = StageConfig("finetune", prof.train.ft_epochs, prof.train.ft_batch_size, prof.train.ft_lr,
                        prof.train.ft_weight_decay, prof.train.ft_fdl, prof.train.ft_l1_fm, prof.train.ft_l1_fv)
    q = prof.qp
    head = {"dropout": extra["head.dropout"], "train_normalisation": extra["head.train_normalisation"],
            "bias": extra["head.bias"]}
    # the selection depends on the SLDD fields only, so DINO-SLDD and DINO-QSENN share it
    common = {"dense": dense_result.config, "n_selected": q.n_selected,
              "settings": {f.name: getattr(settings, f.name) for f in dataclasses.fields(SLDDSettings)}}
    config_full = common | {"method": method, "n_per_class": q.n_per_class,
                            "all_settings": dataclasses.asdict(settings), "finetune": dataclasses.asdict(stage),
                            "head": head,
                            "schedule": [list(s) for s in extra.get("qsenn.schedule", [])]}
    stored = dense_result.tensors(FEATURES_FILE)
    X, y = stored["features"].numpy(), stored["labels"].numpy()

    def selection() -> np.ndarray:
        store = ResultStore.for_profile(prof.name, SELECTION_KIND)
        found = store.get_or_run(common, lambda: ResultData(
            metrics={}, provenance=provenance(seed=seed, device="cpu", pretrained=None),
            tensors={"selection.safetensors": {"selected": sldd_select(X, y, q.n_selected, seed=seed,
                                                                       settings=settings, verbose=verbose)}}))
        return found.tensors("selection.safetensors")["selected"].numpy()

    def compute(work_dir) -> ResultData:
        t0 = time.perf_counter()
        train, test = _tokens(prof, verbose)
        sel = selection()
        dense_model = base.dense_model()
        if method == "dino_sldd":
            weight, bias = sldd_weights(X[:, sel], y, q.n_per_class, seed=seed, settings=settings)
            model, history = finetune_sparse(
                dense_model, train, sel, weight, bias, stored["mean"].numpy()[sel], stored["std"].numpy()[sel],
                stage, seed=seed, dropout=head["dropout"], train_normalisation=head["train_normalisation"],
                eval_data=test, run_dir=work_dir, verbose=verbose)
            histories = [history]
        else:
            model, histories = fit_qsenn(dense_model, train, sel, q.n_per_class, stage, extra["qsenn.schedule"],
                                         seed=seed, settings=settings, eval_data=test, run_dir=work_dir,
                                         verbose=verbose)
        epochs = [e["seconds"] for h in histories for e in h.epochs]
        metrics = method_metrics(model, train, test, k=k, masks=_test_masks(prof, test),
                                 seconds_per_epoch=float(np.mean(epochs)) if epochs else float("nan"), seed=seed)
        return ResultData(
            metrics=metrics,
            provenance=provenance(seed=seed, device=str(resolve_device("auto")),
                                  pretrained=bool(base.dense.provenance.get("pretrained")),
                                  total_seconds=time.perf_counter() - t0),
            tensors={MODEL_FILE: model.state_dict(),
                     SPARSE_FILE: {"selected": model.selected, "weight": model.weight, "bias": model.bias}},
            json_files={HISTORY_FILE: {"iterations": [h.to_dict() for h in histories]},
                        MODEL_SPEC_FILE: dense_result.json(MODEL_SPEC_FILE) | {"head": head}},
        )

    store = ResultStore.for_profile(prof.name, method)
    result = store.get(config_full) or store.put(config_full, compute(store.work_dir(config_full)))

    def loader() -> SparseHeadModel:
        spec = result.json(MODEL_SPEC_FILE)
        spec_head = spec.pop("head")
        state = result.tensors(MODEL_FILE)
        t = result.tensors(SPARSE_FILE)
        model = SparseHeadModel(DinoQPM(**spec), t["selected"], t["weight"], t["bias"], state["mean"],
                                state["std"], dropout=spec_head["dropout"],
                                train_normalisation=spec_head["train_normalisation"])
        model.load_state_dict(state)
        return model.eval()

    return MethodRun(method, prof, seed, dict(result.metrics), loader)


def run_sldd(profile: str | Profile, seed: int = 0, *, overrides: dict[str, Any] | None = None,
             settings: SLDDSettings = SLDD, verbose: bool = False) -> MethodRun:
    """DINO-SLDD (reference_spec §6.3): FDL-0.196 dense stage, SLDD selection and weights, sparse fine-tune.

    Args:
        profile: profile name or object.
        seed: run seed.
        overrides: extra pipeline overrides (after SLDD's).
        settings: SLDD constants (the path length is shortened off the paper profile, :func:`path_settings`).
        verbose: progress bars.

    Returns:
        :class:`MethodRun`.
    """
    return _sparse_baseline("dino_sldd", profile, seed, overrides, verbose, settings=settings)


def run_qsenn(profile: str | Profile, seed: int = 0, *, overrides: dict[str, Any] | None = None,
              settings: QSENNSettings = QSENN, schedule: str | None = None, verbose: bool = False) -> MethodRun:
    """DINO-QSENN (reference_spec §6.4): SLDD's dense stage and selection, then Q-SENN's iterations.

    Args:
        profile: profile name or object.
        seed: run seed.
        overrides: extra pipeline overrides.
        settings: QSENN constants (path length as in :func:`run_sldd`).
        schedule: "reference" (default: 4 x ft_epochs at a constant lr) or "qsenn" (4 x 10 epochs, lr 0.9^n).
        verbose: progress bars.

    Returns:
        :class:`MethodRun`.
    """
    return _sparse_baseline("dino_qsenn", profile, seed, overrides, verbose, settings=settings, schedule=schedule)


#: Method key -> run function ``(profile, seed, *, overrides=None, verbose=False) -> MethodRun``.
RUNNERS: dict[str, Callable[..., MethodRun]] = {
    "linear_probe": run_linear_probe,
    "dense": run_dense,
    "dino_sldd": run_sldd,
    "dino_qsenn": run_qsenn,
    "dino_qpm": run_dino_qpm,
    "dino_qpm_compact": run_dino_qpm_compact,
}


def prepare(method: str, profile: str | Profile, seeds: Sequence[int], *,
            overrides: dict[str, Any] | None = None, verbose: bool = False) -> None:
    """Compute the pipeline stages that ``method`` needs for all ``seeds`` at once.

    :func:`qpmlib.pipeline.run_seeds` trains the missing seeds together on a GPU, so a table that then calls
    :func:`run_method` seed by seed only loads them. DINO-SLDD and DINO-QSENN get their dense stage here; their
    own selection and fine-tune still run per seed.

    Raises:
        ValueError: for an unknown method (lists the valid ones).
    """
    if method not in RUNNERS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(RUNNERS)}")
    overrides = dict(overrides or {})
    if method == "linear_probe":
        overrides = _split(linear_probe_config(profile))[0] | overrides
    elif method == "dino_qpm_compact":
        overrides = _compact_overrides(profile) | overrides
    elif method in ("dino_sldd", "dino_qsenn"):
        settings = path_settings(profile, SLDD if method == "dino_sldd" else QSENN)
        pipe, _ = _split(_sparse_config(method, profile, settings))
        pipeline.run_seeds(profile, seeds, overrides=_dense_overrides(pipe, overrides), dense_only=True,
                           verbose=verbose)
        return
    pipeline.run_seeds(profile, seeds, overrides=overrides, verbose=verbose)


def run_method(method: str, profile: str | Profile, seed: int = 0, *, overrides: dict[str, Any] | None = None,
               verbose: bool = False) -> MethodRun:
    """Run (or load) one Table 1 method.

    Raises:
        ValueError: for an unknown method (lists the valid ones).
    """
    if method not in RUNNERS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(RUNNERS)}")
    return RUNNERS[method](profile, seed, overrides=overrides, verbose=verbose)
