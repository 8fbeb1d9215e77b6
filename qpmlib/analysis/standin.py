"""What the stand-in chapter computes: training facts from the cards, the calibration record, probes on a
profile's classes, where DINO-QPM's features sit against the true parts (stand-in against its random twin), and
the token-norm diagnostic for register artefacts.

Backbones are read through the embedding cache (:func:`qpmlib.embeddings.get_store`) where whole splits are
needed, so the chapter reuses what the other chapters extract. The figures of the same chapter are in
:mod:`qpmlib.figures.standin`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from qpmlib import backbones, data
from qpmlib.config import Profile, apply_overrides, get_profile
from qpmlib.data.images import load_image
from qpmlib.embeddings import get_store
from qpmlib.files import read_json_object
from qpmlib.heads.parts import part_truth, require_part_truth
from qpmlib.pretrain import probe
from qpmlib.runs.evaluate import part_peak_alignment_of
from qpmlib.runs.methods import RunRequest, run_methods

__all__ = [
    "profile_standins",
    "shown_standins",
    "register_twins",
    "card_table",
    "CALIBRATION_FILE",
    "calibration_table",
    "profile_with",
    "probe_table",
    "probe_headlines",
    "part_probe_table",
    "TWIN_METHOD",
    "twin_requests",
    "twin_part_table",
    "sample_test_images",
    "load_images",
    "token_norms_of",
    "artefact_table",
    "artefacts_appear",
]


def profile_standins(profile: str | Profile) -> list[str]:
    """The stand-ins a profile uses: its backbone, that backbone's twin with(out) registers, its Table 4 sweep.

    Returns:
        Names in registry order (smaller first, no registers before registers); empty when the profile's backbone
        is not a stand-in (e.g. ``paper``).
    """
    prof = get_profile(profile)
    main = prof.backbone.name
    if main not in backbones.standin_names():
        return []
    base = main.removesuffix("_reg")
    wanted = {main, base, base + "_reg", *prof.sweeps.backbones}
    return [n for n in backbones.standin_names() if n in wanted]


def shown_standins(profile: str | Profile) -> tuple[Profile, list[str], str | None]:
    """The profile and stand-ins the stand-in chapter shows: the profile's own, or the ``demo`` profile's when the
    profile reads the real DINOv2 (``paper``).

    Returns:
        ``(profile, names, note)``; ``note`` is None, or one sentence saying that the demo's stand-in is shown.
    """
    prof = get_profile(profile)
    names = profile_standins(prof)
    if names:
        return prof, names, None
    note = f"The `{prof.name}` profile reads `{prof.backbone.name}`; this chapter shows the `demo` profile's stand-in."
    demo = get_profile("demo")
    return demo, profile_standins(demo), note


def register_twins(names: list[str], main: str) -> list[str]:
    """The stand-ins of ``names`` that differ from ``main`` only by their register tokens (``main`` included)."""
    return [n for n in names if n.removesuffix("_reg") == main.removesuffix("_reg")]


def card_table(names: list[str]) -> pd.DataFrame:
    """One row per stand-in with what its provenance card says about its training.

    Returns:
        DataFrame indexed by name: width, depth, registers, parameters (M), steps, images seen, wall time (h),
        images/s, held-out probe and k-NN accuracy (when the card has them), objective, SHA-256 prefix.
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
    doc = read_json_object(path or CALIBRATION_FILE)
    rows = [{"run": r["run"], "backbone": r["variant"], "objective": r["objective"], "steps": r["steps"],
             "crops per image": r["crops"], "lr": r["lr"], "LayerScale init": r["layerscale_init"],
             "held-out probe": r["probe_224"]["linear_probe"], "held-out k-NN": r["probe_224"]["knn"],
             "note": r["note"]} for r in doc["runs"]]
    return pd.DataFrame(rows).set_index("run")


def profile_with(profile: str | Profile, name: str, weights: str = "auto") -> Profile:
    """``profile`` reading the backbone ``name`` with ``weights`` ("auto": the stand-in's file; "random")."""
    return apply_overrides(profile, {"backbone.name": name, "backbone.weights": weights})


