"""Tests for qpmlib.runs.tasks: the book's runs as executor tasks (specs, keys, dry run, local and Slurm jobs).

The ``slurm``-marked test runs real smoke runs as jobs on the one-node cluster of ``tests/slurm_cluster.py``
(skipped, with the reason, where Slurm is missing) and compares them with the same runs computed in-process.
"""

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

from qpmlib.analysis.report import origins_summary, stage_origins
from qpmlib.config import apply_overrides, get_profile
from qpmlib.results import CONFIG_FILE, METRICS_FILE
from qpmlib.runs import executor as ex
from qpmlib.runs import tasks
from qpmlib.runs.executor import RunReport, resolve_executor
from qpmlib.runs.methods import RunRequest, method_profile

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QPMLIB_EXECUTOR", raising=False)
    torch.set_num_threads(1)
    return tmp_path / "home"


# ---------------------------------------------------------------------------------------------- specs
def test_a_spec_names_only_what_differs_and_gives_back_the_run():
    spec = tasks.run_spec("dino_qpm", "smoke", 3, {"train.ft_l1_fm": 0.0, "qp.n_selected": 6})
    assert spec == {"profile": "smoke", "method": "dino_qpm", "seed": 3, "dataset": "synthbirds",
                    "overrides": {"train.ft_l1_fm": 0.0, "qp.n_selected": 6}}
    assert tasks.spec_profile(spec) == method_profile("dino_qpm", "smoke", {"train.ft_l1_fm": 0.0,
                                                                            "qp.n_selected": 6})
    # a job reads its spec back from JSON: tuples come back as lists, and must give the same run
    spec = tasks.run_spec("dino_qpm_compact", "smoke", 0, {"baselines.compact": (6, 1)})
    assert spec["overrides"] == {"baselines.compact": [6, 1]}
    assert tasks.spec_profile(json.loads(json.dumps(spec))) == \
        method_profile("dino_qpm_compact", "smoke", {"baselines.compact": (6, 1)})
    # an override equal to the profile's value, or to what the method sets itself, is not repeated
    smoke = get_profile("smoke")
    assert tasks.run_spec("dino_qpm", "smoke", 0, {"qp.n_selected": smoke.qp.n_selected})["overrides"] == {}
    assert tasks.run_spec("linear_probe", "smoke", 0, {"model.n_layers": 0})["overrides"] == {}
    # a changed profile object becomes overrides of its registered name; an unregistered name is refused
    changed = smoke.replace(seeds=(0, 1))
    assert tasks.run_spec("dense", changed, 0) == tasks.run_spec("dense", "smoke", 0)
    with pytest.raises(ValueError, match="not one of"):
        tasks.run_spec("dense", smoke.replace(name="mine"), 0)


def test_requests_become_specs_without_repeats():
    requests = [RunRequest.of("dino_qpm", [0, 1]), RunRequest.of("dino_qpm", [1], {"qp.n_selected": 8}),
                RunRequest.of("dense", [0])]
    specs = tasks.request_specs(requests, "smoke")
    assert [(s["method"], s["seed"]) for s in specs] == [("dino_qpm", 0), ("dino_qpm", 1), ("dense", 0)]


def test_the_stage_list_follows_the_head():
    prof, inputs = get_profile("smoke"), {"weights_id": "w", "pretrained": False}
    assert list(tasks.run_stage_configs("dino_qpm", method_profile("dino_qpm", prof), 0, inputs, inputs)) == \
        ["dense", "qp", "qpm"]
    assert list(tasks.run_stage_configs("linear_probe", method_profile("linear_probe", prof), 0, inputs,
                                        inputs)) == ["dense"]
    assert list(tasks.run_stage_configs("dino_sldd", method_profile("dino_sldd", prof), 0, inputs, inputs)) == \
        ["dense", "sldd_selection", "dino_sldd"]


