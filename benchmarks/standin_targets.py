"""The stand-in backbone's targets on a profile (issue 13): probes, Table 1 rows, Plausibility, part alignment
(mass-based and peak-based), the register axis (Table 3), the size axis (Table 4), artefact tokens, each with its
wall time.

Every run goes through the results store, so a later ``make book`` on the same ``$QPMLIB_HOME`` loads them.

Usage: ``python benchmarks/standin_targets.py [--profile demo] [--seeds 0 1 2] [--sections table1 random ...]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qpmlib.analysis import standin, tables  # noqa: E402
from qpmlib.analysis.summary import summarise  # noqa: E402
from qpmlib.config import get_profile  # noqa: E402
from qpmlib.runs.evaluate import part_peak_alignment_of  # noqa: E402
from qpmlib.runs.methods import run_methods  # noqa: E402

SECTIONS = ("probes", "table1", "random", "table3", "table4", "artefacts")
METRICS = ("accuracy", "plausibility", "part_alignment", "part_peak_alignment")


def _timed(title: str, fn):
    start = time.perf_counter()
    out = fn()
    print(f"\n## {title}  [{time.perf_counter() - start:.0f} s]")
    print(out.to_string() if isinstance(out, pd.DataFrame) else out, flush=True)
    return out


def _method_rows(prof, method: str, seeds: list[int], overrides=None, label=None) -> pd.DataFrame:
    runs = run_methods(method, prof, seeds, overrides=overrides, verbose=True)
    rows = [{"method": label or method, "seed": r.seed, **{m: r.metrics.get(m) for m in METRICS},
             "part_peak_alignment": part_peak_alignment_of(r)} for r in runs]  # runs stored before it lack the key
    df = pd.DataFrame(rows)
    return df.groupby("method")[list(METRICS)].agg(["mean", "std"]).mul(100).round(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the profile's")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    args = parser.parse_args(argv)
    prof = get_profile(args.profile)
    seeds = list(args.seeds or prof.seeds)
    main_bb = prof.backbone.name
    print(f"profile {prof.name}, backbone {main_bb}, seeds {seeds}, chance {100 / prof.data.n_classes:.1f} %")
    if "probes" in args.sections:
        _timed("k-NN and ridge probe (CLS + mean patch), stand-ins and random twin",
               lambda: standin.probe_table(prof, standin.profile_standins(prof), random=(main_bb,), verbose=True))
    if "table1" in args.sections:
        _timed("Table 1 rows (%, mean and std over seeds)", lambda: pd.concat(
            [_method_rows(prof, m, seeds) for m in ("linear_probe", "dense", "dino_qpm")]))
    if "random" in args.sections:
        _timed("the same backbone with random weights (%, seed 0)", lambda: pd.concat(
            [_method_rows(prof, m, seeds[:1], {"backbone.weights": "random"}, f"{m} (random weights)")
             for m in ("dense", "dino_qpm")]))
    if "table3" in args.sections:
        _timed("Table 3 (register axis), DINO-QPM", lambda: summarise(tables.table3_records(prof, seeds[:1],
                                                                                            verbose=True)))
    if "table4" in args.sections:
        _timed("Table 4 (size axis), DINO-QPM", lambda: summarise(tables.table4_records(prof, seeds[:1],
                                                                                        verbose=True)))
    if "artefacts" in args.sections:
        names = standin.register_twins(standin.profile_standins(prof), main_bb)
        table = _timed("artefact tokens (token norms, 16 test images)",
                       lambda: standin.artefact_table(standin.token_norms_of(prof, names)))
        print("artefacts appear:", standin.artefacts_appear(table))


if __name__ == "__main__":
    main()
