"""Figures of where an explanation lies on the object: paper Fig. 1 (linear probe against DINO-QPM) and Fig. 6
(the dilated mask of Plausibility).

Both draw numbers from :mod:`qpmlib.analysis.localisation`, which takes them from the metric's own functions.
Public names: :func:`probe_vs_qpm_figure` (Fig. 1), :func:`plausibility_figure` (Fig. 6), :data:`REGION_COLOURS`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib.patches as mpatches
import numpy as np
from matplotlib.figure import Figure

from qpmlib.analysis.localisation import REGIONS, ExplanationPair, PlausibilityView
from qpmlib.figures.explanations import cam_figure, feature_colours, local_explanation
from qpmlib.paper import method_display

__all__ = ["REGION_COLOURS", "probe_vs_qpm_figure", "plausibility_figure"]

#: Colour of each region of :data:`qpmlib.analysis.localisation.REGIONS` in Fig. 6.
REGION_COLOURS = {"object": (0.55, 0.75, 0.95), "margin": (1.0, 0.6, 0.1), "background": (0.93, 0.93, 0.93)}
#: Marker of a feature's peak in each region.
_PEAK_MARKERS = {"object": "o", "margin": "^", "background": "X"}


def _name(names: Sequence[str] | None, c: int) -> str:
    """A class's name, wrapped to fit above one panel (long SynthBirds and Cars names)."""
    return textwrap.fill(names[c] if names is not None else f"class {c}", 30)


def probe_vs_qpm_figure(pairs: Sequence[ExplanationPair], *, class_names: Sequence[str] | None = None) -> Figure:
    """Paper Fig. 1: one row per test image with (a) the image, (b) the linear probe's CAM, (c) DINO-QPM's CAM
    and (d) DINO-QPM's explanation split into its class's features.

    Each title gives the predicted class and, where the dataset has masks, the image's Plausibility score.

    Args:
        pairs: :func:`qpmlib.analysis.localisation.probe_vs_qpm`.
        class_names: names of all classes (default "class i").

    Returns:
        Figure with ``len(pairs)`` rows and 4 columns.

    Raises:
        ValueError: when ``pairs`` is empty.
    """
    if not pairs:
        raise ValueError("no image to show; pass at least one index to probe_vs_qpm")
    fig = Figure(figsize=(11.0, 2.7 * len(pairs)), layout="constrained")
    axes = fig.subplots(len(pairs), 4, squeeze=False)
    for row, pair in zip(axes, pairs):
        scores = pair.plausibility()
        probe_cam, qpm_cam = pair.cams()
        row[0].imshow(pair.qpm.image)
        row[0].set_axis_off()
        row[0].set_title(f"(a) image {pair.qpm.image_id}\ntrue: {_name(class_names, pair.qpm.label)}",
                         fontsize="small", loc="left")
        for k, (ax, view, g, label) in enumerate(zip(row[1:3], (pair.probe, pair.qpm), (probe_cam, qpm_cam),
                                                     (method_display("linear_probe"), method_display("dino_qpm")))):
            cam_figure(view.image, g, ax=ax)
            score = "" if scores is None else f"\nPlausibility {scores[k]:.2f}"
            ax.set_title(f"({'bc'[k]}) {label} CAM\npred: {_name(class_names, view.prediction)}{score}",
                         fontsize="small", loc="left")
        local_explanation(pair.qpm.image, pair.qpm.feature_maps, pair.qpm.feature_ids.tolist(), ax=row[3],
                          title=f"(d) its {len(pair.qpm.feature_ids)} features")
        row[3].set_title(row[3].get_title(), fontsize="small", loc="left")
        row[3].set_title("")
    return fig


def _grid_outline(ax, mask: np.ndarray, shape: tuple[int, int], **style: Any) -> None:
    """Draw the outline of a patch-grid mask along the patch borders over an image of ``shape`` pixels."""
    k = 8  # sub-samples per patch, so the outline follows the patch edges
    up = np.kron(mask.astype(float), np.ones((k, k)))
    y = (np.arange(up.shape[0]) + 0.5) * shape[0] / up.shape[0] - 0.5
    x = (np.arange(up.shape[1]) + 0.5) * shape[1] / up.shape[1] - 0.5
    if up.min() < 0.5 < up.max():
        ax.contour(x, y, up, levels=[0.5], **style)


