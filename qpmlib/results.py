"""Content-addressed results store: compute once, show many times.

A result is identified by the SHA-256 of the canonical JSON of its full configuration (profile, dataset, backbone
and weights id, seed, every hyperparameter, and :data:`FORMAT_VERSION`). It lives in
``<root>/<kind>/<hash>/`` (``root`` is :func:`qpmlib.paths.results_dir` of the profile) with fixed file names:

* :data:`CONFIG_FILE` ``config.json``: the configuration that was hashed.
* :data:`METRICS_FILE` ``metrics.json``: numbers the chapters show.
* :data:`PROVENANCE_FILE` ``provenance.json``: seed, device, git commit, torch version, pretrained flag, timings.
* ``*.safetensors``: small tensors, e.g. :data:`MODEL_FILE` (a state dict), :data:`SPARSE_FILE` (selection,
  assignment, mean, std), :data:`SELECTION_FILE` (QP solution, A, R), :data:`FEATURES_FILE` (training features)
  and :data:`PREDICTIONS_FILE` (per-sample test predictions).
* extra JSON files, e.g. :data:`HISTORY_FILE` (per-epoch log) and :data:`MODEL_SPEC_FILE` (model arguments).

Writes are atomic: everything goes into a temporary folder beside the target, each file is flushed to disk
(``fsync``), :data:`CHECKSUMS_FILE` (size and SHA-256 of every other file) is written last, and the folder is then
renamed into place. A finished result is never overwritten; :meth:`ResultStore.work_dir` gives an unfinished run a
stable scratch folder for its resumable checkpoints, and :meth:`ResultStore.lock` lets two processes that want the
same result compute it once (the second waits, then finds it stored).

Reading checks before it trusts: :meth:`ResultStore.get` verifies every file against :data:`CHECKSUMS_FILE`
(hashes already checked are remembered with each file's size, inode, mtime and ctime, so an unchanged entry is
not read twice; see :func:`qpmlib.files.verify_checksums`) and that the stored configuration hashes to the folder
name. A damaged entry (truncated, edited, half-copied, or written without checksums by an older qpmlib) is
reported with one line naming the file and what is wrong, and treated as missing: the caller recomputes it and
:meth:`ResultStore.put` moves the damaged folder aside (``.damaged-<hash>-<id>``) before storing the new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from qpmlib import paths
from qpmlib.files import (
    TMP_PREFIX, IntegrityError, checksums, file_lock, fsync_dir, read_json_object, temp_path, verify_checksums,
)

__all__ = [
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "METRICS_FILE",
    "PROVENANCE_FILE",
    "MODEL_FILE",
    "SPARSE_FILE",
    "PREDICTIONS_FILE",
    "FEATURES_FILE",
    "HISTORY_FILE",
    "SELECTION_FILE",
    "MODEL_SPEC_FILE",
    "CHECKSUMS_FILE",
    "Result",
    "ResultData",
    "ResultStore",
    "canonical_json",
    "config_hash",
    "provenance",
    "slurm_job_id",
    "is_served",
]

#: Bumped whenever the meaning of stored results changes; part of every hash.
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
PROVENANCE_FILE = "provenance.json"
HISTORY_FILE = "history.json"
MODEL_FILE = "model.safetensors"
SPARSE_FILE = "sparse_head.safetensors"
PREDICTIONS_FILE = "predictions.safetensors"
FEATURES_FILE = "features.safetensors"
SELECTION_FILE = "selection.safetensors"
MODEL_SPEC_FILE = "model_spec.json"
#: Size and SHA-256 of every other file of a result; written last.
CHECKSUMS_FILE = "checksums.json"
_STAMP_FILE = ".verified.json"
_HASH_CHARS = 16
_WORK_PREFIX = ".work-"
_DAMAGED_PREFIX = ".damaged-"
_LOCKS = ".locks"

log = logging.getLogger(__name__)
_REPORTED: set[str] = set()  # damaged entries already reported by this process


def _plain(value: Any) -> Any:
    """Dataclasses, tuples, numpy scalars and paths -> JSON-ready builtins (NaN and inf -> None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; a missing value reads back as None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot put {type(value).__name__} into a result config; use dataclasses, dicts, lists, "
                    "numbers and strings")


