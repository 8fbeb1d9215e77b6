"""The reproducibility report: what differs from the paper and why, and where the compute time went.

* :func:`discrepancy_table`: :data:`qpmlib.paper.DISCREPANCIES` (reference_spec §10, with the variant the book
  uses and the option that switches it) as a table;
* :func:`profile_differences`: what a profile changes with respect to the paper's setting;
* :func:`compute_time`: the chapters' run times and the stored training stages' times;
* :func:`stage_figures`: each stored stage's wall time and peak memory (the meter's provenance fields);
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
from qpmlib.backbones import standin_names
from qpmlib.config import get_profile
from qpmlib.paper import DISCREPANCIES, METRICS, claim

__all__ = ["discrepancy_table", "profile_differences", "compute_time", "stage_figures", "stage_origins",
           "origins_summary", "setting_reason",
           "reproduction_counts"]

def discrepancy_table() -> pd.DataFrame:
    """reference_spec §10 as a table, with the variant this book uses and the option that switches it.

    Returns:
        DataFrame with columns ``row``, ``topic``, ``paper``, ``code``, ``book`` and ``option``.
    """
    return pd.DataFrame(DISCREPANCIES, columns=["row", "topic", "paper", "code", "book", "option"])


def profile_differences(profile: Any, *, pretrained: bool | None = None) -> pd.DataFrame:
    """What the given profile changes with respect to the paper's setting: the paper's text (Sec. 9, profile
    ``paper``), the authors' code (`qpm/dinov2.yaml`, profile ``paper_code``) and this run, side by side.

    Args:
        profile: a :class:`qpmlib.config.Profile` or its name.
        pretrained: whether the backbone weights were pretrained here (None: not known); the project's own
            stand-in (:func:`qpmlib.backbones.standin_names`) is named as such.

    Returns:
        DataFrame with columns ``item``, ``paper``, ``authors' code`` and ``this run``, and a boolean ``differs``
        (this run differs from the paper's text).

    Raises:
        ValueError: for an unknown profile name.
    """
    prof = get_profile(profile)
    weights = "unknown" if pretrained is None else ("pretrained" if pretrained else "fixed random")
    if pretrained and prof.backbone.name in standin_names():
        weights = "stand-in pretrained here on SynthBirds"

    def column(p: Any, weights: str) -> list[Any]:
        return ["+".join((p.data.dataset, *p.extra_datasets)), p.backbone.name, weights, p.data.image_size,
                p.model.n_layers, p.model.hidden_size, p.model.n_features, p.qp.n_selected, p.qp.n_per_class,
                f"{p.train.dense_epochs} / {p.train.ft_epochs}",
                f"{p.train.dense_batch_size} / {p.train.ft_batch_size}", len(p.seeds)]

    items = ["dataset", "backbone", "backbone weights", "image size [px]", "MLP layers", "hidden width", "N_f",
             "N*_f", "N^c_f", "dense / fine-tune epochs", "dense / fine-tune batch", "seeds"]
    df = pd.DataFrame({"item": items, "paper": column(get_profile("paper"), "pretrained"),
                       "authors' code": column(get_profile("paper_code"), "pretrained"),
                       "this run": column(prof, weights)})
    df = df.astype({"paper": str, "authors' code": str, "this run": str})
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


def stage_figures(profile: str, *, results_root: str | Path | None = None) -> pd.DataFrame:
    """Wall time and peak memory of every stored stage of a profile, per kind of stage.

    Reads the fields :func:`qpmlib.runs.provenance.measured` writes into each ``provenance.json``
    (``stage_seconds``, ``peak_rss_mib``, ``peak_cuda_mib``); stages stored before the meter existed are skipped.
    Stacked seeds share one measurement, so they count once.

    Args:
        profile: profile name.
        results_root: the results store root (default :func:`qpmlib.paths.results_dir` of the profile).

    Returns:
        DataFrame with columns ``stage`` (the kind: dense, qp, finetune, sldd_selection ...), ``count``
        (measurements), ``seconds`` (their sum), ``max_seconds``, ``peak_rss_mib`` and ``peak_cuda_mib`` (the
        largest; NaN where nothing ran on a GPU); empty when no measured stage is stored.
    """
    results_root = Path(results_root) if results_root is not None else paths.results_dir(profile)
    found: dict[str, dict[tuple, dict]] = {}
    for prov in sorted(results_root.glob("*/*/provenance.json")):
        if prov.parent.name.startswith("."):
            continue
        record = json.loads(prov.read_text())
        if not isinstance(record.get("stage_seconds"), (int, float)):
            continue
        figures = tuple(record.get(k) for k in ("stage_seconds", "peak_rss_mib", "peak_cuda_mib"))
        found.setdefault(prov.parent.parent.name, {})[figures] = record  # stacked seeds: one measurement

    def peak(values: list) -> float:
        numbers = [float(v) for v in values if isinstance(v, (int, float))]
        return max(numbers) if numbers else math.nan

    rows = [{"stage": kind, "count": len(measured), "seconds": sum(f[0] for f in measured),
             "max_seconds": max(f[0] for f in measured), "peak_rss_mib": peak([f[1] for f in measured]),
             "peak_cuda_mib": peak([f[2] for f in measured])} for kind, measured in sorted(found.items())]
    return pd.DataFrame(rows, columns=["stage", "count", "seconds", "max_seconds", "peak_rss_mib", "peak_cuda_mib"])


def stage_origins(profile: str, *, home: str | Path | None = None) -> pd.DataFrame:
    """Where the stored stages of a profile were computed: in-process or as Slurm jobs, on which host, or imported.

    Reads the ``executor`` and ``host`` of every stage's ``provenance.json`` in the profile's results store, and the
    record of imported archives (``<home>/imports.json``, written by :func:`qpmlib.runs.tasks.import_runs`); a stage
    that came in an archive counts as imported, whoever computed it first.

    Args:
        profile: profile name.
        home: the folder holding ``results/`` and ``imports.json`` (default :func:`qpmlib.paths.home`).

    Returns:
        DataFrame with columns ``origin`` (e.g. "in-process on node1", "Slurm jobs on gpu07", "imported from
        paper.tar"), ``stages``, ``slurm_jobs`` (distinct job ids) and ``seconds`` (their training time), most stages
        first; empty when nothing is stored.
    """
    home = Path(home) if home is not None else paths.home()
    imported: dict[str, str] = {}
    try:
        records = json.loads((home / "imports.json").read_text())
    except (OSError, ValueError):
        records = []
    for record in records if isinstance(records, list) else []:
        commit = (record.get("produced_by") or {}).get("exported_from_commit")
        label = f"imported from {record.get('archive')}" + (f" (exported at commit {commit[:10]})" if commit else "")
        imported.update({entry: label for entry in record.get("entries", [])})
    groups: dict[str, dict[str, Any]] = {}
    for prov in sorted((home / "results" / profile).glob("*/*/provenance.json")):
        if prov.parent.name.startswith(".") or prov.parent.parent.name.startswith("."):
            continue
        info = json.loads(prov.read_text())
        entry = prov.parent.relative_to(home).as_posix()
        executor, host = info.get("executor"), info.get("host") or "an unknown host"
        origin = imported.get(entry) or {"slurm": f"Slurm jobs on {host}", "local": f"in-process on {host}"}.get(
            executor, "not recorded (stored before executors were recorded)")
        group = groups.setdefault(origin, {"stages": 0, "jobs": set(), "seconds": 0.0})
        group["stages"] += 1
        if info.get("slurm_job_id"):
            group["jobs"].add(info["slurm_job_id"])
        if isinstance(info.get("total_seconds"), (int, float)):
            group["seconds"] += float(info["total_seconds"])
    rows = [{"origin": o, "stages": g["stages"], "slurm_jobs": len(g["jobs"]), "seconds": g["seconds"]}
            for o, g in groups.items()]
    frame = pd.DataFrame(rows, columns=["origin", "stages", "slurm_jobs", "seconds"])
    return frame.sort_values(["stages", "origin"], ascending=[False, True], ignore_index=True)


def origins_summary(origins: pd.DataFrame) -> str:
    """One sentence on :func:`stage_origins`: how many stored stages, how many imported, how many computed here."""
    total = int(origins["stages"].sum())
    if total == 0:
        return "No stage is stored yet."
    imported = int(origins.loc[origins["origin"].str.startswith("imported"), "stages"].sum())
    jobs = int(origins.loc[origins["origin"].str.startswith("Slurm"), "stages"].sum())
    if imported == total:
        return f"All {total} stored stages were imported from archives: this book trained nothing itself."
    return (f"{total} stored stages: {imported} imported, {jobs} computed as Slurm jobs, "
            f"{total - imported - jobs} computed in-process (or not recorded).")


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
        + (["the project's SynthBirds-pretrained stand-in for DINOv2"]
           if pretrained and prof.backbone.name in standin_names() else [])
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
