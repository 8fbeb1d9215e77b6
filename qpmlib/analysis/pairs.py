"""Class pairs: which features two classes share, which tell them apart, and what those features are.

Paper Figs. 5 and 14-17, plus what only SynthBirds can check, since its true parts and class attributes are known:

* :func:`class_pair_features` (shared and class-specific features of two classes), :func:`most_confused_pairs`,
  :func:`paper_pairs` (the pairs the paper shows, :data:`PAPER_PAIRS`, where the dataset has them),
  :func:`default_pairs` (the pairs a chapter offers) and :func:`example_index` (an image of a class);
* :func:`feature_parts` (which true part each feature sits on, via :func:`qpmlib.metrics.part_alignment`, and
  where it peaks, via :func:`qpmlib.metrics.part_peak_alignment`),
  :func:`distinguishing_attributes` (what tells two SynthBirds classes apart), :func:`class_pair_table` (both
  joined onto a pair's features), :func:`distinct_on_differing_parts` and :func:`pair_part_scores` (whether
  the features only one class uses sit on a part where the classes differ), :func:`confused_pairs_table`;
* :func:`top_activating_patches`: the training patches where a feature is most active (a prototype view).

All functions take plain arrays (numpy, or CPU tensors) and return numpy arrays, lists or DataFrames.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from qpmlib.data.synthbirds import ATTRIBUTE_PART, ATTRIBUTES
from qpmlib.metrics import part_alignment, part_peak_alignment

__all__ = [
    "NO_PART",
    "PAPER_PAIRS",
    "class_pair_features",
    "paper_pairs",
    "most_confused_pairs",
    "default_pairs",
    "example_index",
    "feature_parts",
    "distinguishing_attributes",
    "class_pair_table",
    "distinct_on_differing_parts",
    "pair_part_scores",
    "confused_pairs_table",
    "top_activating_patches",
]

NO_PART = "(none)"  # part name of a feature that is never positive

#: The class pairs of the paper's figures, by figure: CUB-2011 (Figs. 5, 14, 15) and Stanford Cars (Figs. 16, 17).
PAPER_PAIRS: dict[str, tuple[str, str]] = {
    "Fig. 5": ("Brewer Blackbird", "Rusty Blackbird"),
    "Fig. 14": ("Hooded Oriole", "Hooded Warbler"),
    "Fig. 15": ("Blue winged Warbler", "Kentucky Warbler"),
    "Fig. 16": ("Acura RL Sedan 2012", "Cadillac CTS-V Sedan 2012"),
    "Fig. 17": ("Bentley Continental GT Coupe 2007", "Bentley Continental Flying Spur Sedan 2007"),
}


def _key(name: str) -> str:
    """A class name reduced to lower-case letters and digits, without CUB's ``NNN.`` prefix."""
    return "".join(ch for ch in name.split(".", 1)[-1].lower() if ch.isalnum())


