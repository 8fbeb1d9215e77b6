"""What opening an embedding store and reading a stored result cost, with and without their checksum checks.

    python benchmarks/bench_store_open.py                 # demo-sized store (600 + 400 images, 16 x 16 x 384)
    python benchmarks/bench_store_open.py --paper         # CUB-sized train store (5994 images, 16 x 16 x 768)

Prints, for a store written by the importable ``qpmlib``: the median time of ``open_store`` on an unchanged
store (the usual case: the stamp of verified hashes matches), the time of the first open of a copied store (every
array hashed once; ``--verify-all``), and the same for a results-store entry (``ResultStore.get``). Run it with
``PYTHONPATH`` pointing at an older checkout to compare (an older ``open_store`` checks no content). Files are in
the page cache (just written), as they are when a chapter opens the store another chapter used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _write_store(folder: Path, n: int, grid: int, dim: int) -> None:
    from qpmlib import embeddings

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    patches = np.lib.format.open_memmap(folder / embeddings.PATCH_FILE, mode="w+", dtype=np.float16,
                                        shape=(n, grid * grid, dim))
    for start in range(0, n, 256):
        stop = min(start + 256, n)
        patches[start:stop] = rng.standard_normal((stop - start, grid * grid, dim), dtype=np.float32)
    patches.flush()
    del patches
    np.save(folder / embeddings.CLS_FILE, rng.standard_normal((n, dim)).astype(np.float16))
    manifest = {"inputs": {"n_images": n, "grid": grid, "embed_dim": dim, "pretrained": False}, "complete": False}
    labels, ids = np.arange(n) % 25, np.arange(1, n + 1)
    if hasattr(embeddings, "_seal"):
        embeddings._seal(folder, manifest, labels, ids)
    else:  # an older qpmlib: no checksums
        np.save(folder / embeddings.LABELS_FILE, labels.astype(np.int64))
        np.save(folder / embeddings.IDS_FILE, ids.astype(np.int64))
        manifest["complete"] = True
        (folder / embeddings.MANIFEST_FILE).write_text(json.dumps(manifest))


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", action="store_true", help="a CUB-sized train store instead of the demo stores")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from qpmlib import embeddings, results

    has_checksums = hasattr(embeddings, "_seal")
    sizes = {"train": (5994, 16, 768)} if args.paper else {"train": (600, 16, 384), "test": (400, 16, 384)}
    print(f"qpmlib at {Path(embeddings.__file__).parent} ({'with' if has_checksums else 'without'} checksums)")
    with tempfile.TemporaryDirectory() as tmp:
        for split, (n, grid, dim) in sizes.items():
            folder = Path(tmp) / split
            _write_store(folder, n, grid, dim)
            mb = (folder / embeddings.PATCH_FILE).stat().st_size / 2**20
            warm = _median_ms(lambda: embeddings.open_store(folder), args.repeats)
            line = f"{split:5} store {n} x {grid * grid} x {dim} ({mb:.0f} MiB): open_store {warm:.2f} ms"
            if has_checksums:
                stamp = folder / embeddings.STAMP_FILE

                def first_open() -> None:
                    stamp.unlink(missing_ok=True)
                    embeddings.open_store(folder)

                line += f"; first open of a copy (hash all) {_median_ms(first_open, 3):.0f} ms"
            print(line)

        store = results.ResultStore(Path(tmp) / "results", "dense")
        width = 2048 if args.paper else 128
        state = {f"mlp.{i}.weight": torch.randn(width, width) for i in range(4)}
        data = results.ResultData({"accuracy": 0.5}, {"seed": 0}, tensors={results.MODEL_FILE: state,
                                  results.FEATURES_FILE: {"f": torch.randn(5994 if args.paper else 600, 64)}})
        entry = store.put({"seed": 0}, data)
        mb = sum(p.stat().st_size for p in entry.path.iterdir()) / 2**20
        warm = _median_ms(lambda: store.get({"seed": 0}), args.repeats)
        line = f"result entry ({mb:.1f} MiB): get {warm:.2f} ms"
        if has_checksums:
            def first_get() -> None:
                (entry.path / results._STAMP_FILE).unlink(missing_ok=True)
                store.get({"seed": 0})

            line += f"; first get of a copy (hash all) {_median_ms(first_get, 3):.1f} ms"
        print(line)


if __name__ == "__main__":
    main()
