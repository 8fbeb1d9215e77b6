"""Evaluating trained models: the metrics every stage stores, and one model on one test image.

* :func:`model_metrics`: the Table 1-2 metrics of any model with a ``head_weight`` (reference_spec §5), in the
  one layout every stage of every method stores (see :mod:`qpmlib.runs.run`).
* :func:`test_masks_and_parts`: the object masks and SynthBirds part maps those metrics need; :func:`object_masks`
  the masks of any images.
* :func:`sid_at`: a run's SID@k for a k other than the stored 5 (the smoke profile has 2 features per class);
  :func:`part_peak_alignment_of` a run's ``part_peak_alignment``, also for runs stored before that key existed.
* :func:`test_image`: "model on test image i": the image, its prediction, its feature maps and the predicted
  class's weights (:class:`TestImage`), what every explanation figure draws; :func:`cam` turns maps and weights
  into the CAM of reference_spec §5.7; :func:`maps_for_rows` the maps of a few images of a store.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from qpmlib import metrics as qmetrics
from qpmlib.config import Profile
from qpmlib.data import DATASETS, prepare, read_index
from qpmlib.data.cub import patch_masks
from qpmlib.data.images import display_image
from qpmlib.data.synthbirds import part_maps
from qpmlib.embeddings import get_store
from qpmlib.runs.run import Run
from qpmlib.train import Evaluation, TokenData, evaluate, extract_features

__all__ = ["split_tokens", "test_masks_and_parts", "object_masks", "model_metrics", "prediction_tensors", "sid_at",
           "part_peak_alignment_of", "cam", "TestImage", "test_image", "maps_for_rows"]


def split_tokens(profile: Profile, split: str, *, verbose: bool = False) -> TokenData:
    """The cached backbone tokens of a profile's ``"train"`` or ``"test"`` split (extracted on first use)."""
    return TokenData.from_store(get_store(profile, split, verbose=verbose))


def test_masks_and_parts(profile: Profile, test: TokenData) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Object masks and SynthBirds part maps of the test split on the patch grid.

    Returns:
        ``(masks (N, H, W) bool or None, parts (N, n_parts, H, W) or None)``; None where the dataset has no
        such annotation (:class:`qpmlib.data.Dataset`) or the tokens carry no image ids.
    """
    dataset = DATASETS[profile.data.dataset]
    if not dataset.segmentations or test.image_ids is None:
        return None, None
    root = prepare(profile.data, verbose=False)  # once: it checks the dataset folder
    ids = tuple(np.asarray(test.image_ids).tolist())
    return _masks_and_parts(str(root), profile.data.dataset, ids, math.isqrt(test.n_patches))


@functools.lru_cache(maxsize=4)
def _masks_and_parts(root: str, dataset: str, ids: tuple, grid: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Read once per process (every run of a profile scores the same test images; about 1 s on demo), and
    returned read-only, so that no caller can change what the next run is given."""
    image_ids = np.asarray(ids)
    masks = patch_masks(root, image_ids, grid)
    parts = part_maps(root, image_ids, grid) if DATASETS[dataset].parts else None
    for array in (masks, parts):
        if array is not None:
            array.setflags(write=False)
    return masks, parts


def object_masks(profile: Profile, image_ids: Any, grid: int) -> np.ndarray | None:
    """The object masks Plausibility uses (reference_spec §5.5): the segmentations on a ``grid`` x ``grid`` patch grid.

    Args:
        profile: the profile whose dataset the ids belong to.
        image_ids: the dataset's image ids.
        grid: patches per side.

    Returns:
        bool array (N, grid, grid), or None when the dataset has no segmentations.
    """
    if not DATASETS[profile.data.dataset].segmentations:
        return None
    return patch_masks(prepare(profile.data, verbose=False), np.atleast_1d(np.asarray(image_ids)), grid)


