"""Tests for qpmlib.runs.executor: tasks, the local executor, the dry run, and the slurm executor on a real cluster.

The ``slurm``-marked tests run on the one-node cluster of ``tests/slurm_cluster.py`` (skipped, with the reason,
where the Slurm and MUNGE binaries are missing). Their jobs are probes of a few kB and a few seconds.
"""

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)
from submitit.core.utils import JobPaths
from submitit.slurm.slurm import _make_sbatch_string

from qpmlib.results import CONFIG_FILE, METRICS_FILE, ResultStore
from qpmlib.runs import executor as ex
from qpmlib.runs.executor import Resources, RunsNotFinished, StoreKey, Task, compute, plan, probe_task, run_task

TINY = {"default": Resources(cpus=1, mem_gb=0.25, time_min=5)}
SAME_BYTES = (CONFIG_FILE, METRICS_FILE, "probe.safetensors")  # provenance says where it ran, so it differs


def _expected_metrics(seed, size=8):
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {"trace": float(x.trace()), "frobenius": float(torch.linalg.matrix_norm(x))}


def _entry(task):
    return Path(task.key.path)


def _checkpoint(root, seed, size=8):
    return ResultStore(root, "probe").work_dir(ex._probe_config(seed, size)) / "checkpoint.json"


def _assert_clean_and_correct(task, seed):
    entry = _entry(task)
    assert json.loads((entry / METRICS_FILE).read_text()) == pytest.approx(_expected_metrics(seed), rel=1e-12)
    assert not [p.name for p in entry.parent.iterdir() if p.name.startswith((".tmp-", ".work-"))]


# ---------------------------------------------------------------------------------------------- tasks, local
def test_tasks_check_their_function_arguments_and_key(tmp_path):
    key = StoreKey(str(tmp_path / "e"))
    with pytest.raises(ValueError, match="unknown function 'nope'; registered: extract, probe, run"):
        Task("t", "nope", {}, key)
    with pytest.raises(TypeError, match="JSON-ready"):
        Task("t", "probe", {"x": object()}, key)
    with pytest.raises(ValueError, match="absolute path"):
        StoreKey("relative/entry")
    with pytest.raises(ValueError, match="registered: extract, probe, run"):
        ex.resolve_function("nope")
    assert Task("t", "probe", {"x": (1, 2)}, key).kwargs == {"x": [1, 2]}  # stored as plain JSON data


def test_store_key_with_a_marker_waits_for_the_complete_flag(tmp_path):
    key = StoreKey(str(tmp_path / "store"), marker="manifest.json")
    assert not key.exists()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text(json.dumps({"complete": False}))
    assert not key.exists()
    (tmp_path / "store" / "manifest.json").write_text("{not json")
    assert not key.exists()
    (tmp_path / "store" / "manifest.json").write_text(json.dumps({"complete": True}))
    assert key.exists()


def test_local_executor_stores_each_missing_entry_once(tmp_path):
    tasks = [probe_task(tmp_path, seed) for seed in (0, 1)]
    report = compute(tasks, executor="local", verbose=False)
    assert report.computed == ["probe/seed=0", "probe/seed=1"] and report.stored == []
    for seed, task in enumerate(tasks):
        _assert_clean_and_correct(task, seed)
    mtime = (_entry(tasks[0]) / METRICS_FILE).stat().st_mtime_ns
    again = compute(tasks + [tasks[0]], executor="local", verbose=False)  # a repeated task is computed once
    assert again.computed == [] and again.stored == ["probe/seed=0", "probe/seed=1"]
    assert (_entry(tasks[0]) / METRICS_FILE).stat().st_mtime_ns == mtime


def test_executor_from_environment_and_unknown_names(tmp_path, monkeypatch):
    task = probe_task(tmp_path, 0)
    monkeypatch.setenv(ex.ENV_EXECUTOR, "local")
    assert compute([task], verbose=False).executor == "local"
    with pytest.raises(ValueError, match="choose one of local, slurm"):
        compute([task], executor="ray")


def test_two_different_tasks_for_one_entry_are_refused(tmp_path):
    task = probe_task(tmp_path, 0)
    other = Task("other", "probe", {**task.kwargs, "sleep_s": 1.0}, task.key)
    with pytest.raises(ValueError, match="write the same entry"):
        compute([task, other], executor="local", verbose=False)
    namesake = Task(task.name, "probe", task.kwargs, StoreKey(str(tmp_path / "elsewhere")))
    with pytest.raises(ValueError, match="names must be unique"):
        plan([task, namesake])


