"""The peer interpretable heads as methods of Table 1: ProtoS-ViT, ProtoFM and KLC on the profile's cached tokens.

    run = run_method("protosvit", "demo", seed=0)     # through qpmlib.runs.methods, like every Table 1 row
    run.metrics["accuracy"], run.model(), head_test_image(run, 3)

Each head is one stage of the results store (its kind is the method key), keyed by what keys DINO-QPM's stages
(:func:`qpmlib.runs.dino_qpm.base_config`: profile, seed, data, backbone, the embedding stores' fingerprints),
the head's full configuration (:func:`head_config`: the profile's ``heads`` section put into
:class:`~qpmlib.heads.ProtoSViTConfig`, :class:`~qpmlib.heads.ProtoFMConfig` or :class:`~qpmlib.heads.KLCConfig`;
the device left out) and the k of SID@k (:func:`peer_config`). :meth:`qpmlib.results.ResultStore.get_or_run`
computes it once, also across processes.

Each stage stores the metrics of :func:`qpmlib.heads.head_metrics` (accuracy, plausibility, ``sid_at_5``: SID@k
with the stored ``sid_k``, class-independence and contrastiveness on the training split's scores), the head's
own compactness (``n_prototypes``, ``n_per_class``, ``n_per_image``: ProtoS-ViT's global and local sizes on the
true class's pruned importance; for KLC the prototype images, :func:`qpmlib.heads.klc_compactness`),
``seconds_per_epoch`` (KLC trains nothing: its one fit) and ``n_parameters``. KLC's training-split scores include
its own prototype images, which match themselves. Each stage also stores its test predictions and the trained
head (ProtoS-ViT, ProtoFM: ``model.safetensors`` and the constructor arguments in ``model_spec.json``) or KLC's
prototype bank (``selection.safetensors``: the prototype rows and their segment descriptors).

Bad input fails before anything is computed: KLC on a dataset without part ground truth names the data it needs
(:func:`qpmlib.heads.require_part_truth`), and a prototype bank larger than the tokens support, or a KLC bank
larger than the training images, is refused once the tokens are open and before any training.
"""

from __future__ import annotations

import dataclasses
import math
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from qpmlib.config import Profile
from qpmlib.data import prepare
from qpmlib.heads import (
    KLCConfig,
    ProtoFMConfig,
    ProtoSViTConfig,
    evaluate_head,
    fit_klc,
    head_metrics,
    klc_compactness,
    part_truth,
    predict_klc,
    require_part_truth,
    train_protofm,
    train_protosvit,
)
from qpmlib.heads.base import HeadEvaluation
from qpmlib.heads.klc import KLCModel, check_klc_config
from qpmlib.heads.protofm import check_protofm_config
from qpmlib.heads.protosvit import check_protosvit_config
from qpmlib.embeddings import get_store
from qpmlib.results import (
    HISTORY_FILE,
    MODEL_FILE,
    MODEL_SPEC_FILE,
    PREDICTIONS_FILE,
    SELECTION_FILE,
    Result,
    ResultData,
    ResultStore,
    provenance,
)
from qpmlib.runs.dino_qpm import base_config
from qpmlib.runs.evaluate import prediction_tensors, test_masks_and_parts
from qpmlib.runs.provenance import device_label
from qpmlib.runs.run import Run, load_peer_head
from qpmlib.train import TokenData

__all__ = ["PEER_HEADS", "head_config", "peer_config", "run_peer_head", "load_klc", "head_evaluation", "HeadImage",
           "head_test_image"]

#: The peer heads, by method key (also the results-store kind of each one's stage).
PEER_HEADS = ("protosvit", "protofm", "klc")


def head_config(prof: Profile, method: str, seed: int = 0) -> ProtoSViTConfig | ProtoFMConfig | KLCConfig:
    """The configuration of a peer head on a profile: its ``heads`` section and ``train.device`` put in.

    Every field the section does not set keeps the head's default (the reference's; see each head's module).
    ``heads.prototype_dim`` and ``heads.hidden_dim`` left at None keep each head's own reference width.

    Args:
        prof: the profile.
        method: one of :data:`PEER_HEADS`.
        seed: KLC's k-means seed (the run seed); ignored by the trained heads (their seed is the run's).

    Raises:
        ValueError: for an unknown head.
    """
    h = prof.heads
    if method == "klc":
        return KLCConfig(prototypes_per_class=h.klc_prototypes_per_class, top_k=h.klc_top_k, seed=seed)
    common = {"n_prototypes": h.n_prototypes, "hidden_dim": h.hidden_dim, "epochs": h.epochs,
              "batch_size": h.batch_size, "warmup_epochs": h.warmup_epochs, "cosine_epochs": h.cosine_epochs,
              "device": prof.train.device}
    if method == "protosvit":
        return ProtoSViTConfig(**common, **({} if h.prototype_dim is None else {"prototype_dim": h.prototype_dim}))
    if method == "protofm":
        return ProtoFMConfig(**common, **({} if h.prototype_dim is None else {"proj_dim": h.prototype_dim}))
    raise ValueError(f"unknown peer head {method!r}; valid: {', '.join(PEER_HEADS)}")


