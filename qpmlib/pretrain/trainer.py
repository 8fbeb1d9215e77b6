"""Pretrain a stand-in backbone the DINOv2 way, resumably, and export it as safetensors with a provenance card.

One step (:func:`pretrain`):

1. B corpus images give two global and ``n_local`` local crops each (:class:`~qpmlib.pretrain.corpus.MultiCrop`);
   with probability ``mask_probability`` a global crop gets an iBOT block mask of ``mask_ratio`` of its patches.
2. The EMA teacher embeds the unmasked global crops; the student embeds the masked global crops and the local
   crops. One projection head gives both losses their prototype scores.
3. Loss = ``dino_weight`` DINO (CLS, every crop against the other global crop's teacher) + ``ibot_weight`` iBOT
   (masked patches) + ``koleo_weight`` KoLeo (student CLS of each global crop) [+ the auxiliary terms below].
4. AdamW with a warm-up and a cosine learning rate, a cosine weight-decay ramp and gradient clipping; the
   prototypes stay frozen for the first ``freeze_prototypes`` of the steps (DINO's recipe); then the teacher
   follows the student by EMA with a momentum that rises to 1 on a cosine, and both centres are updated.

Most steps run at a low resolution and a final phase at the demo's 224 px (:class:`Phase`), as DINOv2 adapts to
high resolution at the end of its pretraining.

**Auxiliary objective (off unless ``aux_attributes`` or ``aux_parts`` is positive).** The corpus's own labels,
from a label space disjoint from every profile's classes: a linear head per SynthBirds attribute on the student's
CLS token of each global crop (cross-entropy), and a linear classifier on the student's patch tokens of the global
crops (cross-entropy against the label under each patch centre: background, or the part there with its attribute
value, such as "head:red", :data:`~qpmlib.pretrain.corpus.PATCH_LABELS`). These heads are dropped at export; the
card records the loss weights.

**Determinism.** All randomness of step ``t`` comes from ``numpy.random.default_rng((seed, t, ...))`` and the
image order from a per-epoch permutation of ``(seed, epoch)``, and the model's initial weights from ``seed``, so
the same configuration on the same number of threads gives the same weights; a run killed at any point resumes
from its last checkpoint and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from qpmlib import backbones, paths
from qpmlib.files import atomic_write, file_sha256
from qpmlib.data import synthbirds
from qpmlib.pretrain import ssl
from qpmlib.pretrain.corpus import CORPUS, PATCH_LABELS, MultiCrop, SynthSet, prepare_set

__all__ = [
    "Phase",
    "PretrainConfig",
    "PretrainResult",
    "VARIANT_CONFIGS",
    "config_for",
    "tiny_config",
    "TINY_CORPUS",
    "encode",
    "pretrain",
    "export",
    "CHECKPOINT_FILE",
    "HISTORY_FILE",
]

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"
PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class Phase:
    """A resolution phase: crops of these sizes until ``until`` (a fraction of all steps) is reached."""

    until: float
    global_size: int  # px, a multiple of the patch size
    local_size: int  # px, a multiple of the patch size


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run (its card records all of it).

    Defaults follow DINOv2's recipe (``ssl_default_config.yaml``), scaled down where the model and the batch are
    small; the comments say where a value departs from it.
    """

    variant: str  # a stand-in of qpmlib.backbones (standin_names())
    corpus: SynthSet = CORPUS
    seed: int = 0
    steps: int = 2000
    batch_size: int = 32  # images per step (DINOv2: 1024)
    phases: tuple[Phase, ...] = (Phase(0.9, 112, 56), Phase(1.0, 224, 98))  # DINOv2: 224/98, then 518 at the end
    n_local: int = 4  # local crops per image (DINOv2: 8)
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    blur_probability: float = 0.5  # no colour jitter, greyscale or solarisation: colours define SynthBirds classes
    lr: float = 1e-3  # peak AdamW learning rate (DINOv2: 4e-3 x sqrt(batch / 1024) ... here a short schedule)
    min_lr: float = 1e-6
    warmup: float = 0.1  # fraction of the steps with a linear learning-rate warm-up
    weight_decay: tuple[float, float] = (0.04, 0.2)  # cosine from first to last value
    clip_grad: float = 3.0
    momentum: tuple[float, float] = (0.992, 1.0)  # teacher EMA momentum, cosine from first to last value
    student_temperature: float = 0.1
    teacher_temperature: tuple[float, float] = (0.04, 0.07)  # linear warm-up, then constant
    teacher_warmup: float = 0.3  # fraction of the steps of the teacher-temperature warm-up
    centre_momentum: float = 0.9
    n_prototypes: int = 1024  # DINOv2: 65536
    head_hidden: int = 512  # DINOv2: 2048
    head_bottleneck: int = 128  # DINOv2: 256
    mask_probability: float = 0.5  # share of global crops that get an iBOT mask
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # masked share of a masked crop's patches, uniform
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    freeze_prototypes: float = 0.05  # fraction of the steps with frozen prototypes
    aux_attributes: float = 0.0  # weight of the auxiliary attribute loss (0: off)
    aux_parts: float = 0.0  # weight of the auxiliary per-patch part-and-value loss (0: off)
    precision: str = "bf16"  # "bf16" (CPU/GPU autocast) | "fp32"
    layerscale_init: float = 0.1  # initial LayerScale gamma (DINOv2: 1e-5, for 625k steps; CaiT: 0.1 for depth <= 18)
    fused_attention: bool = False  # torch's fused attention kernel; the explicit matmuls are faster on a CPU here

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range (and the valid choices)."""
        names = backbones.standin_names()
        if self.variant not in names:
            raise ValueError(f"unknown stand-in variant {self.variant!r}; valid variants: {', '.join(names)}")
        patch = backbones.BACKBONES[self.variant].patch_size
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"steps must be >= 1 and batch_size >= 2; got {self.steps} and {self.batch_size}")
        if not self.phases or self.phases[-1].until != 1.0 or any(
                a.until >= b.until for a, b in zip(self.phases, self.phases[1:])):
            raise ValueError(f"phases must end at increasing fractions, the last at 1.0; got {self.phases}")
        for ph in self.phases:
            if ph.global_size % patch or ph.local_size % patch or ph.global_size < patch or ph.local_size < patch:
                raise ValueError(f"crop sizes must be positive multiples of the patch size {patch}; got {ph}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.n_local < 0 or not 0 <= self.mask_probability <= 1:
            raise ValueError("n_local must be >= 0 and mask_probability in [0, 1]")

    def to_dict(self) -> dict:
        """JSON-ready dict of every field (the corpus as its own dict)."""
        return json.loads(json.dumps(asdict(self)))


#: The committed recipe, the same for every stand-in (the Table 3 register axis and the Table 4 size axis differ
#: only in the architecture). Calibrated on the held-out probe (see the stand-in chapter): DINO + iBOT alone left
#: the probe at chance after 700 steps, so the auxiliary objective is on, and the self-supervised terms are scaled
#: down so that their gradients (temperatures 0.1 and below) do not drown it under gradient clipping.
COMMITTED: dict = dict(
    steps=2000, batch_size=32, phases=(Phase(0.9, 112, 56), Phase(1.0, 224, 98)), n_local=2, lr=5e-4, warmup=0.05,
    teacher_temperature=(0.04, 0.05), dino_weight=0.1, ibot_weight=0.1, koleo_weight=0.01, aux_attributes=1.0,
    aux_parts=1.0,
)
#: What ``make weights`` trains for each stand-in.
VARIANT_CONFIGS: dict[str, dict] = {name: COMMITTED for name in backbones.standin_names()}


def config_for(variant: str, **changes) -> PretrainConfig:
    """The committed configuration of a stand-in variant, with ``changes`` applied.

    Raises:
        ValueError: an unknown variant (lists the valid ones) or an invalid configuration.
    """
    names = backbones.standin_names()
    if variant not in names:
        raise ValueError(f"unknown stand-in variant {variant!r}; valid variants: {', '.join(names)}")
    cfg = PretrainConfig(variant=variant, **{**VARIANT_CONFIGS.get(variant, {}), **changes})
    cfg.check()
    return cfg


#: The corpus of the tiny configuration: 4 classes x 4 images at 56 px (generated in a second).
TINY_CORPUS = SynthSet("tiny_corpus", n_classes=4, n_train=3, n_test=1, image_size=56, seed=7)


def tiny_config(variant: str, **changes) -> PretrainConfig:
    """A few seconds' version of a variant's configuration (tiny corpus, batch and heads) for tests and checks."""
    tiny = dict(corpus=TINY_CORPUS, steps=12, batch_size=4, phases=(Phase(0.75, 28, 14), Phase(1.0, 42, 28)),
                n_local=2, n_prototypes=64, head_hidden=32, head_bottleneck=16)
    return config_for(variant, **{**tiny, **changes})


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the teacher backbone, the per-step history and the run's figures."""

    teacher: nn.Module
    history: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0  # summed over every session of the run (resumes included)
    images_per_second: float = 0.0  # corpus images per second of training, over the whole run
    threads: int = 1
    commit: str = "unknown"  # git commit when the run started (``-dirty``: with uncommitted changes)


