"""Other interpretable heads on the same frozen backbone: DINO-QPM beside ProtoS-ViT, ProtoFM, KLC and the CLS probe.

    requests = peer_requests("demo")                    # what the chapter loads (qpmlib.analysis.plan collects it)
    records = peer_records("demo")                      # one row per method and seed, this run's numbers
    peer_table(records), quoted_values()                # ours (mean over seeds) / the publications' own numbers
    shown = peer_explanations("demo", example_indices("demo", 3))   # the same test images under every head
    named = named_features("demo")                      # DINO-QPM's selected features in words (part truth)

Every head is a method of :mod:`qpmlib.runs.methods` on the profile's cached tokens, so the numbers come from the
results store like every Table 1 row. Compactness is each head's own measure, in its own unit
(:data:`COMPACTNESS_UNITS`): DINO-QPM and the probe count features with a non-zero weight (in all, per class, and
per explanation, which for a linear head is the predicted class's non-zero weights, i.e. the per-class count);
ProtoS-ViT and ProtoFM count prototypes whose pruned importance survives (global and local sizes); KLC counts
prototype images (in all, per class, consulted per query).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from qpmlib.analysis.inspection import inspect_run
from qpmlib.config import Profile, get_profile
from qpmlib.data import DATASETS, class_names, prepare
from qpmlib.embeddings import get_store
from qpmlib.heads import PartTruth, attribute_agreement, class_explanations, name_features, part_truth
from qpmlib.heads.base import count_parameters
from qpmlib.heads.named_features import Agreement, FeatureNames
from qpmlib.heads.parts import PART_DATASETS, require_part_truth
from qpmlib.paper import PEER_DISPLAY, method_display, paper_values, peer_values
from qpmlib.runs.evaluate import cam, sid_at, test_image
from qpmlib.runs.methods import RunRequest, run_methods, sid_k
from qpmlib.runs.peer_heads import PEER_HEADS, head_test_image
from qpmlib.runs.run import Run

__all__ = ["PEER_METHODS", "COMPACTNESS_UNITS", "peer_methods", "peer_requests", "peer_records", "peer_table",
           "quoted_values", "example_indices", "PeerExplanations", "peer_explanations", "NamedFeatures",
           "named_features"]

#: The methods of the comparison, in the chapter's order.
PEER_METHODS = ("dino_qpm", "protosvit", "protofm", "klc", "linear_probe")
#: What each method's compactness counts.
COMPACTNESS_UNITS = {"dino_qpm": "features", "linear_probe": "features", "protosvit": "prototypes",
                     "protofm": "prototypes", "klc": "prototype images"}
#: Metrics stored as fractions and shown in %.
_PERCENT = ("accuracy", "plausibility", "sid", "class_independence", "contrastiveness")

Runner = Callable[..., list[Run]]


def peer_methods(profile: str | Profile) -> tuple[str, ...]:
    """:data:`PEER_METHODS` that the profile's dataset supports (KLC needs part ground truth)."""
    prof = get_profile(profile)
    return tuple(m for m in PEER_METHODS if m != "klc" or prof.data.dataset in PART_DATASETS)


def _seeds(prof: Profile, seeds: Sequence[int] | None) -> list[int]:
    seeds = [prof.seeds[0]] if seeds is None else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    return seeds


def peer_requests(profile: str | Profile, seeds: Sequence[int] | None = None) -> list[RunRequest]:
    """The runs of the comparison: every method of :func:`peer_methods` over ``seeds`` (None: the first seed)."""
    prof = get_profile(profile)
    return [RunRequest.of(m, _seeds(prof, seeds)) for m in peer_methods(prof)]


def _row(run: Run, k: int) -> dict[str, Any]:
    m = run.metrics
    if run.method in PEER_HEADS:
        sid = m["sid_at_5"]
        compact = {"in_all": m["n_prototypes"], "per_class": m["n_per_class"], "per_image": m["n_per_image"]}
        params = m["n_parameters"]
    else:
        sid = sid_at(run, k)
        compact = {"in_all": m["n_features"], "per_class": m["n_per_class"], "per_image": m["n_per_class"]}
        params = count_parameters(run.model(), trainable_only=False)
    return {"method": run.method, "seed": run.seed, "accuracy": m["accuracy"], "plausibility": m["plausibility"],
            "sid": sid, "class_independence": m["class_independence"], "contrastiveness": m["contrastiveness"],
            **compact, "unit": COMPACTNESS_UNITS[run.method], "seconds_per_epoch": m["seconds_per_epoch"],
            "n_parameters": params}


