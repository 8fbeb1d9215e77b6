"""Where an explanation lies on the object: the numbers behind paper Figs. 1 and 6.

    pairs = probe_vs_qpm(probe_run, qpm_run, [0, 3])      # Fig. 1: one test image under both models
    pairs[0].cams(), pairs[0].plausibility()
    view = plausibility_view(maps, weights, mask)          # Fig. 6: the map, M, M_dil and each feature's peak
    index = margin_example(qpm_run)                         # a test image on which the dilation matters most
    image, view = plausibility_example(qpm_run)             # that image and its view

Every number here is computed by :mod:`qpmlib.metrics` itself (:func:`~qpmlib.metrics.plausibility_maps`,
:func:`~qpmlib.metrics.dilate_masks`, :func:`~qpmlib.metrics.plausibility_scores`) and the CAM by
:func:`qpmlib.runs.evaluate.cam`, so a figure shows exactly what the stored metric measured (reference_spec
§5.5, §5.7): the reference code's min-shifted map by default, on the test split, with the predicted class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qpmlib.metrics import dilate_masks, plausibility_maps, plausibility_scores
from qpmlib.runs.evaluate import TestImage, cam, object_masks, split_tokens, test_image
from qpmlib.runs.run import Run
from qpmlib.train import evaluate

__all__ = ["REGIONS", "PlausibilityView", "plausibility_view", "ExplanationPair", "probe_vs_qpm", "image_mask",
           "margin_example", "plausibility_example"]

#: Where a patch lies with respect to the object: on the mask M, on the ring M_dil \ M that the dilation adds,
#: or outside M_dil.
REGIONS = ("object", "margin", "background")


@dataclass
class PlausibilityView:
    """One image as Plausibility sees it (paper Fig. 6, Eq. 3-5).

    Attributes:
        cam: (H, W) the map G of Eq. 3 as the metric computes it (min-shifted, or clipped at 0), not rescaled.
        mask: (H, W) bool object mask M on the patch grid.
        dilated: (H, W) bool M_dil = M dilated by the metric's 3x3 square.
        score: the metric's per-image score, the share of G on M_dil.
        score_undilated: the share of G on M alone (the ``gradcam`` variant).
        peaks: one row per drawn feature: ``feature``, ``row``, ``col`` (its strongest patch), ``value`` and
            ``region`` (one of :data:`REGIONS`).
    """

    cam: np.ndarray
    mask: np.ndarray
    dilated: np.ndarray
    score: float
    score_undilated: float
    peaks: pd.DataFrame

    @property
    def margin(self) -> np.ndarray:
        """(H, W) bool: the patches that the dilation adds to the mask."""
        return self.dilated & ~self.mask


def plausibility_view(
    feature_maps: Any,
    weights: Any,
    mask: Any,
    *,
    feature_ids: Sequence[int] | None = None,
    subtract_min: bool = True,
) -> PlausibilityView:
    """The pieces of one image's Plausibility score, computed by the metric's own functions.

    Args:
        feature_maps: (D, H, W) feature maps of the image.
        weights: (D,) the predicted class's weight row.
        mask: (H, W) bool object mask on the patch grid.
        feature_ids: the features whose peaks to locate (default: those with a non-zero weight).
        subtract_min: the reference code's min-shift (default) or the paper's clipping at 0.

    Returns:
        :class:`PlausibilityView`.

    Raises:
        ValueError: for mismatched shapes or a feature id outside [0, D).
    """
    maps = np.asarray(feature_maps, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    if maps.ndim != 3 or w.shape != (maps.shape[0],) or m.shape != maps.shape[1:]:
        raise ValueError(f"expected feature_maps (D, H, W), weights (D,) and mask (H, W), got {maps.shape}, "
                         f"{w.shape} and {m.shape}")
    ids = np.flatnonzero(w) if feature_ids is None else np.asarray(feature_ids, dtype=int).ravel()
    if ((ids < 0) | (ids >= maps.shape[0])).any():
        raise ValueError(f"feature ids must lie in [0, {maps.shape[0]}), got {ids.tolist()}")
    dilated = dilate_masks(m[None])[0].numpy()
    score, plain = (float(plausibility_scores(maps[None], w[None], m[None], dilate=d, subtract_min=subtract_min)[0])
                    for d in (True, False))
    rows = []
    for f in ids:
        r, c = np.unravel_index(int(np.argmax(maps[f])), m.shape)
        region = REGIONS[0] if m[r, c] else REGIONS[1] if dilated[r, c] else REGIONS[2]
        rows.append({"feature": int(f), "row": int(r), "col": int(c), "value": float(maps[f, r, c]),
                     "region": region})
    return PlausibilityView(
        cam=plausibility_maps(maps[None], w[None], subtract_min=subtract_min)[0].numpy(),
        mask=m,
        dilated=dilated,
        score=score,
        score_undilated=plain,
        peaks=pd.DataFrame(rows, columns=["feature", "row", "col", "value", "region"]),
    )


@dataclass
class ExplanationPair:
    """One test image under the linear probe and under DINO-QPM (paper Fig. 1).

    Attributes:
        probe: the image under the f_CLS linear probe (its maps are the frozen patch tokens, reference_spec §5.7).
        qpm: the same image under DINO-QPM.
        mask: (H, W) bool object mask, or None when the dataset has no segmentations.
    """

    probe: TestImage
    qpm: TestImage
    mask: np.ndarray | None

    def cams(self) -> tuple[np.ndarray, np.ndarray]:
        """The two CAMs ``sum_d W[c, d] F_d`` of the predicted classes, each min-shifted and scaled to [0, 1]."""
        return tuple(cam(v.feature_maps, v.weights) for v in (self.probe, self.qpm))

    def plausibility(self) -> tuple[float, float] | None:
        """The metric's score of this image for the probe and DINO-QPM; None without a mask."""
        if self.mask is None:
            return None
        return tuple(plausibility_view(v.feature_maps, v.weights, self.mask).score for v in (self.probe, self.qpm))


