"""Run methods of a profile end to end and print the time and peak memory of every stage (issue 16).

Each stage measures itself while it computes (:class:`qpmlib.meter.Meter`): the embedding stores write their
extraction into their manifest, the results stores the other stages into each ``provenance.json``
(:func:`qpmlib.runs.provenance.measured`). This script runs the chosen methods for one seed (what is already
stored is loaded, not measured again), then prints one markdown table from those records
(:func:`qpmlib.analysis.report.stage_figures`), with the machine it ran on.

"peak RSS" is the process's resident memory at its highest during the stage (imports and earlier stages
included: a lower bound on what the stage needs on a machine of its own is the difference to the base line).

Usage::

    python benchmarks/bench_stage_meter.py --profile paper_shapes --methods dino_qpm,dino_sldd
    python benchmarks/bench_stage_meter.py --profile paper_shapes --device cuda --methods dino_qpm
    python benchmarks/bench_stage_meter.py --profile paper --methods dino_qpm     # on a GPU, with the data
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _mib(value) -> str:
    return "-" if value is None or value != value else f"{float(value):,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper_shapes")
    parser.add_argument("--methods", default="dino_qpm", help="comma-separated keys of qpmlib.runs.methods.METHODS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: the profile's train.device)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    from qpmlib.analysis.report import stage_figures
    from qpmlib.config import apply_overrides
    from qpmlib.embeddings import get_store
    from qpmlib.meter import rss_mib
    from qpmlib.runs.checks import NotReady, check_ready
    from qpmlib.runs.methods import method_profile, run_method
    from qpmlib.runs.provenance import device_label

    if args.threads:
        torch.set_num_threads(args.threads)
    prof = apply_overrides(args.profile, {} if args.device is None else {"train.device": args.device})
    try:
        check_ready(prof)  # no CUDA for a GPU profile, missing data or weights: stop before any work
    except NotReady as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    base = rss_mib()
    t0 = time.perf_counter()
    extractions = {}
    for method in methods:
        mprof = method_profile(method, prof)
        for split in ("train", "test"):
            store = get_store(mprof, split, verbose=True)
            extractions[store.path.name] = (len(store), store.manifest.get("extraction"))
        run_method(method, prof, args.seed, verbose=True)
    wall = time.perf_counter() - t0

    print(f"\nprofile {prof.name}, methods {', '.join(methods)}, seed {args.seed}; {device_label(prof.train.device)}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}; base RSS {base:,.0f} MiB; this run {wall:,.0f} s\n")
    print(_row(["stage", "count", "seconds (sum)", "seconds (max)", "peak RSS [MiB]", "peak CUDA [MiB]"]))
    print(_row(["---"] * 6))
    for name, (rows, ext) in extractions.items():
        if ext is None:
            print(_row([f"extract {name}", rows, "stored earlier", "", "", ""]))
        else:
            print(_row([f"extract {name}", ext["rows"], f"{ext['seconds']:.1f}", f"{ext['seconds']:.1f}",
                        _mib(ext["peak_rss_mib"]), _mib(ext["peak_cuda_mib"])]))
    for r in stage_figures(prof.name).itertuples():
        print(_row([r.stage, r.count, f"{r.seconds:.1f}", f"{r.max_seconds:.1f}", _mib(r.peak_rss_mib),
                    _mib(r.peak_cuda_mib)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
