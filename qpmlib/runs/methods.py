"""The methods of Table 1 that this book trains: one registry entry each, one run type, one way to run them.

    runs = run_methods("dino_sldd", "demo", seeds=[0, 1, 2])   # computes what is missing, loads the rest
    run = run_method("linear_probe", "smoke", seed=0)
    run.metrics["accuracy"], run.model()
    RunRequest.of("dino_qpm", [0, 1], {"qp.n_selected": 40}).run("demo")   # the same, as a value

:data:`METHODS` maps each reproduced key of :data:`qpmlib.paper.METHODS` to a :class:`Method`: the profile
fields the method sets and the head that follows its dense stage. Every method runs through the same dense
stage of :mod:`qpmlib.runs.dino_qpm` (its own dense stage where its fields differ) and returns a
:class:`~qpmlib.runs.run.Run`:

* ``linear_probe``: the DINOv2 f_CLS linear probe (reference_spec §6.1): no MLP, pooling "cls", no QP or
  fine-tune (:func:`linear_probe_overrides`); its CAM is the probe's weights on the frozen patch tokens (§5.7).
* ``dense``: Dense F_froz, the dense stage of DINO-QPM (§6.2).
* ``dino_sldd``, ``dino_qsenn``: DINO-SLDD and DINO-QSENN (§6.3, §6.4; :func:`sldd_overrides`,
  :mod:`qpmlib.runs.baselines`).
* ``dino_qpm``, ``dino_qpm_compact``: DINO-QPM and its compact variant (:func:`compact_sizes`).
* ``protosvit``, ``protofm``, ``klc``: the peer interpretable heads on the same cached tokens, each one stage of
  its own (:mod:`qpmlib.runs.peer_heads`, sized by the profile's ``heads`` section); not rows of the paper's
  Table 1, so :data:`METHOD_KEYS` leaves them out (:data:`PEER_KEYS`).

A method is one more entry here: its profile fields and its head (``"dense"``, ``"qpm"`` or a key of
:data:`qpmlib.runs.baselines.SPARSE_HEADS`).

A :class:`RunRequest` names one method over some seeds with some overrides: what a table or a figure needs from
the results store. The analysis modules say which requests each table and figure needs
(:func:`qpmlib.analysis.plan.book_requests` lists all of them), so the runs can be computed ahead, anywhere,
before the chapters only load them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qpmlib.config import Profile, apply_overrides, get_profile
from qpmlib.runs.baselines import SPARSE_HEADS, run_sparse_head
from qpmlib.runs.checks import check_profile
from qpmlib.runs.dino_qpm import run_stages
from qpmlib.runs.executor import cluster_runs, resolve_executor, torch_threads
from qpmlib.runs.peer_heads import PEER_HEADS, run_peer_head
from qpmlib.runs.run import Run
from qpmlib.sparse import QSENN, SLDD, SLDDSettings

__all__ = [
    "Method",
    "METHODS",
    "METHOD_KEYS",
    "PEER_KEYS",
    "HEADS",
    "PROBE_REFERENCE_EPOCHS",
    "BACKBONE_SETTINGS",
    "BACKBONE_SIZES",
    "backbone_overrides",
    "linear_probe_overrides",
    "sldd_overrides",
    "compact_sizes",
    "compact_overrides",
    "sid_k",
    "method_profile",
    "run_methods",
    "run_method",
    "RunRequest",
]

#: Dense epochs of the linear probe in the reference code (`qpm/dinov2_no_mlp.yaml`, §6.1).
PROBE_REFERENCE_EPOCHS = 40
#: What can follow a method's dense stage: nothing, DINO-QPM's QP and fine-tune, or a sparse-head baseline.
HEADS = ("dense", "qpm", *SPARSE_HEADS, *PEER_HEADS)


def linear_probe_overrides(prof: Profile) -> dict[str, Any]:
    """The fields that turn a profile into the CLS linear probe (reference_spec §6.1, `qpm/dinov2_no_mlp.yaml`).

    No MLP (features are the raw LayerNormed CLS token; N_f becomes the backbone width), dropout 0.2 then
    Linear with bias, AdamW-schedule-free lr 1e-3 / wd 7e-4, batch 32, every auxiliary loss 0, and no QP or
    fine-tune. Epochs: :data:`PROBE_REFERENCE_EPOCHS` with ``baselines.reference_sizes``, else the profile's.
    """
    return {
        "model.n_layers": 0,
        "model.pooling": "cls",
        "model.dropout": 0.2,
        "train.dense_epochs": PROBE_REFERENCE_EPOCHS if prof.baselines.reference_sizes else prof.train.dense_epochs,
        "train.dense_batch_size": 32,
        "train.dense_lr": 1e-3,
        "train.dense_weight_decay": 7e-4,
        "train.dense_fdl": 0.0,
        "train.ft_epochs": 0,
    }


def sldd_overrides(prof: Profile, settings: SLDDSettings = SLDD) -> dict[str, Any]:
    """The fields of the DINO-SLDD (``settings=SLDD``) and DINO-QSENN (``QSENN``) runs (reference_spec §6.3-6.4,
    §10 row 14).

    Dense stage as DINO-QPM's but with FDL 0.196; fine-tune with FDL 0.196, no L1 losses, the reference's lr
    and weight decay. Epochs and batch sizes: the reference's with ``baselines.reference_sizes`` (40 dense epochs
    at batch 32, both methods; fine-tune batch 16; 50 fine-tune epochs for SLDD, `sldd/dinov2.yaml`, and 25 per
    Q-SENN iteration, `qsenn/dinov2.yaml`), else the profile's. The two share their dense stage either way.
    """
    s, t, ref = settings, prof.train, prof.baselines.reference_sizes
    return {
        "model.pooling": "avg_pooling",
        "train.dense_fdl": s.fdl,
        "train.ft_fdl": s.fdl,
        "train.ft_l1_fm": s.l1_fm,
        "train.ft_l1_fv": s.l1_fv,
        "train.dense_epochs": s.dense_epochs if ref else t.dense_epochs,
        "train.dense_batch_size": s.dense_batch_size if ref else t.dense_batch_size,
        "train.ft_epochs": s.ft_epochs if ref else t.ft_epochs,
        "train.ft_batch_size": s.ft_batch_size if ref else t.ft_batch_size,
        "train.ft_lr": s.ft_lr,
        "train.ft_weight_decay": s.ft_weight_decay,
    }


#: The reference's own config of a backbone whose runs do not use `qpm/dinov2.yaml`: DINO v1 ViT-B/16, Table 4,
#: runs `qpm/dino.yaml` (reference_spec §4.2, §8.3): λ_L1-FV = 0 always, and with ``baselines.reference_sizes``
#: its sizes (40 dense / 50 fine-tune epochs, fine-tune batch 16) on both paper presets.
BACKBONE_SETTINGS: dict[str, dict[str, Any]] = {
    "dino_vitb16": {"train.ft_l1_fv": 0.0},
}
BACKBONE_SIZES: dict[str, dict[str, int]] = {
    "dino_vitb16": {"train.dense_epochs": 40, "train.ft_epochs": 50, "train.dense_batch_size": 32,
                    "train.ft_batch_size": 16},
}


def backbone_overrides(prof: Profile, backbone: str) -> dict[str, Any]:
    """The fields of a DINO-QPM run on ``backbone`` (Table 4): the backbone, and its own reference config where
    it has one (:data:`BACKBONE_SETTINGS`; :data:`BACKBONE_SIZES` with ``baselines.reference_sizes``)."""
    sizes = BACKBONE_SIZES.get(backbone, {}) if prof.baselines.reference_sizes else {}
    return {"backbone.name": backbone, **BACKBONE_SETTINGS.get(backbone, {}), **sizes}


def compact_sizes(profile: str | Profile, n_classes: int | None = None) -> tuple[int, int]:
    """(N*_f, N^c_f) of DINO-QPM Compact: ``baselines.compact`` when set (paper: 40, 4), else scaled.

    Scaled: ``N^c_f - 1`` (at least 1) features per class and ``round(0.8 N*_f)`` features, raised until
    ``comb(N*_f, N^c_f) >= n_classes`` so that every class can get its own feature set (reference_spec §1.7),
    and at most ``model.n_features``.

    Args:
        profile: profile name or object.
        n_classes: number of classes (default: the profile's SynthBirds ``data.n_classes``).

    Returns:
        ``(n_selected, n_per_class)``.

    Raises:
        ValueError: when no size up to ``model.n_features`` gives enough distinct feature sets.
    """
    prof = get_profile(profile)
    if prof.baselines.compact is not None:
        return tuple(prof.baselines.compact)
    n_classes = prof.data.n_classes if n_classes is None else n_classes
    per_class = max(1, prof.qp.n_per_class - 1)
    n_selected = max(per_class, round(0.8 * prof.qp.n_selected))
    while math.comb(n_selected, per_class) < n_classes:
        n_selected += 1
    if n_selected > prof.model.n_features:
        raise ValueError(f"no compact size fits: need {n_selected} features for {n_classes} classes with "
                         f"{per_class} per class, but model.n_features is {prof.model.n_features}")
    return n_selected, per_class


def compact_overrides(prof: Profile) -> dict[str, int]:
    """The QP sizes of DINO-QPM Compact (:func:`compact_sizes`)."""
    n_selected, per_class = compact_sizes(prof)
    return {"qp.n_selected": n_selected, "qp.n_per_class": per_class}


def sid_k(profile: str | Profile) -> int:
    """k of the SID@k that Table 1 reports as ``sid_at_5``: ``min(5, qp.n_per_class)`` (paper: 5)."""
    return min(5, get_profile(profile).qp.n_per_class)


@dataclass(frozen=True)
class Method:
    """One reproduced row of Table 1.

    Attributes:
        key: the method's key in :data:`qpmlib.paper.METHODS`.
        head: what follows the dense stage, one of :data:`HEADS`.
        overrides: ``overrides(profile) -> {"section.field": value}``, the fields the method sets; the caller's
            overrides are applied after them.
    """

    key: str
    head: str
    overrides: Callable[[Profile], dict[str, Any]]


#: The reproduced rows of Table 1, in the paper's order (the ResNet50 rows are reported only).
METHODS: dict[str, Method] = {m.key: m for m in (
    Method("linear_probe", "dense", linear_probe_overrides),
    Method("dense", "dense", lambda prof: {}),
    Method("dino_sldd", "dino_sldd", sldd_overrides),
    Method("dino_qsenn", "dino_qsenn", lambda prof: sldd_overrides(prof, QSENN)),
    Method("dino_qpm", "qpm", lambda prof: {}),
    Method("dino_qpm_compact", "qpm", compact_overrides),
    *(Method(head, head, lambda prof: {}) for head in PEER_HEADS),
)}
#: The reproduced rows of the paper's Table 1.
METHOD_KEYS: tuple[str, ...] = tuple(k for k, m in METHODS.items() if m.head not in PEER_HEADS)
#: The peer heads (:mod:`qpmlib.runs.peer_heads`), registered as methods on the same tokens and store.
PEER_KEYS: tuple[str, ...] = tuple(k for k, m in METHODS.items() if m.head in PEER_HEADS)


def _method(method: str) -> Method:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    return METHODS[method]


def method_profile(method: str, profile: str | Profile, overrides: dict[str, Any] | None = None) -> Profile:
    """The profile a method runs with: its own fields, then ``overrides``, checked.

    Raises:
        ValueError: for an unknown method or invalid settings.
    """
    base = get_profile(profile)
    prof = apply_overrides(base, _method(method).overrides(base) | dict(overrides or {}))
    check_profile(prof)
    return prof


def run_methods(
    method: str,
    profile: str | Profile,
    seeds: Sequence[int] | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    compute: bool = True,
    stack: bool | None = None,
    executor: str | None = None,
    verbose: bool = False,
) -> list[Run]:
    """Run (or load) one method of Table 1 for several seeds.

    The pipeline stages of all missing seeds are computed together (on a GPU they train as one stacked model,
    see :func:`qpmlib.runs.dino_qpm.run_stages`); SLDD's selection and the baselines' fine-tunes run per seed.
    With the ``slurm`` executor the missing seeds are computed as Slurm jobs first (one per seed, see
    :func:`qpmlib.runs.tasks.ensure_runs`), and this process only loads them. While it computes, torch runs with the
    profile's ``cluster.threads`` threads (:func:`qpmlib.runs.executor.torch_threads`).

    Args:
        method: a key of :data:`METHODS`.
        profile: profile name or object.
        seeds: run seeds (None: the profile's).
        overrides: dotted profile overrides applied after the method's (e.g. ``{"data.dataset": "cars"}``).
        compute: compute missing stages; False raises FileNotFoundError instead.
        stack: see :func:`qpmlib.runs.dino_qpm.run_stages`.
        executor: where missing runs are computed, ``"local"`` (here) or ``"slurm"``; None:
            :func:`qpmlib.runs.executor.resolve_executor` (``$QPMLIB_EXECUTOR``, else the profile's
            ``cluster.executor``).
        verbose: progress bars.

    Returns:
        One :class:`~qpmlib.runs.run.Run` per seed, in the order of ``seeds``.

    Raises:
        ValueError: for an unknown method (lists the valid ones), invalid settings or seeds.
        qpmlib.runs.executor.RunsNotFinished: with ``slurm``, when jobs never finished after their retries.
    """
    m = _method(method)
    prof = method_profile(method, profile, overrides)
    if compute and resolve_executor(executor, profile) != "local":  # computed as jobs first, then only loaded
        cluster_runs(method, prof.seeds if seeds is None else seeds, get_profile(profile), overrides=overrides,
                     executor=executor, verbose=verbose)
        compute = False
    with torch_threads(prof.cluster.threads if compute else None):
        return _run_heads(m, prof, seeds, compute, stack, verbose)


def _run_heads(m: Method, prof: Profile, seeds: Sequence[int] | None, compute: bool, stack: bool | None,
               verbose: bool) -> list[Run]:
    """The body of :func:`run_methods` once the method's profile is known."""
    method = m.key
    if m.head in PEER_HEADS:
        seeds = [int(s) for s in (prof.seeds if seeds is None else seeds)]
        return [Run(method, prof, seed, run_peer_head(m.head, prof, seed, k=sid_k(prof), compute=compute,
                                                      verbose=verbose)) for seed in seeds]
    found = run_stages(prof, seeds, compute=compute, dense_only=m.head != "qpm", stack=stack, verbose=verbose)
    runs = []
    for seed, stages in found.items():
        if m.head in SPARSE_HEADS:
            stages = stages | run_sparse_head(m.head, prof, seed, stages["dense"], compute=compute, verbose=verbose)
        runs.append(Run(method, prof, seed, stages))
    return runs


def run_method(method: str, profile: str | Profile, seed: int = 0, *, overrides: dict[str, Any] | None = None,
               compute: bool = True, verbose: bool = False) -> Run:
    """Run (or load) one method of Table 1 for one seed (see :func:`run_methods`)."""
    return run_methods(method, profile, [seed], overrides=overrides, compute=compute, verbose=verbose)[0]


@dataclass(frozen=True)
class RunRequest:
    """One method over some seeds with some profile overrides: a unit of work for the results store.

    Attributes:
        method: a key of :data:`METHODS`.
        seeds: run seeds.
        overrides: the caller's dotted overrides as sorted ``(key, value)`` pairs (hashable, so that requests
            can be collected in a set).
    """

    method: str
    seeds: tuple[int, ...]
    overrides: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, method: str, seeds: Sequence[int], overrides: dict[str, Any] | None = None) -> "RunRequest":
        """A request from plain arguments.

        Raises:
            ValueError: for an unknown method (lists the valid ones).
        """
        _method(method)
        return cls(method, tuple(int(s) for s in seeds), tuple(sorted((overrides or {}).items())))

    def run(self, profile: str | Profile, *, compute: bool = True, executor: str | None = None,
            verbose: bool = False) -> list[Run]:
        """:func:`run_methods` of this request: one :class:`~qpmlib.runs.run.Run` per seed."""
        return run_methods(self.method, profile, self.seeds, overrides=dict(self.overrides), compute=compute,
                           executor=executor, verbose=verbose)

