"""Where missing runs are computed: in this process (``local``) or as Slurm jobs through submitit (``slurm``).

A :class:`Task` is a small description of one run that pickles and prints: the registry name of the function that
computes it (a key of :data:`TASK_FUNCTIONS`), plain JSON-ready keyword arguments, the stage that picks its
:class:`Resources`, and the :class:`StoreKey` of the entry it writes. :func:`compute` runs the tasks whose entry is
missing, with one executor:

* ``local``: one after another in this process (what chapters have always done), or with ``workers`` > 1 in as
  many spawned processes (each computes one task at a time, exactly as this process would);
* ``slurm``: one Slurm job per task through submitit, with the GPUs, CPUs, memory and time of the task's stage.
  The call waits, showing how many jobs are queued, running and done; a job that ends without its entry (failed,
  cancelled, preempted, timed out, node lost) is submitted again, up to ``max_retries`` times, and at the end
  :class:`RunsNotFinished` names the tasks that never finished. Jobs submitted by an earlier call that is still
  queued or running are waited for, not submitted twice (a ledger in the jobs folder remembers them).

Jobs are idempotent (:func:`run_task`): a job returns at once when its entry exists; otherwise it takes the entry's
lock, looks again, and calls the task function, which publishes the entry atomically (temporary name, fsync,
rename). A job killed halfway therefore leaves nothing that looks complete, and two jobs on one entry give one
result: the second waits for the lock, then finds the entry.

The executor is chosen by the ``executor`` argument, else ``$QPMLIB_EXECUTOR``, else ``local``. submitit hands each
job its call as a pickle written by this process; the waiting loop itself never loads a pickle that a job wrote: it
reads job states from ``squeue`` and results from the store.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import getpass
import importlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import torch
from submitit.core.utils import FailedJobError, JobPaths
from tqdm import tqdm

from qpmlib import paths
from qpmlib.config import get_profile
from qpmlib.embeddings import open_store
from qpmlib.files import atomic_write, file_lock
from qpmlib.results import ResultData, ResultStore, is_served, provenance, slurm_job_id

__all__ = [
    "EXECUTORS",
    "ENV_EXECUTOR",
    "TASK_FUNCTIONS",
    "StoreKey",
    "Task",
    "Resources",
    "RunReport",
    "RunsNotFinished",
    "PlannedJob",
    "RunPlan",
    "compute",
    "cluster_runs",
    "resolve_executor",
    "run_task",
    "torch_threads",
    "slurm_job_id",
    "plan",
    "parse_squeue",
    "resolve_function",
    "probe",
    "probe_task",
]

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
ENV_EXECUTOR = "QPMLIB_EXECUTOR"

#: Task functions by registry name: ``"module:function"``, imported only when a task runs. Each function takes
#: the task's keyword arguments and publishes the task's entry atomically before it returns.
TASK_FUNCTIONS: dict[str, str] = {
    "probe": "qpmlib.runs.executor:probe",
    "extract": "qpmlib.runs.tasks:extract_split",  # one embedding store: (dataset, split, backbone)
    "run": "qpmlib.runs.tasks:compute_run",  # one run: (profile + overrides, method, seed, dataset)
}

#: The function :func:`cluster_runs` runs (``module:function``).
ENSURE_RUNS = "qpmlib.runs.tasks:ensure_method_runs"

_LOCK_FOLDER = ".locks"  # beside the entries, like the results store's own locks (hidden: listings skip it)
_LEDGER_FILE = "ledger.json"
# squeue states (man squeue, JOB STATE CODES) of a job that has not ended yet
_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING"}
_SLURM_COMMANDS = ("sbatch", "squeue", "srun", "scancel")
_SQUEUE_PATIENCE_S = 600  # how long the waiting loop goes on while squeue keeps failing


def resolve_executor(executor: str | None = None, profile: Any = None) -> str:
    """The executor to use: ``executor`` when given, else ``$QPMLIB_EXECUTOR``, else the profile's
    ``cluster.executor``, else ``"local"``.

    Args:
        executor: an explicit choice (e.g. a function argument or ``make runs EXECUTOR=...``).
        profile: a :class:`qpmlib.config.Profile` or its name, or None.

    Raises:
        ValueError: for an unknown executor; names the valid ones and where the bad value came from.
    """
    if executor:
        name, origin = executor, "argument"
    elif os.environ.get(ENV_EXECUTOR):
        name, origin = os.environ[ENV_EXECUTOR], f"${ENV_EXECUTOR}"
    elif profile is not None:
        name, origin = get_profile(profile).cluster.executor, "the profile's cluster.executor"
    else:
        name, origin = "local", "default"
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r} (from {origin}); choose one of {', '.join(EXECUTORS)}")
    return name


def resolve_function(name: str) -> Callable[..., Any]:
    """The task function registered as ``name`` in :data:`TASK_FUNCTIONS` (its module is imported now).

    Raises:
        ValueError: for an unknown name; lists the registered ones.
    """
    if name not in TASK_FUNCTIONS:
        raise ValueError(f"unknown task function {name!r}; registered: {', '.join(sorted(TASK_FUNCTIONS))}")
    return _load(TASK_FUNCTIONS[name])


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: leave the count as it is), and restore the count afterwards.

    The profile's ``cluster.threads`` (:func:`qpmlib.runs.methods.run_methods` holds it while a run computes):
    float sums depend on the thread count, so a fixed count gives the same numbers here, in worker processes and in
    Slurm jobs, on any machine.

    Raises:
        ValueError: for a count below 1.
    """
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"torch threads must be an integer >= 1 or None, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load(target: str) -> Callable[..., Any]:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def cluster_runs(method: str, seeds: Sequence[int], profile: Any, *, overrides: Mapping[str, Any] | None = None,
                 executor: str | None = None, verbose: bool = True) -> list[RunReport] | None:
    """Have a cluster executor compute the missing runs of one method over seeds and wait; nothing with ``local``.

    What :func:`qpmlib.runs.methods.run_methods` and :func:`qpmlib.runs.dino_qpm.run_seeds` call before they load.
    It runs :data:`ENSURE_RUNS` (:func:`qpmlib.runs.tasks.ensure_method_runs`), named like the task functions
    because that module builds its tasks from the methods and stages of the very modules that call this one.

    Args:
        method: a key of :data:`qpmlib.runs.methods.METHODS`.
        seeds: the run seeds.
        profile: a registered profile, by name or object.
        overrides: the caller's dotted overrides.
        executor: see :func:`resolve_executor`.
        verbose: show the jobs queued, running and done.
    """
    if resolve_executor(executor, profile) == "local":
        return None
    return _load(ENSURE_RUNS)(method, seeds, profile, overrides=overrides, executor=executor, verbose=verbose)


