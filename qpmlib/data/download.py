"""Generic, careful downloading: resume over HTTP Range, checksum before use, safe and atomic extraction.

Used by :mod:`qpmlib.data.cub` (and the Stanford Cars unpacker). The rules:

* A download goes to ``<dest>.part``; an interrupted transfer keeps the partial file and the next call asks the
  server for the rest (``Range: bytes=N-``). A server that ignores Range (status 200) restarts the file.
* The file is renamed to ``dest`` only after its checksum (md5 or sha256) matches; a mismatch deletes the
  partial file and raises :class:`ChecksumError`, so nothing unverified is ever extracted.
* Archives are extracted into a temporary folder beside the destination, members that would escape it
  (absolute paths, ``..``, links or devices) are refused, and finished folders are moved into place with a
  rename. A half-extracted folder therefore never sits at the final path.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from tqdm import tqdm

__all__ = [
    "ChecksumError",
    "UnsafeArchiveError",
    "file_digest",
    "verify_checksum",
    "download",
    "safe_extract",
    "extract_and_move",
]

USER_AGENT = "qpmlib-data/1.0 (Python urllib)"


class ChecksumError(ValueError):
    """A downloaded file does not have the expected checksum."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder, or is a link or device."""


def file_digest(path: str | Path, algorithm: str = "md5", *, chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file.

    Args:
        path: file to hash.
        algorithm: ``"md5"`` or ``"sha256"`` (any name :func:`hashlib.new` accepts).
        chunk_size: bytes read at a time.

    Returns:
        lowercase hex digest.
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: str | Path, *, md5: str | None = None, sha256: str | None = None) -> None:
    """Check a file against the given digests (each one that is not None).

    Raises:
        ChecksumError: naming the file, the expected and the actual digest.
    """
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual != expected.lower():
            raise ChecksumError(
                f"{algorithm} of {path} is {actual}, expected {expected}; the file is corrupt or not the "
                "published one. It has been removed; run the download again."
            )


def download(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    verbose: bool = True,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download, and verify it.

    Args:
        url: ``http(s)://`` or ``file://`` address.
        dest: final file path; the transfer is written to ``<dest>.part`` first.
        md5: expected md5 hex digest (optional).
        sha256: expected sha256 hex digest (optional).
        verbose: show a tqdm progress bar.
        timeout: socket timeout in seconds.
        chunk_size: bytes per read.

    Returns:
        ``dest``, which exists and matches the checksums.

    Raises:
        ChecksumError: the finished file has the wrong digest (the partial file is deleted).
        OSError: network or file errors (the partial file is kept so the next call resumes).
    """
    dest = Path(dest)
    if dest.exists():
        try:
            verify_checksum(dest, md5=md5, sha256=sha256)
        except ChecksumError:
            dest.unlink()
            raise
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416:  # 416: the partial file already holds every byte
            raise OSError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
        response = None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, unknown host, timeout
        reason = getattr(exc, "reason", None) or exc
        raise OSError(f"cannot download {url}: {reason}; check the address and the network connection"
                      + (f" (the partial file {part} is kept for the next try)" if have else "")) from exc
    if response is not None:
        with response:
            status = getattr(response, "status", None)
            resumed = have > 0 and status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not verbose
            ) as bar:
                try:
                    while chunk := response.read(chunk_size):
                        out.write(chunk)
                        bar.update(len(chunk))
                except (http.client.HTTPException, OSError) as exc:
                    raise OSError(
                        f"download of {url} interrupted after {out.tell()} bytes ({exc!r}); the partial file "
                        f"{part} is kept: run the same command again to resume"
                    ) from exc
                if total is not None and out.tell() < total:
                    raise OSError(
                        f"download of {url} ended after {out.tell()} of {total} bytes; the partial file {part} "
                        "is kept: run the same command again to resume"
                    )
    try:
        verify_checksum(part, md5=md5, sha256=sha256)
    except ChecksumError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


def _check_member_name(name: str, archive: Path) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0].endswith(":")):
        raise UnsafeArchiveError(f"refusing to extract {archive}: member {name!r} would leave the target folder")


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a tar (any compression) or zip archive into ``target``, refusing unsafe members.

    Args:
        archive: ``.tar``, ``.tgz``, ``.tar.gz``, ... or ``.zip`` file.
        target: folder to extract into (created if missing).

    Returns:
        ``target``.

    Raises:
        UnsafeArchiveError: a member has an absolute path, contains ``..``, or is a link or device file
            (checked for every member before anything is written).
        ValueError: the file is neither a tar nor a zip archive.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member_name(name, archive)
            zf.extractall(target)
        return target
    if not tarfile.is_tarfile(archive):
        raise ValueError(f"{archive} is neither a tar nor a zip archive")
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _check_member_name(m.name, archive)
            if not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(
                    f"refusing to extract {archive}: member {m.name!r} is a link or special file"
                )
        tf.extractall(target, members=members, filter="data")
    return target


def extract_and_move(archive: str | Path, moves: Mapping[str, str | Path], *, work_dir: str | Path) -> None:
    """Extract ``archive`` into a temporary folder, then rename selected entries to their final places.

    Args:
        archive: verified archive.
        moves: archive-relative path (e.g. ``"CUB_200_2011"``) -> destination path. Each destination must
            not exist yet; its parent is created.
        work_dir: where the temporary folder is made (same file system as the destinations, so the final
            step is a rename).

    Raises:
        FileNotFoundError: an expected entry is not in the archive.
        FileExistsError: a destination already exists.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / f".extract-{Path(archive).name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        safe_extract(archive, tmp)
        for src, dst in moves.items():
            dst = Path(dst)
            if not (tmp / src).exists():
                raise FileNotFoundError(f"{archive} has no entry {src!r}; is it the right archive?")
            if dst.exists():
                raise FileExistsError(f"{dst} already exists; remove it to extract {archive} again")
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
