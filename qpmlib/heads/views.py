"""Augmented views for ProtoFM: crop boxes, their images or tokens, and RoIAlign between a view and the original.

ProtoFM's teacher sees an augmented view of an image while the student sees the original; RoIAlign maps the
student's maps onto the view's region so that the two can be compared location by location. Here a view is a
crop box in the original image's normalised coordinates (``x0, y0, x1, y1`` in [0, 1]; images are resized to a
square, so these are also the square input's coordinates) and a horizontal flip, resized back to the full input.

What the embedding store must hold for real views (only the training split needs them)::

    view_patch_tokens.npy   fp16 (N, V, P, D)   the backbone's patch tokens of each view
    view_cls.npy            fp16 (N, V, D)      its CLS tokens
    view_boxes.npy          float32 (N, V, 4)   the crop boxes (x0, y0, x1, y1), normalised
    view_flips.npy          bool (N, V)         whether the crop was flipped
    manifest.json           inputs += {"views": dataclasses.asdict(ViewConfig)}   part of the fingerprint

The boxes come from :func:`sample_views` (seeded per image id, so they do not depend on the extraction order);
the view images from :func:`crop_images` on the preprocessed input tensor; the tokens from the frozen backbone on
those images (:func:`embed_views`). Sizes with V = 2: the demo's 600 training images at 256 x 384 take 236 MB,
CUB's 5,994 at 256 x 768 take 4.7 GB. Until the store holds views, :func:`token_views` crops and resizes the
cached token grid itself, a stand-in for the backbone's tokens of the cropped image (ProtoFM's docstring lists it
as a deviation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["ViewConfig", "ViewTokens", "crop_and_resize", "crop_images", "embed_views", "sample_views",
           "token_views"]


@dataclass(frozen=True)
class ViewConfig:
    """How augmented views are drawn (``RandomResizedCrop`` and a horizontal flip, as in DINO-style training).

    Attributes:
        n_views: V, views cached per training image.
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        flip: probability of a horizontal flip.
        seed: with the image id, seeds each image's views.
    """

    n_views: int = 2
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_views < 1:
            raise ValueError(f"views.n_views must be >= 1, got {self.n_views}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"views.scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"views.ratio must satisfy 0 < low <= high, got {self.ratio}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"views.flip must be a probability, got {self.flip}")


def sample_views(image_ids, cfg: ViewConfig = ViewConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Crop boxes and flips of ``cfg.n_views`` views per image, drawn from ``default_rng((seed, image_id))``.

    Each box has an area fraction in ``cfg.scale`` and an aspect ratio in ``cfg.ratio`` and lies inside the
    image (10 tries, then the whole image, as torchvision's ``RandomResizedCrop``).

    Args:
        image_ids: (N,) integer image ids.
        cfg: the view settings.

    Returns:
        boxes float32 (N, V, 4) as ``x0, y0, x1, y1`` in [0, 1], and flips bool (N, V).
    """
    ids = np.atleast_1d(np.asarray(image_ids, dtype=np.int64))
    boxes = np.zeros((len(ids), cfg.n_views, 4), np.float32)
    flips = np.zeros((len(ids), cfg.n_views), bool)
    log_ratio = np.log(cfg.ratio)
    for n, image_id in enumerate(ids):
        rng = np.random.default_rng((cfg.seed, int(image_id)))
        for v in range(cfg.n_views):
            box = (0.0, 0.0, 1.0, 1.0)
            for _ in range(10):
                area = rng.uniform(*cfg.scale)
                aspect = math.exp(rng.uniform(*log_ratio))
                w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
                if w <= 1 and h <= 1:
                    x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
                    box = (x0, y0, x0 + w, y0 + h)
                    break
            boxes[n, v] = box
            flips[n, v] = rng.random() < cfg.flip
    return boxes, flips


