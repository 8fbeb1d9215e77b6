"""ProtoS-ViT (Turbé et al., arXiv 2406.10025) as a head on cached frozen patch tokens.

The facts come from the paper (``../shared/seeds/003_*.txt``) and the authors' public code (``hturbe/protosvit``,
read at commit 18e2172 of the ``pkwagner/protosvit`` copy: ``ClassificationModulePrune.py``,
``DinoFeaturizer.py``, ``utils/loss.py``, ``utils/modules.py``, ``custom_scheduler.py``, the CUB experiment
config and ``utils_experiments.compute_model_stats``). The head, for patch tokens x (B, P, D) on an H x W grid:

    code   = Conv1x1(D->E)(drop(x)) + [Conv1x1(D->D), ReLU, Conv1x1(D->E)](drop(x));  code = drop(code)
    z      = normalise(Linear(E->E)(ReLU(code)))                         per token, (B, P, E)
    S      = softmax_k(cos(z, p_k) / 0.1)                               over the K prototypes, (B, K, H, W)
    h      = ReLU(LayerNorm_k(DWConv3x3(S) + DWConv1x1(S)))             depthwise: one kernel per prototype
    s_k    = max_hw h_k                                                  prototype scores, (B, K)
    logits = s @ W.T,  W >= 0 (clamped to [0, 5])                        no bias

``drop`` is channel dropout (``Dropout2d``, p = 0.1), drawn independently at its three places as in the code;
the 1 x 1 convolutions are applied as the equivalent per-token linear layers (faster on a CPU).
The loss is ``CE + L_tanh + min(epoch / warmup, 1) * L_HS`` with the tanh-loss
``L_tanh = -mean_k log(tanh(sum_{b,h,w} S[b,k,h,w]) + 1e-20)`` and the Hoyer-Square loss on the importance
``I[b,k,c] = s[b,k] W[c,k]``: ``L_HS = mean_b (alpha ||I_b||_1^2 / sum(I_b^2 + 1e-20) / sqrt(K N_c)
+ gamma ||I_b||_2)`` with alpha = gamma = 0.01 (``WeightedHsLoss``, unstructured, on the importance).
AdamW (lr 0.01, torch's default weight decay 0.01), linear warm-up for 15 epochs then a half cosine towards
1e-4 whose horizon is 300 epochs, 80 epochs, batch 256. At evaluation, importance entries below 0.1 are set to 0
and the logits are the sums of what is left; the global size is the number of prototypes with surviving
importance for some test image's true class, the local size their mean number per image.

Deviations from the paper and the code (each an option where it matters):

* Tokens are cached: no image augmentation (the CUB config turns photometric augmentation off, but the data
  module still applies its geometric augmentation to the images the frozen backbone sees).
* The backbone is whatever produced the cached tokens (the paper uses DINOv2 ViT-B/L/14 with registers; the
  demo uses the book's backbone).
* Fisher pruning of prototypes is not implemented: the reference config starts it at epoch 80 of 80, so it
  never runs (``pruning_start: 80``, ``max_epochs: 80``).
* The classifier weights are clamped to [0, 5] after every optimiser step instead of in place at the start of
  every forward pass; the weights each forward pass uses are the same.
* The paper text says "80 epochs with cosine decay"; the code's cosine horizon is 300 epochs
  (``cosine_epochs=300``, the default). The demo and smoke profiles shorten the schedule for a 2-core CPU and
  set the horizon to its own length.
* Prototype bank size, projection widths (the hidden width is D in the code), epochs and batch size come from
  the profile's ``heads`` section (:func:`qpmlib.runs.peer_heads.head_config`), scaled down on the demo and
  smoke profiles; :class:`ProtoSViTConfig`'s defaults are the reference's CUB values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qpmlib.heads.base import (
    PrototypeOutput,
    TokenBatches,
    TrainedHead,
    check_prototype_budget,
    seeded_init,
    train_head,
)
from qpmlib.train import TokenData, resolve_device

__all__ = [
    "ProtoSViTConfig",
    "ProtoSViT",
    "check_protosvit_config",
    "hoyer_square_loss",
    "tanh_loss",
    "train_protosvit",
]


@dataclass(frozen=True)
class ProtoSViTConfig:
    """ProtoS-ViT hyperparameters; the defaults are the reference's CUB run (``classification_prototype.yaml``).

    Attributes:
        n_prototypes: K, prototypes in the bank.
        prototype_dim: E, width of the projection and of the prototypes.
        hidden_dim: width of the projection's hidden layer (None: the token width D, as the reference).
        temperature: softmax temperature of the prototype similarities.
        dropout: channel dropout of the projection (``DinoFeaturizer(dropout=0.1)``).
        epochs: training epochs.
        batch_size: images per step.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (torch's default; the reference passes none).
        warmup_epochs: linear warm-up epochs (also the ramp of the sparsity loss).
        cosine_epochs: horizon of the half cosine (the reference's 300); None: ``epochs``.
        min_lr: floor of the cosine.
        hs_alpha: alpha of the Hoyer-Square loss.
        hs_gamma: gamma (the L2 term) of the Hoyer-Square loss.
        tanh_weight: weight of the tanh-loss (1 in the reference).
        max_weight: the classifier weights are clamped to [0, max_weight].
        importance_threshold: importance below this is pruned at evaluation (0.1 in ``compute_model_stats``).
        device: "auto", "cpu" or "cuda".
    """

    n_prototypes: int = 300
    prototype_dim: int = 512
    hidden_dim: int | None = None
    temperature: float = 0.1
    dropout: float = 0.1
    epochs: int = 80
    batch_size: int = 256
    lr: float = 0.01
    weight_decay: float = 0.01
    warmup_epochs: int = 15
    cosine_epochs: int | None = 300
    min_lr: float = 1e-4
    hs_alpha: float = 0.01
    hs_gamma: float = 0.01
    tanh_weight: float = 1.0
    max_weight: float = 5.0
    importance_threshold: float = 0.1
    device: str = "auto"


def check_protosvit_config(cfg: ProtoSViTConfig, *, n_patches: int, n_train: int) -> None:
    """Check a configuration against the data before training.

    Raises:
        ValueError: naming the first bad field, or a prototype bank the tokens cannot support
            (:func:`qpmlib.heads.base.check_prototype_budget`).
    """
    if cfg.hidden_dim is not None and cfg.hidden_dim < 1:
        raise ValueError(f"protosvit.hidden_dim must be None or >= 1, got {cfg.hidden_dim}")
    for name in ("prototype_dim", "epochs", "batch_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < (0 if name == "epochs" else 1):
            raise ValueError(f"protosvit.{name} must be a positive integer, got {value!r}")
    for name in ("temperature", "lr", "max_weight"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"protosvit.{name} must be > 0, got {getattr(cfg, name)!r}")
    for name in ("weight_decay", "min_lr", "hs_alpha", "hs_gamma", "tanh_weight", "importance_threshold"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"protosvit.{name} must be >= 0, got {getattr(cfg, name)!r}")
    if not 0 <= cfg.dropout < 1:
        raise ValueError(f"protosvit.dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.warmup_epochs < 0 or (cfg.cosine_epochs is not None and cfg.cosine_epochs <= cfg.warmup_epochs):
        raise ValueError(f"protosvit needs 0 <= warmup_epochs < cosine_epochs, got {cfg.warmup_epochs} and "
                         f"{cfg.cosine_epochs}")
    check_prototype_budget(cfg.n_prototypes, n_patches=n_patches, batch_size=cfg.batch_size, n_train=n_train,
                           head="protosvit")


class ProtoSViT(nn.Module):
    """The ProtoS-ViT head on patch tokens (see the module docstring for the equations).

    Args:
        in_dim: D, the token width.
        n_classes: N_c.
        n_prototypes: K.
        prototype_dim: E.
        hidden_dim: hidden width of the projection (None: D).
        temperature: softmax temperature over prototypes.
        dropout: channel dropout p.
        max_weight: upper clamp of the classifier weights.
    """

    def __init__(self, in_dim: int, n_classes: int, *, n_prototypes: int = 300, prototype_dim: int = 512,
                 hidden_dim: int | None = None, temperature: float = 0.1, dropout: float = 0.1,
                 max_weight: float = 5.0) -> None:
        super().__init__()
        k, hidden = n_prototypes, hidden_dim or in_dim
        self.temperature = temperature
        self.max_weight = max_weight
        self.dropout = dropout
        self.linear_proj = nn.Linear(in_dim, prototype_dim)
        self.mlp_proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, prototype_dim))
        self.project = nn.Linear(prototype_dim, prototype_dim)
        self.prototypes = nn.Parameter(torch.empty(k, prototype_dim))
        nn.init.orthogonal_(self.prototypes)
        self.conv3 = nn.Conv2d(k, k, 3, padding=1, groups=k)
        self.conv1 = nn.Conv2d(k, k, 1, groups=k)
        self.norm = nn.LayerNorm(k, eps=1e-6)
        weight = torch.empty(n_classes, k)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.classifier = nn.Parameter(weight.abs())

    @classmethod
    def from_config(cls, cfg: "ProtoSViTConfig", in_dim: int, n_classes: int) -> "ProtoSViT":
        """The head a configuration describes (to rebuild a saved state dict)."""
        return cls(in_dim, n_classes, n_prototypes=cfg.n_prototypes, prototype_dim=cfg.prototype_dim,
                   hidden_dim=cfg.hidden_dim, temperature=cfg.temperature, dropout=cfg.dropout,
                   max_weight=cfg.max_weight)

    @property
    def class_weight(self) -> torch.Tensor:
        """(N_c, K) the non-negative classifier weights."""
        return self.classifier

    def _channel_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """``Dropout2d`` on tokens (B, P, C): one mask per sample and channel, shared by all positions."""
        if not self.training or self.dropout == 0:
            return x
        keep = torch.empty(x.shape[0], 1, x.shape[2], device=x.device).bernoulli_(1 - self.dropout)
        return x * keep / (1 - self.dropout)

    def clamp_weights(self) -> None:
        """Project the classifier weights onto [0, max_weight] (after every optimiser step)."""
        with torch.no_grad():
            self.classifier.clamp_(0.0, self.max_weight)

    def forward(self, patches: torch.Tensor) -> PrototypeOutput:
        """Scores, maps and logits of a batch.

        Args:
            patches: (B, P, D) patch tokens, P a square number.

        Returns:
            :class:`~qpmlib.heads.base.PrototypeOutput`: logits (B, N_c), scores (B, K), maps (B, K, H, W)
            (the softmax-normalised similarities).
        """
        b, p, _ = patches.shape
        g = math.isqrt(p)
        drop = self._channel_dropout
        code = drop(self.linear_proj(drop(patches)) + self.mlp_proj(drop(patches)))  # (B, P, E)
        z = F.normalize(self.project(F.relu(code)), dim=-1)  # (B, P, E)
        sim = torch.einsum("bpe,ke->bkp", z, F.normalize(self.prototypes, dim=-1))  # (B, K, P)
        maps = torch.softmax(sim / self.temperature, dim=1).reshape(b, -1, g, g)  # (B, K, H, W)
        h = self.conv3(maps) + self.conv1(maps)
        h = F.relu(self.norm(h.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)  # (B, K, H, W)
        scores = h.amax(dim=(2, 3))  # (B, K)
        return PrototypeOutput(scores @ self.classifier.T, scores, maps)


def tanh_loss(maps: torch.Tensor) -> torch.Tensor:
    """The tanh-loss: ``-mean_k log(tanh(sum_{b,h,w} maps[b, k]) + 1e-20)`` (every prototype used in the batch).

    Args:
        maps: (B, K, H, W) similarity maps (softmax over K).

    Returns:
        Scalar tensor; ``-log tanh(m)`` when every prototype holds mass m in the batch.
    """
    mass = maps.sum(dim=(0, 2, 3))  # (K,)
    return -torch.log(torch.tanh(mass) + 1e-20).mean()


def hoyer_square_loss(scores: torch.Tensor, weight: torch.Tensor, *, alpha: float, gamma: float) -> torch.Tensor:
    """Hoyer-Square sparsity of the importance ``I[b,k,c] = scores[b,k] weight[c,k]`` (``WeightedHsLoss``).

    ``mean_b (alpha * ||I_b||_1^2 / sum(I_b^2 + 1e-20) / sqrt(K N_c) + gamma * ||I_b||_2)``; for a sample with
    m equal non-zero entries a the first term is ``alpha * m / sqrt(K N_c)``.

    Args:
        scores: (B, K) prototype scores.
        weight: (N_c, K) class weights.
        alpha: weight of the Hoyer-Square ratio.
        gamma: weight of the L2 norm.

    Returns:
        Scalar tensor.
    """
    imp = (scores[:, :, None] * weight.T[None]).flatten(1)  # (B, K * N_c)
    ratio = imp.abs().sum(dim=1) ** 2 / (imp**2 + 1e-20).sum(dim=1) / math.sqrt(imp.shape[1])
    return (alpha * ratio + gamma * imp.norm(dim=1)).mean()


def train_protosvit(
    train: TokenData,
    cfg: ProtoSViTConfig = ProtoSViTConfig(),
    *,
    seed: int,
    eval_data: TokenData | None = None,
    verbose: bool = True,
) -> TrainedHead:
    """Train a ProtoS-ViT head on cached tokens.

    Args:
        train: training tokens (patch tokens (N, P, D), CLS, labels).
        cfg: hyperparameters (a profile's: :func:`qpmlib.runs.peer_heads.head_config`).
        seed: initialisation, shuffling and dropout seed.
        eval_data: test tokens; the history then records ``test_accuracy`` every 5 epochs and at the end.
        verbose: progress bar.

    Returns:
        :class:`~qpmlib.heads.base.TrainedHead` (history records ``ce``, ``tanh``, ``sparsity``).

    Raises:
        ValueError: for a bad configuration or a prototype bank the tokens cannot support (before training).
    """
    check_protosvit_config(cfg, n_patches=train.n_patches, n_train=len(train))
    dev = resolve_device(cfg.device)
    model = seeded_init(lambda: ProtoSViT.from_config(cfg, train.dim, train.n_classes), seed).to(dev)
    feed = TokenBatches(train, dev)

    def step(idx: np.ndarray, epoch: int):
        patches, _, y = feed(idx)
        out = model(patches)
        ce = F.cross_entropy(out.logits, y)
        tanh = cfg.tanh_weight * tanh_loss(out.maps)
        ramp = min(epoch / cfg.warmup_epochs, 1.0) if cfg.warmup_epochs else 1.0
        sparsity = ramp * hoyer_square_loss(out.scores, model.classifier, alpha=cfg.hs_alpha, gamma=cfg.hs_gamma)
        parts = {"ce": ce.detach(), "tanh": tanh.detach(), "sparsity": sparsity.detach()}
        return ce + tanh + sparsity, parts, int((out.logits.argmax(1) == y).sum())

    return train_head(model, step, train, cfg, stage="protosvit", seed=seed, after_step=model.clamp_weights,
                      eval_data=eval_data, verbose=verbose)
