"""Stage figures at the paper's shapes on this machine: time and peak memory of each stage (issue 16).

Every stage runs in its own fresh process (``spawn``), so its peak resident memory (``ru_maxrss``) is its own;
"base" is the process after importing torch and qpmlib, "peak" the high-water mark at the end. Shapes are the
paper's (reference_spec §2, §6.3, §1.5): ViT-B tokens D = 768 at 256 patches (random fp16 tokens), MLP
4 x 2048 -> 512, 200 classes, N*_f = 50, N^c_f = 5.

Stages:

* ``dense`` / ``finetune``: one epoch of :func:`qpmlib.train.train_dense` / ``train_finetune`` (batch 32 / 16)
  on ``--train-images`` random token sets, reported as seconds per 100 images, fp32 and bf16 (autocast).
* ``qp``: A and R (:func:`qpmlib.qp.qpm_matrices`) of class-structured features (512 x 200 classes), the
  penalty threshold (``r_threshold``, mode "dinoqpm") and the open solver for ``--qp-seconds``: time and the
  bound gap it proves.
* ``glm``: the SLDD/QSENN glm work at 512 features x 200 classes on the 90 % split: the selection-type path
  (group lasso, alpha 0.8, lam_fac 0.1, lambda_max from raw-feature metadata) over ``--lambdas`` steps, the
  weight path on 50 features (alpha 0.99) over as many steps, and SLDD's selection of the first
  ``--select`` features; float64 (the CPU default) and float32 (the GPU default).
* ``extract``: the forward pass of ViT-B/14-reg (random weights) at 224 px, seconds per image.

Every figure also gives the work it stands for, so it can be scaled (see the report of issue 16): FLOPs per
epoch for training, iterations for the glm solves. ``--device cuda`` runs the training, glm and extraction stages
on the GPU (the QP solver is CPU-only) and adds the GPU's peak allocated memory; the CUB-size epoch time itself
is measured better by ``bench_training.py --device cuda`` (it drops the one-off costs). Without CUDA,
``--device cuda`` stops at once with a message that says so.

Usage::

    python benchmarks/bench_paper_shapes.py                     # every stage, 2 threads, ~15 min on 2 cores
    python benchmarks/bench_paper_shapes.py --stages dense,glm --train-images 32 --threads 1
    python benchmarks/bench_paper_shapes.py --device cuda --stages glm,extract --lambdas 100 --extract-batch 64
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_CLASSES, N_FEATURES, N_SELECTED, N_PER_CLASS = 200, 512, 50, 5
STAGES = ("dense", "finetune", "qp", "glm", "extract")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _train(stage: str, n: int, precision: str, device: str) -> dict:
    import torch

    from bench_training import DENSE, FINETUNE, SIZES, build_models, mlp_train_flops, random_tokens, train_seconds

    _, p, d, layers, hidden, n_f, n_c, _, _ = SIZES["cub"]
    data = random_tokens(n, p, d, n_c)
    dense, sparse = build_models("cub")
    base = _rss_mib()
    seconds = train_seconds(dense if stage == "dense" else sparse, data, DENSE if stage == "dense" else FINETUNE, 1,
                            torch.device(device), precision=precision)
    flops = mlp_train_flops(n, p, d, layers, hidden, n_f)
    return {"what": f"{stage} epoch, {n} images, {precision}", "seconds": seconds,
            "per 100 images [s]": seconds * 100 / n, "GFLOP/s": flops / seconds / 1e9, "base MiB": base}


def _qp(seconds: float) -> dict:
    from bench_qp import class_structured_features

    from qpmlib.qp import qpm_matrices, r_threshold, solve_qpm

    X, y = class_structured_features(n_classes=N_CLASSES, n_features=N_FEATURES)
    base = _rss_mib()
    t0 = time.perf_counter()
    A, R = qpm_matrices(X, y)
    threshold = r_threshold(R, N_SELECTED, mode="dinoqpm")
    t1 = time.perf_counter()
    sol = solve_qpm(A, R, N_SELECTED, N_PER_CLASS, r_threshold=threshold, solver="open", time_limit=seconds)
    return {"what": f"QP {N_SELECTED}/{N_PER_CLASS}, {N_FEATURES} x {N_CLASSES}, open solver, limit {seconds:g} s",
            "A, R, threshold [s]": t1 - t0, "solve [s]": sol.runtime, "gap": sol.gap, "base MiB": base}


def _glm(per_class: int, n_lambdas: int, n_select: int, dtype_name: str, device: str) -> dict:
    import numpy as np
    import torch
    from bench_qp import class_structured_features

    from qpmlib.glm import FeatureMetadata, elastic_net_path
    from qpmlib.sparse import SLDD, sldd_selection_order, standardise, train_val_split

    dtype = getattr(torch, dtype_name)
    X, y = class_structured_features(n_classes=N_CLASSES, n_features=N_FEATURES, per_class=per_class)
    Z, _, _ = standardise(X)
    train, _ = train_val_split(len(y), 0.1, seed=0)
    base = _rss_mib()
    t0 = time.perf_counter()
    select_path = elastic_net_path(Z[train], y[train], alpha=0.8, group=True, lam_fac=0.1, n_lambdas=n_lambdas,
                                   do_zero=False, metadata=FeatureMetadata.of(X, y), device=device, dtype=dtype)
    t1 = time.perf_counter()
    cols = np.argsort(-X.var(axis=0))[:N_SELECTED]
    weight_path = elastic_net_path(Z[train][:, cols], y[train], alpha=0.99, n_lambdas=n_lambdas, device=device,
                                   dtype=dtype)
    t2 = time.perf_counter()
    settings = dataclasses.replace(SLDD, n_lambdas=n_lambdas)
    sldd_selection_order(X, y, n_select, settings=settings, device=device, dtype=dtype)
    t3 = time.perf_counter()
    it_sel = int(sum(e.n_iter for e in select_path.entries))
    it_w = int(sum(e.n_iter for e in weight_path.entries))
    return {"what": f"glm, {len(train)} x {N_FEATURES} x {N_CLASSES}, {n_lambdas} lambdas, {dtype_name}",
            "select path [s]": t1 - t0, "iterations": it_sel, "ms/iteration": 1e3 * (t1 - t0) / max(it_sel, 1),
            "weight path (50 f) [s]": t2 - t1, "w iterations": it_w,
            f"SLDD first {n_select} [s]": t3 - t2, "base MiB": base}


def _extract(batch: int, device: str) -> dict:
    import torch

    from qpmlib.backbones import build_backbone

    bb = build_backbone("dinov2_vitb14_reg", weights="random", image_size=224).to(device)
    images = torch.rand(batch, 3, 224, 224, device=device)
    base = _rss_mib()
    with torch.inference_mode():
        bb(images[:2])  # warm-up
        if images.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        bb(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return {"what": f"ViT-B/14-reg forward, 224 px, batch {batch}", "s/image": seconds / batch, "base MiB": base}


def _child(queue, threads: int, fn: str, args: tuple) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        out = globals()[fn](*args)
        out["peak MiB"] = _rss_mib()
        if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
            out["GPU peak MiB"] = torch.cuda.max_memory_allocated() / 2**20
        queue.put(out)
    except BaseException as exc:  # noqa: BLE001 - report any failure of the stage to the parent
        queue.put({"what": f"{fn}{args}", "error": f"{type(exc).__name__}: {exc}"})


def run_stage(fn: str, args: tuple, threads: int) -> dict:
    """Run ``fn(*args)`` in a fresh process; its result dict gains ``peak MiB`` and ``wall [s]``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(queue, threads, fn, args))
    proc.start()
    out = queue.get()
    proc.join()
    out["wall [s]"] = time.perf_counter() - t0
    return out


