"""Elastic-net multinomial logistic regression along a regularisation path (a glm-saga equivalent).

The DINO-SLDD and DINO-QSENN baselines (reference_spec §6.3-6.4) fit sparse linear heads with the package
``glm-saga`` (SAGA, a stochastic solver). This module solves the same problems with our own solver:
full-batch FISTA (accelerated proximal gradient) with backtracking and adaptive restart, in torch.

Problem at one regularisation strength ``lam`` (weights W: N_c x D, bias b: N_c, features standardised):

    minimise  CE(X W^T + b, y)  +  lam * (alpha * P1(W) + (1 - alpha) / 2 * ||W||_F^2)

with CE the mean cross-entropy, P1(W) = sum |W_cd| (lasso) or, with ``group=True``, sum_d ||W[:, d]||_2
(group lasso; one group per feature, i.e. a column over the classes, as glm-saga's ``group=True``).
The bias is not penalised. The path runs over ``n_lambdas`` log-spaced values from ``lambda_max`` (the
smallest ``lam`` whose solution has W = 0, in closed form) down to ``lambda_min_ratio * lambda_max``, each
multiplied by ``lam_fac`` and solved from the previous solution (warm start), plus a final ``lam = 0`` entry
(glm-saga's ``do_zero``).

Differences from glm-saga, all deliberate:

* Solver: deterministic full-batch FISTA instead of SAGA; one iteration is one pass over the data, so
  ``max_epochs`` counts the same thing. The step size comes from backtracking (never below ``1/L`` with
  ``L`` the Böhning bound on the curvature), not from glm-saga's ``lr`` schedule.
* Stopping rule: the largest entry of the proximal-gradient mapping (an optimality residual, in the units
  of a gradient) is below ``tol`` times the largest gradient entry at W = 0 (so ``tol`` is scale-free);
  glm-saga stops on relative progress of the weights.

Where the path starts (reference_spec §6.3). By default ``lambda_max`` is the closed-form zero threshold of
the problem being solved. glm-saga can instead take it from its ``metadata``, and the reference's SLDD/QSENN
feature selection does so: the metadata is computed once on the *raw* (unstandardised) features of the *full*
training split, while the path itself runs on standardised features of a 90 % split.
:class:`FeatureMetadata` computes those statistics and ``lambda_max(..., metadata=...)`` /
``elastic_net_path(..., metadata=...)`` start the path from them. Feature d's score there is its score on
standardised features times its raw standard deviation sigma_d, so the whole lambda path is rescaled.

Device and precision: every entry point takes ``device`` ("cpu", "cuda", "cuda:<n>" or "auto", so a caller can
pass ``train.device``) and ``dtype``; ``dtype=None`` means float64 on the CPU and float32 on CUDA.

Public names: :class:`GLMProblem`, :class:`GLMSolution`, :class:`GLMPathEntry`, :class:`GLMPath`,
:class:`FeatureMetadata`, :func:`glm_device`, :func:`soft_threshold`, :func:`group_soft_threshold`,
:func:`prox_elastic_net`, :func:`lambda_max`, :func:`solve_elastic_net`, :func:`elastic_net_path`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from qpmlib.train import resolve_device

__all__ = [
    "GLMProblem",
    "GLMSolution",
    "GLMPathEntry",
    "GLMPath",
    "FeatureMetadata",
    "glm_device",
    "soft_threshold",
    "group_soft_threshold",
    "prox_elastic_net",
    "lambda_max",
    "solve_elastic_net",
    "elastic_net_path",
]

ArrayLike = np.ndarray | torch.Tensor

# Below this many multiply-adds per matmul (N * D * N_c) a CPU solve runs on one thread: torch's thread
# start-up then costs more than the work, and on a busy machine a two-thread solve was ~15x slower.
SINGLE_THREAD_WORK = 2_000_000


def glm_device(
    device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a glm computation.

    Args:
        device: "cpu", "cuda", "cuda:<n>", "auto" (CUDA when available) or a ``torch.device``; None means CPU.
            A profile's ``train.device`` can be passed as it is.
        dtype: floating dtype; None picks float64 on the CPU (as before; float32 is about 2x faster there and
            agrees to about 1e-4, see the tests) and float32 on CUDA (most GPUs run float64 at a small fraction
            of their float32 speed).

    Returns:
        ``(device, dtype)``.

    Raises:
        ValueError: CUDA asked for but not available (the message says to use "cpu" or "auto"), or a dtype
            that is not floating point.
    """
    dev = torch.device("cpu") if device is None else resolve_device(device)
    if dtype is None:
        dtype = torch.float32 if dev.type == "cuda" else torch.float64
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype}")
    return dev, dtype


