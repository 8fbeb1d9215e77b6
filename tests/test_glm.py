"""Tests for qpmlib.glm: proximal operators, closed-form lambda_max, optimality, the path."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from qpmlib.glm import (
    GLMProblem,
    elastic_net_path,
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
