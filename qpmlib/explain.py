"""Explanations of DINO-QPM decisions: local explanations, CAMs, class pairs, prototypes, failure cases.

Array helpers return numpy arrays; figure helpers return a matplotlib ``Figure`` (they never call ``show()``,
save or close anything) so that each chapter decides the layout. A feature id always gets the same colour
(:func:`feature_colours`), so one feature looks the same in every figure of the book.

"Feature id" means an index into the first axis of the feature maps being drawn: a dense model's feature index,
or, for a fine-tuned QPM model whose maps hold only the selected features, the position among them.

Public names: :data:`PALETTE`, :func:`feature_colours`, :func:`upsample_maps`, :func:`local_explanation_array`,
:func:`local_explanation`, :func:`cam`, :func:`cam_figure`, :func:`class_pair_features`,
:func:`class_pair_figure`, :func:`most_confused_pairs`, :func:`top_activating_patches`,
:func:`top_patches_figure`, :func:`nearest_training_image`, :func:`failure_categories`, :func:`pick_examples`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib
import matplotlib.patches as mpatches
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

__all__ = [
    "FAILURE_CATEGORIES",
    "PALETTE",
    "cam",
    "cam_figure",
    "class_pair_features",
    "class_pair_figure",
    "failure_categories",
    "feature_colours",
    "local_explanation",
    "local_explanation_array",
    "most_confused_pairs",
    "nearest_training_image",
    "pick_examples",
    "top_activating_patches",
    "top_patches_figure",
    "upsample_maps",
]

ArrayLike = Any  # numpy array or torch tensor

#: Qualitative palette of 20 colours, strong first: tab20's 10 dark shades, then its 10 light ones.
PALETTE: np.ndarray = np.array(matplotlib.colormaps["tab20"].colors[0::2] + matplotlib.colormaps["tab20"].colors[1::2])

#: Keys of :func:`failure_categories`.
FAILURE_CATEGORIES = ("qpm_right_dense_wrong", "both_right", "both_wrong", "dense_right_qpm_wrong")


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


def cam(feature_maps: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """Class activation map ``G = sum_d w_d F_d``, min-shifted and max-normalised (reference_spec §5.7).

    Args:
        feature_maps: (D, H, W) feature maps of one image.
        weights: (D,) weight row of the class to explain.

    Returns:
        float array (H, W) in [0, 1]; all zeros when G is constant.

    Raises:
        ValueError: for mismatched shapes (both are named).
    """
    maps, w = _numpy(feature_maps).astype(np.float64), _numpy(weights).astype(np.float64)
    if maps.ndim != 3 or w.shape != (maps.shape[0],):
        raise ValueError(f"expected feature_maps (D, H, W) and weights (D,), got {maps.shape} and {w.shape}")
    g = np.tensordot(w, maps, axes=1)  # (H, W)
    g = g - g.min()
    top = g.max()
    return g / top if top > 0 else np.zeros_like(g)


def cam_figure(image: ArrayLike, cam_map: ArrayLike, *, ax=None, alpha: float = 0.5, cmap: str = "jet") -> Figure:
    """Overlay of a CAM (upsampled bilinearly) on the image.

    Args:
        image: (3, H, W) or (H, W, 3) image in [0, 1].
        cam_map: (h, w) map in [0, 1], e.g. from :func:`cam`.
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


def class_pair_features(
    assignment: ArrayLike, selected: Sequence[int] | None, c1: int, c2: int
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
    a = _numpy(assignment).astype(bool)
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
        selected: feature id of each assignment column, or None (see :func:`class_pair_features`).
        c1: class of image1.
        c2: class of image2.
        class_names: optional names of all classes, for the titles.
        alpha: largest overlay opacity.

    Returns:
        Figure with two axes.

    Raises:
        ValueError: see :func:`class_pair_features` and :func:`local_explanation_array`.
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


def most_confused_pairs(y_true: ArrayLike, y_pred: ArrayLike, n: int) -> list[tuple[int, int, int]]:
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
    t, p = _numpy(y_true).astype(int).ravel(), _numpy(y_pred).astype(int).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}; need the same N")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    wrong = t != p
    lo, hi = np.minimum(t[wrong], p[wrong]), np.maximum(t[wrong], p[wrong])
    pairs, counts = np.unique(np.stack([lo, hi], axis=1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -counts)) if len(counts) else np.zeros(0, int)
    return [(int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])) for i in order[:n]]


def top_activating_patches(
    feature_maps: ArrayLike | Iterable[ArrayLike], feature: int, k: int, *, one_per_image: bool = True
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
        b = _numpy(batch)
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


def top_patches_figure(
    images: Sequence[ArrayLike],
    patches: Sequence[tuple[int, int, int, float]],
    grid: int | tuple[int, int],
    *,
    context: int = 1,
    ncols: int = 5,
    title: str | None = None,
) -> Figure:
    """Crops around the patches found by :func:`top_activating_patches`, the patch itself outlined.

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


def nearest_training_image(cls_query: ArrayLike, cls_train: ArrayLike, train_labels: ArrayLike, label: int) -> int:
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
    q, x, y = _numpy(cls_query).astype(np.float64), _numpy(cls_train).astype(np.float64), _numpy(train_labels)
    if q.ndim != 1 or x.ndim != 2 or x.shape[1] != q.shape[0] or y.shape != (x.shape[0],):
        raise ValueError(
            f"expected cls_query (D,), cls_train (N, D) and train_labels (N,), got {q.shape}, {x.shape}, {y.shape}"
        )
    rows = np.nonzero(y == label)[0]
    if rows.size == 0:
        raise ValueError(f"no training image has label {label}")
    sims = x[rows] @ q / np.maximum(np.linalg.norm(x[rows], axis=1) * np.linalg.norm(q), 1e-12)
    return int(rows[np.argmax(sims)])


def failure_categories(y_true: ArrayLike, pred_qpm: ArrayLike, pred_dense: ArrayLike) -> dict[str, np.ndarray]:
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
    t, q, d = (_numpy(a).ravel() for a in (y_true, pred_qpm, pred_dense))
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