def canonical_json(config: Any) -> str:
    """Canonical JSON of a config (dataclass or dict): sorted keys, no spaces, tuples as lists.

    Raises:
        TypeError: for values that have no JSON form (tensors, arbitrary objects).
    """
    return json.dumps(_plain(config), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: Any) -> str:
    """First 16 hex digits of the SHA-256 of ``{"format": FORMAT_VERSION, "config": config}`` (canonical JSON)."""
    payload = canonical_json({"format": FORMAT_VERSION, "config": config})
    return hashlib.sha256(payload.encode()).hexdigest()[:_HASH_CHARS]


def slurm_job_id() -> str | None:
    """The id of the Slurm job this process runs in, as ``squeue`` shows it (``"123_4"`` for an array task)."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")


def provenance(*, seed: int, device: str, pretrained: bool | None, **extra: Any) -> dict[str, Any]:
    """Where a result came from: seed, device, git commit, library versions, host, executor, plus ``extra``.

    ``executor`` is ``"slurm"`` with the job's ``slurm_job_id`` when this process runs inside a Slurm job, else
    ``"local"`` (and ``slurm_job_id`` None).

    Args:
        seed: the run seed.
        device: e.g. "cpu" or "cuda (NVIDIA H100)".
        pretrained: whether the backbone weights were pretrained (None when unknown).
        **extra: more JSON-ready fields.

    Returns:
        A JSON-ready dict.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    job = slurm_job_id()
    return _plain({
        "seed": seed,
        "device": device,
        "pretrained": pretrained,
        "git_commit": commit,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "executor": "local" if job is None else "slurm",
        "slurm_job_id": job,
        **extra,
    })


@dataclass
class ResultData:
    """What a computation hands to :meth:`ResultStore.put`.

    Attributes:
        metrics: JSON-ready numbers.
        provenance: JSON-ready provenance (see :func:`provenance`).
        tensors: file name (ending in ``.safetensors``) -> {name: tensor or array}.
        json_files: extra JSON files, file name -> JSON-ready object (e.g. :data:`HISTORY_FILE`).
    """

    metrics: dict[str, Any]
    provenance: dict[str, Any]
    tensors: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    json_files: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class Result:
    """A finished entry of the store (read-only view of its folder).

    Attributes:
        path: the result folder.
        config: the stored configuration.
        metrics: the stored metrics.
        provenance: the stored provenance.
        files: size and SHA-256 of each file, from :data:`CHECKSUMS_FILE`.
    """

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    files: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        """The configuration hash (the folder name)."""
        return self.path.name

    def _checked(self, file: str) -> Path:
        """The path of one of this result's files, verified against its checksum (cheap when unchanged)."""
        target = self.path / file
        if file not in self.files:
            have = sorted(p.name for p in self.path.iterdir() if not p.name.startswith("."))
            raise FileNotFoundError(f"result {self.path} has no {file}; it has {', '.join(have)}")
        verify_checksums(self.path, {file: self.files[file]}, stamp_file=_STAMP_FILE)
        return target

    def tensors(self, file: str) -> dict[str, torch.Tensor]:
        """Load one ``.safetensors`` file of this result onto the CPU.

        Raises:
            FileNotFoundError: when the result has no such file; lists the files it has.
            IntegrityError: when the file changed since it was stored or cannot be read (names the file).
        """
        target = self._checked(file)
        try:
            return load_file(target)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise IntegrityError(target, f"cannot be read as safetensors ({type(exc).__name__}: {exc})") from exc

    def json(self, file: str) -> Any:
        """Load one extra JSON file of this result.

        Raises:
            FileNotFoundError: when the result has no such file.
            IntegrityError: when the file changed since it was stored or is not valid JSON (names the file).
        """
        return _read_json(self._checked(file))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(path, f"is not valid JSON ({exc})") from exc


