"""One entry point per dataset: :func:`prepare` finds (or generates) a dataset folder, :func:`read_index` lists it.

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
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from qpmlib import paths
from qpmlib.data import cars, cub, synthbirds

__all__ = ["DATASETS", "synthbirds_root", "prepare", "read_index"]

DATASETS: tuple[str, ...] = ("synthbirds", "cub", "cars", "synthcars")
#: Generated datasets and the on-disk layout each is written in.
_GENERATED = {"synthbirds": "cub", "synthcars": "cars"}


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASETS)}")


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


def prepare(data_cfg, *, verbose: bool = True) -> Path:
    """Make sure the dataset of a profile is on disk and return its folder.

    SynthBirds (either layout) is generated when its folder is missing (sizes from the profile's
    :class:`~qpmlib.profiles.DataConfig`); real datasets are only checked, never downloaded here.

    Args:
        data_cfg: a :class:`qpmlib.profiles.DataConfig`.
        verbose: progress bar while generating SynthBirds.

    Returns:
        the dataset folder, to pass to :func:`read_index` and the mask/part readers.

    Raises:
        ValueError: unknown dataset name (the message lists the valid ones).
        FileNotFoundError: a real dataset is missing or incomplete; the message names the folder, the first
            missing file and the command that fetches it.
    """
    _check_dataset(data_cfg.dataset)
    if data_cfg.dataset in _GENERATED:
        root = synthbirds_root(data_cfg)
        return synthbirds.generate(
            root, n_classes=data_cfg.n_classes, n_train=data_cfg.n_train, n_test=data_cfg.n_test,
            image_size=data_cfg.image_size, seed=data_cfg.seed, shortcut=data_cfg.shortcut,
            layout=_GENERATED[data_cfg.dataset], verbose=verbose,
        )
    if data_cfg.dataset == "cub":
        root = cub.validate(cub.find_root(paths.data_dir()))
        expected = (cub.N_TRAIN, cub.N_TEST)
    else:
        root = cars.validate(paths.data_dir() / cars.FOLDER)
        expected = (cars.N_TRAIN, cars.N_TEST)
    index = read_index(root, data_cfg.dataset)
    counts = (int(index["is_train"].sum()), int((~index["is_train"]).sum()))
    if counts != expected:
        warnings.warn(
            f"{root} holds {counts[0]} training / {counts[1]} test images, the standard split has "
            f"{expected[0]} / {expected[1]}; numbers will not be comparable with the paper", stacklevel=2
        )
    return root


def read_index(root: str | Path, dataset: str) -> pd.DataFrame:
    """The image list of a dataset folder.

    Args:
        root: folder returned by :func:`prepare`.
        dataset: a name of :data:`DATASETS`.

    Returns:
        DataFrame sorted by ``image_id`` with columns ``image_id`` (int), ``path`` (str, absolute),
        ``rel_path`` (str, relative to ``root``), ``label`` (int, 0-based) and ``is_train`` (bool).

    Raises:
        ValueError: unknown dataset name.
    """
    _check_dataset(dataset)
    return cars.read_index(root) if dataset in ("cars", "synthcars") else cub.read_index(root)
