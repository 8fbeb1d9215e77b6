"""What every chapter does first: pick the profile, say what produced the numbers and what the backbone is.

A chapter's first code cell after ``parameters`` is::

    from qpmlib.book.chapter import start
    prof = start(profile)

which displays the provenance line (profile, dataset, backbone and whether its weights are pretrained, seeds,
device, commit) and a banner when the backbone is not the real DINOv2: for the project's own stand-in
(``standin_*``, the demo's default) a note saying what it is, what it was trained on and what it cannot show; for
random weights a warning that the numbers show the pipeline working, not DINOv2's quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qpmlib.backbones import BACKBONES, pretrained_available, read_card
from qpmlib.config import Profile, get_profile
from qpmlib.runs.provenance import device_label, git_commit

__all__ = ["Provenance", "provenance", "provenance_line", "standin_summary", "banner_markdown", "start",
           "plain_value", "glue"]


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


def _is_standin(name: str) -> bool:
    return name in BACKBONES and BACKBONES[name].bundled


def provenance_line(p: Provenance) -> str:
    """One Markdown line naming everything that produced a chapter's numbers."""
    if not p.pretrained:
        weights = "**random weights**"
    elif _is_standin(p.backbone):
        weights = "stand-in pretrained by this project on SynthBirds"
    else:
        weights = "pretrained weights"
    seeds = ", ".join(str(s) for s in p.seeds)
    return (
        f"*Provenance:* profile `{p.profile}` · dataset {p.dataset} · backbone `{p.backbone}` ({weights}) · "
        f"seeds {seeds} · {p.device} · commit `{p.commit}`"
    )


def standin_summary(name: str) -> str:
    """One paragraph from a stand-in's provenance card: architecture, corpus, objective, steps, machine and time.

    Raises:
        ValueError: ``name`` is not a stand-in; FileNotFoundError: its card is missing.
    """
    card = read_card(name)
    arch, corpus = card["architecture"], card["corpus"]["generator_args"]
    registers = f"{arch['n_registers']} register tokens" if arch["n_registers"] else "no register tokens"
    n_images = corpus["n_classes"] * (corpus["n_train"] + corpus["n_test"])
    return (
        f"`{name}` is a miniature DINOv2 (a ViT with patch {arch['patch_size']}, {arch['depth']} blocks of width "
        f"{arch['embed_dim']}, {registers}, LayerScale and a final norm; {card['n_parameters'] / 1e6:.1f} M "
        f"parameters) that this project pretrained itself, from random weights, on {n_images:,} SynthBirds images of "
        f"{corpus['n_classes']} attribute combinations that share no class and no image with the profiles' datasets. "
        f"Objective: {card['objective']}; {card['steps']:,} steps of {card['config']['batch_size']} images "
        f"({card['wall_seconds'] / 3600:.1f} h on {card['machine']['cpu_count']} CPU cores)."
    )


def banner_markdown(p: Provenance) -> str | None:
    """The banner for a backbone that is not the real DINOv2 (a stand-in note, a random-weights warning), else None."""
    if p.pretrained and _is_standin(p.backbone):
        return (
            ":::{note}\n" + standin_summary(p.backbone) + " It stands in for DINOv2, which cannot be downloaded "
            "here: its features know SynthBirds's parts, so the method's effects can appear, but its numbers are "
            "not DINOv2's, and nothing here can show what depends on DINOv2's scale and data (natural images, "
            "CUB-200-2011). The chapter on the stand-in backbone shows how it was trained; use the `paper` profile "
            "with real weights and data to reproduce the paper's values.\n:::"
        )
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
    """Display the provenance line (and the stand-in or random-weights banner) and return the profile.

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
        for kind in ("warning", "note"):
            notice = notice.replace(f":::{{{kind}}}\n", f"**{kind.title()}.** ")
        display(Markdown(notice.replace("\n:::", "")))
    display(Markdown(provenance_line(p)))
    return prof


def plain_value(value):
    """A value MyST-NB's ``{glue:text}`` can format: numpy scalars become Python ``int``/``float``/``bool``."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def glue(name: str, value, *, display: bool = False) -> None:
    """Store ``value`` under ``name`` for ``{glue:text}`` in the chapter's prose (and other pages).

    numpy scalars are converted first: ``{glue:text}`name:.1f``` cannot format ``np.float64(…)``. A figure that
    another page pastes must be glued with ``display=True``: the chapter then shows that very output, whose image
    file the pasting page links to (a figure drawn twice may differ by a byte and leave the link broken).
    """
    from myst_nb import glue as _glue

    _glue(name, plain_value(value), display=display)