def peer_config(prof: Profile, method: str, seed: int, train_inputs: dict[str, Any], test_inputs: dict[str, Any], *,
                k: int) -> dict[str, Any]:
    """The hashed configuration of a peer head's stage: the tokens' key, the head's settings and the SID k.

    ``train_inputs`` and ``test_inputs`` are the ``inputs`` of the two embedding-store manifests (as in
    :func:`qpmlib.runs.dino_qpm.base_config`).

    ``device`` is left out, as in every stage of the book: CPU and GPU give the same run up to rounding.
    """
    settings = {k_: v for k_, v in dataclasses.asdict(head_config(prof, method, seed)).items() if k_ != "device"}
    return base_config(prof, seed, train_inputs, test_inputs) | {"head": method, "settings": settings, "sid_k": k}


def _model_spec(method: str, cfg: Any, in_dim: int, n_classes: int) -> dict[str, Any]:
    """The constructor arguments of a trained head (``model_spec.json``) and its evaluation threshold."""
    spec = {"head": method, "in_dim": in_dim, "n_classes": n_classes, "n_prototypes": cfg.n_prototypes,
            "hidden_dim": cfg.hidden_dim, "max_weight": cfg.max_weight,
            "importance_threshold": cfg.importance_threshold}
    if method == "protosvit":
        return spec | {"prototype_dim": cfg.prototype_dim, "temperature": cfg.temperature, "dropout": cfg.dropout}
    return spec | {"proj_dim": cfg.proj_dim, "student_temperature": cfg.student_temperature,
                   "teacher_temperature": cfg.teacher_temperature}


def _parts(prof: Profile, data: TokenData) -> tuple[np.ndarray, list[str]]:
    """Part maps (N, n_parts, H, W) and names of a split's images (KLC's segmenter)."""
    truth = part_truth(prepare(prof.data, verbose=False), prof.data.dataset, data.image_ids,
                       math.isqrt(data.n_patches))
    return truth.maps, truth.names


def _klc_tensors(model: KLCModel) -> dict[str, np.ndarray]:
    return {"rows": model.rows.astype(np.int64), "labels": model.labels.astype(np.int64), "cls": model.cls,
            "segments": np.concatenate(model.segments).astype(np.float32),
            "segment_parts": np.concatenate(model.segment_parts).astype(np.int64),
            "segment_counts": np.array([len(s) for s in model.segments], np.int64)}


def load_klc(result: Result) -> KLCModel:
    """KLC's prototype bank from its stored stage (no refitting)."""
    spec = result.json(MODEL_SPEC_FILE)
    t = {k: v.numpy() for k, v in result.tensors(SELECTION_FILE).items()}
    cuts = np.cumsum(t["segment_counts"])[:-1]
    return KLCModel(t["rows"], t["labels"], t["cls"], np.split(t["segments"], cuts), np.split(t["segment_parts"], cuts),
                    spec["part_names"], spec["n_classes"], KLCConfig(**spec["config"]), float("nan"))


def run_peer_head(method: str, prof: Profile, seed: int, *, k: int, compute: bool = True,
                  verbose: bool = False) -> dict[str, Result]:
    """Run (or load) one peer head for one seed.

    Args:
        method: one of :data:`PEER_HEADS`.
        prof: the profile (checked by the caller, :func:`qpmlib.runs.methods.method_profile`).
        seed: run seed (initialisation, shuffling, dropout, views; KLC's k-means).
        k: the k of the stored SID@k (:func:`qpmlib.runs.methods.sid_k`).
        compute: compute a missing stage; False raises instead.
        verbose: progress bars.

    Returns:
        ``{method: Result}``.

    Raises:
        ValueError: an unknown head, KLC without part ground truth, or a prototype bank the data cannot support.
        FileNotFoundError: with ``compute=False``, when the stage has not been computed yet.
    """
    cfg = head_config(prof, method, seed)
    if method == "klc":
        require_part_truth(prof.data.dataset, "KLC (its segmenter is the true part maps)")
    train_store, test_store = get_store(prof, "train", verbose=verbose), get_store(prof, "test", verbose=verbose)
    train, test = TokenData.from_store(train_store), TokenData.from_store(test_store)
    if method == "klc":
        check_klc_config(cfg, train.labels)
    elif method == "protosvit":
        check_protosvit_config(cfg, n_patches=train.n_patches, n_train=len(train))
    else:
        check_protofm_config(cfg, n_patches=train.n_patches, n_train=len(train))
    config = peer_config(prof, method, seed, train_store.manifest["inputs"], test_store.manifest["inputs"], k=k)
    store = ResultStore.for_profile(prof.name, method)
    found = store.get(config)
    if found is None and not compute:
        raise FileNotFoundError(f"no stored {method} result for profile {prof.name!r}, seed {seed} (looked in "
                                f"{store.path(config)}); compute it with "
                                f"qpmlib.runs.methods.run_method({method!r}, ...)")
    if found is None:
        found = store.get_or_run(config, lambda: _fit(method, prof, cfg, seed, k, train, test, verbose,
                                                      bool(train_store.pretrained)))
    return {method: found}


