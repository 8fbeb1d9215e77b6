"""Keypoint Labelling Classifiers (KLC; Chen, DTU report, code ``chensy618/SuperpixelCUB``): a head that trains nothing.

The facts come from the report (``../shared/seeds/004_*.txt``) and the authors' notebooks (``KCConCUB_update.ipynb``
and ``SuperpixelInvestigationCUB.ipynb`` at commit fb1e912): the classifier

1. keeps a few prototype images per class (the code loads 5 per class, ``dinov2_vitb14_5_prototypes``: 1,000
   for CUB's 200 classes, with their CLS tokens);
2. for a query, takes the ``top_k`` prototypes whose CLS token is most cosine-similar to the query's
   (``NUMBER_OF_PROTOTYPES = 5`` in the code; the report's text and table say 3);
3. segments the query and those prototypes into named parts (VLPart in the report);
4. describes each segment by the mean of the DINOv2 patch tokens inside it (``last_hidden_state``, i.e. the
   normed tokens, bilinearly upsampled to 64 x 64 and averaged over the segment);
5. pairs the query's segments with the pooled segments of all top-k prototypes by best buddies (mutual nearest
   neighbours under cosine distance, ``pairwise_distances_argmin_min``);
6. counts, for each prototype, how many of its segments are best buddies, sums the counts per class, divides by
   the total ("soft voting") and predicts the class with the largest share (ties: the lowest label).

Here the segmenter is the dataset's part ground truth (:mod:`qpmlib.heads.parts`): SynthBirds's true part maps,
CUB's segmentation split among its 15 part keypoints. Deviations:

* Segmenter: true parts instead of VLPart (the report's VLPart vocabulary differs from both datasets' parts).
* Segment descriptors are coverage-weighted means of the tokens on the patch grid, not means of bilinearly
  upsampled tokens over a 64 x 64 mask (the two agree up to the interpolation); a part needs at least
  ``min_part_area`` patches of coverage to count as a segment.
* How the code chose its 5 prototype images per class is not in the repository (its files are precomputed);
  the notebooks import ``KMeans`` and name a "KMEx baseline", so :func:`fit_klc` clusters each class's
  L2-normalised training CLS tokens with k-means (``prototypes_per_class`` clusters, seeded) and keeps the
  training image nearest to each centre.
* When no segment of the query has a best buddy (the code would divide by zero), the class of the most similar
  prototype by CLS is predicted.
* The report's Eq. 12 keeps only label-consistent matches for display; the code's classification counts all best
  buddies. ``semantic_filter=False`` (default) is the code; ``True`` counts only pairs with the same part name.

For the shared metrics, KLC's "features" are its parts: the maps are the query's part coverage, a sample's
weights are the number of matched segments of predicted-class prototypes per part, and its feature vector is each
part descriptor's best cosine similarity to a segment of the consulted prototypes (0 for an absent part). With
true part maps Plausibility is close to 1 by construction (the parts lie on the object), and the compactness keys
of :func:`qpmlib.heads.base.head_metrics` count parts; KLC's own compactness is :func:`klc_compactness`
(prototype images in all, per class, consulted per image).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from qpmlib.heads.base import HeadEvaluation
from qpmlib.train import TokenData

__all__ = [
    "KLCConfig",
    "KLCModel",
    "best_buddies",
    "check_klc_config",
    "fit_klc",
    "klc_compactness",
    "predict_klc",
    "segment_descriptors",
]


@dataclass(frozen=True)
class KLCConfig:
    """KLC settings; the defaults are the authors' code.

    Attributes:
        prototypes_per_class: prototype images kept per class (5 in the code).
        top_k: prototypes consulted per query, by CLS similarity (5 in the code, 3 in the report).
        min_part_area: patches of coverage a part needs to count as a segment.
        semantic_filter: count only best buddies with the same part name (report Eq. 12), not all (code).
        seed: k-means seed of the prototype selection.
    """

    prototypes_per_class: int = 5
    top_k: int = 5
    min_part_area: float = 0.5
    semantic_filter: bool = False
    seed: int = 0


def check_klc_config(cfg: KLCConfig, labels: np.ndarray) -> None:
    """Check the settings against the training labels before fitting.

    Raises:
        ValueError: a class with fewer training images than ``prototypes_per_class`` (the prototypes cannot
            be distinct images), ``top_k`` larger than the bank, or non-positive sizes.
    """
    if cfg.prototypes_per_class < 1 or cfg.top_k < 1 or cfg.min_part_area <= 0:
        raise ValueError(f"klc needs prototypes_per_class >= 1, top_k >= 1 and min_part_area > 0, got "
                         f"{cfg.prototypes_per_class}, {cfg.top_k}, {cfg.min_part_area}")
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < cfg.prototypes_per_class:
        c = classes[counts.argmin()]
        raise ValueError(f"klc: {cfg.prototypes_per_class} prototype images per class, but class {c} has only "
                         f"{counts.min()} training images; use prototypes_per_class <= {counts.min()}")
    if cfg.top_k > cfg.prototypes_per_class * len(classes):
        raise ValueError(f"klc: top_k={cfg.top_k} exceeds the {cfg.prototypes_per_class * len(classes)} "
                         "prototype images")


def segment_descriptors(patches: np.ndarray, parts: np.ndarray, min_area: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean token of each part of one image, weighted by the part's coverage of each patch.

    Args:
        patches: (P, D) patch tokens of one image.
        parts: (n_parts, H, W) part coverage fractions, H * W = P.
        min_area: a part needs at least this much coverage (in patches) to count.

    Returns:
        descriptors float32 (S, D) and the part index (S,) of each of the S segments, in part order.
    """
    cov = np.asarray(parts, np.float64).reshape(parts.shape[0], -1)  # (n_parts, P)
    area = cov.sum(axis=1)
    keep = np.flatnonzero(area >= min_area)
    desc = cov[keep] @ np.asarray(patches, np.float64) / area[keep, None]
    return desc.astype(np.float32), keep