class _Student(nn.Module):
    """The ViT being trained, with its projection head, iBOT mask token and the optional auxiliary heads."""

    def __init__(self, vit: nn.Module, cfg: PretrainConfig) -> None:
        super().__init__()
        dim = vit.embed_dim
        self.backbone = vit
        self.head = ssl.ProjectionHead(dim, cfg.n_prototypes, cfg.head_hidden, cfg.head_bottleneck)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.attribute_heads = nn.ModuleList(
            nn.Linear(dim, len(v)) for v in synthbirds.ATTRIBUTES.values()) if cfg.aux_attributes > 0 else None
        self.part_head = nn.Linear(dim, len(PATCH_LABELS)) if cfg.aux_parts > 0 else None


def encode(vit: nn.Module, images: torch.Tensor, mask: torch.Tensor | None = None,
           mask_token: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed images with a timm ViT (``dynamic_img_size=True``), optionally replacing masked patches by a token.

    Args:
        vit: the ViT.
        images: (B, 3, S, S).
        mask: bool (B, S/p, S/p); True patches are replaced by ``mask_token`` before the position embedding.
        mask_token: (1, D).

    Returns:
        ``(cls, patches)``: (B, D) and (B, (S/p)**2, D), after the final norm, registers dropped.
    """
    x = vit.patch_embed(images)  # (B, H, W, D)
    if mask is not None:
        x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype), x)
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))
    x = vit.norm(vit.blocks(x))  # (B, prefix + H*W, D)
    return x[:, 0], x[:, vit.num_prefix_tokens:]


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def _schedule(cfg: PretrainConfig, step: int) -> dict[str, float]:
    """Learning rate, weight decay, EMA momentum and teacher temperature at ``step`` (0-based)."""
    t = step / max(cfg.steps - 1, 1)
    warm = max(int(round(cfg.warmup * cfg.steps)), 1)
    if step < warm:
        lr = cfg.lr * (step + 1) / warm
    else:
        lr = _cosine(cfg.lr, cfg.min_lr, (step - warm) / max(cfg.steps - 1 - warm, 1))
    tw = cfg.teacher_warmup * cfg.steps
    t0, t1 = cfg.teacher_temperature
    temp = t1 if step >= tw else t0 + (t1 - t0) * step / tw
    return {"lr": lr, "weight_decay": _cosine(*cfg.weight_decay, t), "momentum": _cosine(*cfg.momentum, t),
            "teacher_temperature": temp}


def _phase(cfg: PretrainConfig, step: int) -> Phase:
    t = (step + 0.5) / cfg.steps
    return next(p for p in cfg.phases if t <= p.until)


def _batch_indices(cfg: PretrainConfig, step: int, n: int) -> np.ndarray:
    """Positions of step ``step``'s images: consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
    start = step * cfg.batch_size
    out, pos = [], start
    while len(out) < cfg.batch_size:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng((cfg.seed, epoch, 0)).permutation(n)
        take = perm[offset: offset + cfg.batch_size - len(out)]
        out.extend(take.tolist())
        pos += len(take)
    return np.asarray(out)


def _masks(cfg: PretrainConfig, n_crops: int, grid: int, rng: np.random.Generator) -> torch.Tensor:
    """(n_crops, grid, grid) bool iBOT masks.

    ``round(mask_probability * n_crops)`` random crops get a block mask; as in DINOv2 their ratios are spread over
    ``mask_ratio``: the i-th masked crop draws its ratio uniformly from the i-th of equal sub-intervals.
    """
    n_masked = int(round(cfg.mask_probability * n_crops))
    edges = np.linspace(*cfg.mask_ratio, n_masked + 1)
    out = np.zeros((n_crops, grid, grid), bool)
    for k, i in enumerate(rng.permutation(n_crops)[:n_masked]):
        out[i] = ssl.block_mask(grid, float(rng.uniform(edges[k], edges[k + 1])), rng)
    return torch.from_numpy(out)


def _param_groups(student: _Student) -> list[dict]:
    decay, no_decay = [], []
    for name, p in student.named_parameters():
        skip = p.ndim < 2 or name.endswith(("cls_token", "reg_token", "pos_embed", "mask_token")) or ".ls" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "apply_decay": True}, {"params": no_decay, "apply_decay": False, "weight_decay": 0.0}]


