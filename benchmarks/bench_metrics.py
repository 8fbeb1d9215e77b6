"""Time the map-based and dataset-level metrics at demo size and CUB size (CPU, one thread by default).

Run: ``python benchmarks/bench_metrics.py [--threads 1]``. Prints one line per metric and size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from qpmlib import metrics

SIZES = {  # name: (N test samples, D features, grid side, N train samples, N_c classes)
    "demo": (400, 64, 16, 800, 20),
    "cub": (5794, 50, 16, 5994, 200),
}


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """Return (value, seconds) of one call."""
    t = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.sizes:
        n, d, g, n_train, n_c = SIZES[name]
        rng = np.random.default_rng(0)
        maps = np.maximum(rng.normal(size=(n, d, g, g)), 0).astype(np.float32)
        weights = np.zeros((n, d), np.float32)
        for row in weights:
            row[rng.choice(d, 5, replace=False)] = 1.0
        masks = rng.random((n, g, g)) > 0.5
        feats = np.maximum(rng.normal(size=(n_train, d)) + rng.normal(size=d), 0)
        labels = rng.integers(0, n_c, n_train)
        tokens = rng.normal(size=(n, 257, 384)).astype(np.float16) if name == "demo" else None
        part_maps = rng.random((n, 8, g, g)) / 8
        runs = [
            ("plausibility", metrics.plausibility, (maps, weights, masks), {}),
            ("sid_at_k(k=5)", metrics.sid_at_k, (maps, weights, 5), {}),
            ("class_independence", metrics.class_independence, (feats, labels), {}),
            ("contrastiveness(batched)", metrics.contrastiveness, (feats,), {}),
            ("contrastiveness(sklearn)", metrics.contrastiveness, (feats,), {"method": "sklearn"}),
            ("part_alignment(K=8)", metrics.part_alignment, (maps, part_maps), {}),
            ("part_peak_alignment(K=8)", metrics.part_peak_alignment, (maps, part_maps), {}),
        ]
        if tokens is not None:
            runs.append(("patch_contextualisation", metrics.patch_contextualisation, (tokens[:, 1:], tokens[:, 0]), {}))
        print(f"== {name}: N={n} D={d} grid={g}x{g} N_train={n_train} threads={args.threads}")
        for label, fn, a, kw in runs:
            value, sec = timed(fn, *a, **kw)
            shown = value.score if isinstance(value, metrics.PartAlignment) else value
            print(f"{label:28s} {sec:8.3f} s   value {shown:.4f}")


if __name__ == "__main__":
    main()