def crop_and_resize(maps: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                    out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """RoIAlign each map's box (normalised coordinates) to ``out_size``, flipping the flipped ones.

    Pixel (i, j) of an H x W map covers ``[j, j+1] x [i, i+1]`` in map units (``aligned=True``); sampling is
    bilinear with an adaptive number of points per bin (torchvision's ``roi_align``).

    Args:
        maps: (B, C, H, W).
        boxes: (B, 4) ``x0, y0, x1, y1`` in [0, 1] of the maps' extent.
        flips: (B,) bool.
        out_size: (h, w) of the result; default (H, W).

    Returns:
        (B, C, h, w): the box's content as the view sees it.
    """
    b, _, h, w = maps.shape
    boxes = torch.as_tensor(boxes, dtype=maps.dtype, device=maps.device)
    scale = torch.tensor([w, h, w, h], dtype=maps.dtype, device=maps.device)
    rois = torch.cat([torch.arange(b, dtype=maps.dtype, device=maps.device)[:, None], boxes * scale], dim=1)
    # imported here: torchvision.ops loads torch._dynamo (about 1.2 s), which every chapter kernel would pay
    from torchvision.ops import roi_align

    out = roi_align(maps, rois, output_size=out_size or (h, w), spatial_scale=1.0, sampling_ratio=-1,
                    aligned=True)
    flipped = torch.nonzero(torch.as_tensor(flips, dtype=torch.bool, device=maps.device)).squeeze(1)
    if flipped.numel() == 0:
        return out
    return out.index_copy(0, flipped, out.index_select(0, flipped).flip(-1))


def crop_images(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """The view images: each preprocessed image's box, resized back to the input size (bilinear) and flipped.

    Args:
        images: (B, 3, S, S) preprocessed input tensors (as :func:`qpmlib.data.images.load_image` returns).
        boxes: (B, 4) normalised crop boxes.
        flips: (B,) bool.

    Returns:
        (B, 3, S, S) view images, ready for the frozen backbone.
    """
    return crop_and_resize(images, boxes, flips)


def token_views(patches: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """A stand-in for a view's tokens: crop and resize the cached token grid itself.

    Args:
        patches: (B, P, D) patch tokens of the original images, P a square number.
        boxes: (B, 4) normalised crop boxes.
        flips: (B,) bool.

    Returns:
        (B, P, D) tokens of the cropped, resized (and flipped) token grid.
    """
    b, p, d = patches.shape
    g = math.isqrt(p)
    grid = patches.transpose(1, 2).reshape(b, d, g, g)
    return crop_and_resize(grid, boxes, flips).flatten(2).transpose(1, 2)


@torch.no_grad()
def embed_views(backbone: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], images: torch.Tensor,
                boxes: np.ndarray, flips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a frozen backbone on every view of a batch of images (what the embedding store extraction would do).

    Args:
        backbone: maps (B, 3, S, S) images to (CLS (B, D), patch tokens (B, P, D)), as
            :class:`qpmlib.backbones.FrozenBackbone` does.
        images: (B, 3, S, S) preprocessed images.
        boxes: (B, V, 4) normalised crop boxes (:func:`sample_views`).
        flips: (B, V) bool.

    Returns:
        CLS tokens (B, V, D) and patch tokens (B, V, P, D).
    """
    b, v = boxes.shape[:2]
    views = crop_images(images.repeat_interleave(v, dim=0), torch.as_tensor(boxes.reshape(b * v, 4)),
                        torch.as_tensor(flips.reshape(b * v)))
    cls, patches = backbone(views)
    return cls.reshape(b, v, -1), patches.reshape(b, v, *patches.shape[1:])


@dataclass
class ViewTokens:
    """The cached views of a training split (the arrays the store holds, see the module docstring).

    Attributes:
        patches: (N, V, P, D) view patch tokens (numpy, fp16 memmap or torch).
        boxes: (N, V, 4) normalised crop boxes.
        flips: (N, V) bool.
    """

    patches: Any
    boxes: np.ndarray
    flips: np.ndarray

    def __post_init__(self) -> None:
        n, v = np.shape(self.boxes)[:2]
        if tuple(np.shape(self.flips)) != (n, v) or tuple(self.patches.shape[:2]) != (n, v):
            raise ValueError(f"view arrays disagree: patches {tuple(self.patches.shape)}, boxes "
                             f"{np.shape(self.boxes)}, flips {np.shape(self.flips)}; expected (N, V, ...)")

    @property
    def n_views(self) -> int:
        """V, views per image."""
        return int(np.shape(self.boxes)[1])

    def batch(self, idx: np.ndarray, view: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Tokens (B, P, D), boxes (B, 4) and flips (B,) of view ``view[b]`` of image ``idx[b]``."""
        idx, view = np.asarray(idx), np.asarray(view)
        rows = self.patches[torch.as_tensor(idx), torch.as_tensor(view)] if torch.is_tensor(self.patches) \
            else torch.from_numpy(np.asarray(self.patches[idx, view]))
        return (rows.float().to(device), torch.as_tensor(self.boxes[idx, view], device=device),
                torch.as_tensor(self.flips[idx, view], device=device))