@dataclass(frozen=True)
class StoreKey:
    """Where a task's entry lives, and how to tell that it is complete.

    Attributes:
        path: absolute path of the entry (a folder or a file), the same on every machine of the cluster.
        marker: None when the entry is complete as soon as it exists (it is published by an atomic rename); else the
            name of a JSON file inside the entry whose ``"complete"`` field turns true last.
        verify: how a finished entry is checked before it counts as done: None (it exists, or its marker says
            complete), ``"result"`` (a results-store entry that :meth:`qpmlib.results.ResultStore.get` would serve:
            every file matches its checksum, so a damaged entry counts as missing and is computed again) or
            ``"embeddings"`` (an embedding store that :func:`qpmlib.embeddings.open_store` opens: complete, every
            array matches its checksum).
        requires: more results-store entries that must be served as well (e.g. the earlier stages of a run whose
            last stage is ``path``), checked as ``verify="result"``.
    """

    path: str
    marker: str | None = None
    verify: str | None = None
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for path in (self.path, *self.requires):
            if not os.path.isabs(path):
                raise ValueError(f"a store key needs absolute paths (every job must find them), got {path!r}")
        if self.marker is not None and Path(self.marker).name != self.marker:
            raise ValueError(f"the marker must be a file name inside the entry, got {self.marker!r}")
        if self.verify not in _VERIFY:
            raise ValueError(f"verify must be one of {', '.join(map(repr, _VERIFY))}, got {self.verify!r}")
        object.__setattr__(self, "requires", tuple(self.requires))

    def exists(self) -> bool:
        """Whether the entry is complete (and intact, with ``verify``)."""
        if not all(is_served(p) for p in self.requires):
            return False
        entry = Path(self.path)
        if self.verify is not None:
            return _VERIFY[self.verify](entry)
        if self.marker is None:
            return entry.exists()
        try:
            return json.loads((entry / self.marker).read_text()).get("complete") is True
        except (OSError, ValueError, AttributeError):
            return False

    @property
    def lock_path(self) -> Path:
        """The lock file that jobs hold while they compute this entry."""
        entry = Path(self.path)
        return entry.parent / _LOCK_FOLDER / f"{entry.name}.task.lock"


