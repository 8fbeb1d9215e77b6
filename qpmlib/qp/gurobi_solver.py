"""QPM with Gurobi: the linearised MILP of reference_spec §1.5 with lazily added no-duplicate cuts.

Formulation (W dropped, as §1.5 allows): binary s (N_f) and E (N_f, N_c), continuous y in [0, 1] per penalised
pair; maximise ``sum a*E - sum R~_ij y_ij + b.s`` subject to ``E[d, c] <= s_d``, ``sum_d E[d, c] = k`` for
every class, ``sum s = n`` and ``y_ij >= s_i + s_j - 1`` (y is pushed down to ``s_i s_j`` because R~ >= 0).
The no-duplicate rule of §1.7 enters as lazy constraints: whenever an incumbent gives classes c1 and c2 the
same feature set T, the cut ``sum_{d in T} (E[d, c1] + E[d, c2]) <= 2k - 1`` is added; it removes exactly the
solutions in which both classes use T, all of which are infeasible.

Settings (:data:`GUROBI_SETTINGS`): ``"reference"`` is what the reference's DINO configs set, ``MIPGap`` 5e-3 and
``TimeLimit`` 10,800 s (reference_spec §1.5, §4.2; every other parameter at Gurobi's default). The reference
applies the time limit to each ``optimize()`` call of its repair loop; here the no-duplicate rule is a lazy cut
inside one ``optimize()``, so the limit covers the whole solve. ``"exact"`` (``MIPGap`` 1e-6, no time limit)
certifies the optimum to round-off, as this book did before it followed the reference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .assignment import best_distinct_assignment
from .local_search import Instance, greedy_start


@dataclass(frozen=True)
class GurobiSettings:
    """Gurobi parameters of one solve."""

    mip_gap: float  # MIPGap: stop when (bound - incumbent) / |incumbent| is at most this
    time_limit: float | None  # TimeLimit in seconds for the whole solve; None: no limit


#: Named settings: "reference" (the DINO configs, reference_spec §1.5) and "exact" (certified optimum).
GUROBI_SETTINGS: dict[str, GurobiSettings] = {
    "reference": GurobiSettings(mip_gap=5e-3, time_limit=10_800.0),
    "exact": GurobiSettings(mip_gap=1e-6, time_limit=None),
}


def gurobi_settings(name: str | GurobiSettings = "reference", time_limit: float | None = None) -> GurobiSettings:
    """Resolve named settings, with an optional ``time_limit`` (seconds) that replaces theirs.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if isinstance(name, GurobiSettings):
        settings = name
    elif name in GUROBI_SETTINGS:
        settings = GUROBI_SETTINGS[name]
    else:
        raise ValueError(f"unknown Gurobi settings {name!r}; valid: {', '.join(GUROBI_SETTINGS)}")
    if time_limit is not None:
        settings = GurobiSettings(settings.mip_gap, float(time_limit))
    return settings


def model_size(inst: Instance) -> tuple[int, int]:
    """(variables, linear constraints) of the linearised model, before any lazy cut."""
    n_f, n_c = inst.a.shape
    n_pairs = int(np.count_nonzero(np.triu(inst.p, k=1)))
    return n_f + n_f * n_c + n_pairs, n_f * n_c + n_c + 1 + n_pairs


def gurobi_fits(n_vars: int, n_cons: int) -> tuple[bool, str]:
    """Check by trying a model of this size whether the installed Gurobi licence can solve it.

    Returns:
        ``(ok, reason)``; ``reason`` says why not (gurobipy missing, no licence, size-limited licence).
    """
    try:
        import gurobipy as gp
    except ImportError:
        return False, "gurobipy is not installed"
    try:
        with gp.Env(empty=True) as env:
            env.setParam("OutputFlag", 0)
            env.start()
            with gp.Model(env=env) as m:
                x = m.addMVar(n_vars, lb=0.0, ub=1.0)
                if n_cons:
                    rows = np.arange(n_cons)
                    mat = sp.csr_matrix((np.ones(n_cons), (rows, rows % n_vars)), shape=(n_cons, n_vars))
                    m.addMConstr(mat, x, "<", np.ones(n_cons))
                m.Params.TimeLimit = 1.0
                m.optimize()
    except gp.GurobiError as err:
        return False, f"Gurobi cannot solve a model of {n_vars} variables and {n_cons} constraints: {err}"
    return True, "ok"


