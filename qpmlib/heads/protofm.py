"""ProtoFM (Turbé et al., arXiv 2502.19577, "Tell me why") as a head on cached frozen patch tokens.

What the paper states (``../shared/seeds/002_*.txt`` and the issue): a head of about 1M parameters on a frozen
visual foundation model; a projector and a bank of 300 prototypes; a positive-weight linear classifier; an EMA
student-teacher trained across augmented views with RoIAlign between the views (the teacher sees an augmented
view, the student the original image); and four losses besides cross-entropy: an assignment loss (the same
patch goes to the same prototype in both views), an alignment loss (the prototype assignments' correlation
follows the backbone features' correlation, a correspondence distillation with shift parameters, named
``k_shift = 0.1`` and ``v_shift = 3``), a contrastive loss, and a sparsity loss. The authors' code
(``github.com/hturbe/proto-fm``) is not available here, so the equations below are our reading; the same authors'
ProtoS-ViT code supplies the classifier, the sparsity term and the evaluation. For tokens x (B, P, D):

    z      = normalise(Linear(H->E)(GELU(Linear(D->H)(x))))             projector, per token, (B, P, E)
    A      = softmax_k(cos(z, p_k) / tau_s)                             assignment maps, (B, K, H, W)
    s_k    = max_hw A_k;  logits = s @ W.T,  W >= 0                     positive-weight classifier

    teacher: the same projector and prototypes, an EMA (momentum m) of the student's, on the view's tokens,
             A_t = softmax_k(cos(z_t, p_t,k) / tau_t), no gradient
    RoIAlign: A_s' = RoIAlign(A, box) (flipped like the view) and z' likewise: the student's maps on the
             view's region, on the view's grid

    L_assign   = -mean_loc sum_k A_t log A_s'                           cross-entropy, teacher -> student
    L_contrast = InfoNCE(z'_loc, z_t,loc) over up to ``contrast_samples`` aligned locations of the batch
                 (temperature ``contrast_temperature``): the same location in the two views is the positive
    L_align    = -mean_ij (F_ij - mean_j F_ij - shift) * max(C_ij, 0)   on ``align_tokens`` sampled tokens per
                 image; F = cos of the backbone tokens, C = cos of the student's assignment vectors
                 (STEGO-style correspondence distillation with a spatially centred F)
    L_sparsity = ProtoS-ViT's Hoyer-Square loss on the importance s_k W_ck (ramped in over the warm-up)
    loss       = CE + w_assign L_assign + w_contrast L_contrast + w_align L_align + w_sparsity L_sparsity

Evaluation, compactness and the explanation weights follow ProtoS-ViT (importance below 0.1 pruned).

Deviations (beyond not having the authors' code):

* Views: with :class:`~qpmlib.heads.views.ViewTokens` (V cached backbone views per training image) each step
  draws one view per image; without them the view tokens are the cached token grid cropped and resized by
  RoIAlign (:func:`~qpmlib.heads.views.token_views`), which is not what the backbone would see on a cropped
  image (no re-contextualisation, no photometric change). Only geometric augmentation (crop, flip) is used.
* The alignment loss's shift is one constant (``align_shift``, default 0) after centring each row of F; the
  paper's adaptive shift (``k_shift``, ``v_shift``) is not reproduced, its formula is not available to us.
* The teacher's momentum is constant (``ema``), with no schedule; the teacher sharpens with a lower
  temperature and has no centring.
* Projector width, prototype width, loss weights and temperatures are our choices; the optimiser, learning
  rate, schedule, epochs and batch size are ProtoS-ViT's (AdamW 0.01, 15 warm-up epochs, the 300-epoch cosine
  horizon, 80 epochs, batch 256). The profile's ``heads`` section scales them
  (:func:`qpmlib.runs.peer_heads.head_config`); the contrastive and alignment samples keep their defaults.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

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
from qpmlib.heads.protosvit import hoyer_square_loss
from qpmlib.heads.views import ViewConfig, ViewTokens, crop_and_resize, sample_views, token_views
from qpmlib.train import TokenData, resolve_device

__all__ = [
    "ProtoFMConfig",
    "ProtoFM",
    "alignment_loss",
    "assignment_loss",
    "check_protofm_config",
    "patch_contrastive_loss",
    "train_protofm",
]


@dataclass(frozen=True)
class ProtoFMConfig:
    """ProtoFM hyperparameters (300 prototypes as in the paper; the rest is ours, see the module docstring).

    Attributes:
        n_prototypes: K.
        proj_dim: E, the projector's output and the prototypes' width.
        hidden_dim: H, the projector's hidden width (None: the token width D; about 1M parameters at D = 768).
        student_temperature: tau_s of the student's assignment softmax.
        teacher_temperature: tau_t of the teacher's (sharper) assignment softmax.
        ema: momentum of the teacher's exponential moving average.
        w_assign, w_contrast, w_align, w_sparsity: loss weights.
        contrast_temperature: InfoNCE temperature.
        contrast_samples: aligned locations per batch in the InfoNCE (a random subset).
        align_tokens: tokens per image in the alignment loss (a random subset).
        align_shift: the shift subtracted from the centred backbone correlation.
        hs_alpha, hs_gamma: the Hoyer-Square loss's alpha and gamma (ProtoS-ViT's values).
        epochs, batch_size, lr, weight_decay, warmup_epochs, cosine_epochs, min_lr: optimisation, as ProtoS-ViT.
        max_weight: classifier weights are clamped to [0, max_weight].
        importance_threshold: importance pruning at evaluation.
        views: how augmented views are drawn (used when no cached views are given).
        device: "auto", "cpu" or "cuda".
    """

    n_prototypes: int = 300
    proj_dim: int = 256
    hidden_dim: int | None = None
    student_temperature: float = 0.1
    teacher_temperature: float = 0.05
    ema: float = 0.99
    w_assign: float = 1.0
    w_contrast: float = 1.0
    w_align: float = 1.0
    w_sparsity: float = 1.0
    contrast_temperature: float = 0.1
    contrast_samples: int = 512
    align_tokens: int = 64
    align_shift: float = 0.0
    hs_alpha: float = 0.01
    hs_gamma: float = 0.01
    epochs: int = 80
    batch_size: int = 256
    lr: float = 0.01
    weight_decay: float = 0.01
    warmup_epochs: int = 15
    cosine_epochs: int | None = 300
    min_lr: float = 1e-4
    max_weight: float = 5.0
    importance_threshold: float = 0.1
    views: ViewConfig = field(default_factory=ViewConfig)
    device: str = "auto"


def check_protofm_config(cfg: ProtoFMConfig, *, n_patches: int, n_train: int) -> None:
    """Check a configuration against the data before training.

    Raises:
        ValueError: naming the first bad field, or a prototype bank the tokens cannot support.
    """
    for name in ("proj_dim", "batch_size", "contrast_samples", "align_tokens"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise ValueError(f"protofm.{name} must be a positive integer, got {getattr(cfg, name)!r}")
    if cfg.hidden_dim is not None and cfg.hidden_dim < 1:
        raise ValueError(f"protofm.hidden_dim must be None or >= 1, got {cfg.hidden_dim}")
    for name in ("student_temperature", "teacher_temperature", "contrast_temperature", "lr", "max_weight"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"protofm.{name} must be > 0, got {getattr(cfg, name)!r}")
    for name in ("w_assign", "w_contrast", "w_align", "w_sparsity", "hs_alpha", "hs_gamma", "weight_decay",
                 "min_lr", "importance_threshold"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"protofm.{name} must be >= 0, got {getattr(cfg, name)!r}")
    if not 0 <= cfg.ema < 1:
        raise ValueError(f"protofm.ema must be in [0, 1), got {cfg.ema}")
    if cfg.epochs < 0 or cfg.warmup_epochs < 0 or (
            cfg.cosine_epochs is not None and cfg.cosine_epochs <= cfg.warmup_epochs):
        raise ValueError(f"protofm needs epochs >= 0 and 0 <= warmup_epochs < cosine_epochs, got {cfg.epochs}, "
                         f"{cfg.warmup_epochs}, {cfg.cosine_epochs}")
    check_prototype_budget(cfg.n_prototypes, n_patches=n_patches, batch_size=cfg.batch_size, n_train=n_train,
                           head="protofm")


class _Projector(nn.Module):
    """Projector and prototype bank: the part the teacher copies."""

    def __init__(self, in_dim: int, hidden_dim: int, proj_dim: int, n_prototypes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, proj_dim))
        self.prototypes = nn.Parameter(torch.empty(n_prototypes, proj_dim))
        nn.init.orthogonal_(self.prototypes)

    def forward(self, patches: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, P, E) and assignment maps (B, K, H, W) of patch tokens (B, P, D)."""
        b, p, _ = patches.shape
        g = math.isqrt(p)
        z = F.normalize(self.mlp(patches), dim=-1)  # (B, P, E)
        sim = torch.einsum("bpe,ke->bkp", z, F.normalize(self.prototypes, dim=-1))  # (B, K, P)
        return z, torch.softmax(sim / temperature, dim=1).reshape(b, -1, g, g)


