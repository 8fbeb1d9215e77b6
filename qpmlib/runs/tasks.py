"""The book's runs as executor tasks: embedding extraction per (dataset, split, backbone), then one task per run.

    specs = request_specs(requests, "paper")          # one plain JSON spec per (method, seed, setting)
    compute_requests(requests, "paper", executor="slurm")   # extraction jobs first, then one job per run
    ensure_runs(requests, "paper")                    # the same with the profile's executor; nothing for "local"

A run spec is what a job needs to compute a run anywhere, as plain JSON::

    {"profile": "paper", "method": "dino_qpm", "seed": 3, "dataset": "cub", "overrides": {"train.ft_l1_fm": 0.0}}

``overrides`` are the fields in which the run differs from what the method sets on the named profile (the method's
own fields are not repeated), so that requests that end in the same run (Table 1's DINO-QPM and Table 3's row with
the profile's backbone) give the same spec. :func:`compute_run` computes a spec in the job's process with
:func:`qpmlib.runs.methods.run_methods`, exactly as a chapter does locally, so a run stores the same entries, under
the same hashes, whichever executor computed it.

A task's key is an entry of the shared stores, checked as the chapters would use it: an extraction task is done when
its embedding store opens (complete, arrays matching their checksums); a run task when the results store serves
every stage of the run (:meth:`qpmlib.results.ResultStore.get`'s checks), so a damaged stage is computed again.
A run's stage hashes contain its embeddings' fingerprints, so run keys are known only once the embeddings exist:
:func:`compute_requests` extracts first, then builds and computes the run tasks. A dry run
(:func:`plan_requests`) lists runs whose embeddings are missing with provisional keys that never exist.

Resources per stage (``embed``, ``train``), the Slurm partition and account, the setup lines of a job, the number of
resubmissions and the figures of the GPU-hour estimate come from the profile's :class:`qpmlib.config.ClusterConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qpmlib import paths
from qpmlib.config import PROFILES, SECTIONS, Profile, apply_overrides, get_profile
from qpmlib.data import n_images
from qpmlib.embeddings import SPLITS, get_store, relocate, store_path, stored_inputs
from qpmlib.files import atomic_write_json, file_lock
from qpmlib.results import ResultStore, canonical_json
from qpmlib.runs.archive import ImportReport, export_archive, import_archive
from qpmlib.runs.baselines import SELECTION_KIND, SPARSE_HEADS, sparse_head_configs
from qpmlib.runs.checks import check_profile
from qpmlib.runs.dino_qpm import stage_configs
from qpmlib.runs.executor import Resources, RunPlan, RunReport, StoreKey, Task, compute, plan, resolve_executor
from qpmlib.runs.methods import METHODS, RunRequest, method_profile, run_methods, sid_k
from qpmlib.runs.peer_heads import PEER_HEADS, peer_config

__all__ = [
    "EMBED_STAGE",
    "TRAIN_STAGE",
    "RUN_SECTIONS",
    "run_spec",
    "spec_profile",
    "request_specs",
    "run_stage_configs",
    "extraction_tasks",
    "run_tasks",
    "stage_resources",
    "estimate_hours",
    "plan_requests",
    "compute_requests",
    "ensure_runs",
    "ensure_method_runs",
    "spec_entries",
    "export_runs",
    "import_runs",
    "IMPORTS_FILE",
    "compute_run",
    "extract_split",
]

#: The executor stage (a key of the profile's ``cluster`` resources) of extraction and of run tasks.
EMBED_STAGE, TRAIN_STAGE = "embed", "train"
#: Profile sections that define a run (``cluster`` says only where it is computed).
RUN_SECTIONS = tuple(s for s in SECTIONS if s != "cluster")
#: The record of every archive :func:`import_runs` installed, in :func:`qpmlib.paths.home` (a JSON list).
IMPORTS_FILE = "imports.json"
_LOCKS = ".locks"
_CUB_TRAIN_IMAGES = 5994  # the images of the paper's per-epoch times (ClusterConfig.seconds_per_epoch)


# ---------------------------------------------------------------------------------------------- specs
def _fields(prof: Profile, sections: Iterable[str] = RUN_SECTIONS) -> dict[str, Any]:
    """``{"section.field": value}`` of a profile's run sections."""
    return {f"{s}.{f.name}": getattr(getattr(prof, s), f.name) for s in sections
            for f in dataclasses.fields(getattr(prof, s))}