# ---------------------------------------------------------------------------------------------- dry run
def test_dry_run_lists_each_store_and_run_once_with_closed_form_estimates(home):
    # DINO-QPM-compact is DINO-QPM with Compact's QP sizes: one run, one task (the first request's name)
    compact = RunRequest.of("dino_qpm_compact", [0])
    same = RunRequest.of("dino_qpm", [0], {"qp.n_selected": 6, "qp.n_per_class": 1})
    run_plan, pending = tasks.plan_requests([compact, same, RunRequest.of("dense", [0])], "smoke")
    names = [j.task.name for j in run_plan.jobs]
    assert [n.split("/")[0] for n in names] == ["embed", "embed", "dino_qpm_compact", "dense"]
    assert pending == 2 and len(run_plan.to_submit) == 4
    assert all(j.resources.gpus == 0 for j in run_plan.jobs) and run_plan.gpu_hours == 0.0  # smoke: CPU jobs
    assert not (home / "results").exists()  # a dry run computes and stores nothing

    # paper figures: a run costs run_overhead_s plus the epochs of each stage it is the first to need
    # the paper profile demands pretrained weights, which this machine lacks (the dry run would say so): "auto"
    # plans with the fixed random weights instead, at the same sizes
    paper = apply_overrides("paper", {"backbone.weights": "auto"})
    c, t = paper.cluster, paper.train
    probe, qpm, l1 = (RunRequest.of("linear_probe", [0]), RunRequest.of("dino_qpm", [0]),
                      RunRequest.of("dino_qpm", [0], {"train.ft_l1_fm": 0.0}))
    run_plan, _ = tasks.plan_requests([probe, qpm, l1], paper)
    hours = {j.task.name.split("/")[0] + ("+l1" if "ft_l1_fm" in j.task.name else ""): j.gpu_hours
             for j in run_plan.jobs}
    assert hours["linear_probe"] == pytest.approx((c.run_overhead_s + 40 * c.probe_seconds_per_epoch) / 3600)
    full = c.run_overhead_s + (t.dense_epochs + t.ft_epochs) * c.seconds_per_epoch
    assert hours["dino_qpm"] == pytest.approx(full / 3600)
    assert hours["dino_qpm+l1"] == pytest.approx((c.run_overhead_s + t.ft_epochs * c.seconds_per_epoch) / 3600)
    assert hours["embed"] == pytest.approx(5794 / c.extract_images_per_s / 3600)  # CUB's test split, 1 GPU


def test_executor_choice_argument_then_environment_then_profile(monkeypatch):
    monkeypatch.delenv("QPMLIB_EXECUTOR", raising=False)
    smoke = get_profile("smoke")
    slurm_smoke = smoke.replace(cluster=dataclasses.replace(smoke.cluster, executor="slurm"))
    assert resolve_executor(None, "smoke") == "local" and resolve_executor(None, slurm_smoke) == "slurm"
    monkeypatch.setenv("QPMLIB_EXECUTOR", "local")
    assert resolve_executor(None, slurm_smoke) == "local" and resolve_executor("slurm", "smoke") == "slurm"
    monkeypatch.setenv("QPMLIB_EXECUTOR", "ray")
    with pytest.raises(ValueError, match=r"unknown executor 'ray' \(from \$QPMLIB_EXECUTOR\)"):
        resolve_executor(None, "smoke")
    # run_methods and run_seeds reach the tasks through a name (this module builds on theirs); nothing for local
    assert ex._load(ex.ENSURE_RUNS) is tasks.ensure_method_runs
    assert ex.cluster_runs("dino_qpm", [0], "smoke", executor="local") is None


# ---------------------------------------------------------------------------------------------- local runs
def _scores(path):
    """A stored stage's metrics without its timings (which differ between two computations of one run)."""
    return {k: v for k, v in json.loads((Path(path) / METRICS_FILE).read_text()).items() if "seconds" not in k}


