"""Benchmark the licence-free QPM solver at CUB size against HiGHS on the linearised MILP (issue 5).

Instance: 512 non-negative (post-ReLU-like) features, 200 classes, 30 samples per class; each class raises a
few strongly associated features (shared between classes at random) above unit Gaussian noise. A and R come
from ``qpm_matrices``; N*_f = 50, N^c_f = 5. Cases (``--cases``): "none" (no R penalty), "dinoqpm" and
"qpm" (the penalty with the threshold of ``r_threshold(mode=...)``); default "none,dinoqpm".

For each case the open solver runs with ``--open-seconds`` and HiGHS (``scipy.optimize.milp``) gets the
linearised MILP of reference_spec §1.5 (s, E <= s, exact per-class counts, y >= s_i + s_j - 1; the
no-duplicate rule is not modelled, so its solution is checked for duplicates) for ``--highs-seconds``.

Usage: ``python benchmarks/bench_qp.py [--highs-seconds 600] [--open-seconds 60] [--skip-highs]
[--cases none,dinoqpm,qpm]``.
Set ``OMP_NUM_THREADS`` etc. to pin the number of cores; the figures in the issue used 2 shared cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from qpmlib.qp import qpm_matrices, qpm_objective, r_threshold, solve_qpm
from qpmlib.qp.assignment import has_duplicate_rows
from qpmlib.qp.objective import penalty_matrix


def class_structured_features(*, n_classes: int = 200, n_features: int = 512, per_class: int = 30,
                              n_strong: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic pooled features (N, N_f) >= 0 and labels (N,): each class boosts n_strong random features."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    profile = np.zeros((n_classes, n_features))
    for c in range(n_classes):
        profile[c, rng.choice(n_features, n_strong, replace=False)] = rng.gamma(2.0, 0.6, n_strong)
    features = np.maximum(profile[labels] + rng.normal(size=(len(labels), n_features)), 0.0)
    return features, labels


def highs_milp(A: np.ndarray, R: np.ndarray, n_selected: int, n_per_class: int, threshold: float | None,
               seconds: float) -> dict:
    """Solve the linearised MILP with HiGHS; returns objective, dual bound, time and duplicate flag."""
    n_f, n_c = A.shape
    a = 1000.0 / (n_c * n_per_class) * A
    p = penalty_matrix(R, threshold)
    pi, pj = np.nonzero(np.triu(p, k=1))
    m = len(pi)
    # variables: [s (N_f), E (N_f * N_c, row-major over (d, c)), y (m)]
    cost = -np.concatenate([np.zeros(n_f), a.ravel(), -p[pi, pj]])
    link = sp.hstack([-sp.kron(sp.eye(n_f), np.ones((n_c, 1))), sp.eye(n_f * n_c), sp.csr_matrix((n_f * n_c, m))])
    count = sp.hstack([sp.csr_matrix((n_c, n_f)), sp.kron(np.ones((1, n_f)), sp.eye(n_c)), sp.csr_matrix((n_c, m))])
    total = sp.hstack([np.ones((1, n_f)), sp.csr_matrix((1, n_f * n_c + m))])
    cons = [LinearConstraint(link.tocsr(), -np.inf, 0.0), LinearConstraint(count.tocsr(), n_per_class, n_per_class),
            LinearConstraint(total.tocsr(), n_selected, n_selected)]
    if m:
        rows = np.r_[np.arange(m), np.arange(m)]
        pair = sp.hstack([sp.csr_matrix((np.ones(2 * m), (rows, np.r_[pi, pj])), shape=(m, n_f)),
                          sp.csr_matrix((m, n_f * n_c)), -sp.eye(m)])
        cons.append(LinearConstraint(pair.tocsr(), -np.inf, 1.0))
    integrality = np.r_[np.ones(n_f + n_f * n_c), np.zeros(m)]
    start = time.monotonic()
    res = milp(cost, constraints=cons, integrality=integrality, bounds=Bounds(0, 1),
               options={"time_limit": seconds, "disp": False})
    runtime = time.monotonic() - start
    out = {"objective": np.nan, "bound": -res.mip_dual_bound if res.mip_dual_bound is not None else np.nan,
           "time_s": runtime, "duplicates": None, "status": res.message}
    if res.x is not None:
        sel = np.flatnonzero(res.x[:n_f] > 0.5)
        assignment = (res.x[n_f:n_f + n_f * n_c].reshape(n_f, n_c)[sel] > 0.5).T
        out["duplicates"] = has_duplicate_rows(assignment)
        out["objective"] = qpm_objective(A, R, sel, assignment, r_threshold=threshold)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--highs-seconds", type=float, default=600.0, help="HiGHS time limit per case")
    parser.add_argument("--open-seconds", type=float, default=60.0, help="open solver time limit per case")
    parser.add_argument("--skip-highs", action="store_true", help="run the open solver only")
    parser.add_argument("--cases", default="none,dinoqpm", help="comma-separated subset of none,dinoqpm,qpm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    features, labels = class_structured_features(seed=args.seed)
    A, R = qpm_matrices(features, labels)
    wanted = args.cases.split(",")
    unknown = set(wanted) - {"none", "dinoqpm", "qpm"}
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; valid: none, dinoqpm, qpm")
    cases: list[tuple[str, float | None, int]] = [("no R penalty", None, 0)] if "none" in wanted else []
    for mode in [m for m in ("dinoqpm", "qpm") if m in wanted]:
        start = time.monotonic()
        thr = r_threshold(R, 50, mode=mode)
        print(f"r_threshold({mode}): t = {thr.threshold:.4f}, {thr.n_penalised} pairs penalised, "
              f"clique {len(thr.clique)}, {time.monotonic() - start:.1f} s")
        cases.append((f"R penalty ({mode})", thr.threshold, thr.n_penalised))

    rows = []
    for name, threshold, n_pairs in cases:
        sol = solve_qpm(A, R, 50, 5, r_threshold=threshold, solver="open", time_limit=args.open_seconds,
                        seed=args.seed)
        rows.append({"case": name, "pairs": n_pairs, "solver": "open", "objective": sol.objective,
                     "bound": sol.bound, "gap_%": 100 * sol.gap, "time_s": sol.runtime, "duplicates": False})
        print(rows[-1])
        if not args.skip_highs:
            h = highs_milp(A, R, 50, 5, threshold, args.highs_seconds)
            rows.append({"case": name, "pairs": n_pairs, "solver": f"HiGHS milp ({args.highs_seconds:g} s)",
                         "objective": h["objective"], "bound": h["bound"],
                         "gap_%": 100 * (h["bound"] - h["objective"]) / abs(h["objective"]),
                         "time_s": h["time_s"], "duplicates": h["duplicates"]})
            print(rows[-1], h["status"])
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
