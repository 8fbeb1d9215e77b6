"""Speed and size of the peer heads: seconds per training epoch and trainable parameters, on demo-sized tokens.

Random fp16 tokens of the demo's shapes (25 classes, 24 training and 16 test images per class, 256 patches of
width D = 384; ``--dim`` changes D, e.g. 768 for ViT-B) go through
:func:`qpmlib.heads.protosvit.train_protosvit` and :func:`qpmlib.heads.protofm.train_protofm` for ``--epochs``
epochs with a profile's settings (:func:`qpmlib.runs.peer_heads.head_config`; ``--profile paper`` gives the
papers' sizes), and through KLC's :func:`~qpmlib.heads.klc.fit_klc` and :func:`~qpmlib.heads.klc.predict_klc`
with random part maps (KLC trains nothing: its "epoch" is one pass of fitting, and prediction is timed per test
image). Multiply an epoch's time by the profile's ``heads.epochs`` for a head's training time in the book.

An epoch's time is the mean over the epochs after the first (the first pays one-off costs). The numbers depend
on how busy the machine is; run it on idle cores. The last lines give the parameter counts of the papers' sizes
(the configurations' defaults, 300 prototypes) for the demo's classes and for CUB's 200.

Usage::

    python benchmarks/bench_heads.py                      # demo profile's settings, D = 384, 2 epochs
    python benchmarks/bench_heads.py --dim 768 --profile paper --epochs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_training import random_tokens  # noqa: E402
from qpmlib.config import PROFILES, get_profile  # noqa: E402
from qpmlib.heads import klc, protofm, protosvit  # noqa: E402
from qpmlib.heads.base import count_parameters  # noqa: E402
from qpmlib.runs.peer_heads import head_config  # noqa: E402


def random_parts(n: int, n_parts: int, grid: int, seed: int = 0) -> np.ndarray:
    """Random blocky part maps (N, n_parts, grid, grid): each part a random rectangle, one part per patch."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, grid, grid), np.int64)
    for i in range(n):
        for k in range(1, n_parts + 1):
            y, x = rng.integers(0, grid - 3, 2)
            h, w = rng.integers(2, 5, 2)
            labels[i, y:y + h, x:x + w] = k
    return np.stack([(labels == k) for k in range(1, n_parts + 1)], axis=1).astype(np.float32)


def epoch_seconds(history) -> float:
    """Mean seconds of the epochs after the first (all of them when there is one)."""
    secs = [e["seconds"] for e in history.epochs]
    return float(np.mean(secs[1:] if len(secs) > 1 else secs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=384, help="token width D")
    ap.add_argument("--classes", type=int, default=25)
    ap.add_argument("--train-per-class", type=int, default=24)
    ap.add_argument("--test-per-class", type=int, default=16)
    ap.add_argument("--patches", type=int, default=256, help="P, a square number")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--profile", choices=tuple(PROFILES), default="demo", help="whose heads section sizes the heads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_tr, n_te = args.classes * args.train_per_class, args.classes * args.test_per_class
    train = random_tokens(n_tr, args.patches, args.dim, args.classes, seed=0)
    test = random_tokens(n_te, args.patches, args.dim, args.classes, seed=1)
    print(f"tokens: train {n_tr} x {args.patches} x {args.dim}, test {n_te}; {args.classes} classes; "
          f"profile {args.profile}; {torch.get_num_threads()} threads on {args.device}")
    prof = get_profile(args.profile)
    rows = []
    for name, key, trainer in (("ProtoS-ViT", "protosvit", protosvit.train_protosvit),
                               ("ProtoFM", "protofm", protofm.train_protofm)):
        cfg = dataclasses.replace(head_config(prof, key), epochs=args.epochs, device=args.device)
        run = trainer(train, cfg, seed=0, verbose=False)
        rows.append((name, epoch_seconds(run.history), run.n_parameters,
                     f"K={cfg.n_prototypes}, batch {cfg.batch_size}"))
    grid = int(round(args.patches ** 0.5))
    parts_tr, parts_te = random_parts(n_tr, 9, grid, 0), random_parts(n_te, 9, grid, 1)
    names = [f"part{k}" for k in range(9)]
    klc_cfg = head_config(prof, "klc")
    model = klc.fit_klc(train, parts_tr, names, klc_cfg)
    t0 = time.perf_counter()
    klc.predict_klc(model, test, parts_te)
    per_image = (time.perf_counter() - t0) / n_te
    rows.append(("KLC", model.fit_seconds, 0, f"fit once; predict {1e3 * per_image:.1f} ms/image, "
                                              f"{klc_cfg.prototypes_per_class}/class, top {klc_cfg.top_k}"))
    print(f"{'head':<11} {'s/epoch':>8} {'params':>10}  notes")
    for name, secs, params, note in rows:
        print(f"{name:<11} {secs:8.2f} {params:10,d}  {note}")
    paper = get_profile("paper")
    for n_classes in (args.classes, 200):
        sizes = ", ".join(
            f"{name} {count_parameters(model.from_config(head_config(paper, key), args.dim, n_classes)):,d}"
            for name, key, model in (("ProtoS-ViT", "protosvit", protosvit.ProtoSViT),
                                     ("ProtoFM", "protofm", protofm.ProtoFM)))
        print(f"papers' sizes (K = 300) at D = {args.dim}, {n_classes} classes: {sizes} parameters")


if __name__ == "__main__":
    main()
