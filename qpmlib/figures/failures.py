"""The failure-analysis figure of paper Figs. 18-23 (numbers from :mod:`qpmlib.analysis.failures`)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from qpmlib.analysis.failures import FailureExample
from qpmlib.figures.explanations import cam_figure, local_explanation_array

__all__ = ["failure_figure"]


def _feature_label(ids: Sequence[int], parts: Mapping[int, str] | None) -> str:
    if parts is None:
        return "features " + ", ".join(str(i) for i in ids)
    return ", ".join(f"{i}:{parts.get(int(i), '?')}" for i in ids)


def _wrap(text: str, width: int = 28) -> str:
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
        cam_figure(ex.image, ex.dense_cam, ax=row[1])
        row[1].set_title("dense CAM", fontsize="small")
        for ax, ids, what in ((row[2], ex.true_features, "true"), (row[3], ex.pred_features, "predicted")):
            ax.imshow(local_explanation_array(ex.image, ex.qpm_maps, list(ids), alpha=alpha))
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
