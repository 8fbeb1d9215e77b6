"""DINO-SLDD and DINO-QSENN: feature selection, sparse heads and their settings (reference_spec §6.3-6.4).

Pure functions on feature matrices; :mod:`qpmlib.runs.baselines` calls them on a trained dense model:

* :func:`sldd_select` / :func:`sldd_selection_order`: SLDD's feature selection (§6.3), a group-sparse
  elastic-net path on which at most one new feature enters per step and the sweep restarts from the top
  after each entry.
* :func:`sldd_weights`: SLDD's sparse head (§6.3): an elastic-net path on the selected features, the densest
  entry with at most ``n_per_class / 0.5`` non-zeros per class on average, trimmed to ``N_c * n_per_class``.
* :func:`qsenn_weights`: one Q-SENN iteration's head (§6.4 steps 2-5): ternary weights and the bias rule.
* :class:`SLDDSettings`, :class:`QSENNSettings` (:data:`SLDD`, :data:`QSENN`): the methods' constants;
  :func:`qsenn_schedule`: epochs and learning rate of each Q-SENN iteration.

Features are standardised here with their own mean and population standard deviation over all rows
(§1.1: mu and sigma over all training images; sigma clamped at 1e-6 as in §2.5). Standardising already
standardised features changes nothing, so callers may pass either. Paths are fitted on a seeded 90 % of the
rows and report accuracy on the other 10 % (§1.1, ``val_frac = 0.1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from qpmlib.glm import FeatureMetadata, GLMPath, GLMProblem, elastic_net_path, lambda_max, solve_elastic_net
from qpmlib.model import STD_FLOOR

__all__ = [
    "standardise",
    "train_val_split",
    "sldd_selection_order",
    "sldd_select",
    "pick_sldd_entry",
    "sldd_weights",
    "ternarise",
    "qsenn_bias",
    "qsenn_weights",
    "SLDDSettings",
    "QSENNSettings",
    "SLDD",
    "QSENN",
    "SELECTION_FIELDS",
    "QSENN_SCHEDULES",
    "qsenn_schedule",
]


# --------------------------------------------------------------------------------------------------
# Settings of the baselines (reference_spec §6, §10 row 14)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SLDDSettings:
    """DINO-SLDD (reference_spec §6.3; `configs/models/sldd/dinov2.yaml`)."""

    fdl: float = 0.196  # FDL beta in the dense and fine-tune stages (not the paper's 0.5 / 1)
    l1_fm: float = 0.0  # no L1 losses (§3.4)
    l1_fv: float = 0.0
    head_dropout: float = 0.1  # dropout before the sparse layer; mu/sigma trainable, W and b frozen (§2.5)
    dense_epochs: int = 40  # reference sizes (§6.3), used when profile.baselines.reference_sizes
    dense_batch_size: int = 32
    ft_epochs: int = 50  # `sldd/dinov2.yaml`; Q-SENN's iterations take 25 each (QSENNSettings)
    ft_batch_size: int = 16
    ft_lr: float = 5e-3
    ft_weight_decay: float = 8e-4
    val_frac: float = 0.1  # 90/10 split of the training features (§1.1)
    select_alpha: float = 0.8  # group elastic-net mixing of the selection path
    select_lam_fac: float = 0.1  # factor on every lambda of the selection path
    # where the selection path's lambda_max comes from: "metadata" (reference: glm-saga's metadata, i.e. raw
    # features of the full training split) | "split" (standardised features of the 90 % split it is fitted on).
    # The weight paths always start from their own split, as the reference (its fit_glm passes metadata=None).
    lambda_max_source: str = "metadata"
    n_lambdas: int = 100  # path length (glm-saga k); runs take it from profile.baselines.glm_n_lambdas
    lambda_min_ratio: float = 1e-3  # glm-saga epsilon
    max_epochs: int = 2000  # iterations per lambda
    tol: float = 1e-4
    weights_alpha: float = 0.99  # elastic-net mixing of the weight path
    density_factor: float = 0.5  # entry chosen with mean non-zeros per class <= n_per_class / density_factor


@dataclass(frozen=True)
class QSENNSettings(SLDDSettings):
    """DINO-QSENN (reference_spec §6.4; `configs/models/qsenn/dinov2.yaml`): SLDD's dense stage and selection,
    then ``n_iterations`` rounds of (glm path -> ternary head -> fine-tune)."""

    ft_epochs: int = 25  # per iteration: `qsenn/dinov2.yaml` has finetune.epochs 25 (SLDD's has 50)
    n_iterations: int = 4
    # "reference": every iteration trains the full ft_epochs at ft_lr, because the reference's schedule
    # override is dead code (§6.4, §9 item 5): 4 x 25 epochs there. "qsenn": the intended Q-SENN schedule,
    # 10 epochs per iteration with lr * 0.9**n.
    schedule: str = "reference"
    qsenn_epochs: int = 10
    qsenn_lr_decay: float = 0.9


SLDD = SLDDSettings()
QSENN = QSENNSettings()
#: The :class:`SLDDSettings` fields that SLDD's feature selection depends on (DINO-SLDD and DINO-QSENN share it).
SELECTION_FIELDS: tuple[str, ...] = ("val_frac", "select_alpha", "select_lam_fac", "lambda_max_source", "n_lambdas",
                                     "lambda_min_ratio", "max_epochs", "tol")
#: Valid Q-SENN schedules (:func:`qsenn_schedule`).
QSENN_SCHEDULES = ("reference", "qsenn")


def qsenn_schedule(
    ft_epochs: int, ft_lr: float, *, n_iterations: int = 4, variant: str = "reference",
    qsenn_epochs: int = 10, lr_decay: float = 0.9,
) -> list[tuple[int, float]]:
    """Epochs and learning rate of each Q-SENN fine-tune iteration (reference_spec §6.4).

    Args:
        ft_epochs: the profile's fine-tune epochs.
        ft_lr: the profile's fine-tune learning rate.
        n_iterations: Q-SENN iterations (4).
        variant: ``"reference"`` (what the reference code runs: ``ft_epochs`` at ``ft_lr`` every iteration)
            or ``"qsenn"`` (the intended schedule: ``qsenn_epochs`` at ``ft_lr * lr_decay**n``, n = 0, 1, ...).
        qsenn_epochs: epochs per iteration of the intended schedule.
        lr_decay: per-iteration LR factor of the intended schedule.

    Returns:
        ``n_iterations`` pairs ``(epochs, lr)``.

    Raises:
        ValueError: for an unknown variant (lists the valid ones) or n_iterations < 1.
    """
    if variant not in QSENN_SCHEDULES:
        raise ValueError(f"unknown QSENN schedule {variant!r}; valid: {', '.join(QSENN_SCHEDULES)}")
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    if variant == "reference":
        return [(ft_epochs, ft_lr)] * n_iterations
    return [(qsenn_epochs, ft_lr * lr_decay**n) for n in range(n_iterations)]


# --------------------------------------------------------------------------------------------------
# Data helpers
# --------------------------------------------------------------------------------------------------


def standardise(
    X: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardise columns: ``(X - mean) / max(std, 1e-6)`` with the population std (reference_spec §1.1, §2.5).

    Args:
        X: (N, D) features.
        mean: (D,) column means to use (default: of X).
        std: (D,) column population standard deviations to use (default: of X).

    Returns:
        ``(Z (N, D) float64, mean (D,), std (D,))``; ``std`` is returned unclamped.

    Raises:
        ValueError: if X is not 2-D.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (N, D), got shape {X.shape}")
    mean = X.mean(axis=0) if mean is None else np.asarray(mean, dtype=np.float64)
    std = X.std(axis=0) if std is None else np.asarray(std, dtype=np.float64)
    return (X - mean) / np.maximum(std, STD_FLOOR), mean, std


def train_val_split(n: int, val_frac: float = 0.1, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``n`` rows into train and validation indices (reference_spec §1.1).

    Args:
        n: number of rows.
        val_frac: validation fraction in [0, 1); ``floor(n * val_frac)`` rows go to validation.
        seed: seed of the permutation.

    Returns:
        ``(train_idx, val_idx)``, each sorted.

    Raises:
        ValueError: if val_frac is outside [0, 1) or fewer than one training row would remain.
    """
    if not 0.0 <= val_frac < 1.0:
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac}")
    n_val = int(math.floor(n * val_frac))
    if n - n_val < 1:
        raise ValueError(f"need at least one training row; got n={n}, val_frac={val_frac}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"expected X (N, D) and y (N,) with the same N, got {X.shape} and {y.shape}")
    return X, y.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# SLDD feature selection (§6.3)
# --------------------------------------------------------------------------------------------------


def sldd_selection_order(
    X: np.ndarray,
    y: np.ndarray,
    n_select: int,
    *,
    seed: int = 0,
    settings: SLDDSettings = SLDD,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    verbose: bool = False,
) -> np.ndarray:
    """The first ``n_select`` features to enter SLDD's selection path, in entry order (reference_spec §6.3).

    On the standardised features of a seeded 90 % split, lambdas run from ``lam_fac * lambda_max`` (group
    version, alpha 0.8, lam_fac 0.1) down to ``1e-3`` of that. ``lambda_max`` comes from the raw features of
    all N rows, as the reference's glm-saga ``metadata`` (``settings.lambda_max_source="metadata"``), or from
    the standardised 90 % split itself (``"split"``); see :func:`qpmlib.glm.lambda_max`.
    Each proximal step may add at most one new
    feature: the unselected column with the largest group norm above the threshold. As soon as one enters,
    it is marked selected and the sweep restarts from the first lambda with the current (warm) weights.
    This repeats until ``n_select`` features are selected. Because exactly one feature enters at a time,
    the reference's "at least 50" is exactly ``n_select`` here; the entry order is kept.

    Deviations, documented: (1) if the whole sweep ends with fewer features (constant or uninformative
    columns), the rest are ranked by the group norm of the cross-entropy gradient at the last solution;
    (2) the solver is full-batch FISTA, not SAGA (see :mod:`qpmlib.glm`), so a "step" is a full-batch
    proximal step rather than a SAGA update.

    Args:
        X: (N, D) raw dense features of the training split (the "metadata" lambda_max uses their scale).
        y: (N,) labels.
        n_select: N*_f, features to select (1 <= n_select <= D).
        seed: seed of the 90/10 split.
        settings: path constants (alpha, lam_fac, n_lambdas, ratio, max_epochs, tol, val_frac).
        device: torch device of the solver.
        dtype: torch dtype of the solver (None: float64 on the CPU, float32 on CUDA; see
            :func:`qpmlib.glm.glm_device`).
        verbose: progress bar over entries.

    Returns:
        (n_select,) int64 feature indices in entry order.

    Raises:
        ValueError: for bad shapes, n_select outside [1, D] or an unknown ``settings.lambda_max_source``.
    """
    X, y = _check_xy(X, y)
    if not 1 <= n_select <= X.shape[1]:
        raise ValueError(f"n_select must be in [1, {X.shape[1]}] (number of features), got {n_select}")
    Z, _, _ = standardise(X)
    train_idx, _ = train_val_split(len(y), settings.val_frac, seed=seed)
    problem = GLMProblem.from_arrays(Z[train_idx], y[train_idx], int(y.max()) + 1, device=device, dtype=dtype)
    alpha = settings.select_alpha
    lam_max = lambda_max(problem, alpha, group=True, metadata=_selection_metadata(X, y, settings))
    lambdas = settings.select_lam_fac * np.logspace(
        math.log10(lam_max), math.log10(lam_max * settings.lambda_min_ratio), settings.n_lambdas
    )

    selected = torch.zeros(problem.n_features, dtype=torch.bool, device=problem.X.device)
    order: list[int] = []
    weight, bias, step = problem.zero_weight(), problem.prior_bias(), None
    i = 0
    with tqdm(total=n_select, desc="SLDD selection", disable=not verbose) as bar:
        while len(order) < n_select and i < len(lambdas):
            sol = solve_elastic_net(
                problem, float(lambdas[i]), alpha=alpha, group=True, weight0=weight, bias0=bias,
                max_epochs=settings.max_epochs, tol=settings.tol, step0=step, gate=selected,
            )
            weight, bias, step = sol.weight, sol.bias, sol.step
            if sol.entered is None:
                i += 1
                continue
            order.append(sol.entered)  # the gate lets exactly this one column become non-zero
            selected[sol.entered] = True
            bar.update(1)
            i = 0  # restart the sweep from the top, warm
    if len(order) < n_select:  # sweep exhausted: rank the rest by their gradient's group norm
        _, grad_w, _ = problem.loss_and_gradient(problem.logits(weight, bias))
        rest = torch.nonzero(~selected).flatten()
        rest = rest[torch.argsort(grad_w[:, rest].norm(dim=0), descending=True, stable=True)]
        order.extend(int(j) for j in rest[: n_select - len(order)])
    return np.asarray(order, dtype=np.int64)


def _selection_metadata(X: np.ndarray, y: np.ndarray, settings: SLDDSettings) -> FeatureMetadata | None:
    """glm-saga metadata of the raw features for ``lambda_max_source="metadata"``, None for ``"split"``."""
    if settings.lambda_max_source not in ("metadata", "split"):
        raise ValueError(f"lambda_max_source must be 'metadata' or 'split', got {settings.lambda_max_source!r}")
    return FeatureMetadata.of(X, y) if settings.lambda_max_source == "metadata" else None


def sldd_select(
    X: np.ndarray,
    y: np.ndarray,
    n_select: int,
    *,
    seed: int = 0,
    settings: SLDDSettings = SLDD,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    verbose: bool = False,
) -> np.ndarray:
    """SLDD's selected features as sorted indices (reference_spec §6.3); see :func:`sldd_selection_order`.

    Args:
        X: (N, D) dense features of the training split.
        y: (N,) labels.
        n_select: N*_f.
        seed: seed of the 90/10 split.
        settings: path constants.
        device: torch device of the solver.
        dtype: torch dtype of the solver (None: float64 on the CPU, float32 on CUDA; see
            :func:`qpmlib.glm.glm_device`).
        verbose: progress bar.

    Returns:
        (n_select,) sorted int64 feature indices.

    Raises:
        ValueError: for bad shapes or n_select outside [1, D].
    """
    order = sldd_selection_order(
        X, y, n_select, seed=seed, settings=settings, device=device, dtype=dtype, verbose=verbose
    )
    return np.sort(order)


# --------------------------------------------------------------------------------------------------
# SLDD and QSENN heads (§6.3, §6.4)
# --------------------------------------------------------------------------------------------------


def _weight_path(
    X_sel: np.ndarray, y: np.ndarray, *, seed: int, settings: SLDDSettings, do_zero: bool,
    device: str | torch.device | None, dtype: torch.dtype | None, verbose: bool,
) -> GLMPath:
    """glm path (alpha 0.99) on the standardised selected features, fitted on the seeded 90 % split."""
    X_sel, y = _check_xy(X_sel, y)
    Z, _, _ = standardise(X_sel)
    train_idx, val_idx = train_val_split(len(y), settings.val_frac, seed=seed)
    has_val = len(val_idx) > 0
    return elastic_net_path(
        Z[train_idx], y[train_idx], alpha=settings.weights_alpha, n_lambdas=settings.n_lambdas,
        lambda_min_ratio=settings.lambda_min_ratio, max_epochs=settings.max_epochs, tol=settings.tol,
        do_zero=do_zero, n_classes=int(y.max()) + 1, seed=seed, verbose=verbose,
        X_val=Z[val_idx] if has_val else None, y_val=y[val_idx] if has_val else None,
        device=device, dtype=dtype,
    )


def _top_k_mask(weight: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k largest |w| (ties by position, deterministic)."""
    flat = np.abs(weight).ravel()
    keep = np.zeros(flat.shape, dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    return keep.reshape(weight.shape)


def pick_sldd_entry(path: GLMPath, n_per_class: int, density_factor: float = 0.5) -> int:
    """Index of the densest path entry with mean non-zeros per class <= ``n_per_class / density_factor``.

    Ties in the number of non-zeros go to the later entry (smaller lambda) (reference_spec §6.3).

    Args:
        path: a :class:`~qpmlib.glm.GLMPath`.
        n_per_class: N^c_f.
        density_factor: 0.5 in the reference.

    Returns:
        The entry index.

    Raises:
        ValueError: if no entry is sparse enough (cannot happen when the path starts at lambda_max).
    """
    n_classes = path[0].weight.shape[0]
    limit = n_per_class / density_factor
    ok = [i for i, e in enumerate(path.entries) if e.nnz / n_classes <= limit]
    if not ok:
        raise ValueError(
            f"no path entry has <= {limit} non-zeros per class; start the path at lambda_max (lam_fac=1)"
        )
    return max(ok, key=lambda i: (path[i].nnz, i))


def sldd_weights(
    X_sel: np.ndarray,
    y: np.ndarray,
    n_per_class: int,
    *,
    seed: int = 0,
    settings: SLDDSettings = SLDD,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    verbose: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """SLDD's sparse head on the selected features (reference_spec §6.3).

    Fit the alpha = 0.99 path (with its lam = 0 entry) on the standardised features, pick the entry of
    :func:`pick_sldd_entry`, keep its ``N_c * n_per_class`` largest |w| (``n_per_class`` per class on average,
    not per class), zero the rest, and keep that entry's bias.

    Args:
        X_sel: (N, N*_f) selected dense features of the training split (raw or standardised).
        y: (N,) labels.
        n_per_class: N^c_f.
        seed: seed of the 90/10 split.
        settings: path constants.
        device: torch device of the solver.
        dtype: torch dtype of the solver (None: float64 on the CPU, float32 on CUDA; see
            :func:`qpmlib.glm.glm_device`).
        verbose: progress bar.

    Returns:
        ``(W (N_c, N*_f) float32, b (N_c,) float32)``; W has at most ``N_c * n_per_class`` non-zeros.

    Raises:
        ValueError: for bad shapes or n_per_class < 1.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    path = _weight_path(X_sel, y, seed=seed, settings=settings, do_zero=True, device=device, dtype=dtype,
                        verbose=verbose)
    entry = path[pick_sldd_entry(path, n_per_class, settings.density_factor)]
    weight = np.where(_top_k_mask(entry.weight, entry.weight.shape[0] * n_per_class), entry.weight, 0.0)
    return weight.astype(np.float32), entry.bias.astype(np.float32)


def ternarise(weight: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest |w| and quantise them to ``sign(w) * m`` (reference_spec §6.4 step 4).

    The cut-off is the midpoint between the k-th and (k+1)-th largest magnitudes; weights strictly above it
    are kept (a tie at the k-th place therefore keeps fewer than k). m is the mean |w| of the kept weights.

    Args:
        weight: (N_c, D) real weights.
        k: number of weights to keep (N_c * N^c_f).

    Returns:
        (N_c, D) array with values in {-m, 0, +m}.

    Raises:
        ValueError: if k < 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    weight = np.asarray(weight, dtype=np.float64)
    mags = np.sort(np.abs(weight).ravel())[::-1]
    cut = (mags[k - 1] + mags[k]) / 2.0 if k < mags.size else -1.0
    keep = (np.abs(weight) > cut) & (weight != 0)
    if not keep.any():
        return np.zeros_like(weight)
    m = np.abs(weight[keep]).mean()
    return np.sign(weight) * m * keep


def qsenn_bias(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Q-SENN's per-class bias from ternary weights (reference_spec §6.4 step 5).

    With ``n_c = #positive - #negative`` weights of class c and ``B = max|bias|``:
    ``b_c = B - (n_c - min n) * 2B / max(n - min n)``, clamped to [-B, B]. When every class has the same n
    (the reference would divide 0 by 0), every b_c is B: a constant bias, which leaves predictions unchanged.

    Args:
        weight: (N_c, D) ternary weights.
        bias: (N_c,) bias of the glm solution (only its largest magnitude is used).

    Returns:
        (N_c,) float64 bias.
    """
    weight = np.asarray(weight)
    big = float(np.abs(np.asarray(bias, dtype=np.float64)).max())
    n = (weight > 0).sum(axis=1) - (weight < 0).sum(axis=1)  # (N_c,)
    spread = n - n.min()
    if spread.max() == 0:
        return np.full(weight.shape[0], big)
    return np.clip(big - spread * 2.0 * big / spread.max(), -big, big)


def qsenn_weights(
    X_sel: np.ndarray,
    y: np.ndarray,
    n_per_class: int,
    *,
    seed: int = 0,
    settings: QSENNSettings = QSENN,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    verbose: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One Q-SENN iteration's head (reference_spec §6.4 steps 2-5).

    Fit the alpha = 0.99 path on the standardised features, take its last non-zero-lambda solution,
    :func:`ternarise` it to ``N_c * n_per_class`` weights and set the bias with :func:`qsenn_bias`.

    Args:
        X_sel: (N, N*_f) selected features of the current model on the training split.
        y: (N,) labels.
        n_per_class: N^c_f.
        seed: seed of the 90/10 split.
        settings: path constants.
        device: torch device of the solver.
        dtype: torch dtype of the solver (None: float64 on the CPU, float32 on CUDA; see
            :func:`qpmlib.glm.glm_device`).
        verbose: progress bar.

    Returns:
        ``(W (N_c, N*_f) float32 in {-m, 0, +m}, b (N_c,) float32)``.

    Raises:
        ValueError: for bad shapes or n_per_class < 1.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    path = _weight_path(X_sel, y, seed=seed, settings=settings, do_zero=False, device=device, dtype=dtype,
                        verbose=verbose)
    last = path[-1]
    weight = ternarise(last.weight, last.weight.shape[0] * n_per_class)
    return weight.astype(np.float32), qsenn_bias(weight, last.bias).astype(np.float32)