def solve_gurobi(inst: Instance, *, settings: str | GurobiSettings = "reference", time_limit: float | None = None,
                 seed: int = 0, verbose: bool = False) -> tuple[np.ndarray, np.ndarray, float, float | None, dict]:
    """Solve the linearised model with Gurobi (raises ``gurobipy.GurobiError`` if the licence is too small).

    Args:
        inst: the scaled instance.
        settings: a name of :data:`GUROBI_SETTINGS` ("reference": MIPGap 5e-3, TimeLimit 10,800 s; "exact":
            MIPGap 1e-6, no limit) or a :class:`GurobiSettings`.
        time_limit: seconds; replaces the settings' TimeLimit when given.
        seed: Gurobi ``Seed``.
        verbose: Gurobi log on.

    Returns:
        ``(selected, assignment, objective, bound, params)``: numpy arrays, floats, and the ``MIPGap`` and
        ``TimeLimit`` read back from the solved model (Gurobi reports "no limit" as ``inf``). When the time limit
        ends the solve before any solution, the feasible greedy start is returned with ``bound`` None (a warning
        says so).
    """
    import gurobipy as gp
    from gurobipy import GRB

    chosen = gurobi_settings(settings, time_limit)
    n_f, n_c = inst.a.shape
    k, n = inst.n_per_class, inst.n_selected
    pi, pj = np.nonzero(np.triu(inst.p, k=1))
    with gp.Env(empty=True) as env:
        env.setParam("OutputFlag", int(verbose))
        env.start()
        with gp.Model("qpm", env=env) as m:
            s = m.addMVar(n_f, vtype=GRB.BINARY, name="s")
            e = m.addMVar((n_f, n_c), vtype=GRB.BINARY, name="E")
            y = m.addMVar(len(pi), lb=0.0, ub=1.0, name="y")
            m.addConstr(e <= s[:, None])
            m.addConstr(e.sum(axis=0) == k)
            m.addConstr(s.sum() == n)
            if len(pi):
                m.addConstr(y >= s[pi] + s[pj] - 1)
            m.setObjective((inst.a * e).sum() - inst.p[pi, pj] @ y + inst.b @ s, GRB.MAXIMIZE)
            m.Params.Seed = seed
            m.Params.MIPGap = chosen.mip_gap
            m.Params.LazyConstraints = 1
            if chosen.time_limit is not None:
                m.Params.TimeLimit = chosen.time_limit
            # a feasible start (the open solver's greedy selection, its exact distinct assignment): a time limit
            # then always ends with a solution, never with none (a busy machine or a short limit)
            start = greedy_start(inst)
            start_assignment, start_sum = best_distinct_assignment(inst.a[start].T, k)
            s_start, e_start = np.zeros(n_f), np.zeros((n_f, n_c))
            s_start[start] = 1.0
            e_start[start] = start_assignment.T
            s.Start, e.Start = s_start, e_start

            def add_cuts(model, where):
                if where != GRB.Callback.MIPSOL:
                    return
                sol = model.cbGetSolution(e) > 0.5  # (N_f, N_c)
                groups: dict[bytes, int] = {}
                for c in range(n_c):
                    key = np.packbits(sol[:, c]).tobytes()
                    if key in groups:
                        feats = np.flatnonzero(sol[:, c])
                        c1 = groups[key]
                        model.cbLazy(e[feats, c1].sum() + e[feats, c].sum() <= 2 * k - 1)
                    else:
                        groups[key] = c

            m.optimize(add_cuts)
            params = {"MIPGap": float(m.Params.MIPGap), "TimeLimit": float(m.Params.TimeLimit)}
            if m.SolCount == 0:  # stopped before it read even the start: the start is the answer, with no bound
                warnings.warn(f"Gurobi stopped (status {m.Status}) before it found a solution: the greedy start is "
                              "used, with no bound; raise qp.time_limit for a solved QP", stacklevel=2)
                value = start_sum + inst.b[start].sum() - np.triu(inst.p[np.ix_(start, start)], k=1).sum()
                return start, start_assignment, float(value), None, params
            sel = np.flatnonzero(s.X > 0.5)
            assignment = (e.X[sel] > 0.5).T  # (N_c, n)
            return sel, assignment, float(m.ObjVal), float(m.ObjBound), params
