"""Embedding-extraction throughput on this machine, and what a CUB-size store costs in memory.

For ``tiny_vit_test`` and ``dinov2_vits14_reg`` (random weights) at 224 and 112 px, batch 32, on synthetic JPEGs
written to a temporary folder, it times separately

* decode + preprocess (``qpmlib.data.images.load_image``, one process),
* the backbone forward pass (preprocessed tensors already in memory),
* the whole pipeline (``qpmlib.embeddings.extract``: DataLoader workers, forward, fp16 memmap writes),

and prints images per second. It then prints the size of a CUB-200-2011 store for ViT-B
(11,788 x 257 x 768 fp16) and shows, with a sparse file of that size, that reading one batch from the memmap
raises the resident memory by about one batch, not by the file size.

Usage: ``python benchmarks/bench_extraction.py [--n-images 64] [--device auto]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from qpmlib.backbones import build_backbone  # noqa: E402
from qpmlib.data.images import load_image  # noqa: E402
from qpmlib.embeddings import extract  # noqa: E402

BATCH = 32
REPEATS = 2
CASES = [("tiny_vit_test", 224), ("tiny_vit_test", 112), ("dinov2_vits14_reg", 224), ("dinov2_vits14_reg", 112)]


def write_jpegs(folder: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` smooth random 500 x 375 JPEGs (roughly CUB's size) and their index."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        low = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((500, 375), Image.BICUBIC)
        name = f"img_{i:04d}.jpg"
        img.save(folder / name, quality=90)
        rows.append({"image_id": i + 1, "path": name, "label": i % 10, "is_train": True})
    return pd.DataFrame(rows)


def rss_mib(field: str = "VmRSS") -> float:
    """A memory line of /proc/self/status in MiB (Linux; ``RssFile`` = file-backed pages), NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def bench_case(name, size, index, root, out, device) -> dict:
    bb = build_backbone(name, weights="random", image_size=size)
    files = [root / p for p in index.path]
    decode = 0.0
    for _ in range(REPEATS):  # best of REPEATS: the machine may be shared
        t0 = time.perf_counter()
        images = torch.stack([load_image(f, size, dataset="cub") for f in files])
        decode = max(decode, len(files) / (time.perf_counter() - t0))

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    bb.to(dev)
    with torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"):
        bb(images[:BATCH].to(dev))  # warm-up
        forward = 0.0
        for _ in range(REPEATS):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for s in range(0, len(images), BATCH):
                bb(images[s : s + BATCH].to(dev))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            forward = max(forward, len(images) / (time.perf_counter() - t0))
    bb.to("cpu")

    t0 = time.perf_counter()
    store = extract(index, root, "train", bb, image_size=size, dataset="cub", out_dir=out, batch_size=BATCH,
                    device=device, verbose=False)
    pipeline = len(store) / (time.perf_counter() - t0)
    return {"backbone": name, "px": size, "patches": bb.n_patches, "D": bb.embed_dim,
            "decode+prep img/s": decode, "forward img/s": forward, "pipeline img/s": pipeline}


def memmap_demo(folder: Path) -> None:
    n, p, d = 11_788, 257, 768
    nbytes = n * p * d * 2
    print(f"CUB-size store for ViT-B (11,788 x 257 x 768 fp16): {nbytes / 2**30:.2f} GiB "
          f"({nbytes / 1e9:.2f} GB; patch tokens {n * 256 * d * 2 / 2**30:.2f} GiB + CLS {n * d * 2 / 2**20:.1f} MiB)")
    path = folder / "cub_size_patch_tokens.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, p, d))  # sparse: nothing written
    del mm
    st = path.stat()
    print(f"sparse test file: {st.st_size / 2**30:.2f} GiB apparent, {st.st_blocks * 512 / 2**20:.1f} MiB on disk")
    tokens = np.load(path, mmap_mode="r")
    rows = np.sort(np.random.default_rng(0).choice(n, BATCH, replace=False))
    before, before_file = rss_mib(), rss_mib("RssFile")
    total = sum(float(tokens[r].sum(dtype=np.float32)) for r in rows)  # touch every byte of 32 random rows
    after, after_file = rss_mib(), rss_mib("RssFile")
    print(f"read {BATCH} random rows ({BATCH * p * d * 2 / 2**20:.1f} MiB of tokens, sum {total:.0f}): resident memory "
          f"+{after - before:.1f} MiB (file-backed +{after_file - before_file:.1f} MiB) for a "
          f"{nbytes / 2**20:.0f} MiB file")
    del tokens
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description="embedding extraction throughput")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}, batch {BATCH}, "
          f"{args.n_images} synthetic 500x375 JPEGs, random weights")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        memmap_demo(Path(tmp))
        root = Path(tmp) / "images"
        root.mkdir()
        index = write_jpegs(root, args.n_images)
        for name, size in CASES:
            results.append(bench_case(name, size, index, root, Path(tmp) / "cache", args.device))
        print()
        print(pd.DataFrame(results).to_string(index=False, float_format=lambda v: f"{v:8.1f}"))


if __name__ == "__main__":
    main()
