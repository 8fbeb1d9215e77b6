"""CUB-200-2011: reading the on-disk format, segmentation masks on the patch grid, download (reference_spec §7.1).

The same reader serves SynthBirds folders, which are written in this format (:mod:`qpmlib.data.synthbirds`).

Layout (``root`` is the ``CUB_200_2011`` folder)::

    images.txt  image_class_labels.txt (1-based)  train_test_split.txt (5,994 train / 5,794 test)  classes.txt
    images/<NNN.Class>/<img>.jpg
    segmentations/<NNN.Class>/<img>.png    separate release, needed for Plausibility (reference_spec §5.5)
    parts/parts.txt  parts/part_locs.txt   (image_id part_id x y visible)

Official sources (CaltechDATA), fetched by ``python data_scripts/download_cub.py``:

* images: https://data.caltech.edu/records/65de6-vp158 (``CUB_200_2011.tgz``, 1.1 GB, md5 97eceeb196236b17998738112f37df78)
* segmentations: https://data.caltech.edu/records/w9d68-gec53 (``segmentations.tgz``, about 39 MB,
  md5 4d47ba1228eae64f2fa547c47bc65255)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from qpmlib.data import download as dl

__all__ = [
    "FOLDER",
    "FETCH_COMMAND",
    "N_TRAIN",
    "N_TEST",
    "Source",
    "IMAGES_SOURCE",
    "SEGMENTATIONS_SOURCE",
    "find_root",
    "validate",
    "read_index",
    "resize_linear_u8",
    "patch_mask",
    "patch_masks",
    "part_locations",
    "download_cub",
]

FOLDER = "CUB_200_2011"
FETCH_COMMAND = "python data_scripts/download_cub.py"
N_TRAIN, N_TEST = 5994, 5794
_INDEX_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


@dataclass(frozen=True)
class Source:
    """One downloadable archive and where its entries go (archive-relative name -> path relative to the data dir)."""

    url: str
    md5: str
    filename: str
    moves: tuple[tuple[str, str], ...]
    marker: str  # completion marker written inside the CUB folder after the move


IMAGES_SOURCE = Source(
    url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
    md5="97eceeb196236b17998738112f37df78",
    filename="CUB_200_2011.tgz",
    moves=(("CUB_200_2011", FOLDER),),
    marker=".complete-images",
)
SEGMENTATIONS_SOURCE = Source(
    url="https://data.caltech.edu/records/w9d68-gec53/files/segmentations.tgz?download=1",
    md5="4d47ba1228eae64f2fa547c47bc65255",
    filename="segmentations.tgz",
    moves=(("segmentations", f"{FOLDER}/segmentations"),),
    marker=".complete-segmentations",
)


def find_root(data_root: str | Path) -> Path:
    """The CUB folder under ``data_root``: ``CUB_200_2011/`` or the reference layout ``CUB200/CUB_200_2011/``.

    Returns the first candidate that exists, else ``data_root/CUB_200_2011`` (which :func:`validate` will report).
    """
    data_root = Path(data_root)
    for candidate in (data_root / FOLDER, data_root / "CUB200" / FOLDER):
        if candidate.is_dir():
            return candidate
    return data_root / FOLDER


def _missing(root: Path, what: Path, command: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"CUB-format dataset at {root} is incomplete: {what} is missing. Fetch the data with `{command}` "
        f"(or set $QPMLIB_DATA to the folder that holds {FOLDER})."
    )


def validate(root: str | Path, *, segmentations: bool = True, command: str = FETCH_COMMAND) -> Path:
    """Check that a CUB-format folder has its index files, every listed image and (optionally) every mask.

    Args:
        root: the ``CUB_200_2011`` (or SynthBirds) folder.
        segmentations: also require ``segmentations/<image>.png`` for every image.
        command: the command that fetches the data, quoted in the error.

    Returns:
        ``root`` as a Path.

    Raises:
        FileNotFoundError: naming the folder, the first missing file and ``command``.
    """
    root = Path(root)
    if not root.is_dir():
        raise _missing(root, root, command)
    for name in _INDEX_FILES:
        if not (root / name).is_file():
            raise _missing(root, root / name, command)
    for rel in _image_paths(root).values():
        if not (root / "images" / rel).is_file():
            raise _missing(root, root / "images" / rel, command)
        if segmentations and not _mask_path(root, rel).is_file():
            raise _missing(root, _mask_path(root, rel), command)
    return root


def _bad_line(path: Path, line: int, problem: str) -> ValueError:
    return ValueError(f"{path}, line {line}: {problem}; the dataset folder is damaged or not in CUB-200-2011 format")


def _read_table(path: Path, what: str) -> dict[int, tuple[str, int]]:
    """``{id: (value, line number)}`` from a file of ``<positive integer id> <value>`` lines.

    Raises:
        FileNotFoundError: when the file is missing (names it and the fetch command).
        ValueError: for a line without two fields, an id that is not a positive integer, or a repeated id; the
            message names the file and the line.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"missing {path}; is {path.parent} a CUB-format folder? Fetch it with `{FETCH_COMMAND}`"
        )
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a text file ({exc}); the dataset folder is damaged") from exc
    out: dict[int, tuple[str, int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not (fields[0].isascii() and fields[0].isdigit()) or int(fields[0]) < 1:
            raise _bad_line(path, number, f"expected '<id> <{what}>' with a positive integer id, got {line!r}")
        key = int(fields[0])
        if key in out:
            raise _bad_line(path, number, f"id {key} is listed again (first on line {out[key][1]})")
        out[key] = (fields[1].strip(), number)
    return out


def _int_field(path: Path, table: dict[int, tuple[str, int]], key: int, valid: range, what: str) -> int:
    value, number = table[key]
    if not (value.isascii() and value.isdigit()) or int(value) not in valid:
        raise _bad_line(path, number, f"{what} of image {key} is {value!r}, expected an integer in "
                                      f"{valid.start}..{valid.stop - 1}")
    return int(value)


@functools.lru_cache(maxsize=8)
def _image_paths_cached(root: str, mtime_ns: int) -> dict[int, str]:
    path = Path(root) / "images.txt"
    table = _read_table(path, "image path relative to images/")
    for key, (rel, number) in table.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts:
            raise _bad_line(path, number, f"image path {rel!r} leaves the images/ folder")
    return {key: rel for key, (rel, _) in table.items()}


def _image_paths(root: Path) -> dict[int, str]:
    """image_id -> path relative to ``root/images`` (cached while images.txt is unchanged)."""
    path = root / "images.txt"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; is {root} a CUB-format folder? Fetch it with `{FETCH_COMMAND}`")
    return _image_paths_cached(str(root.resolve()), path.stat().st_mtime_ns)


def _mask_path(root: Path, rel: str) -> Path:
    return (root / "segmentations" / rel).with_suffix(".png")


def read_index(root: str | Path) -> pd.DataFrame:
    """The image list of a CUB-format folder (reference_spec §7.1), checked line by line.

    Args:
        root: the ``CUB_200_2011`` (or SynthBirds) folder.

    Returns:
        DataFrame sorted by ``image_id`` with columns ``image_id`` (int, 1-based as in ``images.txt``),
        ``path`` (str, absolute path of the JPEG), ``rel_path`` (str, path relative to ``root``, e.g.
        ``images/001.X/x.jpg``; stable across machines, use it for fingerprints), ``label`` (int, 0-based:
        ``image_class_labels.txt`` minus 1) and ``is_train`` (bool).

    Raises:
        FileNotFoundError: naming a missing index file.
        ValueError: naming the file and line of the first problem: a malformed line, a repeated image or class
            id, an image path that leaves ``images/``, a label outside 1..N_c (N_c = the classes in
            ``classes.txt``, numbered 1..N_c), a split flag other than 0 or 1, an image listed in one file but
            not another; or a class without training or test images, or fewer than 2 classes.
    """
    root = Path(root)
    paths = _image_paths(root)
    labels_path, split_path, classes_path = (root / n for n in _INDEX_FILES[1:])
    labels = _read_table(labels_path, "class id")
    split = _read_table(split_path, "is_training_image 0 or 1")
    classes = _read_table(classes_path, "class name")
    if sorted(classes) != list(range(1, len(classes) + 1)):
        missing = sorted(set(range(1, max(classes, default=0) + 1)) - set(classes))
        raise ValueError(f"{classes_path} must number its classes 1..N without gaps; missing {missing[:5]}")
    if len(classes) < 2:
        raise ValueError(f"{classes_path} lists {len(classes)} class(es); classification needs at least 2")
    for path, table in ((labels_path, labels), (split_path, split)):
        for key, (_, number) in table.items():
            if key not in paths:
                raise _bad_line(path, number, f"image id {key} is not in {root / 'images.txt'}")
        absent = sorted(set(paths) - set(table))
        if absent:
            raise ValueError(f"{path} lists no entry for image id(s) {absent[:5]} of {root / 'images.txt'}; "
                             "the folder is corrupt")
    ids = sorted(paths)
    df = pd.DataFrame({
        "image_id": ids,
        "rel": [paths[i] for i in ids],
        "label": [_int_field(labels_path, labels, i, range(1, len(classes) + 1), "the class id") - 1 for i in ids],
        "is_train": [_int_field(split_path, split, i, range(0, 2), "the split flag") == 1 for i in ids],
    })
    for flag, name in ((True, "training"), (False, "test")):
        empty = sorted(set(range(len(classes))) - set(df.loc[df["is_train"] == flag, "label"]))
        if empty:
            shown = ", ".join(f"{c + 1} ({classes[c + 1][0]})" for c in empty[:5])
            raise ValueError(f"{root}: class(es) {shown}{' ...' if len(empty) > 5 else ''} have no {name} images "
                             f"in {split_path}; every class of {classes_path} needs training and test images")
    root_abs = root.resolve()
    df["rel_path"] = "images/" + df["rel"]
    df["path"] = [str(root_abs / "images" / r) for r in df["rel"]]
    return df[["image_id", "path", "rel_path", "label", "is_train"]]


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 11-bit weights of OpenCV's INTER_LINEAR resize along one axis."""
    scale = 1.0 / (n_out / n_in)
    f = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = f - i0.astype(np.float32)
    low = i0 < 0
    high = i0 >= n_in - 1
    frac[low | high] = 0.0
    i0 = np.clip(i0, 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w0 = np.rint((1.0 - frac) * 2048.0).astype(np.int64)  # saturate_cast<short> rounds half to even
    return i0, i1, w0, 2048 - w0


def resize_linear_u8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W) image as ``cv2.resize(image, (w, h))`` does by default.

    Emulates OpenCV's fixed-point INTER_LINEAR path for 8-bit images: sample positions
    ``(d + 0.5) * in / out - 0.5`` (clamped at the borders), 11-bit weights, and the result
    ``(sum of weight products + 2**21) >> 22``. OpenCV's SIMD kernels drop 4 low bits of the horizontal pass
    before the vertical one, so an output whose exact value lies within about 1/64 of a rounding threshold can
    differ by one grey level; OpenCV also switches to area averaging for an exact 2x downscale. Neither changes
    the ``> 0`` binarisation of reference_spec §5.5 except for such borderline pixels.

    Args:
        image: uint8 array (H, W).
        size: output (height, width).

    Returns:
        uint8 array (height, width).
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W) image, got {image.dtype} {image.shape}")
    h_out, w_out = size
    y0, y1, b0, b1 = _linear_taps(image.shape[0], h_out)
    x0, x1, a0, a1 = _linear_taps(image.shape[1], w_out)
    src = image.astype(np.int64)
    rows0 = src[y0][:, x0] * a0 + src[y0][:, x1] * a1  # (h_out, w_out), horizontal pass of row y0
    rows1 = src[y1][:, x0] * a0 + src[y1][:, x1] * a1
    out = (rows0 * b0[:, None] + rows1 * b1[:, None] + (1 << 21)) >> 22
    return out.astype(np.uint8)


def patch_mask(root: str | Path, image_id: int, grid: int) -> np.ndarray:
    """The image's segmentation on the patch grid (reference_spec §5.5, ``DinoData.load_mask``).

    The grey PNG is resized to (grid, grid) on the full image (no crop), as cv2's default bilinear resize does
    (:func:`resize_linear_u8`), then binarised as ``value > 0``; CUB's soft multi-annotator masks therefore keep
    every patch touched by any annotator after interpolation.

    Args:
        root: the ``CUB_200_2011`` (or SynthBirds) folder.
        image_id: 1-based image id.
        grid: patches per side (16 for ViT-/14 at 224 px).

    Returns:
        bool array (grid, grid).

    Raises:
        ValueError: unknown image id or grid < 1.
        FileNotFoundError: naming the missing mask file.
    """
    return patch_masks(root, [image_id], grid)[0]


def patch_masks(root: str | Path, image_ids, grid: int) -> np.ndarray:
    """:func:`patch_mask` for several images.

    Args:
        root: the CUB-format folder.
        image_ids: N 1-based image ids.
        grid: patches per side.

    Returns:
        bool array (N, grid, grid).
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    root = Path(root)
    paths = _image_paths(root)
    ids = [int(i) for i in np.atleast_1d(np.asarray(image_ids))]
    out = np.zeros((len(ids), grid, grid), dtype=bool)
    for n, image_id in enumerate(ids):
        if image_id not in paths:
            raise ValueError(f"unknown image id {image_id}; {root / 'images.txt'} lists ids "
                             f"{min(paths)}..{max(paths)}")
        path = _mask_path(root, paths[image_id])
        if not path.is_file():
            raise FileNotFoundError(
                f"missing segmentation mask {path}; fetch the CUB segmentations with `{FETCH_COMMAND}`"
            )
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L"), dtype=np.uint8)
        out[n] = resize_linear_u8(grey, (grid, grid)) > 0
    return out


def part_locations(root: str | Path) -> pd.DataFrame:
    """Part keypoints from ``parts/part_locs.txt`` with names from ``parts/parts.txt``.

    Returns:
        DataFrame with columns ``image_id`` (int), ``part_id`` (int, 1-based), ``part_name`` (str), ``x``, ``y``
        (float, pixels of the original image; 0 when invisible) and ``visible`` (bool), sorted by image and part.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    root = Path(root)
    locs_path, names_path = root / "parts" / "part_locs.txt", root / "parts" / "parts.txt"
    for p in (locs_path, names_path):
        if not p.is_file():
            raise FileNotFoundError(f"missing {p}; is {root} a CUB-format folder? Fetch it with `{FETCH_COMMAND}`")
    names = dict(line.split(maxsplit=1) for line in names_path.read_text().splitlines() if line.strip())
    df = pd.read_csv(locs_path, sep=r"\s+", header=None, names=["image_id", "part_id", "x", "y", "visible"])
    df["image_id"] = df["image_id"].astype(int)
    df["part_id"] = df["part_id"].astype(int)
    df["visible"] = df["visible"].astype(int).astype(bool)
    df.insert(2, "part_name", df["part_id"].map(lambda i: names.get(str(i), "").strip()))
    return df.sort_values(["image_id", "part_id"], ignore_index=True)


def download_cub(
    data_root: str | Path,
    *,
    segmentations: bool = True,
    keep_archives: bool = False,
    verbose: bool = True,
    sources: tuple[Source, ...] | None = None,
) -> Path:
    """Download, verify and install CUB-200-2011 (and its segmentations) under ``data_root/CUB_200_2011``.

    Each archive is fetched with resume (:func:`qpmlib.data.download.download`), checked against its md5,
    extracted into a temporary folder and renamed into place; a marker (``.complete-images``,
    ``.complete-segmentations``) is written last. Finished parts are skipped on a second call.

    Args:
        data_root: folder that will hold ``CUB_200_2011/`` (usually :func:`qpmlib.paths.data_dir`).
        segmentations: also fetch the segmentation masks (needed for Plausibility).
        keep_archives: keep the ``.tgz`` files in ``data_root/.downloads`` after installation.
        verbose: progress bars.
        sources: override the archives (tests use local files); default images and segmentations.

    Returns:
        the validated ``CUB_200_2011`` folder.

    Raises:
        ChecksumError: an archive does not match its published md5 (nothing is extracted).
        FileExistsError: a target folder exists without its completion marker and fails validation.
    """
    data_root = Path(data_root)
    if sources is None:
        sources = (IMAGES_SOURCE, SEGMENTATIONS_SOURCE) if segmentations else (IMAGES_SOURCE,)
    cub_root = data_root / FOLDER
    for source in sources:
        marker = cub_root / source.marker
        targets = [data_root / dst for _, dst in source.moves]
        if marker.is_file():
            continue
        if all(t.exists() for t in targets):  # installed by hand: validate() below decides
            continue
        archive = dl.download(
            source.url, data_root / ".downloads" / source.filename, md5=source.md5, verbose=verbose
        )
        dl.extract_and_move(archive, {src: data_root / dst for src, dst in source.moves}, work_dir=data_root)
        marker.write_text(source.url + "\n")
        if not keep_archives:
            archive.unlink()
    return validate(cub_root, segmentations=segmentations)
