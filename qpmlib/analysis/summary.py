"""Summaries over seeds and the comparison with the paper: one ``summarise``, one ``beside_paper``.

Standard deviation: the paper reports "the mean and standard deviation across 5 random seeds" (Sec. 9)
without saying which estimator. The authors' aggregation script (``aggregate_results_new.py``) uses the
population standard deviation (``ddof=0``), so that is the default here; pass ``ddof=1`` for the sample
standard deviation. With a single run there is no spread to report: the std is NaN and the formatted string
has no "±" part.

Public names: ``mean_std``, ``format_mean_std``, ``summarise`` (mean ± std over seeds of any long table),
``wide_table``, ``beside_paper`` (one table of the paper), ``gather_beside_paper`` (all of them, with reasons),
``beside_value``, ``reproduction_verdict``, ``styled``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from qpmlib.paper import METHODS, METRICS, TABLES, method_display, metric_display, paper_values

__all__ = ["MISSING", "METRIC_REASONS", "mean_std", "format_mean_std", "summarise", "wide_table", "paper_table",
           "method_gap", "paper_dataset_map", "beside_paper", "gather_beside_paper", "table_rows", "beside_value",
           "reproduction_verdict", "styled", "headline_table"]

MISSING = "n/a"  # what a table shows instead of "nan"

#: Why a reproduced metric may differ from the paper even on the paper profile (reference_spec §4.6, §5, §10).
METRIC_REASONS: dict[str, str] = {
    "plausibility": "test split and min-shifted CAM, as the reference code (§10 rows 9-10)",
    "sid_at_5": "test split, classes with ≥ 5 weights only, as the reference code (§10 row 11)",
    "seconds_per_epoch": "hardware-dependent: the paper timed an RTX 3090 on cached embeddings (§4.6); seeds "
                         "trained together (on a GPU) report their shared epoch time divided by the seed count",
}


def mean_std(values: Iterable[float], *, ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation over seeds, ignoring NaN entries.

    Args:
        values: one number per run (any iterable of floats; NaN marks a run without the metric).
        ddof: 0 for the population std (the authors' aggregation), 1 for the sample std.

    Returns:
        (mean, std). The mean is NaN when no finite value is given; the std is NaN when fewer than two
        finite values are given (one seed has no spread).

    Raises:
        ValueError: ddof is not 0 or 1.
    """
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 (population std, the authors' choice) or 1 (sample std), got {ddof!r}")
    array = np.asarray(list(values), dtype=float).ravel()
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return math.nan, math.nan
    mean = float(finite.mean())
    std = float(finite.std(ddof=ddof)) if finite.size >= 2 else math.nan
    return mean, std


def _missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def format_mean_std(mean: float | None, std: float | None = None, *, digits: int = 1,
                    percent: bool = True) -> str:
    """Format a mean and its spread as the paper prints them, e.g. "88.3 ± 0.2".

    Args:
        mean: the mean; None or NaN gives "n/a".
        std: the standard deviation; None or NaN (a single run) drops the "± ..." part.
        digits: decimals shown for both numbers.
        percent: True when ``mean``/``std`` are fractions in [0, 1] to be shown in percent (x 100, no "%"
            sign: the column header carries the unit); False to show them as given.

    Returns:
        "88.3 ± 0.2", "88.3" (no spread) or "n/a"; never "nan".

    Raises:
        ValueError: digits is negative.
    """
    if digits < 0:
        raise ValueError(f"digits must be >= 0, got {digits}")
    if _missing(mean):
        return MISSING
    scale = 100.0 if percent else 1.0
    text = f"{float(mean) * scale:.{digits}f}"
    if not _missing(std):
        text += f" ± {float(std) * scale:.{digits}f}"
    return text


def summarise(records: pd.DataFrame, *, ddof: int = 0) -> pd.DataFrame:
    """Mean and std over seeds of a long table: one row per group of every column except ``seed`` and ``value``.

    Works for the Table records of :mod:`qpmlib.analysis.tables` (method, dataset, [row,] metric) and the sweep
    tables of :mod:`qpmlib.analysis.sweeps` (swept columns, stage, metric) alike.

    Args:
        records: long table with columns ``seed`` and ``value`` (NaN marks a run without the metric) and any
            key columns.
        ddof: passed to :func:`mean_std` (0: population std, the authors' aggregation).

    Returns:
        One row per group with the key columns, ``mean``, ``std`` (NaN for a single seed) and ``n`` (the number
        of finite values), in the order the groups first appear.

    Raises:
        ValueError: when ``seed`` or ``value`` is missing.
    """
    missing = {"seed", "value"} - set(records.columns)
    if missing:
        raise ValueError(f"records need columns seed and value (a long table); missing {sorted(missing)}")
    keys = [c for c in records.columns if c not in ("seed", "value")]
    rows = []
    for group, frame in records.groupby(keys, sort=False, dropna=False):
        mean, std = mean_std(frame["value"], ddof=ddof)
        values = np.asarray(frame["value"], dtype=float)
        rows.append({**dict(zip(keys, group)), "mean": mean, "std": std, "n": int(np.isfinite(values).sum())})
    return pd.DataFrame.from_records(rows, columns=[*keys, "mean", "std", "n"])


def wide_table(summary: pd.DataFrame, metrics: Iterable[str], *, digits: int = 1) -> pd.DataFrame:
    """A summary as one row per method and one column per (metric, dataset) of "mean ± std" text.

    Args:
        summary: output of :func:`summarise` with columns method, dataset, metric, mean, std.
        metrics: metric keys to show, in order of appearance in ``summary``.
        digits: decimals; percent metrics are shown × 100.

    Returns:
        DataFrame indexed by the methods' display names with columns "<Metric> / <dataset>".
    """
    view = summary[summary["metric"].isin(list(metrics))].copy()
    view["text"] = [format_mean_std(m, s, digits=digits, percent=METRICS[x].unit == "%")
                    for m, s, x in zip(view["mean"], view["std"], view["metric"])]
    view["column"] = view["metric"].map(metric_display) + " / " + view["dataset"]
    return view.pivot_table(index="method", columns="column", values="text", aggfunc="first",
                            sort=False).rename(index=method_display)


def paper_table(table: str) -> pd.DataFrame:
    """The paper's own numbers of one table as it prints them: one row per row label, one column per metric
    (and dataset, where the table has several), display names.

    Raises:
        ValueError: for an unknown table (the message lists the valid ones).
    """
    values = paper_values(table)
    column = values["metric"].map(metric_display)
    if values["dataset"].nunique() > 1:
        column = column + " / " + values["dataset"]
    return values.assign(metric=column).pivot_table(index="row", columns="metric", values="value",
                                                    sort=False).rename(index=method_display)


def method_gap(summary: pd.DataFrame, method: str, baseline: str, metric: str = "accuracy") -> pd.Series:
    """One method's mean minus another's, per dataset, in percentage points (e.g. DINO-QPM minus Dense F_froz).

    Args:
        summary: :func:`summarise` of Table 1 records (columns method, dataset, metric, mean).
        method: the method whose gain is measured.
        baseline: the method it is compared with.
        metric: a percent metric.

    Returns:
        Series indexed by the datasets where both methods have a row, in order of appearance.
    """
    means = summary[summary["metric"] == metric].set_index(["method", "dataset"])["mean"]
    datasets = [d for d in dict.fromkeys(summary["dataset"])
                if (method, d) in means.index and (baseline, d) in means.index]
    return pd.Series({d: 100 * (means[(method, d)] - means[(baseline, d)]) for d in datasets}, dtype=float,
                     name=f"{metric} gap")


def paper_dataset_map(profile) -> dict[str, str] | None:
    """The renaming that sets a profile's results beside the paper's: datasets the paper does not report
    (SynthBirds) go beside its CUB column; None when every dataset is the paper's own."""
    reported = set(paper_values()["dataset"]) - {"any"}  # CUB-200-2011 and Stanford Cars
    mapping = {d: "cub" for d in (profile.data.dataset, *profile.extra_datasets) if d not in reported}
    return mapping or None


def _paper_text(value: float, std: float, unit: str) -> str:
    if _missing(value):
        return "−"
    digits = 1 if unit == "%" else 0
    return format_mean_std(value, std, digits=digits, percent=False)


def beside_paper(ours: pd.DataFrame, table: str, *, ours_in_percent: bool = False,
                 dataset_map: dict[str, str] | None = None, digits: int = 1) -> pd.DataFrame:
    """Put our results next to the paper's for one table.

    Rows are matched on (row, dataset, metric). For Tables 1-2 the row key is the method key; for Tables
    3-4 it is a ``TABLE3_SETTINGS`` key or a backbone key, given in a ``row`` column of ``ours`` (when
    ``ours`` has no ``row`` column its ``method`` column is used). Table 2's rows have dataset "any" and
    match our rows of every dataset.

    Args:
        ours: long table with columns method (or row), dataset, metric, mean, std (std may be NaN).
        table: "table1" .. "table4".
        ours_in_percent: False when our accuracy-like metrics are fractions in [0, 1] (what
            ``qpmlib.metrics`` returns); they are then multiplied by 100 to compare with the paper.
        dataset_map: renames our datasets before matching, e.g. {"synthbirds": "cub"} to set a demo run
            beside the paper's CUB numbers (the note says so).
        digits: decimals of the formatted "ours" column (counts use 0).

    Returns:
        One row per cell in either table, the paper's order first, with columns row, method, dataset,
        metric, ours (formatted "mean ± std" or "n/a"), paper (formatted, "−" where the paper has no value),
        difference (ours − paper in the paper's unit: percentage points, counts or seconds; NaN when either
        is missing), note, and the numbers ours_mean, ours_std, paper_value, paper_std.
        Reported-only methods (ResNet50) appear with ours "n/a" and a note saying they are not reproduced.

    Raises:
        ValueError: unknown table or metric, missing columns in ``ours``, or several rows of ``ours`` for
            one cell (unsummarised seeds, or two datasets mapped onto one).
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; valid names: {', '.join(TABLES)}")
    key = "row" if "row" in ours.columns else "method"
    required = {key, "dataset", "metric", "mean", "std"}
    missing = required - set(ours.columns)
    if missing:
        raise ValueError(f"ours needs columns {sorted(required)}; missing {sorted(missing)}")
    unknown = set(ours["metric"]) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; valid names: {', '.join(METRICS)}")

    mine = ours.rename(columns={key: "row", "mean": "ours_mean", "std": "ours_std"})
    mine = mine[["row", "dataset", "metric", "ours_mean", "ours_std"]].copy()
    mapped = pd.Series([(dataset_map or {}).get(d, d) for d in mine["dataset"]], index=mine.index)
    mine["dataset_note"] = np.where(mapped != mine["dataset"], "ours on " + mine["dataset"].astype(str), "")
    mine["dataset"] = mapped
    keys = ["row", "dataset", "metric"]
    duplicated = mine.duplicated(keys)
    if duplicated.any():
        first = mine.loc[duplicated, keys].iloc[0].tolist()
        raise ValueError(f"ours has several rows for {first} (after dataset_map); summarise the seeds first "
                         "(summarise) or compare one dataset at a time")
    paper = paper_values(table).rename(columns={"value": "paper_value", "std": "paper_std"})

    # Table 2 is not per dataset: expand its "any" rows onto every dataset we report.
    if (paper["dataset"] == "any").all() and not mine.empty:
        paper = paper.drop(columns="dataset").merge(
            pd.DataFrame({"dataset": list(dict.fromkeys(mine["dataset"]))}), how="cross")

    merged = paper.merge(mine, on=keys, how="outer", indicator=True, sort=False)
    order = {k: i for i, k in enumerate(zip(*(paper[c] for c in keys)))}
    merged["_order"] = [order.get(k, len(order) + i) for i, k in enumerate(zip(*(merged[c] for c in keys)))]
    merged = merged.sort_values("_order", kind="stable").reset_index(drop=True)

    rows = []
    for rec in merged.to_dict("records"):
        unit = METRICS[rec["metric"]].unit
        scale = 100.0 if (unit == "%" and not ours_in_percent) else 1.0
        ours_mean = math.nan if _missing(rec["ours_mean"]) else rec["ours_mean"] * scale
        ours_std = math.nan if _missing(rec["ours_std"]) else rec["ours_std"] * scale
        notes = [n for n in (rec["note"], rec["dataset_note"]) if isinstance(n, str) and n]
        if rec["_merge"] == "right_only":
            notes.append("not reported in the paper")
        elif rec["_merge"] == "left_only" and METHODS[rec["method"]].reproduced \
                and not _missing(rec["paper_value"]):
            notes.append("not run in this profile")
        rows.append({
            "row": rec["row"],
            "method": rec["method"] if isinstance(rec["method"], str) else rec["row"],
            "dataset": rec["dataset"],
            "metric": rec["metric"],
            "ours": format_mean_std(ours_mean, ours_std, digits=0 if unit == "count" else digits, percent=False),
            "paper": _paper_text(rec["paper_value"], rec["paper_std"], unit),
            "difference": ours_mean - rec["paper_value"],
            "note": "; ".join(notes),
            "ours_mean": ours_mean,
            "ours_std": ours_std,
            "paper_value": rec["paper_value"],
            "paper_std": rec["paper_std"],
        })
    return pd.DataFrame.from_records(rows, columns=[
        "row", "method", "dataset", "metric", "ours", "paper", "difference", "note",
        "ours_mean", "ours_std", "paper_value", "paper_std"])


def gather_beside_paper(
    ours: Mapping[str, pd.DataFrame],
    *,
    dataset_map: Mapping[str, str] | None = None,
    setting_reason: str = "",
) -> pd.DataFrame:
    """Every reproduced number beside the paper's, one table for all of the paper's Tables 1-4.

    Args:
        ours: table name ("table1" .. "table4") -> summarised results (columns method or row, dataset, metric,
            mean, std; fractions for %-metrics, as :func:`summarise` gives them). Metrics that are not columns
            of that table are ignored, so one summary can serve Tables 1 and 2.
        dataset_map: passed to :func:`beside_paper` (e.g. {"synthbirds": "cub"}).
        setting_reason: why every reproduced value may differ (e.g. "SynthBirds and random weights"), put first
            in the ``reason`` of each compared cell.

    Returns:
        DataFrame with columns ``table``, ``row``, ``method``, ``dataset``, ``metric``, ``ours``, ``paper``,
        ``difference`` (ours − paper in the paper's unit), ``reason`` and the numbers ``ours_mean``,
        ``ours_std``, ``paper_value``, ``paper_std`` (what :func:`qpmlib.figures.plots.bar_beside_paper`
        draws). Only cells that have our value or that we should have reproduced are kept (the paper's
        reported-only ResNet50 rows are left out).

    Raises:
        ValueError: for an unknown table name (see :func:`beside_paper` for the rest).
    """
    parts = []
    for table, frame in ours.items():
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; valid names: {', '.join(TABLES)}")
        frame = frame[frame["metric"].isin(set(paper_values(table)["metric"]))]  # only the table's own columns
        beside = beside_paper(frame, table, dataset_map=dict(dataset_map or {}))
        beside.insert(0, "table", table)
        parts.append(beside)
    columns = ["table", "row", "method", "dataset", "metric", "ours", "paper", "difference", "reason",
               "ours_mean", "ours_std", "paper_value", "paper_std"]
    if not parts:
        return pd.DataFrame(columns=columns)
    df = pd.concat(parts, ignore_index=True)
    df = df[df["ours_mean"].notna() | ~df["note"].str.contains("reported only", regex=False)].copy()

    def reason(rec) -> str:
        notes = []
        if not math.isnan(rec["ours_mean"]) and not math.isnan(rec["paper_value"]):
            notes += [setting_reason] if setting_reason else []
            notes += [METRIC_REASONS[rec["metric"]]] if rec["metric"] in METRIC_REASONS else []
        notes += [rec["note"]] if rec["note"] else []
        return "; ".join(notes)

    df["reason"] = [reason(r) for r in df.to_dict("records")]
    return df[columns].reset_index(drop=True)


def table_rows(beside: pd.DataFrame, table: str) -> pd.DataFrame:
    """The rows of one of the paper's tables in a :func:`gather_beside_paper` table, for the datasets we ran."""
    part = beside[beside["table"] == table]
    return part[part["dataset"].isin(part.loc[part["ours_mean"].notna(), "dataset"])]


def beside_value(beside: pd.DataFrame, row: str, metric: str, dataset: str | None = None,
                 *, column: str = "ours_mean", table: str | None = None) -> float:
    """One number of a :func:`beside_paper` (or :func:`gather_beside_paper`) table.

    Args:
        beside: the table.
        row: row key (method, Table 3 row or backbone).
        metric: metric key.
        dataset: dataset after ``dataset_map`` (None: any).
        column: "ours_mean", "paper_value", "difference", ...
        table: the paper's table (for a :func:`gather_beside_paper` table; None: any).

    Returns:
        The value; NaN when the table has no such cell (e.g. a Table 3 row this profile cannot run).
    """
    hit = beside[(beside["row"] == row) & (beside["metric"] == metric)]
    if dataset is not None:
        hit = hit[hit["dataset"] == dataset]
    if table is not None:
        hit = hit[hit["table"] == table]
    return float(hit[column].iloc[0]) if len(hit) else math.nan


def reproduction_verdict(difference: float, tolerance: float, *, unit: str = "points",
                         what: str = "this value") -> str:
    """One sentence on whether a reproduced value agrees with the paper.

    Args:
        difference: ours − paper, in ``unit`` (NaN when one side is missing).
        tolerance: the largest absolute difference still called agreement (same unit), >= 0.
        unit: how the difference is measured ("points" for percentages, "s", ...).
        what: the subject of the sentence, e.g. "DINO-QPM's CUB accuracy".

    Returns:
        E.g. "DINO-QPM's CUB accuracy agrees with the paper within 1.0 points (ours − paper = -0.4 points)."
        or "... differs from the paper by +3.2 points, more than the tolerance of 1.0 points."

    Raises:
        ValueError: tolerance is negative or NaN.
    """
    if _missing(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    subject = what[:1].upper() + what[1:]
    if _missing(difference):
        return f"{subject} cannot be compared with the paper: one side has no value."
    if abs(difference) <= tolerance:
        return (f"{subject} agrees with the paper within {tolerance:.1f} {unit} "
                f"(ours − paper = {difference:+.1f} {unit}).")
    return (f"{subject} differs from the paper by {difference:+.1f} {unit}, "
            f"more than the tolerance of {tolerance:.1f} {unit}.")


def styled(beside: pd.DataFrame, *, tolerance: float = 1.0):
    """A pandas Styler of a ``beside_paper`` table for notebooks: display names, differences coloured.

    Args:
        beside: the output of ``beside_paper``.
        tolerance: differences with absolute value above this are highlighted.

    Returns:
        pandas.io.formats.style.Styler showing method, dataset, metric, ours, paper, difference and note.
    """
    view = beside.assign(
        method=[method_display(r) for r in beside["row"]],
        metric=[metric_display(m) for m in beside["metric"]],
    )[["method", "dataset", "metric", "ours", "paper", "difference", "note"]]

    def colour(value):
        if _missing(value):
            return ""
        return "color: #b30000" if abs(value) > tolerance else "color: #006400"

    return (view.style.format({"difference": lambda v: MISSING if _missing(v) else f"{v:+.1f}"})
            .map(colour, subset=["difference"]).hide(axis="index"))


def headline_table(beside: pd.DataFrame, metrics: Sequence[str], *, dataset: str | None = None,
                   digits: int = 1) -> pd.DataFrame:
    """The short form of a :func:`beside_paper` table: one row per method we ran, one column per metric.

    Args:
        beside: a :func:`beside_paper` (or one table of a :func:`gather_beside_paper`) table.
        metrics: metric keys, in column order (those we did not run are left out).
        dataset: keep this dataset only (after ``dataset_map``; None: all rows, which must then be one dataset).
        digits: decimals.

    Returns:
        Cells "ours (paper)", e.g. "71.3 (88.6)", "−" for a missing paper value and :data:`MISSING` for a
        metric not run for a method; rows in the table's order, named by :func:`~qpmlib.paper.method_display`,
        columns by :func:`~qpmlib.paper.metric_display`.
    """
    part = beside[beside["metric"].isin(metrics) & beside["ours_mean"].notna()]
    if dataset is not None:
        part = part[part["dataset"] == dataset]

    def text(value: float) -> str:
        return "−" if _missing(value) else f"{value:.{digits}f}"

    cells = [f"{text(o)} ({text(p)})" for o, p in zip(part["ours_mean"], part["paper_value"])]
    wide = part.assign(cell=cells).pivot_table(index="row", columns="metric", values="cell", aggfunc="first",
                                               sort=False)
    wide = wide.reindex(columns=[m for m in metrics if m in wide.columns]).fillna(MISSING)
    wide.index = pd.Index([method_display(r) for r in wide.index], name="method")
    wide.columns = pd.Index([metric_display(m) for m in wide.columns], name=None)
    return wide
