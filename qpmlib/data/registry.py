"""The dataset registry: :data:`DATASETS` maps a name to how that dataset is found, listed and annotated.

=============  =======================================================  ===============================
dataset        folder under :func:`qpmlib.paths.data_dir`                reader
=============  =======================================================  ===============================
``synthbirds`` ``synthbirds-<hash of the generator arguments>``          :func:`qpmlib.data.cub.read_index`
``synthcars``  ``synthcars-<hash of the generator arguments>``           :func:`qpmlib.data.cars.read_index`
``cub``        ``CUB_200_2011`` (or the reference ``CUB200/CUB_200_2011``) :func:`qpmlib.data.cub.read_index`
``cars``       ``StanfordCars``                                          :func:`qpmlib.data.cars.read_index`
=============  =======================================================  ===============================

``synthcars`` is SynthBirds written in Stanford Cars' layout (:func:`qpmlib.data.synthbirds.generate` with
``layout="cars"``), so that a paper-shaped profile runs the real Cars reader; it has no masks or parts.

:func:`prepare` finds (or generates) a profile's dataset folder, :func:`read_index` lists its images and
:func:`class_names` names its classes; :class:`Dataset` says whether it has object masks (Plausibility) and part
maps (SynthBirds' part alignment).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qpmlib import paths
from qpmlib.data import cars, cub, synthbirds

__all__ = ["Dataset", "DATASETS", "synthbirds_root", "dataset_root", "n_images", "prepare", "read_index",
           "class_names"]

#: Generated datasets and the on-disk layout each is written in.
_GENERATED = {"synthbirds": "cub", "synthcars": "cars"}


def synthbirds_root(data_cfg) -> Path:
    """``data_dir()/<dataset>-<10 hex digits>`` of a generated dataset ("synthbirds" or "synthcars"); the hash
    covers every generator argument and the generator version."""
    args = synthbirds.generator_args(
        n_classes=data_cfg.n_classes, n_train=data_cfg.n_train, n_test=data_cfg.n_test,
        image_size=data_cfg.image_size, seed=data_cfg.seed, shortcut=data_cfg.shortcut,
        layout=_GENERATED.get(data_cfg.dataset, "cub"),
    )
    name = data_cfg.dataset if data_cfg.dataset in _GENERATED else "synthbirds"
    return paths.data_dir() / f"{name}-{synthbirds.folder_fingerprint(args)}"


def _prepare_synthbirds(data_cfg, verbose: bool) -> Path:
    """SynthBirds in the layout of its dataset name (generated when missing)."""
    return synthbirds.generate(
        synthbirds_root(data_cfg), n_classes=data_cfg.n_classes, n_train=data_cfg.n_train,
        n_test=data_cfg.n_test, image_size=data_cfg.image_size, seed=data_cfg.seed, shortcut=data_cfg.shortcut,
        layout=_GENERATED[data_cfg.dataset], verbose=verbose,
    )


def _checked(root: Path, reader: Callable[[Path], pd.DataFrame], expected: tuple[int, int]) -> Path:
    """A real dataset's folder, with a warning when its split is not the standard one."""
    index = reader(root)
    counts = (int(index["is_train"].sum()), int((~index["is_train"]).sum()))
    if counts != expected:
        warnings.warn(
            f"{root} holds {counts[0]} training / {counts[1]} test images, the standard split has "
            f"{expected[0]} / {expected[1]}; numbers will not be comparable with the paper", stacklevel=4
        )
    return root


def _prepare_cub(data_cfg, verbose: bool) -> Path:
    return _checked(cub.validate(cub.find_root(paths.data_dir())), cub.read_index, (cub.N_TRAIN, cub.N_TEST))


def _prepare_cars(data_cfg, verbose: bool) -> Path:
    return _checked(cars.validate(paths.data_dir() / cars.FOLDER), cars.read_index, (cars.N_TRAIN, cars.N_TEST))


