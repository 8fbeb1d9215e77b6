"""Tests for qpmlib.runs.archive: export -> import round trips, and archives that must change nothing."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from qpmlib.runs.archive import MANIFEST_NAME, ArchiveError, export_archive, import_archive, read_manifest
from qpmlib.runs.executor import compute, probe_task


def _home(root: Path) -> list[str]:
    """A results store with two probe entries and an embedding-store-like folder; returns the entry names."""
    tasks = [probe_task(root / "results" / "smoke", seed) for seed in (0, 1)]
    compute(tasks, executor="local", verbose=False)
    emb = root / "cache" / "synthbirds-test-vit"
    emb.mkdir(parents=True)
    np.save(emb / "cls.npy", np.arange(12, dtype=np.float16).reshape(3, 4))
    (emb / "manifest.json").write_text(json.dumps({"complete": True}))
    (emb / ".lock").write_text("process 1")  # machine-local: not exported
    (root / "results" / "smoke" / "probe" / ".work-scratch").mkdir()  # not an entry: left out
    return [str(Path(t.key.path).relative_to(root)) for t in tasks] + ["cache/synthbirds-test-vit"]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def _visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_round_trip_installs_identical_entries(tmp_path):
    src, dst = tmp_path / "cluster", tmp_path / "laptop"
    entries = _home(src)
    manifest = export_archive(tmp_path / "book.tar", entries, root=src, produced_by={"profile": "smoke"},
                              verbose=False)
    assert manifest["produced_by"]["profile"] == "smoke" and "exported_from_commit" in manifest["produced_by"]
    assert manifest["entries"] == sorted(entries)
    assert read_manifest(tmp_path / "book.tar")["files"] == manifest["files"]
    assert all(not Path(f["path"]).name.startswith(".") for f in manifest["files"])
    with tarfile.open(tmp_path / "book.tar") as tar:
        assert tar.getnames()[-1] == MANIFEST_NAME
    report = import_archive(tmp_path / "book.tar", root=dst, verbose=False)
    assert report.added == sorted(entries) and report.present == []
    assert _files(dst) == {k: v for k, v in _files(src).items()}
    assert _visible(dst) == ["cache", "results"]  # the staging folder is gone
    again = import_archive(tmp_path / "book.tar", root=dst, verbose=False)
    assert again.added == [] and again.present == sorted(entries)


def test_export_is_reproducible_and_refuses_bad_entries(tmp_path):
    entries = _home(tmp_path / "h")
    export_archive(tmp_path / "a.tar", entries, root=tmp_path / "h", verbose=False)
    export_archive(tmp_path / "b.tar", entries, root=tmp_path / "h", verbose=False)
    strip = lambda p: p.read_bytes().split(MANIFEST_NAME.encode())[0]  # noqa: E731  (the manifest has a time)
    assert strip(tmp_path / "a.tar") == strip(tmp_path / "b.tar")
    with pytest.raises(ArchiveError, match="does not exist"):
        export_archive(tmp_path / "c.tar", ["results/nothing"], root=tmp_path / "h", verbose=False)
    with pytest.raises(ArchiveError, match="hidden"):
        export_archive(tmp_path / "c.tar", ["results/smoke/probe/.work-scratch"], root=tmp_path / "h", verbose=False)
    with pytest.raises(ArchiveError, match="overlap"):
        export_archive(tmp_path / "c.tar", ["cache", entries[2]], root=tmp_path / "h", verbose=False)
    with pytest.raises(ArchiveError, match="not inside the root"):
        export_archive(tmp_path / "c.tar", [tmp_path], root=tmp_path / "h", verbose=False)
    (tmp_path / "h" / "cache" / "synthbirds-test-vit" / "link.npy").symlink_to(tmp_path / "a.tar")
    with pytest.raises(ArchiveError, match="not a plain file"):
        export_archive(tmp_path / "c.tar", entries, root=tmp_path / "h", verbose=False)
    assert not (tmp_path / "c.tar").exists()


def test_a_tampered_file_is_refused_and_nothing_is_installed(tmp_path):
    entries = _home(tmp_path / "src")
    export_archive(tmp_path / "x.tar", entries, root=tmp_path / "src", verbose=False)
    with tarfile.open(tmp_path / "x.tar") as tar:
        member = tar.getmember(f"{entries[2]}/cls.npy")
    data = bytearray((tmp_path / "x.tar").read_bytes())
    data[member.offset_data + member.size - 1] ^= 0x01  # one bit of the last byte, size unchanged
    (tmp_path / "x.tar").write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="cls.npy does not match its manifest"):
        import_archive(tmp_path / "x.tar", root=tmp_path / "dst", verbose=False)
    assert _visible(tmp_path / "dst") == []  # not even the probe entries that were intact
    (tmp_path / "x.tar").write_bytes(bytes(data[: member.offset_data + 100]))  # truncated
    with pytest.raises(ArchiveError, match="damaged or truncated"):
        import_archive(tmp_path / "x.tar", root=tmp_path / "dst", verbose=False)
    assert _visible(tmp_path / "dst") == []


def test_an_existing_different_entry_is_kept_and_the_import_refused(tmp_path):
    entries = _home(tmp_path / "src")
    export_archive(tmp_path / "x.tar", entries, root=tmp_path / "src", verbose=False)
    mine = tmp_path / "dst" / entries[2]
    mine.mkdir(parents=True)
    (mine / "cls.npy").write_bytes(b"my own")
    with pytest.raises(ArchiveError, match="already exists with other contents; nothing was imported"):
        import_archive(tmp_path / "x.tar", root=tmp_path / "dst", verbose=False)
    assert (mine / "cls.npy").read_bytes() == b"my own"
    assert _visible(tmp_path / "dst") == ["cache"]  # the results entries were not installed either


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], manifest: dict | None) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
        if manifest is not None:
            data = json.dumps(manifest).encode()
            info = tarfile.TarInfo(MANIFEST_NAME)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _manifest(files: dict[str, bytes], entries: list[str]) -> dict:
    import hashlib

    return {"format": 1, "entries": entries, "produced_by": {},
            "files": [{"path": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()]}


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "results/../../evil", "results//x", "a\\..\\b"])
def test_unsafe_member_names_are_refused(tmp_path, name):
    archive = _tar(tmp_path / "bad.tar", [(tarfile.TarInfo(name), b"x")], _manifest({name: b"x"}, [name]))
    with pytest.raises(ArchiveError, match="unsafe path"):
        import_archive(archive, root=tmp_path / "dst", verbose=False)
    assert _visible(tmp_path / "dst") == [] and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE])
def test_links_and_special_files_are_refused(tmp_path, kind):
    info = tarfile.TarInfo("results/e/link")
    info.type, info.linkname = kind, "/etc/passwd"
    archive = _tar(tmp_path / "bad.tar", [(info, b"")], _manifest({}, []))
    with pytest.raises(ArchiveError, match="link or special file"):
        import_archive(archive, root=tmp_path / "dst", verbose=False)
    assert _visible(tmp_path / "dst") == []


def test_unlisted_missing_and_manifestless_archives_are_refused(tmp_path):
    good = {"results/e/a.json": b"{}"}
    extra = _tar(tmp_path / "extra.tar", [(tarfile.TarInfo(n), d) for n, d in {**good, "results/e/b": b"1"}.items()],
                 _manifest(good, ["results/e"]))
    with pytest.raises(ArchiveError, match="results/e/b is in the archive but not in its manifest"):
        import_archive(extra, root=tmp_path / "dst", verbose=False)
    short = _tar(tmp_path / "short.tar", [], _manifest(good, ["results/e"]))
    with pytest.raises(ArchiveError, match="in the manifest but not in the archive"):
        import_archive(short, root=tmp_path / "dst", verbose=False)
    bare = _tar(tmp_path / "bare.tar", [(tarfile.TarInfo(n), d) for n, d in good.items()], None)
    with pytest.raises(ArchiveError, match="has no MANIFEST.json"):
        import_archive(bare, root=tmp_path / "dst", verbose=False)
    with pytest.raises(ArchiveError, match="has no MANIFEST.json"):
        read_manifest(bare)
    orphan = _tar(tmp_path / "orphan.tar", [(tarfile.TarInfo(n), d) for n, d in good.items()],
                  _manifest(good, ["results/other"]))
    with pytest.raises(ArchiveError, match="belongs to no entry"):
        import_archive(orphan, root=tmp_path / "dst", verbose=False)
    assert _visible(tmp_path / "dst") == []
