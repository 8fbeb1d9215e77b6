"""The self-supervised objectives of DINOv2, at miniature scale: DINO, iBOT and KoLeo, with an EMA teacher.

* **DINO** (Caron et al. 2021): a student sees every crop, an exponential-moving-average (EMA) teacher sees the two
  global crops. Both map the CLS token through a projection head to ``K`` prototype scores. The teacher's scores are
  *centred* (a running mean is subtracted, which prevents one prototype from winning everywhere) and *sharpened*
  (a low temperature), and the student is trained to match them on every other crop (cross-entropy).
* **iBOT** (Zhou et al. 2022): some patches of the student's global crops are replaced by a learned mask token;
  at those patches the student's patch tokens must predict the teacher's (centred, sharpened) scores of the
  unmasked patch. As in DINOv2's default, one projection head serves both losses, with separate centres.
* **KoLeo** (Sablayrolles et al. 2019; DINOv2): ``-mean log(distance to the nearest neighbour)`` of the student's
  L2-normalised CLS tokens within a batch, which spreads the features out.

Everything here is a small function or module; :mod:`qpmlib.pretrain.trainer` puts them together.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ProjectionHead",
    "teacher_probabilities",
    "update_centre",
    "dino_loss",
    "ibot_loss",
    "per_image_mean",
    "entropy",
    "koleo_loss",
    "block_mask",
    "ema_update",
]


class ProjectionHead(nn.Module):
    """DINO's projection head: an MLP, L2 normalisation, then cosine scores against ``n_prototypes`` prototypes.

    The last layer's rows are normalised in every call (DINO's weight normalisation with its gain fixed to 1).

    Args:
        in_dim: token width D.
        n_prototypes: output size K.
        hidden: MLP width.
        bottleneck: width before the prototype layer.
    """

    def __init__(self, in_dim: int, n_prototypes: int = 1024, hidden: int = 512, bottleneck: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.prototypes = nn.Parameter(torch.empty(n_prototypes, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) tokens -> (..., K) prototype scores in [-1, 1]."""
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))


def teacher_probabilities(scores: torch.Tensor, centre: torch.Tensor, temperature: float) -> torch.Tensor:
    """Centre and sharpen teacher scores: ``softmax((scores - centre) / temperature)`` over the last axis."""
    return torch.softmax((scores.float() - centre) / temperature, dim=-1)


@torch.no_grad()
def update_centre(centre: torch.Tensor, scores: torch.Tensor, momentum: float) -> None:
    """In place: ``centre <- momentum * centre + (1 - momentum) * mean of scores`` over all leading axes."""
    centre.mul_(momentum).add_(scores.float().reshape(-1, scores.shape[-1]).mean(0), alpha=1 - momentum)


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """DINO's cross-entropy between teacher and student crops of the same image.

    Args:
        student: (V, B, K) student scores for V crops (the 2 global crops first, then the local crops).
        teacher: (2, B, K) teacher probabilities of the global crops (:func:`teacher_probabilities`).
        temperature: student temperature.

    Returns:
        Scalar: the mean over images and over every (teacher crop, student crop) pair of different crops of
        ``-sum_k teacher_k log softmax(student / temperature)_k``.
    """
    logp = torch.log_softmax(student.float() / temperature, dim=-1)  # (V, B, K)
    total, pairs = student.new_zeros((), dtype=torch.float32), 0
    for t in range(teacher.shape[0]):
        for v in range(logp.shape[0]):
            if v != t:
                total = total - (teacher[t] * logp[v]).sum(-1).mean()
                pairs += 1
    return total / pairs


def ibot_loss(student: torch.Tensor, teacher: torch.Tensor, image_of: torch.Tensor, n_images: int,
              temperature: float) -> torch.Tensor:
    """iBOT's masked-patch cross-entropy, each image's masked patches weighted equally (as in DINOv2).

    Args:
        student: (M, K) student scores at the M masked patches.
        teacher: (M, K) teacher probabilities at the same patches.
        image_of: (M,) int64, which of the ``n_images`` global crops each masked patch belongs to.
        n_images: number of global crops in the batch (images without masks count in the mean as zero).
        temperature: student temperature.

    Returns:
        Scalar; 0 when nothing is masked.
    """
    per_patch = -(teacher * torch.log_softmax(student.float() / temperature, dim=-1)).sum(-1)  # (M,)
    return per_image_mean(per_patch, image_of, n_images)


def per_image_mean(values: torch.Tensor, image_of: torch.Tensor, n_images: int) -> torch.Tensor:
    """Mean over images of each image's mean of ``values`` (M,) (images without values count as zero); 0 if M = 0."""
    if values.shape[0] == 0:
        return values.new_zeros((), dtype=torch.float32)
    counts = torch.bincount(image_of, minlength=n_images).clamp_min(1).float()
    return (values.float() / counts[image_of]).sum() / n_images


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each distribution along the last axis of ``p``."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser: ``-mean_i log min_{j != i} ||x_i - x_j||`` of L2-normalised rows of ``x`` (B, D), B >= 2."""
    z = F.normalize(x.float(), dim=-1)
    dist = torch.cdist(z, z) + torch.eye(len(z), dtype=z.dtype) * 1e9
    return -torch.log(dist.min(dim=1).values + eps).mean()


def block_mask(grid: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """A block-wise iBOT mask: random rectangles (aspect 0.3 to 3.3) until about ``ratio`` of the patches are masked.

    Args:
        grid: patches per side.
        ratio: target fraction of masked patches, in [0, 1].
        rng: source of randomness.

    Returns:
        bool (grid, grid) with ``round(ratio * grid**2)`` True entries (exactly; rectangles first, then single
        patches to fill or trim).
    """
    target = int(round(ratio * grid * grid))
    mask = np.zeros((grid, grid), bool)
    for _ in range(50):
        left = target - int(mask.sum())
        if left < 4:
            break
        area = rng.uniform(4, max(4.0, left))
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        h = min(grid, max(1, int(round(math.sqrt(area * aspect)))))
        w = min(grid, max(1, int(round(math.sqrt(area / aspect)))))
        top, lft = int(rng.integers(0, grid - h + 1)), int(rng.integers(0, grid - w + 1))
        mask[top : top + h, lft : lft + w] = True
    flat = mask.reshape(-1)
    on, off = np.flatnonzero(flat), np.flatnonzero(~flat)
    if len(on) > target:
        flat[rng.choice(on, len(on) - target, replace=False)] = False
    elif len(on) < target:
        flat[rng.choice(off, target - len(on), replace=False)] = True
    return mask


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every teacher parameter ``<- momentum * teacher + (1 - momentum) * student``."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
