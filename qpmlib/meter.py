"""Time and peak memory of one piece of work (a training stage, an extraction), for the book's compute table.

    with Meter() as meter:
        train_something()
    meter.figures()   # {"seconds": 12.3, "peak_rss_mib": 1830.0, "peak_cuda_mib": None}

The peak resident memory of a stage inside a long-lived process cannot be read from the kernel's own counter
(``ru_maxrss`` only grows), so a daemon thread samples the resident set every ``interval`` seconds; when the
process's all-time peak rose during the stage, that peak (exact) is used instead. On a GPU the CUDA allocator's
peak is reset at the start and read at the end. The stages store these figures in their provenance
(:mod:`qpmlib.runs.dino_qpm`, :mod:`qpmlib.runs.baselines`), the embedding stores in their manifest.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from typing import Any

import torch

__all__ = ["rss_mib", "Meter"]

_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 0.0


def _max_rss_mib() -> float:
    """The process's all-time peak resident set in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """The process's current resident set in MiB (its all-time peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_MIB
    except (OSError, IndexError, ValueError):
        return _max_rss_mib()


class Meter:
    """Context manager that measures wall time, peak resident memory and (on a GPU) peak CUDA memory.

    Args:
        interval: seconds between two samples of the resident set.
        device: the torch device the work runs on; its CUDA peak is measured when it is a CUDA device.
    """

    def __init__(self, interval: float = 0.2, device: str | torch.device | None = None) -> None:
        self.interval = interval
        self.device = torch.device(device) if device is not None and str(device) != "auto" else None
        self.seconds: float | None = None
        self.peak_rss_mib: float | None = None
        self.peak_cuda_mib: float | None = None
        self._stop = threading.Event()
        self._peak = 0.0

    def _cuda(self) -> bool:
        if self.device is not None:
            return self.device.type == "cuda" and torch.cuda.is_available()
        return torch.cuda.is_available()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, rss_mib())

    def __enter__(self) -> "Meter":
        self._max_before = _max_rss_mib()
        self._peak = rss_mib()
        if self._cuda():
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, name="qpmlib-meter", daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        peak = max(self._peak, rss_mib())
        max_after = _max_rss_mib()
        self.peak_rss_mib = max_after if max_after > self._max_before else peak
        if self._cuda():
            self.peak_cuda_mib = torch.cuda.max_memory_allocated(self.device) / 2**20

    def figures(self) -> dict[str, float | None]:
        """``{"seconds", "peak_rss_mib", "peak_cuda_mib"}`` (None before the work ended; CUDA None on a CPU)."""
        return {"seconds": self.seconds, "peak_rss_mib": self.peak_rss_mib, "peak_cuda_mib": self.peak_cuda_mib}
