"""Chapter-level experiments for Tables 1-4 and Fig. 2: gather many runs into long-format tables.

Every ``*_records`` function runs (or loads from the results store) what its table needs over the profile's
seeds and returns a long DataFrame with one row per (row, seed, metric): columns ``method``, ``dataset``,
``seed``, ``metric``, ``value`` (Tables 3-4 add ``row``), ready for :func:`qpmlib.tables.summarise_runs`.
Values are fractions as the metrics return them (None becomes NaN); only metrics of
:data:`qpmlib.paper.METRICS` are kept.

Public names: :func:`dataset_overrides`, :func:`table1_records`, :func:`table3_backbones`,
:func:`table3_records`, :func:`table4_records`, :func:`patch_contextualisation_of`, :func:`image_cosines`,
:func:`backbone_cosines`, :func:`cosine_histogram`, :func:`qp_overview`,
:func:`solver_comparison`, :func:`load_test_image`, :func:`explanation_figure`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

from qpmlib import baselines
from qpmlib.backbones import BACKBONES
from qpmlib.paper import METRICS, TABLE3_SETTINGS
from qpmlib.profiles import Profile, get_profile

__all__ = [
    "dataset_overrides",
    "table1_records",
    "table3_backbones",
    "table3_records",
    "table4_records",
    "patch_contextualisation_of",
    "image_cosines",
    "backbone_cosines",
    "cosine_histogram",
    "qp_overview",
    "solver_comparison",
    "load_test_image",
    "explanation_figure",
]

_COLUMNS = ["method", "dataset", "seed", "metric", "value"]
Runner = Callable[..., "baselines.MethodRun"]


def _seeds(prof: Profile, seeds: Sequence[int] | None) -> list[int]:
    seeds = list(prof.seeds if seeds is None else seeds)
    if not seeds:
        raise ValueError("seeds must not be empty; pass None for the profile's seeds")
    return seeds


def _rows(metrics: dict[str, Any], **keys: Any) -> list[dict[str, Any]]:
    return [{**keys, "metric": name, "value": math.nan if value is None else float(value)}
            for name, value in metrics.items()
            if name in METRICS and (value is None or isinstance(value, (int, float)))]


def dataset_overrides(profile: str | Profile) -> dict[str, dict[str, Any]]:
    """Pipeline overrides per dataset of Table 1: the profile's dataset, then ``extra_datasets`` (paper: Cars).

    Returns:
        ``{dataset: overrides}``; ``{}`` for the profile's own dataset, ``{"data.dataset": d}`` for the others.
    """
    prof = get_profile(profile)
    return {prof.data.dataset: {}, **{d: {"data.dataset": d} for d in prof.extra_datasets}}


def table1_records(profile: str | Profile, seeds: Sequence[int] | None = None, *,
                   methods: Sequence[str] = baselines.METHOD_KEYS, runner: Runner | None = None,
                   verbose: bool = False) -> pd.DataFrame:
    """Tables 1 and 2: every reproduced method on every dataset and seed.

    Args:
        profile: profile name or object.
        seeds: seeds to run (None: the profile's).
        methods: method keys (default: :data:`qpmlib.baselines.METHOD_KEYS`).
        runner: ``runner(method, profile, seed, overrides=..., verbose=...) -> MethodRun``
            (default :func:`qpmlib.baselines.run_method`); tests pass a fake.
        verbose: progress bar over runs.

    Returns:
        Long DataFrame (method, dataset, seed, metric, value) with the Table 1 metrics and Table 2's
        n_features, n_per_class and seconds_per_epoch.

    Raises:
        ValueError: for an unknown method or empty seeds.
    """
    prof = get_profile(profile)
    unknown = [m for m in methods if m not in baselines.RUNNERS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {', '.join(baselines.RUNNERS)}")
    jobs = [(d, o, m, s) for d, o in dataset_overrides(prof).items() for m in methods for s in _seeds(prof, seeds)]
    if runner is None:  # all seeds of a method at once: on a GPU the missing ones train together
        groups = [(o, m) for o in dataset_overrides(prof).values() for m in methods]
        for overrides, method in tqdm(groups, desc="Table 1 training", disable=not verbose):
            baselines.prepare(method, prof, _seeds(prof, seeds), overrides=overrides)
    runner = runner or baselines.run_method
    rows: list[dict[str, Any]] = []
    for dataset, overrides, method, seed in tqdm(jobs, desc="Table 1 runs", disable=not verbose):
        run = runner(method, prof, seed, overrides=overrides, verbose=False)
        rows += _rows(run.metrics, method=method, dataset=dataset, seed=seed)
    return pd.DataFrame(rows, columns=_COLUMNS)


def table3_backbones(profile: str | Profile) -> dict[str, str | None]:
    """The backbone of each Table 3 row on this profile (None: the profile has no such backbone).

    The paper's rows use DINOv2 ViT-B/14 with and without registers. Here the profile's backbone gives the
    size: its register variant for the "reg" rows and its no-register variant for the "noreg" rows, when
    :data:`qpmlib.backbones.BACKBONES` has it (demo: ``dinov2_vits14_reg`` / ``dinov2_vits14``; smoke's
    ``tiny_vit_test`` has registers and no twin without, so the "noreg" rows are None).

    Returns:
        ``{row key of TABLE3_SETTINGS: backbone name or None}``.
    """
    name = get_profile(profile).backbone.name
    base = name[:-4] if name.endswith("_reg") else name
    variants: dict[bool, str] = {}  # has registers -> backbone; the profile's own backbone comes first
    for candidate in (name, base, base + "_reg"):
        if candidate in BACKBONES:
            variants.setdefault(BACKBONES[candidate].n_registers > 0, candidate)
    return {row: variants.get(bool(s["registers"])) for row, s in TABLE3_SETTINGS.items()}


def _qpm_runner(prof: Profile, seed: int, overrides: dict[str, Any]) -> "baselines.MethodRun":
    return baselines.run_dino_qpm(prof, seed, overrides=overrides)


def table3_records(profile: str | Profile, seeds: Sequence[int] | None = None, *,
                   runner: Callable[[Profile, int, dict], Any] | None = None,
                   verbose: bool = False) -> pd.DataFrame:
    """Table 3: DINO-QPM with the f_CLS or F_froz input source, with and without registers.

    Each available row (:func:`table3_backbones`) runs DINO-QPM with ``model.pooling`` from
    :data:`qpmlib.paper.TABLE3_SETTINGS` ("cls": the feature vector is MLP(f_CLS), the maps stay MLP(patches))
    and the row's backbone.

    Args:
        profile: profile name or object.
        seeds: seeds (None: the profile's).
        runner: ``runner(profile, seed, overrides) -> MethodRun`` (default: :func:`qpmlib.baselines.run_dino_qpm`).
        verbose: progress bar.

    Returns:
        Long DataFrame (row, method="dino_qpm", dataset, seed, metric, value); rows without a backbone on
        this profile are absent.
    """
    prof = get_profile(profile)
    backbones = {row: b for row, b in table3_backbones(prof).items() if b is not None}
    settings = {row: {"model.pooling": TABLE3_SETTINGS[row]["pooling"], "backbone.name": b}
                for row, b in backbones.items()}
    if runner is None:  # all seeds of a row at once: on a GPU the missing ones train together
        for overrides in tqdm(list(settings.values()), desc="Table 3 training", disable=not verbose):
            baselines.prepare("dino_qpm", prof, _seeds(prof, seeds), overrides=overrides)
    runner = runner or _qpm_runner
    jobs = [(row, s) for row in backbones for s in _seeds(prof, seeds)]
    rows: list[dict[str, Any]] = []
    for row, seed in tqdm(jobs, desc="Table 3 runs", disable=not verbose):
        run = runner(prof, seed, settings[row])
        rows += _rows({k: run.metrics.get(k) for k in ("accuracy", "plausibility")},
                      row=row, method="dino_qpm", dataset=prof.data.dataset, seed=seed)
    return pd.DataFrame(rows, columns=["row", *_COLUMNS])


def patch_contextualisation_of(profile: str | Profile, backbone: str | None = None, *,
                               verbose: bool = False) -> float:
    """Patch Contextualisation (paper Eq. 6-7) of a backbone's frozen tokens over train ∪ test (reference_spec §5.6).

    Args:
        profile: profile name or object (dataset, image size, weights).
        backbone: backbone name (default: the profile's); its embeddings are extracted on first use.
        verbose: progress output.

    Returns:
        The mean over all train and test images of cos(mean patch token, CLS token).
    """
    from qpmlib.embeddings import get_store
    from qpmlib.metrics import patch_contextualisation

    prof = get_profile(profile)
    if backbone is not None:
        prof = prof.replace(backbone=dataclasses.replace(prof.backbone, name=backbone))
    total, count = 0.0, 0
    for split in ("train", "test"):
        store = get_store(prof, split, verbose=verbose)
        n = len(store.labels)
        total += n * patch_contextualisation(store.patch_tokens, store.cls, verbose=verbose)
        count += n
    return total / count


def image_cosines(patch_tokens, cls_tokens) -> np.ndarray:
    """Per-image cos(mean patch token, CLS token): the terms whose mean is Patch Contextualisation (Eq. 6-7).

    Args:
        patch_tokens: (N, P, D) patch tokens (numpy, fp16 memmap or torch).
        cls_tokens: (N, D) CLS tokens.

    Returns:
        (N,) float64 cosines; 0 for a zero vector.

    Raises:
        ValueError: for mismatched shapes.
    """
    patches = np.asarray(patch_tokens, dtype=np.float64)
    cls = np.asarray(cls_tokens, dtype=np.float64)
    if patches.ndim != 3 or cls.shape != (patches.shape[0], patches.shape[2]):
        raise ValueError(f"expected patch_tokens (N, P, D) and cls_tokens (N, D), got {patches.shape} and {cls.shape}")
    mean = patches.mean(axis=1)  # (N, D)
    norms = np.linalg.norm(mean, axis=1) * np.linalg.norm(cls, axis=1)
    dots = (mean * cls).sum(axis=1)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def backbone_cosines(profile: str | Profile, backbone: str, split: str = "test") -> np.ndarray:
    """:func:`image_cosines` of one backbone's cached tokens on a profile's split (extracted on first use)."""
    from qpmlib.embeddings import get_store

    prof = get_profile(profile)
    prof = prof.replace(backbone=dataclasses.replace(prof.backbone, name=backbone))
    store = get_store(prof, split, verbose=False)
    return image_cosines(store.patch_tokens, store.cls)


def cosine_histogram(values: np.ndarray, *, title: str = "") -> Figure:
    """Histogram of per-image cosines with their mean marked.

    Args:
        values: (N,) cosines, e.g. from :func:`backbone_cosines`.
        title: axes title.

    Returns:
        Figure with one axes.
    """
    values = np.asarray(values, dtype=float)
    fig = Figure(figsize=(5, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(values, bins=20, color="tab:blue")
    ax.axvline(values.mean(), color="black", linestyle="--", label=f"mean {values.mean():.3f}")
    ax.set_xlabel("cos(mean patch token, CLS token)")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    return fig


def table4_records(profile: str | Profile, seeds: Sequence[int] | None = None, *,
                   backbones: Sequence[str] | None = None,
                   runner: Callable[[Profile, int, dict], Any] | None = None,
                   context: Callable[[Profile, str], float] | None = None,
                   verbose: bool = False) -> pd.DataFrame:
    """Table 4: DINO-QPM's accuracy and the backbone's Patch Contextualisation for each backbone.

    Args:
        profile: profile name or object.
        seeds: seeds (None: the profile's).
        backbones: backbone names (default: ``profile.sweeps.backbones``).
        runner: ``runner(profile, seed, overrides) -> MethodRun`` (default: DINO-QPM).
        context: ``context(profile, backbone) -> float`` (default :func:`patch_contextualisation_of`); it
            does not depend on the seed and is stored once per seed so that the table's std is 0.
        verbose: progress bar.

    Returns:
        Long DataFrame (row = backbone, method="dino_qpm", dataset, seed, metric, value) with accuracy and
        patch_contextualisation.
    """
    prof = get_profile(profile)
    names = list(prof.sweeps.backbones if backbones is None else backbones)
    unknown = [b for b in names if b not in BACKBONES]
    if unknown:
        raise ValueError(f"unknown backbone(s) {unknown}; valid: {', '.join(BACKBONES)}")
    prepare = runner is None
    runner = runner or _qpm_runner
    context = context or (lambda p, b: patch_contextualisation_of(p, b))
    rows: list[dict[str, Any]] = []
    for backbone in tqdm(names, desc="Table 4 backbones", disable=not verbose):
        pc = context(prof, backbone)
        if prepare:
            baselines.prepare("dino_qpm", prof, _seeds(prof, seeds), overrides={"backbone.name": backbone})
        for seed in _seeds(prof, seeds):
            run = runner(prof, seed, {"backbone.name": backbone})
            rows += _rows({"accuracy": run.metrics.get("accuracy"), "patch_contextualisation": pc},
                          row=backbone, method="dino_qpm", dataset=prof.data.dataset, seed=seed)
    return pd.DataFrame(rows, columns=["row", *_COLUMNS])


# ---------------------------------------------------------------------------------------------- the QP
def qp_overview(profile: str | Profile, seed: int = 0, *,
                overrides: dict[str, Any] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """DINO-QPM's stored selection: which features each class got, and the solver's certificate.

    Args:
        profile: profile name or object.
        seed: run seed.
        overrides: pipeline overrides of the run.

    Returns:
        ``(selection, solver)``: :func:`qpmlib.qp.selection_summary` (class, features, A, A_sum) and the
        QP stage's metrics (objective, bound, gap, solver, solve_seconds, r_threshold, n_penalised).
    """
    from qpmlib import pipeline, qp

    run = pipeline.run_dino_qpm(profile, seed, overrides=overrides, verbose=False)
    sol = run.qp_solution()
    m = run.qp.metrics
    solution = qp.QPMSolution(selected=sol["selected"], assignment=sol["assignment"], objective=m["objective"],
                              bound=m["bound"], gap=m["gap"], solver=m["solver"], runtime=m["solve_seconds"])
    return qp.selection_summary(solution, sol["A"]), dict(m)


def solver_comparison(profile: str | Profile, settings: dict[str, dict[str, Any]], seed: int = 0) -> pd.DataFrame:
    """DINO-QPM under several QP solver settings (same dense model; only the QP and fine-tune rerun).

    Args:
        profile: profile name or object.
        settings: ``{label: qp overrides}``, e.g. ``{"default": {}, "open, 1 s": {"qp.solver": "open",
            "qp.time_limit": 1.0}}``.
        seed: run seed.

    Returns:
        One row per label: solver, objective, bound, gap, solve_seconds, accuracy and the number of selected
        features shared with the first setting.
    """
    from qpmlib import pipeline

    rows, first = [], None
    for label, overrides in settings.items():
        run = pipeline.run_dino_qpm(profile, seed, overrides=overrides, verbose=False)
        selected = set(int(i) for i in run.selected)
        first = selected if first is None else first
        m = run.qp.metrics
        rows.append({"setting": label, "solver": m["solver"], "objective": m["objective"], "bound": m["bound"],
                     "gap": m["gap"], "solve_seconds": m["solve_seconds"],
                     "accuracy": run.metrics["dino_qpm"]["accuracy"], "shared_features": len(selected & first)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- explanations
def load_test_image(profile: str | Profile, index: int) -> tuple[np.ndarray, int]:
    """The ``index``-th test image (in the embedding store's order) for display, and its label.

    Returns:
        ``(image (S, S, 3) float in [0, 1], label)`` with S the profile's image size (anisotropic resize).

    Raises:
        ValueError: for an index outside the test split.
    """
    from qpmlib import data
    from qpmlib.embeddings import get_store

    prof = get_profile(profile)
    store = get_store(prof, "test", verbose=False)
    if not 0 <= index < len(store.labels):
        raise ValueError(f"index must be in [0, {len(store.labels)}), got {index}")
    root = data.prepare(prof.data, verbose=False)
    index_df = data.read_index(root, prof.data.dataset).set_index("image_id")
    path = index_df.loc[int(store.image_ids[index]), "path"]
    with Image.open(path) as im:
        image = im.convert("RGB").resize((prof.data.image_size,) * 2, Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0, int(store.labels[index])


def explanation_figure(run: "baselines.MethodRun", index: int, *, max_features: int = 10) -> Figure:
    """Explain one test image with one model: the local explanation of a sparse model, or the CAM of a dense one.

    A model whose predicted class uses at most ``max_features`` features is shown with
    :func:`qpmlib.explain.local_explanation` (one colour per feature of that class); otherwise with the CAM
    ``sum_d W[c, d] F_d`` (:func:`qpmlib.explain.cam`, reference_spec §5.7; for the linear probe the maps are the
    frozen patch tokens).

    Args:
        run: a finished :class:`qpmlib.baselines.MethodRun`.
        index: test image index.
        max_features: largest class support drawn feature by feature.

    Returns:
        Figure titled with the method, the true and the predicted class.
    """
    from qpmlib.embeddings import get_store
    from qpmlib.explain import cam, cam_figure, local_explanation
    from qpmlib.paper import method_display
    from qpmlib.train import TokenData

    image, label = load_test_image(run.profile, index)
    test = TokenData.from_store(get_store(run.profile, "test", verbose=False))
    model = run.model()
    with torch.no_grad():
        out = model(test.batch(np.array([index])))
    pred = int(out.logits.argmax(dim=1)[0])
    weights = model.head_weight.detach().cpu().numpy()[pred]  # (K,)
    maps = out.feature_maps[0].numpy()  # (K, h, w)
    title = f"{method_display(run.method)}: true {label}, predicted {pred}"
    support = np.flatnonzero(weights)
    if len(support) == 0:
        title += " (this class has no weights)"
    if len(support) <= max_features:
        return local_explanation(image, maps, support.tolist(), title=title)
    fig = cam_figure(image, cam(maps, weights))
    fig.axes[0].set_title(title + " (CAM)")
    return fig
