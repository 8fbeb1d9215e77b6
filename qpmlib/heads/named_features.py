"""Named features: a part name and a confidence for every selected DINO-QPM feature, class explanations in words,
and how often those words match the attributes that define each SynthBirds class.

Naming. With ``A = max(F, 0)`` a feature's non-negative activation and ``P_k`` region k's coverage of each patch
(the parts, then the background = 1 - sum_k P_k), the feature's share on region k over a set of images is
``s_k = sum_{n,h,w} A P_k / sum_{n,h,w} A`` (:func:`part_shares`; the same mass as
:func:`qpmlib.metrics.part_alignment`), and region k's area is ``a_k = sum_{n,h,w} P_k / (N H W)``
(:func:`region_areas`): the share a spatially uniform activation would get on it. The background covers most of
an image, so the largest raw share is nearly always the background's. A feature is therefore named after the
region whose share most exceeds its area, ``argmax_k (s_k - a_k)``, background included (a feature that really
sits on the background is still named so), with confidence ``(s_k - a_k) / (1 - a_k)`` in [0, 1]: 1 when all of
its mass is on the region, 0 when it is no more concentrated there than a uniform activation. A feature that never
activates is ``"none"`` with confidence 0.

Agreement (SynthBirds). A class's *defining* attributes are, by default (``mode="nearest"``), those in which it
differs from its nearest classes (the classes at the smallest Hamming distance over the attributes): what must be
looked at to tell it from its closest look-alikes. ``mode="visible"`` takes every attribute whose value can be
seen (all but an absent crest or eye ring). Each attribute belongs to one part
(:data:`qpmlib.data.synthbirds.ATTRIBUTE_PART`). For a class with assigned features, precision is the share of
its features whose name is a defining part, recall the share of its defining parts named by at least one of its
features; the overall scores are their means over classes. No paper reports this number. Its chance level is the
same score for a class given the same number of features drawn uniformly at random from the selected ones, in
closed form: expected precision = the share of the selected features named after a defining part; expected recall
= the mean over defining parts p of ``1 - C(F - m_p, k) / C(F, k)``, with m_p features named p and k the class's.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
import pandas as pd
import torch

from qpmlib.data.synthbirds import ATTRIBUTE_PART, ATTRIBUTES

__all__ = [
    "AGREEMENT_MODES",
    "BACKGROUND",
    "UNNAMED",
    "Agreement",
    "FeatureNames",
    "attribute_agreement",
    "class_explanations",
    "defining_attributes",
    "name_features",
    "part_shares",
    "region_areas",
]

BACKGROUND = "background"
UNNAMED = "none"
#: Ways to pick a class's defining attributes in :func:`defining_attributes`.
AGREEMENT_MODES = ("nearest", "visible")
#: Attribute values that leave nothing to see.
_ABSENT = {("crest", "none"), ("eye_ring", "none")}


def part_shares(feature_maps, part_maps) -> np.ndarray:
    """Share of each feature's positive activation mass on each part and on the background.

    Args:
        feature_maps: (N, F, H, W) feature maps (numpy or torch).
        part_maps: (N, n_parts, H, W) part coverage fractions in [0, 1].

    Returns:
        float64 (F, n_parts + 1): columns are the parts then the background; rows sum to 1, or are all 0 for a
        feature with no positive activation.

    Raises:
        ValueError: for mismatched shapes, non-finite maps or coverage outside [0, 1].
    """
    maps = torch.as_tensor(np.asarray(feature_maps), dtype=torch.float64)
    parts = torch.as_tensor(np.asarray(part_maps), dtype=torch.float64)
    if maps.ndim != 4 or parts.ndim != 4 or parts.shape[0] != maps.shape[0] or parts.shape[2:] != maps.shape[2:]:
        raise ValueError(f"expected feature_maps (N, F, H, W) and part_maps (N, n_parts, H, W) on the same images "
                         f"and grid, got {tuple(maps.shape)} and {tuple(parts.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("feature_maps contain NaN or infinite values")
    a = maps.clamp_min(0).flatten(2)  # (N, F, HW)
    mass = torch.einsum("nfp,nkp->fk", a, _regions(parts))  # (F, K + 1)
    total = a.sum(dim=(0, 2))[:, None]
    return torch.where(total > 0, mass / total.clamp_min(1e-300), 0.0).numpy()


def region_areas(part_maps) -> np.ndarray:
    """Each part's and the background's share of the patch coverage of some images.

    Args:
        part_maps: (N, n_parts, H, W) part coverage fractions in [0, 1].

    Returns:
        float64 (n_parts + 1,): the parts then the background; sums to 1. It is the share a feature with the same
        activation on every patch of every image has on each region.

    Raises:
        ValueError: for a map that is not 4-D or coverage outside [0, 1].
    """
    parts = torch.as_tensor(np.asarray(part_maps), dtype=torch.float64)
    if parts.ndim != 4 or parts.numel() == 0:
        raise ValueError(f"expected part_maps (N, n_parts, H, W) with at least one patch, got {tuple(parts.shape)}")
    cover = _regions(parts).sum(dim=(0, 2))
    return (cover / cover.sum()).numpy()


def _regions(parts: torch.Tensor) -> torch.Tensor:
    """(N, K + 1, HW) coverage of the K parts and the background from (N, K, H, W) part maps checked to be in [0, 1]."""
    if bool((parts < 0).any()) or bool((parts > 1 + 1e-6).any()):
        raise ValueError("part_maps must hold coverage fractions in [0, 1]")
    p = parts.flatten(2)
    return torch.cat([p, (1 - p.sum(dim=1, keepdim=True)).clamp_min(0)], dim=1)


@dataclass(frozen=True)
class FeatureNames:
    """Names of features from their overlap with part segments.

    Attributes:
        names: (F,) a part name, :data:`BACKGROUND`, or :data:`UNNAMED` for a feature that never activates.
        confidence: (F,) ``(s_k - a_k) / (1 - a_k)`` of the named region k, in [0, 1]: 0 for a feature no more
            concentrated there than a uniform activation, 1 for one entirely on it.
        shares: (F, n_parts + 1) raw shares ``s`` on every part and (last column) the background.
        areas: (n_parts + 1,) each region's area ``a``: its share under a spatially uniform activation.
        part_names: the n_parts part names.
    """

    names: list[str]
    confidence: np.ndarray
    shares: np.ndarray
    areas: np.ndarray
    part_names: list[str]

    def table(self, feature_ids=None) -> pd.DataFrame:
        """One row per feature.

        Columns: ``feature`` (id), ``name``, ``confidence``, ``share`` and ``area`` (the named region's raw share and
        area, NaN for an unnamed feature), then the raw share on every region.
        """
        ids = np.arange(len(self.names)) if feature_ids is None else np.asarray(feature_ids)
        regions = [*self.part_names, BACKGROUND]
        col = [regions.index(n) if n in regions else -1 for n in self.names]
        rows = np.arange(len(col))
        named = np.asarray(col) >= 0
        df = pd.DataFrame({"feature": ids, "name": self.names, "confidence": self.confidence,
                           "share": np.where(named, self.shares[rows, col], np.nan),
                           "area": np.where(named, self.areas[col], np.nan)})
        for j, region in enumerate(regions):
            df[region] = self.shares[:, j]
        return df


def name_features(feature_maps, part_maps, part_names: list[str]) -> FeatureNames:
    """Name each feature after the region whose activation share most exceeds its area (see the module docstring).

    Args:
        feature_maps: (N, F, H, W) maps of the features to name (e.g. a QPM model's selected features).
        part_maps: (N, n_parts, H, W) part coverage of the same images (:func:`qpmlib.heads.parts.part_truth`).
        part_names: the n_parts names.

    Returns:
        :class:`FeatureNames`.

    Raises:
        ValueError: mismatched shapes or a wrong number of part names.
    """
    shares = part_shares(feature_maps, part_maps)
    if shares.shape[1] != len(part_names) + 1:
        raise ValueError(f"{shares.shape[1] - 1} part maps but {len(part_names)} part names")
    areas = region_areas(part_maps)
    regions = [*part_names, BACKGROUND]
    active = shares.sum(axis=1) > 0
    excess = shares - areas[None]
    best = excess.argmax(axis=1)
    gain, room = excess[np.arange(len(best)), best], 1 - areas[best]
    conf = np.divide(gain, room, out=np.zeros_like(gain), where=active & (room > 0)).clip(0, 1)
    names = [regions[b] if a else UNNAMED for b, a in zip(best, active)]
    return FeatureNames(names, conf, shares, areas, list(part_names))


def class_explanations(assignment: np.ndarray, names: FeatureNames, class_names: list[str] | None = None,
                       feature_ids=None) -> list[str]:
    """Each class's explanation in words: ``"class 12 (Name) = head #3 (0.81) + belly #7 (0.64)"``.

    Args:
        assignment: (N_c, F) binary class-feature assignment, columns in the order of ``names``.
        names: the features' names.
        class_names: N_c class names (optional).
        feature_ids: F feature ids to show after the names (default: column numbers).

    Returns:
        N_c strings; a feature's confidence follows its name, features in descending confidence.

    Raises:
        ValueError: when the assignment's width differs from the number of names.
    """
    w = np.asarray(assignment) != 0
    if w.ndim != 2 or w.shape[1] != len(names.names):
        raise ValueError(f"assignment must be (N_c, {len(names.names)}), got {w.shape}")
    ids = np.arange(w.shape[1]) if feature_ids is None else np.asarray(feature_ids)
    out = []
    for c, row in enumerate(w):
        cols = sorted(np.flatnonzero(row), key=lambda j: -names.confidence[j])
        words = " + ".join(f"{names.names[j]} #{ids[j]} ({names.confidence[j]:.2f})" for j in cols) or "nothing"
        label = f"class {c}" + (f" ({class_names[c]})" if class_names is not None else "")
        out.append(f"{label} = {words}")
    return out


def defining_attributes(class_attrs: pd.DataFrame, mode: str = "nearest") -> dict[int, list[str]]:
    """The attributes that define each SynthBirds class (see the module docstring).

    Args:
        class_attrs: :func:`qpmlib.data.synthbirds.class_attributes` (columns ``label`` and one per attribute).
        mode: ``"nearest"`` or ``"visible"`` (:data:`AGREEMENT_MODES`).

    Returns:
        label -> defining attribute names, in :data:`qpmlib.data.synthbirds.ATTRIBUTES` order.

    Raises:
        ValueError: an unknown mode or missing attribute columns.
    """
    if mode not in AGREEMENT_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(AGREEMENT_MODES)}")
    attrs = list(ATTRIBUTES)
    missing = [a for a in ["label", *attrs] if a not in class_attrs.columns]
    if missing:
        raise ValueError(f"class_attrs lacks columns {missing}; pass qpmlib.data.synthbirds.class_attributes(root)")
    values = class_attrs[attrs].to_numpy()
    labels = class_attrs["label"].to_numpy()
    out: dict[int, list[str]] = {}
    for i, label in enumerate(labels):
        if mode == "visible":
            out[int(label)] = [a for a, v in zip(attrs, values[i]) if (a, v) not in _ABSENT]
            continue
        differ = values != values[i]  # (N_c, n_attrs)
        dist = differ.sum(axis=1)
        dist[i] = len(attrs) + 1
        nearest = dist == dist.min()
        out[int(label)] = [a for j, a in enumerate(attrs) if differ[nearest, j].any()]
    return out


@dataclass(frozen=True)
class Agreement:
    """How often classes' named features match their defining attributes.

    Attributes:
        per_class: one row per class: ``label``, ``name``, ``named`` (its features' names),
            ``defining_attributes``, ``defining_parts``, ``precision``, ``recall`` (NaN for a class with no
            feature or no defining attribute), and their chance levels ``chance_precision``, ``chance_recall``.
        precision: mean per-class precision (the headline score).
        recall: mean per-class recall.
        mode: how the defining attributes were chosen.
        chance_precision: mean per-class precision of randomly drawn features (see the module docstring).
        chance_recall: mean per-class recall of randomly drawn features.
    """

    per_class: pd.DataFrame
    precision: float
    recall: float
    mode: str
    chance_precision: float
    chance_recall: float


def attribute_agreement(assignment: np.ndarray, names: FeatureNames, class_attrs: pd.DataFrame, *,
                        mode: str = "nearest") -> Agreement:
    """Score a class explanation's words against the attributes that define each SynthBirds class.

    Args:
        assignment: (N_c, F) binary class-feature assignment (row = label), columns in the order of ``names``.
        names: the features' names (:func:`name_features`).
        class_attrs: :func:`qpmlib.data.synthbirds.class_attributes` of the same dataset.
        mode: see :func:`defining_attributes`.

    Returns:
        :class:`Agreement`.

    Raises:
        ValueError: an assignment whose shape does not match the classes and names.
    """
    w = np.asarray(assignment) != 0
    if w.ndim != 2 or w.shape != (len(class_attrs), len(names.names)):
        raise ValueError(f"assignment must be (N_c, F) = ({len(class_attrs)}, {len(names.names)}), got {w.shape}")
    defining = defining_attributes(class_attrs, mode)
    n_features = len(names.names)
    rows = []
    for label, name in zip(class_attrs["label"], class_attrs["name"]):
        named = [names.names[j] for j in np.flatnonzero(w[label])]
        attrs = defining[int(label)]
        parts = sorted({ATTRIBUTE_PART[a] for a in attrs})
        scores = dict.fromkeys(["precision", "recall", "chance_precision", "chance_recall"], float("nan"))
        if named and parts:
            k = len(named)
            on_part = [names.names.count(p) for p in parts]  # m_p
            scores = {"precision": float(np.mean([n in parts for n in named])),
                      "recall": float(np.mean([p in named for p in parts])),
                      "chance_precision": sum(on_part) / n_features,
                      "chance_recall": float(np.mean([1 - comb(n_features - m, k) / comb(n_features, k)
                                                      for m in on_part]))}
        rows.append({"label": int(label), "name": name, "named": named, "defining_attributes": attrs,
                     "defining_parts": parts, **scores})
    df = pd.DataFrame(rows)
    means = {c: float(np.nanmean(df[c])) if df[c].notna().any() else float("nan")
             for c in ["precision", "recall", "chance_precision", "chance_recall"]}
    return Agreement(df, means["precision"], means["recall"], mode, means["chance_precision"], means["chance_recall"])
