"""Plots for the chapters: the Fig. 2 radar, λ sweeps (Figs. 9, 11, 12), sparsity and width grids
(Figs. 8, 13), MLP depth (Fig. 7), ours-beside-the-paper bars and the Patch Contextualisation histogram.

Every function takes finished numbers (no training here) and returns a ``matplotlib.figure.Figure`` built
without pyplot: nothing is shown, saved or left open in pyplot's figure list, so a notebook cell that ends
with the figure displays it exactly once (``display(fig)`` shows it elsewhere).

Input convention (what :func:`qpmlib.analysis.summary.summarise` returns): a long DataFrame with a ``metric``
column, a ``mean`` column and optionally a ``std`` column, plus the swept parameter(s). Values of percent
metrics are fractions in [0, 1] and are shown in percent (``percent=True``). The radar's numbers (axes, scaling,
areas) come from :mod:`qpmlib.analysis.tables`.

Public names: ``radar_plot``, ``lambda_sweep_plot``, ``depth_plot``, ``grid_heatmap``, ``sweep_heatmap``,
``bar_beside_paper``, ``cosine_histogram``, ``figure_png``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from qpmlib.analysis.sweeps import SWEEPS
from qpmlib.analysis.tables import inverted_axes, radar_area_fraction, radar_scores
from qpmlib.paper import METRICS, method_display, metric_display

__all__ = ["radar_plot", "lambda_sweep_plot", "depth_plot", "grid_heatmap", "sweep_heatmap", "bar_beside_paper",
           "cosine_histogram", "figure_png"]

_PALETTE = "colorblind"
_LINESTYLES = ("-", "--", ":", "-.")


# ---------------------------------------------------------------------------------------------------
# Radar (Fig. 2)


def radar_plot(table: pd.DataFrame, axes: Sequence[str] | None = None, *,
               lower_is_better: Sequence[str] | None = None, normalise: bool = True,
               area: str = "convex_hull", highlight: str | None = "dino_qpm",
               title: str | None = None) -> Figure:
    """Radar plot in the style of Fig. 2, with each model's area fraction in the legend.

    Args:
        table: models × axes (index: model keys, e.g. from :func:`qpmlib.analysis.tables.radar_frame`).
        axes: columns to use, in order (default: all columns).
        lower_is_better: passed to :func:`~qpmlib.analysis.tables.radar_scores` (their labels read "1 / ...").
        normalise: True to scale with ``radar_scores``; False when ``table`` is already in [0, 1].
        area: "convex_hull" (default; the authors' computation behind the paper's "98.4 %") or "polygon"
            (the area of the drawn polygon), see :func:`~qpmlib.analysis.tables.radar_area_fraction`.
        highlight: model drawn with a thicker line.
        title: axes title.

    Returns:
        Figure with one polar axes holding one closed line per model (n_axes + 1 points); the legend reads
        "<display name> (<area> %)", largest area first.

    Raises:
        ValueError: a model has NaN on an axis, or values outside [0, 1] after scaling.
    """
    columns = list(table.columns) if axes is None else list(axes)
    invert = inverted_axes(columns) if lower_is_better is None else list(lower_is_better)
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


def sweep_heatmap(summary: pd.DataFrame, x: str, y: str, metric: str) -> Figure:
    """:func:`grid_heatmap` of a sweep summary with the sweep parameters' axis names (Figs. 8, 13).

    Args:
        summary: :func:`qpmlib.analysis.summary.summarise` of a two-parameter sweep, one stage.
        x, y: swept columns (keys of :data:`qpmlib.analysis.sweeps.SWEEPS`).
        metric: metric key to colour.
    """
    labels = {p: SWEEPS[p].label for p in (x, y)}
    return grid_heatmap(summary.rename(columns=labels), x=labels[x], y=labels[y], metric=metric)


def bar_beside_paper(table: pd.DataFrame, *, metrics: Sequence[str] | None = None) -> Figure:
    """Grouped bars, ours beside the paper, one panel per (metric, dataset), with ours' std as error bars.

    Args:
        table: the output of :func:`qpmlib.analysis.summary.beside_paper` (columns row, dataset, metric, ours_mean,
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


def cosine_histogram(values: np.ndarray, *, title: str = "") -> Figure:
    """Histogram of per-image cosines with their mean marked.

    Args:
        values: (N,) cosines, e.g. from :func:`qpmlib.analysis.tables.backbone_cosines`.
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


def figure_png(fig: Figure, *, dpi: int = 72) -> bytes:
    """PNG bytes of a figure, e.g. for an ``ipywidgets.Image`` that a drop-down updates.

    Args:
        fig: the figure.
        dpi: resolution.

    Returns:
        the PNG file's bytes.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
