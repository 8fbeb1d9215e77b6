"""What a frozen backbone's tokens show: k-NN and linear probes, PCA of patch tokens as RGB, token norms.

These are the stand-in chapter's measurements and the calibration probe of ``docs/standin_calibration.md``:

* :func:`linear_probe_accuracy`: a ridge classifier on standardised features (its penalty chosen by
  leave-one-out cross-validation on the training images), fitted on the training split.
* :func:`knn_accuracy`: DINO's weighted k-NN classifier on L2-normalised features (votes ``exp(cos / T)``).
* :func:`part_probe_recall`: a class-balanced logistic regression of each patch's true part (or background) from
  its token, scored on patches of held-out images: whether the tokens localise the parts.
* :func:`pca_rgb`: the first three principal components of the patch tokens of a few images, scaled to [0, 1] and
  shown as RGB, the picture of the DINOv2 paper (parts of the same kind get the same colour across images).
* :func:`token_norms`: the norms of the last block's output tokens before the final norm, patch and register
  tokens apart; artefact tokens ("Vision Transformers Need Registers", Darcet et al. 2024) are patch tokens whose
  norm is far above the others', :func:`high_norm_share` counts them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qpmlib.backbones import FrozenBackbone
from qpmlib.data import cub
from qpmlib.embeddings import extract

__all__ = [
    "probe_features",
    "linear_probe_accuracy",
    "knn_accuracy",
    "part_labels",
    "part_probe_recall",
    "split_features",
    "heldout_probe",
    "pca_rgb",
    "token_norms",
    "high_norm_share",
]


def probe_features(cls: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """The probe's input: the CLS token concatenated with the mean patch token, (N, D) + (N, P, D) -> (N, 2D)."""
    return np.concatenate([np.asarray(cls, np.float32), np.asarray(patches, np.float32).mean(1)], axis=1)


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Test accuracy of a ridge classifier on standardised features (penalty by leave-one-out on the train split).

    Args:
        train_x: (N, F) features; train_y: (N,) int labels; test_x: (M, F); test_y: (M,).

    Returns:
        Accuracy in [0, 1].
    """
    from sklearn.linear_model import RidgeClassifierCV

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    clf = RidgeClassifierCV(alphas=np.logspace(-2, 4, 13)).fit((train_x - mean) / std, train_y)
    return float((clf.predict((test_x - mean) / std) == test_y).mean())


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, k: int = 10,
                 temperature: float = 0.07) -> float:
    """Test accuracy of DINO's weighted k-NN: the k most cosine-similar training images vote ``exp(cos / T)``.

    Args:
        train_x: (N, F); train_y: (N,) int labels in [0, C); test_x: (M, F); test_y: (M,).
        k: neighbours (at most N).
        temperature: T.

    Returns:
        Accuracy in [0, 1].
    """
    a = train_x / (np.linalg.norm(train_x, axis=1, keepdims=True) + 1e-12)
    b = test_x / (np.linalg.norm(test_x, axis=1, keepdims=True) + 1e-12)
    sim = b @ a.T  # (M, N)
    k = min(k, len(a))
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (M, k)
    votes = np.zeros((len(b), int(train_y.max()) + 1))
    weights = np.exp(np.take_along_axis(sim, nearest, 1) / temperature)
    np.add.at(votes, (np.repeat(np.arange(len(b)), k), train_y[nearest].ravel()), weights.ravel())
    return float((votes.argmax(1) == test_y).mean())


def part_labels(part_maps: np.ndarray) -> np.ndarray:
    """Each patch's true region: the part covering most of it, or the background (label ``n_parts``).

    Args:
        part_maps: (N, n_parts, H, W) part coverage fractions (background = 1 - their sum).

    Returns:
        int64 (N, H * W) labels in [0, n_parts]; ties go to the lower label.
    """
    p = np.asarray(part_maps, np.float64)
    background = np.clip(1 - p.sum(axis=1, keepdims=True), 0, 1)
    return np.concatenate([p, background], axis=1).argmax(axis=1).reshape(len(p), -1)


def part_probe_recall(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                      n_classes: int, *, weight_decay: float = 1e-3, max_iter: int = 100) -> np.ndarray:
    """Per-class recall of a class-balanced logistic regression (L-BFGS, L2 penalty) on standardised features.

    Each class's loss weight is inversely proportional to its training count, so a rare part counts as much as the
    background that covers most patches; the mean of the returned recalls is the balanced accuracy.

    Args:
        train_x: (N, F) features (one row per patch); train_y: (N,) int labels in [0, n_classes).
        test_x: (M, F); test_y: (M,).
        n_classes: number of labels.
        weight_decay: L2 penalty on the weights.
        max_iter: L-BFGS iterations.

    Returns:
        float64 (n_classes,) recall of each class on the test rows; NaN for a class absent from them.
    """
    xtr, xte = torch.as_tensor(train_x, dtype=torch.float32), torch.as_tensor(test_x, dtype=torch.float32)
    ytr, yte = torch.as_tensor(train_y, dtype=torch.long), torch.as_tensor(test_y, dtype=torch.long)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    counts = torch.bincount(ytr, minlength=n_classes).float()
    weight = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp_min(1)), 0.0)
    linear = torch.nn.Linear(xtr.shape[1], n_classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

    def closure():
        opt.zero_grad()
        loss = loss_fn(linear(xtr), ytr) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = linear(xte).argmax(1)
    return np.array([float((pred[yte == k] == k).float().mean()) if bool((yte == k).any()) else np.nan
                     for k in range(n_classes)])


def split_features(backbone: FrozenBackbone, root: str | Path, split: str, *, out_dir: str | Path,
                   batch_size: int = 32, verbose: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CLS tokens, patch tokens and labels of one split of a CUB-format folder, through the embedding cache.

    Returns:
        ``(cls (N, D), patches (N, P, D), labels (N,))`` as float32/int64 arrays.
    """
    store = extract(cub.read_index(root), root, split, backbone, image_size=backbone.image_size,
                    dataset="synthbirds", out_dir=out_dir, batch_size=batch_size, device="cpu", verbose=verbose)
    return np.asarray(store.cls, np.float32), np.asarray(store.patch_tokens, np.float32), np.asarray(store.labels)


