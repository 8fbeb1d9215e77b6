"""Safe writes for entries that jobs on several machines may produce: atomic publishing, locks, checksums.

The rules the executor (:mod:`qpmlib.runs.executor`) and the archive (:mod:`qpmlib.runs.archive`) rely on:

* **Atomic publishing.** An entry (a file or a folder) is written under a hidden temporary name beside its final
  name, flushed to disk (``fsync``), then moved into place with one ``rename``. A reader sees the finished entry or
  nothing, never half of one, so a job killed halfway leaves nothing that looks complete. :func:`publish` never
  replaces an existing entry: when two writers race, the first one wins and the second one's copy is dropped.
* **Locks.** :func:`file_lock` holds an exclusive ``flock`` while one process computes an entry; a second process
  waits, then finds the entry. The kernel drops the lock when its holder dies (even by ``kill -9``), so a killed
  job never leaves a stale lock. ``flock`` works between the processes of one machine and on network file systems
  that support it; where it does not, two jobs may compute an entry twice, never corrupt it (publishing is atomic).
* **Checksums.** :func:`file_sha256` hashes a file in 1 MiB chunks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["TMP_PREFIX", "file_lock", "fsync_dir", "fsync_tree", "atomic_write", "temp_path", "publish", "file_sha256"]

#: Prefix of temporary names; listings of stores skip names that start with a dot.
TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folder) while the block runs.

    Args:
        path: the lock file. It stays in place afterwards: removing a lock file that another process may be
            waiting on would let a third process lock a new file at the same time.

    Yields:
        None, while the lock is held; a second process entering the block waits until the first leaves or dies.
    """
    import fcntl  # POSIX only; imported here so that the module imports everywhere

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's own entries (names created or renamed in it) to disk; silent where that is impossible."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """Flush a file, or every file and folder under a folder, to disk (before it is published by a rename)."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        return
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(folder)


def temp_path(final: str | Path) -> Path:
    """A hidden temporary name beside ``final`` that no other process or thread uses."""
    final = Path(final)
    return final.with_name(f"{TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], Any]) -> None:
    """Write a file atomically: a temporary file, ``fsync``, rename over ``path``, ``fsync`` of the folder.

    Unlike :func:`publish`, this replaces an existing file (for small bookkeeping files that are updated).

    Args:
        path: the target file.
        data: bytes, text (written as UTF-8), or a function that writes into the open binary file.

    Raises:
        OSError: when the folder cannot be written; the temporary file is removed.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def publish(tmp: str | Path, final: str | Path) -> bool:
    """Move a finished temporary file or folder to its final name, unless an entry is already there.

    The temporary copy is flushed to disk first, then moved with one ``rename`` (folders) or ``link`` (files), so
    ``final`` appears complete or not at all. An existing ``final`` is never replaced.

    Args:
        tmp: the finished temporary file or folder, on the same file system as ``final`` (e.g. :func:`temp_path`).
        final: the entry's name; its parent folder is created.

    Returns:
        True when ``tmp`` became ``final``; False when ``final`` already existed (``tmp`` is then removed).

    Raises:
        OSError: for other failures (``tmp`` is left for the caller to clean up).
    """
    tmp, final = Path(tmp), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fsync_tree(tmp)
    if tmp.is_dir():
        if final.exists():
            won = False
        else:
            try:
                os.rename(tmp, final)  # fails when final is a folder that is not empty: a writer got there first
                won = True
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                won = False
    else:
        try:
            os.link(tmp, final)  # unlike rename, link never replaces an existing file
            won = True
        except FileExistsError:
            won = False
        except OSError as exc:  # a file system without hard links: a check then a rename (a tiny race window)
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            won = not final.exists()
            if won:
                os.rename(tmp, final)
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
    fsync_dir(final.parent)
    return won


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
