"""Tests for qpmlib.glm: proximal operators, closed-form lambda_max, optimality, the path."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from qpmlib.glm import (
    FeatureMetadata,
    GLMProblem,
    elastic_net_path,
    glm_device,
    group_soft_threshold,
    lambda_max,
    prox_elastic_net,
    soft_threshold,
    solve_elastic_net,
)


def _toy(n=90, d=6, c=3, informative=2, scale=1.5, seed=0):
    """Standardised features; the first `informative` columns carry class means."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    means = np.zeros((c, d))
    means[:, :informative] = rng.normal(size=(c, informative)) * scale
    X = means[y] + rng.normal(size=(n, d))
    return (X - X.mean(0)) / X.std(0), y


def test_soft_threshold_hand_values():
    w = torch.tensor([[3.0, -0.5, -2.0], [0.2, 1.0, -1.0]])
    expected = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(soft_threshold(w, 1.0), expected)


def test_group_soft_threshold_hand_values():
    # column 0 has norm 5 -> scaled by (1 - 1/5); column 1 has norm 0.5 <= 1 -> zero
    w = torch.tensor([[3.0, 0.3], [4.0, -0.4]])
    expected = torch.tensor([[2.4, 0.0], [3.2, 0.0]])
    assert torch.allclose(group_soft_threshold(w, 1.0), expected)


def test_prox_elastic_net_shrinks_after_threshold():
    v = torch.tensor([[2.0, -0.4]])
    # threshold step*lam*alpha = 0.5, then divide by 1 + step*lam*(1-alpha) = 1.5
    out = prox_elastic_net(v, step=1.0, lam=1.0, alpha=0.5)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0]]))
    out_group = prox_elastic_net(torch.tensor([[3.0], [4.0]]), step=1.0, lam=1.0, alpha=0.5, group=True)
    assert torch.allclose(out_group, torch.tensor([[3.0], [4.0]]) * (1 - 0.5 / 5) / 1.5)


@pytest.mark.parametrize("group", [False, True])
def test_lambda_max_matches_numpy_formula(group):
    X, y = _toy()
    problem = GLMProblem.from_arrays(X, y)
    prior = np.bincount(y) / len(y)
    grad = (prior[None, :] - np.eye(3)[y]).T @ X / len(y)  # (C, D) gradient at W=0, optimal bias
    score = np.linalg.norm(grad, axis=0).max() if group else np.abs(grad).max()
    assert lambda_max(problem, 0.8, group) == pytest.approx(score / 0.8, rel=1e-10)


@pytest.mark.parametrize("group", [False, True])
def test_lambda_max_is_the_zero_threshold(group):
    X, y = _toy()
    problem = GLMProblem.from_arrays(X, y)
    lam = lambda_max(problem, 0.8, group)
    above = solve_elastic_net(problem, lam * 1.0001, alpha=0.8, group=group, tol=1e-8)
    below = solve_elastic_net(problem, lam * 0.97, alpha=0.8, group=group, tol=1e-8)
    assert above.converged and bool((above.weight == 0).all())
    assert int((below.weight != 0).sum()) > 0


@pytest.mark.parametrize("group", [False, True])
def test_solution_satisfies_kkt(group):
    X, y = _toy(n=60, d=5)
    problem = GLMProblem.from_arrays(X, y)
    alpha = 0.5
    lam = 0.5 * lambda_max(problem, alpha, group)
    sol = solve_elastic_net(problem, lam, alpha=alpha, group=group, tol=1e-10, max_epochs=20000)
    assert sol.converged
    _, g_w, g_b = problem.loss_and_gradient(problem.logits(sol.weight, sol.bias))
    w = sol.weight.numpy()
    smooth = (g_w + lam * (1 - alpha) * sol.weight).numpy()  # gradient of the differentiable part
    assert np.abs(g_b.numpy()).max() < 1e-8
    assert (w != 0).any() and (w == 0).any()  # the check below covers both cases
    if group:
        norms = np.linalg.norm(w, axis=0)
        for j in range(w.shape[1]):
            if norms[j] > 0:
                assert np.allclose(smooth[:, j], -lam * alpha * w[:, j] / norms[j], atol=1e-7)
            else:
                assert np.linalg.norm(smooth[:, j]) <= lam * alpha + 1e-8
    else:
        nz = w != 0
        assert np.allclose(smooth[nz], -lam * alpha * np.sign(w[nz]), atol=1e-7)
        assert np.abs(smooth[~nz]).max() <= lam * alpha + 1e-8


