"""The DINO-QPM interpretability adapter on top of frozen backbone tokens (reference_spec §2).

Input interface: one tensor ``tokens`` of shape (B, P + 1, D) holding the P patch tokens followed by the CLS
token **as the last row** (reference_spec §2.1). :func:`join_tokens` builds it from separate patch and CLS
arrays. The model is

    T = MLP(tokens)                    every token, CLS included (BN statistics pool all B·(P+1) tokens, §2.2)
    F = T[:, :P] as (B, N_f, H, W)     feature maps, H = W = sqrt(P), row-major patch order (§2.3)
    f = mean_p T[:, :P]                pooling "avg_pooling" (DINO-QPM); "cls": f = T[:, P] (Table 3 ablation)
    dense head:  v = Dropout(p)(f),  logits = Linear(N_f -> N_c, bias)(v)                        (§2.4)
    sparse head: v = f[:, S],        logits = W_bin · ((v - mu_S) / max(sigma_S, 1e-6)), no bias   (§2.5)

:class:`SparseHeadModel` is the DINO-SLDD / DINO-QSENN variant of the sparse head (real or ternary weights, a
bias, trainable mu and sigma, head dropout; §6.3-6.4). Both models run the same trunk (:meth:`Adapter.encode`:
MLP, pooling, feature maps) and differ only in the head.

Paper-vs-code differences (reference_spec §10) are options whose default is the reference code:

* ``last_layer_bn_relu=True`` (row 13): the last MLP layer also has BN + ReLU, so features are >= 0.
  ``False`` ends the MLP with a plain Linear layer.
* ``standardise=True`` in :meth:`DinoQPM.set_sparse_head` (row 4): the frozen per-feature standardisation
  with dense-stage statistics. ``False`` is the paper's BLDD(f) = W_sparse f^(s).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

__all__ = ["POOLINGS", "STD_FLOOR", "ModelOutput", "Adapter", "DinoQPM", "SparseHeadModel", "build_model",
           "check_selection", "join_tokens"]

#: Valid values of ``pooling`` (reference_spec §2.3).
POOLINGS = ("avg_pooling", "cls")
#: Lower clamp of the sparse head's standard deviation (reference_spec §2.5).
STD_FLOOR = 1e-6


class ModelOutput(NamedTuple):
    """What :meth:`DinoQPM.forward` returns.

    Attributes:
        logits: (B, N_c) class scores.
        features: (B, K) ``final_features``: the dense head's post-dropout vector (K = N_f), or the selected,
            un-standardised features after :meth:`DinoQPM.set_sparse_head` (K = N*_f).
        feature_maps: (B, K, H, W) maps of the same K features.
    """

    logits: torch.Tensor
    features: torch.Tensor
    feature_maps: torch.Tensor


class _TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channel axis of (B, T, C) tokens, pooling all B·T tokens (reference_spec §2.2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        b, t, c = x.shape
        return super().forward(x.reshape(b * t, c)).reshape(b, t, c)


def _mlp(in_dim: int, n_layers: int, hidden_size: int, n_features: int, last_layer_bn_relu: bool) -> nn.Sequential:
    widths = [in_dim] + [hidden_size] * (n_layers - 1) + [n_features]
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < n_layers - 1 or last_layer_bn_relu:
            layers += [_TokenBatchNorm(widths[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers)


class Adapter(nn.Module):
    """The trunk every head sits on: the token MLP (``self.mlp``) and the pooling (``self.pooling``)."""

    mlp: nn.Module
    pooling: str

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the MLP on every token, pool the feature vector and lay the patch features out as maps.

        Args:
            tokens: (B, P + 1, D) patch tokens followed by the CLS token (last row); P must be a square number.

        Returns:
            ``(pooled (B, N_f), maps (B, N_f, H, W))``: pooled is the mean over the patches ("avg_pooling") or
            the CLS row ("cls") (§2.3).

        Raises:
            ValueError: when P is not a square number.
        """
        n_patches = tokens.shape[1] - 1
        side = math.isqrt(n_patches)
        if side * side != n_patches:
            raise ValueError(f"the number of patch tokens must be square, got P={n_patches} (CLS goes last)")
        t = self.mlp(tokens)  # (B, P+1, N_f)
        patches = t[:, :n_patches]  # (B, P, N_f)
        pooled = patches.mean(dim=1) if self.pooling == "avg_pooling" else t[:, n_patches]  # (B, N_f)
        maps = patches.transpose(1, 2).reshape(t.shape[0], -1, side, side)  # (B, N_f, H, W)
        return pooled, maps


