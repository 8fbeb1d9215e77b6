"""Helpers of the interpretability, failure-analysis and reproducibility-report chapters (07-09).

Three groups of plain functions (tables are pandas DataFrames, figures matplotlib Figures that are never shown,
saved or closed here):

* **Class pairs** (paper Figs. 5, 14-17): :func:`feature_parts` says which true SynthBirds part each feature sits
  on (via :func:`qpmlib.metrics.part_alignment`), :func:`distinguishing_attributes` which attributes tell two
  SynthBirds classes apart, :func:`class_pair_table` joins both onto the shared and class-specific features of
  :func:`qpmlib.explain.class_pair_features`, :func:`distinct_on_differing_parts` scores whether the features
  that only one class uses sit on a part where the classes really differ (:func:`pair_part_scores`: for every
  pair), :func:`confused_pairs_table` lists the most confused pairs with their differing attributes,
  :func:`default_pairs` picks the pairs a chapter offers and :func:`example_index` an image of a class.
* **Failure analysis** (Figs. 18-23): :func:`category_counts` and :func:`failure_examples` pick test images of
  each category of :func:`qpmlib.explain.failure_categories` from stored predictions; :func:`nearest_class`
  says whose prediction the nearest-training-image column shows; :func:`confusing_features_table` lists the
  features behind DINO-QPM's wrong decisions; :class:`FailureData` (with :func:`maps_for_rows`) builds the
  :class:`FailureExample` rows that :func:`failure_figure` draws (image, dense CAM, QPM explanation for the true
  and the predicted class, nearest training image by CLS cosine similarity).
* **Reproducibility report**: :data:`DISCREPANCIES` (reference_spec §10 with the variant the book uses),
  :func:`discrepancy_table`, :func:`profile_differences`, :func:`gather_beside_paper` (every reproduced number
  beside the paper's, with a reason from :data:`METRIC_REASONS` and the setting) and :func:`compute_time`
  (chapter run times and stored training times).

Images: :func:`class_names`, :func:`display_image` and :class:`ImageList` (lazy, for the prototype crops).

Public names: see ``__all__``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from qpmlib import explain
from qpmlib.explain import FAILURE_CATEGORIES
from qpmlib.metrics import part_alignment
from qpmlib.paper import TABLES, paper_values
from qpmlib.plots import figure_png
from qpmlib.tables import beside_paper

__all__ = [
    "FAILURE_TITLES",
    "DISCREPANCIES",
    "METRIC_REASONS",
    "class_names",
    "display_image",
    "ImageList",
    "feature_parts",
    "distinguishing_attributes",
    "class_pair_table",
    "distinct_on_differing_parts",
    "pair_part_scores",
    "confused_pairs_table",
    "default_pairs",
    "example_index",
    "category_counts",
    "failure_examples",
    "nearest_class",
    "confusing_features_table",
    "FailureExample",
    "FailureData",
    "maps_for_rows",
    "failure_figure",
    "figure_png",
    "discrepancy_table",
    "profile_differences",
    "gather_beside_paper",
    "compute_time",
]

#: Readable title of each failure category, with the paper's figures that show it.
FAILURE_TITLES: dict[str, str] = {
    "qpm_right_dense_wrong": "DINO-QPM right, dense wrong (paper Figs. 18-19)",
    "both_right": "both right (paper Figs. 20-21)",
    "both_wrong": "both wrong (paper Fig. 22)",
    "dense_right_qpm_wrong": "dense right, DINO-QPM wrong (paper Fig. 23)",
}

_NO_PART = "(none)"  # part name of a feature that is never positive


# ------------------------------------------------------------------------------------------------------ images
def class_names(root: str | Path, dataset: str) -> list[str]:
    """Readable class names in label order (index = 0-based label).

    Args:
        root: dataset folder (from :func:`qpmlib.data.prepare`).
        dataset: "synthbirds", "cub" or "cars".

    Returns:
        list of names; CUB-format ``NNN.Some_Name`` becomes ``Some Name``.

    Raises:
        ValueError: for an unknown dataset.
        FileNotFoundError: when ``classes.txt`` (CUB format) is missing.
    """
    if dataset == "cars":
        from qpmlib.data import cars

        return list(cars.class_names(root))
    if dataset not in ("synthbirds", "cub"):
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: synthbirds, cub, cars")
    path = Path(root) / "classes.txt"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; is {root} a CUB-format folder?")
    rows = sorted((int(a), b) for a, b in (line.split(maxsplit=1) for line in path.read_text().splitlines()
                                           if line.strip()))
    return [(b.split(".", 1)[1] if "." in b else b).replace("_", " ") for _, b in rows]


def display_image(path: str | Path, size: int) -> np.ndarray:
    """An image as the reader sees it: RGB, resized to ``size`` x ``size`` (anisotropic, like the model input).

    Unlike :func:`qpmlib.data.images.load_image` there is no normalisation: this is for drawing.

    Args:
        path: image file.
        size: output side in pixels.

    Returns:
        float32 array (size, size, 3) in [0, 1].
    """
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.float32) / 255.0


class ImageList(Sequence):
    """Lazily loaded display images, indexable like the embedding store's rows.

    Args:
        paths: image file of each row (e.g. ``index[index.is_train].path`` in store order).
        size: display size in pixels.
        cache: how many decoded images to keep.
    """

    def __init__(self, paths: Sequence[str | Path], size: int, *, cache: int = 64) -> None:
        self.paths = [str(p) for p in paths]
        self.size = size
        self._load = functools.lru_cache(maxsize=cache)(lambda i: display_image(self.paths[i], self.size))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # (size, size, 3)
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} is outside [0, {len(self)})")
        return self._load(i % len(self))


# ------------------------------------------------------------------------------------------------- class pairs
def feature_parts(
    feature_maps: Any, part_maps: Any, part_names: Sequence[str], feature_ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """Which true part each feature sits on (SynthBirds ground truth; not in the paper).

    Uses :func:`qpmlib.metrics.part_alignment`: a feature's part is the one holding most of its positive
    activation mass over the given images, ``share`` is that part's fraction of the mass, and ``on_bird`` the
    fraction on any part at all (the rest lies on the background).

    Args:
        feature_maps: (N, D, H, W) feature maps, e.g. of the training images.
        part_maps: (N, K, H, W) per-patch part coverage from :func:`qpmlib.data.synthbirds.part_maps`.
        part_names: the K part names (:func:`qpmlib.data.synthbirds.part_names`).
        feature_ids: the id of each of the D channels (e.g. ``selected`` for maps of the selected features);
            default ``0..D-1``.

    Returns:
        DataFrame indexed by ``feature`` with columns ``part`` (name, "(none)" for a feature never positive),
        ``share`` and ``on_bird`` (floats in [0, 1]).

    Raises:
        ValueError: for mismatched shapes, or when the number of names or ids does not fit.
    """
    maps = np.asarray(feature_maps)
    parts = np.asarray(part_maps)
    if parts.ndim != 4 or len(part_names) != parts.shape[1]:
        raise ValueError(f"need one name per part channel: part_maps {parts.shape}, {len(part_names)} names")
    ids = np.arange(maps.shape[1]) if feature_ids is None else np.asarray(feature_ids, dtype=int).ravel()
    if maps.ndim != 4 or ids.shape != (maps.shape[1],):
        raise ValueError(f"need feature_maps (N, D, H, W) and one id per channel, got {maps.shape} and "
                         f"{ids.size} ids")
    per_part = part_alignment(maps, parts)
    bird = part_alignment(maps, np.clip(parts.sum(axis=1, keepdims=True), 0.0, 1.0))
    names = [part_names[k] if k >= 0 else _NO_PART for k in per_part.best_part]
    return pd.DataFrame(
        {"part": names, "share": per_part.per_feature, "on_bird": bird.per_feature},
        index=pd.Index(ids, name="feature"),
    )


def _attribute_columns(attributes: pd.DataFrame) -> list[str]:
    from qpmlib.data.synthbirds import ATTRIBUTES

    return [a for a in ATTRIBUTES if a in attributes.columns]


def _row_of(attributes: pd.DataFrame, label: int) -> pd.Series:
    rows = attributes[attributes["label"] == label]
    if rows.empty:
        raise ValueError(f"no class with label {label}; labels run 0..{int(attributes['label'].max())}")
    return rows.iloc[0]


def distinguishing_attributes(attributes: pd.DataFrame, c1: int, c2: int) -> pd.DataFrame:
    """The attributes in which two SynthBirds classes differ, and the part each one changes.

    Args:
        attributes: :func:`qpmlib.data.synthbirds.class_attributes` of the dataset.
        c1: first class (0-based label).
        c2: second class.

    Returns:
        DataFrame with columns ``attribute``, ``part`` (:data:`qpmlib.data.synthbirds.ATTRIBUTE_PART`),
        ``first`` (c1's value) and ``second`` (c2's value), one row per differing attribute in
        :data:`~qpmlib.data.synthbirds.ATTRIBUTES` order; empty for identical classes.

    Raises:
        ValueError: for a label that no class has.
    """
    from qpmlib.data.synthbirds import ATTRIBUTE_PART

    a, b = _row_of(attributes, c1), _row_of(attributes, c2)
    rows = [
        {"attribute": col, "part": ATTRIBUTE_PART[col], "first": a[col], "second": b[col]}
        for col in _attribute_columns(attributes)
        if a[col] != b[col]
    ]
    return pd.DataFrame(rows, columns=["attribute", "part", "first", "second"])


def class_pair_table(
    assignment: Any,
    selected: Sequence[int] | None,
    c1: int,
    c2: int,
    *,
    parts: pd.DataFrame | None = None,
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The features of a class pair, shared or not, with the part each sits on (paper Figs. 5, 14-17).

    Args:
        assignment: (N_c, n_sel) bool class-feature assignment.
        selected: feature id of each assignment column, or None for the column positions (see
            :func:`qpmlib.explain.class_pair_features`).
        c1: first class.
        c2: second class.
        parts: optional :func:`feature_parts` table indexed by the same feature ids; adds ``part``, ``share``
            and ``on_bird``.
        class_names: optional names of all classes for the ``used_by`` column.

    Returns:
        DataFrame with columns ``feature``, ``role`` ("shared", "only_c1", "only_c2"), ``used_by`` ("both" or
        the class name) and, with ``parts``, ``part``, ``share`` and ``on_bird``; shared features first.

    Raises:
        ValueError: see :func:`qpmlib.explain.class_pair_features`; also when ``parts`` lacks a feature.
    """
    groups = explain.class_pair_features(assignment, selected, c1, c2)
    name = (lambda c: class_names[c]) if class_names is not None else (lambda c: f"class {c}")
    who = {"shared": "both", "only_c1": name(c1), "only_c2": name(c2)}
    rows = [{"feature": f, "role": role, "used_by": who[role]} for role in who for f in groups[role]]
    table = pd.DataFrame(rows, columns=["feature", "role", "used_by"])
    if parts is not None:
        missing = sorted(set(table["feature"]) - set(parts.index))
        if missing:
            raise ValueError(f"parts has no row for feature(s) {missing}; build it with the same feature ids")
        table = table.join(parts[["part", "share", "on_bird"]], on="feature")
    return table


