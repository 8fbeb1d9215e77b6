"""What the stand-in chapter shows: training facts and loss curves from the cards, probes on a profile's classes,
PCA of patch tokens as RGB, and the token-norm diagnostic for register artefacts.

Every function takes a profile (its dataset and image size) and stand-in names; backbones are read through the
embedding cache (:func:`qpmlib.embeddings.get_store`) where whole splits are needed, so the chapter reuses what
the other chapters extract. Figures are returned, never shown or saved.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from qpmlib import backbones
from qpmlib.pretrain import probe

__all__ = [
    "profile_standins",
    "card_table",
    "CALIBRATION_FILE",
    "calibration_table",
    "loss_curves_figure",
    "probe_table",
    "pca_figure",
    "token_norms_of",
    "artefact_table",
    "norm_histogram_figure",
    "artefacts_appear",
]


def profile_standins(profile) -> list[str]:
    """The stand-ins a profile uses: its backbone, that backbone's twin with(out) registers, its Table 4 sweep.

    Returns:
        Names in registry order (smaller first, no registers before registers); empty when the profile's backbone
        is not a stand-in (e.g. ``paper``).
    """
    from qpmlib.profiles import get_profile

    prof = get_profile(profile)
    main = prof.backbone.name
    if not (main in backbones.BACKBONES and backbones.BACKBONES[main].bundled):
        return []
    base = main.removesuffix("_reg")
    wanted = {main, base, base + "_reg", *prof.sweeps.backbones}
    return [n for n in backbones.standin_names() if n in wanted]


def card_table(names: list[str]) -> pd.DataFrame:
    """One row per stand-in with what its provenance card says about its training.

    Returns:
        DataFrame indexed by name: width, registers, parameters (M), steps, images seen, wall time (h),
        images/s, objective, held-out probe accuracy (when the card has it) and the SHA-256 prefix.
    """
    rows = []
    for name in names:
        card = backbones.read_card(name)
        held = card.get("held_out_probe", {})
        rows.append({
            "backbone": name, "width": card["architecture"]["embed_dim"], "depth": card["architecture"]["depth"],
            "registers": card["architecture"]["n_registers"], "parameters (M)": card["n_parameters"] / 1e6,
            "steps": card["steps"], "images seen": card["images_seen"], "wall time (h)": card["wall_seconds"] / 3600,
            "images/s": card["images_per_second"], "held-out probe": held.get("linear_probe"),
            "held-out k-NN": held.get("knn"), "objective": card["objective"], "sha256": card["sha256"][:12],
        })
    return pd.DataFrame(rows).set_index("backbone")


#: The calibration runs that chose the committed recipe (held-out probe of each candidate).
CALIBRATION_FILE = backbones.WEIGHTS_DIR / "calibration.json"


def calibration_table(path=None) -> pd.DataFrame:
    """The calibration runs of :data:`CALIBRATION_FILE`: objective, steps, crops, learning rate and held-out probe.

    Returns:
        DataFrame indexed by run, with the linear-probe and k-NN accuracy at 224 px (fractions) and a note.
    """
    import json
    from pathlib import Path

    doc = json.loads(Path(path or CALIBRATION_FILE).read_text())
    rows = [{"run": r["run"], "backbone": r["variant"], "objective": r["objective"], "steps": r["steps"],
             "crops per image": r["crops"], "lr": r["lr"], "LayerScale init": r["layerscale_init"],
             "held-out probe": r["probe_224"]["linear_probe"], "held-out k-NN": r["probe_224"]["knn"],
             "note": r["note"]} for r in doc["runs"]]
    return pd.DataFrame(rows).set_index("run")


_CURVES = {  # panel title -> history key
    "DINO loss": "dino",
    "DINO: KL(teacher || student)": "dino_kl",
    "iBOT: KL(teacher || student)": "ibot_kl",
    "teacher entropy (CLS)": "teacher_entropy",
    "auxiliary: attributes": "aux_attributes",
    "auxiliary: part and value": "aux_parts",
}


def loss_curves_figure(names: list[str]):
    """The loss curves of the cards (window means over the run), one panel per loss, one line per stand-in.

    The DINO and iBOT losses are the teacher's entropy plus KL(teacher || student); the teacher's entropy moves
    with its temperature and centring, so the KL panels are the ones that show the student learning. Panels of
    losses that no card has (the auxiliary ones when unused) are left out.
    """
    from matplotlib.figure import Figure

    cards = {name: backbones.read_card(name) for name in names}
    panels = [(title, key) for title, key in _CURVES.items()
              if any(key in (c["loss_curve"] or [{}])[0] for c in cards.values())]
    fig = Figure(figsize=(3.3 * len(panels), 2.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, key) in zip(axes, panels):
        for name, card in cards.items():
            curve = card["loss_curve"]
            steps = [r["step"] for r in curve]
            values = [r.get(key, np.nan) for r in curve]
            ax.plot(steps, values, label=name, lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    return fig


def _profile_with(profile, name: str, weights: str = "auto"):
    from qpmlib.pipeline import apply_overrides

    return apply_overrides(profile, {"backbone.name": name, "backbone.weights": weights})


def probe_table(profile, names: list[str], *, random: tuple[str, ...] = (), k: int = 10,
                verbose: bool = False) -> pd.DataFrame:
    """k-NN and linear-probe accuracy on a profile's classes, for stand-ins and (``random``) random-weight twins.

    Features are the CLS token concatenated with the mean patch token of the profile's embedding cache
    (:func:`qpmlib.pretrain.probe.probe_features`); both probes are fitted on the training split and scored on
    the test split.

    Returns:
        DataFrame with columns backbone, weights ("stand-in" or "random"), k-NN, linear probe (fractions).
    """
    from qpmlib.embeddings import get_store

    rows = []
    for name in names:
        for weights in ("auto", "random") if name in random else ("auto",):
            prof = _profile_with(profile, name, weights)
            tr, te = get_store(prof, "train", verbose=verbose), get_store(prof, "test", verbose=verbose)
            xtr = probe.probe_features(tr.cls, tr.patch_tokens)
            xte = probe.probe_features(te.cls, te.patch_tokens)
            ytr, yte = np.asarray(tr.labels), np.asarray(te.labels)
            rows.append({"backbone": name, "weights": "stand-in" if weights == "auto" else "random",
                         "k-NN": probe.knn_accuracy(xtr, ytr, xte, yte, k=k),
                         "linear probe": probe.linear_probe_accuracy(xtr, ytr, xte, yte)})
    return pd.DataFrame(rows)


def _test_images(profile, n_images: int, seed: int = 0) -> tuple[pd.DataFrame, object]:
    from qpmlib import data

    root = data.prepare(profile.data)
    index = data.read_index(root, profile.data.dataset)
    test = index[~index["is_train"]]
    rng = np.random.default_rng(seed)
    return test.iloc[np.sort(rng.choice(len(test), size=min(n_images, len(test)), replace=False))], root


def pca_figure(profile, names: list[str], *, n_images: int = 4, random: tuple[str, ...] = (), seed: int = 0):
    """The first three principal components of the patch tokens as RGB, fitted on the birds' patches.

    One row of images, then one row per backbone (and a random-weight twin of each name in ``random``). The
    components are fitted jointly on the foreground patches (the true segmentation) of the ``n_images`` test images
    shown, as the DINOv2 paper's figure does after separating the foreground; the background stays black.
    """
    from matplotlib.figure import Figure
    from PIL import Image

    from qpmlib.data import cub
    from qpmlib.data.images import load_image

    rows, root = _test_images(profile, n_images, seed)
    size = profile.data.image_size
    images = torch.stack([load_image(p, size, dataset=profile.data.dataset,
                                     normalisation=profile.data.normalisation) for p in rows["path"]])
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


def token_norms_of(profile, names: list[str], *, n_images: int = 16, seed: int = 0) -> dict[str, dict]:
    """:func:`qpmlib.pretrain.probe.token_norms` of each stand-in on ``n_images`` test images of the profile."""
    from qpmlib.data.images import load_image

    rows, _ = _test_images(profile, n_images, seed)
    size = profile.data.image_size
    images = torch.stack([load_image(p, size, dataset=profile.data.dataset,
                                     normalisation=profile.data.normalisation) for p in rows["path"]])
    return {name: probe.token_norms(backbones.build_backbone(name, image_size=size), images) for name in names}


def artefact_table(norms: dict[str, dict], factor: float = 2.0) -> pd.DataFrame:
    """Per backbone: registers, median and maximum patch-token norm, the share of patch tokens above ``factor``
    times the median (artefact tokens), and the median register-token norm."""
    rows = []
    for name, n in norms.items():
        patches = n["patches"].ravel()
        rows.append({"backbone": name, "registers": n["registers"].shape[1],
                     "median patch norm": float(np.median(patches)), "max patch norm": float(patches.max()),
                     f"share > {factor:g} x median": probe.high_norm_share(patches, factor),
                     "median register norm": float(np.median(n["registers"])) if n["registers"].size else np.nan})
    return pd.DataFrame(rows).set_index("backbone")


def norm_histogram_figure(norms: dict[str, dict]):
    """Histograms of patch-token norms (and register-token norms), one panel per backbone, log-scaled counts."""
    from matplotlib.figure import Figure

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


def artefacts_appear(table: pd.DataFrame, factor: float = 2.0, min_share: float = 0.005) -> bool:
    """Whether a backbone without registers has artefact tokens (:func:`artefact_table`'s verdict).

    True when some backbone without registers has at least ``min_share`` of its patch tokens above ``factor`` times
    the median patch norm, and more than twice the share of every backbone with registers (the signature reported by
    "Vision Transformers Need Registers": rare high-norm patch tokens that registers take away).
    """
    share = table[f"share > {factor:g} x median"]
    without, with_reg = share[table["registers"] == 0], share[table["registers"] > 0]
    if without.empty:
        return False
    ceiling = 2 * with_reg.max() if not with_reg.empty else 0.0
    return bool(((without >= min_share) & (without > ceiling)).any())