class DinoQPM(Adapter):
    """MLP adapter, pooling and dense or sparse head (reference_spec §2).

    Args:
        in_dim: D, the backbone width.
        n_classes: N_c.
        n_layers: MLP depth; every layer is Linear -> BN -> ReLU (§2.2). ``1`` is a single Linear(D -> N_f);
            ``0`` means no MLP: the features are the raw tokens and N_f = D.
        hidden_size: width of the hidden layers.
        n_features: N_f (ignored when ``n_layers == 0``).
        pooling: ``"avg_pooling"`` or ``"cls"`` (see :data:`POOLINGS`).
        dropout: dense head dropout p (§2.4).
        last_layer_bn_relu: BN + ReLU after the last Linear too (reference code, §10 row 13).

    Raises:
        ValueError: for a negative depth, non-positive widths, an unknown pooling or a dropout outside [0, 1).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        n_layers: int = 4,
        hidden_size: int = 2048,
        n_features: int = 512,
        pooling: str = "avg_pooling",
        dropout: float = 0.2,
        last_layer_bn_relu: bool = True,
    ) -> None:
        super().__init__()
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        if min(in_dim, n_classes, hidden_size, n_features) < 1:
            raise ValueError(
                f"in_dim, n_classes, hidden_size and n_features must be >= 1, got "
                f"{in_dim}, {n_classes}, {hidden_size}, {n_features}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.pooling = pooling
        self.n_features = n_features if n_layers > 0 else in_dim
        self.mlp = _mlp(in_dim, n_layers, hidden_size, n_features, last_layer_bn_relu)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.n_features, n_classes)
        self.sparse = False
        self.standardise = True

    # ------------------------------------------------------------------ sparse head (§2.5)
    def set_sparse_head(
        self,
        selected: torch.Tensor | np.ndarray,
        assignment: torch.Tensor | np.ndarray,
        mean: torch.Tensor | np.ndarray,
        std: torch.Tensor | np.ndarray,
        *,
        standardise: bool = True,
    ) -> None:
        """Replace the dense head by the frozen QPM layer (reference_spec §2.5).

        Afterwards ``logits = assignment · ((f_S - mean_S) / max(std_S, 1e-6))`` with no bias; with
        ``standardise=False`` it is the paper's ``assignment · f_S``. The dense head is dropped, the dropout
        becomes the identity (fine-tune dropout 0), and ``assignment``, ``mean`` and ``std`` are frozen buffers.

        Args:
            selected: (N*_f,) distinct feature indices in [0, N_f); they are sorted ascending (§2.5).
            assignment: (N_c, N*_f) binary matrix; column j belongs to feature ``sorted(selected)[j]``.
            mean: (N_f,) training-set feature mean of the dense model, or (N*_f,) in the order of ``selected``.
            std: (N_f,) or (N*_f,) training-set population std of the dense model (same convention).
            standardise: apply the standardisation (reference code, §10 row 4).

        Raises:
            ValueError: for indices out of range or repeated, a non-binary or wrongly shaped assignment, or
                statistics of the wrong length.
        """
        sel, order, w = check_selection(selected, assignment, self.n_features, self.n_classes, what="assignment")
        sel = sel[order]
        k = sel.numel()
        if not torch.all((w == 0) | (w == 1)):
            raise ValueError("assignment must be binary (0/1); QPM keeps the weights exactly binary (§2.5)")
        w = w[:, order]
        stats = []
        for name, value in (("mean", mean), ("std", std)):
            t = torch.as_tensor(np.asarray(value), dtype=torch.float32).flatten()
            if t.numel() == self.n_features:
                t = t[sel]
            elif t.numel() == k:
                t = t[order]  # given in the order of `selected`
            else:
                raise ValueError(f"{name} must have length N_f={self.n_features} or N*_f={k}, got {t.numel()}")
            stats.append(t)
        device = self.head.weight.device if self.head is not None else sel.device
        self.head = None
        self.dropout = nn.Identity()
        self.register_buffer("selected", sel.to(device))
        self.register_buffer("assignment", w.to(device))
        self.register_buffer("feature_mean", stats[0].to(device))
        self.register_buffer("feature_std", stats[1].to(device))
        self.sparse = True
        self.standardise = standardise

    @property
    def head_weight(self) -> torch.Tensor:
        """(N_c, K) weight the FDL and the metrics see: the dense head's weight, or the binary assignment."""
        return self.assignment if self.sparse else self.head.weight

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: torch.Tensor, noise: torch.Tensor | None = None) -> ModelOutput:
        """Run the adapter and the head.

        Args:
            tokens: (B, P + 1, D) float tensor; the patch tokens followed by the CLS token (last row). P must
                be a square number (the patch grid).
            noise: (B, N_f) dropout multipliers (0 or 1/(1-p)) to use instead of the dropout layer; the
                training loop passes them so that every seed draws its own masks. Dense head only.

        Returns:
            :class:`ModelOutput` with logits (B, N_c), features (B, K) and feature_maps (B, K, H, W).

        Raises:
            ValueError: when the token width is not D, P is not a square number, or noise is given to the
                sparse head.
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.in_dim:
            raise ValueError(f"tokens must have shape (B, P+1, {self.in_dim}), got {tuple(tokens.shape)}")
        pooled, maps = self.encode(tokens)  # (B, N_f), (B, N_f, H, W)
        if not self.sparse:
            v = self.dropout(pooled) if noise is None else pooled * noise  # (B, N_f)
            return ModelOutput(self.head(v), v, maps)
        if noise is not None:
            raise ValueError("the sparse head has no dropout; noise must be None")
        v = pooled[:, self.selected]  # (B, N*_f)
        z = (v - self.feature_mean) / self.feature_std.clamp_min(STD_FLOOR) if self.standardise else v
        return ModelOutput(z @ self.assignment.T, v, maps[:, self.selected])


class SparseHeadModel(Adapter):
    """The MLP of a dense model under the SLDD/QSENN sparse layer (reference_spec §2.5, §6.3-6.4).

    ``logits = W ((Dropout(f)_S - mu) / max(sigma, 1e-6)) + b`` with W and b frozen; mu and sigma are trainable
    when ``train_normalisation`` (the SLDD/QSENN default), frozen otherwise. Unlike DINO-QPM's sparse head, W is
    real-valued (SLDD) or ternary (QSENN) and there is a bias.

    Args:
        dense: the trained dense model; its MLP is reused (and trained further), its head is dropped.
        selected: (K,) distinct feature indices; sorted ascending here (columns of ``weight`` follow them).
        weight: (N_c, K) frozen weights in the order of ``selected``.
        bias: (N_c,) frozen bias.
        mean: (K,) initial mu, in the order of ``selected``.
        std: (K,) initial sigma.
        dropout: head dropout (0.1 for SLDD/QSENN).
        train_normalisation: whether mu and sigma are trained.

    Raises:
        ValueError: for mismatched shapes or indices out of range.
    """

    sparse = False  # for qpmlib.train: this model is trained with an explicit StageConfig, not train_finetune

    def __init__(self, dense: DinoQPM, selected, weight, bias, mean, std, *, dropout: float = 0.1,
                 train_normalisation: bool = True) -> None:
        super().__init__()
        sel, order, w = check_selection(selected, weight, dense.n_features, dense.n_classes)
        k = sel.numel()
        vectors = [torch.as_tensor(np.asarray(v), dtype=torch.float32).flatten() for v in (bias, mean, std)]
        if vectors[0].numel() != dense.n_classes or vectors[1].numel() != k or vectors[2].numel() != k:
            raise ValueError(f"expected bias ({dense.n_classes},), mean ({k},) and std ({k},); got "
                             f"{[v.numel() for v in vectors]}")
        self.mlp = dense.mlp
        self.pooling = dense.pooling
        self.n_classes = dense.n_classes
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("selected", sel[order])
        self.register_buffer("weight", w[:, order])
        self.register_buffer("bias", vectors[0])
        self.mean = nn.Parameter(vectors[1][order], requires_grad=train_normalisation)
        self.std = nn.Parameter(vectors[2][order], requires_grad=train_normalisation)

    @property
    def head_weight(self) -> torch.Tensor:
        """(N_c, K) frozen weights (what the FDL and the metrics see)."""
        return self.weight

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor | None = None) -> ModelOutput:
        """Logits, the selected (post-dropout, un-standardised) features and their maps.

        Args:
            tokens: (B, P + 1, D) patch tokens followed by the CLS token.
            noise: (B, K) dropout multipliers to use instead of the dropout layer (see :meth:`DinoQPM.forward`).

        Returns:
            :class:`ModelOutput` with logits (B, N_c), features (B, K), feature_maps (B, K, H, W).
        """
        pooled, maps = self.encode(tokens)  # (B, N_f), (B, N_f, H, W)
        v = pooled[:, self.selected]
        v = self.dropout(v) if noise is None else v * noise  # (B, K)
        z = (v - self.mean) / self.std.clamp_min(STD_FLOOR)
        return ModelOutput(z @ self.weight.T + self.bias, v, maps[:, self.selected])


def check_selection(
    selected, weight, n_features: int, n_classes: int, *, what: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a feature selection and its class weight matrix for a sparse head.

    Args:
        selected: (k,) distinct feature indices in [0, n_features), any order.
        weight: (n_classes, k) weights whose columns follow ``selected``.
        n_features: N_f of the dense model.
        n_classes: N_c.
        what: the weight's name in error messages.

    Returns:
        ``(selected, order, weight)``: long (k,) as given, the argsort that sorts it, float32 (n_classes, k).

    Raises:
        ValueError: empty, repeated or out-of-range indices, or a weight of the wrong shape (both shapes named).
    """
    sel = torch.as_tensor(np.asarray(selected), dtype=torch.long).flatten()
    w = torch.as_tensor(np.asarray(weight), dtype=torch.float32)
    k = sel.numel()
    if k == 0 or sel.min() < 0 or sel.max() >= n_features or torch.unique(sel).numel() != k:
        raise ValueError(f"selected must hold distinct indices in [0, {n_features}), got {sel.tolist()}")
    if w.shape != (n_classes, k):
        raise ValueError(f"{what} must have shape (n_classes, n_selected) = {(n_classes, k)}, got {tuple(w.shape)}")
    return sel, torch.argsort(sel), w


