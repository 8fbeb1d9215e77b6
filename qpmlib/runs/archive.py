"""Export and import of finished entries: one tar archive with a checksummed manifest, unpacked all or nothing.

:func:`export_archive` packs entries (results-store folders, embedding-store folders, single files) named relative
to a root folder (normally :func:`qpmlib.paths.home`, which holds ``results/<profile>/`` and ``cache/``) into an
uncompressed tar: every file of every entry, then :data:`MANIFEST_NAME`, a JSON object with the archive format, the
entries, each file's relative path, size and SHA-256, and who produced it (profile, backbone, git commit, ...).
Hidden files inside an entry (locks, verification stamps, scratch folders) belong to one machine and are left out.

:func:`import_archive` unpacks into a hidden staging folder under the root, checks every name (no absolute paths,
no ``..``, no links or devices, nothing the manifest does not list) and every size and checksum, and only then
renames each entry into place. A tampered, truncated or unexpected archive changes nothing. An entry that already
exists is kept when it holds the same files, and refused (before anything is installed) when it differs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tqdm import tqdm

from qpmlib import paths
from qpmlib.files import atomic_write, file_sha256, publish

__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "ArchiveError", "ImportReport", "export_archive", "read_manifest",
           "import_archive"]

FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 64 << 20


class ArchiveError(ValueError):
    """An archive or an export request that cannot be used; the message names the file and the problem."""


@dataclass
class ImportReport:
    """What :func:`import_archive` did.

    Attributes:
        added: entries that were installed.
        present: entries that already existed with exactly the same files (left as they were).
        manifest: the archive's manifest.
    """

    added: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def _relative(entry: str | Path, root: Path) -> str:
    """An entry as a clean POSIX path relative to ``root``."""
    entry = Path(entry)
    if entry.is_absolute():
        try:
            entry = entry.relative_to(root)
        except ValueError:
            raise ArchiveError(f"entry {entry} is not inside the root folder {root}") from None
    return _safe_name(entry.as_posix())


def _safe_name(name: str) -> str:
    """``name`` when it is a plain relative POSIX path (no ``..``, ``.``, empty parts, backslashes or NUL)."""
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or "\x00" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise ArchiveError(f"unsafe path {name!r}: only plain relative names are allowed")
    return str(PurePosixPath(name))


def _entry_files(root: Path, entry: str) -> list[str]:
    """Relative names of the files of an entry (a file, or a folder walked in sorted order), hidden ones left out.

    Raises:
        ArchiveError: for a missing or hidden entry, or a symbolic link inside it.
    """
    path = root / entry
    if PurePosixPath(entry).name.startswith("."):
        raise ArchiveError(f"{path} is hidden (a lock, scratch or temporary folder), not a finished entry")
    if path.is_symlink():
        raise ArchiveError(f"{path} is a symbolic link; export the folder it points to")
    if path.is_file():
        return [entry]
    if not path.is_dir():
        raise ArchiveError(f"entry {path} does not exist")
    files = []
    for folder, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in dirs:
            if (Path(folder) / d).is_symlink():
                raise ArchiveError(f"{Path(folder) / d} is a symbolic link; archives hold plain files only")
        for name in sorted(n for n in names if not n.startswith(".")):
            file = Path(folder) / name
            if file.is_symlink() or not file.is_file():
                raise ArchiveError(f"{file} is not a plain file; archives hold plain files only")
            files.append(file.relative_to(root).as_posix())
    if not files:
        raise ArchiveError(f"entry {path} holds no files")
    return files


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class _Hashing:
    """A read-only file wrapper that hashes what is read through it."""

    def __init__(self, fh: BinaryIO, bar: tqdm) -> None:
        self.fh, self.bar, self.sha = fh, bar, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.sha.update(data)
        self.bar.update(len(data))
        return data


def export_archive(
    archive: str | Path,
    entries: Iterable[str | Path],
    *,
    root: str | Path | None = None,
    produced_by: Mapping[str, Any] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Pack entries into one uncompressed tar with a checksummed manifest (written atomically).

    Args:
        archive: the tar file to write (replaced when it exists).
        entries: files or folders, relative to ``root`` or absolute inside it, e.g.
            ``"results/paper/qpm/0123abcd"`` or ``"cache/<store folder>"``.
        root: the folder the entries are relative to (default :func:`qpmlib.paths.home`).
        produced_by: what produced the entries, JSON-ready (e.g. ``{"profile": "paper", "backbone": ...}``);
            the exporting checkout's git commit is added as ``exported_from_commit``.
        verbose: show a progress bar over the bytes packed.

    Returns:
        The manifest that was written into the archive.

    Raises:
        ArchiveError: for a missing, hidden or overlapping entry, or a link or special file inside one.
    """
    root = Path(root if root is not None else paths.home()).absolute()
    names = sorted({_relative(e, root) for e in entries})
    for a, b in zip(names, names[1:]):
        if b.startswith(a + "/"):
            raise ArchiveError(f"entries overlap: {b} is inside {a}")
    files = [f for name in names for f in _entry_files(root, name)]
    total = sum((root / f).stat().st_size for f in files)
    archive = Path(archive).absolute()
    archive.parent.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {}

    def write(fh: BinaryIO) -> None:
        listed = []
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar, \
                tqdm(total=total, unit="B", unit_scale=True, desc="export", disable=not verbose) as bar:
            for name in files:
                info = _plain_info(name, (root / name).stat().st_size)
                with open(root / name, "rb") as src:
                    reader = _Hashing(src, bar)
                    tar.addfile(info, reader)
                listed.append({"path": name, "size": info.size, "sha256": reader.sha.hexdigest()})
            manifest.update({
                "format": FORMAT_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "produced_by": {**dict(produced_by or {}), "exported_from_commit": _git_commit()},
                "entries": names,
                "files": listed,
            })
            data = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False).encode()
            tar.addfile(_plain_info(MANIFEST_NAME, len(data)), io.BytesIO(data))

    atomic_write(archive, write)
    return manifest


