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

Seeds: ``seed`` drives the shuffling and the dropout masks, each from its own ``torch.Generator`` (the global RNG
is neither used nor changed; on the CPU the masks are exactly those ``nn.Dropout`` draws after
``torch.manual_seed(seed)``). Model initialisation is seeded by :func:`qpmlib.model.build_model`.

Several seeds in one pass: give :func:`train_dense` or :func:`train_finetune` a list of models and a list of
seeds. The models' weights, BN statistics and optimiser state are stacked (``torch.func.stack_module_state``) and
one ``vmap``-ed step trains them all: the S small matmuls of a step become one batched matmul, which keeps a GPU
busy where one small model cannot. Every model still sees its own shuffling and dropout masks, and AdamW
schedule-free works element by element, so each ends where its own run would, up to floating-point rounding.

Precision: ``precision="fp32"`` is the reference; ``"bf16"`` runs the forward and backward pass under
``torch.autocast`` (bfloat16 matmuls; float32 weights, optimiser, softmax and losses).

Resuming: with ``run_dir`` set, a checkpoint (model, optimiser, epoch, RNG states, history) is written atomically
after every epoch (unique temporary name, fsync, rename); calling the same function again on the same folder
continues after the last finished epoch and gives the same weights as an uninterrupted run. Checkpoints are read
with ``torch.load(weights_only=True)``, which refuses to run code hidden in a pickle; a checkpoint that cannot be
read that way, or does not hold what this stage saves, is moved aside (``<name>.unreadable``) with a warning that
names it, and the stage starts over. A lock per stage and folder (:func:`qpmlib.files.file_lock`) makes a second
process that trains the same stage in the same folder wait for the first and then resume from its last
checkpoint, so the work is done once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import schedulefree
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from qpmlib.files import atomic_write, file_lock
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

log = logging.getLogger(__name__)

#: File name of the per-stage checkpoint inside ``run_dir`` (``{stage}`` is "dense" or "finetune").
CHECKPOINT_FILE = "{stage}_checkpoint.pt"
#: Lock file of a stage inside ``run_dir``: held while that stage trains there.
LOCK_FILE = ".{stage}.lock"
#: The reference tests at epochs 0, 5, 10, ... and at the last epoch (reference_spec §4.3).
TEST_EVERY = 5
DEVICES = ("auto", "cpu", "cuda")
#: Valid ``precision`` values: "fp32" (the reference code) or "bf16" (autocast, float32 master weights).
PRECISIONS = ("fp32", "bf16")


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
        precision: ``"fp32"`` (reference) or ``"bf16"`` (autocast: matmuls in bfloat16, weights and optimiser
            in float32; the fast choice on a GPU), see :data:`PRECISIONS`.
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
    precision: str = "fp32"


