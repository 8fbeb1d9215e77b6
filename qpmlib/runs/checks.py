"""``check_profile``: every field of a profile checked before any work starts; ``check_ready``: this machine can run it.

The valid values of a field live in the module that uses it (backbones in :data:`qpmlib.backbones.BACKBONES`,
datasets in :data:`qpmlib.data.DATASETS`, solvers in :data:`qpmlib.qp.SOLVERS` ...), so the check sits here, above
all of them, and every run entry point (:mod:`qpmlib.runs.dino_qpm`, :mod:`qpmlib.runs.methods`) calls it first:
a misspelt solver fails in a second, not after the dense stage has trained.

:func:`check_ready` asks what only the machine can answer: is there a CUDA device for a GPU profile, are the real
datasets on disk, are the pretrained weights here when the profile demands them. The pipeline calls it before it
extracts anything, the book runner before the first chapter (with every backbone the book uses).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from qpmlib.backbones import BACKBONES, hub_offline, pretrained_available
from qpmlib.config import Profile, StageResources
from qpmlib.data import DATASETS, prepare
from qpmlib.data.images import NORMALISATIONS
from qpmlib.model import POOLINGS
from qpmlib import paths, qp
from qpmlib.runs.executor import EXECUTORS
from qpmlib.sparse import QSENN_SCHEDULES
from qpmlib.train import stage_config

__all__ = ["R_MODES", "WEIGHTS", "check_profile", "NotReady", "check_ready"]

#: Valid ``qp.r_mode`` values: the R threshold of DINO-QPM, of the original QPM, or no R penalty (§1.6).
R_MODES = (*qp.R_MODES, "none")
#: Valid ``backbone.weights`` keywords (any other value must be a checkpoint file).
WEIGHTS = ("auto", "pretrained", "random")


def _choice(key: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{key} must be one of {', '.join(map(str, valid))}, got {value!r}")


def _positive_int(key: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _check_data(prof: Profile) -> None:
    d = prof.data
    _choice("data.dataset", d.dataset, DATASETS)
    for extra in prof.extra_datasets:
        _choice("extra_datasets", extra, DATASETS)
    _choice("data.normalisation", d.normalisation, NORMALISATIONS)
    _positive_int("data.image_size", d.image_size)
    if DATASETS[d.dataset].generated:
        for name in ("n_classes", "n_train", "n_test"):
            _positive_int(f"data.{name}", getattr(d, name))


def _check_backbone(prof: Profile) -> None:
    b = prof.backbone
    for key, name in (("backbone.name", b.name), *(("sweeps.backbones", n) for n in prof.sweeps.backbones)):
        _choice(key, name, BACKBONES)
    if str(b.weights) not in WEIGHTS and not Path(b.weights).expanduser().is_file():
        raise ValueError(f"backbone.weights must be one of {', '.join(WEIGHTS)} or an existing checkpoint file, "
                         f"got {b.weights!r}")
    _positive_int("backbone.batch_size", b.batch_size)
    patch = BACKBONES[b.name].patch_size
    if prof.data.image_size < patch:
        raise ValueError(f"data.image_size={prof.data.image_size} is smaller than the patch size {patch} of "
                         f"backbone {b.name!r}")


def _check_model_and_qp(prof: Profile, n_classes: int | None) -> None:
    m, q = prof.model, prof.qp
    if m.n_layers < 0 or m.hidden_size < 1 or m.n_features < 1:
        raise ValueError(f"model.n_layers must be >= 0 and model.hidden_size, model.n_features >= 1; got "
                         f"{m.n_layers}, {m.hidden_size}, {m.n_features}")
    _choice("model.pooling", m.pooling, POOLINGS)
    if not 0 <= m.dropout < 1:
        raise ValueError(f"model.dropout must be in [0, 1), got {m.dropout}")
    _choice("qp.r_mode", q.r_mode, R_MODES)
    _choice("qp.solver", q.solver, qp.SOLVERS)
    _choice("qp.gurobi", q.gurobi, qp.GUROBI_SETTINGS)
    if q.time_limit is not None and not (isinstance(q.time_limit, (int, float)) and q.time_limit > 0):
        raise ValueError(f"qp.time_limit must be a positive number of seconds or None (no limit), got "
                         f"{q.time_limit!r}")
    if q.rounds is not None and not (isinstance(q.rounds, int) and q.rounds >= 0):
        raise ValueError(f"qp.rounds must be a non-negative int (the open solver's rounds) or None, got {q.rounds!r}")
    if not 1 <= q.n_per_class <= q.n_selected:
        raise ValueError(f"qp.n_per_class must be in [1, qp.n_selected={q.n_selected}], got {q.n_per_class}")
    if m.n_layers > 0 and q.n_selected > m.n_features:
        raise ValueError(f"qp.n_selected={q.n_selected} exceeds model.n_features={m.n_features}")
    n_sets = math.comb(q.n_selected, q.n_per_class)
    if n_classes is not None and m.n_layers > 0 and n_sets < n_classes:
        raise ValueError(f"qp.n_selected={q.n_selected} with qp.n_per_class={q.n_per_class} allows only "
                         f"{n_sets} distinct class feature sets for {n_classes} classes")


def _check_baselines_and_seeds(prof: Profile) -> None:
    b = prof.baselines
    _positive_int("baselines.glm_n_lambdas", b.glm_n_lambdas, 2)
    _choice("baselines.qsenn_schedule", b.qsenn_schedule, QSENN_SCHEDULES)
    if b.compact is not None:
        if len(b.compact) != 2 or not 1 <= b.compact[1] <= b.compact[0]:
            raise ValueError(f"baselines.compact must be None or (N*_f, N^c_f) with 1 <= N^c_f <= N*_f, "
                             f"got {b.compact!r}")
    for key, seeds in (("seeds", prof.seeds), ("sweeps.seeds", prof.sweeps.seeds)):
        if len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"{key} must hold distinct integers, got {seeds!r}")
    if not prof.seeds:
        raise ValueError("seeds must not be empty")


def _check_heads(prof: Profile) -> None:
    h = prof.heads
    for name in ("n_prototypes", "batch_size", "klc_prototypes_per_class", "klc_top_k"):
        _positive_int(f"heads.{name}", getattr(h, name))
    for name in ("epochs", "warmup_epochs"):
        _positive_int(f"heads.{name}", getattr(h, name), 0)
    for name in ("prototype_dim", "hidden_dim", "cosine_epochs"):
        if getattr(h, name) is not None:
            _positive_int(f"heads.{name}", getattr(h, name))
    if h.cosine_epochs is not None and h.cosine_epochs <= h.warmup_epochs:
        raise ValueError(f"heads.cosine_epochs={h.cosine_epochs} must exceed heads.warmup_epochs={h.warmup_epochs} "
                         "(or be None: the cosine ends with the last epoch)")
    if prof.data.n_classes and h.klc_top_k > h.klc_prototypes_per_class * prof.data.n_classes:
        raise ValueError(f"heads.klc_top_k={h.klc_top_k} exceeds the {h.klc_prototypes_per_class} x "
                         f"{prof.data.n_classes} prototype images KLC keeps")


def _check_cluster(prof: Profile) -> None:
    c = prof.cluster
    _choice("cluster.executor", c.executor, EXECUTORS)
    for stage in ("embed", "train"):
        res = getattr(c, stage)
        if not isinstance(res, StageResources):
            raise ValueError(f"cluster.{stage} must be a StageResources, got {res!r}")
        _positive_int(f"cluster.{stage}.gpus", res.gpus, 0)
        _positive_int(f"cluster.{stage}.cpus", res.cpus)
        _positive_int(f"cluster.{stage}.time_min", res.time_min)
        if not (isinstance(res.mem_gb, (int, float)) and res.mem_gb > 0):
            raise ValueError(f"cluster.{stage}.mem_gb must be a positive number of GiB, got {res.mem_gb!r}")
    for key in ("partition", "account"):
        value = getattr(c, key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ValueError(f"cluster.{key} must be None or a non-empty name, got {value!r}")
    if not all(isinstance(line, str) for line in c.setup):
        raise ValueError(f"cluster.setup must hold shell lines (strings), got {c.setup!r}")
    _positive_int("cluster.max_retries", c.max_retries, 0)
    _positive_int("cluster.workers", c.workers)
    if c.threads is not None:
        _positive_int("cluster.threads", c.threads)
    for key in ("poll_s", "seconds_per_epoch", "probe_seconds_per_epoch", "extract_images_per_s"):
        value = getattr(c, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"cluster.{key} must be a positive number, got {value!r}")
    if isinstance(c.run_overhead_s, bool) or not isinstance(c.run_overhead_s, (int, float)) or c.run_overhead_s < 0:
        raise ValueError(f"cluster.run_overhead_s must be a number >= 0, got {c.run_overhead_s!r}")


def check_profile(profile: Profile, n_classes: int | None = None) -> None:
    """Check every field of a profile (after overrides) before any training starts.

    Args:
        profile: the profile.
        n_classes: when known, also check that the QP can give every class a distinct feature set.

    Raises:
        ValueError: naming the first field that is out of range and what would be valid (the valid names of
            datasets, backbones, poolings, solvers, R modes, devices, precisions ...).
    """
    _check_data(profile)
    _check_backbone(profile)
    _check_model_and_qp(profile, n_classes)
    stage_config(profile.train, "dense")  # every train.* field (qpmlib.train.check_train_config)
    _check_baselines_and_seeds(profile)
    _check_heads(profile)
    _check_cluster(profile)


#: (profile, backbones, data folder, home folder) that passed :func:`check_ready` in this process.
_READY: set[tuple[Profile, tuple[str, ...], str, str]] = set()


class NotReady(RuntimeError):
    """This machine cannot run the profile yet (no CUDA for a GPU profile, missing data or weights)."""


def _device_problem(prof: Profile) -> str | None:
    device = str(prof.train.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        return (f"profile {prof.name!r} trains on CUDA (train.device = {device!r}) but this machine has no CUDA "
                "device; run it on a GPU machine, or override train.device=auto (or cpu) to run it here, slowly")
    return None


def _data_problems(prof: Profile) -> list[str]:
    problems = []
    for dataset in prof.dataset_overrides():
        if DATASETS[dataset].generated:  # generated on first use
            continue
        try:
            prepare(dataclasses.replace(prof.data, dataset=dataset), verbose=False)
        except FileNotFoundError as exc:
            problems.append(f"dataset {dataset!r}: {exc}")
    return problems


def _weights_problems(prof: Profile, backbones: Sequence[str]) -> list[str]:
    if str(prof.backbone.weights) != "pretrained" or not hub_offline():  # online: timm downloads them
        return []
    folder = paths.home() / "weights"
    problems = []
    for name in dict.fromkeys((prof.backbone.name, *backbones)):
        spec = BACKBONES[name]
        if not pretrained_available(name, "pretrained"):
            fixes = [f"put the official {spec.official_file} into {folder}"] if spec.official_file else []
            fixes += [f"allow one download of {spec.hf_repo} from the Hugging Face hub (HF_HUB_OFFLINE=0, with "
                      "internet)"] if spec.hf_repo else []
            problems.append(f"backbone {name!r} has no pretrained weights here (backbone.weights = 'pretrained'): "
                            + (" or ".join(fixes) or "it has none; use backbone.weights=random"))
    return problems


def check_ready(profile: Profile, *, backbones: Sequence[str] = ()) -> None:
    """Check that this machine can run a profile, before anything is extracted or trained.

    Args:
        profile: the profile (checked first with :func:`check_profile`).
        backbones: further backbones the run will use (the book runner passes every backbone of the book).

    Raises:
        ValueError: see :func:`check_profile`.
        NotReady: listing every problem and how to fix it: a CUDA profile on a machine without CUDA, a real
            dataset (CUB-200-2011, Stanford Cars) that is not on disk (with the command that fetches it),
            pretrained weights that are demanded (``backbone.weights = "pretrained"``) but neither here nor
            downloadable (``HF_HUB_OFFLINE`` set).
    """
    check_profile(profile)
    key = (profile, tuple(backbones), str(paths.data_dir()), str(paths.home()))
    if key in _READY:  # passed in this process already, with the same folders (the data check stats every image)
        return
    problems = [p for p in (_device_problem(profile),) if p]
    problems += _data_problems(profile) + _weights_problems(profile, backbones)
    if problems:
        raise NotReady(f"profile {profile.name!r} cannot run on this machine yet:\n- " + "\n- ".join(problems))
    _READY.add(key)