def image_mask(run: Run, view: TestImage) -> np.ndarray | None:
    """The object mask of a test image on its maps' grid, as the metric reads it; None without segmentations."""
    masks = object_masks(run.profile, [view.image_id], view.feature_maps.shape[-1])
    return None if masks is None else masks[0]


def probe_vs_qpm(probe_run: Run, qpm_run: Run, indices: Sequence[int]) -> list[ExplanationPair]:
    """Paper Fig. 1: the same test images under the linear probe and under DINO-QPM.

    Args:
        probe_run: a ``linear_probe`` run.
        qpm_run: a ``dino_qpm`` run of the same profile (the same test split).
        indices: test image indices.

    Returns:
        one :class:`ExplanationPair` per index.

    Raises:
        ValueError: when the two runs do not share their test images, or for an index outside the test split.
    """
    pairs = []
    for i in indices:
        probe, qpm = test_image(probe_run, i), test_image(qpm_run, i)
        if probe.image_id != qpm.image_id:
            raise ValueError(f"test image {i} is image {probe.image_id} for the probe but {qpm.image_id} for "
                             "DINO-QPM; pass two runs of the same profile and dataset")
        pairs.append(ExplanationPair(probe, qpm, image_mask(qpm_run, qpm)))
    return pairs


def margin_example(run: Run) -> int | None:
    """A test image on which the dilation of Eq. 5 matters most (for the Fig. 6 illustration).

    Over the test split, the image whose score gains most from M_dil over M, among the correctly predicted ones
    (all images when none is correct); ties go to the lowest index.

    Args:
        run: a finished run with a ``head_weight`` (e.g. DINO-QPM).

    Returns:
        the test index, or None when the dataset has no segmentations.
    """
    test, model = split_tokens(run.profile, "test"), run.model()
    ev = evaluate(model, test, device="cpu")
    masks = object_masks(run.profile, test.image_ids, ev.feature_maps.shape[-1])
    if masks is None:
        return None
    rows = model.head_weight.detach().cpu().numpy()[ev.predictions]
    gain = (plausibility_scores(ev.feature_maps, rows, masks, dilate=True)
            - plausibility_scores(ev.feature_maps, rows, masks, dilate=False))
    pool = np.flatnonzero(ev.predictions == ev.labels)
    pool = pool if pool.size else np.arange(len(gain))
    return int(pool[np.argmax(gain[pool])])


def plausibility_example(run: Run, index: int | None = None) -> tuple[TestImage, PlausibilityView] | None:
    """A test image under a run's model and its :class:`PlausibilityView` (paper Fig. 6).

    Args:
        run: a finished run with a ``head_weight`` (e.g. DINO-QPM).
        index: test image index; None picks :func:`margin_example`.

    Returns:
        ``(image view, plausibility view)`` with the peaks of the predicted class's features, or None when the
        dataset has no segmentations.
    """
    index = margin_example(run) if index is None else index
    if index is None:
        return None
    view = test_image(run, index)
    mask = image_mask(run, view)
    if mask is None:
        return None
    return view, plausibility_view(view.feature_maps, view.weights, mask, feature_ids=view.feature_ids)
