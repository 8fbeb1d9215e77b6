"""Training losses of DINO-QPM (reference_spec §3): the Feature Diversity Loss and the two L1 terms.

The total loss of a stage is ``CE + FDL + lambda_FM * L1_FM + lambda_FV * L1_FV`` (§3.1); :func:`total_loss`
adds a term only when its weight is > 1e-6, as the reference code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "FDL_SCALES",
    "feature_diversity_loss",
    "l1_feature_maps",
    "l1_feature_vector",
    "total_loss",
]

#: How the FDL scales each feature's softmax map (reference_spec §3.2 step 4, §10 row 8):
#: ``"features"`` (reference code: the post-dropout feature vector v_d / max v) or
#: ``"map_mean"`` (paper / CHiQPM: the spatial mean of each map, mean F_d / max_d' mean F_d').
FDL_SCALES = ("features", "map_mean")
#: Weights at or below this are treated as 0 (the term is skipped), as in the reference (§3.1).
WEIGHT_EPS = 1e-6


def feature_diversity_loss(
    maps: torch.Tensor,
    features: torch.Tensor,
    logits: torch.Tensor,
    weight: torch.Tensor,
    beta: float,
    *,
    scale: str = "features",
) -> torch.Tensor:
    """Feature Diversity Loss L_div (paper Eq. 8-9, reference_spec §3.2).

    Per sample: c = argmax(logits) (the predicted class), omega = |W[c]| / (||W[c]||_2 + 1e-5),
    S_d = softmax over the H·W positions of maps_d (temperature 1), S_d <- S_d · v_d / max(max_d' v_d', 1e-6),
    then sum over positions of max_d omega_d · S_d. The loss is -beta times the batch mean.

    Args:
        maps: (B, K, H, W) feature maps.
        features: (B, K) the post-dropout feature vector v (``final_features``); used when ``scale="features"``.
        logits: (B, N_c) logits of the same forward pass.
        weight: (N_c, K) the current head weight (binary assignment in fine-tuning).
        beta: the loss weight (lambda_div); the loss is already multiplied by it.
        scale: ``"features"`` (reference code) or ``"map_mean"`` (paper text); see :data:`FDL_SCALES`.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: for mismatched shapes or an unknown ``scale``.
    """
    if scale not in FDL_SCALES:
        raise ValueError(f"unknown FDL scale {scale!r}; valid: {', '.join(FDL_SCALES)}")
    b, k = maps.shape[:2]
    if maps.ndim != 4 or features.shape != (b, k) or logits.shape[0] != b or weight.shape != (logits.shape[1], k):
        raise ValueError(
            f"expected maps (B, K, H, W), features (B, K), logits (B, N_c), weight (N_c, K); got "
            f"{tuple(maps.shape)}, {tuple(features.shape)}, {tuple(logits.shape)}, {tuple(weight.shape)}"
        )
    w = weight[logits.argmax(dim=1)].abs()  # (B, K)
    omega = w / (w.norm(dim=1, keepdim=True) + 1e-5)  # (B, K)
    soft = F.softmax(maps.flatten(2), dim=2)  # (B, K, HW)
    v = features if scale == "features" else maps.mean(dim=(2, 3))  # (B, K)
    soft = soft * (v / v.max(dim=1, keepdim=True).values.clamp_min(1e-6))[..., None]  # (B, K, HW)
    per_sample = (omega[..., None] * soft).max(dim=1).values.sum(dim=1)  # (B,)
    return -beta * per_sample.mean()


def l1_feature_maps(maps: torch.Tensor) -> torch.Tensor:
    """L1_FM: mean |F| over all elements of the (B, K, H, W) maps (reference_spec §3.3).

    Args:
        maps: (B, K, H, W) feature maps (the selected maps in fine-tuning).

    Returns:
        Scalar tensor.
    """
    return maps.abs().mean()


def l1_feature_vector(features: torch.Tensor, norm_with_max: bool = False) -> torch.Tensor:
    """L1_FV: mean |v| over the (B, K) feature vector (reference_spec §3.3).

    Args:
        features: (B, K) the ``final_features`` vector.
        norm_with_max: first divide each sample by its max (clamped at 1e-10); the reference sets it only in
            the dense stage, where the term's weight is 0.

    Returns:
        Scalar tensor.
    """
    if norm_with_max:
        features = features / features.max(dim=1, keepdim=True).values.clamp_min(1e-10)
    return features.abs().mean()


def total_loss(
    out,
    labels: torch.Tensor,
    weight: torch.Tensor,
    *,
    fdl: float,
    l1_fm: float = 0.0,
    l1_fv: float = 0.0,
    fdl_scale: str = "features",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE + FDL + lambda_FM L1_FM + lambda_FV L1_FV (reference_spec §3.1); terms with weight <= 1e-6 are skipped.

    Args:
        out: a :class:`qpmlib.model.ModelOutput` (logits, features, feature_maps).
        labels: (B,) int64 class labels.
        weight: (N_c, K) current head weight (for the FDL).
        fdl: lambda_div (beta).
        l1_fm: lambda_L1-FM.
        l1_fv: lambda_L1-FV.
        fdl_scale: see :func:`feature_diversity_loss`.

    Returns:
        (loss, parts) where parts maps ``"ce"``, ``"fdl"``, ``"l1_fm"``, ``"l1_fv"`` to the weighted values as
        detached scalar tensors (no host sync per batch; skipped terms are 0).
    """
    ce = F.cross_entropy(out.logits, labels)
    loss = ce
    zero = ce.new_zeros(())
    parts = {"ce": ce.detach(), "fdl": zero, "l1_fm": zero, "l1_fv": zero}
    if fdl > WEIGHT_EPS:
        term = feature_diversity_loss(out.feature_maps, out.features, out.logits, weight, fdl, scale=fdl_scale)
        loss = loss + term
        parts["fdl"] = term.detach()
    if l1_fm > WEIGHT_EPS:
        term = l1_fm * l1_feature_maps(out.feature_maps)
        loss = loss + term
        parts["l1_fm"] = term.detach()
    if l1_fv > WEIGHT_EPS:
        term = l1_fv * l1_feature_vector(out.features)
        loss = loss + term
        parts["l1_fv"] = term.detach()
    return loss, parts
