"""Stand-in backbones: pretraining throughput, extraction throughput per variant, and the committed runs' figures.

Prints three tables:

1. **Pretraining throughput**: images per second of one training step of each variant's committed configuration
   (two global and the local crops per image, teacher and student, every loss), at each resolution phase, on
   synthetic views already in memory; and the cost of making one batch of views from the corpus (decode, crops,
   preprocessing), which the trainer overlaps with the step in a background thread.
2. **Extraction throughput**: images per second of each variant's frozen forward pass at 224 and 112 px, batch 32
   (what ``qpmlib.embeddings.extract`` runs per batch), with the committed weights (random ones where missing).
3. **Committed runs**: from the provenance cards, steps, images seen, wall time and images per second of the runs
   that produced the committed weights.

Usage: ``python benchmarks/bench_standin.py [--variants standin_s14_reg ...] [--threads N] [--steps 3]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qpmlib import backbones  # noqa: E402
from qpmlib.pretrain import trainer  # noqa: E402
from qpmlib.pretrain.corpus import MultiCrop, prepare_set  # noqa: E402


def synthetic_views(cfg: trainer.PretrainConfig, phase: trainer.Phase) -> dict[str, torch.Tensor]:
    b, g, p = cfg.batch_size, phase.global_size, phase.global_size // 14
    gen = torch.Generator().manual_seed(0)
    return {"global": torch.rand(2 * b, 3, g, g, generator=gen),
            "local": torch.rand(cfg.n_local * b, 3, phase.local_size, phase.local_size, generator=gen),
            "attributes": torch.zeros(b, 8, dtype=torch.long), "parts": torch.zeros(2 * b, p, p, dtype=torch.long),
            "patch_labels": torch.zeros(2 * b, p, p, dtype=torch.long)}


def step_rate(cfg: trainer.PretrainConfig, phase: trainer.Phase, steps: int) -> float:
    """Images per second of ``steps`` timed training steps (after one warm-up step)."""
    student, teacher, opt, centres = trainer._build(cfg)
    views = synthetic_views(cfg, phase)
    grid = phase.global_size // 14
    times = []
    for s in range(steps + 1):
        masks = trainer._masks(cfg, 2 * cfg.batch_size, grid, np.random.default_rng(s))
        t0 = time.perf_counter()
        trainer._step(cfg, student, teacher, opt, centres, views, masks, trainer._schedule(cfg, s), s)
        times.append(time.perf_counter() - t0)
    return cfg.batch_size / float(np.median(times[1:]))


def view_rate(cfg: trainer.PretrainConfig, phase: trainer.Phase) -> float:
    data = MultiCrop(prepare_set(cfg.corpus), split="all")
    t0 = time.perf_counter()
    data.batch(range(cfg.batch_size), np.random.default_rng(0), global_size=phase.global_size,
               local_size=phase.local_size, n_local=cfg.n_local)
    return cfg.batch_size / (time.perf_counter() - t0)


@torch.no_grad()
def forward_rate(name: str, size: int, repeats: int = 3) -> tuple[float, str]:
    weights = "auto" if backbones.pretrained_available(name) else "random"
    bb = backbones.build_backbone(name, weights=weights, image_size=size)
    x = torch.rand(32, 3, size, size, generator=torch.Generator().manual_seed(0))
    bb(x)
    t0 = time.perf_counter()
    for _ in range(repeats):
        bb(x)
    return 32 * repeats / (time.perf_counter() - t0), weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=backbones.standin_names())
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per case")
    parser.add_argument("--no-corpus", action="store_true", help="skip the view-making timing (needs the corpus)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")

    rows = []
    for name in args.variants:
        cfg = trainer.config_for(name)
        for phase in cfg.phases:
            row = {"variant": name, "global/local px": f"{phase.global_size}/{phase.local_size}",
                   "train step (img/s)": step_rate(cfg, phase, args.steps)}
            if not args.no_corpus:
                row["views (img/s)"] = view_rate(cfg, phase)
            rows.append(row)
    print("Pretraining throughput (one step: 2 global + local crops per image, teacher + student, all losses)")
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.1f"), "\n")

    rows = []
    for name in args.variants:
        for size in (224, 112):
            rate, weights = forward_rate(name, size)
            rows.append({"variant": name, "px": size, "weights": weights, "forward (img/s)": rate})
    print("Extraction throughput (frozen forward pass, batch 32)")
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.1f"), "\n")

    rows = []
    for name in args.variants:
        try:
            card = backbones.read_card(name)
        except FileNotFoundError:
            continue
        rows.append({"variant": name, "steps": card["steps"], "images seen": card["images_seen"],
                     "wall time (h)": card["wall_seconds"] / 3600, "images/s": card["images_per_second"],
                     "threads": card["machine"]["torch_threads"], "processor": card["machine"]["processor"]})
    if rows:
        print("Committed runs (from the provenance cards)")
        print(pd.DataFrame(rows).to_string(index=False, float_format="%.2f"))


if __name__ == "__main__":
    main()