def _embeddings_intact(folder: Path) -> bool:
    if not (folder / "manifest.json").is_file():
        return False
    try:
        open_store(folder)
    except ValueError:
        return False
    return True


_VERIFY: dict[str | None, Callable[[Path], bool] | None] = {None: None, "result": is_served,
                                                            "embeddings": _embeddings_intact}


@dataclass(frozen=True)
class Task:
    """One run to compute: a function by registry name, its keyword arguments, and the entry it writes.

    Attributes:
        name: a short unique label for progress and errors, e.g. ``"table1/cub/qpm/seed=3"``.
        fn: a key of :data:`TASK_FUNCTIONS`.
        kwargs: JSON-ready keyword arguments of the function (numbers, strings, lists, dicts).
        key: the entry the function publishes; the task is done when ``key.exists()``.
        stage: the stage whose :class:`Resources` the job gets (e.g. ``"embed"``, ``"train"``).

    Raises:
        ValueError: for an empty name or an unknown function.
        TypeError: for keyword arguments that are not JSON-ready.
    """

    name: str
    fn: str
    kwargs: Mapping[str, Any]
    key: StoreKey
    stage: str = "default"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a task needs a name")
        if self.fn not in TASK_FUNCTIONS:
            raise ValueError(f"task {self.name}: unknown function {self.fn!r}; registered: "
                             f"{', '.join(sorted(TASK_FUNCTIONS))}")
        try:
            plain = json.loads(json.dumps(dict(self.kwargs), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"task {self.name}: keyword arguments must be JSON-ready ({exc})") from None
        object.__setattr__(self, "kwargs", plain)


@dataclass(frozen=True)
class Resources:
    """What one Slurm job of a stage asks for (plain data; profiles provide one per stage).

    Attributes:
        gpus: GPUs per job (``--gpus-per-node``; 0 asks for none).
        cpus: CPU cores per job (``--cpus-per-task``).
        mem_gb: memory per job in GiB (``--mem``).
        time_min: wall-clock limit in minutes (``--time``); a job that reaches it is requeued by submitit and
            resumes from its task's own checkpoints.
        partition: Slurm partition, or None for the cluster's default.
        sbatch: more ``#SBATCH`` options, e.g. ``{"account": "proj42", "qos": "normal"}``.
        setup: shell lines run before the job's Python starts, e.g. ``["module load cuda/12.4"]``.
    """

    gpus: int = 0
    cpus: int = 1
    mem_gb: float = 4.0
    time_min: int = 60
    partition: str | None = None
    sbatch: Mapping[str, str] = field(default_factory=dict)
    setup: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.cpus < 1 or self.mem_gb <= 0 or self.time_min < 1:
            raise ValueError(f"resources need gpus >= 0, cpus >= 1, mem_gb > 0 and time_min >= 1, got {self}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | Resources) -> Resources:
        """Build from a plain mapping (e.g. read from a profile); unknown keys are refused, naming the valid ones."""
        if isinstance(data, Resources):
            return data
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown resource fields {unknown}; valid: {', '.join(valid)}")
        return cls(**data)

    def sbatch_parameters(self) -> dict[str, Any]:
        """The parameters of ``submitit.SlurmExecutor.update_parameters`` that ask for these resources."""
        params: dict[str, Any] = {
            "cpus_per_task": self.cpus,
            "mem": f"{max(1, round(self.mem_gb * 1024))}M",
            "time": self.time_min,
        }
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if self.partition:
            params["partition"] = self.partition
        if self.setup:
            params["setup"] = list(self.setup)
        if self.sbatch:
            params["additional_parameters"] = dict(self.sbatch)
        return params

    def describe(self) -> str:
        """One short line, e.g. ``"1 GPU, 8 CPU, 32 GB, 2:00 h"``."""
        gpu = f"{self.gpus} GPU, " if self.gpus else ""
        mem = f"{self.mem_gb:g}"
        return f"{gpu}{self.cpus} CPU, {mem} GB, {self.time_min // 60}:{self.time_min % 60:02d} h"


def _stage_resources(stage: str, resources: Mapping[str, Any] | None) -> Resources:
    """The resources of ``stage``: its own entry, else ``"default"``, else :class:`Resources` defaults."""
    resources = resources or {}
    if stage in resources:
        return Resources.from_mapping(resources[stage])
    if "default" in resources:
        return Resources.from_mapping(resources["default"])
    if resources:
        raise ValueError(f"no resources for stage {stage!r} and no 'default' entry; stages given: "
                         f"{', '.join(sorted(resources))}")
    return Resources()


@dataclass
class RunReport:
    """What :func:`compute` did.

    Attributes:
        executor: ``"local"`` or ``"slurm"``.
        stored: names of the tasks whose entry already existed.
        computed: names of the tasks computed by this call (with ``wait=False``: none).
        jobs: Slurm job ids per task name, in submission order (an adopted job counts once).
    """

    executor: str
    stored: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    jobs: dict[str, list[str]] = field(default_factory=dict)


class RunsNotFinished(RuntimeError):
    """Some tasks have no entry after every allowed submission.

    Attributes:
        failed: task name -> what happened (last job id, its state and the end of its error log).
    """

    def __init__(self, failed: Mapping[str, str], folder: Path) -> None:
        self.failed = dict(failed)
        lines = [f"{len(failed)} task(s) never finished:"]
        lines += [f"- {name}: {why}" for name, why in failed.items()]
        lines.append(f"All job logs are under {folder}. Fix the cause and run again: finished entries are kept and "
                     "only the missing ones are computed.")
        super().__init__("\n".join(lines))


def run_task(task: Task) -> str:
    """Compute one task in this process unless its entry exists (what every job runs).

    Returns:
        ``"stored"`` when the entry already existed (perhaps written by a job that held the lock while this one
        waited), ``"computed"`` when this call wrote it.

    Raises:
        RuntimeError: when the function returned without publishing the entry.
    """
    if task.key.exists():
        return "stored"
    lock = task.key.lock_path
    with file_lock(lock):
        if task.key.exists():
            return "stored"
        resolve_function(task.fn)(**task.kwargs)
        if not task.key.exists():
            raise RuntimeError(f"task {task.name}: {task.fn} returned without publishing {task.key.path}")
        lock.unlink(missing_ok=True)  # safe: whoever locks it afterwards finds the entry and stops
    return "computed"


class _Job(submitit.helpers.Checkpointable):
    """What a Slurm job runs: :func:`run_task`, with log lines; on a timeout submitit requeues the same call."""

    def __call__(self, task: Task) -> str:
        os.environ[ENV_EXECUTOR] = "local"  # the job computes its task itself, never through another job
        cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
        if cpus.isdigit() and int(cpus) > 0:  # exactly the cores it asked for: not more (a shared node), and the
            torch.set_num_threads(int(cpus))  # same float reduction order as a local run on as many threads
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        log.info("task %s on %s (job %s)", task.name, socket.gethostname(), slurm_job_id())
        outcome = run_task(task)
        log.info("task %s: %s", task.name, "already stored" if outcome == "stored" else "computed and stored")
        return outcome


def compute(
    tasks: Sequence[Task],
    *,
    executor: str | None = None,
    resources: Mapping[str, Resources | Mapping[str, Any]] | None = None,
    folder: str | Path | None = None,
    max_retries: int = 2,
    poll_s: float = 15.0,
    wait: bool = True,
    workers: int = 1,
    verbose: bool = True,
) -> RunReport:
    """Compute every task whose entry is missing, here or as Slurm jobs.

    Args:
        tasks: the tasks; two tasks with the same key must be the same task (they are computed once).
        executor: ``"local"`` or ``"slurm"``; None reads ``$QPMLIB_EXECUTOR`` (default ``local``).
        resources: Slurm resources per stage (a :class:`Resources` or a plain mapping); a ``"default"`` entry
            covers stages without their own. Ignored by ``local``.
        folder: where submitit keeps job scripts, pickles and logs, on a file system every node sees
            (default ``<QPMLIB_HOME>/slurm``). Ignored by ``local``.
        max_retries: how many times a Slurm job that ended without its entry is submitted again.
        poll_s: seconds between two looks at the queue.
        wait: False submits the missing tasks and returns (a later call waits for the same jobs).
        workers: with ``local``, compute the missing tasks in this many spawned processes (1: in this process).
            Each worker runs torch on its share of the cores; tasks that share an entry (a dense stage, a QP) wait
            for each other on the entry's lock. The numbers do not depend on the worker count when the runs fix
            their torch threads (a profile's ``cluster.threads``).
        verbose: show progress (a tqdm bar; plain text in papermill runs).

    Returns:
        A :class:`RunReport`.

    Raises:
        ValueError: for an unknown executor, or two different tasks with the same key.
        RuntimeError: when ``slurm`` is asked for and the Slurm commands are missing.
        RunsNotFinished: when tasks still have no entry after ``max_retries`` resubmissions (all other tasks
            have finished by then). With ``local`` the first failing task's exception is raised instead.
    """
    executor = resolve_executor(executor)
    tasks = _unique(tasks)
    report = RunReport(executor)
    missing = []
    for task in tasks:
        if task.key.exists():
            report.stored.append(task.name)
        else:
            missing.append(task)
    if not missing:
        return report
    if executor == "local":
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if workers > 1 and len(missing) > 1:
            _compute_in_workers(missing, report, workers, verbose)
            return report
        for task in tqdm(missing, desc="runs (local)", unit="run", disable=not verbose):
            run_task(task)
            report.computed.append(task.name)
        return report
    for stage in {t.stage for t in missing}:
        _stage_resources(stage, resources)  # fail before submitting anything
    queue = _SlurmQueue(Path(folder) if folder else paths.home() / "slurm", resources)
    queue.wait(missing, report, max_retries=max_retries, poll_s=poll_s, wait=wait, verbose=verbose)
    return report


def _worker_task(task: Task, threads: int) -> str:
    """What a local worker process runs: :func:`run_task` on ``threads`` torch threads (a profile's
    ``cluster.threads`` still wins inside the run), never through another executor."""
    os.environ[ENV_EXECUTOR] = "local"
    torch.set_num_threads(threads)
    return run_task(task)


def _compute_in_workers(tasks: Sequence[Task], report: RunReport, workers: int, verbose: bool) -> None:
    """:func:`run_task` of every task in ``workers`` spawned processes, in the order given, each on its share of
    the cores (more threads than cores make every step wait for the others); the first failure is raised once the
    tasks already running have ended (nothing more is started)."""
    context = multiprocessing.get_context("spawn")  # no forked torch or lock state in the workers
    threads = max(1, (os.cpu_count() or 1) // workers)
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
        futures = {pool.submit(_worker_task, task, threads): task for task in tasks}
        bar = tqdm(total=len(tasks), desc=f"runs (local, {workers} workers)", unit="run", disable=not verbose)
        with bar:
            for future in concurrent.futures.as_completed(futures):
                try:
                    future.result()
                except BaseException:
                    for other in futures:
                        other.cancel()
                    raise
                report.computed.append(futures[future].name)
                bar.update(1)


def _unique(tasks: Sequence[Task]) -> list[Task]:
    """The tasks without repeats; two different tasks that write one entry are an error."""
    seen: dict[str, Task] = {}
    names: dict[str, str] = {}
    for task in tasks:
        other = seen.setdefault(task.key.path, task)
        if other != task:
            raise ValueError(f"tasks {other.name} and {task.name} write the same entry {task.key.path} but differ")
        if names.setdefault(task.name, task.key.path) != task.key.path:
            raise ValueError(f"two tasks are named {task.name!r} but write different entries; names must be unique")
    return list(seen.values())


class _SlurmQueue:
    """Submits tasks through submitit and follows their jobs with ``squeue`` until every entry exists."""

    def __init__(self, folder: Path, resources: Mapping[str, Any] | None) -> None:
        missing = [c for c in _SLURM_COMMANDS if shutil.which(c) is None]
        if missing:
            raise RuntimeError(f"the slurm executor needs the Slurm commands {', '.join(missing)} on PATH; run on a "
                               "login node of the cluster, or use executor='local'")
        self.folder = folder.absolute()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.resources = resources
        self.user = getpass.getuser()
        self._executors: dict[str, submitit.SlurmExecutor] = {}

    # ---- submission
    def _executor(self, stage: str) -> submitit.SlurmExecutor:
        if stage not in self._executors:
            ex = submitit.SlurmExecutor(folder=self.folder / "%j", max_num_timeout=3)
            resources = _stage_resources(stage, self.resources)
            ex.update_parameters(job_name=f"qpm-{stage}", **resources.sbatch_parameters())
            self._executors[stage] = ex
        return self._executors[stage]

    def submit(self, tasks: Sequence[Task]) -> dict[str, submitit.Job]:
        """Submit one job per task (an array per stage when there are several); returns task name -> job."""
        jobs: dict[str, submitit.Job] = {}
        if not tasks:
            return jobs
        by_stage: dict[str, list[Task]] = {}
        for task in tasks:
            by_stage.setdefault(task.stage, []).append(task)
        for stage, group in by_stage.items():
            ex = self._executor(stage)
            try:
                if len(group) == 1:
                    submitted = [ex.submit(_Job(), group[0])]
                else:
                    with ex.batch():
                        submitted = [ex.submit(_Job(), task) for task in group]
            except (FailedJobError, subprocess.SubprocessError) as exc:
                res = _stage_resources(stage, self.resources).describe()
                raise RuntimeError(f"Slurm refused the jobs of stage {stage!r} ({res}): {exc}\nCheck that stage's "
                                   "resources (partition, GPUs, account, limits).") from exc
            jobs.update({task.name: job for task, job in zip(group, submitted)})
        self._remember({task.key.path: jobs[task.name].job_id for task in tasks})
        return jobs

    # ---- the ledger: which job computes which entry, so that a later call adopts it
    def _ledger(self) -> dict[str, str]:
        try:
            data = json.loads((self.folder / _LEDGER_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}

    def _remember(self, job_ids: Mapping[str, str]) -> None:
        with file_lock(self.folder / f".{_LEDGER_FILE}.lock"):
            ledger = self._ledger()
            ledger.update(job_ids)
            atomic_write(self.folder / _LEDGER_FILE, json.dumps(ledger, indent=1, sort_keys=True))

    # ---- job states
    def states(self) -> dict[str, str] | None:
        """``squeue`` state of every job of this user that Slurm still lists (None when squeue fails)."""
        cmd = ["squeue", "--noheader", "--array", "--states=all", "--user", self.user, "--format=%i|%T"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("squeue failed (%s); trying again at the next look", exc)
            return None
        return parse_squeue(out)

    def wait(self, tasks: list[Task], report: RunReport, *, max_retries: int, poll_s: float, wait: bool,
             verbose: bool) -> None:
        """Submit the tasks (adopting live jobs of earlier calls), then follow them until all have finished."""
        states = self.states() or {}
        ledger = self._ledger()
        adopted = {t.name: ledger[t.key.path] for t in tasks
                   if states.get(ledger.get(t.key.path, ""), "") in _QUEUED | _RUNNING}
        job_ids = {name: job.job_id for name, job in self.submit([t for t in tasks if t.name not in adopted]).items()}
        job_ids.update(adopted)
        for task in tasks:
            report.jobs[task.name] = [job_ids[task.name]]
        if not wait:
            return
        by_name = {t.name: t for t in tasks}
        active = dict(job_ids)  # task name -> its current job id
        suspect: set[str] = set()  # ended without an entry on the last look; confirmed on the next one
        failed: dict[str, str] = {}
        bar = tqdm(total=len(tasks), desc="slurm jobs", unit="job", disable=not verbose)
        shown = ""
        last_seen = time.monotonic()  # when squeue last answered
        try:
            while active:
                states = self.states()
                if states is None:
                    if time.monotonic() - last_seen > _SQUEUE_PATIENCE_S:
                        raise RuntimeError(f"squeue has failed for {_SQUEUE_PATIENCE_S // 60} minutes (see the "
                                           "warnings above); the jobs may still run: call again later to wait "
                                           "for them")
                    time.sleep(poll_s)
                    continue
                last_seen = time.monotonic()
                counts = {"queued": 0, "running": 0}
                resubmit = []
                for name, job_id in list(active.items()):
                    state = states.get(job_id, "")
                    verdict = _verdict(by_name[name], state, suspect)
                    if verdict in counts:
                        counts[verdict] += 1
                        continue
                    del active[name]
                    attempts = len(report.jobs[name])
                    ended = state or "no longer listed by squeue"
                    if verdict == "done":
                        report.computed.append(name)
                    elif attempts <= max_retries:
                        log.warning("task %s: job %s ended (%s) without its entry; submitting it again (attempt %d "
                                    "of %d)", name, job_id, ended, attempts + 1, max_retries + 1)
                        resubmit.append(by_name[name])
                    else:
                        failed[name] = f"job {job_id} ended ({ended}) after {attempts} attempt(s)"
                        failed[name] += self._log_tail(job_id)
                for name, job in self.submit(resubmit).items():
                    active[name] = job.job_id
                    report.jobs[name].append(job.job_id)
                    counts["queued"] += 1
                retried = sum(len(ids) - 1 for ids in report.jobs.values())
                parts = [f"queued {counts['queued']}", f"running {counts['running']}", f"done {len(report.computed)}"]
                parts += [f"resubmitted {retried}"] if retried else []
                parts += [f"failed {len(failed)}"] if failed else []
                status = ", ".join(parts)
                if status != shown:  # print only changes: a long wait stays short in a notebook's output
                    bar.n = len(report.computed)
                    bar.set_postfix_str(status)
                    shown = status
                if active:
                    time.sleep(poll_s)
        except KeyboardInterrupt:
            log.warning("stopped waiting; %d job(s) keep running (their logs are under %s); running the same tasks "
                        "again waits for them instead of submitting them twice", len(active), self.folder)
            raise
        finally:
            bar.close()
        if failed:
            raise RunsNotFinished(failed, self.folder)

    def _log_tail(self, job_id: str, lines: int = 15) -> str:
        """The end of a job's error log, indented, or where it should have been."""
        err = JobPaths(self.folder / "%j", job_id=job_id, task_id=0).stderr
        try:
            text = err.read_text(errors="replace").rstrip().splitlines()[-lines:]
        except OSError:
            return f"; no error log at {err}"
        return f"; end of {err}:\n" + "\n".join(f"    {line}" for line in text)


def _verdict(task: Task, state: str, suspect: set[str]) -> str:
    """``"done"``, ``"queued"``, ``"running"`` or ``"ended"`` (without the entry) for a task and its job's state.

    A running job whose entry exists is still ``"running"``: it publishes the entry first, then removes its scratch
    folder and writes its last log lines, and the task is done when the job has ended (a queued one, requeued after
    it published, is not waited for: it will find the entry and stop). A job that has left the queue without the
    entry is ``"ended"`` only on the second look in a row (``suspect`` remembers the first): a shared file system
    may show a finished entry a little late.
    """
    if task.key.exists():
        return "running" if state in _RUNNING else "done"
    if state in _QUEUED or state in _RUNNING:
        suspect.discard(task.name)
        return "queued" if state in _QUEUED else "running"
    if task.name not in suspect:
        suspect.add(task.name)
        return "running"
    suspect.discard(task.name)
    return "ended"


def parse_squeue(text: str) -> dict[str, str]:
    """``{job id: state}`` from ``squeue --noheader --format=%i|%T`` output (array tasks as ``"123_4"``)."""
    states = {}
    for line in text.splitlines():
        if "|" in line:
            job_id, state = line.strip().split("|", 1)
            states[job_id] = state.strip().upper()
    return states


# ---------------------------------------------------------------------------------------------- dry run
@dataclass(frozen=True)
class PlannedJob:
    """One task of a :class:`RunPlan`.

    Attributes:
        task: the task.
        resources: what its job asks for.
        gpu_hours: the estimated GPU-hours (None when no estimate was given).
        stored: whether its entry exists already (then nothing is submitted).
    """

    task: Task
    resources: Resources
    gpu_hours: float | None
    stored: bool


@dataclass(frozen=True)
class RunPlan:
    """What :func:`compute` would submit; ``str(plan)`` is the job list with the total estimate."""

    jobs: tuple[PlannedJob, ...]

    @property
    def to_submit(self) -> list[PlannedJob]:
        """The jobs whose entry is missing."""
        return [j for j in self.jobs if not j.stored]

    @property
    def gpu_hours(self) -> float:
        """Estimated GPU-hours of the jobs to submit (those without an estimate count as zero)."""
        return math.fsum(j.gpu_hours or 0.0 for j in self.to_submit)

    def __str__(self) -> str:
        todo = self.to_submit
        width = max([len(j.task.name) for j in todo] + [4])
        lines = [f"{'task':<{width}}  {'stage':<10}  {'resources':<28}  GPU-h"]
        for j in todo:
            est = "?" if j.gpu_hours is None else f"{j.gpu_hours:.2f}"
            lines.append(f"{j.task.name:<{width}}  {j.task.stage:<10}  {j.resources.describe():<28}  {est}")
        for stage in sorted({j.task.stage for j in todo}):
            jobs = [j for j in todo if j.task.stage == stage]
            hours = math.fsum(j.gpu_hours or 0.0 for j in jobs)
            lines.append(f"stage {stage}: {len(jobs)} job(s), {jobs[0].resources.describe()} each, "
                         f"estimated {hours:.1f} GPU-hours")
        unknown = sum(j.gpu_hours is None for j in todo)
        lines.append(f"{len(todo)} job(s) to submit, {len(self.jobs) - len(todo)} already stored; "
                     f"estimated {self.gpu_hours:.1f} GPU-hours"
                     + (f" ({unknown} job(s) without an estimate)" if unknown else ""))
        return "\n".join(lines)


def plan(tasks: Sequence[Task], *, gpu_hours: Mapping[str, float] | None = None,
         resources: Mapping[str, Resources | Mapping[str, Any]] | None = None) -> RunPlan:
    """The dry run of :func:`compute`: which tasks would be submitted, with what, and the estimated GPU-hours.

    It only looks at the store (one ``stat`` per task), so it takes milliseconds even for thousands of tasks.

    Args:
        tasks: the tasks.
        gpu_hours: estimated GPU-hours per task name (e.g. from paper-scale timings); missing names show ``?``.
        resources: resources per stage, as for :func:`compute`.

    Returns:
        A :class:`RunPlan`; print it for the job list and the total.
    """
    gpu_hours = gpu_hours or {}
    return RunPlan(tuple(PlannedJob(t, _stage_resources(t.stage, resources), gpu_hours.get(t.name), t.key.exists())
                         for t in _unique(tasks)))


# ---------------------------------------------------------------------------------------------- probe
def probe_task(root: str | Path, seed: int, *, size: int = 8, sleep_s: float = 0.0, fail: bool = False,
               stage: str = "default") -> Task:
    """A :func:`probe` task that writes into the results store under ``root`` (kind ``"probe"``).

    Args:
        root: the results store root (absolute, or made absolute here).
        seed, size: what the probe computes (they make its configuration).
        sleep_s, fail: see :func:`probe` (not part of the configuration).
        stage: the stage whose resources the job gets.
    """
    root = str(Path(root).absolute())
    key = StoreKey(str(ResultStore(root, "probe").path(_probe_config(seed, size))))
    return Task(f"probe/seed={seed}", "probe", {"root": root, "seed": seed, "size": size, "sleep_s": sleep_s,
                                                  "fail": fail}, key, stage)


def _probe_config(seed: int, size: int) -> dict[str, Any]:
    return {"task": "probe", "seed": seed, "size": size}


def probe(root: str, seed: int, size: int = 8, sleep_s: float = 0.0, fail: bool = False) -> None:
    """A tiny deterministic run that checks an executor end to end, the way a training run behaves.

    It draws a seeded ``size`` x ``size`` float64 matrix X, writes a checkpoint into the entry's scratch folder
    (:meth:`qpmlib.results.ResultStore.work_dir`), waits ``sleep_s`` seconds (the "long computation"), then stores
    X, X Xᵀ and the metrics ``trace`` and ``frobenius`` of X in the results store (kind ``"probe"``). A run that
    finds the checkpoint of a killed earlier run resumes from it without waiting, and says so in its provenance.

    Args:
        root: the results store root.
        seed: seed of X.
        size: side of X.
        sleep_s: seconds to wait after the checkpoint.
        fail: raise at once instead (to check how failures are handled).

    Raises:
        RuntimeError: when ``fail`` is set.
    """
    if fail:
        raise RuntimeError(f"probe seed={seed} was asked to fail")
    store = ResultStore(root, "probe")
    config = _probe_config(seed, size)
    checkpoint = store.work_dir(config) / "checkpoint.json"
    resumed = checkpoint.exists()
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if not resumed:
        atomic_write(checkpoint, json.dumps({"seed": seed, "started": time.time()}))
        time.sleep(sleep_s)  # a signal's handler (e.g. submitit's on preemption) still runs while it sleeps
    metrics = {"trace": float(x.trace()), "frobenius": float(torch.linalg.matrix_norm(x))}
    prov = provenance(seed=seed, device="cpu", pretrained=None, resumed=resumed)
    store.put(config, ResultData(metrics, prov, tensors={"probe.safetensors": {"x": x, "gram": x @ x.T}}))

