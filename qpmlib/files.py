"""Safe files: locks between processes, atomic writes, and content checksums that are cheap to re-check.

Used by the embedding cache (:mod:`qpmlib.embeddings`), the results store (:mod:`qpmlib.results`) and training
checkpoints (:mod:`qpmlib.train`). The rules:

* **Locks.** :func:`file_lock` holds an exclusive ``flock`` on a lock file while one process computes something;
  another process asking for the same thing waits (with one line saying which process it waits for) and then
  finds the finished result. The kernel drops the lock when its process dies, even by ``kill -9``, so a crash
  never leaves a stale lock behind. (``flock`` works between processes of one machine; on network file systems
  that do not support it, two machines may still compute the same thing twice, never corrupt it: every write
  below is atomic.)
* **Atomic writes.** :func:`atomic_write` writes to a temporary file with a name no other process uses, flushes
  it to disk (``fsync``), renames it over the target and syncs the folder, so a reader sees the old file or the
  new one, never half of one, even after a power cut.
* **Checksums.** :func:`checksums` records the size and SHA-256 of files; :func:`verify_checksums` checks them.
  Re-hashing large arrays on every open would cost a full read, so a verified hash is remembered in a small
  stamp file beside the data, together with the file's size, inode, modification and change times. A file is
  hashed again only when one of these changes; the change time (``ctime``) cannot be set back by a user, so an
  edit that keeps the size and restores the modification time is still seen.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "IntegrityError",
    "file_lock",
    "atomic_write",
    "atomic_write_json",
    "TMP_PREFIX",
    "temp_path",
    "publish",
    "fsync_dir",
    "fsync_tree",
    "file_sha256",
    "cached_sha256",
    "checksums",
    "verify_checksums",
    "read_json_object",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
#: Prefix of temporary names; listings of stores skip names that start with a dot.
TMP_PREFIX = ".tmp-"


class IntegrityError(ValueError):
    """A file is missing, truncated, unreadable or does not match its recorded checksum.

    Attributes:
        path: the file (or folder) concerned.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# ---------------------------------------------------------------------------------------------- locks
