"""Dense and fine-tune training on cached backbone tokens (reference_spec §4).

Data: :class:`TokenData` wraps patch tokens (N, P, D), CLS tokens (N, D) and labels (N,). The token arrays may
be fp16 ``np.memmap`` files: each batch is read straight from them (indices sorted, so the reads run forward
through the file) and converted to float32. On a GPU the whole array is moved to the device once (fp16) when it
fits in less than half of the free memory. There is no augmentation (§4.4).

Optimiser: ``schedulefree.AdamWScheduleFree`` (betas 0.9/0.999, eps 1e-8, warmup 0, §4.1). ``optimizer.train()``
runs before each epoch and ``optimizer.eval()`` after it, so the model holds the schedule-free averaged ("x")
weights between epochs and at the end, as the reference's saved model does. ``recalibrate_bn=False`` is the
reference (BN running statistics come from the training-time interpolated weights); ``True`` recomputes them
for the averaged weights with one pass over the training data, as the schedule-free authors recommend.

Seeds: ``seed`` drives the shuffling (its own ``torch.Generator``) and dropout (``torch.manual_seed`` inside a
forked RNG, so the caller's global RNG is untouched). Model initialisation is seeded by
:func:`qpmlib.model.build_model`.

Resuming: with ``run_dir`` set, a checkpoint (model, optimiser, epoch, RNG states, history) is written atomically
after every epoch; calling the same function again on the same folder continues after the last finished epoch
and gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import schedulefree
import torch
from torch import nn
from tqdm import tqdm

from qpmlib.losses import FDL_SCALES, total_loss
from qpmlib.model import DinoQPM

__all__ = [
    "TokenData",
    "StageConfig",
    "History",
    "Evaluation",
    "check_train_config",
    "stage_config",
    "resolve_device",
    "train_dense",
    "train_finetune",
    "evaluate",
    "extract_features",
]

#: File name of the per-stage checkpoint inside ``run_dir`` (``{stage}`` is "dense" or "finetune").
CHECKPOINT_FILE = "{stage}_checkpoint.pt"
#: The reference tests at epochs 0, 5, 10, ... and at the last epoch (reference_spec §4.3).
TEST_EVERY = 5
DEVICES = ("auto", "cpu", "cuda")


# ---------------------------------------------------------------------------------------------- data
@dataclass
class TokenData:
    """Cached backbone tokens of one split.

    Attributes:
        patches: (N, P, D) patch tokens; numpy array, ``np.memmap`` (fp16 is fine) or torch tensor.
        cls: (N, D) CLS tokens.
        labels: (N,) integer class labels (0-based).
        image_ids: (N,) dataset image ids, or None.
    """

    patches: Any
    cls: Any
    labels: np.ndarray
    image_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.labels = np.array(self.labels, dtype=np.int64)  # a small writable copy (stores are read-only)
        n = len(self.labels)
        if len(self.patches.shape) != 3 or self.patches.shape[0] != n or tuple(self.cls.shape) != (n, self.dim):
            raise ValueError(
                f"expected patches (N, P, D), cls (N, D), labels (N,); got {tuple(self.patches.shape)}, "
                f"{tuple(self.cls.shape)}, ({n},)"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_patches(self) -> int:
        """P, the number of patch tokens per image."""
        return int(self.patches.shape[1])

    @property
    def dim(self) -> int:
        """D, the token width."""
        return int(self.patches.shape[2])

    @property
    def n_classes(self) -> int:
        """1 + the largest label."""
        return int(self.labels.max()) + 1 if len(self) else 0

    def batch(self, idx: np.ndarray) -> torch.Tensor:
        """Read the tokens of ``idx`` as the model input.

        Args:
            idx: (B,) sample indices (read in ascending order; the result follows ``idx``'s order).

        Returns:
            (B, P + 1, D) float32 tensor with the CLS token as the last row (reference_spec §2.1).
        """
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        out = torch.empty((len(idx), self.n_patches + 1, self.dim), dtype=torch.float32)
        inv = torch.as_tensor(np.argsort(order, kind="stable"))
        out[:, : self.n_patches] = _rows(self.patches, sorted_idx)[inv]
        out[:, self.n_patches] = _rows(self.cls, sorted_idx)[inv]
        return out

    @classmethod
    def from_store(cls, store: Any) -> "TokenData":
        """Wrap an embedding store (``qpmlib.embeddings.get_store``).

        The store must expose ``patches`` (or ``patch_tokens``), ``cls`` (or ``cls_tokens``) and ``labels``,
        and may expose ``image_ids``.

        Raises:
            ValueError: when an attribute is missing; the message lists what was looked for.
        """

        def pick(*names: str, required: bool = True) -> Any:
            for name in names:
                if getattr(store, name, None) is not None:
                    return getattr(store, name)
            if required:
                raise ValueError(f"embedding store {type(store).__name__} has none of the attributes {names}")
            return None

        return cls(
            patches=pick("patches", "patch_tokens"),
            cls=pick("cls", "cls_tokens"),
            labels=np.asarray(pick("labels")),
            image_ids=pick("image_ids", required=False),
        )


def _rows(array: Any, idx: np.ndarray) -> torch.Tensor:
    """Rows ``idx`` (sorted) of a numpy/memmap/torch array as a float32 CPU tensor."""
    if torch.is_tensor(array):
        return array[torch.as_tensor(idx)].float().cpu()
    return torch.from_numpy(np.asarray(array[idx])).float()


class _Feeder:
    """Serves (tokens, labels) batches on the device; preloads fp16 tokens onto a GPU when they fit."""

    def __init__(self, data: TokenData, device: torch.device) -> None:
        self.data = data
        self.device = device
        self.labels = torch.as_tensor(data.labels, device=device)
        self.tokens = None
        if device.type == "cuda":
            need = len(data) * (data.n_patches + 1) * data.dim * 2
            if need < 0.5 * torch.cuda.mem_get_info(device)[0]:
                self.tokens = torch.empty((len(data), data.n_patches + 1, data.dim), dtype=torch.float16,
                                          device=device)
                for start in range(0, len(data), 512):
                    idx = np.arange(start, min(start + 512, len(data)))
                    self.tokens[idx] = data.batch(idx).to(device, torch.float16)

    def __call__(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        ids = torch.as_tensor(idx, device=self.device)
        if self.tokens is not None:
            return self.tokens[ids].float(), self.labels[ids]
        return self.data.batch(idx).to(self.device, non_blocking=True), self.labels[ids]


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class StageConfig:
    """Hyperparameters of one training stage (reference_spec §3.4, §4.2).

    Attributes:
        stage: ``"dense"`` or ``"finetune"``.
        epochs: passes over the training split.
        batch_size: samples per step.
        lr: learning rate of AdamWScheduleFree.
        weight_decay: decoupled weight decay.
        fdl: lambda_div (beta of the FDL).
        l1_fm: lambda_L1-FM.
        l1_fv: lambda_L1-FV.
        fdl_scale: ``"features"`` (reference) or ``"map_mean"`` (paper), see :data:`qpmlib.losses.FDL_SCALES`.
    """

    stage: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    fdl: float
    l1_fm: float = 0.0
    l1_fv: float = 0.0
    fdl_scale: str = "features"


def stage_config(cfg: Any, stage: str) -> StageConfig:
    """The :class:`StageConfig` of ``stage`` from a :class:`qpmlib.profiles.TrainConfig`.

    The dense stage uses no L1 terms (reference_spec §3.4). ``cfg.fdl_scale`` is used when the field exists.

    Raises:
        ValueError: for an unknown stage or an invalid configuration (see :func:`check_train_config`).
    """
    check_train_config(cfg)
    scale = getattr(cfg, "fdl_scale", "features")
    if stage == "dense":
        return StageConfig("dense", cfg.dense_epochs, cfg.dense_batch_size, cfg.dense_lr, cfg.dense_weight_decay,
                           cfg.dense_fdl, fdl_scale=scale)
    if stage == "finetune":
        return StageConfig("finetune", cfg.ft_epochs, cfg.ft_batch_size, cfg.ft_lr, cfg.ft_weight_decay,
                           cfg.ft_fdl, cfg.ft_l1_fm, cfg.ft_l1_fv, fdl_scale=scale)
    raise ValueError(f"unknown stage {stage!r}; valid: dense, finetune")


def check_train_config(cfg: Any) -> None:
    """Check a ``TrainConfig`` (or :class:`StageConfig`) before any training starts.

    Raises:
        ValueError: naming the first field that is out of range and the valid range.
    """
    for name, value in dataclasses.asdict(cfg).items():
        if name.endswith("epochs") and (not isinstance(value, int) or value < 0):
            raise ValueError(f"train.{name} must be an integer >= 0, got {value!r}")
        if name.endswith("batch_size") and (not isinstance(value, int) or value < 1):
            raise ValueError(f"train.{name} must be an integer >= 1, got {value!r}")
        if name.endswith("lr") and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"train.{name} must be > 0, got {value!r}")
        if name.endswith(("weight_decay", "fdl", "l1_fm", "l1_fv")) and not (
            isinstance(value, (int, float)) and value >= 0
        ):
            raise ValueError(f"train.{name} must be >= 0, got {value!r}")
        if name == "fdl_scale" and value not in FDL_SCALES:
            raise ValueError(f"train.fdl_scale must be one of {', '.join(FDL_SCALES)}, got {value!r}")
        if name == "device" and not (value in DEVICES or str(value).startswith("cuda:")):
            raise ValueError(f"train.device must be one of {', '.join(DEVICES)} or 'cuda:<n>', got {value!r}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other values are passed to ``torch.device``.

    Raises:
        ValueError: when CUDA is asked for but not available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA device is available; use 'cpu' or 'auto'")
    return device


# ---------------------------------------------------------------------------------------------- history
@dataclass
class History:
    """Per-epoch record of one training stage.

    Attributes:
        stage: ``"dense"`` or ``"finetune"``.
        device: where it ran.
        epochs: one dict per finished epoch with ``epoch``, ``loss``, ``ce``, ``fdl``, ``l1_fm``, ``l1_fv``
            (batch means, weighted terms), ``accuracy`` (train, with dropout), ``seconds`` (the training pass
            only) and, at test epochs when ``eval_data`` was given, ``test_accuracy``.
        resumed_at: the epoch this process started from (0 unless resumed from a checkpoint).
    """

    stage: str
    device: str
    epochs: list[dict[str, float]] = field(default_factory=list)
    resumed_at: int = 0

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time per epoch (NaN without epochs)."""
        return float(np.mean([e["seconds"] for e in self.epochs])) if self.epochs else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- training
def train_dense(
    model: DinoQPM,
    train_data: TokenData,
    cfg: Any,
    *,
    seed: int,
    run_dir: str | Path | None = None,
    eval_data: TokenData | None = None,
    recalibrate_bn: bool = False,
    device: str | None = None,
    verbose: bool = True,
) -> History:
    """Train the MLP and the dense head with CE + FDL (reference_spec §3.4, §4).

    Args:
        model: a dense :class:`~qpmlib.model.DinoQPM` (trained in place; afterwards in eval mode on
            ``cfg.device`` holding the averaged weights).
        train_data: training tokens.
        cfg: a :class:`qpmlib.profiles.TrainConfig` (``dense_*`` fields and ``device``) or a dense
            :class:`StageConfig`.
        seed: shuffling and dropout seed.
        run_dir: folder for the resumable checkpoint; None keeps nothing.
        eval_data: optional test tokens; their accuracy is logged at epochs 0, 5, 10, ... and the last.
        recalibrate_bn: recompute BN statistics for the averaged weights (False = reference).
        device: "auto", "cpu" or "cuda"; None takes ``cfg.device`` ("auto" for a :class:`StageConfig`).
        verbose: show a tqdm bar over epochs.

    Returns:
        The :class:`History`.

    Raises:
        ValueError: for a sparse model or an invalid configuration.
        FloatingPointError: when the loss becomes NaN or infinite (names the epoch and batch).
    """
    if model.sparse:
        raise ValueError("train_dense needs a dense model; this one already has the sparse head")
    st = cfg if isinstance(cfg, StageConfig) else stage_config(cfg, "dense")
    return _train_stage(model, train_data, st, seed=seed, device=device or getattr(cfg, "device", "auto"),
                        run_dir=run_dir, eval_data=eval_data, recalibrate_bn=recalibrate_bn, verbose=verbose)


def train_finetune(
    model: DinoQPM,
    train_data: TokenData,
    cfg: Any,
    *,
    seed: int,
    run_dir: str | Path | None = None,
    eval_data: TokenData | None = None,
    recalibrate_bn: bool = False,
    device: str | None = None,
    verbose: bool = True,
) -> History:
    """Fine-tune the MLP under the frozen sparse head with CE + FDL + L1-FM + L1-FV (reference_spec §2.5, §3).

    Arguments as :func:`train_dense`; ``cfg`` supplies the ``ft_*`` fields.

    Raises:
        ValueError: when the model has no sparse head yet (call ``set_sparse_head`` first).
        FloatingPointError: when the loss becomes NaN or infinite.
    """
    if not model.sparse:
        raise ValueError("train_finetune needs the sparse head; call model.set_sparse_head(...) first")
    st = cfg if isinstance(cfg, StageConfig) else stage_config(cfg, "finetune")
    return _train_stage(model, train_data, st, seed=seed, device=device or getattr(cfg, "device", "auto"),
                        run_dir=run_dir, eval_data=eval_data, recalibrate_bn=recalibrate_bn, verbose=verbose)


def _train_stage(
    model: DinoQPM,
    data: TokenData,
    st: StageConfig,
    *,
    seed: int,
    device: str,
    run_dir: str | Path | None,
    eval_data: TokenData | None,
    recalibrate_bn: bool,
    verbose: bool,
) -> History:
    check_train_config(st)
    if len(data) == 0:
        raise ValueError("the training data is empty")
    dev = resolve_device(device)
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = schedulefree.AdamWScheduleFree(params, lr=st.lr, betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=st.weight_decay, warmup_steps=0)
    gen = torch.Generator().manual_seed(seed)
    history = History(st.stage, str(dev))
    key = json.dumps({"stage": dataclasses.asdict(st), "seed": seed, "n": len(data)}, sort_keys=True)
    ckpt = Path(run_dir) / CHECKPOINT_FILE.format(stage=st.stage) if run_dir is not None else None
    feed = _Feeder(data, dev)
    n, bs = len(data), st.batch_size
    n_batches = (n + bs - 1) // bs
    cuda_devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        start = _load_checkpoint(ckpt, key, model, opt, gen, history, dev) if ckpt else 0
        history.resumed_at = start
        bar = tqdm(range(start, st.epochs), initial=start, total=st.epochs, desc=st.stage, disable=not verbose)
        for epoch in bar:
            t0 = time.perf_counter()
            model.train()
            opt.train()
            perm = torch.randperm(n, generator=gen).numpy()
            losses = torch.zeros(n_batches, device=dev)
            sums = {k: torch.zeros((), device=dev) for k in ("ce", "fdl", "l1_fm", "l1_fv")}
            correct = torch.zeros((), device=dev, dtype=torch.long)
            for b in range(n_batches):
                x, y = feed(perm[b * bs:(b + 1) * bs])
                out = model(x)
                loss, parts = total_loss(out, y, model.head_weight, fdl=st.fdl, l1_fm=st.l1_fm, l1_fv=st.l1_fv,
                                         fdl_scale=st.fdl_scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses[b] = loss.detach()
                for k in sums:
                    sums[k] += parts[k]
                correct += (out.logits.detach().argmax(dim=1) == y).sum()
            opt.eval()
            model.eval()
            losses = losses.cpu()
            bad = torch.nonzero(~torch.isfinite(losses)).flatten()
            if len(bad):
                raise FloatingPointError(
                    f"{st.stage} loss became {losses[bad[0]].item()} at epoch {epoch}, batch {bad[0].item()}; "
                    f"lower the learning rate (train.{'dense' if st.stage == 'dense' else 'ft'}_lr={st.lr}) "
                    "or check the embeddings for NaN/inf"
                )
            record = {"epoch": epoch, "loss": losses.mean().item(),
                      **{k: v.item() / n_batches for k, v in sums.items()},
                      "accuracy": correct.item() / n, "seconds": time.perf_counter() - t0}  # training only
            if eval_data is not None and (epoch % TEST_EVERY == 0 or epoch == st.epochs - 1):
                record["test_accuracy"] = float(np.mean(
                    evaluate(model, eval_data, device=dev, with_maps=False).predictions == eval_data.labels))
            history.epochs.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}")
            if ckpt is not None:
                _save_checkpoint(ckpt, key, epoch + 1, model, opt, gen, history, cuda_devices)
        if recalibrate_bn:
            _recalibrate_bn(model, feed, n, bs)
    model.eval()
    return history


def _save_checkpoint(path: Path, key: str, epoch: int, model: nn.Module, opt: torch.optim.Optimizer,
                     gen: torch.Generator, history: History, cuda_devices: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "key": key,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": [torch.cuda.get_rng_state(d) for d in cuda_devices],
        "history": history.to_dict(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, key: str, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                     history: History, device: torch.device) -> int:
    if not path.exists():
        return 0
    state = torch.load(path, map_location=device, weights_only=False)
    if state["key"] != key:
        raise ValueError(
            f"checkpoint {path} belongs to another configuration ({state['key']}), not {key}; "
            "delete the folder to start over"
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    for i, rng in enumerate(state["cuda_rng"]):
        torch.cuda.set_rng_state(rng.cpu(), device)
    history.epochs = list(state["history"]["epochs"])
    return int(state["epoch"])


@torch.no_grad()
def _recalibrate_bn(model: nn.Module, feed: _Feeder, n: int, batch_size: int) -> None:
    """Recompute BN running statistics for the current weights with one pass (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, n, batch_size):
        x, _ = feed(np.arange(start, min(start + batch_size, n)))
        model.mlp(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.eval()


# ---------------------------------------------------------------------------------------------- inference
class Evaluation(NamedTuple):
    """Eval-mode outputs over a whole split (numpy, CPU).

    Attributes:
        logits: (N, N_c) float32.
        features: (N, K) float32 ``final_features`` (dropout off).
        feature_maps: (N, K, H, W) float32, or None when not requested.
        labels: (N,) int64.
    """

    logits: np.ndarray
    features: np.ndarray
    feature_maps: np.ndarray | None
    labels: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        """(N,) argmax of the logits."""
        return self.logits.argmax(axis=1)


@torch.no_grad()
def evaluate(
    model: DinoQPM,
    data: TokenData,
    *,
    batch_size: int = 128,
    device: str | torch.device = "auto",
    with_maps: bool = True,
) -> Evaluation:
    """Run the model in eval mode (BN running statistics, no dropout) over ``data`` in order.

    Args:
        model: a dense or sparse model (left in eval mode on ``device``).
        data: the tokens of one split.
        batch_size: samples per forward pass.
        device: "auto", "cpu" or "cuda".
        with_maps: also collect the feature maps (N, K, H, W).

    Returns:
        :class:`Evaluation`.
    """
    dev = resolve_device(device)
    model.to(dev).eval()
    feed = _Feeder(data, dev)
    logits, feats, maps = [], [], []
    for start in range(0, len(data), batch_size):
        x, _ = feed(np.arange(start, min(start + batch_size, len(data))))
        out = model(x)
        logits.append(out.logits.float().cpu())
        feats.append(out.features.float().cpu())
        if with_maps:
            maps.append(out.feature_maps.float().cpu())
    cat = lambda parts: torch.cat(parts).numpy() if parts else None  # noqa: E731
    return Evaluation(cat(logits), cat(feats), cat(maps), data.labels.copy())


def extract_features(
    model: DinoQPM, data: TokenData, *, batch_size: int = 128, device: str | torch.device = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors in eval mode, as the QP uses them (reference_spec §1.1).

    Args:
        model: dense or sparse model.
        data: tokens of one split.
        batch_size: samples per forward pass.
        device: "auto", "cpu" or "cuda".

    Returns:
        (features (N, K) float32, labels (N,) int64).
    """
    ev = evaluate(model, data, batch_size=batch_size, device=device, with_maps=False)
    return ev.features, ev.labels