@pytest.mark.slow
def test_local_compute_extracts_then_runs_and_recomputes_only_a_damaged_stage(home):
    requests = [RunRequest.of("dino_qpm", [0], {"train.dense_epochs": 1, "train.ft_epochs": 1})]
    extract, runs = tasks.compute_requests(requests, "smoke", executor="local", verbose=False)
    assert (len(extract.computed), len(runs.computed)) == (2, 1)
    spec = tasks.request_specs(requests, "smoke")
    task, = tasks.run_tasks(spec)
    stages = [Path(p) for p in (*task.key.requires, task.key.path)]
    assert [p.parent.name for p in stages] == ["dense", "qp", "qpm"] and task.key.exists()
    run, = requests[0].run("smoke", compute=False)  # what a chapter loads: the entries the task computed
    assert run.metrics == json.loads((Path(task.key.path) / METRICS_FILE).read_text())
    entries = tasks.spec_entries(spec)
    assert entries[:2] == [Path(t.key.path) for t in tasks.extraction_tasks(spec)] and entries[2:] == stages

    again = tasks.compute_requests(requests, "smoke", executor="local", verbose=False)
    assert [r.computed for r in again] == [[], []] and len(again[1].stored) == 1

    # a damaged stage is not served: the run task is due again, and computing it repairs that stage
    before = _scores(stages[0])
    (stages[0] / METRICS_FILE).write_text(json.dumps({**before, "accuracy": 1.0}))
    assert not task.key.exists()
    with pytest.raises(FileNotFoundError, match="not stored or damaged"):
        tasks.spec_entries(spec)
    repaired = tasks.compute_requests(requests, "smoke", executor="local", verbose=False)
    assert repaired[1].computed == [task.name] and task.key.exists() and _scores(stages[0]) == before


# ---------------------------------------------------------------------------------------------- real Slurm
@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_runs_store_what_local_runs_store(slurm_cluster, tmp_path, monkeypatch):
    requests = [RunRequest.of("dino_qpm", [0], {"train.dense_epochs": 1, "train.ft_epochs": 1}),
                RunRequest.of("linear_probe", [1], {"train.dense_epochs": 1})]
    specs = tasks.request_specs(requests, "smoke")
    monkeypatch.delenv("QPMLIB_EXECUTOR", raising=False)
    monkeypatch.setenv("QPMLIB_DATA", str(tmp_path / "data"))  # one dataset folder: the stores' keys hash its path
    torch.set_num_threads(1)
    found = {}
    for executor in ("local", "slurm"):
        monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / executor))
        reports = tasks.compute_requests(requests, "smoke", executor=executor, folder=tmp_path / "jobs",
                                         verbose=False)
        assert all(isinstance(r, RunReport) and r.executor == executor for r in reports)
        assert [len(r.computed) for r in reports] == [2, 2], slurm_cluster.log_tails()
        entries = tasks.spec_entries(specs)
        found[executor] = ({p.relative_to(tmp_path / executor) for p in entries}, reports[1].jobs,
                           [p for p in entries if p.parent.parent.name == "smoke"])
        origins = stage_origins("smoke")
        assert len(origins) == 1 and origins.stages[0] == 4  # dense, qp, qpm of DINO-QPM; the probe's dense
        assert origins.slurm_jobs[0] == (2 if executor == "slurm" else 0)
        assert origins.origin[0].startswith("Slurm jobs on " if executor == "slurm" else "in-process on ")
    (local_names, _, local_stages), (slurm_names, jobs, slurm_stages) = found["local"], found["slurm"]
    assert local_names == slurm_names  # the same embedding stores and stages, under the same hashes
    for a, b in zip(local_stages, slurm_stages):
        assert (a / CONFIG_FILE).read_bytes() == (b / CONFIG_FILE).read_bytes()
        assert _scores(a) == _scores(b), a.parent.name  # the same numbers
        prov_a, prov_b = (json.loads((p / "provenance.json").read_text()) for p in (a, b))
        assert (prov_a["executor"], prov_a["slurm_job_id"]) == ("local", None)
        assert prov_b["executor"] == "slurm" and prov_b["slurm_job_id"] in {i for ids in jobs.values() for i in ids}
    assert os.environ.get("QPMLIB_EXECUTOR") is None  # the jobs' own setting never leaks into the caller


