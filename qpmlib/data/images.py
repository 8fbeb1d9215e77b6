"""Image loading and preprocessing exactly as the reference code does it (reference_spec §4.4).

The reference pipeline: PIL ``convert("RGB")`` -> anisotropic ``Resize((S, S))`` (bilinear, antialias, no crop)
-> ``ToTensor`` -> ``Normalize`` with the **dataset** mean/std -> a per-image global min-max rescale to [0, 1]
followed by a clip. The backbone therefore sees a [0, 1] image (paper-vs-code difference §10 row 1).
``normalisation="imagenet"`` is the documented alternative: standard ImageNet mean/std and no min-max step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["DATASET_STATS", "IMAGENET_STATS", "NORMALISATIONS", "load_image", "preprocess"]

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
    rgb = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
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
