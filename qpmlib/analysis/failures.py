"""Failure analysis: where DINO-QPM and the dense model disagree, and what DINO-QPM's wrong decisions rest on.

Paper Figs. 18-23. :func:`failure_categories` splits the test images by which model is right,
:func:`category_counts` counts them, :func:`failure_examples` picks examples of each (:func:`pick_examples`),
:func:`nearest_class` and :func:`nearest_training_image` choose the training image shown beside each,
:func:`confusing_features_table` lists the features behind DINO-QPM's wrong decisions, and
:func:`failure_data` gathers what :func:`qpmlib.figures.failures.failure_figure` draws (:class:`FailureData`,
one :class:`FailureExample` per row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qpmlib.analysis.inspection import RunInspection
from qpmlib.analysis.pairs import class_pair_features, distinguishing_attributes
from qpmlib.runs.evaluate import cam, maps_for_rows

__all__ = [
    "FAILURE_CATEGORIES",
    "FAILURE_TITLES",
    "failure_categories",
    "pick_examples",
    "category_counts",
    "failure_examples",
    "nearest_class",
    "nearest_training_image",
    "confusing_features_table",
    "FailureExample",
    "FailureData",
    "failure_data",
]

#: Keys of :func:`failure_categories`.
FAILURE_CATEGORIES = ("qpm_right_dense_wrong", "both_right", "both_wrong", "dense_right_qpm_wrong")

#: Readable title of each failure category, with the paper's figures that show it.
FAILURE_TITLES: dict[str, str] = {
    "qpm_right_dense_wrong": "DINO-QPM right, dense wrong (paper Figs. 18-19)",
    "both_right": "both right (paper Figs. 20-21)",
    "both_wrong": "both wrong (paper Fig. 22)",
    "dense_right_qpm_wrong": "dense right, DINO-QPM wrong (paper Fig. 23)",
}


def failure_categories(y_true: Any, pred_qpm: Any, pred_dense: Any) -> dict[str, np.ndarray]:
    """Split test samples by which of QPM and the dense model is right.

    Args:
        y_true: (N,) true labels.
        pred_qpm: (N,) QPM predictions.
        pred_dense: (N,) dense-model predictions.

    Returns:
        dict with keys :data:`FAILURE_CATEGORIES`, each a sorted int array of sample indices; together they
        partition range(N).

    Raises:
        ValueError: for different lengths.
    """
    t, q, d = (np.asarray(a).ravel() for a in (y_true, pred_qpm, pred_dense))
    if not t.shape == q.shape == d.shape:
        raise ValueError(f"need equal lengths, got y_true {t.shape}, pred_qpm {q.shape}, pred_dense {d.shape}")
    qr, dr = q == t, d == t
    masks = (qr & ~dr, qr & dr, ~qr & ~dr, ~qr & dr)
    return {name: np.nonzero(m)[0] for name, m in zip(FAILURE_CATEGORIES, masks)}


def pick_examples(categories: dict[str, np.ndarray], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Up to n random examples of each category, drawn without replacement.

    Args:
        categories: name -> index array, e.g. from :func:`failure_categories`.
        n: examples per category (fewer when a category is smaller).
        seed: seed of the draw; the same seed gives the same picks.

    Returns:
        name -> sorted int array of at most n indices.

    Raises:
        ValueError: for a negative n.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    return {
        name: np.sort(rng.choice(np.asarray(idx, dtype=int), size=min(n, len(idx)), replace=False))
        for name, idx in categories.items()
    }


def category_counts(y_true: Any, pred_qpm: Any, pred_dense: Any) -> pd.DataFrame:
    """How many test samples fall into each failure category.

    Args:
        y_true: (N,) true labels.
        pred_qpm: (N,) DINO-QPM predictions.
        pred_dense: (N,) dense-model predictions.

    Returns:
        DataFrame indexed by category (:data:`FAILURE_CATEGORIES` order) with columns ``title``,
        ``n`` and ``share`` (fraction of N).

    Raises:
        ValueError: for different lengths.
    """
    cats = failure_categories(y_true, pred_qpm, pred_dense)
    total = max(1, sum(len(v) for v in cats.values()))
    return pd.DataFrame(
        {"title": [FAILURE_TITLES[c] for c in FAILURE_CATEGORIES],
         "n": [len(cats[c]) for c in FAILURE_CATEGORIES],
         "share": [len(cats[c]) / total for c in FAILURE_CATEGORIES]},
        index=pd.Index(FAILURE_CATEGORIES, name="category"),
    )


def failure_examples(
    y_true: Any, pred_qpm: Any, pred_dense: Any, n: int, *, seed: int = 0, focus_class: bool = False
) -> pd.DataFrame:
    """Up to n test samples of every failure category, drawn from stored predictions (paper Figs. 18-23).

    Args:
        y_true: (N,) true labels.
        pred_qpm: (N,) DINO-QPM predictions.
        pred_dense: (N,) dense-model predictions.
        n: samples per category (fewer when a category is smaller).
        seed: seed of the draw (:func:`qpmlib.pick_examples`); the same seed gives the same picks.
        focus_class: draw, in each category, only from the true class with most samples in it (ties: lowest
            label), as each of the paper's figures shows one species.

    Returns:
        DataFrame with columns ``category``, ``index`` (into the test split), ``label``, ``pred_dense`` and
        ``pred_qpm``; categories in :data:`FAILURE_CATEGORIES` order, indices ascending within
        one. An empty category has no rows.

    Raises:
        ValueError: for different lengths or a negative n.
    """
    t = np.asarray(y_true).astype(int).ravel()
    q, d = np.asarray(pred_qpm).astype(int).ravel(), np.asarray(pred_dense).astype(int).ravel()
    cats = failure_categories(t, q, d)
    if focus_class:
        for name, idx in cats.items():
            if len(idx):
                labels, counts = np.unique(t[idx], return_counts=True)
                cats[name] = idx[t[idx] == labels[np.argmax(counts)]]
    picks = pick_examples(cats, n, seed=seed)
    rows = [
        {"category": name, "index": int(i), "label": int(t[i]), "pred_dense": int(d[i]), "pred_qpm": int(q[i])}
        for name in FAILURE_CATEGORIES for i in picks[name]
    ]
    return pd.DataFrame(rows, columns=["category", "index", "label", "pred_dense", "pred_qpm"])


def nearest_class(category: str, pred_dense: int, pred_qpm: int) -> int:
    """The class whose nearest training image the paper shows for a sample of ``category``.

    Figs. 18-19 (DINO-QPM right, dense wrong) show the dense model's predicted class, to explain its mistake;
    Figs. 22-23 show DINO-QPM's predicted class. For "both right" this is the true class.

    Args:
        category: a :data:`FAILURE_CATEGORIES` name.
        pred_dense: the dense prediction.
        pred_qpm: the DINO-QPM prediction.

    Returns:
        a class label.

    Raises:
        ValueError: for an unknown category (the message lists the valid ones).
    """
    if category not in FAILURE_CATEGORIES:
        raise ValueError(f"unknown category {category!r}; valid: {', '.join(FAILURE_CATEGORIES)}")
    return int(pred_dense if category == "qpm_right_dense_wrong" else pred_qpm)


def confusing_features_table(
    picks: pd.DataFrame,
    assignment: Any,
    *,
    parts: pd.DataFrame | None = None,
    attributes: pd.DataFrame | None = None,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """For each pick that DINO-QPM gets wrong: the features of the predicted class that the true class lacks.

    Those features carry the wrong decision (Figs. 22-23 show them in the "predicted class" column); on
    SynthBirds their true parts and the attributes in which the two classes differ say whether the confusion
    is about the right body part.

    Args:
        picks: :func:`failure_examples` table.
        assignment: (N_c, N*_f) bool assignment of the fine-tuned model (column = feature id).
        parts: optional :func:`feature_parts` table indexed by feature id.
        attributes: optional SynthBirds :func:`qpmlib.data.synthbirds.class_attributes`.
        class_names: optional names of all classes.

    Returns:
        DataFrame with columns ``category``, ``index``, ``true``, ``predicted``, ``shared`` (number of shared
        features), ``confusing`` (e.g. "3 (wing), 7 (head)"), with ``attributes`` ``differing`` (the parts
        whose attribute differs) and with both ``parts`` and ``attributes`` ``on_differing`` (True when a
        confusing feature sits on a differing part); one row per pick with ``pred_qpm != label``.
    """
    name = (lambda c: class_names[c]) if class_names is not None else str
    rows = []
    for r in picks[picks["pred_qpm"] != picks["label"]].itertuples(index=False):
        groups = class_pair_features(assignment, None, r.label, r.pred_qpm)
        own = groups["only_c2"]
        text = ", ".join(f"{f} ({parts.loc[f, 'part']})" if parts is not None else str(f) for f in own)
        row = {"category": r.category, "index": r.index, "true": name(r.label), "predicted": name(r.pred_qpm),
               "shared": len(groups["shared"]), "confusing": text}
        if attributes is not None:
            differing = list(distinguishing_attributes(attributes, r.label, r.pred_qpm)["part"])
            row["differing"] = ", ".join(differing)
            if parts is not None:
                row["on_differing"] = any(parts.loc[f, "part"] in differing for f in own)
        rows.append(row)
    columns = ["category", "index", "true", "predicted", "shared", "confusing"] + \
        (["differing"] if attributes is not None else []) + \
        (["on_differing"] if attributes is not None and parts is not None else [])
    return pd.DataFrame(rows, columns=columns)


@dataclass
class FailureExample:
    """One row of a failure-analysis figure.

    Attributes:
        image: (H, W, 3) test image in [0, 1].
        dense_cam: (h, w) CAM of the dense model for its predicted class (:func:`qpmlib.runs.evaluate.cam`).
        qpm_maps: (K, h, w) feature maps of the DINO-QPM model for this image.
        true_features: ids (into K) of the true class's features.
        pred_features: ids of the predicted class's features.
        nearest_image: (H', W', 3) nearest training image of ``nearest_name``'s class.
        similarity: its CLS cosine similarity to the test image.
        true_name: true class name.
        dense_name: dense prediction's name.
        qpm_name: DINO-QPM prediction's name.
        nearest_name: class of the nearest training image.
        parts: optional part name of each feature id, to annotate the explanations (SynthBirds).
    """

    image: np.ndarray
    dense_cam: np.ndarray
    qpm_maps: np.ndarray
    true_features: Sequence[int]
    pred_features: Sequence[int]
    nearest_image: np.ndarray
    similarity: float
    true_name: str
    dense_name: str
    qpm_name: str
    nearest_name: str
    parts: Mapping[int, str] | None = None


@dataclass
class FailureData:
    """What the failure-analysis rows of one run are drawn from (test split unless said otherwise).

    The map fields only need to be indexable by test index, so a full (N, ...) array or a dict holding just
    the picked samples both work (the latter keeps CUB-size test sets out of memory).

    Attributes:
        labels: (N,) true labels.
        pred_dense: (N,) dense predictions.
        pred_qpm: (N,) DINO-QPM predictions.
        dense_maps: test index -> (N_f, h, w) dense feature maps.
        dense_weight: (N_c, N_f) dense head weight (for the CAM of the dense prediction, reference_spec §5.7).
        qpm_maps: test index -> (N*_f, h, w) maps of the fine-tuned model's selected features.
        assignment: (N_c, N*_f) bool class-feature assignment.
        cls_test: (N, D) frozen CLS tokens of the test images.
        cls_train: (M, D) frozen CLS tokens of the training images.
        train_labels: (M,) training labels.
        test_images: test index -> (H, W, 3) display image.
        train_images: training index -> (H, W, 3) display image.
        class_names: name of every class.
        parts: optional part name of each selected feature (SynthBirds).
    """

    labels: Any
    pred_dense: Any
    pred_qpm: Any
    dense_maps: Any
    dense_weight: Any
    qpm_maps: Any
    assignment: Any
    cls_test: Any
    cls_train: Any
    train_labels: Any
    test_images: Any
    train_images: Any
    class_names: Sequence[str]
    parts: Mapping[int, str] | None = None

    def example(self, i: int, category: str) -> FailureExample:
        """The :class:`FailureExample` of test sample ``i`` shown as a member of ``category``.

        Raises:
            ValueError: for an unknown category.
        """
        i = int(i)
        label, dense, qpm = (int(np.asarray(a)[i]) for a in (self.labels, self.pred_dense, self.pred_qpm))
        near = nearest_class(category, dense, qpm)
        j = nearest_training_image(self.cls_test[i], self.cls_train, self.train_labels, near)
        q, x = np.asarray(self.cls_test[i], np.float64), np.asarray(self.cls_train[j], np.float64)
        sim = float(q @ x / max(np.linalg.norm(q) * np.linalg.norm(x), 1e-12))
        assign = np.asarray(self.assignment, bool)
        return FailureExample(
            image=self.test_images[i],
            dense_cam=cam(self.dense_maps[i], np.asarray(self.dense_weight)[dense]),
            qpm_maps=np.asarray(self.qpm_maps[i]),
            true_features=np.nonzero(assign[label])[0].tolist(),
            pred_features=np.nonzero(assign[qpm])[0].tolist(),
            nearest_image=self.train_images[j],
            similarity=sim,
            true_name=self.class_names[label],
            dense_name=self.class_names[dense],
            qpm_name=self.class_names[qpm],
            nearest_name=self.class_names[near],
            parts=self.parts,
        )

    def examples(self, picks: pd.DataFrame, category: str) -> list[FailureExample]:
        """The examples of one category from a :func:`failure_examples` table, in its order."""
        return [self.example(i, category) for i in picks.loc[picks["category"] == category, "index"]]


def nearest_training_image(cls_query: Any, cls_train: Any, train_labels: Any, label: int) -> int:
    """Index of the training image of class ``label`` whose CLS token is most cosine-similar to the query.

    Args:
        cls_query: (D,) CLS token of the query image.
        cls_train: (N, D) CLS tokens of the training images.
        train_labels: (N,) labels of the training images.
        label: class to search in.

    Returns:
        index into cls_train (ties: the lowest index).

    Raises:
        ValueError: for mismatched shapes or when no training image has that label.
    """
    q, x = np.asarray(cls_query, dtype=np.float64), np.asarray(cls_train, dtype=np.float64)
    y = np.asarray(train_labels)
    if q.ndim != 1 or x.ndim != 2 or x.shape[1] != q.shape[0] or y.shape != (x.shape[0],):
        raise ValueError(
            f"expected cls_query (D,), cls_train (N, D) and train_labels (N,), got {q.shape}, {x.shape}, {y.shape}"
        )
    rows = np.nonzero(y == label)[0]
    if rows.size == 0:
        raise ValueError(f"no training image has label {label}")
    sims = x[rows] @ q / np.maximum(np.linalg.norm(x[rows], axis=1) * np.linalg.norm(q), 1e-12)
    return int(rows[np.argmax(sims)])


def failure_data(inspection: RunInspection, picks: pd.DataFrame) -> FailureData:
    """What the failure rows of a run's picked test images are drawn from (feature maps of those images only).

    Args:
        inspection: the DINO-QPM run and its images (:func:`qpmlib.analysis.inspection.inspect_run`).
        picks: :func:`failure_examples` table.

    Returns:
        :class:`FailureData` over the test split; the maps hold the picked rows only.
    """
    ins, preds = inspection, inspection.predictions
    rows, dense_model, qpm_model = picks["index"].to_numpy(), ins.run.dense_model(), ins.run.model()
    device = ins.run.profile.train.device
    return FailureData(
        labels=preds.label.to_numpy(), pred_dense=preds.dense_pred.to_numpy(), pred_qpm=preds.pred.to_numpy(),
        dense_maps=maps_for_rows(dense_model, ins.stores["test"], rows, device=device),
        dense_weight=dense_model.head.weight.detach().numpy(),
        qpm_maps=maps_for_rows(qpm_model, ins.stores["test"], rows, device=device),
        assignment=ins.assignment, cls_test=ins.stores["test"].cls, cls_train=ins.stores["train"].cls,
        train_labels=ins.stores["train"].labels, test_images=ins.images["test"], train_images=ins.images["train"],
        class_names=ins.names, parts=None if ins.parts is None else ins.parts["part"].to_dict())