def model_metrics(
    model: nn.Module,
    train: TokenData,
    test: TokenData,
    *,
    k: int = 5,
    masks: np.ndarray | None = None,
    parts: np.ndarray | None = None,
    seconds_per_epoch: float = float("nan"),
    seed: int = 0,
    device: str = "cpu",
) -> tuple[dict[str, Any], Evaluation, np.ndarray]:
    """The Table 1-2 metrics of a trained model with a ``head_weight`` (reference_spec §5).

    Only the features with a non-zero weight in some class (the reference's "rel features") enter the metrics.

    Args:
        model: a dense or sparse model; ``head_weight`` is (N_c, K).
        train: training tokens (Class-Independence and Contrastiveness on train features, §5.3-5.4).
        test: test tokens (Accuracy, Plausibility and SID@k with the predicted class, §5.1-5.2, §5.5).
        k: the k of SID@k, stored under ``sid_at_5`` (None when no test sample's predicted class has k non-zero
            weights).
        masks: (N_test, H, W) bool object masks on the patch grid, or None (Plausibility is then None).
        parts: (N_test, n_parts, H, W) SynthBirds part fractions, or None (no ``part_alignment`` and
            ``part_peak_alignment``).
        seconds_per_epoch: mean training time per epoch to report.
        seed: Contrastiveness's GMM seed.
        device: where the model is evaluated.

    Returns:
        ``(metrics, test evaluation, train features (N_train, K))``.
    """
    ev = evaluate(model, test, device=device)
    train_feats, _ = extract_features(model, train, device=device)
    weight = model.head_weight.detach().cpu().numpy()  # (N_c, K)
    rel = np.flatnonzero((weight != 0).any(axis=0))
    rows = weight[ev.predictions][:, rel]  # (N, K_rel): each test sample's predicted-class weights
    maps = ev.feature_maps[:, rel]
    out: dict[str, Any] = {
        "accuracy": qmetrics.accuracy(ev.logits, ev.labels),
        "plausibility": None if masks is None else qmetrics.plausibility(maps, rows, masks),
        "sid_at_5": qmetrics.sid_at_k(maps, rows, k=k) if _has_k_weights(rows, k) else None,
        "class_independence": qmetrics.class_independence(train_feats[:, rel], train.labels),
        "contrastiveness": qmetrics.contrastiveness(train_feats[:, rel], seed=seed),
        **qmetrics.compactness(weight),
        "seconds_per_epoch": seconds_per_epoch,
    }
    if parts is not None:
        out["part_alignment"] = qmetrics.part_alignment(maps, parts).score
        out["part_peak_alignment"] = qmetrics.part_peak_alignment(maps, parts).score
    return out, ev, train_feats


def prediction_tensors(test: TokenData, ev: Evaluation) -> dict[str, np.ndarray]:
    """What a stage stores about its test predictions: ``image_ids``, ``labels``, ``pred`` and ``logits``."""
    ids = test.image_ids if test.image_ids is not None else np.arange(len(test))
    return {"image_ids": np.asarray(ids, dtype=np.int64), "labels": ev.labels,
            "pred": ev.predictions.astype(np.int64), "logits": ev.logits}


def sid_at(run: Run, k: int) -> float | None:
    """SID@k of a run's model on the test split (predicted class, rel features; reference_spec §5.2).

    Stages store SID@5 under ``sid_at_5``; for another k (Table 1 uses ``min(5, N^c_f)``) the model is
    evaluated again.

    Returns:
        The value, or None when no test sample's predicted class has k non-zero weights (the paper's "−").
    """
    if k == 5:
        return run.metrics["sid_at_5"]
    model = run.model()
    ev = evaluate(model, split_tokens(run.profile, "test"), device="cpu")
    weight = model.head_weight.detach().cpu().numpy()  # (N_c, K)
    rel = np.flatnonzero((weight != 0).any(axis=0))
    rows = weight[ev.predictions][:, rel]
    if not _has_k_weights(rows, k):
        return None
    return qmetrics.sid_at_k(ev.feature_maps[:, rel], rows, k=k)


def _has_k_weights(rows: np.ndarray, k: int) -> bool:
    """Whether some test sample's predicted class has k non-zero weights (SID@k averages only those samples)."""
    return rows.size > 0 and int((rows != 0).sum(axis=1).max()) >= k


def part_peak_alignment_of(run: Run) -> float | None:
    """A run's :func:`qpmlib.metrics.part_peak_alignment` (rel features, test split).

    The stored value when the run's last stage has one; runs stored before the key existed lack it, and their
    stored model is evaluated again (seconds on the demo; nothing is trained or stored).

    Returns:
        The score, or None when the dataset has no part maps.
    """
    if "part_peak_alignment" in run.metrics:
        return run.metrics["part_peak_alignment"]
    test = split_tokens(run.profile, "test")
    _, parts = test_masks_and_parts(run.profile, test)
    if parts is None:
        return None
    model = run.model()
    ev = evaluate(model, test, device="cpu")
    rel = np.flatnonzero((model.head_weight.detach().cpu().numpy() != 0).any(axis=0))
    return qmetrics.part_peak_alignment(ev.feature_maps[:, rel], parts).score