def test_ridge_solution_matches_scipy():
    X, y = _toy(n=60, d=4)
    problem = GLMProblem.from_arrays(X, y)
    lam, n_c, d = 0.05, 3, 4
    sol = solve_elastic_net(problem, lam, alpha=0.0, tol=1e-11, max_epochs=20000)

    def objective(theta):
        w, b = theta[: n_c * d].reshape(n_c, d), theta[n_c * d :]
        z = X @ w.T + b
        z_max = z.max(axis=1, keepdims=True)
        lse = z_max[:, 0] + np.log(np.exp(z - z_max).sum(axis=1))
        p = np.exp(z - lse[:, None])
        p[np.arange(len(y)), y] -= 1
        p /= len(y)
        value = (lse - z[np.arange(len(y)), y]).mean() + lam / 2 * (w**2).sum()
        return value, np.concatenate([(p.T @ X + lam * w).ravel(), p.sum(axis=0)])

    ref = minimize(objective, np.zeros(n_c * d + n_c), jac=True, method="BFGS", options={"gtol": 1e-11})
    w_ref = ref.x[: n_c * d].reshape(n_c, d)
    assert np.allclose(sol.weight.numpy(), w_ref, atol=1e-5)
    # the bias is identified only up to a constant shift across classes
    b, b_ref = sol.bias.numpy(), ref.x[n_c * d :]
    assert np.allclose(b - b.mean(), b_ref - b_ref.mean(), atol=1e-5)


def test_gate_admits_one_new_column_and_stops():
    X, y = _toy(d=6, informative=4)
    problem = GLMProblem.from_arrays(X, y)
    lam = 0.1 * lambda_max(problem, 0.8, True)
    gate = torch.zeros(6, dtype=torch.bool)
    sol = solve_elastic_net(problem, lam, alpha=0.8, group=True, gate=gate)
    nonzero = np.flatnonzero(np.linalg.norm(sol.weight.numpy(), axis=0))
    assert sol.entered is not None and nonzero.tolist() == [sol.entered]
    # the entering column is the one with the largest gradient group norm at zero
    _, g_w, _ = problem.loss_and_gradient(problem.logits(problem.zero_weight(), problem.prior_bias()))
    assert sol.entered == int(g_w.norm(dim=0).argmax())


def test_path_separable_reaches_full_accuracy():
    X, y = _toy(n=120, d=5, c=4, informative=5, scale=6.0, seed=1)
    path = elastic_net_path(X, y, alpha=0.99, n_lambdas=20, X_val=X[:20], y_val=y[:20])
    assert len(path) == 21 and path[-1].lam == 0.0
    assert path[0].nnz == 0 and path[0].lam == pytest.approx(path.lambda_max)
    assert path[-2].train_acc == 1.0 and path[-2].val_acc == 1.0
    assert path.lambdas[1:-1].tolist() == sorted(path.lambdas[1:-1], reverse=True)
    assert path.nnz[-2] > path.nnz[1]


def test_path_lam_fac_scales_lambdas_and_is_deterministic():
    X, y = _toy()
    a = elastic_net_path(X, y, alpha=0.8, group=True, n_lambdas=5, lam_fac=0.1, do_zero=False)
    b = elastic_net_path(X, y, alpha=0.8, group=True, n_lambdas=5, lam_fac=0.1, do_zero=False)
    assert len(a) == 5
    assert a.lambdas[0] == pytest.approx(0.1 * a.lambda_max)
    assert a.lambdas[-1] == pytest.approx(0.1 * 1e-3 * a.lambda_max)
    for ea, eb in zip(a.entries, b.entries):
        assert np.array_equal(ea.weight, eb.weight) and np.array_equal(ea.bias, eb.bias)


def test_bad_arguments_raise():
    X, y = _toy()
    problem = GLMProblem.from_arrays(X, y)
    with pytest.raises(ValueError, match="alpha"):
        lambda_max(problem, 0.0)
    with pytest.raises(ValueError, match="one label per row"):
        GLMProblem.from_arrays(X, y[:-1])
    with pytest.raises(ValueError, match="labels must lie"):
        GLMProblem.from_arrays(X, y, n_classes=2)
    with pytest.raises(ValueError, match="X_val and y_val"):
        elastic_net_path(X, y, alpha=0.5, X_val=X)
    with pytest.raises(ValueError, match="gate"):
        solve_elastic_net(problem, 0.1, alpha=0.5, gate=torch.zeros(2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- lambda_max sources
# Tiny problem with a closed-form lambda_max (hand computation in the comments). Raw features, 2 classes:
#   X = [[1, 2], [3, 0], [5, 4], [7, 2]], y = [0, 0, 1, 1], ybar = (1/2, 1/2)
#   G = X^T (Y - ybar) / 4 = [[-1, 1], [-1/2, 1/2]]  (feature 0: (1 + 3 - 5 - 7) / 8; feature 1: (2 + 0 - 4 - 2) / 8)
#   -> max_reg = 1, max_reg_group = max(sqrt(2), sqrt(2) / 2) = sqrt(2)
# Standardised with the mean (4, 2) and population std (sqrt(5), sqrt(2)) of all rows, each feature's score is
# divided by its std: group scores sqrt(2)/sqrt(5) and (sqrt(2)/2)/sqrt(2) = 1/2 -> sqrt(2/5).
X_TINY = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0], [7.0, 2.0]])
Y_TINY = np.array([0, 0, 1, 1])


