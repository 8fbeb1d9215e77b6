"""Tests for qpmlib.qp: matrices, objective, threshold, solvers (reference_spec §1)."""

from itertools import product
from math import comb

import numpy as np
import pytest
import torch

from qpmlib.qp import (QPMSolution, penalised_pairs, qpm_matrices, qpm_objective, r_threshold, r_tilde,
                       selection_summary, solve_qpm)
from qpmlib.qp.assignment import best_distinct_assignment, has_duplicate_rows
from qpmlib.qp.gurobi_solver import gurobi_fits


def class_features(rng, n_samples, n_features, n_classes, density=0.3):
    """Non-negative features where each class raises a random subset of features."""
    labels = np.arange(n_samples) % n_classes
    profile = (rng.random((n_classes, n_features)) < density) * rng.uniform(1, 3, (n_classes, n_features))
    return np.maximum(profile[labels] + rng.normal(size=(n_samples, n_features)), 0), labels


def random_instance(seed, forced_duplicates=False):
    """Small random QPM instance with feasible sizes; optionally two classes with near-identical columns."""
    rng = np.random.default_rng(seed)
    while True:
        nf, nc, n, k = rng.integers(6, 10), rng.integers(3, 6), rng.integers(3, 6), rng.integers(1, 4)
        if k <= n <= nf and comb(n, k) >= nc:
            break
    a, r = qpm_matrices(*class_features(rng, 60, nf, nc))
    if forced_duplicates:
        a[:, 1] = a[:, 0] + 1e-3 * rng.normal(size=nf)
    return a, r, int(n), int(k)


def medium_instance(seed=0, n_features=60, n_classes=24):
    """Class-structured A and R of a mid-sized instance (beyond enumeration)."""
    rng = np.random.default_rng(seed)
    return qpm_matrices(*class_features(rng, 4 * n_classes, n_features, n_classes, density=0.1))


# --- qpm_matrices (§1.2-1.3) -------------------------------------------------------------------------------

