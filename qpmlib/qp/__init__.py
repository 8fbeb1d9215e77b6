"""QP feature selection (reference_spec §1): matrices A and R, the objective, the penalty threshold, solvers.

Chapter-facing names: :func:`qpm_matrices`, :func:`qpm_objective`, :func:`r_threshold`
(:class:`ThresholdResult`), :func:`solve_qpm` (:class:`QPMSolution`), :func:`selection_summary`,
:func:`penalised_pairs`, :func:`r_tilde`. ``solve_qpm(solver=...)`` accepts :data:`SOLVERS` and
``solve_qpm(gurobi=...)`` a name of :data:`GUROBI_SETTINGS`; the solvers themselves sit in the registry
:data:`SOLVER_FUNCTIONS` and all return a :class:`SolverOutput`.
"""

from .gurobi_solver import GUROBI_SETTINGS
from .matrices import qpm_matrices
from .objective import penalised_pairs, qpm_objective, r_tilde
from .solve import SOLVER_FUNCTIONS, SOLVERS, QPMSolution, SolverOutput, selection_summary, solve_qpm
from .threshold import R_MODES, ThresholdResult, r_threshold

__all__ = ["qpm_matrices", "qpm_objective", "penalised_pairs", "r_tilde", "r_threshold", "ThresholdResult",
           "R_MODES", "solve_qpm", "QPMSolution", "SOLVERS", "SOLVER_FUNCTIONS", "SolverOutput", "GUROBI_SETTINGS",
           "selection_summary"]