def _build(cfg: PretrainConfig) -> tuple[_Student, nn.ModuleDict, torch.optim.Optimizer, dict[str, torch.Tensor]]:
    vit = backbones.build_vit(cfg.variant, image_size=224, dynamic_img_size=True, seed=cfg.seed)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith(".gamma"):  # LayerScale
                p.fill_(cfg.layerscale_init)
    for m in vit.modules():
        if hasattr(m, "fused_attn"):  # timm's Attention: same result, another kernel
            m.fused_attn = cfg.fused_attention
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        student = _Student(vit, cfg)
    teacher = nn.ModuleDict({"backbone": copy.deepcopy(student.backbone), "head": copy.deepcopy(student.head)})
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(_param_groups(student), lr=cfg.lr, betas=(0.9, 0.999))
    centres = {"cls": torch.zeros(cfg.n_prototypes), "patch": torch.zeros(cfg.n_prototypes)}
    return student, teacher, opt, centres


def _step(cfg: PretrainConfig, student: _Student, teacher: nn.ModuleDict, opt: torch.optim.Optimizer,
          centres: dict[str, torch.Tensor], views: dict[str, torch.Tensor], masks: torch.Tensor,
          sched: dict[str, float], step: int) -> dict[str, float]:
    b = views["attributes"].shape[0]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    flat = masks.reshape(masks.shape[0], -1)  # (2B, P)
    crop_of, patch_of = flat.nonzero(as_tuple=True)
    with autocast:
        with torch.no_grad():
            t_cls, t_patch = encode(teacher["backbone"], views["global"])
            t_cls_scores = teacher["head"](t_cls)  # (2B, K)
            t_patch_scores = teacher["head"](t_patch[crop_of, patch_of])  # (M, K)
        s_cls, s_patch = encode(student.backbone, views["global"], masks, student.mask_token)
        cls_tokens = [s_cls]
        if cfg.n_local:
            cls_tokens.append(encode(student.backbone, views["local"])[0])
        s_scores = student.head(torch.cat(cls_tokens)).float().reshape(-1, b, cfg.n_prototypes)  # (V, B, K)
        s_patch_scores = student.head(s_patch[crop_of, patch_of])  # (M, K)
        aux_logits = None
        if student.attribute_heads is not None:
            aux_logits = [h(s_cls).float() for h in student.attribute_heads]
        part_logits = student.part_head(s_patch).float() if student.part_head is not None else None
    temp = sched["teacher_temperature"]
    t_cls_p = ssl.teacher_probabilities(t_cls_scores, centres["cls"], temp).reshape(2, b, -1)
    t_patch_p = ssl.teacher_probabilities(t_patch_scores, centres["patch"], temp)
    losses = {
        "dino": ssl.dino_loss(s_scores, t_cls_p, cfg.student_temperature),
        "ibot": ssl.ibot_loss(s_patch_scores, t_patch_p, crop_of, 2 * b, cfg.student_temperature),
        "koleo": sum(ssl.koleo_loss(c) for c in s_cls.float().chunk(2)) / 2,
    }
    total = cfg.dino_weight * losses["dino"] + cfg.ibot_weight * losses["ibot"] + cfg.koleo_weight * losses["koleo"]
    if aux_logits is not None:
        targets = views["attributes"].repeat(2, 1)  # (2B, n_attr), crop-major like s_cls
        losses["aux_attributes"] = sum(F.cross_entropy(lg, targets[:, a]) for a, lg in enumerate(aux_logits)) / len(
            aux_logits)
        total = total + cfg.aux_attributes * losses["aux_attributes"]
    if part_logits is not None:
        losses["aux_parts"] = F.cross_entropy(part_logits.reshape(-1, part_logits.shape[-1]),
                                              views["patch_labels"].reshape(-1))
        total = total + cfg.aux_parts * losses["aux_parts"]

    for group in opt.param_groups:
        group["lr"] = sched["lr"]
        if group["apply_decay"]:
            group["weight_decay"] = sched["weight_decay"]
    opt.zero_grad(set_to_none=True)
    total.backward()
    if step < int(round(cfg.freeze_prototypes * cfg.steps)):
        student.head.prototypes.grad = None
    grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
    opt.step()
    ssl.ema_update(teacher["backbone"], student.backbone, sched["momentum"])
    ssl.ema_update(teacher["head"], student.head, sched["momentum"])
    ssl.update_centre(centres["cls"], t_cls_scores, cfg.centre_momentum)
    if len(t_patch_scores):
        ssl.update_centre(centres["patch"], t_patch_scores, cfg.centre_momentum)
    with torch.no_grad():  # each loss is the teacher's entropy plus a KL that shows the student learning
        cls_entropy = ssl.entropy(t_cls_p).mean()  # log K: a uniform teacher (collapse to uniform)
        patch_entropy = ssl.per_image_mean(ssl.entropy(t_patch_p), crop_of, 2 * b)
    row = {"loss": total.item(), **{k: v.item() for k, v in losses.items()}, "grad_norm": grad_norm.item(),
           "teacher_entropy": cls_entropy.item()}
    row["dino_kl"] = row["dino"] - row["teacher_entropy"]
    row["ibot_kl"] = row["ibot"] - patch_entropy.item()
    return row