class ProtoFM(nn.Module):
    """The ProtoFM head: student projector and prototypes, EMA teacher, positive-weight classifier.

    Args:
        in_dim: D.
        n_classes: N_c.
        n_prototypes: K.
        proj_dim: E.
        hidden_dim: H (None: D).
        student_temperature: tau_s.
        teacher_temperature: tau_t.
        max_weight: upper clamp of the classifier weights.
    """

    def __init__(self, in_dim: int, n_classes: int, *, n_prototypes: int = 300, proj_dim: int = 256,
                 hidden_dim: int | None = None, student_temperature: float = 0.1,
                 teacher_temperature: float = 0.05, max_weight: float = 5.0) -> None:
        super().__init__()
        self.student = _Projector(in_dim, hidden_dim or in_dim, proj_dim, n_prototypes)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        weight = torch.empty(n_classes, n_prototypes)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.classifier = nn.Parameter(weight.abs())
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.max_weight = max_weight

    @classmethod
    def from_config(cls, cfg: "ProtoFMConfig", in_dim: int, n_classes: int) -> "ProtoFM":
        """The head a configuration describes (to rebuild a saved state dict)."""
        return cls(in_dim, n_classes, n_prototypes=cfg.n_prototypes, proj_dim=cfg.proj_dim,
                   hidden_dim=cfg.hidden_dim, student_temperature=cfg.student_temperature,
                   teacher_temperature=cfg.teacher_temperature, max_weight=cfg.max_weight)

    @property
    def class_weight(self) -> torch.Tensor:
        """(N_c, K) the non-negative classifier weights."""
        return self.classifier

    def forward(self, patches: torch.Tensor) -> PrototypeOutput:
        """The student's logits (B, N_c), scores (B, K) and assignment maps (B, K, H, W) on tokens (B, P, D)."""
        _, maps = self.student(patches, self.student_temperature)
        scores = maps.amax(dim=(2, 3))  # (B, K)
        return PrototypeOutput(scores @ self.classifier.T, scores, maps)

    @torch.no_grad()
    def teacher_views(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's embeddings (B, P, E) and sharpened assignment maps (B, K, H, W) of view tokens."""
        return self.teacher(patches, self.teacher_temperature)

    @torch.no_grad()
    def after_step(self, momentum: float) -> None:
        """Clamp the classifier to [0, max_weight] and move the teacher towards the student (EMA)."""
        self.classifier.clamp_(0.0, self.max_weight)
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


def assignment_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from the teacher's to the student's assignment, averaged over locations.

    Args:
        student_maps: (B, K, h, w) student assignment (a distribution over K at each location), aligned.
        teacher_maps: (B, K, h, w) teacher assignment at the same locations.

    Returns:
        Scalar; ``log K`` for uniform maps.
    """
    return -(teacher_maps * student_maps.clamp_min(1e-8).log()).sum(dim=1).mean()


def patch_contrastive_loss(student: torch.Tensor, teacher: torch.Tensor, *, temperature: float,
                           n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """InfoNCE between aligned student and teacher embeddings: the same location is the positive.

    Args:
        student: (B, E, h, w) student embeddings on the view's region.
        teacher: (B, E, h, w) teacher embeddings of the view.
        temperature: softmax temperature.
        n_samples: at most this many locations of the batch are used (a random subset).
        generator: seeds the subset (default: the global RNG).

    Returns:
        Scalar; ``log M`` when all M embeddings are equal.
    """
    s = F.normalize(student.flatten(2).transpose(1, 2).reshape(-1, student.shape[1]), dim=-1)  # (B*h*w, E)
    t = F.normalize(teacher.flatten(2).transpose(1, 2).reshape(-1, teacher.shape[1]), dim=-1)
    if s.shape[0] > n_samples:
        pick = torch.randperm(s.shape[0], generator=generator)[:n_samples].to(s.device)
        s, t = s[pick], t[pick]
    logits = s @ t.T / temperature  # (M, M)
    return F.cross_entropy(logits, torch.arange(len(s), device=s.device))


def alignment_loss(tokens: torch.Tensor, assignment: torch.Tensor, *, shift: float = 0.0) -> torch.Tensor:
    """Correspondence distillation: token pairs alike in the backbone should share prototypes.

    ``-mean_{b,i,j} (F_bij - mean_j F_bij - shift) * max(C_bij, 0)`` with ``F`` the cosine similarity of the
    backbone tokens and ``C`` that of the assignment vectors (STEGO's form with a spatially centred F).

    Args:
        tokens: (B, Q, D) backbone tokens.
        assignment: (B, Q, K) the student's assignment vectors of the same tokens.
        shift: subtracted from the centred F.

    Returns:
        Scalar tensor.
    """
    x = F.normalize(tokens, dim=-1)
    a = F.normalize(assignment, dim=-1)
    f = x @ x.transpose(1, 2)  # (B, Q, Q)
    f = f - f.mean(dim=2, keepdim=True) - shift
    c = a @ a.transpose(1, 2)
    return -(f * c.clamp_min(0)).mean()


def train_protofm(
    train: TokenData,
    cfg: ProtoFMConfig = ProtoFMConfig(),
    *,
    seed: int,
    views: ViewTokens | None = None,
    eval_data: TokenData | None = None,
    verbose: bool = True,
) -> TrainedHead:
    """Train a ProtoFM head on cached tokens.

    Args:
        train: training tokens.
        cfg: hyperparameters (a profile's: :func:`qpmlib.runs.peer_heads.head_config`).
        seed: initialisation, shuffling, view and dropout seed.
        views: cached backbone views of the training images (same row order as ``train``); None: token-grid
            views drawn with ``cfg.views`` (seeded by the image ids, or the row numbers when ids are missing).
        eval_data: test tokens; the history then records ``test_accuracy``.
        verbose: progress bar.

    Returns:
        :class:`~qpmlib.heads.base.TrainedHead` (history records ``ce``, ``assign``, ``contrast``, ``align``,
        ``sparsity``).

    Raises:
        ValueError: for a bad configuration, views that do not match the data, or a prototype bank the tokens
            cannot support (before training).
    """
    check_protofm_config(cfg, n_patches=train.n_patches, n_train=len(train))
    if views is not None and (len(views.patches.shape) != 4 or views.patches.shape[0] != len(train)
                              or tuple(views.patches.shape[2:]) != (train.n_patches, train.dim)):
        raise ValueError(f"views hold {tuple(views.patches.shape)}, expected ({len(train)}, V, {train.n_patches}, "
                         f"{train.dim}) for these training tokens")
    dev = resolve_device(cfg.device)
    model = seeded_init(lambda: ProtoFM.from_config(cfg, train.dim, train.n_classes), seed).to(dev)
    feed = TokenBatches(train, dev)
    n_views = views.n_views if views is not None else cfg.views.n_views
    if views is None:
        ids = train.image_ids if train.image_ids is not None else np.arange(len(train))
        boxes, flips = sample_views(ids, cfg.views)
        grid_boxes, grid_flips = torch.as_tensor(boxes, device=dev), torch.as_tensor(flips, device=dev)
    sampler = torch.Generator().manual_seed(seed + 1)

    def step(idx: np.ndarray, epoch: int):
        patches, _, y = feed(idx)
        pick = torch.randint(n_views, (len(idx),), generator=sampler).numpy()
        if views is not None:
            view_patches, box, flip = views.batch(idx, pick, dev)
        else:
            rows = torch.as_tensor(idx, device=dev)
            which = torch.as_tensor(pick, device=dev)
            box, flip = grid_boxes[rows, which], grid_flips[rows, which]
            view_patches = token_views(patches, box, flip)
        z, maps = model.student(patches, model.student_temperature)  # (B, P, E), (B, K, H, W)
        scores = maps.amax(dim=(2, 3))
        logits = scores @ model.classifier.T
        z_t, maps_t = model.teacher_views(view_patches)
        g = maps.shape[-1]
        s_maps = crop_and_resize(maps, box, flip)
        s_z = crop_and_resize(z.transpose(1, 2).reshape(len(idx), -1, g, g), box, flip)
        t_z = z_t.transpose(1, 2).reshape(len(idx), -1, g, g)
        q = torch.randperm(train.n_patches, generator=sampler)[:cfg.align_tokens].to(dev)
        ce = F.cross_entropy(logits, y)
        terms = {
            "assign": cfg.w_assign * assignment_loss(s_maps, maps_t),
            "contrast": cfg.w_contrast * patch_contrastive_loss(
                s_z, t_z, temperature=cfg.contrast_temperature, n_samples=cfg.contrast_samples, generator=sampler),
            "align": cfg.w_align * alignment_loss(patches[:, q], maps.flatten(2).transpose(1, 2)[:, q],
                                                  shift=cfg.align_shift),
            "sparsity": (min(epoch / cfg.warmup_epochs, 1.0) if cfg.warmup_epochs else 1.0) * cfg.w_sparsity
            * hoyer_square_loss(scores, model.classifier, alpha=cfg.hs_alpha, gamma=cfg.hs_gamma),
        }
        loss = ce + sum(terms.values())
        parts = {"ce": ce.detach(), **{k: v.detach() for k, v in terms.items()}}
        return loss, parts, int((logits.argmax(1) == y).sum())

    return train_head(model, step, train, cfg, stage="protofm", seed=seed,
                      after_step=lambda: model.after_step(cfg.ema), eval_data=eval_data, verbose=verbose)