@contextlib.contextmanager
def _cpu_threads_for(X: torch.Tensor, n_classes: int) -> Iterator[None]:
    """Run small CPU problems single-threaded; restore the thread count afterwards."""
    small = X.device.type == "cpu" and X.shape[0] * X.shape[1] * n_classes < SINGLE_THREAD_WORK
    previous = torch.get_num_threads()
    if small and previous > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------
# Proximal operators
# --------------------------------------------------------------------------------------------------


def soft_threshold(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """Elementwise soft threshold ``sign(w) * max(|w| - threshold, 0)`` (the prox of ``threshold * ||w||_1``).

    Args:
        w: any shape.
        threshold: >= 0.

    Returns:
        Tensor of the shape of ``w``.
    """
    return torch.sign(w) * (w.abs() - threshold).clamp_min(0.0)


def group_soft_threshold(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """Column-wise group soft threshold ``w[:, d] * max(1 - threshold / ||w[:, d]||_2, 0)``.

    This is the prox of ``threshold * sum_d ||w[:, d]||_2``: one group per feature (column), spanning all
    classes (rows), as glm-saga's ``group=True``.

    Args:
        w: (N_c, D).
        threshold: >= 0.

    Returns:
        (N_c, D) tensor; a column whose norm is <= ``threshold`` becomes exactly zero.
    """
    norms = w.norm(dim=0)  # (D,)
    scale = (1.0 - threshold / norms.clamp_min(torch.finfo(w.dtype).tiny)).clamp_min(0.0)
    return w * scale  # (N_c, D)


def prox_elastic_net(
    v: torch.Tensor, step: float, lam: float, alpha: float, group: bool = False
) -> torch.Tensor:
    """Prox of ``step * lam * (alpha * P1 + (1 - alpha)/2 * ||.||^2)`` at ``v``.

    Both penalties are separable over the groups and radially symmetric inside a group, so the prox is the
    (group) soft threshold at ``step * lam * alpha`` followed by the shrink ``1 / (1 + step * lam * (1 - alpha))``.

    Args:
        v: (N_c, D) point.
        step: step size > 0.
        lam: regularisation strength >= 0.
        alpha: elastic-net mixing in [0, 1] (1 = lasso, 0 = ridge).
        group: column-wise group lasso instead of the elementwise lasso.

    Returns:
        (N_c, D) tensor.
    """
    tau = step * lam * alpha
    thresholded = group_soft_threshold(v, tau) if group else soft_threshold(v, tau)
    return thresholded / (1.0 + step * lam * (1.0 - alpha))


# --------------------------------------------------------------------------------------------------
# Problem, closed-form lambda_max, single-lambda solver
# --------------------------------------------------------------------------------------------------


@dataclass
class GLMProblem:
    """Training data of a multinomial GLM, moved to one device and dtype once.

    Build it with :meth:`from_arrays`. ``lipschitz`` is the Böhning bound
    ``sigma_max([X, 1])^2 / (2 N)`` on the curvature of the mean cross-entropy in (W, b); a step of
    ``1 / lipschitz`` always satisfies the backtracking condition.
    """

    X: torch.Tensor  # (N, D)
    y: torch.Tensor  # (N,) int64
    n_classes: int
    lipschitz: float
    Xa: torch.Tensor  # (N, D + 1) X with a column of ones, so that [W | b] is one parameter matrix
    Y: torch.Tensor  # (N, N_c) one-hot labels
    grad_scale: float = 1.0  # max |dCE/dW| at W = 0 (log-prior bias): the unit of the stopping rule

    @classmethod
    def from_arrays(
        cls,
        X: ArrayLike,
        y: ArrayLike,
        n_classes: int | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> "GLMProblem":
        """Check and convert features and labels.

        Args:
            X: (N, D) features, standardised (zero mean, unit variance per column) as glm-saga requires.
            y: (N,) integer labels in ``[0, n_classes)``.
            n_classes: N_c; default ``max(y) + 1``.
            device: torch device or "auto" (default CPU); see :func:`glm_device`.
            dtype: floating dtype (None: float64 on the CPU, float32 on CUDA); see :func:`glm_device`.

        Returns:
            The problem.

        Raises:
            ValueError: if shapes disagree, labels are out of range, or CUDA is asked for but not available.
        """
        X_t = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
        y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        if X_t.ndim != 2:
            raise ValueError(f"X must be 2-D (N, D), got shape {tuple(X_t.shape)}")
        if y_t.ndim != 1 or y_t.shape[0] != X_t.shape[0]:
            raise ValueError(
                f"y must be 1-D with one label per row of X ({X_t.shape[0]}), got shape {tuple(y_t.shape)}"
            )
        if X_t.shape[0] == 0:
            raise ValueError("X has no rows; pass at least one sample")
        y_t = y_t.long()
        n_classes = int(y_t.max()) + 1 if n_classes is None else int(n_classes)
        if int(y_t.min()) < 0 or int(y_t.max()) >= n_classes:
            raise ValueError(
                f"labels must lie in [0, {n_classes}), got range [{int(y_t.min())}, {int(y_t.max())}]"
            )
        device, dtype = glm_device(device, dtype)
        X_t = X_t.to(device=device, dtype=dtype)
        y_t = y_t.to(device)
        Xa = torch.cat([X_t, torch.ones(X_t.shape[0], 1, device=device, dtype=dtype)], dim=1)  # (N, D+1)
        Y = torch.nn.functional.one_hot(y_t, n_classes).to(dtype)  # (N, N_c)
        gram_max = float(torch.linalg.eigvalsh(Xa.T @ Xa)[-1])  # sigma_max([X, 1])^2
        lipschitz = max(gram_max / (2.0 * X_t.shape[0]), 1e-12)
        problem = cls(X=X_t, y=y_t, n_classes=n_classes, lipschitz=lipschitz, Xa=Xa, Y=Y)
        _, grad_w, _ = problem.loss_and_gradient(problem.logits(problem.zero_weight(), problem.prior_bias()))
        problem.grad_scale = max(float(grad_w.abs().max()), 1e-12)
        return problem

    @property
    def n_samples(self) -> int:
        """N."""
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        """D."""
        return self.X.shape[1]

    def prior_bias(self) -> torch.Tensor:
        """The optimal bias at W = 0: log class frequencies (absent classes clamped at log 1e-8). Shape (N_c,)."""
        counts = torch.bincount(self.y, minlength=self.n_classes).to(self.X.dtype)
        return torch.log((counts / self.n_samples).clamp_min(1e-8))

    def zero_weight(self) -> torch.Tensor:
        """All-zero weight, (N_c, D)."""
        return torch.zeros(self.n_classes, self.n_features, dtype=self.X.dtype, device=self.X.device)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of (N, N_c) logits; a 0-d tensor."""
        shift = logits.amax(dim=1, keepdim=True)  # (N, 1); a hand-made logsumexp is faster on the CPU
        lse = shift + (logits - shift).exp().sum(dim=1, keepdim=True).log()  # (N, 1)
        return (lse - logits.gather(1, self.y[:, None])).mean()

    def loss_and_residual(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and ``(softmax(logits) - Y) / N`` (N, N_c), whose products with X are gradients."""
        shift = logits.amax(dim=1, keepdim=True)  # (N, 1)
        resid = (logits - shift).exp()  # (N, N_c)
        total = resid.sum(dim=1, keepdim=True)  # (N, 1)
        loss = (shift + total.log() - logits.gather(1, self.y[:, None])).mean()
        resid = (resid / total - self.Y) / self.n_samples
        return loss, resid

    def loss_and_gradient(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and its gradient in (W (N_c, D), b (N_c,)) at (N, N_c) logits."""
        loss, resid = self.loss_and_residual(logits)
        return loss, resid.T @ self.X, resid.sum(dim=0)

    def logits(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``X W^T + b``, (N, N_c)."""
        return torch.addmm(bias, self.X, weight.T)


@dataclass(frozen=True)
class FeatureMetadata:
    """glm-saga's ``metadata`` of a feature matrix: the statistics the reference computes once, on the raw
    features of the full training split, and hands to every glm fit of the SLDD/QSENN selection (§6.3).

    Build it with :meth:`of`. ``max_reg_group`` and ``max_reg`` are glm-saga's maximum regularisation
    ``max_d ||G[d, :]||_2`` and ``max_{d,c} |G[d, c]|`` with ``G = X^T (Y - ybar) / N`` (X the raw features,
    Y the one-hot labels, ybar the class frequencies). Centring X would change nothing, because the columns
    of ``Y - ybar`` sum to zero. The reference multiplies and divides by the per-class std of Y, which cancels
    (a class without samples gives NaN there; it contributes 0 here).
    """

    mean: np.ndarray  # (D,) per-feature mean
    std: np.ndarray  # (D,) per-feature population standard deviation
    n_samples: int
    n_classes: int
    max_reg_group: float
    max_reg: float

    @classmethod
    def of(cls, X: ArrayLike, y: ArrayLike, n_classes: int | None = None) -> "FeatureMetadata":
        """Compute the metadata of raw features (float64, on the CPU).

        Args:
            X: (N, D) raw features (the reference: all training images, not standardised).
            y: (N,) integer labels in ``[0, n_classes)``.
            n_classes: N_c; default ``max(y) + 1``.

        Returns:
            The metadata.

        Raises:
            ValueError: for bad shapes, no rows, or labels out of range.
        """
        X = np.asarray(X.cpu() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
        y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
        if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
            raise ValueError(f"expected X (N, D) and y (N,) with the same N >= 1, got {X.shape} and {y.shape}")
        y = y.astype(np.int64)
        n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"labels must lie in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
        n = X.shape[0]
        Y = np.eye(n_classes)[y]  # (N, N_c)
        G = X.T @ (Y - Y.mean(axis=0)) / n  # (D, N_c)
        return cls(mean=X.mean(axis=0), std=X.std(axis=0), n_samples=n, n_classes=n_classes,
                   max_reg_group=float(np.linalg.norm(G, axis=1).max()), max_reg=float(np.abs(G).max()))

    @property
    def n_features(self) -> int:
        """D."""
        return len(self.mean)


def lambda_max(
    problem: GLMProblem, alpha: float, group: bool = False, *, metadata: FeatureMetadata | None = None
) -> float:
    """Where the lambda path starts: the smallest ``lam`` at which W = 0 solves the problem, or glm-saga's value
    from ``metadata``.

    Without metadata (closed form): at W = 0 the optimal bias is the log class prior; with G the
    cross-entropy gradient in W there, the optimality condition of W = 0 is ``|G_cd| <= lam * alpha`` for every
    entry (lasso) or ``||G[:, d]||_2 <= lam * alpha`` for every feature (group). Hence
    ``lambda_max = max|G| / alpha`` or ``max_d ||G[:, d]|| / alpha`` (glm-saga's ``maximum_reg`` of the data
    being fitted, divided by alpha).

    With metadata: ``metadata.max_reg_group / alpha`` (group) or ``metadata.max_reg / alpha``, as glm-saga's
    ``maximum_reg_loader(metadata=...)`` (reference_spec §6.3). The path then starts where the metadata's
    features (the reference: raw, all training rows) would put it, not at the zero threshold of ``problem``.

    Args:
        problem: the data.
        alpha: elastic-net mixing in (0, 1].
        group: group lasso (column norms) instead of the lasso.
        metadata: optional :class:`FeatureMetadata` of the same D features.

    Returns:
        lambda_max as a float.

    Raises:
        ValueError: if ``alpha`` is not in (0, 1] (with alpha = 0 no finite lambda zeroes W; glm-saga divides
            by ``max(alpha, 1e-3)`` instead), or the metadata has another number of features.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1] for a finite lambda_max, got {alpha}")
    if metadata is not None:
        if metadata.n_features != problem.n_features:
            raise ValueError(f"metadata describes {metadata.n_features} features but the problem has "
                             f"{problem.n_features}; compute it on the same columns")
        return (metadata.max_reg_group if group else metadata.max_reg) / alpha
    _, grad_w, _ = problem.loss_and_gradient(problem.logits(problem.zero_weight(), problem.prior_bias()))
    score = grad_w.norm(dim=0).max() if group else grad_w.abs().max()
    return float(score) / alpha


@dataclass
class GLMSolution:
    """Result of :func:`solve_elastic_net` at one lambda."""

    weight: torch.Tensor  # (N_c, D)
    bias: torch.Tensor  # (N_c,)
    n_iter: int  # iterations (full passes) used
    converged: bool  # the optimality residual fell below tol
    step: float  # last accepted step size (a good start for the next lambda)
    entered: int | None = None  # gated solves only: the column that entered (the solve stops there)


def _gated_prox(
    v: torch.Tensor,
    step: float,
    lam: float,
    alpha: float,
    group: bool,
    gate: torch.Tensor | None,
) -> tuple[torch.Tensor, int | None]:
    """Elastic-net prox; with a ``gate`` (bool (D,), True = already selected) at most one new column may
    become non-zero: the ungated column with the largest norm above the threshold (reference_spec §6.3)."""
    w = prox_elastic_net(v, step, lam, alpha, group)  # (N_c, D)
    if gate is None:
        return w, None
    active = (w != 0).any(dim=0) & ~gate  # (D,) would-be new columns
    if not bool(active.any()):
        return w, None
    score = torch.where(active, v.norm(dim=0), torch.full_like(v[0], -1.0))
    new = int(torch.argmax(score))
    blocked = ~gate
    blocked[new] = False
    w[:, blocked] = 0.0
    return w, new


def solve_elastic_net(
    problem: GLMProblem,
    lam: float,
    *,
    alpha: float,
    group: bool = False,
    weight0: torch.Tensor | None = None,
    bias0: torch.Tensor | None = None,
    max_epochs: int = 2000,
    tol: float = 1e-4,
    step0: float | None = None,
    gate: torch.Tensor | None = None,
) -> GLMSolution:
    """Solve the elastic-net multinomial problem at one ``lam`` with FISTA, backtracking and restart.

    Each iteration takes a proximal-gradient step from the extrapolated point y; the step halves until
    ``f(x+) <= f(y) + <grad f(y), x+ - y> + ||x+ - y||^2 / (2 step)`` (never below ``1/L``, where it
    always holds). Momentum restarts when it points uphill (O'Donoghue & Candès's gradient test). The solve
    stops when the largest entry of the gradient mapping ``(y - x+) / step`` is at most
    ``tol * problem.grad_scale`` (a relative optimality residual).

    Args:
        problem: the data.
        lam: regularisation strength >= 0.
        alpha: elastic-net mixing in [0, 1].
        group: column-wise group lasso.
        weight0: (N_c, D) warm start (default zeros).
        bias0: (N_c,) warm start (default the log class prior).
        max_epochs: iteration cap (each iteration is one full pass).
        tol: stopping threshold on the optimality residual, relative to ``problem.grad_scale``.
        step0: first step size to try (default ``4 / L``).
        gate: optional bool (D,) of already selected columns. Ungated columns start (and stay) zero except
            that one may enter per step; the solve returns right after a column enters, with
            ``entered`` set (the SLDD selection rule, reference_spec §6.3).

    Returns:
        :class:`GLMSolution` with tensors on the problem's device.

    Raises:
        ValueError: for lam < 0, alpha outside [0, 1], a non-positive max_epochs or a wrong gate shape.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    if gate is not None:
        gate = torch.as_tensor(gate, dtype=torch.bool, device=problem.X.device)
        if gate.shape != (problem.n_features,):
            raise ValueError(f"gate must be a bool mask of shape ({problem.n_features},), got {tuple(gate.shape)}")
    with _cpu_threads_for(problem.X, problem.n_classes):
        return _fista(problem, lam, alpha, group, weight0, bias0, max_epochs, tol, step0, gate)


def _fista(
    problem: GLMProblem,
    lam: float,
    alpha: float,
    group: bool,
    weight0: torch.Tensor | None,
    bias0: torch.Tensor | None,
    max_epochs: int,
    tol: float,
    step0: float | None,
    gate: torch.Tensor | None,
) -> GLMSolution:
    """The FISTA loop of :func:`solve_elastic_net` (arguments already checked).

    Works on theta = [W | b] (N_c, D+1) with logits = Xa theta^T; the prox acts on the first D columns.
    """
    d = problem.n_features
    x = torch.cat([
        problem.zero_weight() if weight0 is None else weight0.to(problem.X),
        (problem.prior_bias() if bias0 is None else bias0.to(problem.X))[:, None],
    ], dim=1)  # (N_c, D+1)
    if gate is not None:
        x[:, :d][:, ~gate] = 0.0
    min_step = 1.0 / problem.lipschitz
    rounding = 8.0 * torch.finfo(problem.X.dtype).eps  # slack of the backtracking test for round-off
    step = 4.0 * min_step if step0 is None else max(float(step0), min_step)

    x_logits = problem.Xa @ x.T  # (N, N_c)
    y, y_logits = x, x_logits
    momentum = 1.0
    for it in range(1, max_epochs + 1):
        f_y, resid = problem.loss_and_residual(y_logits)
        grad = resid.T @ problem.Xa  # (N_c, D+1)
        while True:
            v = y - step * grad
            new_w, entered = _gated_prox(v[:, :d], step, lam, alpha, group, gate)
            new = torch.cat([new_w, v[:, d:]], dim=1)
            new_logits = problem.Xa @ new.T
            delta = new - y
            bound = f_y + (grad * delta).sum() + (delta * delta).sum() / (2 * step)
            if step <= min_step or problem.loss(new_logits) <= bound + rounding * abs(float(f_y)):
                break
            step = max(step / 2.0, min_step)
        if entered is not None:
            return GLMSolution(new[:, :d].contiguous(), new[:, d].contiguous(), it, False, step, entered)
        if float(delta.abs().max()) / step <= tol * problem.grad_scale:
            return GLMSolution(new[:, :d].contiguous(), new[:, d].contiguous(), it, True, step)
        # adaptive restart: the step (y -> x+) and the momentum direction (x -> x+) disagree
        if float((delta * (new - x)).sum()) < 0:
            momentum = 1.0
            y, y_logits = new, new_logits
        else:
            next_momentum = (1.0 + math.sqrt(1.0 + 4.0 * momentum**2)) / 2.0
            beta = (momentum - 1.0) / next_momentum
            y = new + beta * (new - x)
            y_logits = new_logits + beta * (new_logits - x_logits)  # logits are linear in theta
            momentum = next_momentum
        x, x_logits = new, new_logits
    return GLMSolution(x[:, :d].contiguous(), x[:, d].contiguous(), max_epochs, False, step)


# --------------------------------------------------------------------------------------------------
# Path
# --------------------------------------------------------------------------------------------------


@dataclass
class GLMPathEntry:
    """One point of the regularisation path (numpy, on the CPU)."""

    lam: float
    weight: np.ndarray  # (N_c, D)
    bias: np.ndarray  # (N_c,)
    train_acc: float
    val_acc: float | None  # None without validation data
    nnz: int  # non-zero weights
    n_iter: int
    converged: bool


@dataclass
class GLMPath:
    """A regularisation path: entries from ``lam_fac * lambda_max`` down, then ``lam = 0`` (if requested)."""

    entries: list[GLMPathEntry]
    lambda_max: float  # before lam_fac
    alpha: float
    group: bool
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> GLMPathEntry:
        return self.entries[i]

    @property
    def lambdas(self) -> np.ndarray:
        """(len,) lambda of each entry."""
        return np.array([e.lam for e in self.entries])

    @property
    def nnz(self) -> np.ndarray:
        """(len,) non-zero weights of each entry."""
        return np.array([e.nnz for e in self.entries])


def _accuracy(weight: torch.Tensor, bias: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> float:
    return float((torch.addmm(bias, X, weight.T).argmax(dim=1) == y).double().mean())


def elastic_net_path(
    X: ArrayLike,
    y: ArrayLike,
    *,
    alpha: float,
    n_lambdas: int = 100,
    lambda_min_ratio: float = 1e-3,
    lam_fac: float = 1.0,
    group: bool = False,
    max_epochs: int = 2000,
    tol: float = 1e-4,
    lr: float | None = None,
    do_zero: bool = True,
    n_classes: int | None = None,
    seed: int = 0,
    verbose: bool = False,
    X_val: ArrayLike | None = None,
    y_val: ArrayLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    metadata: FeatureMetadata | None = None,
) -> GLMPath:
    """Fit the elastic-net multinomial logistic regression along a warm-started lambda path.

    lambdas = ``lam_fac * logspace(lambda_max, lambda_min_ratio * lambda_max, n_lambdas)``, solved in that
    order from W = 0 and the log-prior bias, then (``do_zero``) a final unpenalised ``lam = 0`` entry, as
    glm-saga (reference_spec §6.3: k = 100, epsilon = 1e-3, final lambda = 0).

    Args:
        X: (N, D) standardised training features.
        y: (N,) integer labels.
        alpha: elastic-net mixing in (0, 1] (SLDD selection 0.8, SLDD/QSENN weights 0.99).
        n_lambdas: number of path points before the lam = 0 entry.
        lambda_min_ratio: smallest lambda as a fraction of lambda_max (glm-saga's epsilon).
        lam_fac: factor on every lambda (0.1 in the SLDD selection).
        group: column-wise group lasso.
        max_epochs: iteration cap per lambda.
        tol: stopping threshold on the optimality residual (see :func:`solve_elastic_net`).
        lr: first step size to try (default ``4 / L``); backtracking adapts it.
        do_zero: append the lam = 0 solution.
        n_classes: N_c (default ``max(y) + 1``, or of ``y_val`` if larger).
        seed: unused by the deterministic solver; kept so that every path call records its seed.
        verbose: show a progress bar over lambdas.
        X_val: optional (N_val, D) validation features (same standardisation).
        y_val: optional (N_val,) validation labels.
        device: "cpu", "cuda", "cuda:<n>" or "auto" (e.g. a profile's ``train.device``); None: CPU.
        dtype: torch dtype (None: float64 on the CPU, float32 on CUDA).
        metadata: start the path from glm-saga's metadata instead of the zero threshold of (X, y)
            (see :func:`lambda_max`).

    Returns:
        :class:`GLMPath` with ``n_lambdas (+1)`` entries, on the CPU.

    Raises:
        ValueError: for bad shapes, alpha outside (0, 1], n_lambdas < 1, a ratio outside (0, 1], lam_fac <= 0,
            only one of X_val / y_val, metadata of other columns, or CUDA asked for but not available.
    """
    if n_lambdas < 1:
        raise ValueError(f"n_lambdas must be >= 1, got {n_lambdas}")
    if not 0.0 < lambda_min_ratio <= 1.0:
        raise ValueError(f"lambda_min_ratio must be in (0, 1], got {lambda_min_ratio}")
    if lam_fac <= 0:
        raise ValueError(f"lam_fac must be > 0, got {lam_fac}")
    if (X_val is None) != (y_val is None):
        raise ValueError("pass both X_val and y_val, or neither")
    if n_classes is None:
        n_classes = int(np.max(np.asarray(y))) + 1
        if y_val is not None and len(y_val):
            n_classes = max(n_classes, int(np.max(np.asarray(y_val))) + 1)
    problem = GLMProblem.from_arrays(X, y, n_classes, device=device, dtype=dtype)
    val = None
    if X_val is not None:
        val_problem = GLMProblem.from_arrays(X_val, y_val, n_classes, device=device, dtype=dtype)
        if val_problem.n_features != problem.n_features:
            raise ValueError(
                f"X_val has {val_problem.n_features} features but X has {problem.n_features}; use the same columns"
            )
        val = (val_problem.X, val_problem.y)

    lam_max = lambda_max(problem, alpha, group, metadata=metadata)
    lambdas = lam_fac * np.logspace(
        math.log10(lam_max), math.log10(lam_max * lambda_min_ratio), n_lambdas
    )
    if do_zero:
        lambdas = np.append(lambdas, 0.0)

    with _cpu_threads_for(problem.X, problem.n_classes):
        entries = _run_path(problem, lambdas, alpha, group, max_epochs, tol, lr, val, verbose)
    return GLMPath(
        entries=entries, lambda_max=lam_max, alpha=alpha, group=group,
        meta={"seed": seed, "lam_fac": lam_fac, "tol": tol, "max_epochs": max_epochs,
              "lambda_max_from": "problem" if metadata is None else "metadata",
              "device": str(problem.X.device), "dtype": str(problem.X.dtype).removeprefix("torch.")},
    )


def _run_path(
    problem: GLMProblem,
    lambdas: np.ndarray,
    alpha: float,
    group: bool,
    max_epochs: int,
    tol: float,
    lr: float | None,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    verbose: bool,
) -> list[GLMPathEntry]:
    """Solve at each lambda in turn, warm-started, and record the entries."""
    weight, bias, step0 = problem.zero_weight(), problem.prior_bias(), lr
    entries: list[GLMPathEntry] = []
    bar = tqdm(lambdas, desc=f"glm path (alpha={alpha}, group={group})", disable=not verbose)
    for lam in bar:
        sol = solve_elastic_net(
            problem, float(lam), alpha=alpha, group=group, weight0=weight, bias0=bias,
            max_epochs=max_epochs, tol=tol, step0=step0,
        )
        weight, bias, step0 = sol.weight, sol.bias, 2.0 * sol.step  # try a longer step at the next lambda
        entry = GLMPathEntry(
            lam=float(lam),
            weight=weight.cpu().numpy().copy(),
            bias=bias.cpu().numpy().copy(),
            train_acc=_accuracy(weight, bias, problem.X, problem.y),
            val_acc=None if val is None else _accuracy(weight, bias, *val),
            nnz=int((weight != 0).sum()),
            n_iter=sol.n_iter,
            converged=sol.converged,
        )
        entries.append(entry)
        bar.set_postfix(lam=f"{lam:.2e}", nnz=entry.nnz, acc=f"{entry.train_acc:.3f}", it=sol.n_iter)
    return entries
