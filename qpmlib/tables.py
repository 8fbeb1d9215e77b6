"""Tables for the chapters: seed statistics, "mean ± std" strings and ours-beside-the-paper joins.

Standard deviation: the paper reports "the mean and standard deviation across 5 random seeds" (Sec. 9)
without saying which estimator. The authors' aggregation script (``aggregate_results_new.py``) uses the
population standard deviation (``ddof=0``), so that is the default here; pass ``ddof=1`` for the sample
standard deviation. With a single run there is no spread to report: the std is NaN and the formatted string
has no "±" part.

Public names: ``mean_std``, ``format_mean_std``, ``summarise_runs``, ``beside_paper``,
``reproduction_verdict``, ``styled``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from qpmlib.paper import METHODS, METRICS, TABLES, method_display, metric_display, paper_values

MISSING = "n/a"  # what a table shows instead of "nan"


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


def summarise_runs(records: pd.DataFrame, *, ddof: int = 0) -> pd.DataFrame:
    """Mean and std over seeds for every method and metric.

    Args:
        records: long table with columns method, seed, metric, value, and optionally more key columns
            (dataset, row, profile, ...) that are kept as grouping keys.
        ddof: passed to ``mean_std``.

    Returns:
        One row per group (all columns except seed and value) with columns <keys>, mean, std and n (the
        number of finite values), in the order the groups first appear.

    Raises:
        ValueError: a required column is missing.
    """
    required = {"method", "seed", "metric", "value"}
    missing = required - set(records.columns)
    if missing:
        raise ValueError(f"records needs columns {sorted(required)}; missing {sorted(missing)}")
    keys = [c for c in records.columns if c not in ("seed", "value")]
    rows = []
    for group, frame in records.groupby(keys, sort=False, dropna=False):
        mean, std = mean_std(frame["value"], ddof=ddof)
        values = np.asarray(frame["value"], dtype=float)
        rows.append({**dict(zip(keys, group)), "mean": mean, "std": std, "n": int(np.isfinite(values).sum())})
    return pd.DataFrame.from_records(rows, columns=[*keys, "mean", "std", "n"])


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
                         "(summarise_runs) or compare one dataset at a time")
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
