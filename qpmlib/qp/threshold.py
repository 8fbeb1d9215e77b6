"""Clique-based choice of the R-penalty threshold (reference_spec §1.6).

The threshold t decides which feature pairs are penalised (``R[i, j] >= t``) while guaranteeing that some
``n_selected`` features are pairwise below it: a clique of that size in the "allowed" graph, which also serves
as a warm start.

**Scale mismatch (reference_spec §1.6, §10 row 3).** In the DINO-QPM reference code the diagonal of the full,
symmetric R is zeroed and the threshold is searched on ``C = R + R.T = 2R``, but the penalty is then tested on
R itself. The warm-start clique therefore only guarantees ``R < t/2`` on its pairs, and far fewer pairs reach
``R >= t`` (reference_spec reports 205 against 8,869 of 130,816 pairs on a synthetic CUB-sized instance). The
original QPM used the upper triangle of R with negatives clamped to 0, so ``C`` is the clamped R and both use
one scale. ``mode="dinoqpm"`` (default, the reference behaviour) and ``mode="qpm"`` reproduce the two.

Difference from the reference: the reference estimates clique sizes with a modified networkx
``large_clique_size`` and finds the final clique with networkx's Boppana-Halldorsson ``max_clique``. On a
512-node graph those calls take 6-30 s each here, so both steps use one vectorised greedy instead (grow a
maximal clique from a start node, always adding the candidate with most neighbours among the candidates;
several start nodes in decreasing degree order). Any clique it returns is a real clique; it may find one at a
slightly different threshold than the networkx routine would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import as_float_array

R_MODES = ("dinoqpm", "qpm")


@dataclass(frozen=True)
class ThresholdResult:
    """Outcome of :func:`r_threshold`.

    Attributes:
        threshold: penalise pairs with ``R[i, j] >= threshold`` (``inf`` if no clique was found, i.e. none).
        clique: sorted int array of at least ``n_selected`` features whose pairwise C values are below the
            threshold (the warm start of reference_spec §1.5).
        n_penalised: number of pairs i < j of the mode's R (clamped in "qpm" mode) with value >= threshold.
        mode: "dinoqpm" or "qpm".
    """

    threshold: float
    clique: np.ndarray
    n_penalised: int
    mode: str


def greedy_clique(adj: np.ndarray, target: int, max_starts: int) -> np.ndarray:
    """Largest of greedy maximal cliques from up to ``max_starts`` start nodes; stops once one has ``target``.

    Args:
        adj: (n, n) bool symmetric adjacency without self-loops.
        target: stop trying new start nodes once a clique of at least this size is found.
        max_starts: start nodes tried, in decreasing order of degree.

    Returns:
        Sorted int array of clique members (pairwise adjacent).
    """
    degree = adj.sum(axis=1)
    best = np.zeros(0, dtype=np.int64)
    for start in np.argsort(-degree, kind="stable")[:max_starts]:
        if degree[start] + 1 <= len(best):
            break  # later starts have even smaller degree: they cannot beat the best clique
        clique = [int(start)]
        cand = adj[start].copy()
        while cand.any():
            idx = np.flatnonzero(cand)
            inner = adj[np.ix_(idx, idx)].sum(axis=1)
            v = int(idx[np.argmax(inner)])
            clique.append(v)
            cand &= adj[v]
        if len(clique) > len(best):
            best = np.sort(np.asarray(clique, dtype=np.int64))
        if len(best) >= target:
            break
    return best


def _comparison_matrix(r: np.ndarray, mode: str) -> np.ndarray:
    r0 = r.copy()
    np.fill_diagonal(r0, 0.0)
    if mode == "dinoqpm":
        return r0 + r0.T  # = 2R for a symmetric R
    upper = np.maximum(np.triu(r0, k=1), 0.0)
    return upper + upper.T


def r_threshold(R, n_selected: int, *, mode: str = "dinoqpm", steps: int = 100,
                max_starts: int = 8) -> ThresholdResult:
    """Pick the penalty threshold with the clique search of reference_spec §1.6.

    Steps: build C (mode-dependent, see module docstring); start at the Turán index ``floor(m*)`` of the
    ascending sorted values of C, ``m* = n^2 (t - 2) / (t - 1)`` (t = n_selected), and step the threshold down
    in ``steps`` coarse steps of ``(m* - #zeros(C)) / steps`` indices, estimating the clique size of the
    allowed graph ``C < threshold`` each time; stop at the last threshold whose estimate is still >= t. Then
    step back up until a clique of size >= t is actually found; that threshold is returned.

    Args:
        R: (N_f, N_f) symmetric similarity matrix from :func:`qpm_matrices`.
        n_selected: target clique size t = N*_f (>= 2).
        mode: "dinoqpm" (reference, default) or "qpm" (original QPM).
        steps: number of coarse steps (reference: 100).
        max_starts: start nodes tried per clique search.

    Returns:
        A :class:`ThresholdResult`.

    Raises:
        ValueError: for an unknown mode, a non-square R or n_selected outside [2, N_f].
    """
    if mode not in R_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes are {R_MODES}")
    r = as_float_array(R, "R", ndim=2)
    n = r.shape[0]
    if r.shape[1] != n:
        raise ValueError(f"R must be square; got shape {r.shape}")
    if not 2 <= n_selected <= n:
        raise ValueError(f"n_selected must lie in [2, N_f={n}]; got {n_selected}")
    c = _comparison_matrix(r, mode)
    vals = np.sort(c.ravel())
    off = ~np.eye(n, dtype=bool)
    t = n_selected
    m_star = n * n * (t - 2) / (t - 1)
    i0 = min(int(np.floor(m_star)), n * n - 1)
    step = max((m_star - np.count_nonzero(c == 0)) / steps, 0.0)

    def threshold_at(k: int) -> float:
        return float(vals[max(i0 - int(np.floor(k * step)), 0)])

    k_final, last_edges = 0, -1
    for k in range(steps):
        adj = (c < threshold_at(k)) & off
        edges = int(adj.sum())
        if edges == last_edges:
            continue
        last_edges = edges
        size = len(greedy_clique(adj, t, max_starts=max_starts))
        if size < t:
            break
        k_final = k
        if size == t:
            break
    for k in range(k_final, -1, -1):
        thr = threshold_at(k)
        clique = greedy_clique((c < thr) & off, t, max_starts=4 * max_starts)
        if len(clique) >= t:
            break
    else:
        thr, clique = float("inf"), np.arange(t)
    tested = c if mode == "qpm" else r  # the reference tests the penalty on R, not on C = 2R (scale mismatch)
    n_pen = int(np.count_nonzero(np.triu(tested >= thr, k=1)))
    return ThresholdResult(threshold=thr, clique=clique, n_penalised=n_pen, mode=mode)