def _base(prof: Profile) -> Profile:
    if prof.name not in PROFILES:
        raise ValueError(f"profile {prof.name!r} is not one of {', '.join(PROFILES)}: jobs receive a run as a profile "
                         "name with overrides; give the profile a registered name and pass its changes as overrides")
    return PROFILES[prof.name]


def run_spec(method: str, profile: str | Profile, seed: int, overrides: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
    """The plain JSON spec of one run (see the module docstring); :func:`spec_profile` turns it back into the run's
    profile.

    Args:
        method: a key of :data:`qpmlib.runs.methods.METHODS`.
        profile: a registered profile, by name or as an object (possibly changed: the changes become overrides).
        seed: the run seed.
        overrides: the caller's dotted overrides, applied after the method's fields.

    Raises:
        ValueError: for an unknown method, invalid settings, or a profile whose name is not registered.
    """
    prof = get_profile(profile)
    final = method_profile(method, prof, dict(overrides or {}))
    start = method_profile(method, _base(prof), {"data.dataset": final.data.dataset})
    before, after = _fields(start), _fields(final)
    diff = {k: v for k, v in after.items() if before[k] != v}
    spec = {"profile": prof.name, "method": method, "seed": int(seed), "dataset": final.data.dataset,
            "overrides": json.loads(canonical_json(diff))}
    if _fields(spec_profile(spec)) != after:  # the spec must give back exactly this run
        raise RuntimeError(f"the spec of {method} (seed {seed}) does not reproduce its profile; this is a bug")
    return spec


def spec_profile(spec: Mapping[str, Any]) -> Profile:
    """The profile a run spec runs with (the method's fields, the dataset, then the spec's overrides; checked)."""
    return method_profile(spec["method"], spec["profile"], {"data.dataset": spec["dataset"], **spec["overrides"]})


def request_specs(requests: Iterable[RunRequest], profile: str | Profile) -> list[dict[str, Any]]:
    """One spec per (request, seed), without repeats, in request order."""
    prof = get_profile(profile)
    specs: dict[str, dict[str, Any]] = {}
    for request in requests:
        for seed in request.seeds:
            spec = run_spec(request.method, prof, seed, dict(request.overrides))
            specs.setdefault(canonical_json(spec), spec)
    return list(specs.values())


def _spec_name(spec: Mapping[str, Any]) -> str:
    changes = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(spec["overrides"].items()))
    return f"{spec['method']}/{spec['dataset']}/seed={spec['seed']}" + (f"/{changes}" if changes else "")