def test_qpm_matrices_hand_example():
    # feature 0 = indicator of class 0 (corr +1 / -1); feature 1 = [2, 0, 0, 0]: mean 0.5, std sqrt(0.75),
    # covariance with the class-0 indicator 0.25, so corr = 0.25 / (sqrt(0.75) * 0.5) = 1/sqrt(3)
    feats = np.array([[1.0, 2.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    a, r = qpm_matrices(feats, np.array([0, 0, 1, 1]))
    s3 = 1 / np.sqrt(3)
    np.testing.assert_allclose(a, [[1, -1], [s3, -s3]], atol=1e-12)
    np.testing.assert_allclose(r, np.ones((2, 2)), atol=1e-12)  # parallel class profiles


def test_qpm_matrices_match_corrcoef_and_cosine():
    rng = np.random.default_rng(0)
    x, y = class_features(rng, 90, 7, 5)
    a, r = qpm_matrices(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    onehot = np.eye(5)[y]
    corr = np.array([[np.corrcoef(x[:, d], onehot[:, c])[0, 1] for c in range(5)] for d in range(7)])
    np.testing.assert_allclose(a, corr / np.abs(corr).max(), atol=1e-5)
    assert np.abs(a).max() == pytest.approx(1.0)
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(r, unit @ unit.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(r), 1.0)
    np.testing.assert_allclose(r, r.T)
    assert a.dtype == np.float64 and r.dtype == np.float64


def test_qpm_matrices_constant_feature_gives_zero_row():
    x = np.column_stack([np.arange(6.0), np.full(6, 3.0)])
    a, r = qpm_matrices(x, np.array([0, 0, 0, 1, 1, 1]))
    assert np.all(np.isfinite(a)) and np.all(a[1] == 0) and np.all(np.isfinite(r))


def test_qpm_matrices_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must have shape"):
        qpm_matrices(np.ones((4, 2)), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        qpm_matrices(np.array([[np.nan, 1.0], [1.0, 2.0]]), np.array([0, 1]))


# --- objective (§1.5) --------------------------------------------------------------------------------------

HAND_A = np.array([[0.5, -0.2], [0.1, 0.4], [0.3, 0.9]])
HAND_R = np.array([[1.0, 0.2, 0.8], [0.2, 1.0, -0.4], [0.8, -0.4, 1.0]])


def test_r_tilde_hand_values():
    # diag -> 0; min non-zero = -0.4; R + 0.4 has max 1.2 (pair 0-2)
    rt = r_tilde(HAND_R)
    assert rt[0, 2] == pytest.approx(1.0) and rt[0, 1] == pytest.approx(0.5) and rt[1, 2] == pytest.approx(0.0)
    np.testing.assert_array_equal(penalised_pairs(HAND_R, 0.5), [[0, 2]])
    assert penalised_pairs(HAND_R, None).shape == (0, 2)


def test_qpm_objective_hand_computed():
    sel, assign = np.array([0, 2]), np.array([[True, False], [False, True]])  # class0 <- f0, class1 <- f2
    base = 1000 / (2 * 1) * (0.5 + 0.9)  # scale 1000 / (N_c * N^c_f) = 500
    assert qpm_objective(HAND_A, HAND_R, sel, assign) == pytest.approx(700.0)
    assert qpm_objective(HAND_A, HAND_R, sel, assign, r_threshold=0.5) == pytest.approx(base - 1.0)
    assert qpm_objective(HAND_A, HAND_R, sel, assign, r_threshold=0.9) == pytest.approx(base)
    b = np.array([0.1, 0.2, 0.3])
    assert qpm_objective(HAND_A, HAND_R, sel, assign, r_threshold=0.5, b=b) == pytest.approx(base - 1.0 + 0.4)
    both = np.ones((2, 2), dtype=bool)  # k = 2: scale 250
    assert qpm_objective(HAND_A, HAND_R, sel, both) == pytest.approx(250 * (0.5 + 0.3 - 0.2 + 0.9))


def test_qpm_objective_rejects_unequal_rows():
    with pytest.raises(ValueError, match="same positive number"):
        qpm_objective(HAND_A, HAND_R, np.array([0, 2]), np.array([[True, True], [False, True]]))


# --- exact distinct assignment (§1.7) ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_best_distinct_assignment_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(4, 4))
    values[1] = values[0]  # identical classes force the no-duplicate rule to bind
    sets = [s for s in product([0, 1], repeat=4) if sum(s) == 2]
    best = max(sum(values[c] @ np.array(s) for c, s in enumerate(choice))
               for choice in product(sets, repeat=4) if len(set(choice)) == 4)
    assignment, total = best_distinct_assignment(values, 2)
    assert total == pytest.approx(best)
    assert not has_duplicate_rows(assignment) and np.all(assignment.sum(axis=1) == 2)


@pytest.mark.parametrize("seed", range(3))
def test_candidate_list_matching_equals_a_matching_over_every_subset(seed):
    from itertools import combinations

    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(seed)
    values = rng.normal(size=(12, 6))
    values[3:6] = values[2] + 1e-3 * rng.normal(size=(3, 6))  # four near-identical classes
    subsets = np.array(list(combinations(range(6), 3)))  # all 20: a dense matching over every subset
    rows, cols = linear_sum_assignment(values[:, subsets].sum(axis=2), maximize=True)
    every_total = values[:, subsets].sum(axis=2)[rows, cols].sum()
    listed, listed_total = best_distinct_assignment(values, 3)
    assert listed_total == pytest.approx(every_total)
    assert not has_duplicate_rows(listed) and np.all(listed.sum(axis=1) == 3)
    assert listed_total < values[np.arange(12)[:, None], np.argsort(-values)[:, :3]].sum()  # rule binds


# --- solvers -----------------------------------------------------------------------------------------------

def check_solution(sol: QPMSolution, a, r, n, k, thr):
    assert np.all(np.diff(sol.selected) > 0) and len(sol.selected) == n
    assert sol.assignment.shape == (a.shape[1], n) and np.all(sol.assignment.sum(axis=1) == k)
    assert not has_duplicate_rows(sol.assignment)
    assert sol.objective == pytest.approx(qpm_objective(a, r, sol.selected, sol.assignment, r_threshold=thr))
    assert sol.bound is not None and sol.bound >= sol.objective


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("forced", [False, True])
def test_open_solver_reaches_exhaustive_optimum(seed, forced):
    a, r, n, k = random_instance(seed, forced_duplicates=forced)
    thr = None if seed % 2 else float(np.quantile(r[np.triu_indices(len(r), 1)], 0.6))
    exact = solve_qpm(a, r, n, k, r_threshold=thr, solver="exhaustive")
    found = solve_qpm(a, r, n, k, r_threshold=thr, solver="open", seed=seed)
    check_solution(exact, a, r, n, k, thr)
    check_solution(found, a, r, n, k, thr)
    assert found.objective == pytest.approx(exact.objective, abs=1e-9)
    assert found.bound >= exact.objective - 1e-9  # the bound is valid against the true optimum


def gurobi_usable():
    ok, reason = gurobi_fits(200, 200)
    return ok, reason


@pytest.mark.parametrize("seed", range(6))
def test_gurobi_matches_exhaustive(seed):
    ok, reason = gurobi_usable()
    if not ok:
        pytest.skip(reason)
    a, r, n, k = random_instance(100 + seed, forced_duplicates=seed % 2 == 0)
    thr = 0.3 if seed % 3 else None
    exact = solve_qpm(a, r, n, k, r_threshold=thr, solver="exhaustive")
    grb = solve_qpm(a, r, n, k, r_threshold=thr, solver="gurobi", gurobi="exact")
    check_solution(grb, a, r, n, k, thr)
    assert grb.objective == pytest.approx(exact.objective, rel=1e-6)


@pytest.mark.parametrize("seed", range(2))
def test_open_solver_matches_gurobi_beyond_enumeration(seed):
    # C(30, 8) = 5.9 million selections: out of reach for "exhaustive", within the pip licence (~400 variables)
    ok, reason = gurobi_usable()
    if not ok:
        pytest.skip(reason)
    a, r = medium_instance(seed, n_features=30, n_classes=12)
    thr = r_threshold(r, 8) if seed else None
    grb = solve_qpm(a, r, 8, 3, r_threshold=thr, solver="gurobi", gurobi="exact")
    found = solve_qpm(a, r, 8, 3, r_threshold=thr, solver="open", seed=seed)
    assert grb.gap < 1e-6
    assert found.objective == pytest.approx(grb.objective, rel=1e-9)
    assert found.bound >= grb.objective - 1e-9


@pytest.mark.parametrize("name, time_limit, expected", [
    ("reference", None, {"MIPGap": 5e-3, "TimeLimit": 10_800.0}),  # the reference's DINO configs (§1.5)
    ("exact", None, {"MIPGap": 1e-6, "TimeLimit": float("inf")}),  # Gurobi reports "no limit" as inf
    ("reference", 7.0, {"MIPGap": 5e-3, "TimeLimit": 7.0}),  # an explicit limit replaces the setting's
])
def test_gurobi_settings_reach_the_model(name, time_limit, expected):
    ok, reason = gurobi_usable()
    if not ok:
        pytest.skip(reason)
    a, r, n, k = random_instance(7)
    exact = solve_qpm(a, r, n, k, solver="exhaustive")
    kwargs = {} if name == "reference" and time_limit is None else {"gurobi": name, "time_limit": time_limit}
    grb = solve_qpm(a, r, n, k, solver="gurobi", **kwargs)
    assert grb.solver_settings == expected
    assert grb.gap <= expected["MIPGap"] + 1e-12  # the solve stops only within its gap
    assert grb.objective >= exact.objective * (1 - expected["MIPGap"]) - 1e-9
    assert solve_qpm(a, r, n, k, solver="open").solver_settings == {}


def test_unknown_gurobi_settings_are_refused():
    a, r, n, k = random_instance(7)
    with pytest.raises(ValueError, match="unknown Gurobi settings 'fast'; valid: reference, exact"):
        solve_qpm(a, r, n, k, solver="open", gurobi="fast")


def test_auto_falls_back_with_notice(monkeypatch):
    import qpmlib.qp.solve as solve_module
    monkeypatch.setattr(solve_module, "gurobi_fits", lambda *_: (False, "Model too large for size-limited license"))
    a, r, n, k = random_instance(3)
    with pytest.warns(UserWarning, match="size-limited"):
        sol = solve_qpm(a, r, n, k)
    assert sol.solver == "open"
    with pytest.raises(RuntimeError, match="solver='open'"):
        solve_qpm(a, r, n, k, solver="gurobi")


def test_auto_uses_gurobi_when_it_fits():
    ok, reason = gurobi_usable()
    if not ok:
        pytest.skip(reason)
    a, r, n, k = random_instance(5)
    assert solve_qpm(a, r, n, k).solver == "gurobi"


def test_open_solver_deterministic_and_certified_on_medium_instance():
    a, r = medium_instance(0, n_features=40, n_classes=16)
    thr = r_threshold(r, 8)
    first = solve_qpm(a, r, 8, 3, r_threshold=thr, solver="open", seed=7)
    second = solve_qpm(a, r, 8, 3, r_threshold=thr, solver="open", seed=7)
    check_solution(first, a, r, 8, 3, thr.threshold)
    np.testing.assert_array_equal(first.selected, second.selected)
    np.testing.assert_array_equal(first.assignment, second.assignment)
    assert first.gap == pytest.approx((first.bound - first.objective) / abs(first.objective))
    assert first.gap < 0.02
    times = [h[0] for h in first.history]
    assert times == sorted(times) and all(h[2] >= h[1] for h in first.history)


def test_time_limit_respected():
    a, r = medium_instance(1, n_features=300, n_classes=100)
    sol = solve_qpm(a, r, 30, 5, solver="open", time_limit=1.0)
    assert sol.runtime < 1.0 + 3.0  # the construction before the first deadline check is short


def test_rounds_cap_the_search_deterministically():
    a, r = medium_instance(0, n_features=40, n_classes=16)
    thr = r_threshold(r, 8)
    construction = solve_qpm(a, r, 8, 3, r_threshold=thr, solver="open", seed=7, rounds=0)
    check_solution(construction, a, r, 8, 3, thr.threshold)
    assert len(construction.history) == 1  # the construction only
    capped = [solve_qpm(a, r, 8, 3, r_threshold=thr, solver="open", seed=7, rounds=3) for _ in range(2)]
    assert len(capped[0].history) <= 1 + 3
    np.testing.assert_array_equal(capped[0].selected, capped[1].selected)
    np.testing.assert_array_equal(capped[0].assignment, capped[1].assignment)
    free = solve_qpm(a, r, 8, 3, r_threshold=thr, solver="open", seed=7)
    # the rounds only ever improve on the construction
    assert construction.objective <= capped[0].objective + 1e-9 <= free.objective + 2e-9


def test_selection_summary_rows():
    a, r, n, k = random_instance(2)
    sol = solve_qpm(a, r, n, k, solver="exhaustive")
    table = selection_summary(sol, a)
    assert list(table.columns) == ["class", "features", "A", "A_sum"] and len(table) == a.shape[1]
    assert all(len(f) == k and set(f) <= set(sol.selected.tolist()) for f in table["features"])
    scale = 1000 / (a.shape[1] * k)
    assert scale * table["A_sum"].sum() == pytest.approx(sol.objective)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_selected=3, n_per_class=4), "exceeds n_selected"),
    (dict(n_selected=9, n_per_class=2), "exceeds the number of features"),
    (dict(n_selected=3, n_per_class=3), "distinct feature sets"),
    (dict(n_selected=0, n_per_class=1), "positive integer"),
    (dict(n_selected=4, n_per_class=-1), "positive integer"),
    (dict(n_selected=4, n_per_class=2, solver="cplex"), "valid solvers"),
    (dict(n_selected=4, n_per_class=2, time_limit=0), "time_limit"),
    (dict(n_selected=4, n_per_class=2, rounds=-1), "rounds"),
    (dict(n_selected=4, n_per_class=2, r_threshold=float("nan")), "r_threshold is NaN"),
    (dict(n_selected=4, n_per_class=2, b=np.ones(3)), "b must have shape"),
    (dict(n_selected=4, n_per_class=2, b=np.full(8, np.nan)), "b contains NaN"),
])
def test_solve_qpm_rejects_bad_input(kwargs, message):
    rng = np.random.default_rng(0)
    a, r = rng.normal(size=(8, 3)), np.eye(8)
    n, k = kwargs.pop("n_selected"), kwargs.pop("n_per_class")
    with pytest.raises(ValueError, match=message):
        solve_qpm(a, r, n, k, **kwargs)


def test_solve_qpm_rejects_bad_matrices():
    a, r = np.ones((8, 3)), np.eye(8)
    with pytest.raises(ValueError, match="R must have shape"):
        solve_qpm(a, np.eye(7), 4, 2)
    with pytest.raises(ValueError, match="A contains NaN"):
        solve_qpm(np.where(np.eye(8, 3) > 0, np.nan, a), r, 4, 2)
    with pytest.raises(ValueError, match="R contains NaN or inf"):
        solve_qpm(a, np.where(np.eye(8) > 0, np.inf, r), 4, 2)


# --- threshold (§1.6) --------------------------------------------------------------------------------------

def planted_similarity(seed=0, n_planted=8, n_copies=40):
    """R from A whose first n_planted rows are orthogonal class indicators and the rest near-copies of 3 rows."""
    rng = np.random.default_rng(seed)
    planted = np.eye(n_planted, 12)
    base = rng.normal(size=(3, 12))
    copies = base[rng.integers(0, 3, n_copies)] + 0.1 * rng.normal(size=(n_copies, 12))
    a = np.vstack([planted, copies])
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    return unit @ unit.T


@pytest.mark.parametrize("mode", ["dinoqpm", "qpm"])
def test_r_threshold_returns_real_clique(mode):
    r = planted_similarity()
    res = r_threshold(r, 8, mode=mode)
    clique = res.clique
    assert len(clique) >= 8 and len(set(clique.tolist())) == len(clique)
    sub = r[np.ix_(clique, clique)]
    off = ~np.eye(len(clique), dtype=bool)
    compared = 2 * sub if mode == "dinoqpm" else np.maximum(sub, 0)
    assert np.all(compared[off] < res.threshold)  # pairwise allowed: a clique of the allowed graph
    upper = np.triu(r if mode == "dinoqpm" else np.maximum(r, 0), k=1)
    assert res.n_penalised == np.count_nonzero(np.triu(upper >= res.threshold, k=1))


def test_qpm_mode_penalises_at_least_as_many_pairs():
    a, r = medium_instance(3)
    dino, qpm = r_threshold(r, 15, mode="dinoqpm"), r_threshold(r, 15, mode="qpm")
    assert qpm.n_penalised >= dino.n_penalised > 0
    assert qpm.threshold < dino.threshold  # the scale mismatch: C = 2R in the DINO-QPM mode


def test_r_threshold_rejects_unknown_mode():
    with pytest.raises(ValueError, match="valid modes"):
        r_threshold(np.eye(5), 3, mode="clamped")


def test_gurobi_out_of_time_returns_its_feasible_start():
    # no time at all (a busy machine, a short qp.time_limit) still ends with the greedy start, never with none
    ok, reason = gurobi_usable()
    if not ok:
        pytest.skip(reason)
    a, r = medium_instance(0, n_features=30, n_classes=12)
    with pytest.warns(UserWarning, match="greedy start is used"):
        grb = solve_qpm(a, r, 8, 3, solver="gurobi", time_limit=1e-9)
    assert len(grb.selected) == 8 and np.all(grb.assignment.sum(axis=1) == 3)
    assert not has_duplicate_rows(grb.assignment) and grb.bound is None and grb.gap is None  # no bound: unknown gap
    assert grb.objective == pytest.approx(qpm_objective(a, r, grb.selected, grb.assignment))
    exact = solve_qpm(a, r, 8, 3, solver="gurobi", gurobi="exact")
    assert 0.5 * exact.objective < grb.objective <= exact.objective + 1e-9