def distinct_on_differing_parts(pair: pd.DataFrame, differing: pd.DataFrame) -> float:
    """Fraction of a pair's non-shared features that sit on a part where the two classes differ.

    The SynthBirds check of the paper's claim that QPM tells two classes apart by the features they do not
    share (Fig. 5: "the model differentiates the Brewer's Blackbird using feature 24, which localises the beak").

    Args:
        pair: :func:`class_pair_table` built with ``parts``.
        differing: :func:`distinguishing_attributes` of the same pair.

    Returns:
        a float in [0, 1]; NaN when the pair has no non-shared feature.

    Raises:
        ValueError: when ``pair`` has no ``part`` column.
    """
    if "part" not in pair.columns:
        raise ValueError("pair has no 'part' column; build it with class_pair_table(..., parts=feature_parts(...))")
    own = pair[pair["role"] != "shared"]
    if own.empty:
        return math.nan
    return float(own["part"].isin(set(differing["part"])).mean())


def pair_part_scores(assignment: Any, parts: pd.DataFrame, attributes: pd.DataFrame, n_parts: int) -> pd.DataFrame:
    """:func:`distinct_on_differing_parts` for every class pair, beside what features on random parts would score.

    Args:
        assignment: (N_c, n_sel) bool assignment; columns are the feature ids of ``parts`` (positions).
        parts: :func:`feature_parts` table indexed by column position.
        attributes: SynthBirds :func:`qpmlib.data.synthbirds.class_attributes`.
        n_parts: number of parts (the chance level is the fraction of parts in which a pair differs).

    Returns:
        DataFrame with columns ``c1``, ``c2``, ``score`` and ``chance``, one row per pair ``c1 < c2`` that has
        at least one non-shared feature.

    Raises:
        ValueError: for n_parts < 1.
    """
    if n_parts < 1:
        raise ValueError(f"n_parts must be >= 1, got {n_parts}")
    n_classes = np.asarray(assignment).shape[0]
    rows = []
    for a in range(n_classes):
        for b in range(a + 1, n_classes):
            diff = distinguishing_attributes(attributes, a, b)
            score = distinct_on_differing_parts(class_pair_table(assignment, None, a, b, parts=parts), diff)
            if not math.isnan(score):
                rows.append({"c1": a, "c2": b, "score": score, "chance": diff["part"].nunique() / n_parts})
    return pd.DataFrame(rows, columns=["c1", "c2", "score", "chance"])


