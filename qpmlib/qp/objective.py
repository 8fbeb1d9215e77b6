"""The QP objective of reference_spec §1.5 and its penalty term."""

from __future__ import annotations

import numpy as np

from ._checks import check_problem


def r_tilde(R: np.ndarray) -> np.ndarray:
    """Rescale R to [0, 1] as the reference does before penalising (reference_spec §1.5).

    The diagonal is zeroed, then ``R~ = (R - m) / max(R - m)`` with ``m`` the smallest non-zero entry.

    Args:
        R: (N_f, N_f) float array.

    Returns:
        (N_f, N_f) float64 array with values in [0, 1] off the diagonal.
    """
    r = np.array(R, dtype=np.float64)
    np.fill_diagonal(r, 0.0)
    nonzero = r[r != 0]
    if nonzero.size == 0:
        return np.zeros_like(r)
    shifted = r - nonzero.min()
    top = shifted.max()
    return shifted / top if top > 0 else np.zeros_like(r)


def penalised_pairs(R: np.ndarray, r_threshold: float | None) -> np.ndarray:
    """The disallowed pairs P = {(i, j): i < j, R[i, j] >= r_threshold} of reference_spec §1.6 step 6.

    Args:
        R: (N_f, N_f) float array.
        r_threshold: the threshold; None means no penalty (empty set).

    Returns:
        (n_pairs, 2) int64 array of ``(i, j)`` with ``i < j``, in row-major order.
    """
    r = np.asarray(R, dtype=np.float64)
    if r_threshold is None:
        return np.zeros((0, 2), dtype=np.int64)
    i, j = np.nonzero(np.triu(r >= r_threshold, k=1))
    return np.stack([i, j], axis=1).astype(np.int64)


def penalty_matrix(R: np.ndarray, r_threshold: float | None) -> np.ndarray:
    """Symmetric matrix with R~[i, j] on penalised pairs and 0 elsewhere (zero diagonal).

    Args:
        R: (N_f, N_f) float array.
        r_threshold: the threshold of :func:`penalised_pairs`; None gives the zero matrix.

    Returns:
        (N_f, N_f) float64 array; the penalty of a selection S is half the sum of its S x S block.
    """
    r = np.asarray(R, dtype=np.float64)
    out = np.zeros_like(r)
    pairs = penalised_pairs(r, r_threshold)
    if len(pairs):
        rt = r_tilde(r)
        out[pairs[:, 0], pairs[:, 1]] = rt[pairs[:, 0], pairs[:, 1]]
        out[pairs[:, 1], pairs[:, 0]] = rt[pairs[:, 0], pairs[:, 1]]
    return out


def qpm_objective(A, R, selected, assignment, *, r_threshold: float | None = None, b=None) -> float:
    """Evaluate the QPM objective Z of reference_spec §1.5 for a selection and assignment.

    ``Z = 1000 / (N_c * N^c_f) * sum_{(d, c) assigned} A[d, c] - sum_{i<j in S, R[i,j] >= t} R~[i, j]
    + sum_{d in S} b_d``, with N^c_f read from the assignment (each row must hold the same count).

    Args:
        A: (N_f, N_c) float array.
        R: (N_f, N_f) float array.
        selected: (n_selected,) int indices into the features, sorted ascending.
        assignment: (N_c, n_selected) bool array; column j belongs to feature ``selected[j]``.
        r_threshold: penalise selected pairs with ``R >= r_threshold``; None disables the penalty.
        b: optional (N_f,) per-feature bias added for every selected feature.

    Returns:
        The objective value as a Python float.

    Raises:
        ValueError: for shape mismatches, unsorted or repeated indices, or rows with unequal counts.
    """
    a, r, bb = check_problem(A, R, b)
    sel = np.asarray(selected)
    if sel.ndim != 1 or not np.issubdtype(sel.dtype, np.integer):
        raise ValueError(f"selected must be a 1-d int array; got dtype {sel.dtype}, shape {sel.shape}")
    if len(sel) and (sel.min() < 0 or sel.max() >= a.shape[0]):
        raise ValueError(f"selected indices must lie in [0, {a.shape[0]}); got range [{sel.min()}, {sel.max()}]")
    if np.any(np.diff(sel) <= 0):
        raise ValueError("selected must be sorted ascending without repeats")
    w = np.asarray(assignment)
    if w.shape != (a.shape[1], len(sel)):
        raise ValueError(f"assignment must have shape (N_c, n_selected) = {(a.shape[1], len(sel))}; got {w.shape}")
    w = w.astype(bool)
    counts = w.sum(axis=1)
    if len(counts) == 0 or counts.min() != counts.max() or counts[0] == 0:
        raise ValueError(f"every class must be assigned the same positive number of features; got counts "
                         f"from {counts.min() if len(counts) else 0} to {counts.max() if len(counts) else 0}")
    scale = 1000.0 / (a.shape[1] * int(counts[0]))
    value = scale * float(np.sum(a[sel].T[w]))
    if r_threshold is not None:
        p = penalty_matrix(r, r_threshold)
        value -= 0.5 * float(p[np.ix_(sel, sel)].sum())
    if bb is not None:
        value += float(bb[sel].sum())
    return value
