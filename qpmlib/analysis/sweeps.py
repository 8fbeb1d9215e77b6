"""Sweeps for the ablation chapters: run a grid of pipeline variations and return long tables (Figs. 7-13).

Each sweep parameter maps to the profile field(s) the reference code's config changes for that experiment
(reference_spec §8.3) and is passed to DINO-QPM's runs as a dotted override (:func:`sweep_requests` lists them
as :class:`qpmlib.runs.methods.RunRequest` values, :func:`sweep_grid` runs them). The pipeline
caches its three stages separately (``dense``, ``qp``, ``qpm``), each under a hash of what determines it, so a
fine-tune-only variation (λ_L1-FM, λ_L1-FV, fine-tune λ_div) trains the dense model and solves the QP once per
seed, and a sparsity variation trains the dense model once per seed; :data:`SWEEPS` records what each parameter
reuses.

    df = sweep("smoke", "l1_fm")                         # grid from profile.sweeps.l1_fm, profile seeds
    df = figure_sweep("smoke", "fig9")                   # the same: Fig. 9's grid (FIGURE_GRIDS)
    table = summarise(df)                                # qpmlib.analysis.summary: mean, std, n over seeds
    trend(table, "l1_fm", "accuracy", stage="dino_qpm")  # Spearman correlation of the means with λ

Long format (one row per run, stage and metric): the swept column(s) (``l1_fm``; ``n_selected`` and
``n_per_class`` for ``sparsity``), ``seed``, ``stage`` (``"dense"`` or ``"dino_qpm"``, the method keys of
:data:`qpmlib.paper.METHODS`), ``metric`` (keys of :data:`qpmlib.paper.METRICS` and the pipeline's extras) and
``value`` (fractions in [0, 1] for accuracy-like metrics; NaN where a metric is undefined, e.g. SID@5 with fewer
than 5 features per class).

Public names: :class:`Sweep`, :data:`SWEEPS`, :data:`STAGES`, :data:`FIGURE_GRIDS`, :func:`sweep_values`,
:func:`overrides_for`, :func:`sweep_requests`, :func:`sweep`, :func:`sweep_grid`, :func:`figure_sweep`,
:func:`means_table`, :func:`trend`, :func:`spread`, :func:`stage_gap` and the chapters' small helpers.
The paper's statements about these figures are judged by :mod:`qpmlib.analysis.claims`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from tqdm import tqdm

from qpmlib.config import Profile, get_profile
from qpmlib.model import POOLINGS
from qpmlib.paper import METRICS, method_display, metric_display
from qpmlib.runs.methods import RunRequest, run_methods
from qpmlib.runs.run import Run

__all__ = [
    "Sweep",
    "SWEEPS",
    "STAGES",
    "Runner",
    "sweep_values",
    "overrides_for",
    "sweep",
    "sweep_requests",
    "sweep_grid",
    "FIGURE_GRIDS",
    "figure_sweep",
    "means_table",
    "trend",
    "spread",
    "stage_gap",
    "SOURCE_LABELS",
    "shown_value",
    "stage_means",
    "value_at",
    "min_trend",
    "defined_metrics",
]

#: Readable name of each feature-vector source (``model.pooling``), as Fig. 7 and Table 3 call them.
SOURCE_LABELS = {"avg_pooling": "patches (F_froz)", "cls": "CLS (f_CLS)"}

#: Stages a sweep reports: the dense model ("Dense F_froz") and the fine-tuned DINO-QPM.
STAGES = ("dense", "dino_qpm")

#: ``runner(method, profile, seeds, *, overrides, verbose) -> list[Run]``, default
#: :func:`qpmlib.runs.methods.run_methods` (results store; on a GPU the missing seeds train together).
Runner = Callable[..., list[Run]]


@dataclass(frozen=True)
class Sweep:
    """One sweepable parameter.

    Attributes:
        keys: dotted profile fields it sets (see :func:`qpmlib.config.apply_overrides`).
        columns: the DataFrame column(s) holding its value; one column for several keys means the same value
            goes to every key (λ_div in both stages), one column per key means the value is a tuple.
        reuses: pipeline stages shared by all values of this parameter (same seed): ``("dense", "qp")``,
            ``("dense",)`` or ``()``.
        figure: the paper's figure(s).
        label: axis label.
    """

    keys: tuple[str, ...]
    columns: tuple[str, ...]
    reuses: tuple[str, ...]
    figure: str
    label: str


#: Sweep parameters (reference_spec §8.3, §3.4). Grids for the first seven come from ``profile.sweeps``.
SWEEPS: dict[str, Sweep] = {
    "l1_fm": Sweep(("train.ft_l1_fm",), ("l1_fm",), ("dense", "qp"), "Figs. 9-10", "λ_L1-FM (fine-tune)"),
    "l1_fv": Sweep(("train.ft_l1_fv",), ("l1_fv",), ("dense", "qp"), "Fig. 12", "λ_L1-FV (fine-tune)"),
    "fdl": Sweep(("train.dense_fdl", "train.ft_fdl"), ("fdl",), (), "Fig. 11", "λ_div (dense and fine-tune)"),
    "ft_fdl": Sweep(("train.ft_fdl",), ("ft_fdl",), ("dense", "qp"), "Fig. 11", "λ_div (fine-tune only)"),
    "dense_fdl": Sweep(("train.dense_fdl",), ("dense_fdl",), (), "Fig. 11", "λ_div (dense only)"),
    "n_layers": Sweep(("model.n_layers",), ("n_layers",), (), "Fig. 7", "MLP layers"),
    "pooling": Sweep(("model.pooling",), ("pooling",), (), "Fig. 7, Table 3", "feature-vector source"),
    "hidden_size": Sweep(("model.hidden_size",), ("hidden_size",), (), "Fig. 13", "N_hidden"),
    "n_features": Sweep(("model.n_features",), ("n_features",), (), "Fig. 13", "N_f"),
    "sparsity": Sweep(("qp.n_selected", "qp.n_per_class"), ("n_selected", "n_per_class"), ("dense",), "Fig. 8",
                      "(N*_f, N^c_f)"),
    "n_selected": Sweep(("qp.n_selected",), ("n_selected",), ("dense",), "Fig. 8", "N*_f"),
    "n_per_class": Sweep(("qp.n_per_class",), ("n_per_class",), ("dense",), "Fig. 8", "N^c_f"),
}


def _check_param(param: str) -> Sweep:
    if param not in SWEEPS:
        raise ValueError(f"unknown sweep parameter {param!r}; valid: {', '.join(SWEEPS)}")
    return SWEEPS[param]


#: The grid of each ablation figure of the paper (the values come from the profile's ``sweeps``).
FIGURE_GRIDS: dict[str, dict[str, None]] = {
    "fig7": {"n_layers": None, "pooling": None},
    "fig8": {"sparsity": None},
    "fig9": {"l1_fm": None},
    "fig11": {"fdl": None},
    "fig12": {"l1_fv": None},
    "fig13": {"hidden_size": None, "n_features": None},
}


def sweep_values(profile: str | Profile, param: str) -> tuple[Any, ...]:
    """The grid of ``param`` for a profile: ``profile.sweeps.<param>``; both poolings for ``"pooling"``.

    Args:
        profile: a profile or its name.
        param: a :data:`SWEEPS` key that has a grid (l1_fm, fdl, l1_fv, n_layers, hidden_size, n_features,
            sparsity, pooling).

    Returns:
        The values in grid order.

    Raises:
        ValueError: unknown parameter, or one without a grid in the profile (pass ``values`` explicitly then).
    """
    _check_param(param)
    prof = get_profile(profile)
    if param == "pooling":
        return POOLINGS
    if not hasattr(prof.sweeps, param):
        raise ValueError(f"profile {prof.name!r} has no grid for {param!r} (grids: "
                         f"{', '.join(f for f in prof.sweeps.__dataclass_fields__ if f != 'backbones')}, "
                         "pooling); pass values= explicitly")
    return tuple(getattr(prof.sweeps, param))


def shown_value(profile: str | Profile, param: str) -> Any:
    """The value a chapter shows by default: the profile's own value of a one-field parameter when it is on the
    grid, else the grid's largest value."""
    values = sweep_values(profile, param)
    section, name = _check_param(param).keys[0].split(".")
    own = getattr(getattr(get_profile(profile), section), name)
    return own if own in values else max(values)