def stage_config(cfg: Any, stage: str) -> StageConfig:
    """The :class:`StageConfig` of ``stage`` from a :class:`qpmlib.config.TrainConfig`.

    The dense stage uses no L1 terms (reference_spec §3.4). ``cfg.fdl_scale`` and ``cfg.precision`` are used
    when the fields exist.

    Raises:
        ValueError: for an unknown stage or an invalid configuration (see :func:`check_train_config`).
    """
    check_train_config(cfg)
    extra = {"fdl_scale": getattr(cfg, "fdl_scale", "features"), "precision": getattr(cfg, "precision", "fp32")}
    if stage == "dense":
        return StageConfig("dense", cfg.dense_epochs, cfg.dense_batch_size, cfg.dense_lr, cfg.dense_weight_decay,
                           cfg.dense_fdl, **extra)
    if stage == "finetune":
        return StageConfig("finetune", cfg.ft_epochs, cfg.ft_batch_size, cfg.ft_lr, cfg.ft_weight_decay,
                           cfg.ft_fdl, cfg.ft_l1_fm, cfg.ft_l1_fv, **extra)
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
        if name == "precision" and value not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
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
            only, of all the models trained together) and, at test epochs when ``eval_data`` was given,
            ``test_accuracy``.
        resumed_at: the epoch this process started from (0 unless resumed from a checkpoint).
        n_stacked: how many models (seeds) were trained together in one pass.
    """

    stage: str
    device: str
    epochs: list[dict[str, float]] = field(default_factory=list)
    resumed_at: int = 0
    n_stacked: int = 1

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time per epoch and model: an epoch's time divided by ``n_stacked`` (NaN without epochs)."""
        if not self.epochs:
            return float("nan")
        return float(np.mean([e["seconds"] for e in self.epochs])) / self.n_stacked

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- training
def train_dense(
    model: DinoQPM | Sequence[DinoQPM],
    train_data: TokenData,
    cfg: Any,
    *,
    seed: int | Sequence[int],
    run_dir: str | Path | None = None,
    eval_data: TokenData | None = None,
    recalibrate_bn: bool = False,
    device: str | None = None,
    verbose: bool = True,
) -> History | list[History]:
    """Train the MLP and the dense head with CE + FDL (reference_spec §3.4, §4).

    Several seeds train in one pass: give a list of models (one per seed, e.g. from
    :func:`qpmlib.model.build_model` with each seed) and the list of seeds. Their weights are stacked and one
    vmapped step (``torch.func``) trains them all; each model still gets its own shuffling, dropout masks, BN
    statistics and optimiser state, so it ends where a run of its own would (up to floating-point rounding,
    tested).

    Args:
        model: a dense :class:`~qpmlib.model.DinoQPM`, or a list of them with the same architecture (trained
            in place; afterwards in eval mode on the device, holding the averaged weights).
        train_data: training tokens.
        cfg: a :class:`qpmlib.config.TrainConfig` (``dense_*`` fields, ``precision`` and ``device``) or a
            dense :class:`StageConfig`.
        seed: shuffling and dropout seed; a list of seeds (one per model) with a list of models.
        run_dir: folder for the resumable checkpoint; None keeps nothing.
        eval_data: optional test tokens; their accuracy is logged at epochs 0, 5, 10, ... and the last.
        recalibrate_bn: recompute BN statistics for the averaged weights (False = reference).
        device: "auto", "cpu" or "cuda"; None takes ``cfg.device`` ("auto" for a :class:`StageConfig`).
        verbose: show a tqdm bar over epochs.

    Returns:
        The :class:`History`, or one per model when a list was given.

    Raises:
        ValueError: for a sparse model, an invalid configuration, or models and seeds that do not pair up.
        FloatingPointError: when the loss becomes NaN or infinite (names the epoch, batch and seed).
    """
    return _train("dense", model, train_data, cfg, seed=seed, run_dir=run_dir, eval_data=eval_data,
                  recalibrate_bn=recalibrate_bn, device=device, verbose=verbose)


def train_finetune(
    model: DinoQPM | Sequence[DinoQPM],
    train_data: TokenData,
    cfg: Any,
    *,
    seed: int | Sequence[int],
    run_dir: str | Path | None = None,
    eval_data: TokenData | None = None,
    recalibrate_bn: bool = False,
    device: str | None = None,
    verbose: bool = True,
) -> History | list[History]:
    """Fine-tune the MLP under the frozen sparse head with CE + FDL + L1-FM + L1-FV (reference_spec §2.5, §3).

    Arguments as :func:`train_dense` (a list of models with their seeds trains them in one pass; their sparse
    heads may differ); ``cfg`` supplies the ``ft_*`` fields.

    Raises:
        ValueError: when a model has no sparse head yet (call ``set_sparse_head`` first).
        FloatingPointError: when the loss becomes NaN or infinite.
    """
    return _train("finetune", model, train_data, cfg, seed=seed, run_dir=run_dir, eval_data=eval_data,
                  recalibrate_bn=recalibrate_bn, device=device, verbose=verbose)


def _train(stage: str, model: Any, train_data: TokenData, cfg: Any, *, seed: Any, device: str | None,
           **kwargs: Any) -> History | list[History]:
    """:func:`train_dense` (``stage="dense"``) or :func:`train_finetune`: checks, then :func:`_train_stage`."""
    models, seeds = _pair(model, seed)
    if stage == "dense" and any(m.sparse for m in models):
        raise ValueError("train_dense needs a dense model; this one already has the sparse head")
    if stage == "finetune" and not all(m.sparse for m in models):
        raise ValueError("train_finetune needs the sparse head; call model.set_sparse_head(...) first")
    st = cfg if isinstance(cfg, StageConfig) else stage_config(cfg, stage)
    histories = _train_stage(models, train_data, st, seeds=seeds, device=device or getattr(cfg, "device", "auto"),
                             **kwargs)
    return histories if isinstance(seed, Sequence) else histories[0]


def _pair(model: Any, seed: Any) -> tuple[list[nn.Module], list[int]]:
    """Models and seeds as two lists of the same length (one model with one seed, or a list with a list)."""
    if isinstance(model, nn.Module) and not isinstance(seed, Sequence):
        return [model], [int(seed)]
    if isinstance(model, nn.Module) or not isinstance(seed, Sequence):
        raise ValueError("give one model with one seed, or a list of models with a list of seeds")
    models, seeds = list(model), [int(s) for s in seed]
    if not models or len(models) != len(seeds):
        raise ValueError(f"need one seed per model; got {len(models)} models and {len(seeds)} seeds")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    if len({id(m) for m in models}) != len(models):
        raise ValueError("the models must be distinct objects (build one per seed)")
    return models, seeds