def peer_records(profile: str | Profile, seeds: Sequence[int] | None = None, *, runner: Runner = run_methods,
                 verbose: bool = False) -> pd.DataFrame:
    """This run's numbers of every method of the comparison, one row per method and seed.

    Args:
        profile: profile name or object.
        seeds: seeds (None: the profile's first).
        runner: runs one method over the seeds (:func:`qpmlib.runs.methods.run_methods`).
        verbose: progress bars of missing runs.

    Returns:
        Columns ``method``, ``seed``, ``accuracy``, ``plausibility``, ``sid`` (SID@k, k =
        :func:`qpmlib.runs.methods.sid_k`), ``class_independence``, ``contrastiveness`` (fractions), ``in_all``,
        ``per_class``, ``per_image``, ``unit`` (each head's compactness), ``seconds_per_epoch`` (KLC: its one fit)
        and ``n_parameters`` (trained parameters; the probe and DINO-QPM: their whole model on the tokens).
    """
    prof, k = get_profile(profile), sid_k(profile)
    rows = []
    for request in peer_requests(prof, seeds):
        rows += [_row(run, k) for run in runner(request.method, prof, request.seeds, verbose=verbose)]
    return pd.DataFrame(rows)


def peer_table(records: pd.DataFrame) -> pd.DataFrame:
    """The comparison as shown: mean over seeds per method, metrics in %, accuracy relative to the CLS probe.

    Args:
        records: :func:`peer_records`.

    Returns:
        One row per method (display names as the index, the records' method order), with ``of_probe``: the
        accuracy as a fraction of the CLS probe's (NaN without a probe row).
    """
    values = records.drop(columns=["method", "unit", "seed"]).astype(float)  # None (an undefined SID) -> NaN
    numeric = values.groupby(records["method"], sort=False).mean()
    numeric[list(_PERCENT)] *= 100
    probe = numeric["accuracy"].get("linear_probe", np.nan)
    numeric.insert(1, "of_probe", numeric["accuracy"] / probe)
    numeric.insert(numeric.columns.get_loc("in_all"), "unit", records.groupby("method", sort=False)["unit"].first())
    numeric.index = [method_display(m) for m in numeric.index]
    return numeric


def quoted_values(dataset: str = "cub") -> pd.DataFrame:
    """The methods' own published numbers (quoted, never ours): the peers' publications and the DINO-QPM paper.

    Args:
        dataset: the DINO-QPM paper's dataset for its rows (its Tables 1-2).

    Returns:
        Columns ``method`` (display name), ``dataset``, ``metric``, ``value``, ``source``; the peers' rows from
        :data:`qpmlib.paper.PEER_VALUES`, then DINO-QPM's and the CLS probe's accuracy, Plausibility, SID@5,
        Class-Independence, Contrastiveness and compactness from the paper.
    """
    peers = peer_values().drop(columns=["quoted"])
    ours = paper_values(dataset=None)
    ours = ours[ours["method"].isin(["dino_qpm", "linear_probe"]) & ours["table"].isin(["table1", "table2"])
                & ours["dataset"].isin([dataset, "any"])]
    ours = ours.assign(source="DINO-QPM paper, " + ours["table"].str.replace("table", "Table "))
    frame = pd.concat([peers, ours[["method", "dataset", "metric", "value", "source"]]], ignore_index=True)
    frame["method"] = [PEER_DISPLAY.get(m, method_display(m)) for m in frame["method"]]
    return frame.dropna(subset=["value"]).reset_index(drop=True)


def example_indices(profile: str | Profile, n: int) -> list[int]:
    """Test rows of ``n`` different classes, spread evenly over the labels: the first test image of each.

    Raises:
        ValueError: for n < 1 or more images than classes.
    """
    labels = np.asarray(get_store(get_profile(profile), "test", verbose=False).labels)
    classes = np.unique(labels)
    if not 1 <= n <= len(classes):
        raise ValueError(f"n must be in [1, {len(classes)}] (one test image per class), got {n}")
    picked = classes[np.linspace(0, len(classes) - 1, n).round().astype(int)]
    return [int(np.flatnonzero(labels == c)[0]) for c in picked]