def overrides_for(param: str, value: Any) -> dict[str, Any]:
    """The dotted overrides that set ``param`` to ``value`` (reference_spec §8.3).

    Args:
        param: a :data:`SWEEPS` key.
        value: a number or pooling name; a pair (N*_f, N^c_f) for ``"sparsity"``.

    Returns:
        ``{"train.ft_l1_fm": 5.0}``, ``{"train.dense_fdl": 1.0, "train.ft_fdl": 1.0}``, ...

    Raises:
        ValueError: unknown parameter, or a value of the wrong length for a paired parameter.
    """
    spec = _check_param(param)
    if len(spec.columns) == 1:
        return {key: value for key in spec.keys}
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != len(spec.keys):
        raise ValueError(f"{param} takes {len(spec.keys)} values {spec.columns} per grid point, got {value!r}")
    return dict(zip(spec.keys, value))


def _columns(param: str, value: Any) -> dict[str, Any]:
    spec = SWEEPS[param]
    return {spec.columns[0]: value} if len(spec.columns) == 1 else dict(zip(spec.columns, value))


def _number(value: Any) -> float | None:
    """A metric value as float (None -> NaN); None for non-numeric entries such as the solver name."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def sweep_requests(
    profile: str | Profile,
    grid: Mapping[str, Sequence[Any] | None],
    *,
    seeds: Sequence[int] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> list[tuple[dict[str, Any], RunRequest]]:
    """The DINO-QPM runs of a sweep: every combination of the grid's values over the seeds.

    Args:
        profile: a profile or its name.
        grid: ``{param: values}`` with :data:`SWEEPS` keys; None takes :func:`sweep_values`. The full product
            is run, e.g. ``{"n_layers": None, "pooling": None}`` for Fig. 7.
        seeds: run seeds; None: ``profile.sweeps.seeds``, or the profile's seeds when that is empty.
        fixed: further dotted overrides applied to every run (must not touch the swept fields).

    Returns:
        ``(columns, request)`` per grid point in grid order, ``columns`` holding the swept values
        (:attr:`Sweep.columns`).

    Raises:
        ValueError: unknown parameter, an empty grid or seed list, or two parameters (or ``fixed``) setting the
            same field.
    """
    prof = get_profile(profile)
    if not grid:
        raise ValueError("grid is empty; give at least one parameter, e.g. {'l1_fm': None}")
    seeds = tuple((prof.sweeps.seeds or prof.seeds) if seeds is None else seeds)
    if not seeds:
        raise ValueError("seeds is empty; pass None for the profile's seeds")
    values = {p: tuple(sweep_values(prof, p) if v is None else v) for p, v in grid.items()}
    for p, vs in values.items():
        if not vs:
            raise ValueError(f"no values for {p!r}")
    owners: dict[str, str] = {k: "fixed" for k in (fixed or {})}
    for p in values:
        for key in SWEEPS[p].keys:
            if key in owners:
                raise ValueError(f"{p!r} and {owners[key]!r} both set {key}; sweep each field once")
            owners[key] = p
    out = []
    for combo in itertools.product(*values.values()):
        overrides = dict(fixed or {})
        columns: dict[str, Any] = {}
        for p, v in zip(values, combo):
            overrides.update(overrides_for(p, v))
            columns.update(_columns(p, v))
        out.append((columns, RunRequest.of("dino_qpm", seeds, overrides)))
    return out


def sweep_grid(
    profile: str | Profile,
    grid: Mapping[str, Sequence[Any] | None],
    *,
    seeds: Sequence[int] | None = None,
    stages: Sequence[str] = STAGES,
    fixed: Mapping[str, Any] | None = None,
    runner: Runner = run_methods,
    verbose: bool = False,
) -> pd.DataFrame:
    """Run (or load) every combination of several sweep parameters for every seed (:func:`sweep_requests`).

    Args:
        profile, grid, seeds, fixed: see :func:`sweep_requests`.
        stages: which stages to report, a subset of :data:`STAGES`. A run without a QPM stage
            (``model.n_layers == 0``, reference_spec §6.1) gives dense rows only.
        runner: runs DINO-QPM over the seeds of one grid point (:data:`Runner`).
        verbose: a progress bar over the grid points, and the pipeline's own progress.

    Returns:
        Long DataFrame with one column per swept value (``Sweep.columns``), then ``seed``, ``stage``,
        ``metric`` and ``value`` (float, NaN when undefined); non-numeric metrics are dropped. Rows follow the
        grid order, seeds innermost.

    Raises:
        ValueError: unknown parameter or stage, and see :func:`sweep_requests`.
    """
    prof = get_profile(profile)
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ValueError(f"stages must be a non-empty subset of {STAGES}, got {list(stages)}")
    requests = sweep_requests(prof, grid, seeds=seeds, fixed=fixed)
    rows = []
    for columns, request in tqdm(requests, desc="sweep", disable=not verbose):
        for run in runner(request.method, prof, request.seeds, overrides=dict(request.overrides), verbose=verbose):
            metrics = run.stage_metrics()
            for stage in stages:
                for name, raw in metrics.get(stage, {}).items():
                    number = _number(raw)
                    if number is not None:
                        rows.append({**columns, "seed": run.seed, "stage": stage, "metric": name, "value": number})
    cols = [c for p in grid for c in SWEEPS[p].columns] + ["seed", "stage", "metric", "value"]
    return pd.DataFrame.from_records(rows, columns=cols)


def figure_sweep(profile: str | Profile, figure: str, *, seeds: Sequence[int] | None = None,
                 runner: Runner = run_methods, verbose: bool = False) -> pd.DataFrame:
    """The sweep behind one ablation figure (:data:`FIGURE_GRIDS`), as :func:`sweep_grid` returns it.

    Raises:
        ValueError: for a figure without a grid (lists the figures).
    """
    if figure not in FIGURE_GRIDS:
        raise ValueError(f"no sweep for {figure!r}; figures: {', '.join(FIGURE_GRIDS)}")
    return sweep_grid(profile, FIGURE_GRIDS[figure], seeds=seeds, runner=runner, verbose=verbose)


def sweep(
    profile: str | Profile,
    param: str,
    values: Sequence[Any] | None = None,
    *,
    seeds: Sequence[int] | None = None,
    stages: Sequence[str] = STAGES,
    fixed: Mapping[str, Any] | None = None,
    runner: Runner = run_methods,
    verbose: bool = False,
) -> pd.DataFrame:
    """One-parameter sweep: :func:`sweep_grid` with ``{param: values}``.

    Args:
        profile: a profile or its name.
        param: a :data:`SWEEPS` key, e.g. "l1_fm" (Fig. 9), "fdl" (Fig. 11), "sparsity" (Fig. 8).
        values: the values to try; None: :func:`sweep_values` (``profile.sweeps``).
        seeds, stages, fixed, runner, verbose: see :func:`sweep_grid`.

    Returns:
        The long DataFrame of :func:`sweep_grid`.

    Raises:
        ValueError: see :func:`sweep_grid`.
    """
    return sweep_grid(profile, {param: values}, seeds=seeds, stages=stages, fixed=fixed, runner=runner,
                      verbose=verbose)


def means_table(summary: pd.DataFrame, index: str | Sequence[str], metrics: Sequence[str], *,
                percent: bool = True, digits: int = 1) -> pd.DataFrame:
    """Means of a sweep summary, one row per grid point and one column per (stage, metric), display names.

    Args:
        summary: :func:`qpmlib.analysis.summary.summarise` of a sweep table.
        index: the swept column(s), e.g. "l1_fm" or ["n_selected", "n_per_class"].
        metrics: metric keys, in column order.
        percent: show percent metrics (unit "%" in :data:`qpmlib.paper.METRICS`) × 100.
        digits: rounding.

    Returns:
        DataFrame indexed by ``index`` with (stage, metric) column pairs, e.g. ("DINO-QPM", "Accuracy").

    Raises:
        ValueError: when none of ``metrics`` is in ``summary``.
    """
    part = summary[summary["metric"].isin(metrics)]
    if part.empty:
        raise ValueError(f"none of {list(metrics)} in the summary; metrics: {sorted(set(summary['metric']))}")
    keys = [index] if isinstance(index, str) else list(index)
    columns = {}
    for stage in STAGES:
        for metric in metrics:
            cell = part[(part["stage"] == stage) & (part["metric"] == metric)]
            if not cell.empty:
                scale = 100.0 if percent and metric in METRICS and METRICS[metric].unit == "%" else 1.0
                columns[(method_display(stage), metric_display(metric))] = cell.set_index(keys)["mean"] * scale
    table = pd.DataFrame(columns)
    table.columns = pd.MultiIndex.from_tuples(list(columns), names=["stage", "metric"])
    return table.round(digits)


def _select(summary: pd.DataFrame, metric: str, stage: str | None, where: Mapping[str, Any] | None) -> pd.DataFrame:
    part = summary[summary["metric"] == metric]
    if stage is not None:
        part = part[part["stage"] == stage]
    for column, wanted in (where or {}).items():
        part = part[part[column] == wanted]
    if part.empty:
        raise ValueError(f"no rows for metric={metric!r}, stage={stage!r}, where={dict(where or {})}; "
                         f"metrics: {sorted(set(summary['metric']))}, stages: {sorted(set(summary['stage']))}")
    return part


def trend(summary: pd.DataFrame, x: str, metric: str, *, stage: str = "dino_qpm",
          where: Mapping[str, Any] | None = None) -> float:
    """Spearman rank correlation between a swept value and a metric's mean (+1: rises with x, -1: falls).

    Args:
        summary: :func:`qpmlib.analysis.summary.summarise` of a sweep table.
        x: the swept column, e.g. "l1_fm".
        metric: metric key, e.g. "accuracy".
        stage: "dense" or "dino_qpm".
        where: further column filters, e.g. {"pooling": "avg_pooling"}.

    Returns:
        The correlation in [-1, 1]; NaN with fewer than two finite points or a constant x or mean.

    Raises:
        ValueError: when no row matches (the message lists the metrics and stages present).
    """
    part = _select(summary, metric, stage, where)
    xs, ys = part[x].to_numpy(dtype=float), part["mean"].to_numpy(dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    if len(xs) < 2 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return math.nan
    return float(spearmanr(xs, ys).statistic)


def spread(summary: pd.DataFrame, metric: str, *, stage: str = "dino_qpm",
           where: Mapping[str, Any] | None = None) -> float:
    """Largest minus smallest mean of a metric over a sweep (Fig. 8's "variation in accuracy").

    Args:
        summary: :func:`qpmlib.analysis.summary.summarise` of a sweep table.
        metric: metric key.
        stage: "dense" or "dino_qpm".
        where: further column filters.

    Returns:
        max − min of the finite means, in the metric's own unit (fractions for accuracy); NaN if none.

    Raises:
        ValueError: when no row matches.
    """
    means = _select(summary, metric, stage, where)["mean"].to_numpy(dtype=float)
    means = means[np.isfinite(means)]
    return float(means.max() - means.min()) if means.size else math.nan


def stage_gap(summary: pd.DataFrame, x: str, metric: str = "accuracy", *,
              where: Mapping[str, Any] | None = None) -> pd.Series:
    """DINO-QPM's mean minus the dense model's mean at each value of ``x`` (Fig. 7's "QPM beats dense").

    Args:
        summary: :func:`qpmlib.analysis.summary.summarise` of a sweep table with both stages.
        x: the swept column, e.g. "n_layers".
        metric: metric key.
        where: further column filters, e.g. {"pooling": "avg_pooling"}.

    Returns:
        Series indexed by the values of ``x`` where both stages exist (ascending), named "<metric> gap".

    Raises:
        ValueError: when a stage has no matching rows, or one value of x appears twice (filter with where).
    """
    sides = []
    for stage in ("dino_qpm", "dense"):
        part = _select(summary, metric, stage, where)
        if part[x].duplicated().any():
            raise ValueError(f"several {stage} rows share one {x} value; narrow them with where=")
        sides.append(part.set_index(x)["mean"])
    qpm, dense = sides
    common = sorted(set(qpm.index) & set(dense.index))
    return (qpm.loc[common] - dense.loc[common]).rename(f"{metric} gap")


def stage_means(summary: pd.DataFrame, stage: str = "dense") -> dict[str, float]:
    """Each metric's mean over all grid points of one stage (the dense reference line of Figs. 9 and 12, whose
    grid points share one dense model)."""
    return summary[summary["stage"] == stage].groupby("metric")["mean"].mean().to_dict()


def value_at(summary: pd.DataFrame, x: str, value: Any, metric: str = "accuracy", *,
             stage: str = "dino_qpm") -> float:
    """The mean of ``metric`` at one grid point ``x == value``.

    Raises:
        ValueError: when no row matches (see :func:`trend`) or the grid point is absent.
    """
    part = _select(summary, metric, stage, None).set_index(x)["mean"]
    if value not in part.index:
        raise ValueError(f"{x} = {value!r} is not on the grid; values: {list(part.index)}")
    return float(part.loc[value])


def min_trend(summary: pd.DataFrame, x: str, metric: str, over: str, *, stage: str = "dino_qpm") -> float:
    """The smallest :func:`trend` of ``metric`` along ``x`` over the values of another swept column ``over``
    (Fig. 13: width against accuracy for every N_f); NaN when any of them is undefined."""
    rhos = [trend(summary, x, metric, stage=stage, where={over: v}) for v in sorted(set(summary[over]))]
    return float(pd.Series(rhos, dtype=float).min(skipna=False))


def defined_metrics(summaries: Sequence[pd.DataFrame], candidates: Sequence[str], *,
                    stage: str = "dino_qpm") -> list[str]:
    """The candidates whose mean is defined at every grid point of every summary (for a metric drop-down)."""
    def defined(summary: pd.DataFrame, metric: str) -> bool:
        part = summary[(summary["stage"] == stage) & (summary["metric"] == metric)]
        return bool(part["mean"].notna().all())

    return [m for m in candidates if all(defined(s, m) for s in summaries)]