def test_run_task_refuses_a_function_that_publishes_nothing(tmp_path):
    task = probe_task(tmp_path, 0)
    wrong = Task("wrong key", "probe", task.kwargs, StoreKey(str(tmp_path / "elsewhere")))
    with pytest.raises(RuntimeError, match="returned without publishing"):
        run_task(wrong)
    assert task.key.exists() and run_task(task) == "stored"  # it wrote its own entry, which the real task finds
    fresh = probe_task(tmp_path, 1)
    assert run_task(fresh) == "computed" and run_task(fresh) == "stored"


def test_local_failure_raises_the_task_error(tmp_path):
    with pytest.raises(RuntimeError, match="asked to fail"):
        compute([probe_task(tmp_path, 0, fail=True)], executor="local", verbose=False)


def test_local_workers_compute_in_parallel_processes_with_the_same_results(tmp_path):
    tasks = [probe_task(tmp_path / "pool", seed) for seed in range(4)]
    report = compute(tasks, executor="local", workers=2, verbose=False)
    assert sorted(report.computed) == [t.name for t in tasks] and report.stored == []
    for seed, task in enumerate(tasks):
        _assert_clean_and_correct(task, seed)
        same = probe_task(tmp_path / "serial", seed)
        compute([same], executor="local", verbose=False)
        for name in SAME_BYTES:  # a worker stores byte for byte what this process stores
            assert (_entry(task) / name).read_bytes() == (_entry(same) / name).read_bytes()
    again = compute(tasks, executor="local", workers=2, verbose=False)
    assert again.computed == [] and len(again.stored) == 4


def test_local_workers_raise_the_first_failure_and_refuse_a_bad_count(tmp_path):
    tasks = [probe_task(tmp_path, 0, fail=True), probe_task(tmp_path, 1)]
    with pytest.raises(RuntimeError, match="asked to fail"):
        compute(tasks, executor="local", workers=2, verbose=False)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        compute([probe_task(tmp_path, 2)], executor="local", workers=0, verbose=False)


def test_torch_threads_holds_a_count_and_restores_the_old_one():
    before = torch.get_num_threads()
    with ex.torch_threads(1):
        assert torch.get_num_threads() == 1
        with ex.torch_threads(None):  # None leaves the count alone
            assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="integer >= 1 or None"):
        with ex.torch_threads(0):
            pass
    assert torch.get_num_threads() == before


def test_slurm_executor_says_when_the_slurm_commands_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="needs the Slurm commands sbatch, squeue, srun, scancel"):
        compute([probe_task(tmp_path, 0)], executor="slurm", folder=tmp_path / "jobs", verbose=False)


# ---------------------------------------------------------------------------------------------- resources, plan
def test_resources_become_sbatch_options(tmp_path):
    res = Resources.from_mapping({"gpus": 2, "cpus": 8, "mem_gb": 1.5, "time_min": 90, "partition": "gpu",
                                  "sbatch": {"account": "proj42"}, "setup": ["module load cuda"]})
    script = _make_sbatch_string(command="python job.py", folder=tmp_path, **res.sbatch_parameters())
    for line in ("#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=1536M",
                 "#SBATCH --time=90", "#SBATCH --partition=gpu", "#SBATCH --account=proj42", "module load cuda"):
        assert line in script
    assert "gpus" not in _make_sbatch_string(command="x", folder=tmp_path, **Resources().sbatch_parameters())
    assert res.describe() == "2 GPU, 8 CPU, 1.5 GB, 1:30 h"
    with pytest.raises(ValueError, match="unknown resource fields \\['gpu'\\]; valid: gpus, cpus"):
        Resources.from_mapping({"gpu": 1})
    with pytest.raises(ValueError, match="cpus >= 1"):
        Resources(cpus=0)


def test_stage_resources_fall_back_to_default_or_name_the_stages():
    assert ex._stage_resources("train", {"default": {"gpus": 1}}).gpus == 1
    assert ex._stage_resources("train", None) == Resources()
    with pytest.raises(ValueError, match="no resources for stage 'train' and no 'default' entry; stages given: embed"):
        ex._stage_resources("train", {"embed": {}})