def paper_pairs(class_names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """The paper's figure pairs (:data:`PAPER_PAIRS`) whose two classes both exist among ``class_names``.

    Names match ignoring case, spaces, punctuation and a CUB ``NNN.`` prefix ("Blue winged Warbler" is
    ``161.Blue_winged_Warbler``).

    Args:
        class_names: the dataset's class names in label order.

    Returns:
        ``{figure: (c1, c2)}`` with ``c1 < c2``, in figure order; empty on a dataset without those classes
        (SynthBirds, SynthCars).
    """
    label = {_key(n): i for i, n in enumerate(class_names)}
    found = {}
    for fig, (a, b) in PAPER_PAIRS.items():
        if _key(a) in label and _key(b) in label:
            found[fig] = tuple(sorted((label[_key(a)], label[_key(b)])))
    return found


def class_pair_features(
    assignment: Any, selected: Sequence[int] | None, c1: int, c2: int
) -> dict[str, list[int]]:
    """Features two classes share and those only one of them uses (paper Figs. 5, 14-17).

    Args:
        assignment: (N_c, n_sel) bool class-feature assignment of the QP solution.
        selected: (n_sel,) feature id of each assignment column (``solve_qpm(...).selected`` for maps of all dense
            features); None means the column positions themselves (maps of the fine-tuned model).
        c1: first class.
        c2: second class.

    Returns:
        ``{"shared": [...], "only_c1": [...], "only_c2": [...]}``, sorted feature ids.

    Raises:
        ValueError: for a bad shape or a class index outside [0, N_c).
    """
    a = np.asarray(assignment).astype(bool)
    if a.ndim != 2:
        raise ValueError(f"assignment must have shape (N_c, n_sel), got {a.shape}")
    ids = np.arange(a.shape[1]) if selected is None else np.asarray(selected, dtype=int).ravel()
    if ids.shape != (a.shape[1],):
        raise ValueError(f"selected has {ids.size} ids but assignment has {a.shape[1]} columns; need one per column")
    for c in (c1, c2):
        if not 0 <= c < a.shape[0]:
            raise ValueError(f"class {c} is outside [0, {a.shape[0]})")

    def pick(mask):
        return sorted(int(i) for i in ids[mask])

    return {
        "shared": pick(a[c1] & a[c2]),
        "only_c1": pick(a[c1] & ~a[c2]),
        "only_c2": pick(a[c2] & ~a[c1]),
    }


def most_confused_pairs(y_true: Any, y_pred: Any, n: int) -> list[tuple[int, int, int]]:
    """The n class pairs confused most often, counting both directions.

    Args:
        y_true: (N,) true labels.
        y_pred: (N,) predicted labels.
        n: number of pairs to return.

    Returns:
        up to n tuples ``(c1, c2, count)`` with ``c1 < c2``, by count descending, ties by (c1, c2); pairs that are
        never confused are left out.

    Raises:
        ValueError: for different lengths or a negative n.
    """
    t, p = np.asarray(y_true).astype(int).ravel(), np.asarray(y_pred).astype(int).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}; need the same N")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    wrong = t != p
    lo, hi = np.minimum(t[wrong], p[wrong]), np.maximum(t[wrong], p[wrong])
    pairs, counts = np.unique(np.stack([lo, hi], axis=1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -counts)) if len(counts) else np.zeros(0, int)
    return [(int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])) for i in order[:n]]


