"""qpmlib.meter and qpmlib.runs.provenance.measured: the time and peak memory of a stage."""

import time

import numpy as np

from qpmlib.meter import Meter, rss_mib
from qpmlib.results import ResultData
from qpmlib.runs.provenance import STAGE_FIGURES, measured


def _hold(mib: int, seconds: float) -> None:
    """Hold ``mib`` MiB of touched memory for ``seconds``, then free it."""
    block = np.ones(mib * 2**20 // 8)
    time.sleep(seconds)
    del block


def test_meter_sees_a_peak_that_is_gone_at_the_end():
    before = rss_mib()
    with Meter(interval=0.02) as meter:
        _hold(200, 0.3)
    assert 0.3 <= meter.seconds < 60  # a loaded machine takes a while to touch 200 MiB
    assert meter.peak_rss_mib >= before + 150  # freed before the end: only a sample (or ru_maxrss) sees it
    assert meter.peak_cuda_mib is None and set(meter.figures()) == {"seconds", "peak_rss_mib", "peak_cuda_mib"}


def test_meter_before_the_work_has_no_figures():
    assert Meter().figures() == {"seconds": None, "peak_rss_mib": None, "peak_cuda_mib": None}


def test_measured_writes_the_figures_into_every_result():
    def stage():
        time.sleep(0.05)
        return [ResultData(metrics={}, provenance={"seed": s}) for s in (0, 1)]

    out = measured(stage, "cpu")
    assert [d.provenance["seed"] for d in out] == [0, 1]
    for data in out:  # stacked seeds share one measurement
        assert set(STAGE_FIGURES) <= set(data.provenance) and data.provenance["stage_seconds"] >= 0.05
        assert data.provenance["peak_rss_mib"] > 0 and data.provenance["peak_cuda_mib"] is None
    one = measured(lambda: ResultData(metrics={}, provenance={}))
    assert one.provenance["stage_seconds"] >= 0
