"""Pictures for the introduction: one image as the backbone and the adapter see it.

* :func:`token_pca_rgb` colours each patch by the first three principal components of its token, the usual way
  to look at ViT patch features.
* :func:`part_label_map` turns SynthBirds' per-patch part fractions into one label per patch.
* :func:`walkthrough_figure` draws the image, the backbone's input, the token PCA, the true parts and one
  adapter feature map side by side, on the same patch grid; :func:`image_walkthrough` does it for one training
  image of a profile's dataset, with a given backbone and adapter.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from qpmlib.backbones import FrozenBackbone
from qpmlib.config import Profile, get_profile
from qpmlib.data import DATASETS, prepare, read_index
from qpmlib.data.images import load_image
from qpmlib.data.synthbirds import part_maps, part_names
from qpmlib.model import DinoQPM, join_tokens

__all__ = ["token_pca_rgb", "part_label_map", "walkthrough_figure", "image_walkthrough"]


def token_pca_rgb(patches: np.ndarray, grid: int) -> np.ndarray:
    """Project patch tokens onto their first three principal components and scale each to [0, 1].

    Args:
        patches: (P, D) patch tokens of one image, P = grid * grid, row-major patch order.
        grid: patches per side.

    Returns:
        float32 (grid, grid, 3) RGB image in [0, 1].

    Raises:
        ValueError: when P != grid * grid or there are fewer than 2 patches.
    """
    x = np.asarray(patches, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != grid * grid or x.shape[0] < 2:
        raise ValueError(f"expected patches of shape ({grid * grid}, D), got {x.shape}")
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = x @ vt[:3].T  # (P, <=3)
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = comps.min(axis=0), comps.max(axis=0)
    comps = (comps - lo) / np.where(hi > lo, hi - lo, 1.0)
    return comps.reshape(grid, grid, 3).astype(np.float32)


def part_label_map(part_fractions: np.ndarray, *, min_fraction: float = 0.25) -> np.ndarray:
    """One label per patch: the part covering most of it (1-based), or 0 for background.

    Args:
        part_fractions: (K, g, g) fraction of each patch covered by each of K parts.
        min_fraction: a patch whose largest part covers less than this is background.

    Returns:
        int64 (g, g) labels in 0..K.
    """
    f = np.asarray(part_fractions)
    if f.ndim != 3:
        raise ValueError(f"expected part fractions of shape (K, g, g), got {f.shape}")
    best = f.argmax(axis=0) + 1
    return np.where(f.max(axis=0) >= min_fraction, best, 0).astype(np.int64)


def walkthrough_figure(
    image: np.ndarray,
    model_input: np.ndarray,
    patches: np.ndarray,
    grid: int,
    *,
    part_fractions: np.ndarray | None = None,
    part_names: list[str] | None = None,
    feature_map: np.ndarray | None = None,
    feature_id: int | None = None,
) -> Figure:
    """Image -> backbone input -> token PCA -> true parts -> one adapter feature map, in one row.

    Args:
        image: (H, W, 3) the image as stored (uint8 or float in [0, 1]).
        model_input: (3, S, S) the preprocessed tensor the backbone sees (reference preprocessing is in [0, 1]).
        patches: (P, D) the backbone's patch tokens for this image.
        grid: patches per side.
        part_fractions: optional (K, grid, grid) SynthBirds part fractions (true parts).
        part_names: names of the K parts for the legend.
        feature_map: optional (grid, grid) one adapter feature map.
        feature_id: its feature id (for the title).

    Returns:
        A Figure with one axis per panel.
    """
    panels = 3 + (part_fractions is not None) + (feature_map is not None)
    fig = Figure(figsize=(3.0 * panels, 3.4), layout="constrained")
    axes = fig.subplots(1, panels)
    x = np.asarray(model_input, dtype=np.float32).transpose(1, 2, 0)
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
    shown = [
        (image, "image (as stored)"),
        (x, f"backbone input {x.shape[0]}×{x.shape[1]}"),
        (token_pca_rgb(patches, grid), f"patch tokens, PCA ({grid}×{grid})"),
    ]
    for ax, (im, title) in zip(axes, shown):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    k = 3
    if part_fractions is not None:
        labels = part_label_map(part_fractions)
        n_parts = part_fractions.shape[0]
        cmap = colormaps["tab10" if n_parts <= 10 else "tab20"].with_extremes(bad="white")
        axes[k].imshow(np.ma.masked_equal(labels, 0), cmap=cmap, vmin=1, vmax=cmap.N, interpolation="nearest")
        names = part_names or [f"part {i}" for i in range(1, n_parts + 1)]
        present = sorted(int(i) for i in set(np.unique(labels)) - {0})
        handles = [Patch(color=cmap(i - 1), label=names[i - 1]) for i in present]
        axes[k].legend(handles=handles, fontsize=7, loc="lower left", framealpha=0.8)
        axes[k].set_title("true parts (SynthBirds)", fontsize=9)
        k += 1
    if feature_map is not None:
        axes[k].imshow(np.asarray(feature_map), cmap="magma", interpolation="nearest")
        axes[k].set_title(f"adapter feature {feature_id if feature_id is not None else ''}".strip(), fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def image_walkthrough(profile: str | Profile, image_index: int, *, backbone: FrozenBackbone,
                      adapter: DinoQPM) -> Figure:
    """:func:`walkthrough_figure` of the ``image_index``-th training image, with its most active adapter feature.

    Args:
        profile: profile name or object (dataset, image size, normalisation).
        image_index: row among the training images of the dataset's index.
        backbone: the frozen backbone (e.g. :func:`qpmlib.backbones.build_backbone` of the profile's).
        adapter: a :class:`~qpmlib.model.DinoQPM` in eval mode (trained or not).

    Returns:
        The figure; the true-parts panel only where the dataset has part maps (SynthBirds).
    """
    prof = get_profile(profile)
    root = prepare(prof.data, verbose=False)
    index = read_index(root, prof.data.dataset)
    row = index[index.is_train].iloc[image_index]
    x = load_image(row.path, prof.data.image_size, dataset=prof.data.dataset, normalisation=prof.data.normalisation)
    with torch.no_grad():
        cls, patches = backbone(x[None])
        out = adapter(join_tokens(patches, cls))
    d = int(out.features[0].argmax())
    has_parts = DATASETS[prof.data.dataset].parts
    with Image.open(row.path) as im:
        image = np.asarray(im.convert("RGB"))
    return walkthrough_figure(
        image, x.numpy(), patches[0].numpy(), backbone.grid,
        part_fractions=part_maps(root, [row.image_id], backbone.grid)[0] if has_parts else None,
        part_names=part_names(root) if has_parts else None,
        feature_map=out.feature_maps[0, d].numpy(), feature_id=d,
    )
