"""Training speed: seconds per dense and fine-tune epoch, and the share of the machine's matmul throughput.

Random fp16 embeddings of the real shapes go through :func:`qpmlib.train.train_dense` and
:func:`qpmlib.train.train_finetune` for one epoch each, for one model alone and for ``--seeds`` models trained
together in one pass (reference_spec §4.6: the paper reports 6 s/epoch for
DINO-QPM on an RTX 3090 with cached embeddings). Sizes:

* ``demo``: 600 x 256 x 384 (SynthBirds demo with ViT-S/14), MLP 4 x 256 -> 64, 25 classes, N*_f = 20.
* ``cub``: 5,994 x 256 x 768 (CUB-200-2011 train split with ViT-B/14), MLP 4 x 2048 -> 512, 200 classes,
  N*_f = 50. ``--cub-subset N`` keeps N samples (a CPU cannot hold an epoch in reasonable time); seconds per
  epoch are then also extrapolated linearly to the full 5,994.

On CUDA an epoch is timed as the difference between a 2-epoch and a 1-epoch run (one-off costs drop out).
The same run measures a large square GEMM (fp32; on CUDA also TF32 and bf16) and reports the training
step's achieved FLOP/s as a share of it. Training FLOPs count the MLP only (the head is negligible):
forward 2·T·sum(in·out) over the Linear layers for T = N·(P+1) tokens, backward twice that minus the first
layer's input gradient (not needed).

Usage::

    python benchmarks/bench_training.py                          # CPU: demo + a 256-sample CUB subset
    python benchmarks/bench_training.py --device cuda --size cub --precision both --seeds 5  # GPU, CUB size

The GPU command times the full CUB-size epoch for one seed and for five seeds stacked, in fp32 and bf16
(issue 16 targets on an H100-class GPU: one seed <= 0.3 s per epoch in bf16; five stacked <= 2x one seed).
On a machine without CUDA, ``--device cuda`` stops at once with a message that says so.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from qpmlib.model import DinoQPM  # noqa: E402
from qpmlib.train import StageConfig, TokenData, resolve_device, train_dense, train_finetune  # noqa: E402

SIZES = {
    #        N     P    D    layers hidden N_f  N_c  N*_f  N^c_f
    "demo": (600, 256, 384, 4, 256, 64, 25, 20, 5),
    "cub": (5994, 256, 768, 4, 2048, 512, 200, 50, 5),
}
CUB_TRAIN = 5994
DENSE = StageConfig("dense", 1, 32, 1e-3, 7e-4, 0.5)
FINETUNE = StageConfig("finetune", 1, 16, 5e-3, 8e-4, 1.0, 5.0, 1.0)


def random_tokens(n: int, p: int, d: int, n_classes: int, seed: int = 0) -> TokenData:
    """fp16 random tokens (N, P, D), CLS (N, D) and balanced labels."""
    rng = np.random.default_rng(seed)
    patches = rng.standard_normal((n, p, d), dtype=np.float32).astype(np.float16)
    cls = rng.standard_normal((n, d), dtype=np.float32).astype(np.float16)
    return TokenData(patches, cls, np.arange(n) % n_classes)


def mlp_train_flops(n: int, p: int, d: int, layers: int, hidden: int, n_f: int) -> float:
    """FLOPs of one training epoch of the MLP (see the module docstring)."""
    widths = [d] + [hidden] * (layers - 1) + [n_f]
    macs = [a * b for a, b in zip(widths[:-1], widths[1:])]
    tokens = n * (p + 1)
    return 2.0 * tokens * (3 * sum(macs) - macs[0])


def gemm_flops_per_s(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of a ``size`` x ``size`` matmul."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    (a @ b).sum().item()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        c = a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    del c
    return 2.0 * size**3 / best


def build_models(name: str, seeds: int = 1, seed: int = 0) -> tuple[list[DinoQPM], list[DinoQPM]]:
    """``seeds`` dense models of size ``name`` and as many with a random sparse head (N*_f features, N^c_f per class)."""
    _, p, d, layers, hidden, n_f, n_c, n_sel, n_pc = SIZES[name]
    dense, sparse = [], []
    for s in range(seeds):
        torch.manual_seed(seed + s)
        model = DinoQPM(d, n_c, n_layers=layers, hidden_size=hidden, n_features=n_f)
        rng = np.random.default_rng(seed + s)
        assignment = np.zeros((n_c, n_sel))
        for c in range(n_c):
            assignment[c, rng.choice(n_sel, n_pc, replace=False)] = 1
        head = copy.deepcopy(model)
        head.set_sparse_head(rng.choice(n_f, n_sel, replace=False), assignment, np.zeros(n_f), np.ones(n_f))
        dense.append(model)
        sparse.append(head)
    return dense, sparse


def train_seconds(models: list[DinoQPM], data: TokenData, stage: StageConfig, epochs: int, device: torch.device,
                  *, precision: str = "fp32", seed: int = 0) -> float:
    """Wall-clock seconds of ``epochs`` epochs of ``stage`` (dense or fine-tune) for copies of ``models`` trained
    together (one model: alone), at ``precision`` on ``device``."""
    models = copy.deepcopy(models)
    train = train_dense if stage.stage == "dense" else train_finetune
    stage = dataclasses.replace(stage, epochs=epochs, precision=precision)
    ids = list(range(seed, seed + len(models)))
    t = time.perf_counter()
    train(models if len(models) > 1 else models[0], data, stage, seed=ids if len(models) > 1 else seed,
          device=str(device), verbose=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def time_epochs(name: str, n: int, device: torch.device, *, steady: bool = False, seeds: int = 1,
                precision: str = "fp32", seed: int = 0) -> dict[str, float]:
    """Seconds of one dense and one fine-tune epoch at size ``name`` with ``n`` samples, ``seeds`` models at once.

    With ``seeds > 1`` the models train together in one pass (stacked weights, one vmapped step). With ``steady``
    (used on CUDA) each stage runs once for 1 and once for 2 epochs from the same start and the difference is
    reported, so the one-off costs (moving the tokens to the GPU, CUDA/cuBLAS start-up) drop out.
    """
    _, p, d, layers, hidden, n_f, n_c, _, _ = SIZES[name]
    data = random_tokens(n, p, d, n_c, seed)
    dense, sparse = build_models(name, seeds, seed)
    out = {"flops": seeds * mlp_train_flops(n, p, d, layers, hidden, n_f)}
    for key, models, stage in (("dense_s", dense, DENSE), ("finetune_s", sparse, FINETUNE)):
        one = train_seconds(models, data, stage, 1, device, precision=precision, seed=seed)
        out[key] = (train_seconds(models, data, stage, 2, device, precision=precision, seed=seed) - one
                    if steady else one)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--size", default="both", choices=["demo", "cub", "both"])
    parser.add_argument("--cub-subset", type=int, default=None,
                        help="CUB-size samples (default: 256 on CPU, all 5,994 on CUDA)")
    parser.add_argument("--seeds", type=int, default=3, help="models trained together in one pass (vs 1 alone)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "both"],
                        help="training precision (both: fp32, then bf16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        sys.exit(f"error: {exc}. This benchmark times training on the device you name; run the --device cuda "
                 "variant on a machine with an NVIDIA GPU and a CUDA build of torch "
                 f"(here: torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}).")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")

    peaks = {"fp32": gemm_flops_per_s(device, torch.float32, 2048 if device.type == "cpu" else 8192)}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        peaks["tf32"] = gemm_flops_per_s(device, torch.float32, 8192)
        torch.backends.cuda.matmul.allow_tf32 = False
        peaks["bf16"] = gemm_flops_per_s(device, torch.bfloat16, 8192)
    print("GEMM throughput: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))

    sizes = ["demo", "cub"] if args.size == "both" else [args.size]
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    for size, precision in ((s, p) for s in sizes for p in precisions):
        n = SIZES[size][0]
        if size == "cub":
            n = args.cub_subset or (256 if device.type == "cpu" else CUB_TRAIN)
        scale = SIZES[size][0] / n
        print(f"\n[{size}] {n} samples x {SIZES[size][1]} patches x {SIZES[size][2]} dims, {precision}"
              + (f" (subset; x{scale:.1f} extrapolates to {SIZES[size][0]})" if scale != 1 else ""))
        for seeds in sorted({1, args.seeds}):
            r = time_epochs(size, n, device, steady=device.type == "cuda", seeds=seeds, precision=precision)
            for stage in ("dense", "finetune"):
                sec = r[f"{stage}_s"]
                rate = r["flops"] / sec
                shares = ", ".join(f"{rate / v:.0%} of {k} GEMM" for k, v in peaks.items())
                label = "1 seed" if seeds == 1 else f"{seeds} seeds stacked"
                print(f"  {stage:8s} {label:16s}: {sec:7.2f} s/epoch, {sec / seeds:7.2f} s per model "
                      f"({sec * scale / seeds:7.1f} s at full size), {rate / 1e9:7.1f} GFLOP/s = {shares}")

if __name__ == "__main__":
    main()