@contextlib.contextmanager
def file_lock(path: str | Path, *, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder) between processes.

    Args:
        path: the lock file; it is left in place afterwards (removing lock files is racy).
        what: what the lock protects, for the waiting message (e.g. "embedding store <folder>").

    Yields:
        None, while the lock is held. A second process waits until the first leaves the block or dies.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            log.warning("waiting for %s, which is computing %s (lock %s)", holder, what or path.parent, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- atomic writes
def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
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
    """Write ``data`` to ``path`` atomically: unique temporary file, fsync, rename, fsync of the folder.

    Args:
        path: the target file.
        data: bytes, text (UTF-8), or a function that writes into the open binary file (e.g. ``torch.save``).

    Raises:
        OSError: when the folder cannot be written (the temporary file is removed).
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


def atomic_write_json(path: str | Path, obj: Any, **dump_kwargs: Any) -> None:
    """:func:`atomic_write` of ``json.dumps(obj, **dump_kwargs)`` (NaN and inf are refused)."""
    atomic_write(path, json.dumps(obj, allow_nan=False, **dump_kwargs))


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


def read_json_object(path: str | Path) -> dict:
    """Read a JSON file that must hold an object.

    Raises:
        FileNotFoundError: when the file does not exist.
        IntegrityError: when it is not valid JSON or not an object (names the file and what it holds).
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IntegrityError(path, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        what = "is empty" if not text else f"is not valid JSON ({exc})"
        raise IntegrityError(path, what) from exc
    if not isinstance(obj, dict):
        raise IntegrityError(path, f"holds a JSON {type(obj).__name__}, not an object")
    return obj


# ---------------------------------------------------------------------------------------------- checksums
def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def checksums(folder: str | Path, names: Iterable[str], *, stamp_file: str | None = None) -> dict[str, dict[str, Any]]:
    """``{name: {"size": bytes, "sha256": hex}}`` of files in ``folder``.

    Args:
        folder: the folder that holds the files.
        names: file names in ``folder``.
        stamp_file: also record the hashes in this stamp file (see :func:`verify_checksums`), so that the first
            verification does not read the files again.
    """
    folder = Path(folder)
    out, stamps = {}, {}
    for name in names:
        before = (folder / name).stat()
        digest = file_sha256(folder / name)
        out[name] = {"size": before.st_size, "sha256": digest}
        if _stat_key((folder / name).stat()) == _stat_key(before):
            stamps[name] = _stat_key(before) + [digest]
    if stamp_file is not None:
        atomic_write_json(folder / stamp_file, stamps)
    return out


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def cached_sha256(paths: Iterable[str | Path], stamp_path: str | Path) -> list[str]:
    """SHA-256 of many files, each read only when its size, inode, mtime or ctime changed since the last call.

    Args:
        paths: the files (absolute paths are best: they are the keys of the stamp).
        stamp_path: a JSON file that remembers ``{path: [size, inode, mtime, ctime, sha256]}``; rewritten
            atomically when something changed (a read-only location only costs re-hashing next time).

    Returns:
        The hex digests, in the order of ``paths``.

    Raises:
        FileNotFoundError: when a file does not exist.
    """
    stamp_path = Path(stamp_path)
    try:
        stamps = read_json_object(stamp_path)
    except (FileNotFoundError, IntegrityError):
        stamps = {}
    out, fresh = [], {}
    for path in map(str, paths):
        key = _stat_key(os.stat(path))
        old = stamps.get(path)
        digest = old[4] if isinstance(old, list) and len(old) == 5 and old[:4] == key else file_sha256(path)
        fresh[path] = key + [digest]
        out.append(digest)
    if fresh != stamps:
        try:
            stamp_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(stamp_path, fresh)
        except OSError:
            pass
    return out


def verify_checksums(
    folder: str | Path,
    expected: Mapping[str, Mapping[str, Any]],
    *,
    stamp_file: str | None = None,
) -> None:
    """Check that every file of ``expected`` exists with its recorded size and SHA-256.

    Args:
        folder: the folder that holds the files.
        expected: ``{name: {"size": bytes, "sha256": hex}}`` as written by :func:`checksums`.
        stamp_file: name of a stamp file in ``folder`` that remembers verified hashes with each file's size,
            inode, mtime and ctime; a file whose stat is unchanged is not read again. None: hash every file.

    Raises:
        IntegrityError: naming the first file that is missing, has another size or another hash.
    """
    folder = Path(folder)
    stamp_path = folder / stamp_file if stamp_file else None
    stamps: dict[str, Any] = {}
    if stamp_path is not None:
        try:
            stamps = read_json_object(stamp_path)
        except (FileNotFoundError, IntegrityError):
            stamps = {}
    fresh: dict[str, Any] = {}
    for name, want in expected.items():
        if not isinstance(want, Mapping) or not {"size", "sha256"} <= set(want):
            raise IntegrityError(folder, f"the checksum entry of {name!r} is malformed: {want!r}")
        path = folder / name
        try:
            st = path.stat()
        except FileNotFoundError:
            raise IntegrityError(path, "is missing") from None
        if st.st_size != want["size"]:
            raise IntegrityError(path, f"holds {st.st_size} bytes, {want['size']} were written (truncated or "
                                       "replaced)")
        key = _stat_key(st)
        stamp = stamps.get(name)
        if isinstance(stamp, list) and stamp[:4] == key and stamp[4:] == [want["sha256"]]:
            fresh[name] = stamp
            continue
        try:
            digest = file_sha256(path)
        except OSError as exc:
            raise IntegrityError(path, f"cannot be read ({exc.strerror or exc})") from exc
        if digest != want["sha256"]:
            raise IntegrityError(path, f"content changed since it was written (SHA-256 {digest[:12]}..., "
                                       f"recorded {str(want['sha256'])[:12]}...)")
        fresh[name] = key + [digest]
    if stamp_path is not None and fresh != {k: v for k, v in stamps.items() if k in expected}:
        try:
            atomic_write_json(stamp_path, fresh)
        except OSError:  # a read-only copy is verified again next time, nothing worse
            pass
