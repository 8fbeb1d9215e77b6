"""Part ground truth on the patch grid, for KLC's segmenter and for naming features.

* SynthBirds: the true part label maps (``part_segmentations/``) as per-patch coverage fractions
  (:func:`qpmlib.data.synthbirds.part_maps`).
* CUB-200-2011: the object segmentation plus the 15 annotated part locations. Each foreground patch is given to
  the nearest visible part keypoint (a Voronoi partition of the segmentation), so the parts cover the bird and
  touch where the annotated points are. ``merge_sides=True`` merges "left eye"/"right eye" and the like.

Any other dataset has no part annotation; asking for parts there raises an error that says which data is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from qpmlib.data import cub, synthbirds

__all__ = ["PART_DATASETS", "PartTruth", "keypoint_part_maps", "part_truth", "require_part_truth"]

#: Datasets that carry part ground truth.
PART_DATASETS = ("synthbirds", "cub")


@dataclass(frozen=True)
class PartTruth:
    """Part ground truth of some images on the patch grid.

    Attributes:
        maps: float32 (N, n_parts, grid, grid) coverage fractions in [0, 1]; parts plus background sum to 1.
        names: the n_parts part names, in channel order.
        source: how the maps were made.
    """

    maps: np.ndarray
    names: list[str]
    source: str


def require_part_truth(dataset: str, what: str) -> None:
    """Raise unless ``dataset`` has part ground truth.

    Args:
        dataset: the profile's dataset name.
        what: the method that needs the parts, for the message (e.g. "KLC", "named features").

    Raises:
        ValueError: naming the data the method needs.
    """
    if dataset not in PART_DATASETS:
        raise ValueError(
            f"{what} needs part ground truth, which dataset {dataset!r} does not have: SynthBirds's "
            "part_segmentations/ (any synthbirds profile) or CUB-200-2011's segmentations/ plus "
            "parts/part_locs.txt (fetch them with `python data_scripts/download_cub.py`)"
        )


def keypoint_part_maps(keypoints: np.ndarray, visible: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Voronoi part maps: every foreground patch belongs to its nearest visible keypoint.

    Args:
        keypoints: (N, n_parts, 2) keypoint ``x, y`` in the image's normalised coordinates [0, 1].
        visible: (N, n_parts) bool.
        masks: (N, H, W) bool object masks on the patch grid.

    Returns:
        float32 (N, n_parts, H, W) one-hot over parts on foreground patches, 0 on background; all zero for an
        image with no visible keypoint. Ties go to the lower part index.

    Raises:
        ValueError: for mismatched shapes.
    """
    kp, vis, m = np.asarray(keypoints, np.float64), np.asarray(visible, bool), np.asarray(masks, bool)
    if kp.ndim != 3 or kp.shape[2] != 2 or vis.shape != kp.shape[:2] or m.ndim != 3 or m.shape[0] != kp.shape[0]:
        raise ValueError(f"expected keypoints (N, n_parts, 2), visible (N, n_parts), masks (N, H, W); got "
                         f"{kp.shape}, {vis.shape}, {m.shape}")
    n, n_parts = vis.shape
    h, w = m.shape[1:]
    cy, cx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    centres = np.stack([cx.ravel(), cy.ravel()], axis=1)  # (HW, 2) as x, y
    out = np.zeros((n, n_parts, h * w), np.float32)
    for i in range(n):
        if not vis[i].any():
            continue
        d = ((centres[:, None] - kp[i][None]) ** 2).sum(axis=2)  # (HW, n_parts)
        d[:, ~vis[i]] = np.inf
        nearest = d.argmin(axis=1)  # (HW,)
        fg = m[i].ravel()
        out[i, nearest[fg], np.flatnonzero(fg)] = 1.0
    return out.reshape(n, n_parts, h, w)


def _cub_maps(root: Path, image_ids: np.ndarray, grid: int, merge_sides: bool) -> PartTruth:
    locs = cub.part_locations(root)
    names = list(locs.drop_duplicates("part_id").sort_values("part_id")["part_name"])
    index = cub.read_index(root).set_index("image_id")
    n_parts = len(names)
    kp = np.zeros((len(image_ids), n_parts, 2))
    vis = np.zeros((len(image_ids), n_parts), bool)
    by_image = dict(tuple(locs.groupby("image_id")))
    for n, image_id in enumerate(image_ids):
        if image_id not in index.index:
            raise ValueError(f"unknown image id {image_id} in {root}")
        with Image.open(index.loc[image_id, "path"]) as im:
            width, height = im.size  # header only
        rows = by_image.get(image_id)
        if rows is None:
            continue
        j = rows["part_id"].to_numpy() - 1
        kp[n, j, 0], kp[n, j, 1] = rows["x"].to_numpy() / width, rows["y"].to_numpy() / height
        vis[n, j] = rows["visible"].to_numpy()
    maps = keypoint_part_maps(kp, vis, cub.patch_masks(root, image_ids, grid))
    source = "CUB segmentation split among the nearest visible part keypoints"
    if merge_sides:
        merged = [name.removeprefix("left ").removeprefix("right ") for name in names]
        uniq = list(dict.fromkeys(merged))
        out = np.zeros((maps.shape[0], len(uniq), grid, grid), np.float32)
        for k, name in enumerate(merged):
            out[:, uniq.index(name)] += maps[:, k]
        return PartTruth(out, uniq, source + " (left/right merged)")
    return PartTruth(maps, names, source)


def part_truth(root: str | Path, dataset: str, image_ids, grid: int, *, merge_sides: bool = False) -> PartTruth:
    """Part maps of some images on the patch grid.

    Args:
        root: the dataset folder (:func:`qpmlib.data.prepare`).
        dataset: ``"synthbirds"`` or ``"cub"``.
        image_ids: (N,) 1-based image ids (an embedding store's ``image_ids``).
        grid: patches per side.
        merge_sides: CUB only: merge left/right parts (15 -> 12 parts).

    Returns:
        :class:`PartTruth`.

    Raises:
        ValueError: for a dataset without part ground truth (naming what is needed) or unknown image ids.
        FileNotFoundError: a part map, segmentation or ``parts/`` file is missing (named).
    """
    require_part_truth(dataset, "part ground truth")
    ids = np.atleast_1d(np.asarray(image_ids, dtype=np.int64))
    root = Path(root)
    if dataset == "synthbirds":
        return PartTruth(synthbirds.part_maps(root, ids, grid), synthbirds.part_names(root),
                         "SynthBirds part segmentations")
    return _cub_maps(root, ids, grid, merge_sides)
