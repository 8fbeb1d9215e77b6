"""Figures for the chapters: the Fig. 2 radar, λ sweeps (Figs. 9, 11, 12), sparsity and width grids
(Figs. 8, 13), MLP depth (Fig. 7) and ours-beside-the-paper bars.

Every function takes finished numbers (no training here) and returns a ``matplotlib.figure.Figure`` built
without pyplot: nothing is shown, saved or left open in pyplot's figure list, so a notebook cell that ends
with the figure displays it exactly once (``display(fig)`` shows it elsewhere).

Input convention (what ``qpmlib.tables.summarise_runs`` returns): a long DataFrame with a ``metric``
column, a ``mean`` column and optionally a ``std`` column, plus the swept parameter(s). Values of percent
metrics are fractions in [0, 1] and are shown in percent (``percent=True``).

Public names: ``radar_area_fraction``, ``radar_frame``, ``radar_scores``, ``radar_plot``,
``lambda_sweep_plot``, ``depth_plot``, ``grid_heatmap``, ``bar_beside_paper``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from scipy.spatial import ConvexHull, QhullError

from qpmlib.paper import FIG2_AXES, METRICS, method_display, metric_display

_PALETTE = "colorblind"
_LINESTYLES = ("-", "--", ":", "-.")
_AREA_METHODS = ("polygon", "convex_hull")


# ---------------------------------------------------------------------------------------------------
# Radar (Fig. 2)


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


def _lower_is_better(columns: Sequence[str]) -> list[str]:
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
    invert = _lower_is_better(table.columns) if lower_is_better is None else list(lower_is_better)
    values = table.astype(float).copy()
    if (values < 0).any().any():
        raise ValueError("radar values must be >= 0 before scaling")
    for column in invert:
        if (values[column] == 0).any():
            raise ValueError(f"cannot invert {column!r}: it has a 0")
        values[column] = 1.0 / values[column]
    maxima = values.max(axis=0).replace(0.0, 1.0)  # an all-zero axis stays 0
    return values / maxima


def radar_plot(table: pd.DataFrame, axes: Sequence[str] | None = None, *,
               lower_is_better: Sequence[str] | None = None, normalise: bool = True,
               area: str = "convex_hull", highlight: str | None = "dino_qpm",
               title: str | None = None) -> Figure:
    """Radar plot in the style of Fig. 2, with each model's area fraction in the legend.

    Args:
        table: models × axes (index: model keys, e.g. from ``radar_frame``).
        axes: columns to use, in order (default: all columns).
        lower_is_better: passed to ``radar_scores`` (their labels read "1 / ...").
        normalise: True to scale with ``radar_scores``; False when ``table`` is already in [0, 1].
        area: "convex_hull" (default; the authors' computation behind the paper's "98.4 %") or "polygon"
            (the area of the drawn polygon), see ``radar_area_fraction``.
        highlight: model drawn with a thicker line.
        title: axes title.

    Returns:
        Figure with one polar axes holding one closed line per model (n_axes + 1 points); the legend reads
        "<display name> (<area> %)", largest area first.

    Raises:
        ValueError: a model has NaN on an axis, or values outside [0, 1] after scaling.
    """
    columns = list(table.columns) if axes is None else list(axes)
    invert = _lower_is_better(columns) if lower_is_better is None else list(lower_is_better)
    scores = radar_scores(table[columns], lower_is_better=invert) if normalise else table[columns].astype(float)
    if scores.isna().any().any():
        bad = scores.index[scores.isna().any(axis=1)].tolist()
        raise ValueError(f"models {bad} have no value on some axis; drop them or fill the gap")
    fractions = {name: radar_area_fraction(row.to_numpy(), method=area) for name, row in scores.iterrows()}

    n = len(columns)
    angles = np.concatenate([2 * np.pi * np.arange(n) / n, [0.0]])
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.add_subplot(projection="polar")
    colours = sns.color_palette(_PALETTE, len(scores))
    for colour, name in zip(colours, sorted(fractions, key=fractions.get, reverse=True)):
        radii = np.concatenate([scores.loc[name].to_numpy(), scores.loc[name].to_numpy()[:1]])
        ax.plot(angles, radii, color=colour, linewidth=3 if name == highlight else 1.5,
                label=f"{method_display(str(name))} ({100 * fractions[name]:.1f} %)")
    labels = [("1 / " if c in invert else "") + metric_display(c.split("/")[0]) for c in columns]
    ax.set_xticks(angles[:-1], labels)
    ax.set_ylim(0, 1.05)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_rlabel_position(180.0 / n)  # radial tick labels between the first two axes
    ax.legend(loc="upper left", bbox_to_anchor=(1.05, 1.0), fontsize="small", title="model (area)")
    if title:
        ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------------
# Line plots: λ sweeps (Figs. 9, 11, 12) and MLP depth (Fig. 7)


def _scale(metric: str, percent: bool) -> float:
    return 100.0 if percent and metric in METRICS and METRICS[metric].unit == "%" else 1.0


def _check_long(df: pd.DataFrame, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"df needs columns {list(needed)}; missing {missing} (have {list(df.columns)})")


def lambda_sweep_plot(df: pd.DataFrame, x: str, y: str | Sequence[str], hue: str | None = None,
                      reference: float | Mapping[str, float] | None = None, *, style: str | None = None,
                      reference_label: str = "dense model (reference)", percent: bool = True,
                      logx: bool = False, xlabel: str | None = None) -> Figure:
    """Metric(s) against a swept loss weight, one panel per metric, with an optional dense reference line.

    Args:
        df: long table with columns ``x``, metric, mean, optionally std (error bars), ``hue`` and ``style``.
        x: the swept column, e.g. "l1_fm" (Fig. 9), "fdl" (Fig. 11), "l1_fv" (Fig. 12).
        y: metric key(s) to plot, one panel each (e.g. ["accuracy", "plausibility"] for Fig. 9).
        hue: column giving line colours (e.g. "stage": dense / finetune in Fig. 11).
        style: column giving line styles.
        reference: horizontal dashed line(s) for the dense model: one number for every panel, or
            {metric: value}; same units as ``mean``.
        reference_label: legend entry of the reference line.
        percent: show percent metrics × 100.
        logx: symmetric-log x axis (λ grids often include 0).
        xlabel: x label (default: ``x``).

    Returns:
        Figure with len(y) axes; each holds one errorbar container per (hue, style) group and, if
        given, one dashed reference line.

    Raises:
        ValueError: missing columns or a metric absent from ``df``.
    """
    metrics = [y] if isinstance(y, str) else list(y)
    _check_long(df, [x, "metric", "mean"] + [c for c in (hue, style) if c])
    absent = [m for m in metrics if m not in set(df["metric"])]
    if absent:
        raise ValueError(f"metrics {absent} not in df; available: {sorted(set(df['metric']))}")
    fig = Figure(figsize=(4.2 * len(metrics), 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    hues = list(dict.fromkeys(df[hue])) if hue else [None]
    styles = list(dict.fromkeys(df[style])) if style else [None]
    colours = dict(zip(hues, sns.color_palette(_PALETTE, len(hues))))
    for ax, metric in zip(axes, metrics):
        factor = _scale(metric, percent)
        part = df[df["metric"] == metric]
        for h in hues:
            for s_i, s in enumerate(styles):
                line = part
                if hue:
                    line = line[line[hue] == h]
                if style:
                    line = line[line[style] == s]
                if line.empty:
                    continue
                line = line.sort_values(x)
                err = line["std"] * factor if "std" in line.columns else None
                label = ", ".join(str(v) for v in (h, s) if v is not None) or None
                ax.errorbar(line[x], line["mean"] * factor, yerr=err, color=colours[h], marker="o",
                            linestyle=_LINESTYLES[s_i % len(_LINESTYLES)], capsize=3, label=label)
        ref = reference.get(metric) if isinstance(reference, Mapping) else reference
        if ref is not None:
            ax.axhline(ref * factor, color="grey", linestyle="--", linewidth=1, label=reference_label)
        if logx:
            ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(metric_display(metric) + (" [%]" if factor == 100 else ""))
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize="small")
    return fig


def depth_plot(df: pd.DataFrame, *, x: str = "n_layers", metric: str = "accuracy", stage: str = "stage",
               source: str = "pooling", percent: bool = True) -> Figure:
    """Fig. 7: accuracy against MLP depth, dense vs QPM (colour) and patch vs CLS input (line style).

    Args:
        df: long table with columns ``x``, metric, mean, optionally std, ``stage`` and ``source``.
        x: depth column (number of MLP layers; 0 means a linear head on the frozen tokens).
        metric: metric key to plot.
        stage: column with "dense" / "qpm" (or any labels).
        source: column with the feature-vector source, e.g. ``qpmlib.model`` pooling "avg_pooling" / "cls".
        percent: show percent metrics × 100.

    Returns:
        Figure with one axes and one line per (stage, source) pair, integer x ticks.

    Raises:
        ValueError: missing columns or metric.
    """
    fig = lambda_sweep_plot(df, x, metric, hue=stage, style=source, percent=percent,
                            xlabel="MLP layers")
    ax = fig.axes[0]
    ax.set_xticks(sorted(set(df[x])))
    return fig


# ---------------------------------------------------------------------------------------------------
# Grids (Figs. 8, 13) and the side-by-side bars


def grid_heatmap(df: pd.DataFrame, x: str, y: str, value: str = "mean", *, col: str | None = None,
                 metric: str | None = None, percent: bool = True, fmt: str = ".1f",
                 cmap: str = "viridis") -> Figure:
    """Annotated heatmap of a value over a 2-D grid, one panel per ``col`` value.

    Fig. 8: x = "n_per_class" (N^c_f), y = "n_selected" (N*_f), col = "dataset".
    Fig. 13: x = "hidden_size" (N_hidden), y = "n_features" (N_f).

    Args:
        df: long table with columns ``x``, ``y``, ``value`` (and ``col``, metric if used).
        x, y: grid axes.
        value: the number to colour ("mean").
        col: facet column (one heatmap per value), or None.
        metric: keep only rows with this metric (needs a metric column); also sets the percent scaling.
        percent: show percent metrics × 100.
        fmt: annotation format.
        cmap: colour map.

    Returns:
        Figure with one heatmap axes (plus its colour-bar axes) per panel.

    Raises:
        ValueError: missing columns, no rows left, or two rows for one grid cell.
    """
    _check_long(df, [x, y, value] + [c for c in (col,) if c] + (["metric"] if metric else []))
    data = df[df["metric"] == metric] if metric else df
    if data.empty:
        raise ValueError(f"no rows for metric {metric!r}")
    factor = _scale(metric, percent) if metric else 1.0
    panels = list(dict.fromkeys(data[col])) if col else [None]
    fig = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        part = data[data[col] == panel] if col else data
        if part.duplicated([x, y]).any():
            raise ValueError(f"several rows share one ({x}, {y}) cell; summarise the seeds first")
        grid = part.pivot(index=y, columns=x, values=value).sort_index(ascending=False) * factor
        sns.heatmap(grid, ax=ax, annot=True, fmt=fmt, cmap=cmap,
                    cbar_kws={"label": metric_display(metric) if metric else value})
        if col:
            ax.set_title(f"{col} = {panel}")
    return fig


def bar_beside_paper(table: pd.DataFrame, *, metrics: Sequence[str] | None = None) -> Figure:
    """Grouped bars, ours beside the paper, one panel per (metric, dataset), with ours' std as error bars.

    Args:
        table: the output of ``qpmlib.tables.beside_paper`` (columns row, dataset, metric, ours_mean,
            ours_std, paper_value, paper_std).
        metrics: metrics to show (default: every metric with at least one number on either side).

    Returns:
        Figure with one axes per (metric, dataset) pair; each axes holds two bar containers (ours, paper)
        with one bar per row (a missing value is a bar of height NaN, drawn as nothing).

    Raises:
        ValueError: missing columns or nothing to plot.
    """
    _check_long(table, ["row", "dataset", "metric", "ours_mean", "ours_std", "paper_value", "paper_std"])
    has_number = table["ours_mean"].notna() | table["paper_value"].notna()
    shown = table[has_number & (table["metric"].isin(metrics) if metrics is not None else True)]
    pairs = list(dict.fromkeys(zip(shown["metric"], shown["dataset"])))
    if not pairs:
        raise ValueError("nothing to plot: no row has a number on either side")
    ncols = min(3, len(pairs))
    nrows = int(np.ceil(len(pairs) / ncols))
    fig = Figure(figsize=(4.8 * ncols, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    ours_colour, paper_colour = sns.color_palette(_PALETTE, 2)
    for ax, (metric, dataset) in zip(axes, pairs):
        part = shown[(shown["metric"] == metric) & (shown["dataset"] == dataset)]
        position = np.arange(len(part))
        ax.bar(position - 0.2, part["ours_mean"], width=0.4, yerr=part["ours_std"], capsize=3,
               color=ours_colour, label="ours")
        ax.bar(position + 0.2, part["paper_value"], width=0.4, yerr=part["paper_std"], capsize=3,
               color=paper_colour, label="paper")
        ax.set_xticks(position, [method_display(r) for r in part["row"]], rotation=30, ha="right",
                      fontsize="small")
        unit = METRICS[metric].unit if metric in METRICS else ""
        ax.set_title(f"{metric_display(metric)} ({dataset})")
        ax.set_ylabel({"%": "%", "s": "seconds", "count": "count"}.get(unit, ""))
    for ax in axes[len(pairs):]:
        fig.delaxes(ax)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=2)
    return fig


def figure_png(fig: Figure, *, dpi: int = 72) -> bytes:
    """PNG bytes of a figure, e.g. for an ``ipywidgets.Image`` that a drop-down updates.

    Args:
        fig: the figure.
        dpi: resolution.

    Returns:
        the PNG file's bytes.
    """
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
