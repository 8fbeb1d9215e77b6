"""Where a number comes from: the git commit, the device and the library versions, one helper each.

The chapters' provenance line (:mod:`qpmlib.book.chapter`), the book's run record (:mod:`qpmlib.book.runner`)
and the results store's provenance of each stage (:mod:`qpmlib.runs.dino_qpm`, :mod:`qpmlib.runs.baselines`)
all describe the machine with these functions; :func:`measured` adds each stage's wall time and peak memory
(:class:`qpmlib.meter.Meter`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch

from qpmlib.meter import Meter
from qpmlib.paths import REPO_ROOT
from qpmlib.train import resolve_device

__all__ = ["git_commit", "device_label", "package_versions", "STAGE_FIGURES", "measured"]

#: The provenance fields :func:`measured` writes: the stage's wall time and peak memory in this process.
STAGE_FIGURES = ("stage_seconds", "peak_rss_mib", "peak_cuda_mib")


def git_commit(*, short: bool = True, mark_changes: bool = False) -> str | None:
    """The checked-out commit of the repository.

    Args:
        short: the abbreviated hash (``git rev-parse --short``) instead of the full one.
        mark_changes: append "+uncommitted changes" when tracked files differ from the commit.

    Returns:
        The hash, or None outside a git checkout (or without git).
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", *(["--short"] if short else []), "HEAD")
        if mark_changes and git("status", "--porcelain", "--untracked-files=no"):
            commit += "+uncommitted changes"
    except (OSError, subprocess.SubprocessError):
        return None
    return commit or None


def device_label(device: str | torch.device = "auto") -> str:
    """What a computation on ``device`` runs on, for people: "GPU (NVIDIA H100 ...)" or "CPU (16 cores)".

    Args:
        device: "auto", "cpu", "cuda" or "cuda:<n>" (see :func:`qpmlib.train.resolve_device`).

    Raises:
        ValueError: when CUDA is asked for but not available.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(dev)})"
    return f"CPU ({os.cpu_count()} cores)"


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each distribution in ``names`` ("not installed" when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def measured(compute: Callable[[], Any], device: str | torch.device | None = None) -> Any:
    """Run ``compute()`` (returning a ``ResultData`` or a list of them) under a :class:`~qpmlib.meter.Meter` and add
    :data:`STAGE_FIGURES` to the provenance of each result (stacked seeds share one measurement)."""
    with Meter(device=device) as meter:
        out = compute()
    figures = dict(zip(STAGE_FIGURES, (meter.seconds, meter.peak_rss_mib, meter.peak_cuda_mib)))
    for data in out if isinstance(out, list) else [out]:
        data.provenance.update(figures)
    return out