def cam(feature_maps: Any, weights: Any) -> np.ndarray:
    """Class activation map ``G = sum_d w_d F_d``, min-shifted and max-normalised (reference_spec §5.7).

    Args:
        feature_maps: (D, H, W) feature maps of one image.
        weights: (D,) weight row of the class to explain.

    Returns:
        float array (H, W) in [0, 1]; all zeros when G is constant.

    Raises:
        ValueError: for mismatched shapes (both are named).
    """
    maps = np.asarray(feature_maps.detach().cpu() if torch.is_tensor(feature_maps) else feature_maps, np.float64)
    w = np.asarray(weights.detach().cpu() if torch.is_tensor(weights) else weights, np.float64)
    if maps.ndim != 3 or w.shape != (maps.shape[0],):
        raise ValueError(f"expected feature_maps (D, H, W) and weights (D,), got {maps.shape} and {w.shape}")
    g = np.tensordot(w, maps, axes=1)  # (H, W)
    g = g - g.min()
    top = g.max()
    return g / top if top > 0 else np.zeros_like(g)


@dataclass
class TestImage:
    """One test image under one trained model (what an explanation figure draws).

    Attributes:
        image: (S, S, 3) float image in [0, 1], resized as the backbone saw it (without normalisation).
        image_id: the dataset's image id.
        label: true class (0-based).
        prediction: predicted class.
        feature_maps: (K, h, w) the model's feature maps of this image (K: all features of a dense model, the
            selected ones of a sparse model).
        weights: (K,) the predicted class's row of ``head_weight``.
        feature_ids: positions (into K) of the predicted class's non-zero weights.
        selected: (K,) the dense feature index of each map of a sparse model; None for a dense model.
    """

    __test__ = False  # not a pytest class

    image: np.ndarray
    image_id: int
    label: int
    prediction: int
    feature_maps: np.ndarray
    weights: np.ndarray
    feature_ids: np.ndarray
    selected: np.ndarray | None


def test_image(run: Run, index: int) -> TestImage:
    """The ``index``-th test image (embedding-store order) under the run's model.

    Raises:
        ValueError: for an index outside the test split.
    """
    prof = run.profile
    test = split_tokens(prof, "test")
    if not 0 <= index < len(test):
        raise ValueError(f"index must lie in [0, {len(test)}) (test images), got {index}")
    model = run.model()
    with torch.no_grad():
        out = model(test.batch(np.array([index])))
    prediction = int(out.logits[0].argmax())
    weights = model.head_weight.detach().cpu().numpy()[prediction]  # (K,)
    image_id = int(test.image_ids[index])
    table = read_index(prepare(prof.data, verbose=False), prof.data.dataset)
    path = table.loc[table["image_id"] == image_id, "path"].iloc[0]
    selected = getattr(model, "selected", None)
    return TestImage(
        image=display_image(path, prof.data.image_size),
        image_id=image_id,
        label=int(test.labels[index]),
        prediction=prediction,
        feature_maps=out.feature_maps[0].numpy(),
        weights=weights,
        feature_ids=np.flatnonzero(weights),
        selected=None if selected is None else selected.numpy(),
    )


test_image.__test__ = False  # not a pytest test


def maps_for_rows(model: nn.Module, store: Any, rows: Any, *, device: str = "cpu") -> dict[int, np.ndarray]:
    """Eval-mode feature maps of a few rows of an embedding store, keyed by row (keeps big test sets out of memory).

    Args:
        model: a dense or fine-tuned :class:`qpmlib.model.DinoQPM`.
        store: an :class:`qpmlib.embeddings.EmbeddingStore` (or anything with ``patch_tokens`` (N, P, D), ``cls``
            (N, D) and ``labels`` (N,)).
        rows: row indices.
        device: "cpu", "cuda" or "auto".

    Returns:
        {row: (K, h, w) float32 maps}.
    """
    idx = np.unique(np.asarray(rows, dtype=int))
    if idx.size == 0:
        return {}
    sub = TokenData(np.asarray(store.patch_tokens[idx]), np.asarray(store.cls[idx]), np.asarray(store.labels)[idx])
    return dict(zip(idx.tolist(), evaluate(model, sub, device=device).feature_maps))