def _fit(method: str, prof: Profile, cfg: Any, seed: int, k: int, train: TokenData, test: TokenData,
         verbose: bool, pretrained: bool) -> ResultData:
    t0 = time.perf_counter()
    masks, _ = test_masks_and_parts(prof, test)
    if method == "klc":
        train_parts, names = _parts(prof, train)
        model = fit_klc(train, train_parts, names, cfg)
        ev_test = predict_klc(model, test, _parts(prof, test)[0], verbose=verbose)
        ev_train = predict_klc(model, train, train_parts, verbose=verbose)
        metrics = head_metrics(ev_test, ev_train, k=k, masks=masks, seed=seed) | klc_compactness(model, ev_test)
        metrics |= {"seconds_per_epoch": model.fit_seconds, "n_parameters": 0, "sid_k": k}
        return ResultData(
            metrics=metrics,
            provenance=provenance(seed=seed, device=device_label("cpu"), pretrained=pretrained,
                                  total_seconds=time.perf_counter() - t0),
            tensors={SELECTION_FILE: _klc_tensors(model), PREDICTIONS_FILE: prediction_tensors(test, ev_test)},
            json_files={MODEL_SPEC_FILE: {"head": "klc", "config": dataclasses.asdict(cfg), "part_names": names,
                                          "n_classes": model.n_classes}},
        )
    trainer = train_protosvit if method == "protosvit" else train_protofm
    trained = trainer(train, cfg, seed=seed, eval_data=test, verbose=verbose)
    ev_test = evaluate_head(trained.model, test, cfg)
    ev_train = evaluate_head(trained.model, train, cfg, with_maps=False)
    metrics = head_metrics(ev_test, ev_train, k=k, masks=masks, seed=seed)
    metrics |= {"seconds_per_epoch": trained.history.seconds_per_epoch, "n_parameters": trained.n_parameters,
                "sid_k": k}
    return ResultData(
        metrics=metrics,
        provenance=provenance(seed=seed, device=device_label(cfg.device), pretrained=pretrained,
                              total_seconds=time.perf_counter() - t0),
        tensors={MODEL_FILE: {name: value.detach().cpu() for name, value in trained.model.state_dict().items()},
                 PREDICTIONS_FILE: prediction_tensors(test, ev_test)},
        json_files={HISTORY_FILE: trained.history.to_dict(),
                    MODEL_SPEC_FILE: _model_spec(method, cfg, train.dim, train.n_classes)},
    )


def head_evaluation(run: Run, rows: Any, split: str = "test") -> HeadEvaluation:
    """A peer head's evaluation (with maps) of some rows of a split, from its stored stage.

    Args:
        run: a run of one of :data:`PEER_HEADS`.
        rows: row indices into the split's embedding store.
        split: ``"test"`` or ``"train"``.

    Raises:
        ValueError: for a run of another method.
    """
    if run.method not in PEER_HEADS:
        raise ValueError(f"head_evaluation needs a run of {', '.join(PEER_HEADS)}, got {run.method!r}")
    store = get_store(run.profile, split, verbose=False)
    idx = np.asarray(rows, dtype=np.int64)
    ids = None if store.image_ids is None else np.asarray(store.image_ids)[idx]
    sub = TokenData(np.asarray(store.patch_tokens[idx]), np.asarray(store.cls[idx]), np.asarray(store.labels)[idx],
                    image_ids=ids)
    result = run.stages[run.method]
    if run.method == "klc":
        return predict_klc(load_klc(result), sub, _parts(run.profile, sub)[0])
    spec = result.json(MODEL_SPEC_FILE)
    settings = SimpleNamespace(importance_threshold=spec["importance_threshold"], device="cpu")
    return evaluate_head(load_peer_head(result), sub, settings)


@dataclasses.dataclass
class HeadImage:
    """One test image under a peer head: its prediction and the maps and weights of its explanation.

    Attributes:
        label: true class.
        prediction: predicted class.
        feature_maps: (K, h, w) the head's maps (prototype similarities; KLC: part coverage).
        weights: (K,) the predicted class's weights after the head's pruning (KLC: matched segments per part).
    """

    label: int
    prediction: int
    feature_maps: np.ndarray
    weights: np.ndarray


def head_test_image(run: Run, index: int) -> HeadImage:
    """The ``index``-th test image (embedding-store order) under a peer head (see :func:`head_evaluation`)."""
    ev = head_evaluation(run, [index])
    return HeadImage(int(ev.labels[0]), int(ev.predictions[0]), ev.feature_maps[0], ev.weights[0])

