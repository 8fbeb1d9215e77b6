"""Fast evaluation and swap local search over selections S, for the open solver (reference_spec §1.5).

For a fixed selection S the best assignment (ignoring duplicates) gives each class its k largest scaled A
values in S, so the search runs over subsets only. The function searched is the relaxed value
``h(S) = sum_c topk_c(a[S, c]) - penalty(S) + b(S)``, which is an upper bound on the true value of S (the
no-duplicate rule can only lower it) and equals it when the top-k sets are distinct.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Instance:
    """A scaled QPM instance: a = scale * A (N_f, N_c), symmetric penalty matrix p (N_f, N_f), bias b (N_f,)."""

    a: np.ndarray
    p: np.ndarray
    b: np.ndarray
    n_selected: int
    n_per_class: int

    @property
    def has_penalty(self) -> bool:
        return bool(np.any(self.p))


def relaxed_value(inst: Instance, sel: np.ndarray) -> float:
    """h(S): per-class top-k sum of a[S] minus the pair penalty plus b (duplicates allowed)."""
    k = inst.n_per_class
    vals = inst.a[sel]  # (n, N_c)
    top = -np.partition(-vals, k - 1, axis=0)[:k]  # (k, N_c)
    pen = 0.5 * inst.p[np.ix_(sel, sel)].sum()
    return float(top.sum() - pen + inst.b[sel].sum())


def greedy_start(inst: Instance) -> np.ndarray:
    """Add features one at a time by marginal gain of h, with missing top-k slots counted as 0."""
    k, n_f = inst.n_per_class, inst.a.shape[0]
    kth = np.zeros(inst.a.shape[1])  # k-th best value per class so far (0 while fewer than k)
    chosen: list[int] = []
    q = np.zeros(n_f)  # penalty of each feature against the chosen ones
    free = np.ones(n_f, dtype=bool)
    for _ in range(inst.n_selected):
        gain = np.maximum(inst.a - kth, 0.0).sum(axis=1) - q + inst.b
        gain[~free] = -np.inf
        d = int(np.argmax(gain))
        chosen.append(d)
        free[d] = False
        q += inst.p[d]
        if len(chosen) >= k:
            kth = -np.partition(-inst.a[chosen], k - 1, axis=0)[k - 1]
    return np.sort(np.asarray(chosen))


def swap_deltas(inst: Instance, sel: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Change of h for every swap (remove sel[r], add others[j]), as an (n, N_f - n) array.

    With t_k and t_{k+1} the k-th and (k+1)-th best values of class c in S: removing a top-k member r costs
    a[r, c] - t_{k+1} and leaves t_{k+1} as the bar a new feature must beat; removing any other member costs 0
    and leaves the bar at t_k. Adding feature j then gains max(0, a[j, c] - bar). When n == k every member is
    in every top-k, so the change is simply sum_c (a[j, c] - a[r, c]).
    """
    k = inst.n_per_class
    a_s, a_o = inst.a[sel], inst.a[others]  # (n, N_c), (m, N_c)
    if len(sel) == k:
        delta = a_o.sum(axis=1)[None, :] - a_s.sum(axis=1)[:, None]
    else:
        part = -np.partition(-a_s, (k - 1, k), axis=0)
        t_k, t_k1 = part[k - 1], part[k]  # (N_c,)
        order = np.argsort(-a_s, axis=0, kind="stable")[:k]  # (k, N_c) members of the top-k
        in_top = np.zeros(a_s.shape, dtype=bool)
        np.put_along_axis(in_top, order, True, axis=0)
        loss = np.where(in_top, a_s - t_k1, 0.0).sum(axis=1)  # (n,)
        bar = np.where(in_top, t_k1, t_k)  # (n, N_c)
        delta = np.empty((len(sel), len(others)))
        for r in range(len(sel)):
            delta[r] = np.maximum(a_o - bar[r], 0.0).sum(axis=1) - loss[r]
    q = inst.p[:, sel].sum(axis=1)  # (N_f,) penalty of each feature against S
    delta += q[sel][:, None] - (q[others][None, :] - inst.p[np.ix_(sel, others)])
    delta += inst.b[others][None, :] - inst.b[sel][:, None]
    return delta


def local_search(inst: Instance, sel: np.ndarray, *, tol: float = 1e-9) -> tuple[np.ndarray, float]:
    """Best-improvement swap search on h from ``sel`` until no swap improves h by more than ``tol``.

    Returns:
        ``(selection, h)``: the locally optimal sorted selection and its relaxed value.
    """
    sel = np.sort(np.asarray(sel))
    mask = np.zeros(inst.a.shape[0], dtype=bool)
    mask[sel] = True
    while True:
        others = np.flatnonzero(~mask)
        if len(others) == 0:
            break
        delta = swap_deltas(inst, sel, others)
        r, j = np.unravel_index(int(np.argmax(delta)), delta.shape)
        if delta[r, j] <= tol * max(1.0, abs(relaxed_value(inst, sel))):
            break
        mask[sel[r]] = False
        mask[others[j]] = True
        sel = np.flatnonzero(mask)
    return sel, relaxed_value(inst, sel)
