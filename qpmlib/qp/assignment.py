"""Best class-to-feature assignment for a fixed selection, with the no-duplicate rule (reference_spec §1.7)."""

from __future__ import annotations

import heapq
from math import comb

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching


def top_k_assignment(values: np.ndarray, k: int) -> np.ndarray:
    """Give every class its k largest entries, ignoring duplicates.

    Args:
        values: (N_c, n) float array, the (scaled) A of the selected features, one row per class.
        k: features per class.

    Returns:
        (N_c, n) bool array with exactly k True per row (ties broken by the lower column).
    """
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]  # (N_c, k)
    out = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=1)
    return out


def _best_subsets(row: np.ndarray, k: int, m: int) -> list[tuple[float, tuple[int, ...]]]:
    """The m best k-subsets of ``row`` by sum, best first, by best-first search over sorted ranks."""
    order = np.argsort(-row, kind="stable")
    vals = row[order]
    start = tuple(range(k))
    heap = [(-float(vals[:k].sum()), start)]
    seen = {start}
    out = []
    while heap and len(out) < m:
        neg, ranks = heapq.heappop(heap)
        out.append((-neg, tuple(sorted(int(order[r]) for r in ranks))))
        for i in range(k):
            nxt = ranks[i] + 1
            if nxt < len(row) and (i == k - 1 or nxt < ranks[i + 1]):
                child = ranks[:i] + (nxt,) + ranks[i + 1:]
                if child not in seen:
                    seen.add(child)
                    heapq.heappush(heap, (neg + float(vals[ranks[i]] - vals[nxt]), child))
    return out


def has_duplicate_rows(assignment: np.ndarray) -> bool:
    """True when two classes (rows) of a bool (N_c, n) assignment are identical."""
    return len(np.unique(np.asarray(assignment, dtype=bool), axis=0)) < len(assignment)


def best_distinct_assignment(values: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exactly maximise the assigned sum with k features per class and no two classes equal (§1.7).

    If every class's top-k set is already unique this is the answer. Otherwise it is a maximum-weight matching
    between classes and k-subsets in which each class is offered its ``N_c`` best subsets, which suffices: if an
    optimal matching gave class c a subset outside that list, at most ``N_c - 1`` of the listed subsets are used
    by other classes, so c could move to a free listed subset without losing value. That matching is solved
    exactly with ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (on the demo's QP, with 20 of 64
    features selected, about twice as fast as a dense assignment over all C(20, 5) = 15,504 subsets, with the
    same result on all of its 33 dense models).

    Args:
        values: (N_c, n) float array of per-class values of the n selected features.
        k: features per class; requires ``C(n, k) >= N_c``.

    Returns:
        ``(assignment, total)``: (N_c, n) bool array and its summed value.
    """
    n_classes, n = values.shape
    top = top_k_assignment(values, k)
    if not has_duplicate_rows(top):
        return top, float(values[top].sum())
    m = min(n_classes, comb(n, k))
    column_of: dict[tuple[int, ...], int] = {}
    rows, cols, weights = [], [], []
    for c in range(n_classes):
        for val, subset in _best_subsets(values[c], k, m):
            rows.append(c)
            cols.append(column_of.setdefault(subset, len(column_of)))
            weights.append(val)
    w = np.asarray(weights)
    cost = (w.max() - w) + 1.0  # strictly positive: the sparse matcher treats stored zeros as edges too
    graph = csr_matrix((cost, (rows, cols)), shape=(n_classes, len(column_of)))
    _, match = min_weight_full_bipartite_matching(graph)
    subsets = list(column_of)
    out = np.zeros((n_classes, n), dtype=bool)
    for c in range(n_classes):
        out[c, list(subsets[match[c]])] = True
    return out, float(values[out].sum())