def test_plan_lists_the_missing_jobs_and_adds_their_estimates(tmp_path):
    tasks = [probe_task(tmp_path, seed, stage="train" if seed else "embed") for seed in range(4)]
    compute(tasks[:1], executor="local", verbose=False)
    res = {"embed": {"gpus": 1, "time_min": 30}, "train": {"gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 120}}
    p = plan(tasks, gpu_hours={"probe/seed=0": 9.0, "probe/seed=1": 0.5, "probe/seed=2": 0.25}, resources=res)
    assert [j.task.name for j in p.to_submit] == ["probe/seed=1", "probe/seed=2", "probe/seed=3"]
    assert p.gpu_hours == pytest.approx(0.75)  # the stored task's 9 h are not spent again
    text = str(p)
    assert "probe/seed=1  train       1 GPU, 8 CPU, 32 GB, 2:00 h" in text and "probe/seed=0" not in text
    assert "stage train: 3 job(s), 1 GPU, 8 CPU, 32 GB, 2:00 h each, estimated 0.8 GPU-hours" in text
    assert text.splitlines()[-1] == ("3 job(s) to submit, 1 already stored; estimated 0.8 GPU-hours "
                                     "(1 job(s) without an estimate)")


def test_parse_squeue_reads_plain_and_array_jobs():
    out = "12|RUNNING\n13_0|PENDING\n13_1|completed\n\n"
    assert ex.parse_squeue(out) == {"12": "RUNNING", "13_0": "PENDING", "13_1": "COMPLETED"}


def test_a_task_is_done_once_its_entry_exists_and_its_job_no_longer_runs(tmp_path):
    task, suspect = probe_task(tmp_path, 0), set()
    assert ex._verdict(task, "PENDING", suspect) == "queued" and ex._verdict(task, "RUNNING", suspect) == "running"
    assert ex._verdict(task, "", suspect) == "running"  # gone without the entry: ended only on the next look
    assert ex._verdict(task, "", suspect) == "ended"
    _entry(task).mkdir(parents=True)  # published; the job may still be removing its scratch folder
    assert ex._verdict(task, "RUNNING", suspect) == ex._verdict(task, "COMPLETING", suspect) == "running"
    assert ex._verdict(task, "", suspect) == "done"
    assert ex._verdict(task, "PENDING", suspect) == "done"  # requeued after publishing: it will find the entry


# ---------------------------------------------------------------------------------------------- real Slurm
def _stderr(folder, job_id):
    return JobPaths(Path(folder) / "%j", job_id=job_id, task_id=0).stderr.read_text()


@pytest.mark.slurm
def test_slurm_and_local_store_identical_results(slurm_cluster, tmp_path):
    local = [probe_task(tmp_path / "local", seed) for seed in (0, 1)]
    remote = [probe_task(tmp_path / "slurm", seed) for seed in (0, 1)]
    compute(local, executor="local", verbose=False)
    report = compute(remote, executor="slurm", resources=TINY, folder=tmp_path / "jobs", poll_s=0.5, verbose=False)
    assert sorted(report.computed) == ["probe/seed=0", "probe/seed=1"]
    assert all(len(ids) == 1 for ids in report.jobs.values())
    for seed, (a, b) in enumerate(zip(local, remote)):
        assert _entry(a).name == _entry(b).name  # same configuration hash
        for name in SAME_BYTES:
            assert (_entry(a) / name).read_bytes() == (_entry(b) / name).read_bytes(), name
        _assert_clean_and_correct(b, seed)
        prov = json.loads((_entry(b) / "provenance.json").read_text())
        assert prov["slurm_job_id"] == report.jobs[b.name][0]  # an array task, e.g. "1_0", as squeue names it
        assert json.loads((_entry(a) / "provenance.json").read_text())["slurm_job_id"] is None


def _long_probe_running(seed, tmp_path, cluster):
    """Start compute() of a 120-s probe in a thread; return (task, thread, out, job id) once its job has written
    its checkpoint (it is then inside its long computation)."""
    task, out = probe_task(tmp_path / "store", seed, sleep_s=120), {}

    def run():
        try:
            out["report"] = compute([task], executor="slurm", resources=TINY, folder=tmp_path / "jobs", poll_s=0.5,
                                    verbose=False)
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)  # never keeps pytest from exiting
    thread.start()
    checkpoint = _checkpoint(tmp_path / "store", seed)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), cluster.log_tails()
    return task, thread, out, json.loads((tmp_path / "jobs" / "ledger.json").read_text())[task.key.path]


def _joined(thread, out):
    """The report of the compute() call of :func:`_long_probe_running`, once it has finished."""
    thread.join(timeout=240)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    return out["report"]


