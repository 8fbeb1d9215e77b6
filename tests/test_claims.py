"""qpmlib.analysis.claims: each claim of the paper judged by its own relation and bound."""

import math

import pytest

from qpmlib.analysis import claims
from qpmlib.paper import claim


def test_judge_rows_follow_the_claims_test():
    row = claims.judge("fig8", 0.456, measured="QPM accuracy spread over the grid")
    assert row == {"figure": "Fig. 8", "paper says": f"“{claim('fig8').text}”", "ours": "0.46",
                   "criterion": "QPM accuracy spread over the grid < 1 point", "agrees": "yes"}
    assert claims.judge("fig8", 1.5)["agrees"] == "no"
    gap = claims.judge("fig7_gap", 5.0, measured="QPM − dense at 4 layers")
    assert gap["criterion"] == "QPM − dense at 4 layers ≥ 5 points" and gap["agrees"] == "yes"
    assert "almost 10%" in gap["paper says"] and claims.judge("fig7_gap", 4.99)["agrees"] == "no"
    assert claims.judge("fig9", 0.2, measured="ρ(λ_L1-FM, QPM accuracy)")["criterion"] == \
        "ρ(λ_L1-FM, QPM accuracy) > 0"
    assert claims.judge("sec1", 12.0)["figure"] == "Sec. 1"


def test_undefined_statistics_cannot_be_judged():
    row = claims.judge("fig11", float("nan"))
    assert row["agrees"] == "n/a" and row["ours"] == "undefined"
    assert claims.holds(claim("fig11"), math.inf) is None


def test_approximate_claims_use_their_tolerance():
    assert claims.holds(claim("fig2"), 97.5) is True and claims.holds(claim("fig2"), 97.3) is False
    assert claims.criterion(claim("fig2"), "area") == "area ≈ 98.4 % ± 1"


def test_verdict_counts_and_unknown_claims():
    table = claims.verdict_table([claims.judge("fig9", 0.5), claims.judge("fig9", -0.5),
                                  claims.judge("fig12", float("nan"))])
    assert (claims.agreeing(table), claims.judged(table)) == (1, 2)
    with pytest.raises(ValueError, match="fig7_dense"):
        claims.judge("fig99", 1.0)
