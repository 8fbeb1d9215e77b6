"""One trained DINO-QPM run with everything the interpretability chapters look at (Figs. 5, 14-23).

    ins = inspect_run("demo")              # the profile's first seed
    cars = inspect_run("paper", dataset="cars")   # the same run on one of the profile's extra_datasets
    ins.maps("train"), ins.assignment, ins.predictions, ins.parts, ins.images["test"][3]

:class:`RunInspection` opens the run's embedding stores, names the classes, loads display images lazily and
computes the fine-tuned model's feature maps once per split; on SynthBirds it also knows each selected
feature's true part (:func:`qpmlib.analysis.pairs.feature_parts`) and every class's attributes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qpmlib.analysis.pairs import default_pairs, feature_parts, paper_pairs
from qpmlib.config import Profile, apply_overrides, get_profile
from qpmlib.data import DATASETS, class_names, prepare, read_index
from qpmlib.data.images import ImageList
from qpmlib.data.synthbirds import class_attributes, part_maps, part_names
from qpmlib.embeddings import get_store
from qpmlib.runs.dino_qpm import run_dino_qpm
from qpmlib.runs.run import Run
from qpmlib.train import TokenData, evaluate

__all__ = ["RunInspection", "inspect_run"]

SPLITS = ("train", "test")


@dataclass
class RunInspection:
    """A finished DINO-QPM run, its data and its fine-tuned model's feature maps (computed on first use).

    Attributes:
        run: the :class:`~qpmlib.runs.run.Run` (stages dense, qp, qpm).
        root: the dataset folder.
        names: class names in label order.
        stores: the "train" and "test" embedding stores.
        images: the display images of each split, in store order (lazy).
        predictions: :meth:`qpmlib.runs.run.Run.predictions` (label, dense_pred, pred per test image).
    """

    run: Run
    root: Path
    names: list[str]
    stores: dict[str, Any]
    images: dict[str, ImageList]
    predictions: pd.DataFrame
    _maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def profile(self) -> Profile:
        """The run's profile."""
        return self.run.profile

    @property
    def grid(self) -> int:
        """Patches per side of the feature maps."""
        return self.stores["train"].grid

    @functools.cached_property
    def assignment(self) -> np.ndarray:
        """(N_c, N*_f) bool: the features of each class; column j is the j-th selected feature."""
        return self.run.sparse_head()["assignment"].astype(bool)

    @functools.cached_property
    def selected(self) -> np.ndarray:
        """(N*_f,) the dense feature index of each selected feature."""
        return self.run.sparse_head()["selected"].astype(int)

    def maps(self, split: str) -> np.ndarray:
        """(N, N*_f, h, w) eval-mode feature maps of the fine-tuned model on ``split`` (computed once).

        Raises:
            ValueError: for an unknown split.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if split not in self._maps:
            data = TokenData.from_store(self.stores[split])
            self._maps[split] = evaluate(self.run.model(), data, device=self.profile.train.device).feature_maps
        return self._maps[split]

    @property
    def has_parts(self) -> bool:
        """Whether the dataset knows the true parts (SynthBirds)."""
        return DATASETS[self.profile.data.dataset].parts

    @functools.cached_property
    def part_names(self) -> list[str] | None:
        """SynthBirds' part names; None elsewhere."""
        return part_names(self.root) if self.has_parts else None

    @functools.cached_property
    def parts(self) -> pd.DataFrame | None:
        """Which true part each selected feature sits on (SynthBirds; None elsewhere).

        :func:`qpmlib.analysis.pairs.feature_parts` over all training images, indexed by the feature's position
        among the selected ones, with the ``dense feature`` it came from as the first column.
        """
        if not self.has_parts:
            return None
        true_parts = part_maps(self.root, self.stores["train"].image_ids, self.grid)
        table = feature_parts(self.maps("train"), true_parts, self.part_names)
        table.insert(0, "dense feature", self.selected)
        return table

    @functools.cached_property
    def attributes(self) -> pd.DataFrame | None:
        """SynthBirds' class attributes (:func:`qpmlib.data.synthbirds.class_attributes`); None elsewhere."""
        return class_attributes(self.root) if self.has_parts else None

    def class_pairs(self, n: int) -> list[tuple[int, int]]:
        """The class pairs a chapter offers: the paper's figure pairs present in this dataset
        (:func:`qpmlib.analysis.pairs.paper_pairs`), then the most confused ones
        (:func:`qpmlib.analysis.pairs.default_pairs`); at most ``n``."""
        p = self.predictions
        return default_pairs(p.label, p.pred, p.dense_pred, n, first=paper_pairs(self.names).values())

    def describe(self) -> str:
        """One line: classes, selected features, features per class and the maps' shape."""
        a = self.assignment
        return (f"{a.shape[0]} classes, {a.shape[1]} selected features, {int(a.sum(axis=1).mean())} per class; "
                f"feature maps {self.maps('train').shape[1:]} per image")


def inspect_run(profile: str | Profile, seed: int | None = None, *, dataset: str | None = None) -> RunInspection:
    """Open the DINO-QPM run of a profile's default configuration (trained once, only when missing).

    Args:
        profile: profile name or object.
        seed: run seed (None: the profile's first seed).
        dataset: one of the profile's datasets (:meth:`qpmlib.config.Profile.dataset_overrides`: its own, then
            ``extra_datasets``, e.g. "cars" on ``paper``); None for its own. The run is the one Table 1 trains
            on that dataset.

    Returns:
        :class:`RunInspection`.

    Raises:
        ValueError: for a dataset that the profile does not have (the message lists those it has).
    """
    prof = get_profile(profile)
    datasets = prof.dataset_overrides()
    if dataset is not None and dataset not in datasets:
        raise ValueError(f"profile {prof.name!r} has no dataset {dataset!r}; its datasets: {', '.join(datasets)}")
    overrides = datasets[dataset or prof.data.dataset]
    seed = prof.seeds[0] if seed is None else seed
    run = run_dino_qpm(prof, seed, overrides=overrides, verbose=False)
    prof = apply_overrides(prof, overrides)
    root = prepare(prof.data, verbose=False)
    index = read_index(root, prof.data.dataset).set_index("image_id")
    stores = {split: get_store(prof, split, verbose=False) for split in SPLITS}
    images = {split: ImageList(index.loc[stores[split].image_ids, "path"], prof.data.image_size) for split in SPLITS}
    return RunInspection(run, root, class_names(root, prof.data.dataset), stores, images, run.predictions())
