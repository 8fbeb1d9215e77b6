"""The stand-in chapter's figures: loss curves from the provenance cards, the first three principal components of
the patch tokens as RGB, and the token-norm histograms of the register diagnostic.

The numbers come from :mod:`qpmlib.analysis.standin`; each function returns a ``matplotlib.figure.Figure`` built
without pyplot.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from qpmlib import backbones
from qpmlib.analysis.standin import load_images, sample_test_images
from qpmlib.config import Profile, get_profile
from qpmlib.data import cub
from qpmlib.pretrain import probe

__all__ = ["loss_curves_figure", "pca_figure", "norm_histogram_figure"]

_CURVES = {  # panel title -> history key
    "DINO loss": "dino",
    "DINO: KL(teacher || student)": "dino_kl",
    "iBOT: KL(teacher || student)": "ibot_kl",
    "teacher entropy (CLS)": "teacher_entropy",
    "auxiliary: attributes": "aux_attributes",
    "auxiliary: part and value": "aux_parts",
}


def loss_curves_figure(names: list[str]) -> Figure:
    """The loss curves of the cards (window means over the run), one panel per loss, one line per stand-in.

    The DINO and iBOT losses are the teacher's entropy plus KL(teacher || student); the teacher's entropy moves
    with its temperature and centring, so the KL panels are the ones that show the student learning. Panels of
    losses that no card has (the auxiliary ones when unused) are left out.
    """
    cards = {name: backbones.read_card(name) for name in names}
    panels = [(title, key) for title, key in _CURVES.items()
              if any(key in (c["loss_curve"] or [{}])[0] for c in cards.values())]
    fig = Figure(figsize=(3.3 * len(panels), 2.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, key) in zip(axes, panels):
        for name, card in cards.items():
            curve = card["loss_curve"]
            ax.plot([r["step"] for r in curve], [r.get(key, np.nan) for r in curve], label=name, lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    return fig


def pca_figure(profile: str | Profile, names: list[str], *, n_images: int = 4, random: tuple[str, ...] = (),
               seed: int = 0) -> Figure:
    """The first three principal components of the patch tokens as RGB, fitted on the birds' patches.

    One row of images, then one row per backbone (and a random-weight twin of each name in ``random``). The
    components are fitted jointly on the foreground patches (the true segmentation) of the ``n_images`` test images
    shown, as the DINOv2 paper's figure does after separating the foreground; the background stays black.
    """
    prof = get_profile(profile)
    rows, root = sample_test_images(prof, n_images, seed)
    size = prof.data.image_size
    images = load_images(prof, list(rows["path"]))
    variants = [(n, w) for n in names for w in (("auto", "random") if n in random else ("auto",))]
    fig = Figure(figsize=(2.0 * len(rows), 2.0 * (1 + len(variants))), layout="constrained")
    axes = fig.subplots(1 + len(variants), len(rows), squeeze=False)
    for ax, path in zip(axes[0], rows["path"]):
        with Image.open(path) as im:
            ax.imshow(im.convert("RGB").resize((size, size)))
    for r, (name, weights) in enumerate(variants, start=1):
        bb = backbones.build_backbone(name, weights=weights, image_size=size)
        patches = bb(images)[1].numpy()  # (N, P, D)
        fg = cub.patch_masks(root, rows["image_id"].tolist(), bb.grid).reshape(len(rows), -1)
        rgb = probe.pca_rgb(patches, foreground=fg)
        for c, ax in enumerate(axes[r]):
            ax.imshow(rgb[c], interpolation="nearest")
        axes[r, 0].set_ylabel(f"{name}\n({'stand-in' if weights == 'auto' else 'random'})", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def norm_histogram_figure(norms: dict[str, dict]) -> Figure:
    """Histograms of patch-token norms (and register-token norms), one panel per backbone, log-scaled counts.

    Args:
        norms: :func:`qpmlib.analysis.standin.token_norms_of`'s output.
    """
    fig = Figure(figsize=(3.4 * len(norms), 2.8), layout="constrained")
    axes = fig.subplots(1, len(norms), squeeze=False)[0]
    top = max(float(max(n["patches"].max(), n["registers"].max(initial=0))) for n in norms.values())
    bins = np.linspace(0, top * 1.02, 60)
    for ax, (name, n) in zip(axes, norms.items()):
        ax.hist(n["patches"].ravel(), bins=bins, color="tab:blue", alpha=0.8, label="patch tokens")
        if n["registers"].size:
            ax.hist(n["registers"].ravel(), bins=bins, color="tab:red", alpha=0.8, label="register tokens")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("token norm (last block, before the final norm)", fontsize=8)
        ax.legend(fontsize=7)
    return fig
