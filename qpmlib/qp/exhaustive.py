"""Exact QPM solution by enumeration, for tiny instances and as ground truth in tests."""

from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np

from .assignment import best_distinct_assignment
from .local_search import Instance

MAX_SUBSETS = 200_000


def solve_exhaustive(inst: Instance) -> tuple[np.ndarray, np.ndarray, float]:
    """Enumerate every selection of size n and, for each, its exact best distinct assignment.

    Per selection the assignment is optimal by :func:`best_distinct_assignment` (an exact matching), so the
    overall maximum is the optimum of reference_spec §1.5 with the constraints of §1.7.

    Args:
        inst: the scaled instance.

    Returns:
        ``(selected, assignment, objective)`` of an optimal solution (first in lexicographic order on ties).

    Raises:
        ValueError: when more than ``MAX_SUBSETS`` selections would have to be enumerated.
    """
    n_f, n = inst.a.shape[0], inst.n_selected
    if comb(n_f, n) > MAX_SUBSETS:
        raise ValueError(f"exhaustive search would enumerate C({n_f}, {n}) = {comb(n_f, n)} selections "
                         f"(limit {MAX_SUBSETS}); use solver='open' or 'gurobi'")
    best = (-np.inf, None, None)
    for subset in combinations(range(n_f), n):
        sel = np.asarray(subset)
        extra = -0.5 * float(inst.p[np.ix_(sel, sel)].sum()) + float(inst.b[sel].sum())
        upper = float(np.sort(inst.a[sel], axis=0)[-inst.n_per_class:].sum()) + extra
        if upper <= best[0]:
            continue  # even with duplicates allowed this selection cannot win
        assignment, total = best_distinct_assignment(inst.a[sel].T, inst.n_per_class)
        if total + extra > best[0]:
            best = (total + extra, sel, assignment)
    return best[1], best[2], best[0]
