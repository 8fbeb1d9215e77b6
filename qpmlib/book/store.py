"""The book's stored runs from the command line: compute them all, pack them into one archive, unpack one.

What ``make runs``, ``make export`` and ``make import`` call::

    python -m qpmlib.book.store runs   --profile paper [--executor slurm] [--dry-run] [--workers 2]
    python -m qpmlib.book.store export --profile paper --archive results-paper.tar
    python -m qpmlib.book.store import --archive results-paper.tar

``runs`` computes every run of :func:`qpmlib.analysis.plan.book_requests` that is not stored yet, with the executor
of ``--executor``, else ``$QPMLIB_EXECUTOR``, else the profile's ``cluster.executor`` (see
:func:`qpmlib.runs.executor.resolve_executor`); a later ``make book`` finds them all and only renders. ``--dry-run``
prints the jobs that would be submitted, their resources and the estimated GPU-hours, and computes nothing.
``--workers N`` computes the missing runs of the local executor in N processes (default: the profile's
``cluster.workers``).
``export`` packs the embedding stores and stages of those runs (they must be computed); ``import`` installs such an
archive on another machine (see :func:`qpmlib.runs.tasks.export_runs` and :func:`~qpmlib.runs.tasks.import_runs`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from qpmlib.analysis.plan import book_requests, compute
from qpmlib.config import PROFILES, apply_overrides, get_profile
from qpmlib.runs.archive import ArchiveError
from qpmlib.runs.checks import check_profile
from qpmlib.runs.executor import RunsNotFinished, resolve_executor
from qpmlib.runs.tasks import export_runs, import_runs, plan_requests

__all__ = ["main"]


def _runs(profile: str, executor: str | None, dry_run: bool, workers: int | None = None) -> None:
    if workers is not None:
        profile = apply_overrides(profile, {"cluster.workers": workers})
        check_profile(profile)
    requests = book_requests(profile)
    if dry_run:
        start = time.perf_counter()
        run_plan, pending = plan_requests(requests, profile)
        print(run_plan)
        if pending:
            print(f"{pending} run(s) wait for embeddings that are not extracted yet: their stages are counted as "
                  "missing (some may turn out stored once the embeddings exist)")
        print(f"[runs] dry run of profile {profile}: {len(requests)} request(s), planned in "
              f"{time.perf_counter() - start:.1f} s; nothing was computed or submitted")
        return
    executor = resolve_executor(executor, profile)
    prof = get_profile(profile)
    name, n = prof.name, prof.cluster.workers
    print(f"[runs] computing the missing runs of profile {name} with the {executor} executor"
          + (f" ({n} worker processes)" if executor == "local" and n > 1 else ""))
    compute(requests, profile, executor=executor)
    print(f"[runs] every run of profile {name} is stored; `make book PROFILE={name}` only renders now")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m qpmlib.book.store", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("runs", "export", "import"))
    parser.add_argument("--profile", default=None,
                        help=f"one of: {', '.join(PROFILES)} (default: $QPMLIB_PROFILE or demo)")
    parser.add_argument("--executor", default=None, help="local or slurm (default: $QPMLIB_EXECUTOR, else the "
                        "profile's cluster.executor)")
    parser.add_argument("--dry-run", action="store_true", help="runs: print the job list and the GPU-hour estimate")
    parser.add_argument("--workers", type=int, default=None, help="runs: local worker processes (default: the "
                        "profile's cluster.workers)")
    parser.add_argument("--archive", default=None, help="export/import: the archive (.tar)")
    args = parser.parse_args(argv)
    profile = args.profile or os.environ.get("QPMLIB_PROFILE", "demo")
    try:
        get_profile(profile)
        if args.action == "runs":
            _runs(profile, args.executor or None, args.dry_run, args.workers)
            return 0
        if not args.archive:
            raise ValueError(f"{args.action} needs --archive FILE (make {args.action} ARCHIVE=...)")
        if args.action == "export":
            manifest = export_runs(args.archive, book_requests(profile), profile)
            print(f"[export] {args.archive}: {len(manifest['entries'])} entries, {len(manifest['files'])} files "
                  f"of profile {profile}")
        else:
            report = import_runs(args.archive)
            made = report.manifest.get("produced_by", {})
            print(f"[import] {args.archive} (profile {made.get('profile')}, exported from commit "
                  f"{made.get('exported_from_commit')}): {len(report.added)} entries added, {len(report.present)} "
                  "already here")
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # ArchiveError, RunsNotFinished among them
        print(f"[{args.action}] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