def _plain_info(name: str, size: int) -> tarfile.TarInfo:
    """A regular-file member with fixed owner, mode and time, so that the archive depends only on the contents."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


def read_manifest(archive: str | Path) -> dict[str, Any]:
    """The manifest of an archive (its contents are not checked; :func:`import_archive` does that).

    Raises:
        ArchiveError: when the archive has no readable manifest.
    """
    with tarfile.open(archive, "r:*") as tar:
        try:
            member = tar.getmember(MANIFEST_NAME)
        except KeyError:
            raise ArchiveError(f"{archive} has no {MANIFEST_NAME}; it was not written by export_archive") from None
        return _parse_manifest(tar.extractfile(member).read(_MAX_MANIFEST_BYTES + 1), archive)[0]


def _parse_manifest(data: bytes, archive: str | Path) -> tuple[dict[str, Any], dict[str, tuple[int, str]]]:
    """The checked manifest, and ``{file: (size, sha256)}`` from it."""
    if len(data) > _MAX_MANIFEST_BYTES:
        raise ArchiveError(f"{archive}: {MANIFEST_NAME} is larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{archive}: {MANIFEST_NAME} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise ArchiveError(f"{archive}: {MANIFEST_NAME} is not a format-{FORMAT_VERSION} manifest")
    try:
        entries = [_safe_name(e) for e in manifest["entries"]]
        files = {_safe_name(f["path"]): (int(f["size"]), str(f["sha256"])) for f in manifest["files"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveError(f"{archive}: {MANIFEST_NAME} is malformed ({exc})") from None
    ordered = sorted(entries)
    for a, b in zip(ordered, ordered[1:]):
        if b.startswith(a + "/"):
            raise ArchiveError(f"{archive}: entry {b} is inside entry {a}")
    owners = set(entries)
    used = set()
    for name in files:
        parts = name.split("/")
        owner = next((p for p in ("/".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in owners), None)
        if owner is None:
            raise ArchiveError(f"{archive}: file {name} belongs to no entry of the manifest")
        used.add(owner)
    if owners - used:
        raise ArchiveError(f"{archive}: entry {sorted(owners - used)[0]} has no files")
    return manifest, files


def import_archive(archive: str | Path, *, root: str | Path | None = None, verbose: bool = True) -> ImportReport:
    """Verify an archive completely, then install its entries under ``root``; nothing changes when a check fails.

    Args:
        archive: a tar written by :func:`export_archive`.
        root: the folder the entries go under (default :func:`qpmlib.paths.home`).
        verbose: show a progress bar over the bytes unpacked.

    Returns:
        An :class:`ImportReport`.

    Raises:
        ArchiveError: for an unsafe member (absolute or ``..`` name, link, device, duplicate), a file the manifest
            does not list or that is missing, a size or SHA-256 mismatch, or an existing entry with other files.
    """
    root = Path(root if root is not None else paths.home()).absolute()
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".import-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        manifest, want, got = _unpack(Path(archive), staging, verbose)
        for name in sorted(set(want) | set(got)):
            if name not in got:
                raise ArchiveError(f"{archive}: {name} is in the manifest but not in the archive (truncated?)")
            if name not in want:
                raise ArchiveError(f"{archive}: {name} is in the archive but not in its manifest")
            if got[name] != want[name]:
                raise ArchiveError(f"{archive}: {name} does not match its manifest (size {got[name][0]}, "
                                   f"SHA-256 {got[name][1][:12]}...; expected size {want[name][0]}, "
                                   f"SHA-256 {want[name][1][:12]}...): the archive was damaged or altered")
        report = ImportReport(manifest=manifest)
        for entry in manifest["entries"]:
            if (root / entry).exists():
                _check_same(root, entry, want)
                report.present.append(entry)
        for entry in manifest["entries"]:
            if entry in report.present:
                continue
            if not publish(staging / entry, root / entry):  # appeared meanwhile: keep it if it is the same
                _check_same(root, entry, want)
                report.present.append(entry)
            else:
                report.added.append(entry)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack(archive: Path, staging: Path, verbose: bool):
    """Write every file member into ``staging``, hashing it on the way.

    Returns:
        The manifest, ``{file: (size, sha256)}`` from the manifest, and the same for what was read.
    """
    got: dict[str, tuple[int, str]] = {}
    manifest = want = None
    try:
        tar = tarfile.open(archive, "r|*")
    except (OSError, tarfile.TarError) as exc:
        raise ArchiveError(f"{archive} cannot be read as a tar archive ({exc})") from None
    with tar, tqdm(total=archive.stat().st_size, unit="B", unit_scale=True, desc="import",
                   disable=not verbose) as bar:
        try:
            for member in tar:
                name = _safe_name(member.name.rstrip("/") if member.isdir() else member.name)
                if member.isdir():
                    continue
                if not member.isreg():
                    raise ArchiveError(f"{archive}: member {name} is a link or special file; only plain files are "
                                       "accepted")
                if name in got or (name == MANIFEST_NAME and manifest is not None):
                    raise ArchiveError(f"{archive}: member {name} appears twice")
                source = tar.extractfile(member)
                if name == MANIFEST_NAME:
                    manifest, want = _parse_manifest(source.read(_MAX_MANIFEST_BYTES + 1), archive)
                    continue
                sha, size = hashlib.sha256(), 0
                try:
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    out = open(staging / name, "xb")
                except OSError as exc:  # e.g. "a" is a file and "a/b" comes next
                    raise ArchiveError(f"{archive}: member {name} clashes with another member ({exc})") from None
                with out:
                    while chunk := source.read(_CHUNK):
                        sha.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
                got[name] = (size, sha.hexdigest())
        except (tarfile.TarError, EOFError) as exc:
            raise ArchiveError(f"{archive} is damaged or truncated ({exc})") from None
    if manifest is None:
        raise ArchiveError(f"{archive} has no {MANIFEST_NAME}; it was not written by export_archive")
    return manifest, want, got


def _check_same(root: Path, entry: str, want: Mapping[str, tuple[int, str]]) -> None:
    """Raise unless the existing entry holds exactly the archive's files for it (names, sizes, SHA-256)."""
    expected = {n: v for n, v in want.items() if n == entry or n.startswith(entry + "/")}
    try:
        have = _entry_files(root, entry)
    except ArchiveError:
        have = []
    same = sorted(have) == sorted(expected) and all(
        (root / n).stat().st_size == expected[n][0] and file_sha256(root / n) == expected[n][1] for n in have)
    if not same:
        raise ArchiveError(f"{root / entry} already exists with other contents; nothing was imported. Move it "
                           "away (or delete it) to import the archive's version")