def build_model(model_cfg, in_dim: int, n_classes: int, *, seed: int, last_layer_bn_relu: bool = True) -> DinoQPM:
    """Build a :class:`DinoQPM` from a :class:`qpmlib.config.ModelConfig` with seeded initialisation.

    The global torch RNG is forked, so building a model does not shift anyone else's randomness.

    Args:
        model_cfg: a ``ModelConfig`` (n_layers, hidden_size, n_features, pooling, dropout).
        in_dim: D, the backbone width.
        n_classes: N_c.
        seed: initialisation seed (``torch.manual_seed`` inside a forked RNG).
        last_layer_bn_relu: see :class:`DinoQPM`.

    Returns:
        The dense model in train mode, on the CPU.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DinoQPM(
            in_dim,
            n_classes,
            n_layers=model_cfg.n_layers,
            hidden_size=model_cfg.hidden_size,
            n_features=model_cfg.n_features,
            pooling=model_cfg.pooling,
            dropout=model_cfg.dropout,
            last_layer_bn_relu=last_layer_bn_relu,
        )


def join_tokens(patches: torch.Tensor | np.ndarray, cls: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Stack patch tokens and the CLS token into the model input (CLS as the last row, reference_spec §2.1).

    Args:
        patches: (B, P, D) patch tokens (any float dtype).
        cls: (B, D) CLS tokens.

    Returns:
        (B, P + 1, D) float32 tensor.

    Raises:
        ValueError: when the batch sizes or widths differ.
    """
    p = torch.as_tensor(np.asarray(patches) if not torch.is_tensor(patches) else patches)
    c = torch.as_tensor(np.asarray(cls) if not torch.is_tensor(cls) else cls)
    if p.ndim != 3 or c.shape != (p.shape[0], p.shape[2]):
        raise ValueError(f"expected patches (B, P, D) and cls (B, D), got {tuple(p.shape)} and {tuple(c.shape)}")
    return torch.cat([p.float(), c.float()[:, None]], dim=1)
