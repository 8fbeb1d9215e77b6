"""What every interpretable head on cached tokens shares: its evaluation, compactness, budget checks and training loop.

A head (:mod:`qpmlib.heads.protosvit`, :mod:`qpmlib.heads.protofm`, :mod:`qpmlib.heads.klc`) is evaluated into a
:class:`HeadEvaluation`, whose arrays have exactly the shapes :mod:`qpmlib.metrics` takes:

* ``feature_maps`` (N, K, H, W): one map per prototype (or part) on the patch grid;
* ``weights`` (N, K): each sample's weights of its *predicted* class, after the head's own pruning of
  unimportant prototypes (so a zero weight means "not part of this explanation");
* ``features`` (N, K): one score per prototype, the vector Class-Independence and Contrastiveness read.

:func:`head_metrics` computes the Table 1 metrics from two evaluations (test, train) in the same way
:func:`qpmlib.runs.evaluate.model_metrics` does for DINO-QPM: only the prototypes that carry weight for some test sample
enter the metrics. :func:`head_compactness` gives each head's own compactness measure: prototypes in all, per class
and per image.

:func:`fit` is the training loop the trainable heads share: AdamW, a linear warm-up then a half-cosine learning
rate per epoch (ProtoS-ViT's ``CustomLRScheduler``), seeded shuffling, a :class:`qpmlib.train.History` with one record
per epoch, a stop on a non-finite loss and a progress bar. The whole loop runs inside a forked torch RNG seeded
with ``seed``, so dropout masks are reproducible and the caller's random state is left untouched.
:func:`train_head` runs it with a head configuration's fields; :func:`evaluate_head` evaluates ProtoS-ViT and
ProtoFM with the reference's importance pruning (:func:`pruned_importance`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from qpmlib import metrics as qmetrics
from qpmlib.train import TEST_EVERY, History, TokenData, resolve_device

__all__ = [
    "HeadEvaluation",
    "PrototypeOutput",
    "TokenBatches",
    "TrainedHead",
    "check_prototype_budget",
    "count_parameters",
    "evaluate_head",
    "fit",
    "head_compactness",
    "head_metrics",
    "learning_rate",
    "pruned_importance",
    "seeded_init",
    "train_head",
]

#: A batch step: ``step(idx, epoch) -> (loss, {name: detached weighted term}, number of correct predictions)``.
Step = Callable[[np.ndarray, int], tuple[torch.Tensor, dict[str, torch.Tensor], int]]


@dataclass
class HeadEvaluation:
    """A head's eval-mode outputs over one split (numpy, CPU).

    Attributes:
        logits: (N, N_c) class scores (after the head's own pruning, when it has one).
        features: (N, K) one score per prototype (or part).
        feature_maps: (N, K, H, W) the maps behind those scores, or None when not collected.
        weights: (N, K) each sample's weights of its predicted class; zero for a prototype that is not part
            of the sample's explanation.
        labels: (N,) int64 true labels.
        label_weights: (N, K) the same for each sample's true class (ProtoS-ViT's global and local sizes are
            counted on these), or None.
    """

    logits: np.ndarray
    features: np.ndarray
    feature_maps: np.ndarray | None
    weights: np.ndarray
    labels: np.ndarray
    label_weights: np.ndarray | None = None

    @property
    def predictions(self) -> np.ndarray:
        """(N,) argmax of the logits."""
        return self.logits.argmax(axis=1)


class PrototypeOutput(NamedTuple):
    """What a prototype head's forward pass returns.

    Attributes:
        logits: (B, N_c) class scores, ``scores @ class_weight.T``.
        scores: (B, K) one presence score per prototype.
        maps: (B, K, H, W) each prototype's similarity map on the patch grid.
    """

    logits: torch.Tensor
    scores: torch.Tensor
    maps: torch.Tensor


@dataclass
class TrainedHead:
    """A trained head and its record.

    Attributes:
        model: the trained module (eval mode, on the training device).
        history: one record per epoch (:class:`qpmlib.train.History`).
        config: the head's configuration dataclass.
        seed: initialisation, shuffling and dropout seed.
        n_parameters: trainable parameters of the head.
    """

    model: nn.Module
    history: History
    config: Any
    seed: int
    n_parameters: int


def count_parameters(module: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a module; an EMA teacher's frozen copy does not count."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


def seeded_init(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with ``torch.manual_seed(seed)`` inside a forked RNG (the caller's RNG is left unchanged)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def check_prototype_budget(
    n_prototypes: int, *, n_patches: int, batch_size: int, n_train: int, head: str
) -> None:
    """Refuse a prototype bank larger than the tokens can support, before any training.

    Each token spreads one unit of assignment mass over the prototypes (a softmax over prototypes), and the
    heads' coverage terms (ProtoS-ViT's tanh-loss, ProtoFM's assignment) ask every prototype for mass in every
    batch. A batch holds at most ``min(batch_size, n_train) * n_patches`` tokens; with more prototypes than that,
    some prototypes can never be used.

    Raises:
        ValueError: naming the head, the numbers and what to change.
    """
    if n_prototypes < 1:
        raise ValueError(f"{head}: n_prototypes must be >= 1, got {n_prototypes}")
    per_batch = min(batch_size, n_train) * n_patches
    if n_prototypes > per_batch:
        raise ValueError(
            f"{head}: {n_prototypes} prototypes but a batch holds only {min(batch_size, n_train)} images x "
            f"{n_patches} patch tokens = {per_batch} tokens; every prototype needs token mass in every batch. "
            f"Use at most {per_batch} prototypes or a larger batch_size."
        )


def learning_rate(epoch: int, *, lr: float, warmup_epochs: int, cosine_epochs: int, min_lr: float) -> float:
    """ProtoS-ViT's per-epoch schedule: linear warm-up to ``lr``, then a half cosine from ``lr`` to ``min_lr``.

    ``lr * (epoch + 1) / warmup_epochs`` for ``epoch < warmup_epochs``; afterwards
    ``min_lr + (lr - min_lr) * (1 + cos(pi * (epoch - warmup_epochs) / (cosine_epochs - warmup_epochs))) / 2``.
    The reference code sets ``cosine_epochs = 300`` while training 80 epochs, so its rate never gets near
    ``min_lr``.

    Args:
        epoch: 0-based epoch.
        lr: peak learning rate.
        warmup_epochs: epochs of linear warm-up (0: none).
        cosine_epochs: the epoch at which the cosine reaches ``min_lr`` (> ``warmup_epochs``).
        min_lr: the floor of the cosine.

    Returns:
        The learning rate of that epoch.
    """
    if epoch < warmup_epochs:
        return lr * (epoch + 1) / warmup_epochs
    span = max(cosine_epochs - warmup_epochs, 1)
    t = min((epoch - warmup_epochs) / span, 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class TokenBatches:
    """Patch tokens, CLS tokens and labels of one split, served as float32 batches on a device.

    The split is read once (through :meth:`qpmlib.train.TokenData.batch`, so fp16 memmaps are fine) and kept on
    the device when it fits: as float32 on the CPU up to ``max_bytes``, as float16 on a GPU up to half of its free
    memory. Otherwise every batch is read from the source.

    Args:
        data: the tokens of one split.
        device: where batches are served.
        max_bytes: largest float32 size held in CPU memory at once (0: never preload).
    """

    def __init__(self, data: TokenData, device: torch.device, max_bytes: int = 2**31) -> None:
        self.data = data
        self.device = device
        self.grid = _grid(data.n_patches)
        self.labels = torch.as_tensor(data.labels, device=device)
        self._all = None
        n_values = len(data) * (data.n_patches + 1) * data.dim
        if device.type == "cuda" and max_bytes and n_values * 2 < 0.5 * torch.cuda.mem_get_info(device)[0]:
            self._all = torch.cat([self._read(np.arange(s, min(s + 512, len(data)))).half()
                                   for s in range(0, len(data), 512)])
        elif device.type != "cuda" and 0 < n_values * 4 <= max_bytes:
            self._all = self._read(np.arange(len(data)))

    def _read(self, idx: np.ndarray) -> torch.Tensor:
        parts = [self.data.batch(idx[s:s + 512]) for s in range(0, len(idx), 512)]
        if not parts:
            return torch.empty(0, self.data.n_patches + 1, self.data.dim, device=self.device)
        return torch.cat(parts).to(self.device)

    def __len__(self) -> int:
        return len(self.data)

    def __call__(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patch tokens (B, P, D), CLS tokens (B, D) and labels (B,) of the rows ``idx`` (in that order), float32."""
        idx = np.asarray(idx, dtype=np.int64)
        rows = torch.as_tensor(idx, device=self.device)
        x = self._all[rows].float() if self._all is not None else self._read(idx)
        return x[:, :-1], x[:, -1], self.labels[rows]


