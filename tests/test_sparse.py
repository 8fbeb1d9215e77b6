"""Tests for qpmlib.sparse: SLDD selection and weights, QSENN ternary head, the methods' constants."""

import dataclasses

import numpy as np
import pytest

from qpmlib import sparse
from qpmlib.glm import GLMPath, GLMPathEntry, elastic_net_path
from qpmlib.sparse import (
    QSENN,
    SLDD,
    pick_sldd_entry,
    qsenn_bias,
    qsenn_schedule,
    qsenn_weights,
    sldd_select,
    sldd_selection_order,
    sldd_weights,
    standardise,
    ternarise,
    train_val_split,
)

FAST = dataclasses.replace(SLDD, n_lambdas=25)  # shorter paths keep the file fast; the rules are unchanged
FAST_QSENN = dataclasses.replace(QSENN, n_lambdas=25)


def _features(n_per_class=20, n_classes=5, d=16, informative=(2, 5, 9, 13), seed=0):
    """Non-negative features (like post-ReLU ones); only `informative` columns depend on the class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    means = np.zeros((n_classes, d))
    means[:, list(informative)] = rng.normal(size=(n_classes, len(informative))) * 2.5
    X = np.maximum(means[y] + 3.0 + rng.normal(size=(len(y), d)), 0.0)
    return X, y


# ---------------------------------------------------------------------------- helpers


def test_standardise_is_idempotent_and_uses_population_std():
    X, _ = _features()
    Z, mean, std = standardise(X)
    assert np.allclose(std, X.std(axis=0, ddof=0))
    assert np.allclose(Z.mean(0), 0) and np.allclose(Z.std(0), 1)
    assert np.allclose(standardise(Z)[0], Z)
    const = np.ones((4, 2))
    assert np.array_equal(standardise(const)[0], np.zeros((4, 2)))  # sigma clamped, no NaN


def test_train_val_split_sizes_and_seed():
    tr, va = train_val_split(105, 0.1, seed=3)
    assert len(va) == 10 and len(tr) == 95
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(105))
    assert np.array_equal(va, train_val_split(105, 0.1, seed=3)[1])
    assert not np.array_equal(va, train_val_split(105, 0.1, seed=4)[1])


# ---------------------------------------------------------------------------- SLDD selection


def test_sldd_select_finds_informative_features():
    X, y = _features()
    selected = sldd_select(X, y, 4, seed=0)
    assert selected.tolist() == [2, 5, 9, 13]


def test_sldd_selection_order_is_deterministic():
    X, y = _features()
    order = sldd_selection_order(X, y, 6, seed=1)
    assert len(order) == 6 and len(set(order.tolist())) == 6
    assert set(order[:4].tolist()) == {2, 5, 9, 13}  # informative features enter first
    assert np.array_equal(order, sldd_selection_order(X, y, 6, seed=1))
    assert np.array_equal(sldd_select(X, y, 6, seed=1), np.sort(order))


def test_sldd_selection_falls_back_when_the_sweep_ends():
    X, y = _features(d=6, informative=(1, 4))
    X[:, [0, 5]] = 2.0  # constant columns never enter the path (zero gradient after standardising)
    order = sldd_selection_order(X, y, 6, seed=0, settings=FAST)
    assert sorted(order.tolist()) == list(range(6))
    assert set(order[:2].tolist()) == {1, 4} and set(order[-2:].tolist()) == {0, 5}


def test_sldd_select_rejects_bad_n_select():
    X, y = _features()
    with pytest.raises(ValueError, match="n_select"):
        sldd_select(X, y, 17)


# ---------------------------------------------------------------------------- SLDD weights


def _entry(nnz, n_classes=5, d=8):
    w = np.zeros(n_classes * d)
    w[:nnz] = 1.0
    return GLMPathEntry(lam=1.0, weight=w.reshape(n_classes, d), bias=np.zeros(n_classes),
                        train_acc=0.0, val_acc=None, nnz=nnz, n_iter=1, converged=True)


def test_pick_sldd_entry_densest_below_limit():
    # 5 classes, 2 per class / 0.5 -> at most 4 per class on average -> nnz <= 20
    path = GLMPath(entries=[_entry(k) for k in (0, 10, 18, 18, 25, 40)], lambda_max=1.0, alpha=0.99, group=False)
    assert pick_sldd_entry(path, 2) == 3  # densest is 18; the tie goes to the later entry
    assert pick_sldd_entry(path, 1) == 1  # limit 10
    with pytest.raises(ValueError, match="non-zeros per class"):
        pick_sldd_entry(GLMPath(entries=[_entry(30)], lambda_max=1.0, alpha=0.99, group=False), 1)


def test_sldd_weights_keeps_top_k_of_the_chosen_entry():
    X, y = _features(d=8, informative=(0, 1, 2, 3, 4, 5, 6, 7))
    n_per_class = 2
    W, b = sldd_weights(X, y, n_per_class, seed=0, settings=FAST)
    assert W.shape == (5, 8) and b.shape == (5,) and W.dtype == np.float32
    assert int((W != 0).sum()) == 5 * n_per_class
    # recompute the path independently and check which entry and which weights were kept
    Z, _, _ = standardise(X)
    tr, va = train_val_split(len(y), 0.1, seed=0)
    path = elastic_net_path(Z[tr], y[tr], alpha=0.99, n_lambdas=FAST.n_lambdas, X_val=Z[va], y_val=y[va])
    ok = [i for i, e in enumerate(path.entries) if e.nnz / 5 <= n_per_class / 0.5]
    chosen = path[max(ok, key=lambda i: (path[i].nnz, i))]
    kept = W != 0
    assert np.allclose(W[kept], chosen.weight[kept], atol=1e-6)
    assert np.abs(chosen.weight[~kept]).max() <= np.abs(chosen.weight[kept]).min()
    assert np.allclose(b, chosen.bias, atol=1e-6)
    assert np.array_equal(W, sldd_weights(X, y, n_per_class, seed=0, settings=FAST)[0])


# ---------------------------------------------------------------------------- QSENN


def test_ternarise_hand_values():
    w = np.array([[0.5, -0.2, 0.1], [0.05, -0.4, 0.3]])
    # magnitudes .5 .4 .3 | .2 ... -> cut (0.3 + 0.2) / 2; kept mean |w| = 0.4
    expected = np.array([[0.4, 0.0, 0.0], [0.0, -0.4, 0.4]])
    assert np.allclose(ternarise(w, 3), expected)
    # a tie at the k-th place: cut = 0.3 and only weights strictly above it survive
    assert np.allclose(ternarise(np.array([[0.5, 0.3, -0.3]]), 2), [[0.5, 0.0, 0.0]])
    # k beyond the non-zeros keeps every non-zero
    assert np.allclose(ternarise(np.array([[2.0, 0.0, -1.0]]), 3), [[1.5, 0.0, -1.5]])


def test_qsenn_bias_hand_values():
    W = np.array([[1, 1, 0], [1, -1, 0], [-1, -1, -1]], dtype=float)  # n = 2, 0, -3
    b = np.array([0.5, -2.0, 1.0])  # max |b| = 2
    # spread n - min n = 5, 3, 0; b_c = 2 - spread * 4 / 5
    assert np.allclose(qsenn_bias(W, b), [-2.0, -0.4, 2.0])
    assert np.allclose(qsenn_bias(np.eye(3), b), [2.0, 2.0, 2.0])  # equal n: constant bias, no NaN


def test_qsenn_weights_are_ternary_with_bias_rule():
    X, y = _features(d=8, informative=(0, 1, 2, 3, 4, 5, 6, 7))
    W, b = qsenn_weights(X, y, 2, seed=0, settings=FAST_QSENN)
    values = np.unique(np.abs(W[W != 0]))
    assert len(values) == 1 and int((W != 0).sum()) == 10
    n = (W > 0).sum(1) - (W < 0).sum(1)
    big = np.abs(b).max()
    assert b[np.argmin(n)] == pytest.approx(big) and b[np.argmax(n)] == pytest.approx(-big)
    assert np.array_equal(W, qsenn_weights(X, y, 2, seed=0, settings=FAST_QSENN)[0])


# ---------------------------------------------------------------------------- settings


def test_qsenn_schedule_variants():
    assert qsenn_schedule(25, 5e-3) == [(25, 5e-3)] * 4
    intended = qsenn_schedule(25, 5e-3, variant="qsenn")
    assert [e for e, _ in intended] == [10] * 4
    assert np.allclose([lr for _, lr in intended], [5e-3, 4.5e-3, 4.05e-3, 3.645e-3])
    with pytest.raises(ValueError, match="reference, qsenn"):
        qsenn_schedule(25, 5e-3, variant="fast")


def test_constants_are_the_reference_code_s():
    assert SLDD.fdl == 0.196 and SLDD.l1_fm == SLDD.l1_fv == 0.0 and SLDD.head_dropout == 0.1
    assert (SLDD.dense_epochs, SLDD.ft_epochs, SLDD.dense_batch_size, SLDD.ft_batch_size) == (40, 50, 32, 16)
    assert SLDD.select_alpha == 0.8 and QSENN.weights_alpha == 0.99 and QSENN.n_iterations == 4
    assert QSENN.schedule == "reference"


@pytest.mark.parametrize("source", ["metadata", "split"])
def test_selection_lambda_max_source(monkeypatch, source):
    """The selection path starts from glm-saga's metadata of the raw features (reference) or from its own split."""
    X, y = _features(n_per_class=6, d=8, informative=(1, 4))
    X = X * np.linspace(0.5, 3.0, X.shape[1])  # columns of different scales: the two sources then differ
    seen = []
    real = sparse.lambda_max

    def spy(problem, alpha, group=False, *, metadata=None):
        value = real(problem, alpha, group, metadata=metadata)
        seen.append((metadata, value))
        return value

    monkeypatch.setattr(sparse, "lambda_max", spy)
    settings = dataclasses.replace(FAST, n_lambdas=5, lambda_max_source=source)
    sldd_selection_order(X, y, 2, settings=settings)
    (metadata, value), = seen
    Y = np.eye(5)[y]
    raw_score = np.linalg.norm(X.T @ (Y - Y.mean(0)) / len(y), axis=1).max()  # glm-saga's max_reg (group), raw X
    if source == "metadata":
        assert metadata is not None and value == pytest.approx(raw_score / 0.8, rel=1e-10)
    else:
        Z, _, _ = standardise(X)
        idx, _ = train_val_split(len(y), 0.1, seed=0)
        Yt = np.eye(5)[y[idx]]
        split_score = np.linalg.norm(Z[idx].T @ (Yt - Yt.mean(0)) / len(idx), axis=1).max()
        assert metadata is None and value == pytest.approx(split_score / 0.8, rel=1e-8)
        assert abs(value - raw_score / 0.8) > 0.1 * value  # the sources really differ on this data
    with pytest.raises(ValueError, match="lambda_max_source must be 'metadata' or 'split'"):
        sldd_selection_order(X, y, 2, settings=dataclasses.replace(FAST, lambda_max_source="raw"))


def test_sldd_and_qsenn_differ_in_epochs_but_share_the_selection_fields():
    import dataclasses

    from qpmlib.sparse import QSENN, SELECTION_FIELDS, SLDD, SLDDSettings

    assert set(SELECTION_FIELDS) <= {f.name for f in dataclasses.fields(SLDDSettings)}
    assert {f: getattr(SLDD, f) for f in SELECTION_FIELDS} == {f: getattr(QSENN, f) for f in SELECTION_FIELDS}
    assert (SLDD.ft_epochs, QSENN.ft_epochs, QSENN.n_iterations) == (50, 25, 4)  # sldd/ and qsenn/dinov2.yaml