def best_buddies(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mutual nearest neighbours of two descriptor sets under cosine similarity.

    Args:
        a: (m, D) descriptors (the query's segments).
        b: (n, D) descriptors (the prototypes' pooled segments).

    Returns:
        ``(buddy_a (m,) bool, buddy_b (n,) bool, nn_a (m,) index into b, nn_b (n,) index into a)``; ties go
        to the lowest index, as ``argmin`` does. Empty sets give empty arrays.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros(len(a), bool), np.zeros(len(b), bool), np.zeros(len(a), int), np.zeros(len(b), int)
    sim = F.normalize(torch.as_tensor(a, dtype=torch.float64), dim=1) @ \
        F.normalize(torch.as_tensor(b, dtype=torch.float64), dim=1).T  # (m, n)
    nn_a = sim.argmax(dim=1).numpy()
    nn_b = sim.argmax(dim=0).numpy()
    return nn_b[nn_a] == np.arange(len(a)), nn_a[nn_b] == np.arange(len(b)), nn_a, nn_b


@dataclass
class KLCModel:
    """The prototype bank of a fitted KLC.

    Attributes:
        rows: (M,) training rows of the prototype images.
        labels: (M,) their classes.
        cls: (M, D) their L2-normalised CLS tokens.
        segments: M descriptor arrays (S_m, D).
        segment_parts: M part-index arrays (S_m,).
        part_names: the part names (channel order of the part maps).
        n_classes: N_c.
        config: the settings.
        fit_seconds: wall time of :func:`fit_klc`.
    """

    rows: np.ndarray
    labels: np.ndarray
    cls: np.ndarray
    segments: list[np.ndarray]
    segment_parts: list[np.ndarray]
    part_names: list[str]
    n_classes: int
    config: KLCConfig
    fit_seconds: float


def _kmeans_medoids(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Rows of ``x`` nearest to each of k k-means centres (distinct rows)."""
    from sklearn.cluster import KMeans

    if k >= len(x):
        return np.arange(len(x))
    centres = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x).cluster_centers_
    d = ((x[:, None] - centres[None]) ** 2).sum(axis=2)  # (n, k)
    picked: list[int] = []
    for j in range(k):
        order = np.argsort(d[:, j], kind="stable")
        picked.append(int(next(i for i in order if i not in picked)))
    return np.array(picked)


def fit_klc(train: TokenData, parts: np.ndarray, part_names: list[str], cfg: KLCConfig = KLCConfig()) -> KLCModel:
    """Choose the prototype images and describe their segments.

    Args:
        train: training tokens (patch tokens (N, P, D), CLS (N, D), labels).
        parts: (N, n_parts, H, W) part coverage of the training images (:func:`qpmlib.heads.parts.part_truth`).
        part_names: the n_parts names.
        cfg: settings.

    Returns:
        :class:`KLCModel`.

    Raises:
        ValueError: bad settings (:func:`check_klc_config`) or part maps that do not match the tokens.
    """
    t0 = time.perf_counter()
    check_klc_config(cfg, train.labels)
    parts = np.asarray(parts)
    if parts.ndim != 4 or parts.shape[0] != len(train) or parts.shape[2] * parts.shape[3] != train.n_patches \
            or parts.shape[1] != len(part_names):
        raise ValueError(f"parts must be (N, n_parts, H, W) = ({len(train)}, {len(part_names)}, H, W) with "
                         f"H * W = {train.n_patches}, got {parts.shape}")
    cls = F.normalize(torch.as_tensor(np.array(train.cls, dtype=np.float32)), dim=1).numpy()
    rows = []
    for c in np.unique(train.labels):
        members = np.flatnonzero(train.labels == c)
        rows.extend(members[_kmeans_medoids(cls[members], cfg.prototypes_per_class, cfg.seed)])
    rows = np.array(rows)
    segs = [segment_descriptors(np.asarray(train.patches[r], np.float32), parts[r], cfg.min_part_area) for r in rows]
    return KLCModel(rows, train.labels[rows], cls[rows], [s[0] for s in segs], [s[1] for s in segs],
                    list(part_names), train.n_classes, cfg, time.perf_counter() - t0)


def predict_klc(model: KLCModel, data: TokenData, parts: np.ndarray, *, verbose: bool = False) -> HeadEvaluation:
    """Classify every image of a split and collect its explanation.

    Args:
        model: a fitted KLC.
        data: tokens of the split.
        parts: (N, n_parts, H, W) part coverage of those images.
        verbose: progress bar.

    Returns:
        :class:`~qpmlib.heads.base.HeadEvaluation`: ``logits`` are the class shares of matched segments
        (one-hot on the most CLS-similar prototype's class when nothing matches); ``feature_maps`` the parts'
        coverage; ``weights`` the matched segments of predicted-class (``label_weights``: true-class)
        prototypes per part; ``features`` each part's best cosine similarity to a consulted segment.

    Raises:
        ValueError: part maps that do not match the tokens or the model's parts.
    """
    cfg = model.config
    parts = np.asarray(parts, np.float32)
    if parts.shape[:2] != (len(data), len(model.part_names)) or parts.shape[2] * parts.shape[3] != data.n_patches:
        raise ValueError(f"parts must be ({len(data)}, {len(model.part_names)}, H, W) with H * W = "
                         f"{data.n_patches}, got {parts.shape}")
    n, n_parts = len(data), len(model.part_names)
    logits = np.zeros((n, model.n_classes), np.float32)
    features = np.zeros((n, n_parts), np.float32)
    per_class = np.zeros((n, model.n_classes, n_parts), np.float32)  # matched segments per class and part
    cls = F.normalize(torch.as_tensor(np.array(data.cls, dtype=np.float32)), dim=1).numpy()
    for i in tqdm(range(n), desc="klc", disable=not verbose):
        top = np.argsort(-(model.cls @ cls[i]), kind="stable")[:cfg.top_k]
        q_desc, q_part = segment_descriptors(np.asarray(data.patches[i], np.float32), parts[i], cfg.min_part_area)
        p_desc = np.concatenate([model.segments[m] for m in top])
        p_part = np.concatenate([model.segment_parts[m] for m in top])
        owner = np.concatenate([np.full(len(model.segments[m]), m) for m in top])
        _, buddy_p, _, nn_p = best_buddies(q_desc, p_desc)
        if cfg.semantic_filter and len(p_part):
            buddy_p &= q_part[nn_p] == p_part
        for j in np.flatnonzero(buddy_p):
            per_class[i, model.labels[owner[j]], q_part[nn_p[j]]] += 1
        total = per_class[i].sum()
        if total > 0:
            logits[i] = per_class[i].sum(axis=1) / total
        else:
            logits[i, model.labels[top[0]]] = 1.0
        if len(q_desc) and len(p_desc):
            sim = F.normalize(torch.as_tensor(q_desc), dim=1) @ F.normalize(torch.as_tensor(p_desc), dim=1).T
            features[i, q_part] = sim.max(dim=1).values.numpy()
    pred = logits.argmax(axis=1)
    rows = np.arange(n)
    return HeadEvaluation(logits, features, parts.copy(), per_class[rows, pred], data.labels.copy(),
                          label_weights=per_class[rows, data.labels])


def klc_compactness(model: KLCModel, evaluation: HeadEvaluation) -> dict[str, float]:
    """KLC's own compactness: prototype images in all, per class, consulted per image, and matched segments.

    Args:
        model: the fitted KLC.
        evaluation: its :func:`predict_klc` output on the test split.

    Returns:
        ``{"n_prototypes", "n_per_class", "n_per_image", "matched_segments_per_image"}``; the last counts the
        matched segments of predicted-class prototypes.
    """
    return {"n_prototypes": int(len(model.rows)), "n_per_class": float(model.config.prototypes_per_class),
            "n_per_image": float(model.config.top_k),
            "matched_segments_per_image": float(evaluation.weights.sum(axis=1).mean())}