def _grid(n_patches: int) -> int:
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"the number of patch tokens must be a square (the patch grid), got P={n_patches}")
    return side


def fit(
    model: nn.Module,
    step: Step,
    n_train: int,
    *,
    stage: str,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_epochs: int,
    cosine_epochs: int,
    min_lr: float,
    seed: int,
    device: torch.device,
    after_step: Callable[[], None] | None = None,
    test_accuracy: Callable[[], float] | None = None,
    verbose: bool = True,
) -> History:
    """Train ``model`` with AdamW and the warm-up + cosine schedule; one :class:`~qpmlib.train.History` record per epoch.

    Args:
        model: the head (its trainable parameters are optimised; ``model.train()`` is set each epoch).
        step: computes one batch's loss (see :data:`Step`).
        n_train: number of training samples.
        stage: the history's stage name (the head's name).
        epochs, batch_size, lr, weight_decay, warmup_epochs, cosine_epochs, min_lr: see :func:`learning_rate`.
        seed: shuffling and dropout seed (a forked RNG; the caller's is unchanged).
        device: where the model runs.
        after_step: called after every optimiser step (weight clamps, EMA updates).
        test_accuracy: returns the test accuracy; called at epochs 0, 5, 10, ... and the last.
        verbose: progress bar.

    Returns:
        The history; records hold ``epoch``, ``loss``, each loss term, ``accuracy`` (train), ``lr``, ``seconds``
        and, at test epochs, ``test_accuracy``.

    Raises:
        FloatingPointError: when a batch loss is not finite (the message names the epoch and batch).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history = History(stage, str(device))
    n_batches = max((n_train + batch_size - 1) // batch_size, 1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        shuffler = torch.Generator().manual_seed(seed)
        bar = tqdm(range(epochs), desc=stage, disable=not verbose)
        for epoch in bar:
            t0 = time.perf_counter()
            rate = learning_rate(epoch, lr=lr, warmup_epochs=warmup_epochs, cosine_epochs=cosine_epochs,
                                 min_lr=min_lr)
            for group in opt.param_groups:
                group["lr"] = rate
            model.train()
            perm = torch.randperm(n_train, generator=shuffler).numpy()
            losses, sums, correct = [], {}, 0
            for b in range(n_batches):
                loss, parts, hits = step(perm[b * batch_size:(b + 1) * batch_size], epoch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{stage} loss became {loss.item()} at epoch {epoch}, batch {b}; lower the learning rate "
                        f"(lr={lr}) or check the tokens for NaN/inf"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step()
                losses.append(loss.detach())
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                correct += int(hits)
            model.eval()
            record = {"epoch": epoch, "loss": torch.stack(losses).mean().item(),
                      **{k: float(v) / n_batches for k, v in sums.items()},
                      "accuracy": correct / n_train, "lr": rate, "seconds": time.perf_counter() - t0}
            if test_accuracy is not None and (epoch % TEST_EVERY == 0 or epoch == epochs - 1):
                record["test_accuracy"] = float(test_accuracy())
            history.epochs.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
    model.eval()
    return history


def head_compactness(weights: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """A head's compactness from its per-sample explanation weights.

    ``n_prototypes``: prototypes that appear in some sample's explanation; ``n_per_class``: for each class, the
    prototypes that appear in the explanation of some sample of that class, averaged over classes;
    ``n_per_image``: prototypes per explanation, averaged over samples. ProtoS-ViT's "global size" and
    "local size" are ``n_prototypes`` and ``n_per_image`` with the weights of each sample's true class
    (its ``compute_model_stats``); for DINO-QPM's binary assignment ``n_per_class == n_per_image == N^c_f``.

    Args:
        weights: (N, K) per-sample weights (non-zero = in the explanation).
        classes: (N,) the class each row belongs to (true labels for ProtoS-ViT's sizes).

    Returns:
        ``{"n_prototypes": int, "n_per_class": float, "n_per_image": float}``.

    Raises:
        ValueError: for mismatched or empty inputs.
    """
    w = np.asarray(weights) != 0
    c = np.asarray(classes)
    if w.ndim != 2 or c.shape != (w.shape[0],) or w.shape[0] == 0:
        raise ValueError(f"expected weights (N, K) and classes (N,) with N > 0, got {w.shape} and {c.shape}")
    per_class = [int(w[c == k].any(axis=0).sum()) for k in np.unique(c)]
    return {"n_prototypes": int(w.any(axis=0).sum()), "n_per_class": float(np.mean(per_class)),
            "n_per_image": float(w.sum(axis=1).mean())}


def head_metrics(
    test: HeadEvaluation,
    train: HeadEvaluation,
    *,
    k: int = 5,
    masks: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The Table 1 metrics of a head, as :func:`qpmlib.runs.evaluate.model_metrics` computes them for DINO-QPM.

    Only the prototypes that carry weight for some test sample (the "used" ones) enter the metrics.

    Args:
        test: evaluation of the test split (with feature maps).
        train: evaluation of the training split (its ``features`` feed Class-Independence and Contrastiveness).
        k: the k of SID@k (None in the result when no sample has k non-zero weights).
        masks: (N_test, H, W) bool object masks on the patch grid, or None (Plausibility is then None).
        seed: Contrastiveness's mixture seed.

    Returns:
        ``accuracy``, ``plausibility``, ``sid_at_5``, ``class_independence``, ``contrastiveness`` and the
        :func:`head_compactness` keys, counted on the true-class weights when the evaluation has them
        (ProtoS-ViT's definition) and on the predicted-class weights otherwise.

    Raises:
        ValueError: when the test evaluation has no feature maps, or no prototype is used.
    """
    if test.feature_maps is None:
        raise ValueError("head_metrics needs the test evaluation's feature maps (evaluate with with_maps=True)")
    used = np.flatnonzero((test.weights != 0).any(axis=0))
    if used.size == 0:
        raise ValueError("no prototype carries weight for any test sample; the head explains nothing")
    rows, maps = test.weights[:, used], test.feature_maps[:, used]
    return {
        "accuracy": qmetrics.accuracy(test.logits, test.labels),
        "plausibility": None if masks is None else qmetrics.plausibility(maps, rows, masks),
        "sid_at_5": qmetrics.sid_at_k(maps, rows, k=k) if (rows != 0).sum(axis=1).max() >= k else None,
        "class_independence": qmetrics.class_independence(train.features[:, used], train.labels),
        "contrastiveness": qmetrics.contrastiveness(train.features[:, used], seed=seed),
        **(head_compactness(test.label_weights, test.labels) if test.label_weights is not None
           else head_compactness(test.weights, test.predictions)),
    }


def pruned_importance(scores: torch.Tensor, weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """ProtoS-ViT's importance ``I[b, k, c] = scores[b, k] * weight[c, k]`` with entries below ``threshold`` set to 0.

    The reference evaluates with ``threshold = 0.1`` (``compute_model_stats``): the logits are ``I.sum(k)`` of the
    pruned importance, and a prototype is in a sample's explanation for class c when ``I[b, k, c] > 0``.

    Args:
        scores: (B, K) prototype scores.
        weight: (N_c, K) non-negative class weights.
        threshold: pruning threshold (0 keeps every positive entry).

    Returns:
        (B, K, N_c) pruned importance.
    """
    imp = scores[:, :, None] * weight.T[None]  # (B, K, N_c)
    return torch.where(imp < threshold, torch.zeros_like(imp), imp)


@torch.no_grad()
def evaluate_head(
    model: nn.Module,
    data: TokenData,
    cfg: Any,
    *,
    batch_size: int = 128,
    with_maps: bool = True,
) -> HeadEvaluation:
    """Evaluate a prototype head (ProtoS-ViT, ProtoFM) with its configuration's importance pruning.

    The head's forward pass returns a :class:`PrototypeOutput` and it has a ``class_weight`` (N_c, K). The logits
    are the sums of the pruned importance (:func:`pruned_importance` with ``cfg.importance_threshold``); a
    sample's weights are its predicted (and true) class's weights where that class's importance survives the
    pruning, 0 elsewhere.

    Args:
        model: the trained head.
        data: tokens of one split.
        cfg: the head's configuration (``importance_threshold``, ``device``).
        batch_size: samples per forward pass.
        with_maps: also collect the (N, K, H, W) maps.

    Returns:
        :class:`HeadEvaluation` with ``label_weights``; ``features`` are the prototype scores.
    """
    dev = resolve_device(cfg.device)
    model.to(dev).eval()
    feed = TokenBatches(data, dev, max_bytes=0)
    weight = model.class_weight.detach()
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("logits", "scores", "maps", "pred_w", "true_w")}
    for s in range(0, len(data), batch_size):
        patches, _, labels = feed(np.arange(s, min(s + batch_size, len(data))))
        o = model(patches)
        imp = pruned_importance(o.scores, weight, cfg.importance_threshold)  # (B, K, N_c)
        logits = imp.sum(dim=1)
        pred = logits.argmax(dim=1)
        rows = torch.arange(len(pred), device=dev)
        out["logits"].append(logits.cpu().numpy())
        out["scores"].append(o.scores.cpu().numpy())
        out["pred_w"].append(torch.where(imp[rows, :, pred] > 0, weight[pred], 0.0).cpu().numpy())
        out["true_w"].append(torch.where(imp[rows, :, labels] > 0, weight[labels], 0.0).cpu().numpy())
        if with_maps:
            out["maps"].append(o.maps.float().cpu().numpy())
    cat = lambda k: np.concatenate(out[k]).astype(np.float32)  # noqa: E731
    return HeadEvaluation(cat("logits"), cat("scores"), cat("maps") if with_maps else None, cat("pred_w"),
                          data.labels.copy(), label_weights=cat("true_w"))


def train_head(
    model: nn.Module,
    step: Step,
    train: TokenData,
    cfg: Any,
    *,
    stage: str,
    seed: int,
    after_step: Callable[[], None],
    eval_data: TokenData | None,
    verbose: bool,
) -> TrainedHead:
    """Run :func:`fit` with a head configuration's optimisation fields and wrap the result.

    Args:
        model: the head, already on ``cfg.device``.
        step: its batch step.
        train: the training tokens.
        cfg: the head's configuration (``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``warmup_epochs``,
            ``cosine_epochs`` (None: ``epochs``), ``min_lr``, ``device``, ``importance_threshold``).
        stage: the head's name.
        seed: shuffling and dropout seed.
        after_step: called after every optimiser step.
        eval_data: test tokens for the history's ``test_accuracy`` (:func:`evaluate_head`), or None.
        verbose: progress bar.

    Returns:
        :class:`TrainedHead`.
    """
    test_acc = None
    if eval_data is not None:
        test_acc = lambda: float(np.mean(  # noqa: E731
            evaluate_head(model, eval_data, cfg, with_maps=False).predictions == eval_data.labels))
    history = fit(model, step, len(train), stage=stage, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                  weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs,
                  cosine_epochs=cfg.cosine_epochs or cfg.epochs, min_lr=cfg.min_lr, seed=seed,
                  device=resolve_device(cfg.device), after_step=after_step, test_accuracy=test_acc,
                  verbose=verbose)
    return TrainedHead(model, history, cfg, seed, count_parameters(model))