def probe_table(profile: str | Profile, names: list[str], *, random: tuple[str, ...] = (), k: int = 10,
                verbose: bool = False) -> pd.DataFrame:
    """k-NN and linear-probe accuracy on a profile's classes, for stand-ins and (``random``) random-weight twins.

    Features are the CLS token concatenated with the mean patch token of the profile's embedding cache
    (:func:`qpmlib.pretrain.probe.probe_features`); both probes are fitted on the training split and scored on
    the test split.

    Returns:
        DataFrame with columns backbone, weights ("stand-in" or "random"), k-NN, linear probe (fractions).
    """
    rows = []
    for name in names:
        for weights in ("auto", "random") if name in random else ("auto",):
            prof = profile_with(profile, name, weights)
            tr, te = get_store(prof, "train", verbose=verbose), get_store(prof, "test", verbose=verbose)
            xtr = probe.probe_features(tr.cls, tr.patch_tokens)
            xte = probe.probe_features(te.cls, te.patch_tokens)
            ytr, yte = np.asarray(tr.labels), np.asarray(te.labels)
            rows.append({"backbone": name, "weights": "stand-in" if weights == "auto" else "random",
                         "k-NN": probe.knn_accuracy(xtr, ytr, xte, yte, k=k),
                         "linear probe": probe.linear_probe_accuracy(xtr, ytr, xte, yte)})
    return pd.DataFrame(rows)


def probe_headlines(probes: pd.DataFrame, main: str, n_classes: int) -> dict[str, float]:
    """The numbers the chapter's prose quotes from :func:`probe_table`, in percent.

    Returns:
        ``{"sb_probe", "sb_knn"}`` of the stand-in ``main``, ``{"sb_probe_random", "sb_knn_random"}`` of its
        random-weight twin (NaN when the table has none) and ``"sb_chance"`` (100 / ``n_classes``).

    Raises:
        KeyError: the table has no stand-in row of ``main``.
    """
    def row(weights):
        hit = probes[(probes.backbone == main) & (probes.weights == weights)]
        return hit.iloc[0] if len(hit) else None

    trained, random = row("stand-in"), row("random")
    if trained is None:
        raise KeyError(f"the probe table has no stand-in row of {main!r}")
    out = {"sb_probe": 100 * trained["linear probe"], "sb_knn": 100 * trained["k-NN"]}
    out["sb_probe_random"] = np.nan if random is None else 100 * random["linear probe"]
    out["sb_knn_random"] = np.nan if random is None else 100 * random["k-NN"]
    out["sb_chance"] = 100 / n_classes
    return {key: float(v) for key, v in out.items()}


