"""The reproducibility report: what differs from the paper and why, and where the compute time went.

* :data:`DISCREPANCIES` (reference_spec §10, with the variant the book uses and the option that switches it) and
  :func:`discrepancy_table`;
* :func:`profile_differences`: what a profile changes with respect to the paper's setting;
* :func:`compute_time`: the chapters' run times and the stored training stages' times;
* :func:`setting_reason` and :func:`reproduction_counts`: why and how far a run can be compared with the paper.

Every number beside the paper's comes from :func:`qpmlib.analysis.summary.gather_beside_paper`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from qpmlib import paths
from qpmlib.config import get_profile
from qpmlib.paper import METRICS, claim

__all__ = ["DISCREPANCIES", "discrepancy_table", "profile_differences", "compute_time", "setting_reason",
           "reproduction_counts"]

#: reference_spec §10: (row, topic, paper, reference code, what this book does by default, the switch).
DISCREPANCIES: tuple[tuple[int, str, str, str, str, str], ...] = (
    (1, "input normalisation", "resize 224, dataset mean", "resize 224×224, dataset mean/std, then per-image "
     "min-max to [0, 1]", "reference code", "data.normalisation = 'reference' | 'imagenet'"),
    (2, "QP components", "A, R and a locality bias b", "b disabled; A and R only", "reference code",
     "qpmlib.qp.solve_qpm(b=None)"),
    (3, "R penalty", "as in QPM", "threshold chosen on 2R, penalty tested on R", "reference code",
     "qp.r_mode = 'dinoqpm' | 'qpm' | 'none'"),
    (4, "BLDD in fine-tune", "W_sparse · f^(s)", "W_bin · ((f_S − μ_S)/σ_S), μ, σ frozen from dense train "
     "features, no bias", "reference code", "model.standardise = True | False"),
    (5, "optimiser", "schedule-free Adam", "AdamWScheduleFree, averaged weights, no BN recalibration",
     "reference code", "train.recalibrate_bn = False | True"),
    (6, "epochs / batch", "40 / 50, batch 32 / 32", "main YAML 25 / 25, batch 32 / 16",
     "reference code on `paper`; fewer epochs on demo/smoke", "train.dense_epochs, train.ft_epochs, batch sizes"),
    (7, "λ_L1-FV", "1", "1 only in qpm/dinov2.yaml, 0 elsewhere", "1 (both agree for DINO-QPM)",
     "train.ft_l1_fv"),
    (8, "FDL scaling vector", "f_d / max f", "the post-dropout feature vector", "reference code",
     "train.fdl_scale = 'features' | 'map_mean'"),
    (9, "Plausibility data", "X_train", "test split", "reference code", "computed on the test split"),
    (10, "Plausibility map", "Σ_d W_ĉd F_d", "the same minus its minimum", "reference code",
     "qpmlib.metrics.plausibility(subtract_min=True | False)"),
    (11, "SID@5 data", "X_train", "test split; samples whose class has ≥ 5 weights", "reference code",
     "computed on the test split"),
    (12, "GradCAM", "Grad-CAM", "CAM (weights × maps), no gradients", "reference code", "qpmlib.runs.evaluate.cam"),
    (13, "MLP", "4 layers with ReLU and BN", "last layer also BN+ReLU → non-negative features", "reference code",
     "model.last_layer_bn_relu = True | False"),
    (14, "baselines", "pipeline closely resembling ours", "β 0.196, no L1 losses, head dropout 0.1, trainable "
     "μ/σ; QSENN 4×25 epochs", "reference code",
     "qpmlib.sparse.SLDDSettings / QSENNSettings; baselines.qsenn_schedule"),
    (15, "pos-embed interpolation", "–", "antialias False, offset 0.1", "reference code",
     "qpmlib.backbones.build_backbone(pos_embed_interpolation='reference' | 'hub')"),
)


def discrepancy_table() -> pd.DataFrame:
    """reference_spec §10 as a table, with the variant this book uses and the option that switches it.

    Returns:
        DataFrame with columns ``row``, ``topic``, ``paper``, ``code``, ``book`` and ``option``.
    """
    return pd.DataFrame(DISCREPANCIES, columns=["row", "topic", "paper", "code", "book", "option"])


def profile_differences(profile: Any, *, pretrained: bool | None = None) -> pd.DataFrame:
    """What the given profile changes with respect to the paper's setting (paper Sec. 9, reference_spec §4.2).

    Args:
        profile: a :class:`qpmlib.config.Profile` or its name.
        pretrained: whether the backbone weights were pretrained here (None: not known).

    Returns:
        DataFrame with columns ``item``, ``paper`` and ``this run``, and a boolean ``differs``.

    Raises:
        ValueError: for an unknown profile name.
    """
    prof, ref = get_profile(profile), get_profile("paper")
    datasets = lambda p: "+".join((p.data.dataset, *p.extra_datasets))  # noqa: E731
    weights = "unknown" if pretrained is None else ("pretrained" if pretrained else "fixed random")
    rows = [
        ("dataset", datasets(ref), datasets(prof)),
        ("backbone", ref.backbone.name, prof.backbone.name),
        ("backbone weights", "pretrained", weights),
        ("image size [px]", ref.data.image_size, prof.data.image_size),
        ("MLP layers", ref.model.n_layers, prof.model.n_layers),
        ("hidden width", ref.model.hidden_size, prof.model.hidden_size),
        ("N_f", ref.model.n_features, prof.model.n_features),
        ("N*_f", ref.qp.n_selected, prof.qp.n_selected),
        ("N^c_f", ref.qp.n_per_class, prof.qp.n_per_class),
        ("dense / fine-tune epochs", f"{ref.train.dense_epochs} / {ref.train.ft_epochs}",
         f"{prof.train.dense_epochs} / {prof.train.ft_epochs}"),
        ("seeds", len(ref.seeds), len(prof.seeds)),
    ]
    df = pd.DataFrame(rows, columns=["item", "paper", "this run"]).astype({"paper": str, "this run": str})
    df["differs"] = df["paper"] != df["this run"]
    return df


def compute_time(profile: str, build_root: str | Path, *, results_root: str | Path | None = None) -> pd.DataFrame:
    """Where the compute time of a book run went: chapter run times and the stored training stages.

    Reads ``<build_root>/run.json`` (written by :mod:`qpmlib.book.runner`; chapters reused from an
    earlier run are marked) and the ``total_seconds`` of every ``provenance.json`` in the profile's results
    store (one per dense, QP and fine-tune stage ever computed, whichever chapter asked for it).

    Args:
        profile: profile name.
        build_root: folder holding ``run.json`` (:func:`qpmlib.book.runner.build_dir` of the profile).
        results_root: the results store root (default :func:`qpmlib.paths.results_dir` of the profile).

    Returns:
        DataFrame with columns ``source`` ("chapter" or "stored stage"), ``name`` (chapter name, or the stage
        kind), ``count`` (results summed) and ``seconds``; empty when nothing has run yet.
    """
    results_root = Path(results_root) if results_root is not None else paths.results_dir(profile)
    rows = []
    run_file = Path(build_root) / "run.json"
    if run_file.is_file():
        for name, t in json.loads(run_file.read_text()).get("chapters", {}).items():
            label = name + (" (reused)" if t.get("reused") else "")
            rows.append({"source": "chapter", "name": label, "count": 1, "seconds": float(t["seconds"])})
    stages: dict[str, list[float]] = {}
    for prov in sorted(results_root.glob("*/*/provenance.json")):
        if prov.parent.name.startswith("."):
            continue
        seconds = json.loads(prov.read_text()).get("total_seconds")
        if isinstance(seconds, (int, float)):
            stages.setdefault(prov.parent.parent.name, []).append(float(seconds))
    rows += [{"source": "stored stage", "name": kind, "count": len(v), "seconds": sum(v)}
             for kind, v in sorted(stages.items())]
    return pd.DataFrame(rows, columns=["source", "name", "count", "seconds"])


def setting_reason(profile: Any, *, pretrained: bool, n_seeds: int) -> str:
    """Why every reproduced number of a run may differ from the paper's, in a few words ("" on the paper's setting).

    Args:
        profile: the run's profile.
        pretrained: whether the backbone weights were pretrained.
        n_seeds: seeds behind each mean (the paper: the ``sec9`` claim's number).
    """
    prof = get_profile(profile)
    paper_seeds = claim("sec9").value
    return ", ".join(
        ([f"SynthBirds ({prof.name} profile) for CUB"] if prof.data.dataset == "synthbirds" else [])
        + (["random backbone weights"] if not pretrained else [])
        + ([f"{n_seeds} seed(s), not {paper_seeds:g}"] if n_seeds != paper_seeds else [])
    )


def reproduction_counts(beside: pd.DataFrame) -> dict[str, Any]:
    """How much of the paper a :func:`qpmlib.analysis.summary.gather_beside_paper` table reproduces.

    Returns:
        ``n_compared`` (cells with both values), ``n_missing`` (paper cells not run here), ``n_unreported``
        (our cells the paper has no value for) and ``mean_abs_diff`` (mean |ours − paper| over the compared
        percentages, in points; NaN when there is none).
    """
    compared = beside[beside["ours_mean"].notna() & beside["paper_value"].notna()]
    percent = compared[[METRICS[m].unit == "%" for m in compared["metric"]]]
    return {
        "n_compared": len(compared),
        "n_missing": int(beside["ours_mean"].isna().sum()),
        "n_unreported": int(beside["paper_value"].isna().sum()),
        "mean_abs_diff": float(percent["difference"].abs().mean()) if len(percent) else math.nan,
    }
