"""Licence-free QPM solver: swap local search over selections plus a Lagrangian upper bound (reference_spec §1.5).

The search runs over selections S of size n only: for fixed S each class's best assignment is its top-k
features (repaired exactly for duplicates by :func:`best_distinct_assignment`). Construction (greedy and the
Lagrangian relaxation's own selection) is followed by best-improvement swaps on the relaxed value h(S) and
iterated local search (random multi-swap perturbations, seeded). Where duplicates cost value, a second swap
search evaluates exact values, but only for swaps whose relaxed value could beat the incumbent (h is an upper
bound on the exact value of the same S). The bound is :class:`LagrangianBound` (validity proof there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from .assignment import best_distinct_assignment, has_duplicate_rows, top_k_assignment
from .bound import LagrangianBound
from .local_search import Instance, greedy_start, local_search, relaxed_value, swap_deltas


@dataclass
class OpenResult:
    """Raw result of :func:`solve_open` (objective in the units of reference_spec §1.5)."""

    selected: np.ndarray
    assignment: np.ndarray
    objective: float
    bound: float
    history: list = field(default_factory=list)


class _Evaluator:
    """Exact value of a selection (distinct assignment), cached by selection."""

    max_entries = 2_000  # about 10 kB each at CUB size

    def __init__(self, inst: Instance):
        self.inst = inst
        self.cache: dict[tuple[int, ...], tuple[float, np.ndarray]] = {}

    def __call__(self, sel: np.ndarray) -> tuple[float, np.ndarray]:
        key = tuple(int(i) for i in sel)
        if key not in self.cache:
            if len(self.cache) >= self.max_entries:
                self.cache.clear()
            inst = self.inst
            values = inst.a[sel].T  # (N_c, n)
            top = top_k_assignment(values, inst.n_per_class)
            if has_duplicate_rows(top):
                top, total = best_distinct_assignment(values, inst.n_per_class)
            else:
                total = float(values[top].sum())
            extra = -0.5 * float(inst.p[np.ix_(sel, sel)].sum()) + float(inst.b[sel].sum())
            self.cache[key] = (total + extra, top)
        return self.cache[key]


def _exact_improve(inst: Instance, evaluate: _Evaluator, sel: np.ndarray, deadline: float) -> np.ndarray:
    """Swap search on exact values, pruned by the relaxed value (only swaps with h(S') > exact(S))."""
    value, _ = evaluate(sel)
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        h = relaxed_value(inst, sel)
        if h <= value + 1e-9 * max(1.0, abs(value)):
            break  # no duplicate loss: the relaxed local search already covers this selection
        mask = np.zeros(inst.a.shape[0], dtype=bool)
        mask[sel] = True
        others = np.flatnonzero(~mask)
        delta = swap_deltas(inst, sel, others)
        flat = np.argsort(-delta, axis=None, kind="stable")
        for idx in flat:
            r, j = np.unravel_index(int(idx), delta.shape)
            if h + delta[r, j] <= value + 1e-9 * max(1.0, abs(value)) or time.monotonic() >= deadline:
                break
            cand = np.sort(np.concatenate([np.delete(sel, r), [others[j]]]))
            cand_value, _ = evaluate(cand)
            if cand_value > value + 1e-9 * max(1.0, abs(value)):
                sel, value, improved = cand, cand_value, True
                break
    return sel


def _perturb(rng: np.random.Generator, sel: np.ndarray, n_features: int) -> np.ndarray:
    """Swap between 1 and max(2, n/5) random selected features for random unselected ones."""
    others = np.setdiff1d(np.arange(n_features), sel)
    if len(others) == 0:
        return sel
    m = int(rng.integers(1, max(2, len(sel) // 5) + 1))
    m = min(m, len(sel), len(others))
    keep = np.delete(sel, rng.choice(len(sel), size=m, replace=False))
    return np.sort(np.concatenate([keep, rng.choice(others, size=m, replace=False)]))


def solve_open(inst: Instance, *, time_limit: float | None = None, seed: int = 0, verbose: bool = False,
               patience: int = 100, gap_tol: float = 1e-9, rounds: int | None = None) -> OpenResult:
    """Heuristic search with a certified bound; stops at a proven optimum, after ``patience`` rounds without
    improvement of incumbent or bound, after ``rounds`` rounds, or at ``time_limit`` seconds.

    Args:
        inst: the scaled instance.
        time_limit: wall-clock limit in seconds (None: stop by ``patience`` or certification only).
        seed: seeds the perturbations; the result is deterministic for a seed unless the time limit cuts in.
        verbose: show a plain-text progress bar with objective, bound and gap.
        patience: rounds (one perturbation + local search + 25 bound steps each) without improvement.
        gap_tol: stop when ``(bound - objective) <= gap_tol * max(1, |objective|)``.
        rounds: at most this many rounds after the construction (0: construction only); None: no cap. Unlike a
            time limit, a cap on rounds gives the same result on any machine and under any load.

    Returns:
        An :class:`OpenResult` with the best selection, its distinct assignment, objective and bound.
    """
    start = time.monotonic()
    deadline = start + (time_limit if time_limit is not None else np.inf)
    rng = np.random.default_rng(seed)
    evaluate = _Evaluator(inst)
    n_f = inst.a.shape[0]
    history: list[tuple[float, float, float]] = []

    def done(obj: float, bnd: float) -> bool:
        return bnd - obj <= gap_tol * max(1.0, abs(obj))

    best_sel, _ = local_search(inst, greedy_start(inst))
    best_val, _ = evaluate(best_sel)
    lagr = LagrangianBound(inst)
    lagr.step(best_val, 100)
    sel, _ = local_search(inst, lagr.best_sel)  # the Lagrangian heuristic: start from the relaxation's choice
    val, _ = evaluate(sel)
    if val > best_val:
        best_sel, best_val = sel, val
    best_sel = _exact_improve(inst, evaluate, best_sel, deadline)
    best_val, _ = evaluate(best_sel)
    bound = lagr.best
    history.append((time.monotonic() - start, best_val, bound))

    current, current_val = best_sel, best_val
    duplicates_matter = best_val < relaxed_value(inst, best_sel) - 1e-9 * max(1.0, abs(best_val))
    stale = 0
    with tqdm(desc="QPM open solver", disable=not verbose, unit="round", mininterval=1.0) as bar:
        while (not done(best_val, bound) and stale < patience and time.monotonic() < deadline
               and (rounds is None or len(history) <= rounds)):
            sel = _perturb(rng, current, n_f)
            if not duplicates_matter or rng.random() < 0.5:
                sel, h = local_search(inst, sel)
            else:  # where duplicates cost value, also search exact values straight from the perturbed point
                h = relaxed_value(inst, sel)
            val, _ = evaluate(sel)
            if val < h - 1e-9 * max(1.0, abs(h)):
                duplicates_matter = True
                sel = _exact_improve(inst, evaluate, sel, deadline)
                val, _ = evaluate(sel)
            if val >= current_val - 1e-12 * max(1.0, abs(current_val)):
                current, current_val = sel, val
            old_bound = bound
            bound = min(bound, lagr.step(max(best_val, val), 25))
            if val > best_val + 1e-12 * max(1.0, abs(best_val)):
                best_sel, best_val, stale = sel, val, 0
            elif bound < old_bound - 1e-6 * max(1.0, abs(old_bound)):
                stale = 0
            else:
                stale += 1
            if stale and stale % 20 == 10:  # restart from the incumbent, then from a random selection
                current, current_val = best_sel, best_val
            elif stale and stale % 20 == 0:
                current = np.sort(rng.choice(n_f, size=inst.n_selected, replace=False))
                current_val = evaluate(current)[0]
            history.append((time.monotonic() - start, best_val, bound))
            bar.update(1)
            bar.set_postfix(obj=f"{best_val:.4f}", bound=f"{bound:.4f}",
                            gap=f"{(bound - best_val) / max(abs(best_val), 1e-12):.2e}")
    best_val, assignment = evaluate(best_sel)
    if bound < best_val - 1e-7 * max(1.0, abs(best_val)):
        raise RuntimeError(f"internal error: bound {bound} below a feasible objective {best_val}")
    return OpenResult(selected=best_sel, assignment=assignment, objective=best_val,
                      bound=max(bound, best_val), history=history)