def plausibility_figure(image: Any, view: PlausibilityView, *, title: str | None = None) -> Figure:
    """Paper Fig. 6: what Plausibility measures on one image.

    (a) the image with the object mask M (solid) and its dilation M_dil (dashed); (b) the map G of Eq. 3,
    as the metric computes it, over the image with both outlines and each feature's strongest patch (a circle on
    M, a triangle on the ring that the dilation adds, a cross outside M_dil); (c) the patch grid coloured by
    region and darkened where G is large, with the share of G that falls in each region: the score is the
    object's share plus the ring's.

    Args:
        image: (H, W, 3) image in [0, 1].
        view: :func:`qpmlib.analysis.localisation.plausibility_view` of the same image.
        title: optional figure title.

    Returns:
        Figure with three panels.
    """
    img = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    size = img.shape[:2]
    fig = Figure(figsize=(11.0, 3.6), layout="constrained")
    ax_img, ax_cam, ax_grid = fig.subplots(1, 3)
    outlines = (("mask M", view.mask, "-"), ("dilated M_dil", view.dilated, "--"))
    for ax in (ax_img, ax_cam):
        if ax is ax_cam:
            top = view.cam.max()
            cam_figure(img, view.cam / top if top > 0 else view.cam, ax=ax)
        else:
            ax.imshow(img)
            ax.set_axis_off()
        for _, m, style in outlines:
            _grid_outline(ax, m, size, colors="white", linewidths=1.5, linestyles=style)
    ax_img.set_title("(a) image, M (solid) and M_dil (dashed)", fontsize="small")
    ax_img.legend(handles=[mpatches.Patch(fill=False, edgecolor="black", linestyle=s, label=n)
                           for n, _, s in outlines], loc="lower left", fontsize="x-small")
    grid = view.mask.shape
    for p in view.peaks.itertuples():
        x, y = (p.col + 0.5) * size[1] / grid[1] - 0.5, (p.row + 0.5) * size[0] / grid[0] - 0.5
        ax_cam.plot(x, y, _PEAK_MARKERS[p.region], ms=10, mec="white", mew=1.5, mfc=feature_colours([p.feature])[0])
        ax_grid.plot(p.col, p.row, _PEAK_MARKERS[p.region], ms=8, mec="black", mfc=feature_colours([p.feature])[0])
        if p.region == "margin":
            ax_cam.annotate("", xy=(x, y), xytext=(x + size[1] * 0.12, y - size[0] * 0.12),
                            arrowprops={"arrowstyle": "->", "color": "white", "lw": 1.5})
    n_margin = int((view.peaks.region == "margin").sum())
    ax_cam.set_title(f"(b) weighted map G and the features' peaks\n{n_margin} of {len(view.peaks)} peaks on the "
                     "ring only M_dil covers", fontsize="small")
    region = np.where(view.mask, 0, np.where(view.dilated, 1, 2))
    total, top = view.cam.sum(), view.cam.max()
    strength = view.cam / top if top > 0 else view.cam  # darker where G is larger
    ax_grid.imshow(np.array([REGION_COLOURS[r] for r in REGIONS])[region] * (1 - 0.6 * strength[..., None]))
    shares = {r: float(view.cam[region == k].sum() / total) if total > 0 else 0.0 for k, r in enumerate(REGIONS)}
    ax_grid.legend(handles=[mpatches.Patch(color=REGION_COLOURS[r], label=f"{r}: {shares[r]:.0%} of G")
                            for r in REGIONS], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small",
                   frameon=False)
    ax_grid.set_axis_off()
    ax_grid.set_title(f"(c) patch grid: Plausibility {view.score:.2f}\n(with M alone: {view.score_undilated:.2f})",
                      fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig
