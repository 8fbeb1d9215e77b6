"""Embedding cache: frozen-backbone tokens computed once, stored fp16, memory-mapped, fingerprinted.

The reference code writes two ``torch.save`` files per image and trusts any file that exists
(reference_spec §4.4 "Storage", §9 "Staleness"). Here one store is one folder per
(dataset root, split, backbone, weights, image size, normalisation) that holds

* ``patch_tokens.npy``: fp16 (N, P, D), the last block's normed patch tokens, registers dropped (§4.4);
* ``cls.npy``: fp16 (N, D), the normed CLS token;
* ``labels.npy``, ``image_ids.npy``: int64 (N,), rows sorted by image id;
* ``manifest.json``: the fingerprint of every input (image list with each file's size and SHA-256, backbone,
  weights id, image size, normalisation, dataset, format version) plus provenance (pretrained flag, created,
  torch version), the size and SHA-256 of each array file, and a ``complete`` flag; the finished manifest is the
  last thing written, by an atomic rename;
* ``progress.json`` while an extraction runs: rows written so far, committed after each batch is flushed;
* ``.verified.json``: hashes already checked, with each file's size, inode, mtime and ctime (see
  :func:`qpmlib.files.verify_checksums`), so that opening an unchanged store reads no array;
* ``.lock``: held while a process extracts the store; a second process asking for it waits, then uses it;
* ``.image_hashes.json``: the images' SHA-256 with each file's size, inode, mtime and ctime, so that an image is
  read again only when it changed (:func:`qpmlib.files.cached_sha256`).

A store whose fingerprint differs from its inputs is rebuilt, with a message naming what changed; a store that is
damaged (a manifest that is not a JSON object, an array file that is truncated, empty or edited, a missing
checksum) is rebuilt with one line saying what was wrong and where; it is never served. An interrupted
extraction resumes at the last committed batch. Reads use ``np.load(mmap_mode="r")``, so a batch read from a
store touches only that batch's pages. An image edited in place or replaced, even by one of the same size, changes
the fingerprint: its ctime moves, so it is hashed again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import data, paths
from .backbones import FrozenBackbone, build_backbone, weights_id
from .config import get_profile
from .data.images import NORMALISATIONS, load_image
from .files import (
    IntegrityError,
    atomic_write,
    atomic_write_json,
    cached_sha256,
    checksums,
    file_lock,
    read_json_object,
    verify_checksums,
)
from .meter import Meter

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "PATCH_FILE",
    "CLS_FILE",
    "LABELS_FILE",
    "IDS_FILE",
    "MANIFEST_FILE",
    "PROGRESS_FILE",
    "EmbeddingStore",
    "open_store",
    "store_dir",
    "extract",
    "get_store",
    "store_path",
    "stored_inputs",
    "relocate",
]

log = logging.getLogger(__name__)

#: 2: image contents (SHA-256) in the fingerprint, checksums of the arrays in the manifest.
FORMAT_VERSION = 2
SPLITS = ("train", "test")
PATCH_FILE = "patch_tokens.npy"
CLS_FILE = "cls.npy"
LABELS_FILE = "labels.npy"
IDS_FILE = "image_ids.npy"
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"
STAMP_FILE = ".verified.json"
IMAGE_STAMP_FILE = ".image_hashes.json"
LOCK_FILE = ".lock"
_DATA_FILES = (PATCH_FILE, CLS_FILE, LABELS_FILE, IDS_FILE)


@dataclass(frozen=True, eq=False)
class EmbeddingStore:
    """A complete embedding store, memory-mapped read-only.

    Attributes:
        path: the store's folder.
        patch_tokens: fp16 memmap (N, P, D).
        cls: fp16 memmap (N, D).
        labels: int64 (N,), 0-based class labels.
        image_ids: int64 (N,), dataset image ids (ascending).
        manifest: the parsed ``manifest.json``.
    """

    path: Path
    patch_tokens: np.ndarray
    cls: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray
    manifest: dict

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def grid(self) -> int:
        """Patches per side (16 for 224 px at patch 14)."""
        return int(self.manifest["inputs"]["grid"])

    @property
    def pretrained(self) -> bool:
        """Whether the backbone weights were pretrained (``False``: random weights)."""
        return bool(self.manifest["inputs"]["pretrained"])


def open_store(path: str | Path) -> EmbeddingStore:
    """Open a complete store read-only (memory-mapped), after checking it against its manifest.

    Each array file must have the size and SHA-256 recorded when the store was finished; a file whose size,
    inode, mtime and ctime are those of its last check is not read again (:func:`qpmlib.files.verify_checksums`).

    Args:
        path: the store's folder.

    Returns:
        The :class:`EmbeddingStore`.

    Raises:
        ValueError: when the store has no manifest, is not marked complete, has no checksums, or a file is
            missing, truncated, edited or not the shape the manifest promises; the message names the file
            (re-run :func:`extract` to rebuild it).
    """
    path = Path(path)
    try:
        manifest = read_json_object(path / MANIFEST_FILE)
    except FileNotFoundError:
        raise ValueError(f"{path} is not a complete embedding store (no {MANIFEST_FILE}); run "
                         "qpmlib.embeddings.extract to (re)build it") from None
    if manifest.get("complete") is not True:
        raise ValueError(f"{path} is not a complete embedding store; run qpmlib.embeddings.extract to (re)build it")
    inp, sums = manifest.get("inputs"), manifest.get("checksums")
    if not isinstance(inp, dict) or not all(isinstance(inp.get(k), int) for k in ("n_images", "grid", "embed_dim")):
        raise IntegrityError(path / MANIFEST_FILE, "has no valid 'inputs' (n_images, grid, embed_dim)")
    if not isinstance(sums, dict) or set(sums) != set(_DATA_FILES):
        raise IntegrityError(path / MANIFEST_FILE, "records no checksums of the array files (written by an older "
                                                  "qpmlib or damaged)")
    verify_checksums(path, sums, stamp_file=STAMP_FILE)
    n, p, d = inp["n_images"], inp["grid"] ** 2, inp["embed_dim"]
    expected = {PATCH_FILE: ((n, p, d), np.float16), CLS_FILE: ((n, d), np.float16),
                LABELS_FILE: ((n,), np.int64), IDS_FILE: ((n,), np.int64)}
    arrays = {}
    for name, (shape, dtype) in expected.items():
        try:
            arr = np.load(path / name, mmap_mode="r")
        except Exception as exc:  # noqa: BLE001 - EOFError, ValueError, OSError...: the file is not an array
            raise IntegrityError(path / name, f"cannot be read as an array ({type(exc).__name__}: {exc})") from exc
        if arr.shape != shape or arr.dtype != dtype:
            raise IntegrityError(path / name, f"holds {arr.dtype} {arr.shape}, the manifest expects "
                                              f"{np.dtype(dtype)} {shape}")
        arrays[name] = arr
    return EmbeddingStore(path, arrays[PATCH_FILE], arrays[CLS_FILE], arrays[LABELS_FILE], arrays[IDS_FILE], manifest)


def store_dir(
    root: str | Path,
    split: str,
    backbone: FrozenBackbone,
    *,
    dataset: str,
    normalisation: str = "reference",
    out_dir: str | Path | None = None,
) -> Path:
    """The folder of the store for these inputs: ``<out_dir>/<dataset>_<split>_<backbone>_<S>px_<norm>_<key>``.

    ``key`` hashes the resolved dataset root and the backbone's ``weights_id``; ``out_dir`` defaults to
    ``qpmlib.paths.cache_dir()``.
    """
    return _folder(root, split, dataset, backbone.name, backbone.image_size, backbone.weights_id, normalisation,
                   out_dir)


def _folder(root, split, dataset, name, image_size, weights_id, normalisation, out_dir=None) -> Path:
    key = hashlib.sha256(f"{Path(root).resolve()}|{weights_id}".encode()).hexdigest()[:10]
    folder = f"{dataset}_{split}_{name}_{image_size}px_{normalisation}_{key}"
    return Path(out_dir if out_dir is not None else paths.cache_dir()) / folder


class _ImageRows(torch.utils.data.Dataset):
    """Decodes one image per row; a failure becomes an error string so the main process can name the path."""

    def __init__(self, files: list[str], image_size: int, dataset: str, normalisation: str) -> None:
        self.files, self.image_size, self.dataset, self.normalisation = files, image_size, dataset, normalisation

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        try:
            x = load_image(self.files[i], self.image_size, dataset=self.dataset, normalisation=self.normalisation)
            return i, x, ""
        except Exception as exc:  # reported by path in the main process, which stops the extraction
            return i, torch.zeros(3, self.image_size, self.image_size), f"{self.files[i]}: {exc}"


def extract(
    index_df: pd.DataFrame,
    root: str | Path,
    split: str,
    backbone: FrozenBackbone,
    *,
    image_size: int,
    dataset: str,
    normalisation: str = "reference",
    out_dir: str | Path | None = None,
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int | None = None,
    verbose: bool = True,
) -> EmbeddingStore:
    """Embed one split with a frozen backbone, or return its up-to-date cached store (reference_spec §4.4).

    Images are read with ``qpmlib.data.images.load_image`` (the reference preprocessing), decoded by DataLoader
    workers and embedded in batches (fp16 autocast on CUDA; fp32 with every core on the CPU). Each batch is
    flushed to disk and then committed to ``progress.json``, so an interrupted run resumes where it stopped.

    Args:
        index_df: the dataset index, columns ``image_id``, ``path`` (absolute, or relative to ``root``),
            ``label`` (0-based) and, optionally, ``is_train``; when present, rows are filtered to ``split``.
        root: dataset root folder.
        split: ``"train"`` or ``"test"``.
        backbone: a :class:`~qpmlib.backbones.FrozenBackbone` built for ``image_size``.
        image_size: input side in pixels (must equal ``backbone.image_size``).
        dataset: dataset name for the normalisation statistics (``qpmlib.data.images.DATASET_STATS``).
        normalisation: ``"reference"`` or ``"imagenet"`` (reference_spec §10 row 1).
        out_dir: folder under which the store's own folder is made (default ``qpmlib.paths.cache_dir()``).
        batch_size: images per forward pass.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        num_workers: decoding processes (default: none for a single batch, else ``min(8, cpu count)``).
        verbose: show a progress bar and status lines.

    Returns:
        The complete :class:`EmbeddingStore` (rows sorted by ``image_id``).

    Raises:
        ValueError: bad arguments, missing columns, an empty split, or ``image_size`` not the backbone's.
        FileNotFoundError: an image in the index does not exist (named).
        OSError: images that cannot be decoded, named by path (the store stays incomplete).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalisation!r}; valid: {', '.join(NORMALISATIONS)}")
    if image_size != backbone.image_size:
        raise ValueError(
            f"image_size {image_size} differs from the backbone's {backbone.image_size}; "
            f"build the backbone with image_size={image_size}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    missing = {"image_id", "path", "label"} - set(index_df.columns)
    if missing:
        raise ValueError(f"index_df lacks columns {sorted(missing)}; expected image_id, path, label[, is_train]")
    rows = index_df
    if "is_train" in rows.columns:
        rows = rows[rows["is_train"].astype(bool) == (split == "train")]
    rows = rows.sort_values("image_id", kind="stable").reset_index(drop=True)
    if len(rows) == 0:
        raise ValueError(f"the index has no {split} images")

    root = Path(root)
    folder = store_dir(root, split, backbone, dataset=dataset, normalisation=normalisation, out_dir=out_dir)
    files, manifest = _fingerprint(rows, root, split, backbone, dataset, normalisation,
                                   stamp=folder / IMAGE_STAMP_FILE)
    inputs = manifest["inputs"]
    say = print if verbose else (lambda *a, **k: None)

    store = _current(folder, manifest, quiet=True)  # the common case: no lock, no rebuild
    if store is None:
        with file_lock(folder / LOCK_FILE, what=f"the embedding store {folder}"):
            store = _current(folder, manifest, quiet=False)  # another process may have finished it meanwhile
            if store is None:
                _build(folder, manifest, rows, files, backbone, say, image_size=image_size, dataset=dataset,
                       normalisation=normalisation, batch_size=batch_size, device=device,
                       num_workers=num_workers, verbose=verbose)
                say(f"embedding store written: {folder}")
                return open_store(folder)
    say(f"embedding store up to date: {folder}")
    return store


def _current(folder: Path, manifest: dict, *, quiet: bool) -> EmbeddingStore | None:
    """The complete, intact store in ``folder`` for the inputs of ``manifest``, or None.

    With ``quiet=False`` (the caller holds the lock) a stale or damaged store is cleared, with one line that
    says what was wrong and where; a partial extraction of the same inputs is left to resume.
    """
    inputs = manifest["inputs"]
    try:
        old = read_json_object(folder / MANIFEST_FILE)
    except FileNotFoundError:
        return None
    except IntegrityError as exc:
        problem = str(exc)
    else:
        if old.get("inputs") != inputs:
            if not quiet:
                log.warning("embedding store %s is stale (%s): rebuilding it", folder,
                            _describe_changes(old, inputs, manifest["images"]))
                _clear(folder)
            return None
        if old.get("complete") is not True:
            return None  # a partial extraction of these inputs: resumed by _build
        try:
            return open_store(folder)
        except ValueError as exc:
            problem = str(exc)
    if not quiet:
        log.warning("embedding store %s is damaged (%s): rebuilding it", folder, problem)
        _clear(folder)
    return None


def _build(folder, manifest, rows, files, backbone, say, *, image_size, dataset, normalisation, batch_size, device,
           num_workers, verbose) -> None:
    """Extract (or resume) the store in ``folder`` and seal it: checksums, then the complete manifest, last."""
    inputs = manifest["inputs"]
    n, p, d = inputs["n_images"], inputs["grid"] ** 2, inputs["embed_dim"]
    start, arrays = _resume(folder, inputs, (n, p, d))
    if arrays is None:
        start, arrays = 0, _start_fresh(folder, manifest, (n, p, d))
    else:
        say(f"resuming extraction of {folder.name} at row {start} of {n}")
    patch_mm, cls_mm = arrays
    if start < n:
        with Meter(device=_resolve_device(device)) as meter:
            _embed_rows(backbone, files, start, patch_mm, cls_mm, folder, inputs,
                        image_size=image_size, dataset=dataset, normalisation=normalisation, batch_size=batch_size,
                        device=device, num_workers=num_workers, verbose=verbose)
        # what this process embedded (a resumed run: the rows after `start`), for the book's compute table
        manifest["extraction"] = {"rows": n - start, "device": str(_resolve_device(device)), **meter.figures()}
    patch_mm.flush()
    cls_mm.flush()
    del patch_mm, cls_mm
    _seal(folder, manifest, rows["label"].to_numpy(np.int64), rows["image_id"].to_numpy(np.int64))


def _seal(folder: Path, manifest: dict, labels: np.ndarray, image_ids: np.ndarray) -> None:
    """Finish a store whose token files are written: labels and ids, checksums, then the complete manifest."""
    for name, values in ((LABELS_FILE, labels), (IDS_FILE, image_ids)):
        atomic_write(folder / name, lambda fh, a=np.asarray(values, np.int64): np.save(fh, a))
    for name in (PATCH_FILE, CLS_FILE):
        with open(folder / name, "rb+") as fh:
            os.fsync(fh.fileno())
    manifest["checksums"] = checksums(folder, _DATA_FILES, stamp_file=STAMP_FILE)
    manifest["complete"] = True
    manifest["completed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(folder / MANIFEST_FILE, manifest)  # the complete flag and the checksums are written last
    (folder / PROGRESS_FILE).unlink(missing_ok=True)


def _embed_rows(backbone, files, start, patch_mm, cls_mm, folder, inputs, *, image_size, dataset, normalisation,
                batch_size, device, num_workers, verbose) -> None:
    """Embed rows ``start:`` batch by batch, flushing and committing progress after each batch."""
    dev = _resolve_device(device)
    todo = files[start:]
    if num_workers is None:
        num_workers = 0 if len(todo) <= batch_size else min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        _ImageRows(todo, image_size, dataset, normalisation),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    home_device = next(backbone.parameters()).device
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count() or threads)
    backbone.to(dev)
    done = start
    try:
        bar = tqdm(total=len(files), initial=start, unit="img", desc=f"embed {inputs['split']}", disable=not verbose)
        with bar:
            for idx, images, errors in loader:
                bad = [e for e in errors if e]
                if bad:
                    raise OSError(
                        f"{len(bad)} image(s) cannot be decoded: " + "; ".join(bad)
                        + f". Extraction stopped after {done} of {len(files)} rows; fix or remove these images "
                        "and run again."
                    )
                with torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"):
                    cls, patches = backbone(images.to(dev, non_blocking=True))  # (B, D), (B, P, D)
                end = done + len(idx)
                patch_mm[done:end] = patches.float().cpu().numpy().astype(np.float16)
                cls_mm[done:end] = cls.float().cpu().numpy().astype(np.float16)
                patch_mm.flush()
                cls_mm.flush()
                done = end
                atomic_write_json(folder / PROGRESS_FILE, {"inputs_sha256": _sha(inputs), "rows_done": done})
                bar.update(len(idx))
    finally:
        backbone.to(home_device)
        torch.set_num_threads(threads)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _fingerprint(rows, root, split, backbone, dataset, normalisation, *, stamp: Path) -> tuple[list[str], dict]:
    """Absolute image paths and the manifest (complete=False) describing every input, image contents included.

    ``stamp`` remembers the images' hashes (:func:`qpmlib.files.cached_sha256`), so only changed images are read.
    """
    files, images = [], []
    resolved_root = root.resolve()
    for image_id, rel, label in zip(rows["image_id"], rows["path"], rows["label"]):
        f = Path(rel) if Path(rel).is_absolute() else root / rel
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"image {f} (image_id {image_id}) listed in the index does not exist") from None
        resolved = f.resolve()
        files.append(str(f))
        try:
            shown = str(resolved.relative_to(resolved_root))
        except ValueError:
            shown = str(resolved)
        images.append([int(image_id), shown, int(label), int(size)])
    for entry, digest in zip(images, cached_sha256([str(Path(f).resolve()) for f in files], stamp)):
        entry.append(digest[:32])
    inputs = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "split": split,
        "root": str(resolved_root),
        "n_images": len(images),
        "images_sha256": hashlib.sha256(json.dumps(images).encode()).hexdigest(),
        "backbone": backbone.name,
        "weights_id": backbone.weights_id,
        "pretrained": bool(backbone.pretrained),
        "image_size": int(backbone.image_size),
        "grid": int(backbone.grid),
        "embed_dim": int(backbone.embed_dim),
        "normalisation": normalisation,
    }
    manifest = {
        "inputs": inputs,
        "complete": False,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "weights_source": backbone.source,
        "dtype": "float16",
        "files": {"patch_tokens": PATCH_FILE, "cls": CLS_FILE, "labels": LABELS_FILE, "image_ids": IDS_FILE},
        "images": images,  # [image_id, path relative to root, label, file size in bytes, SHA-256 (32 hex)]
    }
    return files, manifest


def _describe_changes(old: dict, inputs: dict, images: list | None = None) -> str:
    """A short human-readable list of what differs between an old manifest and the new ``inputs``."""
    a = old.get("inputs") if isinstance(old.get("inputs"), dict) else {}
    if not a:
        return "its manifest has no valid 'inputs'"
    changes = [f"{k}: {a.get(k)!r} -> {inputs.get(k)!r}" for k in inputs if k not in ("images_sha256", "n_images")
               and a.get(k) != inputs.get(k)]
    if a.get("images_sha256") != inputs["images_sha256"]:
        text = "image list changed"
        try:
            before = {r[0]: r for r in old.get("images", [])}
            after = {r[0]: r for r in (images or [])}
            changed = [after[i][1] for i in after if i in before and before[i] != after[i]]
            added, removed = len(after.keys() - before.keys()), len(before.keys() - after.keys())
            text = f"image list: {len(changed)} changed, {added} added, {removed} removed"
            if changed:
                text += " (e.g. " + ", ".join(changed[:3]) + ")"
        except (TypeError, KeyError, IndexError):  # an old manifest with a malformed image list
            pass
        changes.append(text)
    return "; ".join(changes) or "unknown change"


def _resume(folder: Path, inputs: dict, shape: tuple[int, int, int]):
    """``(rows_done, (patch_mm, cls_mm))`` opened read-write when ``folder`` holds a matching partial run."""
    try:
        progress = read_json_object(folder / PROGRESS_FILE)
    except (FileNotFoundError, IntegrityError):
        return 0, None
    done = progress.get("rows_done")
    if progress.get("inputs_sha256") != _sha(inputs) or not isinstance(done, int) or not 0 <= done <= shape[0]:
        return 0, None
    try:
        patch_mm = np.load(folder / PATCH_FILE, mmap_mode="r+")
        cls_mm = np.load(folder / CLS_FILE, mmap_mode="r+")
    except Exception:  # noqa: BLE001 - a damaged partial file: start over
        return 0, None
    n, p, d = shape
    if patch_mm.shape != (n, p, d) or cls_mm.shape != (n, d) or patch_mm.dtype != np.float16 \
            or cls_mm.dtype != np.float16:
        return 0, None
    return done, (patch_mm, cls_mm)


def _start_fresh(folder: Path, manifest: dict, shape: tuple[int, int, int]):
    n, p, d = shape
    _clear(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / MANIFEST_FILE, manifest)  # complete: False
    patch_mm = np.lib.format.open_memmap(folder / PATCH_FILE, mode="w+", dtype=np.float16, shape=(n, p, d))
    cls_mm = np.lib.format.open_memmap(folder / CLS_FILE, mode="w+", dtype=np.float16, shape=(n, d))
    atomic_write_json(folder / PROGRESS_FILE, {"inputs_sha256": _sha(manifest["inputs"]), "rows_done": 0})
    return patch_mm, cls_mm


def _clear(folder: Path) -> None:
    """Remove the store's own files (and nothing else; the lock stays) from ``folder``."""
    for name in (*_DATA_FILES, MANIFEST_FILE, PROGRESS_FILE, STAMP_FILE):
        (folder / name).unlink(missing_ok=True)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _profile_backbone(name: str, weights: str, image_size: int) -> FrozenBackbone:
    """The backbone a profile extracts with, built once per process for each checkpoint (the weights' id is part
    of the key, so a rebuilt or replaced weights file is never served from the cache)."""
    return _built_backbone(name, weights, image_size, weights_id(name, weights))


@functools.lru_cache(maxsize=2)
def _built_backbone(name: str, weights: str, image_size: int, wid: str) -> FrozenBackbone:
    return build_backbone(name, weights=weights, image_size=image_size)


def get_store(profile, split: str, *, verbose: bool = True) -> EmbeddingStore:
    """The (cached) embedding store of a profile's dataset split, extracting it on first use.

    Args:
        profile: a :class:`qpmlib.config.Profile` or its name.
        split: ``"train"`` or ``"test"``.
        verbose: show progress.

    Returns:
        The complete :class:`EmbeddingStore`; ``store.pretrained`` says whether the backbone was pretrained.

    Raises:
        ValueError: unknown profile or split.
    """
    profile = get_profile(profile)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    root = data.prepare(profile.data)
    index = data.read_index(root, profile.data.dataset)
    backbone = _profile_backbone(profile.backbone.name, str(profile.backbone.weights), profile.data.image_size)
    return extract(
        index,
        root,
        split,
        backbone,
        image_size=profile.data.image_size,
        dataset=profile.data.dataset,
        normalisation=profile.data.normalisation,
        batch_size=profile.backbone.batch_size,
        device=profile.train.device,
        verbose=verbose,
    )


def store_path(profile, split: str) -> Path:
    """The folder of the store :func:`get_store` uses for a profile's split, found without extracting anything.

    Nothing is generated, built or read except, once per checkpoint, the backbone's weights (for their id, see
    :func:`qpmlib.backbones.weights_id`); the folder may not exist yet.

    Raises:
        ValueError: unknown profile, split, dataset or backbone.
    """
    prof = get_profile(profile)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    wid = weights_id(prof.backbone.name, prof.backbone.weights)
    return _folder(data.dataset_root(prof.data), split, prof.data.dataset, prof.backbone.name, prof.data.image_size,
                   wid, prof.data.normalisation)


def stored_inputs(profile, split: str) -> dict | None:
    """The ``inputs`` of the complete store at :func:`store_path`, read from its manifest (None when there is none).

    The arrays are not checked here (:func:`open_store` does that) and neither are the images: a store whose images
    changed since is found stale, and rebuilt, by :func:`get_store`.
    """
    try:
        manifest = read_json_object(store_path(profile, split) / MANIFEST_FILE)
    except (FileNotFoundError, IntegrityError):
        return None
    inputs = manifest.get("inputs")
    return inputs if manifest.get("complete") is True and isinstance(inputs, dict) else None


def relocate(folder: str | Path, profile, split: str) -> Path:
    """Move a complete store made on another machine (e.g. unpacked from an archive) to where this machine looks.

    A store's folder name and manifest name the dataset folder it was extracted from, so a store copied from a
    machine whose dataset lives elsewhere is not found here. This renames it to :func:`store_path` and records this
    machine's dataset folder in its manifest; whether the images are the same is checked, as for every store, when
    it is opened (:func:`get_store` finds a store with other images stale and rebuilds it).

    Args:
        folder: the complete store.
        profile: the profile (with its overrides) whose ``split`` the store holds.
        split: ``"train"`` or ``"test"``.

    Returns:
        The store's folder now (``folder`` itself when it already is where this machine looks).

    Raises:
        ValueError: when ``folder`` is not a complete store, or holds another split, dataset or backbone than the
            profile's, or when a different complete store is already at the target.
    """
    folder = Path(folder)
    store = open_store(folder)
    inputs = dict(store.manifest["inputs"])
    prof = get_profile(profile)
    wanted = {"split": split, "dataset": prof.data.dataset, "backbone": prof.backbone.name,
              "image_size": prof.data.image_size, "normalisation": prof.data.normalisation}
    differ = {k: (inputs.get(k), v) for k, v in wanted.items() if inputs.get(k) != v}
    if differ:
        raise ValueError(f"{folder} holds another store than the profile's {split} split: "
                         + ", ".join(f"{k} {a!r} (wanted {b!r})" for k, (a, b) in differ.items()))
    root = data.dataset_root(prof.data).resolve()
    target = _folder(root, split, prof.data.dataset, prof.backbone.name, prof.data.image_size, inputs["weights_id"],
                     prof.data.normalisation, folder.parent)
    if target == folder:
        return folder
    if target.exists():
        if (target / MANIFEST_FILE).is_file() and read_json_object(target / MANIFEST_FILE).get("inputs") == \
                {**inputs, "root": str(root)}:
            return target  # the same store is already here
        raise ValueError(f"{target} already exists; move it away to install {folder} there")
    manifest = dict(store.manifest)
    manifest["inputs"] = {**inputs, "root": str(root)}
    atomic_write_json(folder / MANIFEST_FILE, manifest)  # the arrays, and so their checksums, are unchanged
    (folder / STAMP_FILE).unlink(missing_ok=True)
    os.rename(folder, target)
    return target