def part_probe_table(profile: str | Profile, names: list[str], *, random: tuple[str, ...] = (), n_train: int = 150,
                     n_test: int = 100, min_patches: int = 20, seed: int = 0, verbose: bool = False) -> pd.DataFrame:
    """Whether the frozen patch tokens localise the true parts: a per-patch linear probe of each patch's part.

    For each stand-in (and, for names in ``random``, its random-weight twin) a class-balanced logistic regression
    (:func:`qpmlib.pretrain.probe.part_probe_recall`) learns each patch's region
    (:func:`qpmlib.pretrain.probe.part_labels`: the part covering most of it, or the background) from its token, on
    ``n_train`` training images, and is scored on every patch of ``n_test`` test images (images drawn by ``seed``,
    the same for every backbone). A last row reads only where the patch is (a one-hot of its grid position): what
    the parts' usual places alone give.

    Returns:
        DataFrame with columns backbone, weights ("stand-in", "random" or "-"), ``balanced accuracy`` (mean recall
        over the regions with at least ``min_patches`` test patches; a smaller part's recall is noise) and the
        recall of every region.

    Raises:
        ValueError: on a dataset without part ground truth.
    """
    prof = get_profile(profile)
    require_part_truth(prof.data.dataset, "the part probe")
    root = data.prepare(prof.data, verbose=verbose)
    rng = np.random.default_rng(seed)
    rows, labels, grid = [], None, None
    for name in names:
        for weights in ("auto", "random") if name in random else ("auto",):
            stores = {split: get_store(profile_with(prof, name, weights), split, verbose=verbose)
                      for split in ("train", "test")}
            if labels is None:  # images and labels: drawn once, shared by every backbone
                grid = int(round(stores["train"].patch_tokens.shape[1] ** 0.5))
                picks = {split: np.sort(rng.choice(len(st.image_ids), size=min(n, len(st.image_ids)), replace=False))
                         for (split, st), n in zip(stores.items(), (n_train, n_test))}
                truth = {split: part_truth(root, prof.data.dataset, np.asarray(stores[split].image_ids)[picks[split]],
                                           grid) for split in stores}
                labels = {split: probe.part_labels(t.maps).ravel() for split, t in truth.items()}
                regions = [*truth["train"].names, "background"]
            x = {split: np.asarray(st.patch_tokens[picks[split]], np.float32).reshape(len(labels[split]), -1)
                 for split, st in stores.items()}
            rows.append(_part_probe_row(name, "stand-in" if weights == "auto" else "random", x, labels, regions,
                                        min_patches))
    if labels is not None:
        position = {split: np.tile(np.eye(grid * grid, dtype=np.float32), (len(labels[split]) // grid ** 2, 1))
                    for split in labels}
        rows.append(_part_probe_row("patch position only", "-", position, labels, regions, min_patches))
    return pd.DataFrame(rows)


def _part_probe_row(name: str, weights: str, x: dict, labels: dict, regions: list[str], min_patches: int) -> dict:
    recall = probe.part_probe_recall(x["train"], labels["train"], x["test"], labels["test"], len(regions))
    counted = np.bincount(labels["test"], minlength=len(regions)) >= min_patches
    return {"backbone": name, "weights": weights, "balanced accuracy": float(np.mean(recall[counted])),
            **dict(zip(regions, recall))}


#: The method whose features the stand-in chapter compares on the stand-in and on its random twin.
TWIN_METHOD = "dino_qpm"


def twin_requests(profile: str | Profile, seed: int) -> list[RunRequest]:
    """The run the stand-in chapter adds to the book: :data:`TWIN_METHOD` on the profile's stand-in with random
    weights (the run on the trained stand-in is Table 1's). None when the backbone is not a stand-in."""
    prof = get_profile(profile)
    if prof.backbone.name not in backbones.standin_names():
        return []
    return [RunRequest.of(TWIN_METHOD, [seed], {"backbone.weights": "random"})]


def twin_part_table(profile: str | Profile, seed: int, *, verbose: bool = False) -> pd.DataFrame:
    """:data:`TWIN_METHOD` on the profile's stand-in and on its random twin: accuracy and both part alignments.

    ``part_alignment`` (:func:`qpmlib.metrics.part_alignment`) is the share of a feature's whole activation mass
    on its best part; ``part_peak_alignment`` (:func:`qpmlib.metrics.part_peak_alignment`) the mean coverage of
    its best part where the feature peaks. Both are means over the selected features, on the test split.

    Returns:
        DataFrame with columns weights ("stand-in", "random"), accuracy, part_alignment, part_peak_alignment.
    """
    prof = get_profile(profile)
    rows = []
    for weights, label in (("auto", "stand-in"), ("random", "random")):
        run = run_methods(TWIN_METHOD, profile_with(prof, prof.backbone.name, weights), [seed], verbose=verbose)[0]
        rows.append({"weights": label, "accuracy": run.metrics["accuracy"],
                     "part_alignment": run.metrics.get("part_alignment"),
                     "part_peak_alignment": part_peak_alignment_of(run)})
    return pd.DataFrame(rows)


def sample_test_images(profile: str | Profile, n_images: int, seed: int = 0):
    """``n_images`` test images of a profile's dataset, drawn without replacement by ``seed`` (index order).

    Returns:
        ``(rows, root)``: the index rows (``image_id``, ``path``, ...) and the dataset folder.
    """
    prof = get_profile(profile)
    root = data.prepare(prof.data)
    index = data.read_index(root, prof.data.dataset)
    test = index[~index["is_train"]]
    rng = np.random.default_rng(seed)
    return test.iloc[np.sort(rng.choice(len(test), size=min(n_images, len(test)), replace=False))], root


def load_images(profile: Profile, paths_: list) -> torch.Tensor:
    """The profile's preprocessing of each image path, stacked (N, 3, S, S)."""
    return torch.stack([load_image(p, profile.data.image_size, dataset=profile.data.dataset,
                                   normalisation=profile.data.normalisation) for p in paths_])


def token_norms_of(profile: str | Profile, names: list[str], *, n_images: int = 16, seed: int = 0) -> dict[str, dict]:
    """:func:`qpmlib.pretrain.probe.token_norms` of each stand-in on ``n_images`` test images of the profile."""
    prof = get_profile(profile)
    rows, _ = sample_test_images(prof, n_images, seed)
    images = load_images(prof, list(rows["path"]))
    size = prof.data.image_size
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
