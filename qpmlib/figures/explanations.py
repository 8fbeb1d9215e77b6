"""Explanation figures: local explanations, CAMs, class pairs, prototype patches, one test image under a model.

Array helpers return numpy arrays; figure helpers return a matplotlib ``Figure`` (they never call ``show()``,
save or close anything) so that each chapter decides the layout. A feature id always gets the same colour
(:func:`feature_colours`), so one feature looks the same in every figure of the book.

"Feature id" means an index into the first axis of the feature maps being drawn: a dense model's feature index,
or, for a fine-tuned QPM model whose maps hold only the selected features, the position among them.

Public names: :data:`PALETTE`, :func:`feature_colours`, :func:`upsample_maps`, :func:`local_explanation_array`,
:func:`local_explanation`, :func:`cam_figure`, :func:`class_pair_figure`, :func:`top_patches_figure`,
:func:`feature_maps_figure` (Fig. 10), :func:`explanation_figure` (any method on one test image). The numbers
they draw come from :mod:`qpmlib.runs.evaluate` (``cam``, ``test_image``) and :mod:`qpmlib.analysis.pairs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.patches as mpatches
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from qpmlib.analysis.pairs import class_pair_features
from qpmlib.analysis.peers import PeerExplanations
from qpmlib.analysis.sweeps import overrides_for
from qpmlib.config import Profile
from qpmlib.paper import method_display
from qpmlib.runs.dino_qpm import run_dino_qpm
from qpmlib.runs.evaluate import TestImage, cam, test_image
from qpmlib.runs.run import Run

__all__ = [
    "PALETTE",
    "feature_colours",
    "upsample_maps",
    "local_explanation_array",
    "local_explanation",
    "cam_figure",
    "class_pair_figure",
    "top_patches_figure",
    "feature_maps_figure",
    "sweep_maps_figure",
    "explanation_figure",
    "peer_explanations_figure",
]

ArrayLike = Any  # numpy array or torch tensor

#: Qualitative palette of 20 colours, strong first: tab20's 10 dark shades, then its 10 light ones.
PALETTE: np.ndarray = np.array(matplotlib.colormaps["tab20"].colors[0::2] + matplotlib.colormaps["tab20"].colors[1::2])


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _image_hwc(image: ArrayLike) -> np.ndarray:
    """(3, H, W) or (H, W, 3) image in [0, 1] -> float (H, W, 3) clipped to [0, 1]."""
    img = _numpy(image).astype(np.float64)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must have shape (3, H, W) or (H, W, 3), got {tuple(_numpy(image).shape)}")
    return np.clip(img, 0.0, 1.0)


def feature_colours(feature_ids: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """Fixed RGB colour of each feature id: ``PALETTE[id % len(PALETTE)]``.

    Args:
        feature_ids: an int n (colours of ids 0..n-1) or a sequence of feature ids.

    Returns:
        float array (len, 3) of RGB values in [0, 1].

    Raises:
        ValueError: for negative ids or a negative n.
    """
    ids = np.arange(feature_ids) if np.isscalar(feature_ids) else np.asarray(feature_ids, dtype=int).ravel()
    if np.isscalar(feature_ids) and int(feature_ids) < 0 or (ids < 0).any():
        raise ValueError(f"feature ids must be non-negative, got {feature_ids}")
    return PALETTE[ids % len(PALETTE)]


def upsample_maps(maps: ArrayLike, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of patch-grid maps to image size (half-pixel centres, like ``cv2.resize``).

    Args:
        maps: (D, H, W) or (H, W) maps.
        size: output side, or (height, width).

    Returns:
        float32 array (D, size_h, size_w) (or (size_h, size_w) for a 2-D input).

    Raises:
        ValueError: for a map that is not 2-D or 3-D.
    """
    m = torch.as_tensor(_numpy(maps), dtype=torch.float32)
    if m.ndim not in (2, 3):
        raise ValueError(f"maps must have shape (D, H, W) or (H, W), got {tuple(m.shape)}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = m.reshape(1, -1, *m.shape[-2:])  # (1, D, H, W)
    up = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)[0]  # (D, h, w)
    return up.numpy() if m.ndim == 3 else up[0].numpy()


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Clip at 0 and divide each map by its maximum (all-zero maps stay zero): (D, H, W) -> (D, H, W)."""
    pos = np.maximum(maps, 0.0)
    top = pos.reshape(len(pos), -1).max(axis=1)
    return np.divide(pos, top[:, None, None], out=np.zeros_like(pos), where=top[:, None, None] > 0)


def local_explanation_array(
    image: ArrayLike, feature_maps: ArrayLike, feature_ids: Sequence[int], *, alpha: float = 0.7
) -> np.ndarray:
    """Composite of a DINO-QPM local explanation: each feature's map drawn in its colour over the image.

    Every selected map is upsampled bilinearly to the image, clipped at 0 and divided by its own maximum. Each
    pixel takes the colour of the feature that is strongest there, blended over the image with opacity
    ``alpha * strength`` (paper Figs. 1, 5, 20-23).

    Args:
        image: (3, H, W) or (H, W, 3) image in [0, 1].
        feature_maps: (D, h, w) feature maps of this image on the patch grid.
        feature_ids: ids (indices into D) of the features to draw, e.g. the predicted class's features.
        alpha: largest opacity of the overlay, in [0, 1].

    Returns:
        float array (H, W, 3) in [0, 1].

    Raises:
        ValueError: for bad shapes, ids outside [0, D) or alpha outside [0, 1].
    """
    img = _image_hwc(image)
    maps = _numpy(feature_maps)
    if maps.ndim != 3:
        raise ValueError(f"feature_maps must have shape (D, h, w), got {maps.shape}")
    ids = np.asarray(feature_ids, dtype=int).ravel()
    if ((ids < 0) | (ids >= maps.shape[0])).any():
        raise ValueError(f"feature ids must lie in [0, {maps.shape[0]}), got {ids.tolist()}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if ids.size == 0:
        return img
    strength = _normalise(upsample_maps(maps[ids], img.shape[:2]).astype(np.float64))  # (k, H, W)
    winner = strength.argmax(axis=0)  # (H, W)
    opacity = alpha * strength.max(axis=0)[..., None]  # (H, W, 1)
    colour = feature_colours(ids)[winner]  # (H, W, 3)
    return np.clip((1 - opacity) * img + opacity * colour, 0.0, 1.0)


def _legend(ax, ids: Sequence[int], labels: Sequence[str] | None = None) -> None:
    handles = [
        mpatches.Patch(color=c, label=lab)
        for c, lab in zip(feature_colours(ids), labels or [f"feature {i}" for i in ids])
    ]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)


def _axes(ax, figsize) -> tuple[Figure, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def local_explanation(
    image: ArrayLike,
    feature_maps: ArrayLike,
    feature_ids: Sequence[int],
    *,
    ax=None,
    alpha: float = 0.7,
    title: str | None = None,
) -> Figure:
    """Figure of :func:`local_explanation_array` with a legend of the feature ids.

    Args:
        image: (3, H, W) or (H, W, 3) image in [0, 1].
        feature_maps: (D, h, w) feature maps of this image.
        feature_ids: features to draw.
        ax: matplotlib Axes to draw into (its figure is returned); a new figure when None.
        alpha: largest overlay opacity.
        title: optional axes title.

    Returns:
        the Figure holding the axes.

    Raises:
        ValueError: see :func:`local_explanation_array`.
    """
    composite = local_explanation_array(image, feature_maps, feature_ids, alpha=alpha)
    fig, ax = _axes(ax, (4.5, 3.2))
    ax.imshow(composite)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    _legend(ax, list(np.asarray(feature_ids, dtype=int).ravel()))
    return fig


def cam_figure(image: ArrayLike, cam_map: ArrayLike, *, ax=None, alpha: float = 0.5, cmap: str = "jet") -> Figure:
    """Overlay of a CAM (upsampled bilinearly) on the image.

    Args:
        image: (3, H, W) or (H, W, 3) image in [0, 1].
        cam_map: (h, w) map in [0, 1], e.g. from :func:`qpmlib.runs.evaluate.cam`.
        ax: Axes to draw into; a new figure when None.
        alpha: opacity of the heat map.
        cmap: matplotlib colour map name.

    Returns:
        the Figure holding the axes (one image plus the overlay).

    Raises:
        ValueError: for a map that is not 2-D.
    """
    img = _image_hwc(image)
    m = _numpy(cam_map)
    if m.ndim != 2:
        raise ValueError(f"cam_map must have shape (h, w), got {m.shape}")
    fig, ax = _axes(ax, (3.2, 3.2))
    ax.imshow(img)
    ax.imshow(upsample_maps(m, img.shape[:2]), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    return fig


def class_pair_figure(
    image1: ArrayLike,
    feature_maps1: ArrayLike,
    image2: ArrayLike,
    feature_maps2: ArrayLike,
    assignment: ArrayLike,
    selected: Sequence[int] | None,
    c1: int,
    c2: int,
    *,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.7,
) -> Figure:
    """Two local explanations side by side: one image of each class with that class's assigned features.

    Shared features keep their colour on both sides and are marked "(shared)" in the legends, so the reader
    sees which features tell the two classes apart (paper Figs. 5, 14-17).

    Args:
        image1: image of class c1, (3, H, W) or (H, W, 3) in [0, 1].
        feature_maps1: (D, h, w) feature maps of image1, indexed by feature id.
        image2: image of class c2.
        feature_maps2: (D, h, w) feature maps of image2.
        assignment: (N_c, n_sel) bool assignment.
        selected: feature id of each assignment column, or None (see
            :func:`qpmlib.analysis.pairs.class_pair_features`).
        c1: class of image1.
        c2: class of image2.
        class_names: optional names of all classes, for the titles.
        alpha: largest overlay opacity.

    Returns:
        Figure with two axes.

    Raises:
        ValueError: see :func:`qpmlib.analysis.pairs.class_pair_features` and :func:`local_explanation_array`.
    """
    groups = class_pair_features(assignment, selected, c1, c2)
    shared = set(groups["shared"])
    fig = Figure(figsize=(9.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, img, maps, c, own in (
        (axes[0], image1, feature_maps1, c1, groups["only_c1"]),
        (axes[1], image2, feature_maps2, c2, groups["only_c2"]),
    ):
        ids = sorted(shared | set(own))
        ax.imshow(local_explanation_array(img, maps, ids, alpha=alpha))
        ax.set_axis_off()
        ax.set_title(class_names[c] if class_names is not None else f"class {c}")
        _legend(ax, ids, [f"{i} (shared)" if i in shared else f"{i}" for i in ids])
    return fig


def top_patches_figure(
    images: Sequence[ArrayLike],
    patches: Sequence[tuple[int, int, int, float]],
    grid: int | tuple[int, int],
    *,
    context: int = 1,
    ncols: int = 5,
    title: str | None = None,
) -> Figure:
    """Crops around the patches found by :func:`qpmlib.analysis.pairs.top_activating_patches`, outlined.

    Args:
        images: indexable collection of images ((3, H, W) or (H, W, 3) in [0, 1]) by image index.
        patches: ``(image_index, row, col, value)`` tuples.
        grid: patch grid side, or (rows, cols), of the feature maps.
        context: patches of surrounding context on each side of the crop.
        ncols: axes per row.
        title: optional figure title.

    Returns:
        Figure with one axes per patch.

    Raises:
        ValueError: for an empty list of patches or a negative context.
    """
    if not patches:
        raise ValueError("no patches to show; pass the output of top_activating_patches")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    ncols = max(1, min(ncols, len(patches)))
    nrows = -(-len(patches) // ncols)
    fig = Figure(figsize=(1.8 * ncols, 1.9 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes[len(patches):]:
        ax.set_axis_off()
    for ax, (idx, row, col, value) in zip(axes, patches):
        img = _image_hwc(images[idx])
        ph, pw = img.shape[0] / gh, img.shape[1] / gw
        top, left = max(0, int((row - context) * ph)), max(0, int((col - context) * pw))
        bottom = min(img.shape[0], int((row + 1 + context) * ph))
        right = min(img.shape[1], int((col + 1 + context) * pw))
        ax.imshow(img[top:bottom, left:right])
        ax.add_patch(
            mpatches.Rectangle((col * pw - left - 0.5, row * ph - top - 0.5), pw, ph, fill=False, ec="yellow", lw=1.5)
        )
        ax.set_title(f"img {idx}: {value:.2f}", fontsize="small")
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def feature_maps_figure(views: Mapping[str, TestImage], *, cmap: str = "magma") -> Figure:
    """Paper Fig. 10: one row per model, the local explanation and then each of the class's feature maps.

    Each map is shown on the patch grid divided by its own maximum, so background activation shows up as
    colour outside the bird whatever the map's scale.

    Args:
        views: row title -> :class:`~qpmlib.runs.evaluate.TestImage` of a fine-tuned model (e.g.
            {"λ_L1-FM = 0": ..., "λ_L1-FM = 5": ...}).
        cmap: colour map of the individual maps.

    Returns:
        Figure with len(views) rows and 1 + max N^c_f columns.

    Raises:
        ValueError: when ``views`` is empty.
    """
    if not views:
        raise ValueError("views is empty; pass at least one TestImage")
    n_cols = 1 + max(len(v.feature_ids) for v in views.values())
    fig = Figure(figsize=(2.3 * n_cols + 1.2, 2.4 * len(views)), layout="constrained")
    axes = fig.subplots(len(views), n_cols, squeeze=False)
    for row, (title, view) in zip(axes, views.items()):
        local_explanation(view.image, view.feature_maps, view.feature_ids, ax=row[0],
                          title=f"{title}\nclass {view.label}, predicted {view.prediction}")
        for ax, j in zip(row[1:], view.feature_ids):
            fmap = np.maximum(view.feature_maps[j], 0.0)
            top = fmap.max()
            ax.imshow(fmap / top if top > 0 else fmap, cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_title(f"feature {j}", fontsize="small")
        for ax in row[1:]:
            ax.set_axis_off()
    return fig


def sweep_maps_figure(profile: str | Profile, param: str, values: Sequence[float], index: int, *, seed: int,
                      name: str | None = None) -> Figure:
    """Fig. 10: one test image under the fine-tuned DINO-QPM of each value of a sweep parameter (same seed).

    Args:
        profile: profile name or object.
        param: a numeric :data:`qpmlib.analysis.sweeps.SWEEPS` key, e.g. "l1_fm".
        values: the values to show, one row each (runs are loaded, or trained when missing).
        index: test image index.
        seed: run seed.
        name: how the row titles name the parameter (default: ``param``), e.g. "λ_L1-FM".

    Returns:
        :func:`feature_maps_figure` with rows titled "<name> = <value>".
    """
    return feature_maps_figure({
        f"{name or param} = {v:g}": test_image(run_dino_qpm(profile, seed, overrides=overrides_for(param, v),
                                                            verbose=False), index)
        for v in values
    })


def explanation_figure(run: Run, index: int, *, max_features: int = 10) -> Figure:
    """Explain one test image with one model: the local explanation of a sparse model, or the CAM of a dense one.

    A model whose predicted class uses at most ``max_features`` features is shown with
    :func:`local_explanation` (one colour per feature of that class); otherwise with the CAM
    ``sum_d W[c, d] F_d`` (:func:`qpmlib.runs.evaluate.cam`, reference_spec §5.7; for the linear probe the maps
    are the frozen patch tokens).

    Args:
        run: a finished :class:`~qpmlib.runs.run.Run` of any method.
        index: test image index.
        max_features: largest class support drawn feature by feature.

    Returns:
        Figure titled with the method, the true and the predicted class.
    """
    view = test_image(run, index)
    title = f"{method_display(run.method)}: true {view.label}, predicted {view.prediction}"
    if len(view.feature_ids) == 0:
        title += " (this class has no weights)"
    if len(view.feature_ids) <= max_features:
        return local_explanation(view.image, view.feature_maps, view.feature_ids.tolist(), title=title)
    fig = cam_figure(view.image, cam(view.feature_maps, view.weights))
    fig.axes[0].set_title(title + " (CAM)")
    return fig


def peer_explanations_figure(shown: PeerExplanations, *, alpha: float = 0.5) -> Figure:
    """The same test images under every head: one row per image, one CAM overlay per method.

    Args:
        shown: :func:`qpmlib.analysis.peers.peer_explanations`.
        alpha: opacity of the heat maps.

    Returns:
        Figure with one row per image and one column per method; each title names the method and whether its
        prediction is right (the true class is in the first column's title).

    Raises:
        ValueError: when no image is given.
    """
    if not shown.indices:
        raise ValueError("no test image to show; pass at least one index to peer_explanations")
    n_rows, n_cols = len(shown.indices), len(shown.methods)
    fig = Figure(figsize=(2.4 * n_cols, 2.6 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(axes):
        for j, (ax, method) in enumerate(zip(row, shown.methods)):
            cam_figure(shown.images[i], shown.cams[method][i], ax=ax, alpha=alpha)
            verdict = "right" if shown.predictions[method][i] == shown.labels[i] else "wrong"
            title = f"{method_display(method)}: {verdict}"
            ax.set_title(f"test image {shown.indices[i]}\n{title}" if j == 0 else title, fontsize="small")
    return fig