def test_feature_metadata_closed_form():
    meta = FeatureMetadata.of(X_TINY, Y_TINY)
    assert meta.max_reg == pytest.approx(1.0, rel=1e-12)
    assert meta.max_reg_group == pytest.approx(np.sqrt(2.0), rel=1e-12)
    assert np.allclose(meta.mean, [4.0, 2.0]) and np.allclose(meta.std, [np.sqrt(5.0), np.sqrt(2.0)])
    assert (meta.n_samples, meta.n_classes, meta.n_features) == (4, 2, 2)
    # centring the raw features does not change max_reg (the columns of Y - ybar sum to zero)
    shifted = FeatureMetadata.of(X_TINY + 100.0, Y_TINY)
    assert shifted.max_reg_group == pytest.approx(meta.max_reg_group, rel=1e-12)


@pytest.mark.parametrize("group, metadata_value, split_value", [
    (True, np.sqrt(2.0), np.sqrt(2.0 / 5.0)),
    (False, 1.0, 1.0 / np.sqrt(5.0)),
])
def test_lambda_max_sources_closed_form(group, metadata_value, split_value):
    Z = (X_TINY - X_TINY.mean(0)) / X_TINY.std(0)
    problem = GLMProblem.from_arrays(Z, Y_TINY)
    # "split": the zero threshold of the standardised problem being fitted
    assert lambda_max(problem, 0.8, group) == pytest.approx(split_value / 0.8, rel=1e-12)
    # "metadata": glm-saga's value from the raw features (here the same rows)
    meta = FeatureMetadata.of(X_TINY, Y_TINY)
    assert lambda_max(problem, 0.8, group, metadata=meta) == pytest.approx(metadata_value / 0.8, rel=1e-12)


def test_path_starts_from_metadata_lambda_max():
    Z = (X_TINY - X_TINY.mean(0)) / X_TINY.std(0)
    meta = FeatureMetadata.of(X_TINY, Y_TINY)
    path = elastic_net_path(Z, Y_TINY, alpha=0.8, group=True, n_lambdas=3, lam_fac=0.1, do_zero=False,
                            metadata=meta)
    assert path.lambda_max == pytest.approx(np.sqrt(2.0) / 0.8, rel=1e-12)
    assert path.lambdas[0] == pytest.approx(0.1 * np.sqrt(2.0) / 0.8, rel=1e-12)
    assert path.meta["lambda_max_from"] == "metadata"
    assert elastic_net_path(Z, Y_TINY, alpha=0.8, n_lambdas=2).meta["lambda_max_from"] == "problem"
    with pytest.raises(ValueError, match="metadata describes 2 features but the problem has 1"):
        elastic_net_path(Z[:, :1], Y_TINY, alpha=0.8, n_lambdas=2, metadata=meta)


# ---------------------------------------------------------------------------------------------- device and dtype
def test_glm_device_defaults():
    assert glm_device() == (torch.device("cpu"), torch.float64)
    assert glm_device("cpu", torch.float32) == (torch.device("cpu"), torch.float32)
    if not torch.cuda.is_available():
        assert glm_device("auto") == (torch.device("cpu"), torch.float64)
        with pytest.raises(ValueError, match="no CUDA device is available"):
            glm_device("cuda")
    else:
        assert glm_device("cuda") == (torch.device("cuda"), torch.float32)
    with pytest.raises(ValueError, match="floating-point"):
        glm_device("cpu", torch.int64)


# Stated tolerance: on every regularised entry (tol 1e-5), the float32 weights are within 2e-4 of the largest
# float64 weight (observed: <= 4e-5) and have the same non-zeros. The lam = 0 entry is left out: an unregularised,
# nearly separable fit has a flat optimum, so two solves that both meet tol can differ by about 1 %.
F32_REL_TOL = 2e-4


@pytest.mark.parametrize("group", [False, True])
def test_float32_path_matches_float64(group):
    X, y = _toy(n=150, d=8, c=4, informative=4, seed=3)
    kw = dict(alpha=0.8, group=group, n_lambdas=8, lambda_min_ratio=1e-2, tol=1e-5, max_epochs=5000, do_zero=False)
    p64 = elastic_net_path(X, y, dtype=torch.float64, **kw)
    p32 = elastic_net_path(X, y, device="cpu", dtype=torch.float32, **kw)
    assert p32.meta["dtype"] == "float32" and p64.meta["dtype"] == "float64"
    assert p32.lambda_max == pytest.approx(p64.lambda_max, rel=1e-6)
    for e32, e64 in zip(p32.entries, p64.entries):
        assert e32.weight.dtype == np.float32 and e32.nnz == e64.nnz
        assert np.abs(e32.weight - e64.weight).max() <= F32_REL_TOL * max(np.abs(e64.weight).max(), 1e-3)
    assert np.abs(p64[-1].weight).max() > 1.0 and p64[-1].nnz > p64[1].nnz  # weights of size O(1), many non-zeros
