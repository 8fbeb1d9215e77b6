"""Argument checks shared by the QP modules."""

from __future__ import annotations

from math import comb

import numpy as np


def as_float_array(x, name: str, ndim: int | None = None) -> np.ndarray:
    """Return ``x`` (numpy or torch) as a finite float64 array, or raise ValueError naming ``name``."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; clean the input (e.g. features with zero variance)")
    return arr


def check_problem(A, R, b=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate A (N_f, N_c), R (N_f, N_f) and optional b (N_f,); return float64 copies."""
    a = as_float_array(A, "A", ndim=2)
    r = as_float_array(R, "R", ndim=2)
    if r.shape != (a.shape[0], a.shape[0]):
        raise ValueError(f"R must have shape (N_f, N_f) = {(a.shape[0], a.shape[0])} to match A {a.shape}; "
                         f"got {r.shape}")
    bb = None
    if b is not None:
        bb = as_float_array(b, "b", ndim=1)
        if bb.shape[0] != a.shape[0]:
            raise ValueError(f"b must have shape (N_f,) = ({a.shape[0]},) to match A {a.shape}; got {bb.shape}")
    return a, r, bb


def check_sizes(n_features: int, n_classes: int, n_selected: int, n_per_class: int) -> None:
    """Raise ValueError with the reason when the selection sizes admit no feasible solution (§1.5, §1.7)."""
    for name, val in (("n_selected", n_selected), ("n_per_class", n_per_class)):
        if int(val) != val or val <= 0:
            raise ValueError(f"{name} must be a positive integer; got {val!r}")
    if n_selected > n_features:
        raise ValueError(f"n_selected={n_selected} exceeds the number of features N_f={n_features}")
    if n_per_class > n_selected:
        raise ValueError(f"n_per_class={n_per_class} exceeds n_selected={n_selected}: a class cannot use "
                         "more features than are selected")
    n_sets = comb(n_selected, n_per_class)
    if n_sets < n_classes:
        raise ValueError(f"only C({n_selected}, {n_per_class}) = {n_sets} distinct feature sets exist for "
                         f"{n_classes} classes; increase n_selected or change n_per_class")