def _save(path: Path, state: dict) -> None:
    atomic_write(path, lambda fh: torch.save(state, fh))


def pretrain(
    cfg: PretrainConfig,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    checkpoint_seconds: float = 300.0,
    stop_after: int | None = None,
    verbose: bool = True,
) -> PretrainResult:
    """Pretrain (or resume pretraining) a stand-in backbone.

    Args:
        cfg: the run's configuration.
        out_dir: the run's folder: ``checkpoint.pt`` (written atomically every ``checkpoint_seconds`` and at the
            end) and ``history.json``. An existing checkpoint of the same configuration is resumed.
        data_dir: where the corpus folder is generated (default ``qpmlib.paths.data_dir()``).
        checkpoint_seconds: wall-clock seconds between checkpoints.
        stop_after: stop (with a checkpoint) once this many steps are done, e.g. to split a run in sessions.
        verbose: progress bar.

    Returns:
        The :class:`PretrainResult` (the teacher backbone is what :func:`export` writes).

    Raises:
        ValueError: an invalid configuration, or a checkpoint in ``out_dir`` made with another configuration.
    """
    cfg.check()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = MultiCrop(prepare_set(cfg.corpus, data_dir, verbose=verbose),
                     patch_size=backbones.BACKBONES[cfg.variant].patch_size, split="all")
    student, teacher, opt, centres = _build(cfg)
    history: list[dict] = []
    start, wall, commit = 0, 0.0, _commit()
    ckpt = out_dir / CHECKPOINT_FILE
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["config"] != cfg.to_dict():
            raise ValueError(f"{ckpt} was made with another configuration; delete {out_dir} or use another folder")
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        opt.load_state_dict(state["optimizer"])
        centres = state["centres"]
        history, start, wall = state["history"], int(state["step"]), float(state["wall_seconds"])
        commit = state["commit"]
        if state["threads"] != torch.get_num_threads():
            print(f"warning: resuming with {torch.get_num_threads()} threads; the run began with {state['threads']}, "
                  "so it will not be bit-identical to an uninterrupted run")
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)

    def save(step: int) -> None:
        _save(ckpt, {"config": cfg.to_dict(), "step": step, "student": student.state_dict(),
                     "teacher": teacher.state_dict(), "optimizer": opt.state_dict(), "centres": centres,
                     "history": history, "wall_seconds": wall, "threads": torch.get_num_threads(),
                     "commit": commit})
        (out_dir / HISTORY_FILE).write_text(json.dumps(history))

    def inputs(step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Step ``step``'s views and masks; a function of (seed, step) only, so it can be made ahead of time."""
        phase = _phase(cfg, step)
        views = data.batch(_batch_indices(cfg, step, len(data)), np.random.default_rng((cfg.seed, step, 1)),
                           global_size=phase.global_size, local_size=phase.local_size, n_local=cfg.n_local,
                           global_scale=cfg.global_scale, local_scale=cfg.local_scale,
                           blur_probability=cfg.blur_probability)
        masks = _masks(cfg, 2 * cfg.batch_size, phase.global_size // data.patch_size,
                       np.random.default_rng((cfg.seed, step, 2)))
        return views, masks

    student.train()
    last_save = time.monotonic()
    bar = tqdm(total=cfg.steps, initial=start, desc=f"pretrain {cfg.variant}", unit="step", disable=not verbose,
               mininterval=10.0)
    with bar, ThreadPoolExecutor(max_workers=1) as prefetch:  # decodes the next batch while this one trains
        ahead = prefetch.submit(inputs, start) if start < end else None
        for step in range(start, end):
            t0 = time.perf_counter()
            phase = _phase(cfg, step)
            views, masks = ahead.result()
            if step + 1 < end:
                ahead = prefetch.submit(inputs, step + 1)
            sched = _schedule(cfg, step)
            row = _step(cfg, student, teacher, opt, centres, views, masks, sched, step)
            if not all(math.isfinite(v) for v in row.values()):
                raise FloatingPointError(f"non-finite loss at step {step}: {row}; lower cfg.lr or use fp32")
            seconds = time.perf_counter() - t0
            wall += seconds
            history.append({"step": step, **row, "lr": sched["lr"], "global_size": phase.global_size,
                            "seconds": seconds})
            bar.set_postfix(loss=f"{row['loss']:.3f}", dino=f"{row['dino']:.3f}", ibot=f"{row['ibot']:.3f}",
                            refresh=False)
            bar.update(1)
            if time.monotonic() - last_save >= checkpoint_seconds and step + 1 < end:
                save(step + 1)
                last_save = time.monotonic()
    if end > start or not ckpt.is_file():
        save(end)
    n_images = cfg.batch_size * len(history)
    return PretrainResult(teacher=teacher["backbone"], history=history, wall_seconds=wall,
                          images_per_second=n_images / wall if wall else 0.0, threads=torch.get_num_threads(),
                          commit=commit)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _curve(history: list[dict], points: int = 200) -> list[dict]:
    """At most ``points`` rows of the history (means over equal windows), for the card's loss curve."""
    if not history:
        return []
    keys = [k for k in history[0] if k not in ("step", "global_size", "seconds")]
    edges = np.linspace(0, len(history), min(points, len(history)) + 1).astype(int)
    rows = []
    for a, b in zip(edges[:-1], edges[1:]):
        win = history[a:b]
        rows.append({"step": win[-1]["step"] + 1,
                     **{k: float(np.mean([r[k] for r in win if k in r])) for k in keys if k in win[-1]}})
    return rows


def export(result: PretrainResult, cfg: PretrainConfig, weights_dir: str | Path | None = None, *,
           extra: dict | None = None) -> Path:
    """Write the teacher backbone as ``<variant>.safetensors`` (fp16, timm names) and its provenance card.

    The card ``<variant>.json`` records the script, commit, seed, corpus, configuration, steps, loss curve, wall
    time, throughput and machine, and the file's SHA-256, which :func:`qpmlib.backbones.build_backbone` checks.

    Args:
        result: what :func:`pretrain` returned.
        cfg: its configuration.
        weights_dir: destination (default :data:`qpmlib.backbones.WEIGHTS_DIR`).
        extra: more card entries (e.g. probe accuracies).

    Returns:
        The path of the weights file.
    """
    from safetensors.torch import save

    folder = Path(weights_dir or backbones.WEIGHTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in result.teacher.state_dict().items()}
    path = folder / f"{cfg.variant}.safetensors"
    atomic_write(path, save(sd, metadata={"variant": cfg.variant, "format": "timm VisionTransformer, teacher weights"}))
    spec = backbones.BACKBONES[cfg.variant]
    import timm

    card = {
        "name": cfg.variant,
        "file": path.name,
        "sha256": file_sha256(path),
        "dtype": "float16",
        "n_parameters": int(sum(v.numel() for v in sd.values())),
        "architecture": {"family": "DINOv2 (timm VisionTransformer)", "embed_dim": spec.embed_dim,
                         "patch_size": spec.patch_size, "n_registers": spec.n_registers,
                         "position_grid": int(math.isqrt(sd["pos_embed"].shape[1])), **spec.timm_kwargs},
        "objective": _objective_text(cfg),
        "script": "data_scripts/pretrain_backbone.py",
        "commit": result.commit,
        "seed": cfg.seed,
        "corpus": cfg.corpus.card(),
        "config": cfg.to_dict(),
        "steps": len(result.history),
        "images_seen": len(result.history) * cfg.batch_size,
        "wall_seconds": round(result.wall_seconds, 1),
        "images_per_second": round(result.images_per_second, 2),
        "machine": {"platform": platform.platform(), "processor": _cpu_name(), "cpu_count": os.cpu_count(),
                    "torch_threads": result.threads, "torch": torch.__version__, "timm": timm.__version__,
                    "precision": cfg.precision},
        "loss_curve": _curve(result.history),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    atomic_write(folder / f"{cfg.variant}.json", json.dumps(card, indent=1) + "\n")
    return path


def _objective_text(cfg: PretrainConfig) -> str:
    parts = [f"DINO ({cfg.dino_weight:g})", f"iBOT ({cfg.ibot_weight:g})", f"KoLeo ({cfg.koleo_weight:g})"]
    if cfg.aux_attributes > 0:
        parts.append(f"auxiliary attribute classification on the corpus's own attributes ({cfg.aux_attributes:g})")
    if cfg.aux_parts > 0:
        parts.append(f"auxiliary per-patch classification of part and attribute value on the corpus's part maps "
                     f"({cfg.aux_parts:g})")
    return " + ".join(parts)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

