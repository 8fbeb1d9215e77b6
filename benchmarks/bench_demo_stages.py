"""Where a cold ``demo`` run spends its time, and what one torch thread per run and two worker processes give.

Three measurements in a fresh ``$QPMLIB_HOME`` (a temporary folder; the SynthBirds images come from
``$QPMLIB_DATA`` as usual):

1. **extraction**: both splits of the demo backbone, cold (seconds and images per second);
2. **one run, stage by stage**, for each ``--threads`` count: the dense stage (training, then evaluation and
   metrics), the QP, the fine-tune (training, then metrics), from the stages' stored provenance, and the run's
   accuracy (so that the thread counts' numbers can be compared);
3. **the QP** of that run's dense features with each ``--qp`` setting (solver@seconds): objective, bound, seconds
   (the demo's Gurobi solves stop at their 30 s limit, so their result depends on the machine's speed and load);
4. **``--runs`` independent dense runs** (the Fig. 11 grid of ``train.dense_fdl``, no QP: its time limit would hide
   the rest) computed by :func:`qpmlib.runs.executor.compute` with one process (this one, torch's default threads),
   then with ``--workers`` spawned processes (one core's share of threads each), and the largest difference of
   their stored metrics.

Usage::

    python benchmarks/bench_demo_stages.py                      # threads 2 and 1, 4 runs, 2 workers
    python benchmarks/bench_demo_stages.py --threads 1 --runs 0 --qp open@5 gurobi@5

The machine's load (``os.getloadavg``) is printed before each measurement: on shared cores the figures move with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _stage_rows(run) -> list[tuple[str, float]]:
    """(what, seconds) of each stored stage of a run, split into training and the rest where it trained."""
    rows = []
    for kind, result in run.stages.items():
        prov = result.provenance
        total = prov.get("stage_seconds") or prov.get("total_seconds") or 0.0
        train = prov.get("train_seconds")
        if train:
            rows += [(f"{kind}: training", train), (f"{kind}: evaluation + metrics", total - train)]
        else:
            rows.append((kind, total))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="dino_qpm")
    parser.add_argument("--threads", type=int, nargs="*", default=[2, 1])
    parser.add_argument("--runs", type=int, default=4, help="dense runs of part 3 (0: skip it)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--qp", nargs="*", default=["gurobi@30", "gurobi@5", "open@5"],
                        help="QP settings solver@seconds of part 3 (the run must have a dense stage)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (its path is printed)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    os.environ["QPMLIB_HOME"] = str(home)
    import torch

    from qpmlib import qp
    from qpmlib.config import get_profile
    from qpmlib.embeddings import get_store
    from qpmlib.runs.executor import compute
    from qpmlib.runs.methods import RunRequest, run_methods
    from qpmlib.results import FEATURES_FILE
    from qpmlib.runs.tasks import request_specs, run_tasks

    prof = get_profile("demo")
    default_threads = torch.get_num_threads()
    print(f"home {home}; {os.cpu_count()} cores, torch default {default_threads} threads; {_load()}")
    try:
        start = time.perf_counter()
        n = sum(len(get_store(prof, split, verbose=False).labels) for split in ("train", "test"))
        seconds = time.perf_counter() - start
        print(f"\n1. extraction ({prof.backbone.name}, both splits): {seconds:.1f} s, {n / seconds:.1f} images/s")

        print(f"\n2. one cold {args.method} run (seed 0), stage by stage")
        for threads in args.threads:
            shutil.rmtree(home / "results", ignore_errors=True)
            print(f"   {threads} thread(s); {_load()}")
            torch.set_num_threads(threads)
            start = time.perf_counter()
            run = run_methods(args.method, prof, [0])[0]
            wall = time.perf_counter() - start
            for what, secs in _stage_rows(run):
                print(f"     {what:<28} {secs:7.1f} s")
            print(f"     {'whole run':<28} {wall:7.1f} s; accuracy {run.metrics['accuracy']:.6f}")
        torch.set_num_threads(default_threads)

        if args.qp:
            stored = run.stages["dense"].tensors(FEATURES_FILE)
            A, R = qp.qpm_matrices(stored["features"].numpy(), stored["labels"].numpy())
            q = prof.qp
            threshold = qp.r_threshold(R, q.n_selected, mode=q.r_mode)
            print(f"\n3. the QP of that run's dense features ({q.n_selected} features, {q.n_per_class} per class)")
            for setting in args.qp:
                solver, _, seconds = setting.partition("@")
                print(f"   {setting:<12} {_load()}", end="", flush=True)
                sol = qp.solve_qpm(A, R, q.n_selected, q.n_per_class, r_threshold=threshold, solver=solver,
                                   time_limit=float(seconds), seed=0, gurobi=q.gurobi)
                bound = "none" if sol.bound is None else f"{sol.bound:.2f}"
                print(f"  objective {sol.objective:.2f}, bound {bound}, {sol.runtime:.1f} s ({sol.solver})")

        if args.runs > 0:
            grid = (prof.train.dense_fdl, *[v for v in prof.sweeps.fdl if v != prof.train.dense_fdl])
            requests = [RunRequest.of("dense", [0], {"train.dense_fdl": v}) for v in grid[:args.runs]]
            tasks = run_tasks(request_specs(requests, prof))
            print(f"\n4. {len(tasks)} dense runs (train.dense_fdl in {list(grid[:len(tasks)])})")
            metrics = {}
            for workers in (1, args.workers):
                shutil.rmtree(home / "results", ignore_errors=True)
                print(f"   {workers} process(es); {_load()}")
                start = time.perf_counter()
                compute(tasks, executor="local", workers=workers, verbose=False)
                wall = time.perf_counter() - start
                metrics[workers] = [run_methods("dense", prof, [0], overrides=dict(r.overrides), compute=False)[0]
                                    .metrics for r in requests]
                print(f"     {wall:7.1f} s, {wall / len(tasks):.1f} s per run")
            diff = max(abs(a[k] - b[k]) for a, b in zip(metrics[1], metrics[args.workers]) for k in a
                       if isinstance(a[k], float) and k != "seconds_per_epoch")
            print(f"   largest difference of a stored metric between the two: {diff:.2e}")
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