# ---------------------------------------------------------------------------------------------- keys
def run_stage_configs(method: str, prof: Profile, seed: int, train_inputs: Mapping[str, Any],
                      test_inputs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The hashed configuration of every stage a run stores, in the order they are computed.

    The same configurations as :func:`qpmlib.runs.methods.run_methods` stores (the dense stage, then the QP and
    fine-tune of DINO-QPM, or SLDD's selection and the baseline's own stage).

    Args:
        method: the run's method.
        prof: the run's profile (:func:`spec_profile`).
        seed: the run seed.
        train_inputs, test_inputs: the ``inputs`` of the two embedding-store manifests.

    Returns:
        ``{results-store kind: configuration}``.

    Raises:
        ValueError: for a method whose head this module does not know.
    """
    head = METHODS[method].head
    cfgs = stage_configs(prof, seed, dict(train_inputs), dict(test_inputs))
    if head == "qpm":
        return cfgs if prof.model.n_layers > 0 else {"dense": cfgs["dense"]}
    if head == "dense":
        return {"dense": cfgs["dense"]}
    if head in SPARSE_HEADS:
        selection, own = sparse_head_configs(head, prof, cfgs["dense"])
        return {"dense": cfgs["dense"], SELECTION_KIND: selection, head: own}
    if head in PEER_HEADS:
        return {method: peer_config(prof, method, seed, dict(train_inputs), dict(test_inputs), k=sid_k(prof))}
    raise ValueError(f"no stage list for head {head!r} of method {method!r}; add it to "
                     "qpmlib.runs.tasks.run_stage_configs")


def _store_spec(prof: Profile, split: str) -> dict[str, Any]:
    """The plain spec of the embedding store a profile's split reads: the dataset, split and backbone, and the data
    fields and backbone weights in which the profile differs from its registered one."""
    base = _base(prof)

    def fields(p: Profile) -> dict[str, Any]:
        return _fields(p, ("data",)) | {"backbone.weights": p.backbone.weights}

    before = fields(base)
    changed = {k: v for k, v in fields(prof).items() if before[k] != v and k != "data.dataset"}
    return {"profile": base.name, "dataset": prof.data.dataset, "split": split, "backbone": prof.backbone.name,
            "overrides": json.loads(canonical_json(changed))}


def _store_profile(spec: Mapping[str, Any]) -> Profile:
    prof = apply_overrides(spec["profile"], {"data.dataset": spec["dataset"], "backbone.name": spec["backbone"],
                                             **spec["overrides"]})
    check_profile(prof)
    return prof


def extraction_tasks(specs: Sequence[Mapping[str, Any]]) -> list[Task]:
    """One task per embedding store the runs read (both splits of each dataset and backbone), without repeats."""
    tasks: dict[str, Task] = {}
    for spec in specs:
        prof = spec_profile(spec)
        for split in SPLITS:
            store = _store_spec(prof, split)
            if canonical_json(store) not in tasks:
                folder = store_path(_store_profile(store), split)
                tasks[canonical_json(store)] = Task(f"embed/{folder.name}", "extract", store,
                                                    StoreKey(str(folder.absolute()), verify="embeddings"), EMBED_STAGE)
    return list(tasks.values())


def _run_tasks(specs: Sequence[Mapping[str, Any]], allow_pending: bool) -> list[tuple[Task, bool]]:
    """Run tasks, each with whether its key is provisional (its embeddings are not extracted yet: the hashes then
    contain a fingerprint that no store has, so the key never exists).

    Specs that end in the same run (e.g. DINO-QPM-compact and the grid point of Fig. 8 with its QP sizes) give one
    task, the first one's."""
    out: dict[str, tuple[Task, bool]] = {}
    for spec in specs:
        prof = spec_profile(spec)
        inputs = {split: stored_inputs(prof, split) for split in SPLITS}
        pending = [split for split, found in inputs.items() if found is None]
        if pending and not allow_pending:
            raise RuntimeError(f"run {_spec_name(spec)}: the {pending[0]} embeddings ({store_path(prof, pending[0])}) "
                               "are not extracted; extract them first (qpmlib.runs.tasks.compute_requests does)")
        inputs.update({split: {"pending": store_path(prof, split).name} for split in pending})
        cfgs = run_stage_configs(spec["method"], prof, spec["seed"], inputs["train"], inputs["test"])
        stages = [str(ResultStore.for_profile(prof.name, kind).path(cfg).absolute()) for kind, cfg in cfgs.items()]
        key = StoreKey(stages[-1], verify="result", requires=tuple(stages[:-1]))
        out.setdefault(key.path, (Task(_spec_name(spec), "run", dict(spec), key, TRAIN_STAGE), bool(pending)))
    return list(out.values())


def run_tasks(specs: Sequence[Mapping[str, Any]], *, allow_pending: bool = False) -> list[Task]:
    """One task per run spec; its key is the run's last stage, with the earlier ones required.

    Args:
        specs: run specs (:func:`request_specs`).
        allow_pending: give runs whose embeddings are missing provisional keys (for a dry run) instead of raising.

    Raises:
        RuntimeError: without ``allow_pending``, for a run whose embeddings are not extracted yet.
    """
    return [task for task, _ in _run_tasks(specs, allow_pending)]


def spec_entries(specs: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Every stored entry the runs of ``specs`` consist of: their embedding stores (both splits) and stages.

    Raises:
        FileNotFoundError: when an embedding store or a stage is not stored (or damaged); says how many.
    """
    stores = [t.key for t in extraction_tasks(specs)]
    missing = [key.path for key in stores if not key.exists()]
    runs = [] if missing else run_tasks(specs)  # the runs' keys need the stores' fingerprints
    missing += [task.name for task in runs if not task.key.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} entr(y/ies) are not stored or damaged, e.g. {missing[0]}; compute "
                                "them first (make runs)")
    entries = [Path(key.path) for key in stores]
    entries += [Path(p) for task in runs for p in (*task.key.requires, task.key.path)]
    return list(dict.fromkeys(entries))


# ---------------------------------------------------------------------------------------------- resources, estimates
def stage_resources(profile: str | Profile) -> dict[str, Resources]:
    """The Slurm resources of the ``embed`` and ``train`` stages from the profile's ``cluster`` section."""
    c = get_profile(profile).cluster
    extra = {"sbatch": {"account": c.account} if c.account else {}, "partition": c.partition, "setup": c.setup}
    return {stage: Resources(**dataclasses.asdict(getattr(c, stage)), **extra) for stage in (EMBED_STAGE, TRAIN_STAGE)}


def _epoch_seconds(prof: Profile, per_epoch: float) -> float:
    return per_epoch * n_images(prof.data, "train") / _CUB_TRAIN_IMAGES


def _stage_seconds(kind: str, prof: Profile) -> float:
    """Seconds of the training epochs of one stage (see :class:`qpmlib.config.ClusterConfig`)."""
    c, t = prof.cluster, prof.train
    if kind == "dense":
        probe = prof.model.n_layers == 0
        return t.dense_epochs * _epoch_seconds(prof, c.probe_seconds_per_epoch if probe else c.seconds_per_epoch)
    if kind == "qpm" or kind in SPARSE_HEADS:
        epochs = t.ft_epochs
        if kind in SPARSE_HEADS:
            epochs = sum(e for e, _ in sparse_head_configs(kind, prof, {})[1]["schedule"]) or t.ft_epochs
        return epochs * _epoch_seconds(prof, c.seconds_per_epoch)
    if kind in PEER_HEADS and kind != "klc":  # KLC trains nothing: its prototype bank is in the overhead
        return prof.heads.epochs * _epoch_seconds(prof, c.seconds_per_epoch)
    return 0.0  # the QP and SLDD's selection: in the per-run overhead


def estimate_hours(tasks: Sequence[Task], profile: str | Profile) -> dict[str, float]:
    """Estimated GPU-hours per task at the profile's paper-scale figures (:class:`qpmlib.config.ClusterConfig`).

    An extraction takes ``n_images / extract_images_per_s``; a run takes ``run_overhead_s`` plus the training epochs
    of each stage it is the first task to need (stages already stored, or shared with an earlier task, count once),
    at ``seconds_per_epoch`` scaled by the training images over CUB's 5,994. Times the GPUs of the task's stage.
    """
    prof = get_profile(profile)
    gpus = {stage: r.gpus for stage, r in stage_resources(prof).items()}
    seen: set[str] = set()
    hours = {}
    for task in tasks:
        if task.fn == "extract":
            store = _store_profile(task.kwargs)
            seconds = n_images(store.data, task.kwargs["split"]) / prof.cluster.extract_images_per_s
        else:
            run = spec_profile(task.kwargs)
            seconds = run.cluster.run_overhead_s
            for path in (*task.key.requires, task.key.path):
                if path not in seen and not StoreKey(path, verify="result").exists():
                    seconds += _stage_seconds(Path(path).parent.name, run)
                seen.add(path)
        hours[task.name] = seconds / 3600 * gpus[task.stage]
    return hours


# ---------------------------------------------------------------------------------------------- computing
def plan_requests(requests: Sequence[RunRequest], profile: str | Profile) -> tuple[RunPlan, int]:
    """The dry run: every task the requests need, stored or to submit, with resources and GPU-hour estimates.

    Nothing is extracted, trained or submitted, and no data or model is read (except, once per checkpoint, the
    backbone weights for their id).

    Returns:
        ``(plan, pending)``: the :class:`qpmlib.runs.executor.RunPlan` (print it) and how many of its run tasks wait
        for embeddings that are not extracted yet.
    """
    prof = get_profile(profile)
    specs = request_specs(requests, prof)
    runs = _run_tasks(specs, allow_pending=True)
    tasks = extraction_tasks(specs) + [task for task, _ in runs]
    pending = sum(provisional for _, provisional in runs)
    return plan(tasks, gpu_hours=estimate_hours(tasks, prof), resources=stage_resources(prof)), pending


def compute_requests(requests: Sequence[RunRequest], profile: str | Profile, *, executor: str | None = None,
                     folder: str | Path | None = None, verbose: bool = True) -> list[RunReport]:
    """Compute every missing run of the requests with one executor: the embedding stores first, then the runs
    (with ``local``, in the profile's ``cluster.workers`` processes).

    Args:
        requests: the runs (e.g. :func:`qpmlib.analysis.plan.book_requests`).
        profile: a registered profile, by name or object.
        executor: ``"local"`` or ``"slurm"``; None: :func:`qpmlib.runs.executor.resolve_executor` with the profile.
        folder: the Slurm jobs' folder (default ``<QPMLIB_HOME>/slurm``).
        verbose: show the jobs queued, running and done (plain text in papermill).

    Returns:
        The :class:`qpmlib.runs.executor.RunReport` of the extraction, then of the runs.

    Raises:
        qpmlib.runs.executor.RunsNotFinished: when tasks never finished after the profile's ``cluster.max_retries``.
    """
    prof = get_profile(profile)
    executor = resolve_executor(executor, prof)
    specs = request_specs(requests, prof)
    c = prof.cluster
    options = dict(executor=executor, resources=stage_resources(prof), folder=folder, max_retries=c.max_retries,
                   poll_s=c.poll_s, verbose=verbose)
    reports = [compute(extraction_tasks(specs), **options)]  # one at a time: an extraction uses every core
    reports.append(compute(run_tasks(specs), workers=c.workers, **options))
    return reports


def ensure_runs(requests: Sequence[RunRequest], profile: str | Profile, *, executor: str | None = None,
                verbose: bool = True) -> list[RunReport] | None:
    """What chapters call before they load runs: with a cluster executor, compute the missing ones as jobs and wait.

    With ``local`` nothing happens here: the caller computes missing runs in its own process, as chapters always
    did (same code, same numbers, same hashes).

    Returns:
        The reports of :func:`compute_requests`, or None with ``local``.
    """
    if resolve_executor(executor, profile) == "local":
        return None
    return compute_requests(requests, profile, executor=executor, verbose=verbose)


def ensure_method_runs(method: str, seeds: Sequence[int], profile: str | Profile, *,
                       overrides: Mapping[str, Any] | None = None, executor: str | None = None,
                       verbose: bool = True) -> list[RunReport] | None:
    """:func:`ensure_runs` of one method over seeds (what :func:`qpmlib.runs.executor.cluster_runs` runs)."""
    return ensure_runs([RunRequest.of(method, seeds, dict(overrides or {}))], profile, executor=executor,
                       verbose=verbose)


# ---------------------------------------------------------------------------------------------- export, import
def export_runs(archive: str | Path, requests: Sequence[RunRequest], profile: str | Profile, *,
                verbose: bool = True) -> dict[str, Any]:
    """Pack every stored entry of the requests (embedding stores of both splits, every stage) into one archive.

    The manifest's ``produced_by`` names the profile, the number of runs and, for each embedding store, its entry and
    spec, so that :func:`import_runs` can install the stores where the importing machine looks for them.

    Args:
        archive: the tar file to write (see :func:`qpmlib.runs.archive.export_archive`).
        requests: the runs, e.g. :func:`qpmlib.analysis.plan.book_requests`.
        profile: a registered profile, by name or object.
        verbose: show a progress bar.

    Returns:
        The manifest written into the archive.

    Raises:
        FileNotFoundError: when a run or store is not stored (or damaged): compute the runs first (``make runs``).
    """
    prof = get_profile(profile)
    specs = request_specs(requests, prof)
    entries = spec_entries(specs)
    home = paths.home().absolute()
    stores = [{"entry": Path(t.key.path).relative_to(home).as_posix(), "spec": t.kwargs}
              for t in extraction_tasks(specs)]
    produced_by = {"profile": prof.name, "runs": len(specs), "embedding_stores": stores}
    return export_archive(archive, entries, root=home, produced_by=produced_by, verbose=verbose)


def import_runs(archive: str | Path, *, verbose: bool = True) -> ImportReport:
    """Install an archive of :func:`export_runs` under :func:`qpmlib.paths.home`, every check first.

    Embedding stores are then renamed to where this machine looks for them (their folder name depends on the
    dataset folder, see :func:`qpmlib.embeddings.relocate`); a store that is already there is kept and the copy
    just unpacked removed. The import is recorded in ``<home>/imports.json`` (archive, time, what produced it, the
    entries), which :func:`qpmlib.analysis.report.stage_origins` reads.

    Raises:
        qpmlib.runs.archive.ArchiveError: for a damaged, altered or unsafe archive (nothing is installed).
        ValueError: when a store of the archive clashes with a different store here.
    """
    report = import_archive(archive, verbose=verbose)
    home = paths.home().absolute()
    for store in report.manifest.get("produced_by", {}).get("embedding_stores", []):
        folder = home / store["entry"]
        if not folder.exists():
            continue  # installed and relocated by an earlier import
        spec = store["spec"]
        target = relocate(folder, _store_profile(spec), spec["split"])
        if target != folder and folder.exists():  # the same store was already where this machine looks
            shutil.rmtree(folder)
    record = {"archive": Path(archive).name, "imported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "produced_by": report.manifest.get("produced_by", {}), "entries": report.manifest.get("entries", []),
              "added": len(report.added)}
    log_file = home / IMPORTS_FILE
    with file_lock(home / _LOCKS / f"{IMPORTS_FILE}.lock", what="the import record"):
        try:
            records = json.loads(log_file.read_text())
        except (OSError, ValueError):
            records = []
        atomic_write_json(log_file, [*(records if isinstance(records, list) else []), record], indent=1)
    return report


# ---------------------------------------------------------------------------------------------- task functions
def compute_run(profile: str, method: str, seed: int, dataset: str, overrides: Mapping[str, Any]) -> None:
    """Task function: compute (or find stored) one run from its spec, in this process (what a run job does)."""
    run_methods(method, profile, [seed], overrides={"data.dataset": dataset, **overrides}, executor="local")


def extract_split(profile: str, dataset: str, split: str, backbone: str, overrides: Mapping[str, Any]) -> None:
    """Task function: extract (or find up to date) one embedding store, in this process (what an extraction job
    does)."""
    spec = {"profile": profile, "dataset": dataset, "split": split, "backbone": backbone, "overrides": overrides}
    get_store(_store_profile(spec), split)

