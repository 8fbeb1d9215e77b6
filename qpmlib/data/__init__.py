"""Datasets: SynthBirds (generated, CUB format), CUB-200-2011 and Stanford Cars, and image preprocessing.

Chapter-facing names: :func:`prepare` (dataset folder of a profile, generated or checked) and
:func:`read_index` (image list with ``image_id``, ``path``, ``rel_path``, ``label``, ``is_train``).
Dataset specifics live in :mod:`qpmlib.data.synthbirds`, :mod:`qpmlib.data.cub` and :mod:`qpmlib.data.cars`.
"""

from qpmlib.data.registry import DATASETS, prepare, read_index

__all__ = ["DATASETS", "prepare", "read_index"]
