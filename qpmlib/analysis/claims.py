"""Judging the paper's claims: each :class:`qpmlib.paper.Claim` by its own relation and bound.

    rows = [judge("fig9", rho_accuracy, measured="ρ(λ_L1-FM, QPM accuracy)"),
            judge("fig9", rho_plausibility, measured="ρ(λ_L1-FM, QPM Plausibility)")]
    table = verdict_table(rows); agreeing(table), judged(table)

A chapter computes its statistic (a correlation, a spread, a gap) and hands it to :func:`judge`; the verdict
(agrees: yes, no, or n/a when the statistic is undefined here) follows from the claim alone.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import pandas as pd

from qpmlib.paper import Claim, claim

__all__ = ["RELATIONS", "holds", "criterion", "judge", "verdict_table", "agreeing", "judged"]

#: How each relation compares a statistic x with the claim's value v.
RELATIONS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_SHOWN = {">=": "≥", "<=": "≤"}


def holds(c: Claim, observed: float) -> bool | None:
    """Whether ``observed`` satisfies the claim's relation; None when it is NaN or infinite (cannot judge)."""
    if observed is None or not math.isfinite(observed):
        return None
    if c.relation == "≈":
        return abs(observed - c.value) <= c.tolerance
    if c.relation not in RELATIONS:
        raise ValueError(f"claim {c.key!r} has relation {c.relation!r}; valid: {', '.join([*RELATIONS, '≈'])}")
    return bool(RELATIONS[c.relation](observed, c.value))


def criterion(c: Claim, measured: str) -> str:
    """The test in words, e.g. "ρ(λ_L1-FM, QPM accuracy) > 0" or "dense accuracy spread over depths < 1 point"."""
    unit = {"points": " point" if c.value == 1 else " points", "%": " %", "seeds": " seeds"}.get(c.unit, "")
    bound = f"{c.value:g}{unit}" + (f" ± {c.tolerance:g}" if c.relation == "≈" and c.tolerance else "")
    return f"{measured} {_SHOWN.get(c.relation, c.relation)} {bound}"


def judge(key: str, observed: float, *, measured: str | None = None, digits: int = 2) -> dict[str, str]:
    """One row of a "does the reproduction agree?" table: a claim of the paper beside our statistic.

    Args:
        key: the claim's key in :data:`qpmlib.paper.CLAIMS`, e.g. "fig9".
        observed: our statistic, in the claim's unit; NaN when undefined here.
        measured: our statistic in words for the criterion column (default: the claim's ``quantity``).
        digits: decimals of ``observed``.

    Returns:
        {"figure", "paper says", "ours", "criterion", "agrees"} with agrees "yes", "no" or "n/a".

    Raises:
        ValueError: for an unknown claim (the message lists the keys).
    """
    c = claim(key)
    verdict = holds(c, observed)
    source = c.source
    figure = "Fig. " + source.removeprefix("fig") if source.startswith("fig") else "Sec. " + source.removeprefix("sec")
    return {
        "figure": figure,
        "paper says": f"“{c.text}”",
        "ours": "undefined" if verdict is None else f"{observed:.{digits}f}",
        "criterion": criterion(c, measured or c.quantity),
        "agrees": "n/a" if verdict is None else ("yes" if verdict else "no"),
    }


def verdict_table(rows: Sequence[dict[str, str]]) -> pd.DataFrame:
    """The rows of :func:`judge` as a table."""
    return pd.DataFrame(list(rows), columns=["figure", "paper says", "ours", "criterion", "agrees"])


def agreeing(table: pd.DataFrame) -> int:
    """How many claims of a :func:`verdict_table` agree."""
    return int((table["agrees"] == "yes").sum())


def judged(table: pd.DataFrame) -> int:
    """How many claims of a :func:`verdict_table` could be judged (not "n/a")."""
    return int((table["agrees"] != "n/a").sum())