def heldout_probe(backbone: FrozenBackbone, root: str | Path, *, out_dir: str | Path, k: int = 10) -> dict[str, float]:
    """Linear-probe and k-NN accuracy of CLS + mean patch features on a held-out set (train split -> test split)."""
    tr_c, tr_p, tr_y = split_features(backbone, root, "train", out_dir=out_dir)
    te_c, te_p, te_y = split_features(backbone, root, "test", out_dir=out_dir)
    xtr, xte = probe_features(tr_c, tr_p), probe_features(te_c, te_p)
    return {"linear_probe": linear_probe_accuracy(xtr, tr_y, xte, te_y), "knn": knn_accuracy(xtr, tr_y, xte, te_y, k=k)}


def pca_rgb(patches: np.ndarray, *, foreground: np.ndarray | None = None) -> np.ndarray:
    """The first three principal components of patch tokens, as RGB in [0, 1].

    The components are fitted jointly on every patch of every image given (on the ``foreground`` patches only,
    when given, as the DINOv2 figure does after thresholding its first component); each is scaled by its 1st and
    99th percentiles. Background patches are black when ``foreground`` is given.

    Args:
        patches: (N, P, D) patch tokens, P = grid * grid.
        foreground: optional bool (N, P), the patches to fit and colour.

    Returns:
        float32 (N, grid, grid, 3).
    """
    n, p, d = patches.shape
    grid = int(round(p ** 0.5))
    if grid * grid != p:
        raise ValueError(f"{p} patches do not form a square grid")
    x = np.asarray(patches, np.float64).reshape(n * p, d)
    keep = np.ones(n * p, bool) if foreground is None else np.asarray(foreground, bool).reshape(-1)
    if keep.sum() < 3:
        raise ValueError("pca_rgb needs at least three foreground patches")
    mean = x[keep].mean(0)
    _, _, vt = np.linalg.svd(x[keep] - mean, full_matrices=False)
    comps = (x - mean) @ vt[:3].T  # (N P, 3)
    lo, hi = np.percentile(comps[keep], 1, axis=0), np.percentile(comps[keep], 99, axis=0)
    rgb = np.clip((comps - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    rgb[~keep] = 0.0
    return rgb.reshape(n, grid, grid, 3).astype(np.float32)


@torch.no_grad()
def token_norms(backbone: FrozenBackbone, images: torch.Tensor) -> dict[str, np.ndarray]:
    """L2 norms of the last block's output tokens, before the final norm (the residual stream).

    Args:
        backbone: a frozen backbone.
        images: (B, 3, S, S) preprocessed images.

    Returns:
        ``{"cls": (B,), "registers": (B, R), "patches": (B, P)}`` float32 arrays (R may be 0).
    """
    vit = backbone.model
    x = vit.patch_embed(images)
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
    x = vit.blocks(x)  # (B, 1 + R + P, D)
    norms = x.norm(dim=-1).float().numpy()
    r = vit.num_prefix_tokens
    return {"cls": norms[:, 0], "registers": norms[:, 1:r], "patches": norms[:, r:]}


def high_norm_share(patch_norms: np.ndarray, factor: float = 2.0) -> float:
    """Share of patch tokens whose norm exceeds ``factor`` times the median patch-token norm (artefact tokens)."""
    norms = np.asarray(patch_norms, np.float64).ravel()
    return float((norms > factor * np.median(norms)).mean())