def _cub_class_names(root: str | Path) -> list[str]:
    """Class names of a CUB-format folder (``classes.txt``): ``NNN.Some_Name`` becomes ``Some Name``."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; is {root} a CUB-format folder?")
    rows = sorted((int(a), b) for a, b in (line.split(maxsplit=1) for line in path.read_text().splitlines()
                                           if line.strip()))
    return [(b.split(".", 1)[1] if "." in b else b).replace("_", " ") for _, b in rows]


@dataclass(frozen=True)
class Dataset:
    """How one dataset is found, listed and annotated.

    Attributes:
        name: registry key (the profile's ``data.dataset``).
        prepare: ``prepare(data_cfg, verbose) -> folder``; generates SynthBirds, checks a real dataset.
        read_index: ``read_index(folder) -> DataFrame`` (see :func:`read_index`).
        class_names: ``class_names(folder) -> list[str]`` in label order.
        segmentations: whether it has CUB-format object masks (Plausibility is computed only then).
        parts: whether it has SynthBirds part maps (part alignment is computed only then).
    """

    name: str
    prepare: Callable[..., Path]
    read_index: Callable[[Path], pd.DataFrame]
    class_names: Callable[[Path], list[str]]
    segmentations: bool
    parts: bool

    @property
    def generated(self) -> bool:
        """Whether it is SynthBirds (in either layout), generated from the profile's sizes."""
        return self.name in _GENERATED


#: Registry of datasets by name.
DATASETS: dict[str, Dataset] = {
    "synthbirds": Dataset("synthbirds", _prepare_synthbirds, cub.read_index, _cub_class_names, True, True),
    "cub": Dataset("cub", _prepare_cub, cub.read_index, _cub_class_names, True, False),
    "cars": Dataset("cars", _prepare_cars, cars.read_index, cars.class_names, False, False),
    "synthcars": Dataset("synthcars", _prepare_synthbirds, cars.read_index, cars.class_names, False, False),
}


def _dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def prepare(data_cfg, *, verbose: bool = True) -> Path:
    """Make sure the dataset of a profile is on disk and return its folder.

    SynthBirds (either layout) is generated when its folder is missing (sizes from the profile's
    :class:`~qpmlib.config.DataConfig`); real datasets are only checked, never downloaded here.

    Args:
        data_cfg: a :class:`qpmlib.config.DataConfig`.
        verbose: progress bar while generating SynthBirds.

    Returns:
        the dataset folder, to pass to :func:`read_index` and the mask/part readers.

    Raises:
        ValueError: unknown dataset name (the message lists the valid ones).
        FileNotFoundError: a real dataset is missing or incomplete; the message names the folder, the first
            missing file and the command that fetches it.
    """
    return _dataset(data_cfg.dataset).prepare(data_cfg, verbose)


def dataset_root(data_cfg) -> Path:
    """The folder :func:`prepare` returns for ``data_cfg``, found without generating or checking anything.

    Cheap and free of side effects, for planning: the folder may not exist yet (SynthBirds not generated, a real
    dataset not downloaded).

    Raises:
        ValueError: unknown dataset name.
    """
    name = _dataset(data_cfg.dataset).name
    if name in _GENERATED:
        return synthbirds_root(data_cfg)
    return cub.find_root(paths.data_dir()) if name == "cub" else paths.data_dir() / cars.FOLDER


def n_images(data_cfg, split: str) -> int:
    """How many images a split of the dataset holds (the standard split of a real dataset), without reading it.

    Raises:
        ValueError: unknown dataset name or split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid: train, test")
    name = _dataset(data_cfg.dataset).name
    if name in _GENERATED:
        return data_cfg.n_classes * (data_cfg.n_train if split == "train" else data_cfg.n_test)
    module = cub if name == "cub" else cars
    return module.N_TRAIN if split == "train" else module.N_TEST


def read_index(root: str | Path, dataset: str) -> pd.DataFrame:
    """The image list of a dataset folder.

    Args:
        root: folder returned by :func:`prepare`.
        dataset: a :data:`DATASETS` name.

    Returns:
        DataFrame sorted by ``image_id`` with columns ``image_id`` (int), ``path`` (str, absolute),
        ``rel_path`` (str, relative to ``root``), ``label`` (int, 0-based) and ``is_train`` (bool).

    Raises:
        ValueError: unknown dataset name.
    """
    return _dataset(dataset).read_index(root)


def class_names(root: str | Path, dataset: str) -> list[str]:
    """Readable class names in label order (index = 0-based label).

    Args:
        root: dataset folder (from :func:`prepare`).
        dataset: a :data:`DATASETS` name.

    Returns:
        list of names; CUB-format ``NNN.Some_Name`` becomes ``Some Name``.

    Raises:
        ValueError: for an unknown dataset.
        FileNotFoundError: when the class list is missing.
    """
    return _dataset(dataset).class_names(root)
