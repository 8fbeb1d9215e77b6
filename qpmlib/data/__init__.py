"""Datasets: SynthBirds (generated, CUB format), CUB-200-2011 and Stanford Cars, and image preprocessing.

Chapter-facing names: :func:`prepare` (dataset folder of a profile, generated or checked), :func:`read_index`
(image list with ``image_id``, ``path``, ``rel_path``, ``label``, ``is_train``) and :func:`class_names`; the
registry :data:`DATASETS`. Dataset specifics live in :mod:`qpmlib.data.synthbirds`, :mod:`qpmlib.data.cub`
and :mod:`qpmlib.data.cars`; :mod:`qpmlib.data.images` reads images for the model and for display.
"""

from qpmlib.data.registry import DATASETS, Dataset, class_names, dataset_root, n_images, prepare, read_index

__all__ = ["DATASETS", "Dataset", "class_names", "dataset_root", "n_images", "prepare", "read_index"]
