"""Image loading: the backbone's input exactly as the reference code makes it (reference_spec §4.4), and
images for display.

The reference pipeline: PIL ``convert("RGB")`` -> anisotropic ``Resize((S, S))`` (bilinear, antialias, no crop)
-> ``ToTensor`` -> ``Normalize`` with the **dataset** mean/std -> a per-image global min-max rescale to [0, 1]
followed by a clip. The backbone therefore sees a [0, 1] image (paper-vs-code difference §10 row 1).
``normalisation="imagenet"`` is the documented alternative: standard ImageNet mean/std and no min-max step.

For figures, :func:`display_image` gives the same resized RGB image without normalisation and
:class:`ImageList` loads such images lazily by row.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["DATASET_STATS", "IMAGENET_STATS", "NORMALISATIONS", "load_image", "preprocess", "display_image",
           "ImageList"]

#: Per-dataset channel mean and std used by the reference code (`configs/core/dataset_params.py`).
DATASET_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cub": ((0.4853, 0.4964, 0.4295), (0.2300, 0.2258, 0.2625)),
    "cars": ((0.4593, 0.4466, 0.4453), (0.2920, 0.2910, 0.2988)),
    # SynthBirds is read like CUB, so it uses CUB's statistics; in Cars' layout it stands in for Cars.
    "synthbirds": ((0.4853, 0.4964, 0.4295), (0.2300, 0.2258, 0.2625)),
    "synthcars": ((0.4593, 0.4466, 0.4453), (0.2920, 0.2910, 0.2988)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMALISATIONS = ("reference", "imagenet")


def _rgb(image: Image.Image, size: int) -> np.ndarray:
    """RGB, resized anisotropically to ``size`` x ``size`` (bilinear), as float32 (S, S, 3) in [0, 1]."""
    rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.float32) / 255.0


def preprocess(
    image: Image.Image, image_size: int, *, dataset: str = "cub", normalisation: str = "reference"
) -> torch.Tensor:
    """Turn a PIL image into the backbone's input tensor.

    Args:
        image: any PIL image (greyscale, CMYK and palette images are converted to RGB).
        image_size: output side in pixels (anisotropic resize, no crop).
        dataset: key of :data:`DATASET_STATS` for ``normalisation="reference"``.
        normalisation: ``"reference"`` (dataset stats, then per-image min-max to [0, 1]) or ``"imagenet"``.

    Returns:
        float32 tensor of shape (3, image_size, image_size).

    Raises:
        ValueError: for an unknown normalisation or dataset.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; valid: {', '.join(NORMALISATIONS)}")
    if normalisation == "reference" and dataset not in DATASET_STATS:
        raise ValueError(f"no statistics for dataset {dataset!r}; valid: {', '.join(DATASET_STATS)}")
    x = torch.from_numpy(_rgb(image, image_size)).permute(2, 0, 1)  # (3, S, S)
    mean, std = DATASET_STATS[dataset] if normalisation == "reference" else IMAGENET_STATS
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    if normalisation == "reference":
        lo, hi = x.min(), x.max()
        x = ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    return x.contiguous()


def load_image(
    path: str | Path, image_size: int, *, dataset: str = "cub", normalisation: str = "reference"
) -> torch.Tensor:
    """Read an image file and :func:`preprocess` it.

    Raises:
        OSError: naming the path, when the file cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im.load()
            image = im.copy()
    except (OSError, SyntaxError) as exc:
        raise OSError(f"cannot decode image {path}: {exc}") from exc
    return preprocess(image, image_size, dataset=dataset, normalisation=normalisation)


def display_image(path: str | Path, size: int) -> np.ndarray:
    """An image as the reader sees it: RGB, resized to ``size`` x ``size`` (anisotropic, like the model input).

    Unlike :func:`load_image` there is no normalisation: this is for drawing.

    Args:
        path: image file.
        size: output side in pixels.

    Returns:
        float32 array (size, size, 3) in [0, 1].
    """
    with Image.open(path) as im:
        return _rgb(im, size)


class ImageList(Sequence):
    """Lazily loaded display images, indexable like the embedding store's rows.

    Args:
        paths: image file of each row (e.g. ``index[index.is_train].path`` in store order).
        size: display size in pixels.
        cache: how many decoded images to keep.
    """

    def __init__(self, paths: Sequence[str | Path], size: int, *, cache: int = 64) -> None:
        self.paths = [str(p) for p in paths]
        self.size = size
        self._load = functools.lru_cache(maxsize=cache)(lambda i: display_image(self.paths[i], self.size))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # (size, size, 3)
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} is outside [0, {len(self)})")
        return self._load(i % len(self))