class _StepModule(nn.Module):
    """One model and its stage loss as a single module, so that ``torch.func`` can stack and vmap it."""

    def __init__(self, model: nn.Module, st: StageConfig) -> None:
        super().__init__()
        self.model = model
        self.st = st

    def forward(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None):
        out = self.model(x, noise=noise)
        loss, parts = total_loss(out, y, self.model.head_weight, fdl=self.st.fdl, l1_fm=self.st.l1_fm,
                                 l1_fv=self.st.l1_fv, fdl_scale=self.st.fdl_scale)
        return loss, parts, (out.logits.detach().argmax(dim=1) == y).sum()


class _Replicas:
    """The S models of one stage: the model itself when S = 1, else stacked weights and one vmapped step.

    ``params`` are what the optimiser steps (stacked (S, ...) leaves when S > 1); :meth:`write_back` copies the
    stacked weights and BN statistics into the S models.
    """

    def __init__(self, models: list[nn.Module], st: StageConfig, device: torch.device) -> None:
        for m in models:
            m.to(device)
        specs = [(type(m), getattr(m, "pooling", None), getattr(m, "standardise", None), _dropout_p(m),
                  [(k, tuple(v.shape), v.dtype) for k, v in m.state_dict().items()]) for m in models]
        if any(spec != specs[0] for spec in specs):
            raise ValueError("models trained together must have the same class, layers and widths, pooling, "
                             "dropout and standardisation")
        self.steps = [_StepModule(m, st) for m in models]
        if len(models) == 1:
            self.params = [p for p in models[0].parameters() if p.requires_grad]
            self.state: dict[str, torch.Tensor] = {}
            return
        params, buffers = stack_module_state(self.steps)
        self.state = {**params, **buffers}
        self.params = [p for p in params.values() if p.requires_grad]
        base = copy.deepcopy(self.steps[0]).to("meta").train()  # only training steps run through it
        noise_dim = 0 if _dropout_p(models[0]) > 0 else None

        def one(p: dict, b: dict, x, y, noise):
            return functional_call(base, (p, b), (x, y, noise))

        self._vmapped = vmap(one, in_dims=(0, 0, 0, 0, noise_dim))
        self._names = list(params), list(buffers)

    def train(self, mode: bool = True) -> None:
        for s in self.steps:
            s.train(mode)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None):
        """Losses (S,), loss parts {name: (S,)} and correct counts (S,) for inputs stacked (S, B, ...)."""
        if len(self.steps) == 1:
            loss, parts, correct = self.steps[0](x[0], y[0], None if noise is None else noise[0])
            return loss[None], {k: v[None] for k, v in parts.items()}, correct[None]
        p = {k: self.state[k] for k in self._names[0]}
        b = {k: self.state[k] for k in self._names[1]}
        return self._vmapped(p, b, x, y, noise)

    def write_back(self) -> None:
        """Copy the stacked weights and buffers into the S models (no-op for S = 1)."""
        if not self.state:
            return
        with torch.no_grad():
            for i, step in enumerate(self.steps):
                for k, v in step.state_dict().items():
                    if k in self.state:
                        v.copy_(self.state[k][i])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.steps[0].state_dict() if len(self.steps) == 1 else {k: v.detach() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if len(self.steps) == 1:
            self.steps[0].load_state_dict(state)
            return
        with torch.no_grad():
            for k, v in self.state.items():
                v.copy_(state[k])
        self.write_back()


def _dropout_p(model: nn.Module) -> float:
    """The head dropout probability of a model (0 when it has none, e.g. after ``set_sparse_head``)."""
    layer = getattr(model, "dropout", None)
    return float(layer.p) if isinstance(layer, nn.Dropout) else 0.0


def _train_stage(
    models: list[nn.Module],
    data: TokenData,
    st: StageConfig,
    *,
    seeds: list[int],
    device: str,
    run_dir: str | Path | None,
    eval_data: TokenData | None,
    recalibrate_bn: bool,
    verbose: bool,
) -> list[History]:
    check_train_config(st)
    if len(data) == 0:
        raise ValueError("the training data is empty")
    if run_dir is None:
        lock = contextlib.nullcontext()
    else:
        lock = file_lock(Path(run_dir) / LOCK_FILE.format(stage=st.stage), what=f"the {st.stage} stage in {run_dir}")
    with lock:
        return _train_locked(models, data, st, seeds=seeds, device=device, run_dir=run_dir, eval_data=eval_data,
                             recalibrate_bn=recalibrate_bn, verbose=verbose)


def _train_locked(models: list[nn.Module], data: TokenData, st: StageConfig, *, seeds: list[int], device: str,
                  run_dir: str | Path | None, eval_data: TokenData | None, recalibrate_bn: bool,
                  verbose: bool) -> list[History]:
    """The body of :func:`_train_stage`, run while this process holds the stage's lock in ``run_dir``."""
    dev = resolve_device(device)
    reps = _Replicas(models, st, dev)
    opt = schedulefree.AdamWScheduleFree(reps.params, lr=st.lr, betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=st.weight_decay, warmup_steps=0)
    # Each seed shuffles with its own generator and draws its dropout masks from another one (on the device).
    shufflers = [torch.Generator().manual_seed(s) for s in seeds]
    droppers = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
    histories = [History(st.stage, str(dev), n_stacked=len(models)) for _ in models]
    key = json.dumps({"stage": dataclasses.asdict(st), "seeds": seeds, "n": len(data)}, sort_keys=True)
    ckpt = Path(run_dir) / CHECKPOINT_FILE.format(stage=st.stage) if run_dir is not None else None
    feed = _Feeder(data, dev)
    eval_feed = _Feeder(eval_data, dev) if eval_data is not None else None  # built once for every test epoch
    n, bs, s_count = len(data), st.batch_size, len(models)
    n_batches = (n + bs - 1) // bs
    p_drop, width = _dropout_p(models[0]), models[0].head_weight.shape[1]
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=st.precision == "bf16")
    start = _load_checkpoint(ckpt, key, reps, opt, shufflers, droppers, histories, dev) if ckpt else 0
    for h in histories:
        h.resumed_at = start
    bar = tqdm(range(start, st.epochs), initial=start, total=st.epochs, desc=st.stage, disable=not verbose)
    for epoch in bar:
        t0 = time.perf_counter()
        reps.train()
        opt.train()
        perms = [torch.randperm(n, generator=g).numpy() for g in shufflers]
        losses = torch.zeros(n_batches, s_count, device=dev)
        sums = {k: torch.zeros(s_count, device=dev) for k in ("ce", "fdl", "l1_fm", "l1_fv")}
        correct = torch.zeros(s_count, device=dev, dtype=torch.long)
        for b in range(n_batches):
            batches = [feed(perm[b * bs:(b + 1) * bs]) for perm in perms]
            if s_count == 1:
                x, y = batches[0][0][None], batches[0][1][None]  # (1, B, P+1, D), (1, B)
            else:
                x = torch.stack([xb for xb, _ in batches])  # (S, B, P+1, D)
                y = torch.stack([yb for _, yb in batches])  # (S, B)
            noise = None
            if p_drop > 0:  # what nn.Dropout would multiply by, drawn from each seed's own generator
                noise = torch.stack([torch.empty(y.shape[1], width, device=dev).bernoulli_(1 - p_drop, generator=g)
                                     for g in droppers]).div_(1 - p_drop)
            with autocast:
                loss, parts, hits = reps(x, y, noise)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # the S losses share no weights: each model gets its own gradient
            opt.step()
            losses[b] = loss.detach().float()
            for k in sums:
                sums[k] += parts[k].float()
            correct += hits
        opt.eval()
        reps.write_back()
        reps.train(False)
        losses = losses.cpu()
        bad = torch.nonzero(~torch.isfinite(losses))
        if len(bad):
            b, i = bad[0].tolist()
            raise FloatingPointError(
                f"{st.stage} loss became {losses[b, i].item()} at epoch {epoch}, batch {b} (seed {seeds[i]}); "
                f"lower the learning rate (train.{'dense' if st.stage == 'dense' else 'ft'}_lr={st.lr}) "
                "or check the embeddings for NaN/inf"
            )
        seconds = time.perf_counter() - t0  # training only, all stacked models together
        test_epoch = eval_data is not None and (epoch % TEST_EVERY == 0 or epoch == st.epochs - 1)
        for i, (model, history) in enumerate(zip(models, histories)):
            record = {"epoch": epoch, "loss": losses[:, i].mean().item(),
                      **{k: v[i].item() / n_batches for k, v in sums.items()},
                      "accuracy": correct[i].item() / n, "seconds": seconds}
            if test_epoch:
                ev = _evaluate(model, eval_feed, with_maps=False)
                record["test_accuracy"] = float(np.mean(ev.predictions == eval_data.labels))
            history.epochs.append(record)
        bar.set_postfix(loss=f"{losses.mean().item():.3f}", acc=f"{correct.float().mean().item() / n:.3f}")
        if ckpt is not None:
            _save_checkpoint(ckpt, key, epoch + 1, reps, opt, shufflers, droppers, histories)
    if recalibrate_bn:
        for model in models:
            _recalibrate_bn(model, feed, n, bs)
    for model in models:
        model.eval()
    return histories


