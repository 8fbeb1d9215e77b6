"""Stanford Cars: reader for the layout the reference code uses (reference_spec §7.2).

196 classes, 8,144 training and 8,041 test images; labels are the annotation's ``class`` minus 1; no
bounding-box crop. Layout (``root`` is the ``StanfordCars`` folder)::

    car_devkit/cars_train_annos.mat   car_devkit/cars_meta.mat
    cars_train/*.jpg   cars_test/*.jpg
    cars_test_annos_withlabels.mat    (test labels; not part of the image download)

Where to get the files. The original Stanford URLs are gone; qpmlib downloads nothing from Kaggle and needs no
Kaggle account or package. Download by hand, in a browser:

1. the Kaggle dataset ``eduardo4jesus/stanford-cars-dataset`` (https://www.kaggle.com/datasets/eduardo4jesus/stanford-cars-dataset),
   a zip with ``car_devkit/``, ``cars_train/`` and ``cars_test/``;
2. ``cars_test_annos_withlabels.mat``, the test labels that zip lacks (the reference code points to the copy in
   the GitHub repository ``phongdinhv/stanford-cars-model``);

then run ``python data_scripts/download_cars.py --archive <zip> --test-labels <mat>``, which unpacks them
safely into ``$QPMLIB_DATA/StanfordCars`` and checks the result. The nested folders of the Kaggle zip
(``cars_train/cars_train/``, ``car_devkit/devkit/``) are accepted as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from qpmlib.data import download as dl

__all__ = ["FOLDER", "FETCH_COMMAND", "N_TRAIN", "N_TEST", "N_CLASSES", "validate", "read_index", "class_names",
           "install_cars"]

FOLDER = "StanfordCars"
FETCH_COMMAND = (
    "python data_scripts/download_cars.py --archive <kaggle zip> --test-labels <cars_test_annos_withlabels.mat>"
)
N_TRAIN, N_TEST, N_CLASSES = 8144, 8041, 196
TEST_LABELS = "cars_test_annos_withlabels.mat"


def _first(root: Path, candidates: tuple[str, ...]) -> Path:
    """First existing candidate path (relative to root), else the first one (for the error message)."""
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    return root / candidates[0]


def _files(root: Path) -> dict[str, Path]:
    return {
        "train_annos": _first(root, ("car_devkit/cars_train_annos.mat", "car_devkit/devkit/cars_train_annos.mat")),
        "meta": _first(root, ("car_devkit/cars_meta.mat", "car_devkit/devkit/cars_meta.mat")),
        "test_annos": _first(root, (TEST_LABELS, f"car_devkit/{TEST_LABELS}", f"car_devkit/devkit/{TEST_LABELS}")),
        "train_dir": _first(root, ("cars_train/cars_train", "cars_train")),
        "test_dir": _first(root, ("cars_test/cars_test", "cars_test")),
    }


def _missing(root: Path, what: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"Stanford Cars at {root} is incomplete: {what} is missing. Download the Kaggle dataset "
        f"eduardo4jesus/stanford-cars-dataset and {TEST_LABELS} by hand (see `python data_scripts/download_cars.py "
        f"--help`), then run `{FETCH_COMMAND}`."
    )


def _annotations(path: Path, n_classes: int | None) -> pd.DataFrame:
    """``fname`` and 0-based ``label`` of an annotation file, checked entry by entry.

    Raises:
        ValueError: naming the file and the entry (1-based) of a missing field, a class outside 1..n_classes,
            a repeated file name or a file name that is not a plain name.
    """
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True)
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for a damaged file
        raise ValueError(f"{path} cannot be read as a MATLAB file ({type(exc).__name__}: {exc})") from exc
    if "annotations" not in mat:
        raise ValueError(f"{path} holds no 'annotations'; is it a Stanford Cars annotation file?")
    ann = np.atleast_1d(mat["annotations"])
    missing = {"class", "fname"} - set(ann.dtype.names or ())
    if missing:
        raise ValueError(f"{path} has no field(s) {sorted(missing)}; is it the labelled annotation file?")
    fnames, labels, first = [], [], {}
    top = n_classes if n_classes is not None else "N"
    for entry, (fname, cls) in enumerate(zip(ann["fname"], ann["class"]), start=1):
        fname = str(fname)
        if Path(fname).name != fname or fname in ("", ".", ".."):
            raise ValueError(f"{path}, entry {entry}: file name {fname!r} is not a plain file name")
        if fname in first:
            raise ValueError(f"{path}, entry {entry}: file {fname} is listed again (first as entry {first[fname]})")
        first[fname] = entry
        try:
            value = float(cls)
        except (TypeError, ValueError):
            value = float("nan")
        if not value.is_integer() or value < 1 or (n_classes is not None and value > n_classes):
            raise ValueError(f"{path}, entry {entry}: class {cls!r} of {fname} is not an integer in 1..{top}")
        fnames.append(fname)
        labels.append(int(value) - 1)
    return pd.DataFrame({"fname": fnames, "label": labels})


def read_index(root: str | Path) -> pd.DataFrame:
    """The image list of Stanford Cars, training images first.

    Args:
        root: the ``StanfordCars`` folder.

    Returns:
        DataFrame sorted by ``image_id`` with columns ``image_id`` (int, 1..N_train for training images, then
        the test images in annotation order), ``path`` (str, absolute), ``rel_path`` (str, relative to
        ``root``), ``label`` (int, ``class - 1``) and ``is_train`` (bool).

    Raises:
        FileNotFoundError: naming the missing annotation file and how to get it.
        ValueError: naming the file and entry of a class outside 1..N_c (N_c = the names in ``cars_meta.mat``
            when it is there), a repeated or non-plain file name; or a class without training or test images,
            or fewer than 2 classes.
    """
    root = Path(root)
    files = _files(root)
    for key in ("train_annos", "test_annos"):
        if not files[key].is_file():
            raise _missing(root, files[key])
    n_classes = len(class_names(root)) if files["meta"].is_file() else None
    parts = []
    for key, dir_key, is_train in (("train_annos", "train_dir", True), ("test_annos", "test_dir", False)):
        df = _annotations(files[key], n_classes)
        df["rel_path"] = [(files[dir_key] / f).relative_to(root).as_posix() for f in df["fname"]]
        df["is_train"] = is_train
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    n = n_classes if n_classes is not None else int(df["label"].max()) + 1
    if n < 2:
        raise ValueError(f"{root} has {n} class(es); classification needs at least 2")
    for (key, name), part in zip((("train_annos", "training"), ("test_annos", "test")), parts):
        empty = sorted(set(range(n)) - set(part["label"]))
        if empty:
            raise ValueError(f"{files[key]}: class(es) {[c + 1 for c in empty[:5]]}{' ...' if len(empty) > 5 else ''} "
                             f"have no {name} images; every class needs training and test images")
    df.insert(0, "image_id", np.arange(1, len(df) + 1))
    root_abs = root.resolve()
    df["path"] = [str(root_abs / r) for r in df["rel_path"]]
    return df[["image_id", "path", "rel_path", "label", "is_train"]]


def class_names(root: str | Path) -> list[str]:
    """The 196 class names from ``cars_meta.mat`` (index = label)."""
    root = Path(root)
    path = _files(root)["meta"]
    if not path.is_file():
        raise _missing(root, path)
    try:
        names = scipy.io.loadmat(path, squeeze_me=True)["class_names"]
    except Exception as exc:  # noqa: BLE001 - a damaged file or one without the field
        raise ValueError(f"{path} holds no readable 'class_names' ({type(exc).__name__}: {exc})") from exc
    return [str(n) for n in np.atleast_1d(names)]


def validate(root: str | Path) -> Path:
    """Check the annotation files and that every listed image exists.

    Returns:
        ``root`` as a Path.

    Raises:
        FileNotFoundError: naming the folder, the first missing file and how to get the data.
    """
    root = Path(root)
    if not root.is_dir():
        raise _missing(root, root)
    files = _files(root)
    for key in ("train_annos", "meta", "test_annos", "train_dir", "test_dir"):
        if not files[key].exists():
            raise _missing(root, files[key])
    for path in read_index(root)["path"]:
        if not Path(path).is_file():
            raise _missing(root, Path(path))
    return root


def install_cars(data_root: str | Path, *, archive: str | Path | None = None,
                 test_labels: str | Path | None = None) -> Path:
    """Unpack a hand-downloaded Kaggle zip and copy the test-label file into ``data_root/StanfordCars``.

    The zip is extracted into a temporary folder (members escaping it are refused) and moved into place.

    Args:
        data_root: folder that will hold ``StanfordCars/``.
        archive: the Kaggle zip (or a tar); its top level holds ``car_devkit/``, ``cars_train/``, ``cars_test/``
            (a single wrapping folder is also accepted). None: keep what is already there.
        test_labels: ``cars_test_annos_withlabels.mat``; None: keep what is already there.

    Returns:
        the validated ``StanfordCars`` folder.

    Raises:
        FileNotFoundError: the result is incomplete (the message names the first missing file).
        FileExistsError: one of the archive's folders is already installed.
    """
    root = Path(data_root) / FOLDER
    if archive is not None or test_labels is not None:
        root.mkdir(parents=True, exist_ok=True)
    if archive is not None:
        tmp = root / ".unpack"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            dl.safe_extract(archive, tmp)
            top = tmp
            entries = list(tmp.iterdir())
            if len(entries) == 1 and entries[0].is_dir() and not (tmp / "car_devkit").exists():
                top = entries[0]
            moves = {name: root / name for name in ("car_devkit", "cars_train", "cars_test") if (top / name).exists()}
            if (top / TEST_LABELS).is_file():
                moves[TEST_LABELS] = root / TEST_LABELS
            for name, dst in moves.items():
                if dst.exists():
                    raise FileExistsError(f"{dst} already exists; remove it to install {archive} again")
                (top / name).rename(dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if test_labels is not None:
        shutil.copyfile(test_labels, root / f".{TEST_LABELS}.tmp")
        (root / f".{TEST_LABELS}.tmp").replace(root / TEST_LABELS)
    return validate(root)