@pytest.mark.slurm
def test_cancelled_job_is_resubmitted_and_nothing_half_written_is_served(slurm_cluster, tmp_path):
    task, waiter, out, first = _long_probe_running(3, tmp_path, slurm_cluster)
    slurm_cluster.run("scancel", first)
    time.sleep(1)
    assert not task.key.exists() and ResultStore(tmp_path / "store", "probe").keys() == []
    jobs = _joined(waiter, out).jobs[task.name]
    assert jobs[0] == first and len(jobs) == 2  # cancelled, then submitted again
    prov = json.loads((_entry(task) / "provenance.json").read_text())
    assert prov["slurm_job_id"] == jobs[1] and prov["resumed"] is True  # went on from the killed job's checkpoint
    assert "CANCELLED" in _stderr(tmp_path / "jobs", first)
    _assert_clean_and_correct(task, 3)


@pytest.mark.slurm
def test_requeued_job_is_waited_for_not_submitted_twice(slurm_cluster, tmp_path):
    task, waiter, out, job = _long_probe_running(4, tmp_path, slurm_cluster)
    slurm_cluster.run("scontrol", "requeue", job)  # what preemption with PreemptMode=REQUEUE does
    deadline = time.monotonic() + 60
    while "PENDING" not in slurm_cluster.run("squeue", "--noheader", "--jobs", job, "--format=%T", check=False):
        assert time.monotonic() < deadline, slurm_cluster.log_tails()
        time.sleep(0.5)
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")  # skip Slurm's 2-minute requeue delay
    assert _joined(waiter, out).jobs[task.name] == [job]
    prov = json.loads((_entry(task) / "provenance.json").read_text())
    assert prov["slurm_job_id"] == job and prov["resumed"] is True
    _assert_clean_and_correct(task, 4)


@pytest.mark.slurm
def test_two_jobs_writing_one_entry_give_one_result(slurm_cluster, tmp_path):
    task = probe_task(tmp_path / "store", 5, sleep_s=3)
    reports = {}

    def run(folder):
        reports[folder] = compute([task], executor="slurm", resources=TINY, folder=tmp_path / folder, poll_s=0.5,
                                  verbose=False)

    # two separate callers (separate job folders, so neither knows the other's job) submit at the same time
    threads = [threading.Thread(target=run, args=(f,), daemon=True) for f in ("jobs_a", "jobs_b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert sorted(reports) == ["jobs_a", "jobs_b"]
    logs = {f: _stderr(tmp_path / f, reports[f].jobs[task.name][0]) for f in reports}
    outcomes = sorted("computed and stored" in text for text in logs.values())
    assert outcomes == [False, True], logs  # one job computed it, the other found it stored
    assert all("already stored" in text for text in logs.values() if "computed and stored" not in text)
    assert ResultStore(tmp_path / "store", "probe").keys() == [_entry(task).name]
    winner = next(f for f, text in logs.items() if "computed and stored" in text)
    prov = json.loads((_entry(task) / "provenance.json").read_text())
    assert prov["slurm_job_id"] == reports[winner].jobs[task.name][0]
    _assert_clean_and_correct(task, 5)


@pytest.mark.slurm
def test_failing_task_is_retried_then_named(slurm_cluster, tmp_path):
    task, good = probe_task(tmp_path / "store", 7, fail=True), probe_task(tmp_path / "store", 8)
    with pytest.raises(RunsNotFinished) as info:
        compute([task, good], executor="slurm", resources=TINY, folder=tmp_path / "jobs", max_retries=1, poll_s=0.5,
                verbose=False)
    assert good.key.exists()  # the other tasks finish before the error is raised
    assert list(info.value.failed) == ["probe/seed=7"]
    why = info.value.failed["probe/seed=7"]
    assert "after 2 attempt(s)" in why and "asked to fail" in why  # the end of the job's error log
    assert str(tmp_path / "jobs") in str(info.value)
    assert not task.key.exists()


@pytest.mark.slurm
def test_a_later_call_waits_for_the_jobs_of_an_earlier_one(slurm_cluster, tmp_path):
    task = probe_task(tmp_path / "store", 9, sleep_s=2)
    kwargs = dict(executor="slurm", resources=TINY, folder=tmp_path / "jobs", poll_s=0.5, verbose=False)
    first = compute([task], wait=False, **kwargs)
    assert first.computed == [] and not task.key.exists()
    second = compute([task], **kwargs)
    assert second.jobs == first.jobs and second.computed == [task.name]  # adopted, not submitted twice
    _assert_clean_and_correct(task, 9)


@pytest.mark.slurm
def test_resources_the_cluster_lacks_are_named(slurm_cluster, tmp_path):
    task = probe_task(tmp_path / "store", 11, stage="train")
    with pytest.raises(RuntimeError, match="Slurm refused the jobs of stage 'train' .*invalid partition"):
        compute([task], executor="slurm", resources={"train": {"partition": "gpu", "mem_gb": 0.25}},
                folder=tmp_path / "jobs", verbose=False)
