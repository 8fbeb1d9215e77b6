"""The QP inputs: feature-class correlation A and feature-feature similarity R (reference_spec §1.2-1.3)."""

from __future__ import annotations

import numpy as np

from ._checks import as_float_array


def qpm_matrices(features, labels) -> tuple[np.ndarray, np.ndarray]:
    """Build the QP matrices A and R from pooled dense features (reference_spec §1.2-1.3).

    ``A[d, c]`` is the Pearson correlation between feature d and the one-hot indicator of class c over all
    samples, with population standard deviations and the denominator guarded by ``max(std_d * std_c, 1e-10)``;
    then ``A /= max|A|``. ``R`` is the cosine similarity between rows of A (row norms clamped at 1e-8), then
    ``R /= max|R|`` (a no-op unless every row is zero, since the diagonal is 1).

    Args:
        features: (N, N_f) float array or tensor, one pooled feature vector per training sample.
        labels: (N,) int array or tensor of 0-based class indices; classes are ``0 .. labels.max()``.

    Returns:
        ``(A, R)``: float64 arrays of shapes (N_f, N_c) and (N_f, N_f).

    Raises:
        ValueError: for mismatched lengths, non-finite features, negative labels or fewer than 2 samples.
    """
    x = as_float_array(features, "features", ndim=2)  # (N, N_f)
    y = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match features {x.shape}; got {y.shape}")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 samples to compute correlations")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"labels must be 0-based class indices >= 0; found {y.min()}")
    n_classes = int(y.max()) + 1
    onehot = np.zeros((x.shape[0], n_classes))  # (N, N_c)
    onehot[np.arange(x.shape[0]), y] = 1.0
    xc = x - x.mean(axis=0)
    yc = onehot - onehot.mean(axis=0)
    cov = xc.T @ yc / x.shape[0]  # (N_f, N_c)
    denom = np.maximum(np.outer(x.std(axis=0), onehot.std(axis=0)), 1e-10)
    a = cov / denom
    a_max = np.abs(a).max()
    if a_max > 0:
        a = a / a_max
    norms = np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-8)  # (N_f, 1)
    unit = a / norms
    r = unit @ unit.T  # (N_f, N_f)
    r_max = np.abs(r).max()
    if r_max > 0:
        r = r / r_max
    return a, r