def feature_parts(
    feature_maps: Any, part_maps: Any, part_names: Sequence[str], feature_ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """Which true part each feature sits on (SynthBirds ground truth; not in the paper).

    Uses :func:`qpmlib.metrics.part_alignment`: a feature's part is the one holding most of its positive
    activation mass over the given images, ``share`` is that part's fraction of the mass, and ``on_bird`` the
    fraction on any part at all (the rest lies on the background). ``peak_part`` and ``peak_share`` read the
    feature by where it peaks instead (:func:`qpmlib.metrics.part_peak_alignment`): the part its peaks lie on
    most, and their value-weighted coverage by that part; a low activation floor over the background lowers
    ``share`` but not ``peak_share``.

    Args:
        feature_maps: (N, D, H, W) feature maps, e.g. of the training images.
        part_maps: (N, K, H, W) per-patch part coverage from :func:`qpmlib.data.synthbirds.part_maps`.
        part_names: the K part names (:func:`qpmlib.data.synthbirds.part_names`).
        feature_ids: the id of each of the D channels (e.g. ``selected`` for maps of the selected features);
            default ``0..D-1``.

    Returns:
        DataFrame indexed by ``feature`` with columns ``part`` (name, "(none)" for a feature never positive),
        ``share``, ``on_bird``, ``peak_part`` and ``peak_share`` (shares are floats in [0, 1]).

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
    peak = part_peak_alignment(maps, parts)
    names = [part_names[k] if k >= 0 else NO_PART for k in per_part.best_part]
    peak_names = [part_names[k] if k >= 0 else NO_PART for k in peak.best_part]
    return pd.DataFrame(
        {"part": names, "share": per_part.per_feature, "on_bird": bird.per_feature, "peak_part": peak_names,
         "peak_share": peak.per_feature},
        index=pd.Index(ids, name="feature"),
    )


def _attribute_columns(attributes: pd.DataFrame) -> list[str]:
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
            :func:`qpmlib.class_pair_features`).
        c1: first class.
        c2: second class.
        parts: optional :func:`feature_parts` table indexed by the same feature ids; adds ``part``, ``share``
            and ``on_bird``.
        class_names: optional names of all classes for the ``used_by`` column.

    Returns:
        DataFrame with columns ``feature``, ``role`` ("shared", "only_c1", "only_c2"), ``used_by`` ("both" or
        the class name) and, with ``parts``, ``part``, ``share`` and ``on_bird``; shared features first.

    Raises:
        ValueError: see :func:`qpmlib.class_pair_features`; also when ``parts`` lacks a feature.
    """
    groups = class_pair_features(assignment, selected, c1, c2)
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
    """The n most confused class pairs (:func:`qpmlib.most_confused_pairs`), with names and attributes.

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
        ValueError: see :func:`qpmlib.most_confused_pairs`.
    """
    rows = []
    for c1, c2, count in most_confused_pairs(y_true, y_pred, n):
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


def default_pairs(y_true: Any, pred_qpm: Any, pred_dense: Any, n: int, *,
                  first: Iterable[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """Class pairs to offer in a chapter: ``first``, then DINO-QPM's most confused pairs, then the dense model's,
    then (0, 1).

    Args:
        y_true: (N,) true labels.
        pred_qpm: (N,) DINO-QPM predictions.
        pred_dense: (N,) dense-model predictions.
        n: at most this many pairs (>= 1).
        first: pairs ``(c1, c2)``, ``c1 < c2``, to offer before the confused ones (e.g. :func:`paper_pairs`).

    Returns:
        up to n distinct ``(c1, c2)`` with ``c1 < c2``; never empty (falls back to classes 0 and 1).

    Raises:
        ValueError: for n < 1 or different lengths.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pairs: list[tuple[int, int]] = []
    for pair in first:
        if tuple(pair) not in pairs and len(pairs) < n:
            pairs.append(tuple(pair))
    for pred in (pred_qpm, pred_dense):
        for c1, c2, _ in most_confused_pairs(y_true, pred, n):
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


def top_activating_patches(
    feature_maps: Any | Iterable[Any], feature: int, k: int, *, one_per_image: bool = True
) -> list[tuple[int, int, int, float]]:
    """The k patches where one feature is most active over a dataset (prototype-style views).

    Args:
        feature_maps: (N, D, H, W) maps of the training images, or an iterable of (B, D, H, W) batches in
            dataset order (so a cache can be streamed); image indices count across batches.
        feature: feature id (index into D).
        k: number of patches.
        one_per_image: keep only each image's strongest patch (so k distinct images), as prototype
            visualisations do; False allows several patches from one image.

    Returns:
        up to k tuples ``(image_index, row, col, value)`` by value descending (ties: lower image index, row, col).

    Raises:
        ValueError: for k < 1, bad batch shapes or a feature outside [0, D).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    batches = [feature_maps] if isinstance(feature_maps, (np.ndarray, torch.Tensor)) else feature_maps
    best: list[tuple[float, int, int, int]] = []  # min-heap of (value, -image, -row, -col)
    offset = 0
    for batch in batches:
        b = np.asarray(batch)
        if b.ndim != 4:
            raise ValueError(f"feature maps must have shape (N, D, H, W), got a batch of shape {b.shape}")
        if not 0 <= feature < b.shape[1]:
            raise ValueError(f"feature {feature} is outside [0, {b.shape[1]})")
        m = b[:, feature].astype(np.float64)  # (B, H, W)
        w = m.shape[2]
        flat = m.reshape(len(m), -1)
        if one_per_image:
            pos = flat.argmax(axis=1)
            cands = [(flat[i, pos[i]], i, pos[i]) for i in range(len(m))]
        else:
            top = np.argsort(-flat, axis=None, kind="stable")[:k]
            cands = [(flat.flat[t], t // flat.shape[1], t % flat.shape[1]) for t in top]
        for value, i, p in cands:
            item = (float(value), -(offset + int(i)), -(int(p) // w), -(int(p) % w))
            if len(best) < k:
                heapq.heappush(best, item)
            elif item > best[0]:
                heapq.heapreplace(best, item)
        offset += len(m)
    return [(-i, -r, -c, v) for v, i, r, c in sorted(best, reverse=True)]
