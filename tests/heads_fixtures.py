"""A planted-signal token set for the head tests: classes differ by what two known parts look like.

Every image is a ``grid x grid`` map of D-dimensional tokens. Part 0 (a 2 x 2 block) carries a class direction,
part 1 (a 1 x 2 strip) a shared direction plus a weaker class direction, the remaining patches are background
noise; the blocks sit at random places. ``parts`` holds the true part coverage on the grid, as
:func:`qpmlib.data.synthbirds.part_maps` returns it, so a head that reads the right tokens can classify well above
chance and a part-based method can be checked against the truth. ``one_thread`` (autouse where imported) runs
each test on one CPU thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from qpmlib.train import TokenData


@dataclass
class Planted:
    train: TokenData
    test: TokenData
    train_parts: np.ndarray  # (N, 2, grid, grid)
    test_parts: np.ndarray
    grid: int


def planted(n_classes: int = 4, n_train: int = 12, n_test: int = 8, grid: int = 4, dim: int = 16,
            noise: float = 0.5, seed: int = 0) -> Planted:
    """Balanced train/test splits of planted tokens (float32) with their part maps."""
    rng = np.random.default_rng(seed)
    class_dir = rng.normal(size=(n_classes, dim))
    strip_dir = rng.normal(size=(n_classes, dim))
    shared = rng.normal(size=dim)
    background = rng.normal(size=dim) * 0.5

    def split(n_per_class: int, first_id: int):
        labels = np.repeat(np.arange(n_classes), n_per_class)
        n = len(labels)
        tokens = background + noise * rng.normal(size=(n, grid, grid, dim))
        parts = np.zeros((n, 2, grid, grid), np.float32)
        for i, c in enumerate(labels):
            y, x = rng.integers(0, grid - 1, size=2)
            tokens[i, y:y + 2, x:x + 2] = class_dir[c] + noise * rng.normal(size=(2, 2, dim))
            parts[i, 0, y:y + 2, x:x + 2] = 1
            free = np.argwhere(parts[i, 0] == 0)
            fy, fx = free[rng.integers(len(free))]
            cells = [(fy, fx)] + [(fy, fx + 1)] * int(fx + 1 < grid and parts[i, 0, fy, fx + 1] == 0)
            for cy, cx in cells:
                tokens[i, cy, cx] = shared + 0.7 * strip_dir[c] + noise * rng.normal(size=dim)
                parts[i, 1, cy, cx] = 1
        patches = tokens.reshape(n, grid * grid, dim).astype(np.float32)
        cls = (patches.mean(axis=1) + 0.1 * rng.normal(size=(n, dim))).astype(np.float32)
        ids = np.arange(first_id, first_id + n)
        return TokenData(patches, cls, labels, image_ids=ids), parts

    train, train_parts = split(n_train, 1)
    test, test_parts = split(n_test, 1 + n_classes * n_train)
    return Planted(train, test, train_parts, test_parts, grid)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: several threads only contend on the shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
