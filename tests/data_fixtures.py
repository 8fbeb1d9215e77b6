"""Tiny hand-made dataset folders in the real on-disk formats (CUB-200-2011, Stanford Cars) for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

CUB_IMAGES = {  # image_id: (relative path, PIL mode, label 1-based, is_train)
    1: ("001.Alpha_Bird/Alpha_Bird_0001.jpg", "RGB", 1, 1),
    2: ("001.Alpha_Bird/Alpha_Bird_0002.jpg", "L", 1, 0),  # greyscale JPEG
    3: ("002.Beta_Bird/Beta_Bird_0001.jpg", "CMYK", 2, 1),  # CMYK JPEG
    4: ("002.Beta_Bird/Beta_Bird_0002.jpg", "RGB", 2, 0),
}  # every class has a training and a test image, as the reader requires
MASK_SIZE = 30  # masks and images are 30 x 30; on a 10 x 10 grid cv2 samples exactly pixels 1, 4, 7, ..., 28


def soft_mask() -> np.ndarray:
    """A CUB-like soft mask: 128 at a sampled pixel, 255 at an unsampled one, a 255 block and a faint 1."""
    m = np.zeros((MASK_SIZE, MASK_SIZE), np.uint8)
    m[4, 4] = 128  # sampled (grid cell 1, 1) -> True
    m[3, 3] = 255  # between samples -> dropped by the bilinear resize
    m[13:17, 13:17] = 255  # covers samples 13 and 16 -> cells (4..5, 4..5)
    m[22, 22] = 1  # sampled (cell 7, 7); 1 > 0 stays True
    return m


def expected_soft_patch_mask() -> np.ndarray:
    out = np.zeros((10, 10), bool)
    out[1, 1] = out[7, 7] = True
    out[4:6, 4:6] = True
    return out


def make_cub(root: Path, *, order=(3, 1, 4, 2)) -> Path:
    """Write a 4-image CUB_200_2011 folder at ``root`` (index files listed in a shuffled ``order``)."""
    root = Path(root)
    rng = np.random.default_rng(0)
    for image_id, (rel, mode, _, _) in CUB_IMAGES.items():
        img_path = root / "images" / rel
        img_path.parent.mkdir(parents=True, exist_ok=True)
        rgb = Image.fromarray(rng.integers(0, 256, (MASK_SIZE, MASK_SIZE, 3), dtype=np.uint8))
        rgb.convert(mode).save(img_path, format="JPEG", quality=90)
        seg_path = (root / "segmentations" / rel).with_suffix(".png")
        seg_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(soft_mask() if image_id == 1 else np.full((MASK_SIZE, MASK_SIZE), 255, np.uint8)).save(seg_path)
    lines = lambda f: "".join(f(i) + "\n" for i in order)  # noqa: E731
    (root / "images.txt").write_text(lines(lambda i: f"{i} {CUB_IMAGES[i][0]}"))
    (root / "image_class_labels.txt").write_text(lines(lambda i: f"{i} {CUB_IMAGES[i][2]}"))
    (root / "train_test_split.txt").write_text(lines(lambda i: f"{i} {CUB_IMAGES[i][3]}"))
    (root / "classes.txt").write_text("1 001.Alpha_Bird\n2 002.Beta_Bird\n")
    (root / "parts").mkdir(exist_ok=True)
    (root / "parts" / "parts.txt").write_text("1 back\n2 beak\n3 left eye\n")
    locs = []
    for i in sorted(CUB_IMAGES):
        locs += [f"{i} 1 10.0 12.0 1", f"{i} 2 25.5 8.0 1", f"{i} 3 0.0 0.0 0"]  # left eye invisible
    (root / "parts" / "part_locs.txt").write_text("\n".join(locs) + "\n")
    return root


def _annotations(fnames: list[str], classes: list[int]) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    ann = np.zeros((1, len(fnames)), dtype=[(f, "O") for f in fields])
    for k, (fname, cls) in enumerate(zip(fnames, classes)):
        ann[0, k] = (np.array([[1]], np.uint8), np.array([[2]], np.uint8), np.array([[20]], np.uint8),
                     np.array([[18]], np.uint8), np.array([[cls]], np.uint8), np.array([fname]))
    return ann


CARS_TRAIN = (["00001.jpg", "00002.jpg", "00003.jpg"], [1, 3, 2])
CARS_TEST = (["00001.jpg", "00002.jpg", "00003.jpg"], [3, 1, 2])
CARS_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def make_cars(root: Path, *, nested: bool = False, test_labels: bool = True) -> Path:
    """Write a tiny StanfordCars folder in the real .mat format (``nested``: the Kaggle zip's folders)."""
    root = Path(root)
    devkit = root / "car_devkit" / ("devkit" if nested else "")
    devkit.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(devkit / "cars_train_annos.mat", {"annotations": _annotations(*CARS_TRAIN)})
    meta = np.empty((1, len(CARS_CLASSES)), dtype=object)
    meta[0, :] = [np.array([n]) for n in CARS_CLASSES]
    scipy.io.savemat(devkit / "cars_meta.mat", {"class_names": meta})
    if test_labels:
        scipy.io.savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _annotations(*CARS_TEST)})
    for split, (fnames, _) in (("cars_train", CARS_TRAIN), ("cars_test", CARS_TEST)):
        folder = root / split / (split if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        for f in fnames:
            Image.new("RGB", (24, 16), (10, 20, 30)).save(folder / f)
    return root