# ---------------------------------------------------------------------------------------------- export, import
@pytest.mark.slow
def test_export_then_import_elsewhere_loads_every_run_without_computing(home, tmp_path, monkeypatch):
    import shutil

    from qpmlib import embeddings
    from qpmlib.data import dataset_root
    from qpmlib.runs import baselines, dino_qpm

    requests = [RunRequest.of("dino_qpm", [0], {"train.dense_epochs": 1, "train.ft_epochs": 1}),
                RunRequest.of("dino_sldd", [0], {"train.dense_epochs": 1, "train.ft_epochs": 1})]
    tasks.compute_requests(requests, "smoke", executor="local", verbose=False)
    before = [run.metrics for r in requests for run in r.run("smoke", compute=False)]
    here = stage_origins("smoke")
    assert list(here.origin) == [f"in-process on {socket.gethostname()}"] and here.slurm_jobs.tolist() == [0]
    n_stages = int(here.stages.sum())
    assert n_stages == 6 and "0 imported, 0 computed as Slurm jobs, 6 computed in-process" in origins_summary(here)
    manifest = tasks.export_runs(tmp_path / "runs.tar", requests, "smoke", verbose=False)
    assert manifest["produced_by"]["profile"] == "smoke" and manifest["produced_by"]["runs"] == 2
    assert len(manifest["produced_by"]["embedding_stores"]) == 2  # both splits of the one store the runs read

    # another machine: an empty home, the same (generated) dataset in another folder
    root = dataset_root(get_profile("smoke").data)
    other_data = tmp_path / "data"
    shutil.copytree(root, other_data / root.name)
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "laptop"))
    monkeypatch.setenv("QPMLIB_DATA", str(other_data))
    report = tasks.import_runs(tmp_path / "runs.tar", verbose=False)
    assert sorted(report.added) == sorted(manifest["entries"]) and report.present == []

    def no_work(*args, **kwargs):
        raise AssertionError("an imported run should be loaded, not computed")

    for module, name in ((dino_qpm, "train_dense"), (dino_qpm, "train_finetune"), (baselines, "train_dense"),
                         (embeddings, "_build")):
        monkeypatch.setattr(module, name, no_work)
    assert [run.metrics for r in requests for run in r.run("smoke")] == before
    there = stage_origins("smoke")  # the provenance page of the book rendered from the archive
    assert len(there) == 1 and there.origin[0].startswith("imported from runs.tar") and there.stages[0] == n_stages
    assert origins_summary(there) == f"All {n_stages} stored stages were imported from archives: this book " \
        "trained nothing itself."
    stores = sorted(p.name for p in (tmp_path / "laptop" / "cache").iterdir() if not p.name.startswith("."))
    assert stores == sorted(embeddings.store_path("smoke", split).name for split in ("train", "test"))
    assert tasks.import_runs(tmp_path / "runs.tar", verbose=False).added != []  # the stores moved: found again
    assert sorted(p.name for p in (tmp_path / "laptop" / "cache").iterdir() if not p.name.startswith(".")) == stores


@pytest.mark.slow
@pytest.mark.slurm
def test_a_chapter_with_the_slurm_executor_gets_its_runs_from_jobs(slurm_cluster, tmp_path, monkeypatch):
    from qpmlib.runs.methods import run_methods

    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QPMLIB_EXECUTOR", "slurm")
    overrides = {"train.dense_epochs": 1, "train.ft_epochs": 1}
    runs = run_methods("dino_qpm_compact", "smoke", [2, 3], overrides=overrides)  # what a table's runner calls
    jobs = [r.stages[kind].provenance["slurm_job_id"] for r in runs for kind in ("dense", "qp", "qpm")]
    assert all(jobs) and len(set(jobs)) == 2  # one job per (method, seed, setting) computed all its stages
    assert all(r.stages["qpm"].provenance["executor"] == "slurm" for r in runs)
    assert [r.seed for r in runs] == [2, 3] and all(0.0 <= r.metrics["accuracy"] <= 1.0 for r in runs)
    again = run_methods("dino_qpm_compact", "smoke", [2, 3], overrides=overrides, compute=False)
    assert [r.metrics for r in again] == [r.metrics for r in runs]
