"""Benchmark the dry run of the executor (issue 19: the ``paper`` dry run must print within 10 s).

Builds ``--tasks`` tasks shaped like the ``paper`` grid (stages ``embed``, ``train``, ``sweep``; entry paths in a
temporary results store, a fifth of them already stored) and times three things separately: importing
``qpmlib.runs.executor``, building the tasks, and :func:`qpmlib.runs.executor.plan` + printing it. Then times the
real dry run of ``make runs PROFILE=paper DRY_RUN=1``: importing the book's planning modules, and
:func:`qpmlib.runs.tasks.plan_requests` of :func:`qpmlib.analysis.plan.book_requests` (every run's specs, stage
hashes and estimates) + printing it, in an empty ``$QPMLIB_HOME`` (set ``HF_HUB_OFFLINE=1``: no weight download).

Usage: ``python benchmarks/bench_dry_run.py [--tasks 2000] [--profile paper]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--profile", default="paper")
    args = parser.parse_args()

    t0 = time.perf_counter()
    from qpmlib.runs.executor import StoreKey, Task, plan

    t_import = time.perf_counter() - t0
    resources = {"embed": {"gpus": 1, "cpus": 8, "mem_gb": 64, "time_min": 120},
                 "train": {"gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 240},
                 "sweep": {"gpus": 1, "cpus": 4, "mem_gb": 16, "time_min": 60}}
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        tasks, hours = [], {}
        for i in range(args.tasks):
            stage = ("embed", "train", "sweep")[0 if i < 8 else 1 + i % 2]
            entry = Path(tmp) / stage / hashlib.sha256(str(i).encode()).hexdigest()[:16]
            if i % 5 == 0:
                entry.mkdir(parents=True)
            name = f"{stage}/run={i}"
            tasks.append(Task(name, "probe", {"root": tmp, "seed": i, "size": 8}, StoreKey(str(entry)), stage))
            hours[name] = 0.5 if stage == "embed" else 0.15
        t_build = time.perf_counter() - t1
        t2 = time.perf_counter()
        p = plan(tasks, gpu_hours=hours, resources=resources)
        with redirect_stdout(io.StringIO()) as out:
            print(p)
        t_plan = time.perf_counter() - t2
    print(f"{args.tasks} tasks: import {t_import:.2f} s, build {t_build:.2f} s, plan + print {t_plan:.2f} s "
          f"({len(out.getvalue().splitlines())} lines)")
    print(out.getvalue().splitlines()[-1])
    _book_dry_run(args.profile)


def _book_dry_run(profile: str) -> None:
    import os

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["QPMLIB_HOME"] = tmp
        t0 = time.perf_counter()
        from qpmlib.analysis.plan import book_requests
        from qpmlib.runs.tasks import plan_requests

        t_import = time.perf_counter() - t0
        t1 = time.perf_counter()
        run_plan, _ = plan_requests(book_requests(profile), profile)
        with redirect_stdout(io.StringIO()) as out:
            print(run_plan)
        t_plan = time.perf_counter() - t1
    print(f"book dry run of {profile}: import {t_import:.2f} s, plan + print {t_plan:.2f} s "
          f"({len(run_plan.jobs)} jobs)")
    print(out.getvalue().splitlines()[-1])


if __name__ == "__main__":
    main()