class ResultStore:
    """Results of one kind (e.g. "dense", "qp", "qpm") under one root folder.

    Args:
        root: the store root, normally :func:`qpmlib.paths.results_dir` of the profile.
        kind: sub-folder name for this kind of result (letters, digits, ``_`` and ``-``).

    Raises:
        ValueError: for an empty or path-like kind.
    """

    def __init__(self, root: str | Path, kind: str) -> None:
        if not kind or not all(c.isalnum() or c in "_-" for c in kind):
            raise ValueError(f"kind must be a simple name like 'dense' or 'qpm', got {kind!r}")
        self.root = Path(root)
        self.kind = kind

    @classmethod
    def for_profile(cls, profile: str, kind: str) -> "ResultStore":
        """The store of ``kind`` in :func:`qpmlib.paths.results_dir` of the profile name."""
        return cls(paths.results_dir(profile), kind)

    def path(self, config: Any) -> Path:
        """Folder of the finished result of ``config`` (it may not exist)."""
        return self.root / self.kind / config_hash(config)

    def work_dir(self, config: Any) -> Path:
        """Stable scratch folder (created) for an unfinished run of ``config``: resumable checkpoints go here."""
        folder = self.root / self.kind / f"{_WORK_PREFIX}{config_hash(config)}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @contextlib.contextmanager
    def lock(self, *configs: Any) -> Iterator[None]:
        """Hold the locks of these configurations (in a fixed order, so two callers never deadlock).

        Compute a missing result inside this block after a second :meth:`get`: a process that waited here then
        finds the result the first one stored, and does not compute it again.
        """
        keys = sorted({config_hash(c) for c in configs})
        with contextlib.ExitStack() as stack:
            for key in keys:
                stack.enter_context(file_lock(self.root / self.kind / _LOCKS / f"{key}.lock",
                                              what=f"the {self.kind} result {key}"))
            yield

    def get(self, config: Any) -> Result | None:
        """The finished result of ``config``, or None when it is missing or damaged.

        A damaged entry is reported with one warning that names the file and the problem; it is recomputed by the
        caller and replaced by :meth:`put`.
        """
        found, problem = self._find(config)
        if problem is not None and str(problem) not in _REPORTED:  # one line per damaged entry and process
            _REPORTED.add(str(problem))
            log.warning("result %s is damaged (%s); it will be recomputed", self.path(config), problem)
        return found

    def _find(self, config: Any) -> tuple[Result | None, IntegrityError | None]:
        """The intact result of ``config`` (or None) and, for a damaged one, what is wrong with it."""
        folder = self.path(config)
        if not folder.is_dir():
            return None, None
        try:
            return _open(folder), None
        except IntegrityError as exc:
            return None, exc

    def put(self, config: Any, data: ResultData) -> Result:
        """Write a finished result atomically; an existing intact result is kept, not overwritten.

        Args:
            config: the full configuration (dataclass or dict).
            data: metrics, provenance, tensors and extra JSON files.

        Returns:
            The stored :class:`Result` (the earlier one when it already existed).

        Raises:
            ValueError: for file names that would collide with the fixed ones or are not plain names.
        """
        for name in list(data.tensors) + list(data.json_files):
            if Path(name).name != name or name.startswith(".") or name in (CONFIG_FILE, METRICS_FILE,
                                                                           PROVENANCE_FILE, CHECKSUMS_FILE):
                raise ValueError(f"invalid extra file name {name!r}")
        for name in data.tensors:
            if not name.endswith(".safetensors"):
                raise ValueError(f"tensor files must end in .safetensors, got {name!r}")
        existing, _ = self._find(config)
        if existing is not None:
            return existing
        final = self.path(config)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(final)
        tmp.mkdir()
        try:
            files = {CONFIG_FILE: _plain(config), METRICS_FILE: _plain(data.metrics),
                     PROVENANCE_FILE: _plain(data.provenance)}
            files.update({k: _plain(v) for k, v in data.json_files.items()})
            for name, obj in files.items():
                _write_synced(tmp / name, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode())
            for name, tensors in data.tensors.items():
                save_file({k: _to_tensor(v) for k, v in tensors.items()}, str(tmp / name))
                _fsync_file(tmp / name)
            sums = checksums(tmp, sorted(files) + sorted(data.tensors), stamp_file=_STAMP_FILE)
            _write_synced(tmp / CHECKSUMS_FILE, json.dumps(sums, indent=1, sort_keys=True).encode())  # last
            fsync_dir(tmp)
            if final.exists():  # damaged (get() said so): set it aside, never delete what may be evidence
                with contextlib.suppress(FileNotFoundError):  # another writer moved it first
                    final.rename(final.parent / f"{_DAMAGED_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(tmp, final)
            except OSError:
                if self._find(config)[0] is None:  # not a lost race with an identical writer
                    raise
            fsync_dir(final.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.root / self.kind / f"{_WORK_PREFIX}{final.name}", ignore_errors=True)
        stored, problem = self._find(config)
        if stored is None:
            raise IntegrityError(final, f"was damaged right after it was written ({problem}); check the disk")
        return stored

    def get_or_run(self, config: Any, fn: Callable[[], ResultData]) -> Result:
        """The stored result of ``config``; when missing, ``fn()`` computes it and it is stored first.

        Two processes asking for the same missing result compute it once: the second waits for the first.
        """
        found = self.get(config)
        if found is not None:
            return found
        with self.lock(config):
            found, _ = self._find(config)
            return found if found is not None else self.put(config, fn())

    def keys(self) -> list[str]:
        """Hashes of all finished results of this kind."""
        folder = self.root / self.kind
        if not folder.exists():
            return []
        return sorted(p.name for p in folder.iterdir()
                      if not p.name.startswith(".") and (p / CHECKSUMS_FILE).exists())


def is_served(folder: str | Path) -> bool:
    """Whether ``folder`` is a finished result that :meth:`ResultStore.get` would serve (files match their checksums,
    the configuration hashes to the folder name); cheap for an entry already verified (see :mod:`qpmlib.files`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    try:
        _open(folder)
    except IntegrityError:
        return False
    return True


def _open(folder: Path) -> Result:
    """Read and verify a finished result folder.

    Raises:
        IntegrityError: naming the file that is missing, malformed or changed.
    """
    try:
        sums = read_json_object(folder / CHECKSUMS_FILE)
    except FileNotFoundError:
        raise IntegrityError(folder / CHECKSUMS_FILE, "is missing (an unfinished copy, or written by an older "
                                                      "qpmlib)") from None
    for name in (CONFIG_FILE, METRICS_FILE, PROVENANCE_FILE):
        if name not in sums:
            raise IntegrityError(folder / CHECKSUMS_FILE, f"does not cover {name}")
    verify_checksums(folder, sums, stamp_file=_STAMP_FILE)
    config = _read_json(folder / CONFIG_FILE)
    try:
        key = config_hash(config)
    except (TypeError, ValueError) as exc:
        raise IntegrityError(folder / CONFIG_FILE, f"holds no valid configuration ({exc})") from exc
    if key != folder.name:
        raise IntegrityError(folder / CONFIG_FILE, f"hashes to {key}, not to its folder name")
    return Result(folder, config, _read_json(folder / METRICS_FILE), _read_json(folder / PROVENANCE_FILE), sums)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _to_tensor(value: Any) -> torch.Tensor:
    t = value.detach().cpu() if torch.is_tensor(value) else torch.from_numpy(np.array(value))  # a writable copy
    return t.contiguous()