def _save_checkpoint(path: Path, key: str, epoch: int, reps: _Replicas, opt: torch.optim.Optimizer,
                     shufflers: list[torch.Generator], droppers: list[torch.Generator],
                     histories: list[History]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "key": key,
        "epoch": epoch,
        "model": reps.state_dict(),
        "optimizer": opt.state_dict(),
        "shufflers": [g.get_state() for g in shufflers],
        "droppers": [g.get_state() for g in droppers],
        "histories": [h.to_dict() for h in histories],
    }
    atomic_write(path, lambda fh: torch.save(state, fh))


def _load_checkpoint(path: Path, key: str, reps: _Replicas, opt: torch.optim.Optimizer,
                     shufflers: list[torch.Generator], droppers: list[torch.Generator], histories: list[History],
                     device: torch.device) -> int:
    """Restore a stage from its checkpoint and return the next epoch (0 without a usable checkpoint).

    Raises:
        ValueError: when the checkpoint belongs to another configuration (it is left as it is).
    """
    if not path.exists():
        return 0
    try:  # weights_only: tensors, numbers, strings and containers only; a pickle that would run code is refused
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever makes a file unreadable, it is set aside, never trusted
        state, problem = None, f"cannot be loaded safely ({type(exc).__name__}: {_first_line(exc)})"
    else:
        if isinstance(state, dict) and isinstance(state.get("key"), str) and state["key"] != key:
            raise ValueError(
                f"checkpoint {path} belongs to another configuration ({state['key']}), not {key}; "
                "delete the folder to start over"
            )
        problem = _checkpoint_problem(state, reps, opt, len(histories))
    if problem is not None:
        aside = path.with_name(path.name + ".unreadable")
        path.replace(aside)
        log.warning("checkpoint %s %s; moved it to %s and starting the %s stage over", path, problem, aside.name,
                    histories[0].stage)
        return 0
    reps.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    for g, s in zip(shufflers + droppers, state["shufflers"] + state["droppers"]):
        g.set_state(s.cpu())
    for h, saved in zip(histories, state["histories"]):
        h.epochs = list(saved["epochs"])
    return int(state["epoch"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _checkpoint_problem(state: Any, reps: _Replicas, opt: torch.optim.Optimizer, n_models: int) -> str | None:
    """What is wrong with a loaded checkpoint of this stage (None when it holds everything the stage saves)."""
    fields = {"key": str, "epoch": int, "model": dict, "optimizer": dict, "shufflers": list, "droppers": list,
              "histories": list}
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a checkpoint"
    for name, kind in fields.items():
        if not isinstance(state.get(name), kind):
            return f"has no valid {name!r} entry"
    if state["epoch"] < 0 or not all(len(state[k]) == n_models for k in ("shufflers", "droppers", "histories")):
        return f"holds epoch {state['epoch']} of {len(state['histories'])} model(s), not of {n_models}"
    if not all(torch.is_tensor(g) for g in state["shufflers"] + state["droppers"]) or not all(
            isinstance(h, dict) and isinstance(h.get("epochs"), list) for h in state["histories"]):
        return "holds malformed random-generator states or histories"
    own, saved = reps.state_dict(), state["model"]
    if saved.keys() != own.keys() or any(not torch.is_tensor(saved[k]) or saved[k].shape != v.shape
                                         for k, v in own.items()):
        return "holds weights of another shape or architecture"
    groups = state["optimizer"].get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(opt.param_groups):
        return "holds another optimiser state"
    return None


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
    return _evaluate(model.to(dev), _Feeder(data, dev), batch_size=batch_size, with_maps=with_maps)


@torch.no_grad()
def _evaluate(model: nn.Module, feed: _Feeder, *, batch_size: int = 128, with_maps: bool = True) -> Evaluation:
    """:func:`evaluate` on a feeder that already holds the split (on a GPU: its tokens, uploaded once)."""
    model.eval()
    data = feed.data
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