def confused_pairs_table(
    y_true: Any,
    y_pred: Any,
    n: int,
    *,
    class_names: Sequence[str] | None = None,
    attributes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The n most confused class pairs (:func:`qpmlib.explain.most_confused_pairs`), with names and attributes.

    Args:
        y_true: (N,) true labels.
        y_pred: (N,) predicted labels.
        n: number of pairs.
        class_names: optional names of all classes.
        attributes: optional SynthBirds :func:`qpmlib.data.synthbirds.class_attributes`; adds the number of
            differing attributes and what they are.

    Returns:
        DataFrame with columns ``c1``, ``c2``, ``confusions`` and optionally ``first``, ``second``,
        ``n_differing``, ``differing`` (e.g. "beak_shape: cone/thin").

    Raises:
        ValueError: see :func:`qpmlib.explain.most_confused_pairs`.
    """
    rows = []
    for c1, c2, count in explain.most_confused_pairs(y_true, y_pred, n):
        row: dict[str, Any] = {"c1": c1, "c2": c2, "confusions": count}
        if class_names is not None:
            row.update(first=class_names[c1], second=class_names[c2])
        if attributes is not None:
            diff = distinguishing_attributes(attributes, c1, c2)
            row["n_differing"] = len(diff)
            row["differing"] = ", ".join(f"{r.attribute}: {r.first}/{r.second}" for r in diff.itertuples())
        rows.append(row)
    columns = ["c1", "c2", "confusions"] + (["first", "second"] if class_names is not None else []) \
        + (["n_differing", "differing"] if attributes is not None else [])
    return pd.DataFrame(rows, columns=columns)


def default_pairs(y_true: Any, pred_qpm: Any, pred_dense: Any, n: int) -> list[tuple[int, int]]:
    """Class pairs to offer in a chapter: DINO-QPM's most confused pairs, then the dense model's, then (0, 1).

    Args:
        y_true: (N,) true labels.
        pred_qpm: (N,) DINO-QPM predictions.
        pred_dense: (N,) dense-model predictions.
        n: at most this many pairs (>= 1).

    Returns:
        up to n distinct ``(c1, c2)`` with ``c1 < c2``; never empty (falls back to classes 0 and 1).

    Raises:
        ValueError: for n < 1 or different lengths.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pairs: list[tuple[int, int]] = []
    for pred in (pred_qpm, pred_dense):
        for c1, c2, _ in explain.most_confused_pairs(y_true, pred, n):
            if (c1, c2) not in pairs and len(pairs) < n:
                pairs.append((c1, c2))
    return pairs or [(0, 1)]


def example_index(y_true: Any, y_pred: Any, label: int) -> int:
    """A representative test sample of a class: the first one predicted correctly, else the first one.

    Args:
        y_true: (N,) true labels.
        y_pred: (N,) predictions of the model being explained.
        label: the class.

    Returns:
        an index into the test split.

    Raises:
        ValueError: when no sample has that label.
    """
    t, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    own = np.nonzero(t == label)[0]
    if own.size == 0:
        raise ValueError(f"no test sample has label {label}")
    right = own[p[own] == label]
    return int(right[0] if right.size else own[0])


# -------------------------------------------------------------------------------------------- failure analysis
def category_counts(y_true: Any, pred_qpm: Any, pred_dense: Any) -> pd.DataFrame:
    """How many test samples fall into each failure category.

    Args:
        y_true: (N,) true labels.
        pred_qpm: (N,) DINO-QPM predictions.
        pred_dense: (N,) dense-model predictions.

    Returns:
        DataFrame indexed by category (:data:`qpmlib.explain.FAILURE_CATEGORIES` order) with columns ``title``,
        ``n`` and ``share`` (fraction of N).

    Raises:
        ValueError: for different lengths.
    """
    cats = explain.failure_categories(y_true, pred_qpm, pred_dense)
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
        seed: seed of the draw (:func:`qpmlib.explain.pick_examples`); the same seed gives the same picks.
        focus_class: draw, in each category, only from the true class with most samples in it (ties: lowest
            label), as each of the paper's figures shows one species.

    Returns:
        DataFrame with columns ``category``, ``index`` (into the test split), ``label``, ``pred_dense`` and
        ``pred_qpm``; categories in :data:`qpmlib.explain.FAILURE_CATEGORIES` order, indices ascending within
        one. An empty category has no rows.

    Raises:
        ValueError: for different lengths or a negative n.
    """
    t = np.asarray(y_true).astype(int).ravel()
    q, d = np.asarray(pred_qpm).astype(int).ravel(), np.asarray(pred_dense).astype(int).ravel()
    cats = explain.failure_categories(t, q, d)
    if focus_class:
        for name, idx in cats.items():
            if len(idx):
                labels, counts = np.unique(t[idx], return_counts=True)
                cats[name] = idx[t[idx] == labels[np.argmax(counts)]]
    picks = explain.pick_examples(cats, n, seed=seed)
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
        category: a :data:`qpmlib.explain.FAILURE_CATEGORIES` name.
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
        groups = explain.class_pair_features(assignment, None, r.label, r.pred_qpm)
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
        dense_cam: (h, w) CAM of the dense model for its predicted class (:func:`qpmlib.explain.cam`).
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
        j = explain.nearest_training_image(self.cls_test[i], self.cls_train, self.train_labels, near)
        q, x = np.asarray(self.cls_test[i], np.float64), np.asarray(self.cls_train[j], np.float64)
        sim = float(q @ x / max(np.linalg.norm(q) * np.linalg.norm(x), 1e-12))
        assign = np.asarray(self.assignment, bool)
        return FailureExample(
            image=self.test_images[i],
            dense_cam=explain.cam(self.dense_maps[i], np.asarray(self.dense_weight)[dense]),
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


def maps_for_rows(model: Any, store: Any, rows: Sequence[int], *, device: str = "cpu") -> dict[int, np.ndarray]:
    """Eval-mode feature maps of a few rows of an embedding store, keyed by row (keeps big test sets out of memory).

    Args:
        model: a dense or fine-tuned :class:`qpmlib.model.DinoQPM`.
        store: an :class:`qpmlib.embeddings.EmbeddingStore` (or anything with ``patch_tokens`` (N, P, D), ``cls``
            (N, D) and ``labels`` (N,)).
        rows: row indices.
        device: "cpu", "cuda" or "auto".

    Returns:
        {row: (K, h, w) float32 maps}.
    """
    from qpmlib.train import TokenData, evaluate

    idx = np.unique(np.asarray(rows, dtype=int))
    if idx.size == 0:
        return {}
    sub = TokenData(np.asarray(store.patch_tokens[idx]), np.asarray(store.cls[idx]), np.asarray(store.labels)[idx])
    return dict(zip(idx.tolist(), evaluate(model, sub, device=device).feature_maps))


def _feature_label(ids: Sequence[int], parts: Mapping[int, str] | None) -> str:
    if parts is None:
        return "features " + ", ".join(str(i) for i in ids)
    return ", ".join(f"{i}:{parts.get(int(i), '?')}" for i in ids)


def _wrap(text: str, width: int = 28) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def failure_figure(examples: Sequence[FailureExample], *, title: str | None = None, alpha: float = 0.7) -> Figure:
    """The paper's failure-analysis rows: image, dense CAM, QPM for the true and predicted class, nearest image.

    Columns (Figs. 18-23): the test image X labelled with both predictions; the dense model's CAM; DINO-QPM's
    local explanation for the true class; the same for DINO-QPM's predicted class; the most CLS-similar
    training image of the class named in ``nearest_name`` with its cosine similarity.

    Args:
        examples: one :class:`FailureExample` per row.
        title: optional figure title.
        alpha: largest overlay opacity of the local explanations.

    Returns:
        Figure with ``len(examples)`` rows of 5 axes.

    Raises:
        ValueError: for no examples.
    """
    if not examples:
        raise ValueError("no examples to draw; failure_examples found none for this category")
    fig = Figure(figsize=(12.5, 2.9 * len(examples)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(examples), 5))
    for row, ex in zip(axes, examples):
        row[0].imshow(np.clip(ex.image, 0, 1))
        row[0].set_title(_wrap(f"true: {ex.true_name}"), fontsize="small")
        row[0].set_xlabel(_wrap(f"dense: {ex.dense_name} / QPM: {ex.qpm_name}"), fontsize="x-small")
        explain.cam_figure(ex.image, ex.dense_cam, ax=row[1])
        row[1].set_title("dense CAM", fontsize="small")
        for ax, ids, what in ((row[2], ex.true_features, "true"), (row[3], ex.pred_features, "predicted")):
            ax.imshow(explain.local_explanation_array(ex.image, ex.qpm_maps, list(ids), alpha=alpha))
            ax.set_title(f"QPM, {what} class", fontsize="small")
            ax.set_xlabel(_wrap(_feature_label(ids, ex.parts), 34), fontsize="x-small")
        row[4].imshow(np.clip(ex.nearest_image, 0, 1))
        row[4].set_title(_wrap(f"nearest {ex.nearest_name}"), fontsize="small")
        row[4].set_xlabel(f"sim = {ex.similarity:.3f}", fontsize="x-small")
        for ax in row:  # keep the x labels, drop ticks and frame
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------------ reproducibility report
#: reference_spec §10: (row, topic, paper, reference code, what this book does by default, the switch).
DISCREPANCIES: tuple[tuple[int, str, str, str, str, str], ...] = (
    (1, "input normalisation", "resize 224, dataset mean", "resize 224×224, dataset mean/std, then per-image "
     "min-max to [0, 1]", "reference code", "data.normalisation = 'reference' | 'imagenet'"),
    (2, "QP components", "A, R and a locality bias b", "b disabled; A and R only", "reference code",
     "qpmlib.qp.solve_qpm(b=None)"),
    (3, "R penalty", "as in QPM", "threshold chosen on 2R, penalty tested on R", "reference code",
     "qp.r_mode = 'dinoqpm' | 'qpm' | 'none'"),
    (4, "BLDD in fine-tune", "W_sparse · f^(s)", "W_bin · ((f_S − μ_S)/σ_S), μ, σ frozen from dense train "
     "features, no bias", "reference code", "model.standardise = True | False"),
    (5, "optimiser", "schedule-free Adam", "AdamWScheduleFree, averaged weights, no BN recalibration",
     "reference code", "train.recalibrate_bn = False | True"),
    (6, "epochs / batch", "40 / 50, batch 32 / 32", "main YAML 25 / 25, batch 32 / 16",
     "reference code on `paper`; fewer epochs on demo/smoke", "train.dense_epochs, train.ft_epochs, batch sizes"),
    (7, "λ_L1-FV", "1", "1 only in qpm/dinov2.yaml, 0 elsewhere", "1 (both agree for DINO-QPM)",
     "train.ft_l1_fv"),
    (8, "FDL scaling vector", "f_d / max f", "the post-dropout feature vector", "reference code",
     "train.fdl_scale = 'features' | 'map_mean'"),
    (9, "Plausibility data", "X_train", "test split", "reference code", "computed on the test split"),
    (10, "Plausibility map", "Σ_d W_ĉd F_d", "the same minus its minimum", "reference code",
     "qpmlib.metrics.plausibility(subtract_min=True | False)"),
    (11, "SID@5 data", "X_train", "test split; samples whose class has ≥ 5 weights", "reference code",
     "computed on the test split"),
    (12, "GradCAM", "Grad-CAM", "CAM (weights × maps), no gradients", "reference code", "qpmlib.explain.cam"),
    (13, "MLP", "4 layers with ReLU and BN", "last layer also BN+ReLU → non-negative features", "reference code",
     "model.last_layer_bn_relu = True | False"),
    (14, "baselines", "pipeline closely resembling ours", "β 0.196, no L1 losses, head dropout 0.1, trainable "
     "μ/σ; QSENN 4×25 epochs", "reference code", "qpmlib.sparse_baselines.SLDDSettings / QSENNSettings"),
    (15, "pos-embed interpolation", "–", "antialias False, offset 0.1", "reference code",
     "qpmlib.backbones.build_backbone(pos_embed_interpolation='reference' | 'hub')"),
)

#: Why a reproduced metric may differ from the paper even on the paper profile (reference_spec §4.6, §5, §10).
METRIC_REASONS: dict[str, str] = {
    "plausibility": "test split and min-shifted CAM, as the reference code (§10 rows 9-10)",
    "sid_at_5": "test split, classes with ≥ 5 weights only, as the reference code (§10 row 11)",
    "seconds_per_epoch": "hardware-dependent: the paper timed an RTX 3090 on cached embeddings (§4.6); seeds "
                         "trained together (on a GPU) report their shared epoch time divided by the seed count",
}


def discrepancy_table() -> pd.DataFrame:
    """reference_spec §10 as a table, with the variant this book uses and the option that switches it.

    Returns:
        DataFrame with columns ``row``, ``topic``, ``paper``, ``code``, ``book`` and ``option``.
    """
    return pd.DataFrame(DISCREPANCIES, columns=["row", "topic", "paper", "code", "book", "option"])


def profile_differences(profile: Any, *, pretrained: bool | None = None) -> pd.DataFrame:
    """What the given profile changes with respect to the paper's setting (paper Sec. 9, reference_spec §4.2).

    Args:
        profile: a :class:`qpmlib.profiles.Profile` or its name.
        pretrained: whether the backbone weights were pretrained here (None: not known).

    Returns:
        DataFrame with columns ``item``, ``paper`` and ``this run``, and a boolean ``differs``.

    Raises:
        ValueError: for an unknown profile name.
    """
    from qpmlib.profiles import get_profile

    prof, ref = get_profile(profile), get_profile("paper")
    datasets = lambda p: "+".join((p.data.dataset, *p.extra_datasets))  # noqa: E731
    weights = "unknown" if pretrained is None else ("pretrained" if pretrained else "fixed random")
    rows = [
        ("dataset", datasets(ref), datasets(prof)),
        ("backbone", ref.backbone.name, prof.backbone.name),
        ("backbone weights", "pretrained", weights),
        ("image size [px]", ref.data.image_size, prof.data.image_size),
        ("MLP layers", ref.model.n_layers, prof.model.n_layers),
        ("hidden width", ref.model.hidden_size, prof.model.hidden_size),
        ("N_f", ref.model.n_features, prof.model.n_features),
        ("N*_f", ref.qp.n_selected, prof.qp.n_selected),
        ("N^c_f", ref.qp.n_per_class, prof.qp.n_per_class),
        ("dense / fine-tune epochs", f"{ref.train.dense_epochs} / {ref.train.ft_epochs}",
         f"{prof.train.dense_epochs} / {prof.train.ft_epochs}"),
        ("seeds", len(ref.seeds), len(prof.seeds)),
    ]
    df = pd.DataFrame(rows, columns=["item", "paper", "this run"]).astype({"paper": str, "this run": str})
    df["differs"] = df["paper"] != df["this run"]
    return df


def gather_beside_paper(
    ours: Mapping[str, pd.DataFrame],
    *,
    dataset_map: Mapping[str, str] | None = None,
    setting_reason: str = "",
) -> pd.DataFrame:
    """Every reproduced number beside the paper's, one table for all of the paper's Tables 1-4.

    Args:
        ours: table name ("table1" .. "table4") -> summarised results (columns method or row, dataset, metric,
            mean, std; fractions for %-metrics, as :func:`qpmlib.pipeline.summarise` gives them). Metrics that
            are not columns of that table are ignored, so one summary can serve Tables 1 and 2.
        dataset_map: passed to :func:`qpmlib.tables.beside_paper` (e.g. {"synthbirds": "cub"}).
        setting_reason: why every reproduced value may differ (e.g. "SynthBirds and random weights"), put first
            in the ``reason`` of each compared cell.

    Returns:
        DataFrame with columns ``table``, ``row``, ``method``, ``dataset``, ``metric``, ``ours``, ``paper``,
        ``difference`` (ours − paper in the paper's unit), ``reason`` and the numbers ``ours_mean``,
        ``ours_std``, ``paper_value``, ``paper_std`` (what :func:`qpmlib.plots.bar_beside_paper` draws). Only
        cells that have our value or that we should have reproduced are kept (the paper's reported-only
        ResNet50 rows are left out).

    Raises:
        ValueError: for an unknown table name (see :func:`qpmlib.tables.beside_paper` for the rest).
    """
    parts = []
    for table, frame in ours.items():
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; valid names: {', '.join(TABLES)}")
        frame = frame[frame["metric"].isin(set(paper_values(table)["metric"]))]  # only the table's own columns
        beside = beside_paper(frame, table, dataset_map=dict(dataset_map or {}))
        beside.insert(0, "table", table)
        parts.append(beside)
    columns = ["table", "row", "method", "dataset", "metric", "ours", "paper", "difference", "reason",
               "ours_mean", "ours_std", "paper_value", "paper_std"]
    if not parts:
        return pd.DataFrame(columns=columns)
    df = pd.concat(parts, ignore_index=True)
    df = df[df["ours_mean"].notna() | ~df["note"].str.contains("reported only", regex=False)].copy()

    def reason(rec) -> str:
        notes = []
        if not math.isnan(rec["ours_mean"]) and not math.isnan(rec["paper_value"]):
            notes += [setting_reason] if setting_reason else []
            notes += [METRIC_REASONS[rec["metric"]]] if rec["metric"] in METRIC_REASONS else []
        notes += [rec["note"]] if rec["note"] else []
        return "; ".join(notes)

    df["reason"] = [reason(r) for r in df.to_dict("records")]
    return df[columns].reset_index(drop=True)


def compute_time(profile: str, *, build_root: str | Path | None = None,
                 results_root: str | Path | None = None) -> pd.DataFrame:
    """Where the compute time of a book run went: chapter run times and the stored training stages.

    Reads ``book/_build/<profile>/run.json`` (written by :mod:`qpmlib.bookrunner`; chapters reused from an
    earlier run are marked) and the ``total_seconds`` of every ``provenance.json`` in the profile's results
    store (one per dense, QP and fine-tune stage ever computed, whichever chapter asked for it).

    Args:
        profile: profile name.
        build_root: folder holding ``run.json`` (default :func:`qpmlib.bookrunner.build_dir` of the profile).
        results_root: the results store root (default :func:`qpmlib.paths.results_dir` of the profile).

    Returns:
        DataFrame with columns ``source`` ("chapter" or "stored stage"), ``name`` (chapter name, or the stage
        kind), ``count`` (results summed) and ``seconds``; empty when nothing has run yet.
    """
    from qpmlib import paths

    if build_root is None:
        from qpmlib.bookrunner import build_dir

        build_root = build_dir(profile)
    results_root = Path(results_root) if results_root is not None else paths.results_dir(profile)
    rows = []
    run_file = Path(build_root) / "run.json"
    if run_file.is_file():
        for name, t in json.loads(run_file.read_text()).get("chapters", {}).items():
            label = name + (" (reused)" if t.get("reused") else "")
            rows.append({"source": "chapter", "name": label, "count": 1, "seconds": float(t["seconds"])})
    stages: dict[str, list[float]] = {}
    for prov in sorted(results_root.glob("*/*/provenance.json")):
        if prov.parent.name.startswith("."):
            continue
        seconds = json.loads(prov.read_text()).get("total_seconds")
        if isinstance(seconds, (int, float)):
            stages.setdefault(prov.parent.parent.name, []).append(float(seconds))
    rows += [{"source": "stored stage", "name": kind, "count": len(v), "seconds": sum(v)}
             for kind, v in sorted(stages.items())]
    return pd.DataFrame(rows, columns=["source", "name", "count", "seconds"])
