"""The runs the book needs, in one list: what an executor can compute before the chapters only load.

    requests = book_requests("demo")      # Tables 1-4, every ablation figure, the solver check, the peer heads
    compute(requests, "demo")             # here, one request after another (or as Slurm jobs, see compute)

Each table and figure says which runs it needs in one place (:func:`qpmlib.analysis.tables.table1_requests`,
:func:`~qpmlib.analysis.tables.table3_requests`, :func:`~qpmlib.analysis.tables.table4_requests`,
:func:`qpmlib.analysis.sweeps.sweep_requests` of :data:`~qpmlib.analysis.sweeps.FIGURE_GRIDS`), and the functions
that build the tables run exactly those requests; this module only collects them. The results store is
content-addressed, so runs computed elsewhere (another process, a cluster) and copied in are found by the
chapters as if computed here.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from qpmlib.analysis.peers import peer_requests
from qpmlib.analysis.standin import twin_requests
from qpmlib.analysis.sweeps import FIGURE_GRIDS, sweep_requests
from qpmlib.analysis.tables import OPEN_SOLVER_CHECK, table1_requests, table3_requests, table4_requests
from qpmlib.config import Profile, get_profile
from qpmlib.runs.executor import resolve_executor
from qpmlib.runs.methods import RunRequest, method_profile
from qpmlib.runs.tasks import compute_requests

__all__ = ["book_requests", "embedding_profiles", "compute"]


def book_requests(profile: str | Profile, seeds: Sequence[int] | None = None) -> list[RunRequest]:
    """Every run the chapters of the book load, without repeats, in the order the chapters need them.

    Args:
        profile: profile name or object.
        seeds: the seeds of the tables (None: the profile's); the sweeps use ``profile.sweeps.seeds``.

    Returns:
        The requests: Tables 1-2, 3 and 4, the grids of Figs. 7-13, the open-solver check of the QP, the
        peer heads' comparison and, on a stand-in, DINO-QPM on its random twin (first seed).
    """
    prof = get_profile(profile)
    first = (prof.seeds if seeds is None else seeds)[0]
    requests = [r for _, r in table1_requests(prof, seeds)] + [r for _, r in table3_requests(prof, seeds)]
    requests += [r for _, r in table4_requests(prof, seeds)]
    requests += [r for grid in FIGURE_GRIDS.values() for _, r in sweep_requests(prof, grid)]
    requests.append(RunRequest.of("dino_qpm", [first], OPEN_SOLVER_CHECK))
    requests += peer_requests(prof, [first])  # the peer heads' chapter (qpmlib.analysis.peers)
    requests += twin_requests(prof, first)  # the stand-in chapter: DINO-QPM on the random twin
    return list(dict.fromkeys(requests))


def embedding_profiles(profile: str | Profile, seeds: Sequence[int] | None = None) -> list[Profile]:
    """One profile per embedding store the book reads: each distinct dataset and backbone of
    :func:`book_requests` (``data_scripts/extract_embeddings.py --book`` extracts them all ahead).

    Returns:
        The runs' profiles (method fields and overrides applied), first occurrence of each (data, backbone).
    """
    prof = get_profile(profile)
    found: dict[tuple, Profile] = {}
    for request in book_requests(prof, seeds):
        p = method_profile(request.method, prof, dict(request.overrides))
        found.setdefault((p.data, p.backbone.name, str(p.backbone.weights)), p)
    return list(found.values())


def compute(requests: Sequence[RunRequest], profile: str | Profile, *, executor: str | None = None,
            verbose: bool = True) -> None:
    """Compute (or find stored) every request: here, one after another, or as cluster jobs.

    Args:
        requests: the runs, e.g. :func:`book_requests`.
        profile: profile name or object.
        executor: ``"local"`` (here) or ``"slurm"`` (every missing embedding store, then every missing run, as
            jobs: :func:`qpmlib.runs.tasks.compute_requests`); None: :func:`qpmlib.runs.executor.resolve_executor`
            (``$QPMLIB_EXECUTOR``, else the profile's ``cluster.executor``).
        verbose: progress.

    Raises:
        qpmlib.runs.executor.RunsNotFinished: with ``slurm``, when jobs never finished after their retries.
    """
    prof = get_profile(profile)
    executor = resolve_executor(executor, prof)
    if executor != "local" or prof.cluster.workers > 1:  # as tasks: jobs, or the profile's local worker processes
        compute_requests(requests, prof, executor=executor, verbose=verbose)
        return
    for request in tqdm(requests, desc="runs", disable=not verbose):
        request.run(prof, executor=executor, verbose=False)
