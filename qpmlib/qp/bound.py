"""A certified upper bound for the QPM problem: Lagrangian relaxation of the per-class counts and pair products.

Validity (reference_spec §1.5, linearised form without W). Every feasible solution has binary s (N_f) with
``sum s = n``, binary E (N_f, N_c) with ``E[d, c] <= s_d``, ``sum_d E[d, c] = k`` for every class, no two
equal class columns, and ``y_p = s_i s_j`` for each penalised pair p = (i, j); its value is
``sum a*E - sum_p P_p y_p + b.s`` with ``a = scale * A`` and ``P_p = R~[i, j] >= 0``.
Take multipliers nu (N_c, any sign) and mu (one per pair, 0 <= mu_p <= P_p). Adding
``sum_c nu_c (k - sum_d E[d, c])`` (zero when feasible) and ``sum_p mu_p (y_p - s_i - s_j + 1)`` (equal to
``mu_p (1 - s_i)(1 - s_j) >= 0`` when feasible) can only increase the value. Then drop the per-class counts,
the no-duplicate rule and ``y_p = s_i s_j`` (keeping y_p in [0, 1]): y_p's coefficient ``mu_p - P_p <= 0``
makes y_p = 0 optimal, and given S each E[d, c] is 1 exactly when ``a[d, c] > nu_c``. Hence

    OPT <= L(nu, mu) = k sum_c nu_c + sum_p mu_p + (sum of the n largest v_d),
    v_d = b_d + sum_c max(0, a[d, c] - nu_c) - sum_{p containing d} mu_p.

L is convex and piecewise linear; its minimum equals the LP relaxation of the linearised MILP (the relaxed
problem over S has an integral polytope). Any (nu, mu) gives a valid bound, so the minimisation below (Polyak
subgradient steps, mu projected onto [0, P]) only affects tightness, never validity. Without penalty
(no pairs) mu is empty.
"""

from __future__ import annotations

import numpy as np

from .local_search import Instance


class LagrangianBound:
    """Minimise L(nu, mu) with Polyak subgradient steps, keeping the best (smallest) bound seen.

    Args:
        inst: the scaled instance.

    Attributes:
        best: smallest L found so far (a valid upper bound on the optimum).
        best_sel: (n,) the relaxed problem's selection at the best multipliers (a good primal start).
    """

    def __init__(self, inst: Instance):
        self.inst = inst
        self.pi, self.pj = np.nonzero(np.triu(inst.p, k=1))
        self.pv = inst.p[self.pi, self.pj]  # (n_pairs,)
        k = inst.n_per_class
        nu = 0.5 * -np.partition(-inst.a, k - 1, axis=0)[k - 1]  # half the best k-th value of each class
        self._cur = (nu, np.zeros(len(self.pv)))
        self._best_point = self._cur
        self.best, _, _, self.best_sel = self.value(*self._cur)
        self._theta = 1.0
        self._stall = 0

    def value(self, nu: np.ndarray, mu: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """L(nu, mu), its subgradients with respect to nu (N_c,) and mu (n_pairs,), and the selection (n,)."""
        inst = self.inst
        n, n_f = inst.n_selected, inst.a.shape[0]
        excess = inst.a - nu  # (N_f, N_c)
        v = np.maximum(excess, 0.0).sum(axis=1) + inst.b  # (N_f,)
        if len(mu):
            v = v - np.bincount(self.pi, mu, minlength=n_f) - np.bincount(self.pj, mu, minlength=n_f)
        top = np.argpartition(-v, n - 1)[:n] if n < n_f else np.arange(n_f)
        val = inst.n_per_class * float(nu.sum()) + float(mu.sum()) + float(v[top].sum())
        grad_nu = inst.n_per_class - (excess[top] > 0).sum(axis=0).astype(np.float64)
        in_s = np.zeros(n_f)
        in_s[top] = 1.0
        grad_mu = 1.0 - in_s[self.pi] - in_s[self.pj]
        return val, grad_nu, grad_mu, np.sort(top)

    def step(self, target: float, n_steps: int = 50) -> float:
        """Run ``n_steps`` subgradient steps toward ``target`` (a known feasible value); return the bound."""
        for _ in range(n_steps):
            nu, mu = self._cur
            val, g_nu, g_mu, sel = self.value(nu, mu)
            # a coordinate of mu at a bound whose step would leave [0, P] contributes nothing
            g_mu = np.where(((mu <= 0) & (g_mu > 0)) | ((mu >= self.pv) & (g_mu < 0)), 0.0, g_mu)
            if val < self.best - 1e-12 * max(1.0, abs(self.best)):
                self.best, self._best_point, self.best_sel = val, self._cur, sel
                self._stall = 0
            else:
                self._stall += 1
                if self._stall >= 20:
                    self._theta *= 0.5
                    self._stall = 0
                    self._cur = self._best_point
                    continue
            norm2 = float(g_nu @ g_nu + g_mu @ g_mu)
            if norm2 == 0:  # L is minimised here
                break
            size = self._theta * max(val - target, 1e-9 * max(1.0, abs(val))) / norm2
            self._cur = (nu - size * g_nu, np.clip(mu - size * g_mu, 0.0, self.pv))
        return self.best
