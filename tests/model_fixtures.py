"""Tiny tokens, a tiny dense model and a real-valued head, shared by the model, baseline and evaluation tests."""

from __future__ import annotations

import numpy as np
import torch

from qpmlib.model import DinoQPM
from qpmlib.train import TokenData


def class_tokens(n_per_class: int = 6, n_classes: int = 3, p: int = 4, d: int = 8, seed: int = 0) -> TokenData:
    """Tokens whose patch means depend on the class, so a tiny model can learn them."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centres = rng.normal(size=(n_classes, d)) * 2
    patches = centres[labels][:, None, :] + rng.normal(size=(len(labels), p, d))
    cls = patches.mean(axis=1)
    return TokenData(patches.astype(np.float32), cls.astype(np.float32), labels)


def tiny_dense(d: int = 8, n_classes: int = 3, n_features: int = 6) -> DinoQPM:
    """A seeded 2-layer dense model in eval mode."""
    torch.manual_seed(0)
    return DinoQPM(d, n_classes, n_layers=2, hidden_size=8, n_features=n_features).eval()


def real_head(n_classes: int = 3, k: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random (N_c, k) weights and (N_c,) bias, as an SLDD head has."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_classes, k)).astype(np.float32), rng.normal(size=n_classes).astype(np.float32)
