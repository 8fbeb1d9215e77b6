"""``solve_qpm``: one entry point for every QPM solver (reference_spec §1.5-1.7, §11).

The solvers sit behind :data:`SOLVER_FUNCTIONS`, a name-to-function registry; each function takes the scaled
:class:`~qpmlib.qp.local_search.Instance` and returns a :class:`SolverOutput`, which :func:`solve_qpm` checks
(the objective is recomputed) and turns into the one result type, :class:`QPMSolution`.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from ._checks import check_problem, check_sizes
from .exhaustive import solve_exhaustive
from .gurobi_solver import GurobiSettings, gurobi_fits, gurobi_settings, model_size, solve_gurobi
from .local_search import Instance
from .objective import penalty_matrix, qpm_objective
from .open_solver import solve_open
from .threshold import ThresholdResult


class SolverOutput(NamedTuple):
    """What a registered solver returns (see :data:`SOLVER_FUNCTIONS`).

    Attributes:
        selected: (n_selected,) chosen feature indices.
        assignment: (N_c, n_selected) bool assignment; column j is feature ``selected[j]``.
        objective: the objective the solver reports (checked against :func:`qpm_objective`).
        bound: a proven upper bound, or None.
        history: ``(seconds, objective, bound)`` steps (open solver only).
        settings: the parameters the solver ran with, read back from it (Gurobi: ``MIPGap``, ``TimeLimit``);
            empty for the other solvers.
    """

    selected: np.ndarray
    assignment: np.ndarray
    objective: float
    bound: float | None
    history: list
    settings: dict


def _open(inst: Instance, time_limit: float | None, seed: int, verbose: bool, gurobi: GurobiSettings,
          rounds: int | None = None) -> SolverOutput:
    res = solve_open(inst, time_limit=time_limit, seed=seed, verbose=verbose, rounds=rounds)
    return SolverOutput(res.selected, res.assignment, res.objective, res.bound, res.history, {})


def _gurobi(inst: Instance, time_limit: float | None, seed: int, verbose: bool,
            gurobi: GurobiSettings) -> SolverOutput:
    sel, assignment, value, bound, params = solve_gurobi(inst, settings=gurobi, time_limit=time_limit, seed=seed,
                                                         verbose=verbose)
    return SolverOutput(sel, assignment, value, bound, [], params)


def _exhaustive(inst: Instance, time_limit: float | None, seed: int, verbose: bool,
                gurobi: GurobiSettings) -> SolverOutput:
    sel, assignment, value = solve_exhaustive(inst)
    return SolverOutput(sel, assignment, value, value, [], {})  # enumeration proves optimality


#: Solver name -> ``fn(instance, time_limit, seed, verbose, gurobi) -> SolverOutput``; ``gurobi`` is the
#: :class:`~qpmlib.qp.gurobi_solver.GurobiSettings` of the call (only the Gurobi solver reads it).
SOLVER_FUNCTIONS: dict[str, Callable[[Instance, float | None, int, bool, GurobiSettings], SolverOutput]] = {
    "open": _open,
    "gurobi": _gurobi,
    "exhaustive": _exhaustive,
}
#: Valid ``solver`` arguments of :func:`solve_qpm`: "auto" picks Gurobi when its licence fits, else "open".
SOLVERS = ("auto", *SOLVER_FUNCTIONS)


@dataclass
class QPMSolution:
    """Result of :func:`solve_qpm`.

    Attributes:
        selected: (n_selected,) sorted int indices of the chosen features.
        assignment: (N_c, n_selected) bool; exactly n_per_class True per row, no two rows equal; column j is
            feature ``selected[j]``.
        objective: Z of reference_spec §1.5, recomputed with :func:`qpm_objective`.
        bound: a proven upper bound on the optimum, or None if the solver gives none.
        gap: ``(bound - objective) / max(|objective|, 1e-12)``, or None.
        solver: the solver that produced the solution ("open", "gurobi" or "exhaustive").
        runtime: wall-clock seconds.
        history: list of ``(seconds, objective, bound)`` (open solver only).
        r_threshold: the penalty threshold used (None: no penalty).
        solver_settings: the Gurobi parameters read back from the solved model (``MIPGap``, ``TimeLimit``; inf
            means no limit); empty for the other solvers.
    """

    selected: np.ndarray
    assignment: np.ndarray
    objective: float
    bound: float | None
    gap: float | None
    solver: str
    runtime: float
    history: list = field(default_factory=list)
    r_threshold: float | None = None
    solver_settings: dict = field(default_factory=dict)


def _pick_auto(inst: Instance) -> str:
    ok, reason = gurobi_fits(*model_size(inst))
    if ok:
        return "gurobi"
    if "not installed" not in reason:
        warnings.warn(f"solve_qpm(solver='auto'): {reason.splitlines()[0]}; using the open solver", stacklevel=3)
    return "open"


def solve_qpm(A, R, n_selected: int, n_per_class: int, *, r_threshold: float | ThresholdResult | None = None,
              b=None, solver: str = "auto", time_limit: float | None = None, seed: int = 0,
              verbose: bool = False, gurobi: str = "reference", rounds: int | None = None) -> QPMSolution:
    """Select ``n_selected`` features and assign ``n_per_class`` of them to every class (reference_spec §1.5).

    Maximises ``Z = 1000/(N_c * n_per_class) * sum of A over assigned edges - sum of R~ over selected pairs
    with R >= r_threshold + sum of b over selected features``, with exactly ``n_per_class`` features per class
    and no two classes sharing the same feature set (§1.7).

    Args:
        A: (N_f, N_c) feature-class matrix from :func:`qpm_matrices`.
        R: (N_f, N_f) feature similarity matrix from :func:`qpm_matrices`.
        n_selected: N*_f, the number of selected features (paper: 50).
        n_per_class: N^c_f, features per class (paper: 5).
        r_threshold: penalise pairs with ``R >= r_threshold`` (a float or a :class:`ThresholdResult` from
            :func:`r_threshold`); None: no R penalty. Pairs are always tested on the R given, and R~ is
            computed from it (§1.5), whichever ``mode`` chose the threshold.
        b: optional (N_f,) bias per selected feature (§1.4; disabled in the reference).
        solver: "auto" (Gurobi if its licence can hold the model, else "open"), "open", "gurobi" or
            "exhaustive" (enumeration; tiny instances only).
        rounds: the open solver's rounds of iterated local search after its construction, at most (0: the
            construction only; None: no cap). Deterministic, unlike ``time_limit``; other solvers ignore it.
        time_limit: seconds for the open solver's search (its construction phase, about 1-2 s at CUB size,
            runs first) or Gurobi's TimeLimit (None: the open solver stops after 100 rounds without progress,
            Gurobi takes the limit of ``gurobi``).
        seed: seed of the open solver's perturbations and Gurobi's ``Seed``.
        verbose: progress output.
        gurobi: Gurobi settings, a name of :data:`~qpmlib.qp.gurobi_solver.GUROBI_SETTINGS`: "reference" (the
            reference's DINO configs: MIPGap 5e-3, TimeLimit 10,800 s) or "exact" (MIPGap 1e-6, no limit).

    Returns:
        A :class:`QPMSolution`.

    Raises:
        ValueError: infeasible sizes, non-finite inputs, shape mismatches, unknown solver or Gurobi settings.
        RuntimeError: when ``solver="gurobi"`` and Gurobi cannot solve a model of this size.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers are {SOLVERS}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be positive seconds or None; got {time_limit!r}")
    if rounds is not None and not (isinstance(rounds, int) and rounds >= 0):
        raise ValueError(f"rounds must be a non-negative int or None; got {rounds!r}")
    grb_settings = gurobi_settings(gurobi, time_limit)  # checks the name
    a, r, bb = check_problem(A, R, b)
    n_f, n_c = a.shape
    check_sizes(n_f, n_c, n_selected, n_per_class)
    if isinstance(r_threshold, ThresholdResult):
        r_threshold = r_threshold.threshold
    if r_threshold is not None:
        if np.isnan(r_threshold):
            raise ValueError("r_threshold is NaN; pass a number, a ThresholdResult, or None for no penalty")
        r_threshold = None if r_threshold == np.inf else float(r_threshold)
    scale = 1000.0 / (n_c * n_per_class)
    inst = Instance(a=scale * a, p=penalty_matrix(r, r_threshold), b=np.zeros(n_f) if bb is None else bb,
                    n_selected=int(n_selected), n_per_class=int(n_per_class))
    start = time.monotonic()
    used = _pick_auto(inst) if solver == "auto" else solver
    if used == "gurobi" and solver == "gurobi":  # "auto" has already checked the licence
        ok, reason = gurobi_fits(*model_size(inst))
        if not ok:
            raise RuntimeError(f"{reason}. Use solver='open' (no licence needed) or solver='auto'.")
    solve = functools.partial(_open, rounds=rounds) if used == "open" else SOLVER_FUNCTIONS[used]
    sel, assignment, value, bound, history, params = solve(inst, time_limit, seed, verbose, grb_settings)
    runtime = time.monotonic() - start
    objective = qpm_objective(a, r, sel, assignment, r_threshold=r_threshold, b=bb)
    if abs(objective - value) > 1e-6 * max(1.0, abs(objective)):
        raise RuntimeError(f"internal error: solver {used} reported {value}, recomputed objective {objective}")
    if bound is not None:
        bound = max(bound, objective)  # absorbs solver round-off (Gurobi's ObjBound within its tolerance)
    gap = None if bound is None else (bound - objective) / max(abs(objective), 1e-12)
    return QPMSolution(selected=np.asarray(sel, dtype=np.int64), assignment=np.asarray(assignment, dtype=bool),
                       objective=objective, bound=bound, gap=gap, solver=used, runtime=runtime,
                       history=history, r_threshold=r_threshold, solver_settings=params)


def selection_summary(solution: QPMSolution, A) -> pd.DataFrame:
    """One row per class: its assigned features and their A values (for the results chapters).

    Args:
        solution: a :class:`QPMSolution`.
        A: (N_f, N_c) the matrix the solution was computed from.

    Returns:
        DataFrame with columns ``class``, ``features`` (tuple of feature indices, ascending), ``A`` (tuple of
        A values, same order) and ``A_sum``.
    """
    a = np.asarray(A.detach().cpu().numpy() if hasattr(A, "detach") else A, dtype=np.float64)
    rows = []
    for c, row in enumerate(solution.assignment):
        feats = solution.selected[row]
        vals = a[feats, c]
        rows.append({"class": c, "features": tuple(int(f) for f in feats),
                     "A": tuple(float(v) for v in vals), "A_sum": float(vals.sum())})
    return pd.DataFrame(rows)
