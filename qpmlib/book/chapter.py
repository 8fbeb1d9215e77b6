"""What every chapter does first: pick the profile, say what produced the numbers, warn about random weights.

A chapter's first code cell after ``parameters`` is::

    from qpmlib.book.chapter import start
    prof = start(profile)

which displays the provenance line (profile, dataset, backbone and whether its weights are pretrained, seeds,
device, commit) and, when the backbone has no pretrained weights here, a banner saying that the numbers show the
pipeline working, not DINOv2's quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qpmlib.backbones import pretrained_available
from qpmlib.config import Profile, get_profile
from qpmlib.runs.provenance import device_label, git_commit

__all__ = ["Provenance", "provenance", "provenance_line", "banner_markdown", "start", "plain_value", "glue"]


@dataclass(frozen=True)
class Provenance:
    """Where a chapter's numbers come from."""

    profile: str
    dataset: str
    backbone: str
    pretrained: bool
    seeds: tuple[int, ...]
    device: str
    commit: str


def provenance(profile: str | Profile) -> Provenance:
    """Collect the provenance of a chapter run on ``profile``."""
    prof = get_profile(profile)
    datasets = "+".join((prof.data.dataset, *prof.extra_datasets))
    return Provenance(
        profile=prof.name,
        dataset=datasets,
        backbone=prof.backbone.name,
        pretrained=pretrained_available(prof.backbone.name, prof.backbone.weights),
        seeds=prof.seeds,
        device=device_label(prof.train.device),
        commit=git_commit() or "unknown",
    )


def provenance_line(p: Provenance) -> str:
    """One Markdown line naming everything that produced a chapter's numbers."""
    weights = "pretrained weights" if p.pretrained else "**random weights**"
    seeds = ", ".join(str(s) for s in p.seeds)
    return (
        f"*Provenance:* profile `{p.profile}` · dataset {p.dataset} · backbone `{p.backbone}` ({weights}) · "
        f"seeds {seeds} · {p.device} · commit `{p.commit}`"
    )


def banner_markdown(p: Provenance) -> str | None:
    """A warning block when the backbone runs with random weights, else None."""
    if p.pretrained:
        return None
    return (
        ":::{warning}\n"
        f"The backbone `{p.backbone}` runs with **fixed random weights** here, because no pretrained weights are "
        "available on this machine. The numbers below show the pipeline working end to end on the "
        f"`{p.profile}` profile; they say nothing about DINOv2's quality. Use the `paper` profile with real "
        "weights and data to reproduce the paper's values.\n:::"
    )


def _inline_figures() -> None:
    """Make figures render as PNG in the notebook, whatever ``MPLBACKEND`` the kernel inherited."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")


def start(profile: str | Profile) -> Profile:
    """Display the provenance line (and the random-weights banner) and return the profile.

    Raises:
        ValueError: for an unknown profile name (the message lists the valid ones).
    """
    from IPython.display import Markdown, display

    prof = get_profile(profile)
    _inline_figures()
    p = provenance(prof)
    notice = banner_markdown(p)
    if notice is not None:
        # Rendered as an admonition by MyST in the book and as a bold note in Jupyter.
        display(Markdown(notice.replace(":::{warning}\n", "**Warning.** ").replace("\n:::", "")))
    display(Markdown(provenance_line(p)))
    return prof


def plain_value(value):
    """A value MyST-NB's ``{glue:text}`` can format: numpy scalars become Python ``int``/``float``/``bool``."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def glue(name: str, value) -> None:
    """Store ``value`` under ``name`` for ``{glue:text}`` in the chapter's prose, without displaying it.

    numpy scalars are converted first: ``{glue:text}`name:.1f``` cannot format ``np.float64(…)``.
    """
    from myst_nb import glue as _glue

    _glue(name, plain_value(value), display=False)