@dataclass
class PeerExplanations:
    """The same test images explained by every method.

    Attributes:
        indices: the test rows (embedding-store order).
        images: (S, S, 3) display image per index.
        labels: true class name per index.
        methods: the method keys, in column order.
        cams: ``cams[method][i]``: the (h, w) class activation map of image i (:func:`qpmlib.runs.evaluate.cam`
            of the method's maps and its predicted class's weights; KLC: its part maps weighted by matched segments).
        predictions: ``predictions[method][i]``: the predicted class name.
    """

    indices: list[int]
    images: list[np.ndarray]
    labels: list[str]
    methods: list[str]
    cams: dict[str, list[np.ndarray]]
    predictions: dict[str, list[str]]


def peer_explanations(profile: str | Profile, indices: Sequence[int], seed: int | None = None, *,
                      runner: Runner = run_methods) -> PeerExplanations:
    """Explain the same test images with every method of :func:`peer_methods` (their stored runs).

    Args:
        profile: profile name or object.
        indices: test rows.
        seed: run seed (None: the profile's first).
        runner: see :func:`peer_records`.
    """
    prof = get_profile(profile)
    seed = prof.seeds[0] if seed is None else seed
    names = class_names(prepare(prof.data, verbose=False), prof.data.dataset)
    methods = list(peer_methods(prof))
    runs = {m: runner(m, prof, [seed])[0] for m in methods}
    shown = PeerExplanations(list(indices), [], [], methods, {m: [] for m in methods}, {m: [] for m in methods})
    for i in indices:
        base = None  # DINO-QPM's view of the image gives its picture and label
        for m, run in runs.items():
            one = head_test_image(run, i) if m in PEER_HEADS else test_image(run, i)
            base = one if base is None and m not in PEER_HEADS else base
            shown.cams[m].append(cam(one.feature_maps, one.weights))
            shown.predictions[m].append(names[one.prediction])
        shown.images.append(base.image)
        shown.labels.append(names[base.label])
    return shown


@dataclass
class NamedFeatures:
    """DINO-QPM's selected features named after true parts, its classes in words, and their agreement.

    Attributes:
        names: :class:`qpmlib.heads.named_features.FeatureNames` of the selected features (training images).
        table: one row per selected feature: ``feature`` (dense id), ``name``, ``confidence``, the named region's
            ``share`` and ``area``, then the raw share per region (:meth:`FeatureNames.table`).
        explanations: one line per class, ``"class c (Name) = part #id (confidence) + ..."``.
        agreement: SynthBirds only: :class:`qpmlib.heads.named_features.Agreement` with the classes' defining
            attributes (None on CUB).
        source: how the part maps were made.
    """

    names: FeatureNames
    table: pd.DataFrame
    explanations: list[str]
    agreement: Agreement | None
    source: str


def named_features(profile: str | Profile, seed: int | None = None) -> NamedFeatures:
    """Name DINO-QPM's selected features by their activation's overlap with the true parts of the training images.

    Args:
        profile: profile name or object (a dataset with part ground truth: SynthBirds or CUB).
        seed: run seed (None: the profile's first).

    Raises:
        ValueError: on a dataset without part ground truth, naming the data needed.
    """
    prof = get_profile(profile)
    require_part_truth(prof.data.dataset, "named features")
    ins = inspect_run(prof, seed)
    truth: PartTruth = part_truth(ins.root, prof.data.dataset, ins.stores["train"].image_ids, ins.grid)
    names = name_features(ins.maps("train"), truth.maps, truth.names)
    explanations = class_explanations(ins.assignment, names, ins.names, feature_ids=ins.selected)
    agreement = None
    if DATASETS[prof.data.dataset].parts and ins.attributes is not None:
        agreement = attribute_agreement(ins.assignment, names, ins.attributes)
    return NamedFeatures(names, names.table(ins.selected), explanations, agreement, truth.source)