def _show(out: dict) -> None:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    print(f"- {out.pop('what')}: " + ", ".join(f"{k} {fmt(v)}" for k, v in out.items()), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each stage")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training, glm and extraction stages)")
    parser.add_argument("--train-images", type=int, default=100, help="random token sets per training epoch")
    parser.add_argument("--qp-seconds", type=float, default=60.0, help="open-solver time limit")
    parser.add_argument("--glm-per-class", type=int, default=27, help="images per class of the glm data "
                        "(27: about CUB's 5,994 training images, of which the path sees 90 %%)")
    parser.add_argument("--lambdas", type=int, default=5, help="lambda steps of each glm path")
    parser.add_argument("--select", type=int, default=3, help="features the timed SLDD selection picks")
    parser.add_argument("--extract-batch", type=int, default=8, help="images of the timed ViT-B forward pass")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        sys.exit(f"error: unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")

    import torch

    from qpmlib.train import resolve_device

    try:
        device = str(resolve_device(args.device))
    except ValueError as exc:
        sys.exit(f"error: {exc}. Run the --device cuda variant on a machine with an NVIDIA GPU.")
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"{where}, {args.threads} threads per stage, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}", flush=True)
    plan = []
    for stage in stages:
        if stage in ("dense", "finetune"):
            plan += [("_train", (stage, args.train_images, p, device)) for p in ("fp32", "bf16")]
        elif stage == "qp":
            plan.append(("_qp", (args.qp_seconds,)))
        elif stage == "glm":
            dtypes = ("float32",) if device.startswith("cuda") else ("float64", "float32")
            plan += [("_glm", (args.glm_per_class, args.lambdas, args.select, d, device)) for d in dtypes]
        else:
            plan.append(("_extract", (args.extract_batch, device)))
    for fn, fn_args in plan:
        _show(run_stage(fn, fn_args, args.threads))


if __name__ == "__main__":
    main()
