"""Tables 1-4 and Fig. 2 of the paper from runs: long-format records, Patch Contextualisation, the radar, the QP.

Every ``*_requests`` function says which runs its table needs (:class:`qpmlib.runs.methods.RunRequest`, each
with the key of its table row), and the ``*_records`` function of the same table runs (or loads from the results
store) exactly those and returns a long DataFrame with one row per (row, seed, metric): columns ``method``, ``dataset``,
``seed``, ``metric``, ``value`` (Tables 3-4 add ``row``), ready for :func:`qpmlib.analysis.summary.summarise`.
Values are fractions as the metrics return them (None becomes NaN); only metrics of
:data:`qpmlib.paper.METRICS` are kept. Table 1 reports SID as SID@k with ``k = sid_k(profile)``
(:func:`qpmlib.runs.methods.sid_k`) for every method.

Fig. 2: :func:`radar_frame` pivots a long table into models x axes, :func:`radar_scores` scales the axes as the
paper does and :func:`radar_area_fraction` measures a model's share of the heptagon; :func:`paper_radar` and
:func:`our_radar` are the two tables the chapter draws.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import ConvexHull, QhullError
from tqdm import tqdm

from qpmlib.analysis.summary import summarise
from qpmlib.backbones import BACKBONES
from qpmlib.config import Profile, get_profile
from qpmlib.embeddings import get_store
from qpmlib.metrics import patch_cls_cosines, patch_contextualisation
from qpmlib.paper import FIG2_AXES, FIG2_METHODS, METRICS, TABLE3_SETTINGS, paper_values
from qpmlib.qp import QPMSolution, selection_summary
from qpmlib.runs.checks import check_profile
from qpmlib.runs.dino_qpm import run_dino_qpm
from qpmlib.runs.evaluate import sid_at
from qpmlib.runs.methods import METHOD_KEYS, METHODS, RunRequest, backbone_overrides, run_methods, sid_k
from qpmlib.runs.run import Run

__all__ = [
    "dataset_overrides",
    "table1_requests",
    "table1_records",
    "table3_backbones",
    "table3_requests",
    "table3_records",
    "table4_requests",
    "table4_records",
    "OPEN_SOLVER_CHECK",
    "qp_setting_label",
    "reproduced_tables",
    "patch_contextualisation_of",
    "backbone_cosines",
    "qp_overview",
    "solver_comparison",
    "radar_area_fraction",
    "radar_frame",
    "radar_scores",
    "inverted_axes",
    "paper_radar",
    "our_radar",
    "radar_areas",
]

_COLUMNS = ["method", "dataset", "seed", "metric", "value"]
_AREA_METHODS = ("polygon", "convex_hull")
#: ``runner(method, profile, seeds, *, overrides, verbose) -> list[Run]``, default
#: :func:`qpmlib.runs.methods.run_methods`; tests pass a fake.
Runner = Callable[..., list[Run]]


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
    """Profile overrides per dataset of Table 1: the profile's dataset, then ``extra_datasets`` (paper: Cars).

    Returns:
        ``{dataset: overrides}`` (:meth:`qpmlib.config.Profile.dataset_overrides`): ``{}`` for the profile's own
        dataset, ``{"data.dataset": d}`` and the profile's ``extra_overrides`` for the others.
    """
    return get_profile(profile).dataset_overrides()


def _run(runner: Runner, prof: Profile, request: RunRequest) -> list[Run]:
    return runner(request.method, prof, request.seeds, overrides=dict(request.overrides), verbose=False)


def table1_requests(profile: str | Profile, seeds: Sequence[int] | None = None, *,
                    methods: Sequence[str] = METHOD_KEYS) -> list[tuple[str, RunRequest]]:
    """The runs of Tables 1 and 2: every method on every dataset (:func:`dataset_overrides`) over the seeds.

    Returns:
        ``(dataset, request)`` pairs, datasets outermost, methods in ``methods`` order.

    Raises:
        ValueError: for an unknown method or empty seeds.
    """
    prof = get_profile(profile)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    seeds = _seeds(prof, seeds)
    return [(dataset, RunRequest.of(method, seeds, overrides))
            for (dataset, overrides), method in itertools.product(dataset_overrides(prof).items(), methods)]


def table1_records(profile: str | Profile, seeds: Sequence[int] | None = None, *,
                   methods: Sequence[str] = METHOD_KEYS, runner: Runner = run_methods,
                   verbose: bool = False) -> pd.DataFrame:
    """Tables 1 and 2: every reproduced method on every dataset and seed.

    Args:
        profile: profile name or object.
        seeds: seeds to run (None: the profile's).
        methods: method keys (default: :data:`qpmlib.runs.methods.METHOD_KEYS`).
        runner: runs one method over the seeds (:func:`qpmlib.runs.methods.run_methods`).
        verbose: progress bar over the (dataset, method) pairs.

    Returns:
        Long DataFrame (method, dataset, seed, metric, value) with the Table 1 metrics (SID as SID@k) and
        Table 2's n_features, n_per_class and seconds_per_epoch.

    Raises:
        ValueError: for an unknown method or empty seeds.
    """
    prof, k = get_profile(profile), sid_k(profile)
    rows: list[dict[str, Any]] = []
    for dataset, request in tqdm(table1_requests(prof, seeds, methods=methods), desc="Table 1", disable=not verbose):
        for run in _run(runner, prof, request):
            metrics = run.metrics | {"sid_at_5": sid_at(run, k)}
            rows += _rows(metrics, method=request.method, dataset=dataset, seed=run.seed)
    return pd.DataFrame(rows, columns=_COLUMNS)


def table3_backbones(profile: str | Profile) -> dict[str, str | None]:
    """The backbone of each Table 3 row on this profile (None: the profile has no such backbone).

    The paper's rows use DINOv2 ViT-B/14 with and without registers. Here the profile's backbone gives the
    size: its register variant for the "reg" rows and its no-register variant for the "noreg" rows, when
    :data:`qpmlib.backbones.BACKBONES` has it (demo: ``standin_s14_reg`` / ``standin_s14``; smoke:
    ``standin_t14_reg`` / ``standin_t14``; ``tiny_vit_test`` has registers and no twin without, so its "noreg" rows
    are None).

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


def table3_requests(profile: str | Profile, seeds: Sequence[int] | None = None) -> list[tuple[str, RunRequest]]:
    """The runs of Table 3: DINO-QPM with each available row's pooling and backbone (:func:`table3_backbones`).

    Returns:
        ``(row, request)`` pairs in :data:`qpmlib.paper.TABLE3_SETTINGS` order.
    """
    prof = get_profile(profile)
    return [(row, RunRequest.of("dino_qpm", _seeds(prof, seeds),
                                {"model.pooling": TABLE3_SETTINGS[row]["pooling"], "backbone.name": backbone}))
            for row, backbone in table3_backbones(prof).items() if backbone is not None]


def table3_records(profile: str | Profile, seeds: Sequence[int] | None = None, *, runner: Runner = run_methods,
                   verbose: bool = False) -> pd.DataFrame:
    """Table 3: DINO-QPM with the f_CLS or F_froz input source, with and without registers.

    Each available row (:func:`table3_backbones`) runs DINO-QPM with ``model.pooling`` from
    :data:`qpmlib.paper.TABLE3_SETTINGS` ("cls": the feature vector is MLP(f_CLS), the maps stay MLP(patches))
    and the row's backbone.

    Args:
        profile: profile name or object.
        seeds: seeds (None: the profile's).
        runner: runs DINO-QPM over the seeds (:func:`qpmlib.runs.methods.run_methods`).
        verbose: progress bar.

    Returns:
        Long DataFrame (row, method="dino_qpm", dataset, seed, metric, value); rows without a backbone on
        this profile are absent.
    """
    prof = get_profile(profile)
    rows: list[dict[str, Any]] = []
    for row, request in tqdm(table3_requests(prof, seeds), desc="Table 3", disable=not verbose):
        for run in _run(runner, prof, request):
            rows += _rows({k: run.metrics.get(k) for k in ("accuracy", "plausibility")},
                          row=row, method="dino_qpm", dataset=prof.data.dataset, seed=run.seed)
    return pd.DataFrame(rows, columns=["row", *_COLUMNS])


def _with_backbone(profile: str | Profile, backbone: str | None) -> Profile:
    prof = get_profile(profile)
    if backbone is not None:
        prof = prof.replace(backbone=dataclasses.replace(prof.backbone, name=backbone))
    check_profile(prof)
    return prof


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
    prof = _with_backbone(profile, backbone)
    total, count = 0.0, 0
    for split in ("train", "test"):
        store = get_store(prof, split, verbose=verbose)
        n = len(store.labels)
        total += n * patch_contextualisation(store.patch_tokens, store.cls, verbose=verbose)
        count += n
    return total / count


def backbone_cosines(profile: str | Profile, backbone: str, split: str = "test") -> np.ndarray:
    """Per-image cos(mean patch token, CLS token) of one backbone's cached tokens on a profile's split.

    The terms whose mean is Patch Contextualisation (:func:`qpmlib.metrics.patch_cls_cosines`); the tokens are
    extracted on first use and read in batches.
    """
    store = get_store(_with_backbone(profile, backbone), split, verbose=False)
    return patch_cls_cosines(store.patch_tokens, store.cls)


def table4_requests(profile: str | Profile, seeds: Sequence[int] | None = None, *,
                    backbones: Sequence[str] | None = None) -> list[tuple[str, RunRequest]]:
    """The runs of Table 4: DINO-QPM on each backbone (default: ``profile.sweeps.backbones``), each with its own
    reference config where it has one (DINO v1: `qpm/dino.yaml`, :func:`qpmlib.runs.methods.backbone_overrides`).

    Returns:
        ``(backbone, request)`` pairs.

    Raises:
        ValueError: for an unknown backbone (lists the valid ones).
    """
    prof = get_profile(profile)
    names = list(prof.sweeps.backbones if backbones is None else backbones)
    unknown = [b for b in names if b not in BACKBONES]
    if unknown:
        raise ValueError(f"unknown backbone(s) {unknown}; valid: {', '.join(BACKBONES)}")
    return [(b, RunRequest.of("dino_qpm", _seeds(prof, seeds), backbone_overrides(prof, b))) for b in names]


def table4_records(profile: str | Profile, seeds: Sequence[int] | None = None, *,
                   backbones: Sequence[str] | None = None, runner: Runner = run_methods,
                   context: Callable[[Profile, str], float] = patch_contextualisation_of,
                   verbose: bool = False) -> pd.DataFrame:
    """Table 4: DINO-QPM's accuracy and the backbone's Patch Contextualisation for each backbone.

    Args:
        profile: profile name or object.
        seeds: seeds (None: the profile's).
        backbones: backbone names (default: ``profile.sweeps.backbones``).
        runner: runs DINO-QPM over the seeds (:func:`qpmlib.runs.methods.run_methods`).
        context: ``context(profile, backbone) -> float`` (default :func:`patch_contextualisation_of`); it
            does not depend on the seed and is stored once per seed so that the table's std is 0.
        verbose: progress bar.

    Returns:
        Long DataFrame (row = backbone, method="dino_qpm", dataset, seed, metric, value) with accuracy and
        patch_contextualisation.
    """
    prof = get_profile(profile)
    rows: list[dict[str, Any]] = []
    for backbone, request in tqdm(table4_requests(prof, seeds, backbones=backbones), desc="Table 4 backbones",
                                  disable=not verbose):
        pc = context(prof, backbone)
        for run in _run(runner, prof, request):
            rows += _rows({"accuracy": run.metrics.get("accuracy"), "patch_contextualisation": pc},
                          row=backbone, method="dino_qpm", dataset=prof.data.dataset, seed=run.seed)
    return pd.DataFrame(rows, columns=["row", *_COLUMNS])


def reproduced_tables(profile: str | Profile, seeds: Sequence[int] | None = None, *,
                      verbose: bool = False) -> dict[str, pd.DataFrame]:
    """Our summaries of the paper's Tables 1-4 (Table 2 is read from the Table 1 runs).

    Returns:
        ``{"table1": ..., "table2": ..., "table3": ..., "table4": ...}``, each
        :func:`qpmlib.analysis.summary.summarise` of its records (Tables 1 and 2 share one).
    """
    t1 = summarise(table1_records(profile, seeds, verbose=verbose))
    return {"table1": t1, "table2": t1, "table3": summarise(table3_records(profile, seeds, verbose=verbose)),
            "table4": summarise(table4_records(profile, seeds, verbose=verbose))}


# ---------------------------------------------------------------------------------------------- the QP
#: The second QP setting the main-results chapter compares with the profile's: the open solver with 1 s.
OPEN_SOLVER_CHECK: dict[str, Any] = {"qp.solver": "open", "qp.time_limit": 1.0, "qp.rounds": None}


def qp_setting_label(profile: str | Profile) -> str:
    """The profile's QP setting in words, e.g. ``"gurobi, 30 s"`` or ``"open, construction only"``."""
    q = get_profile(profile).qp
    limits = []
    if q.rounds is not None:
        limits.append("construction only" if q.rounds == 0 else f"{q.rounds} rounds")
    if q.time_limit is not None:
        limits.append(f"{q.time_limit:g} s")
    return f"{q.solver}, " + (" or ".join(limits) if limits else "no limit")


def qp_overview(profile: str | Profile, seed: int = 0, *,
                overrides: dict[str, Any] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """DINO-QPM's stored selection: which features each class got, and the solver's certificate.

    Args:
        profile: profile name or object.
        seed: run seed.
        overrides: profile overrides of the run.

    Returns:
        ``(selection, solver)``: :func:`qpmlib.qp.selection_summary` (class, features, A, A_sum) and the
        QP stage's metrics (objective, bound, gap, solver, solve_seconds, r_threshold, n_penalised).
    """
    run = run_dino_qpm(profile, seed, overrides=overrides, verbose=False)
    sol = run.qp_solution()
    m = run.stages["qp"].metrics
    solution = QPMSolution(selected=sol["selected"], assignment=sol["assignment"], objective=m["objective"],
                           bound=m["bound"], gap=m["gap"], solver=m["solver"], runtime=m["solve_seconds"])
    return selection_summary(solution, sol["A"]), dict(m)


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
    rows, first = [], None
    for label, overrides in settings.items():
        run = run_dino_qpm(profile, seed, overrides=overrides, verbose=False)
        selected = set(int(i) for i in run.selected)
        first = selected if first is None else first
        m = run.stages["qp"].metrics
        rows.append({"setting": label, "solver": m["solver"], "objective": m["objective"], "bound": m["bound"],
                     "gap": m["gap"], "solve_seconds": m["solve_seconds"],
                     "accuracy": run.metrics["accuracy"], "shared_features": len(selected & first)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- Fig. 2
def radar_area_fraction(values: Sequence[float], *, method: str = "polygon") -> float:
    """Fraction of the regular polygon (every axis at 1) covered by a model's radar polygon.

    With n axes at equal angles 2π/n and radii v_i, the polygon's area is Σ_i ½ v_i v_{i+1} sin(2π/n)
    (indices mod n) and the full polygon's is n · ½ sin(2π/n), so

        polygon:      fraction = Σ_i v_i v_{i+1} / n.

    The authors' radar script (the one behind Fig. 2's "98.4 %") measures the convex hull of the n vertices
    instead, which is larger whenever the polygon is not convex:

        convex_hull:  fraction = area(hull of the n vertices) / (n/2 · sin(2π/n)).

    Args:
        values: n >= 3 radii in [0, 1], one per axis, in plotting order.
        method: "polygon" (closed form above) or "convex_hull" (the authors' Fig. 2 computation).

    Returns:
        The fraction in [0, 1] (all ones -> 1, all 0.5 -> 0.25, alternating 1/0 -> 0 for "polygon").

    Raises:
        ValueError: fewer than 3 values, a value outside [0, 1] or NaN, or an unknown method.
    """
    if method not in _AREA_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(_AREA_METHODS)}")
    v = np.asarray(values, dtype=float).ravel()
    if v.size < 3:
        raise ValueError(f"a radar needs at least 3 axes, got {v.size}")
    if not np.all(np.isfinite(v)) or v.min() < 0 or v.max() > 1:
        raise ValueError(f"radar values must be finite and in [0, 1] (normalise first); got {v.tolist()}")
    n = v.size
    if method == "polygon":
        return float(np.sum(v * np.roll(v, -1)) / n)
    angles = 2 * np.pi * np.arange(n) / n
    points = np.column_stack([v * np.cos(angles), v * np.sin(angles)])  # (n, 2)
    try:
        hull_area = ConvexHull(points).volume  # in 2-D, "volume" is the area
    except QhullError:  # all points on a line (or one point): no area
        hull_area = 0.0
    return float(hull_area / (n / 2 * np.sin(2 * np.pi / n)))


def radar_frame(long: pd.DataFrame, axes: Sequence[tuple[str, str]] = FIG2_AXES, *, value: str = "value",
                key: str = "method", methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Pivot a long table (``paper_values()`` or a summary of ours) into one row per model and one column per axis.

    Args:
        long: columns ``key``, dataset, metric and ``value``. Where no row has the axis' dataset, rows
            with dataset "any" (Table 2) fill it, and an axis with dataset "any" takes any dataset's row.
        axes: (metric, dataset) pairs in plotting order (default: Fig. 2's seven axes).
        value: the column holding the numbers ("value" for the paper, "mean" for ours).
        key: the column naming the models.
        methods: models to keep, in this order (default: all, in order of appearance).

    Returns:
        DataFrame (models × axes). Columns are metric keys when the axes' metrics are distinct (as in
        Fig. 2), else "metric/dataset". Missing cells are NaN.

    Raises:
        ValueError: missing columns, or a requested model is absent.
    """
    missing = {key, "dataset", "metric", value} - set(long.columns)
    if missing:
        raise ValueError(f"long needs columns {sorted({key, 'dataset', 'metric', value})}; missing {sorted(missing)}")
    metrics = [m for m, _ in axes]
    labels = metrics if len(set(metrics)) == len(metrics) else [f"{m}/{d}" for m, d in axes]
    names = list(methods) if methods is not None else list(dict.fromkeys(long[key]))
    absent = [m for m in names if m not in set(long[key])]
    if absent:
        raise ValueError(f"no rows for {absent}; available: {sorted(set(long[key]))}")
    table = pd.DataFrame(index=pd.Index(names, name=key), columns=labels, dtype=float)
    for label, (metric, dataset) in zip(labels, axes):
        rows = long[long["metric"] == metric]
        exact = rows[rows["dataset"] == dataset]
        # Table 2 is not per dataset ("any"): let it fill a dataset axis, and let any dataset fill an "any" axis.
        rows = exact if not exact.empty else rows[(rows["dataset"] == "any") | (dataset == "any")]
        for name in names:
            hit = rows.loc[rows[key] == name, value]
            if not hit.empty:
                table.loc[name, label] = float(hit.iloc[0])
    return table


def inverted_axes(columns: Sequence[str]) -> list[str]:
    """The radar columns whose metric is lower-is-better (the counts N*_f and N^c_f), drawn as 1/x."""
    return [c for c in columns if c.split("/")[0] in METRICS and not METRICS[c.split("/")[0]].higher_is_better]


def radar_scores(table: pd.DataFrame, *, lower_is_better: Sequence[str] | None = None) -> pd.DataFrame:
    """Scale every radar axis to [0, 1] as Fig. 2 does.

    Lower-is-better axes (the counts N*_f and N^c_f) are first replaced by 1/x; then every axis is divided
    by its maximum over the models shown, so the best model on each axis sits at 1.

    Args:
        table: models × axes, raw values (e.g. from ``radar_frame``), all > 0 where inverted.
        lower_is_better: columns to invert; default: columns whose metric has ``higher_is_better=False``.

    Returns:
        DataFrame of the same shape with values in [0, 1] (NaN stays NaN).

    Raises:
        ValueError: a value is negative, or an inverted value is 0.
    """
    invert = inverted_axes(table.columns) if lower_is_better is None else list(lower_is_better)
    values = table.astype(float).copy()
    if (values < 0).any().any():
        raise ValueError("radar values must be >= 0 before scaling")
    for column in invert:
        if (values[column] == 0).any():
            raise ValueError(f"cannot invert {column!r}: it has a 0")
        values[column] = 1.0 / values[column]
    maxima = values.max(axis=0).replace(0.0, 1.0)  # an all-zero axis stays 0
    return values / maxima


def paper_radar() -> pd.DataFrame:
    """The paper's Fig. 2 models x axes, raw values from Tables 1-2."""
    return radar_frame(paper_values(), methods=FIG2_METHODS)


def our_radar(summary: pd.DataFrame, dataset_map: dict[str, str] | None = None) -> pd.DataFrame:
    """Our methods x Fig. 2's axes, from a Table 1 summary (models without a value on every axis left out).

    Args:
        summary: :func:`qpmlib.analysis.summary.summarise` of :func:`table1_records`.
        dataset_map: renames our datasets first, e.g. {"synthbirds": "cub"} to fill the paper's CUB axes.

    Returns:
        Raw values, the methods in :data:`qpmlib.runs.methods.METHOD_KEYS` order.
    """
    long = summary.assign(dataset=summary["dataset"].replace(dataset_map or {}))
    long = long[long["dataset"] == "cub"]
    return radar_frame(long, value="mean", methods=[m for m in METHOD_KEYS if m in set(long["method"])]).dropna()


def radar_areas(table: pd.DataFrame, *, method: str = "convex_hull") -> dict[str, float]:
    """Each model's share of the heptagon after :func:`radar_scores` (the legend of Fig. 2)."""
    return {m: radar_area_fraction(row.to_numpy(), method=method) for m, row in radar_scores(table).iterrows()}
