"""qpmlib.files: atomic writes, locks, checksums and the stamp that makes re-checking cheap."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from qpmlib import files
from qpmlib.files import IntegrityError, atomic_write, checksums, file_lock, read_json_object, verify_checksums


def test_atomic_write_syncs_before_the_rename_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(files.os, "replace", lambda a, b: events.append(("replace", str(a))) or real_replace(a, b))
    target = tmp_path / "x.json"
    atomic_write(target, "first")
    atomic_write(target, lambda fh: fh.write(b"second"))
    assert target.read_text() == "second" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
    replaced = [a for kind, a in events if kind == "replace"]
    assert len(set(replaced)) == 2  # a fresh temporary name each time
    for tmp in replaced:
        i = events.index(("replace", tmp))
        assert events[i - 1] == ("fsync", tmp)  # the file's data is on disk before it takes the target's name
        assert events[i + 1] == ("fsync", str(tmp_path))  # and the rename itself afterwards


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write(target, "old")

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_read_json_object_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "m.json"
    for text, problem in (("", "is empty"), ("[1]", "holds a JSON list, not an object"), ("{", "is not valid JSON")):
        path.write_text(text)
        with pytest.raises(IntegrityError, match=problem) as err:
            read_json_object(path)
        assert err.value.path == path and str(err.value).startswith(str(path))
    with pytest.raises(FileNotFoundError):
        read_json_object(tmp_path / "none.json")


def test_verify_checksums_uses_the_stamp_until_a_file_changes(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"a" * 100)
    (tmp_path / "b.bin").write_bytes(b"b" * 10)
    sums = checksums(tmp_path, ["a.bin", "b.bin"], stamp_file=".stamp")
    assert sums["a.bin"]["size"] == 100
    hashed = []
    real = files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda p: hashed.append(os.path.basename(p)) or real(p))
    verify_checksums(tmp_path, sums, stamp_file=".stamp")
    assert hashed == []
    st = (tmp_path / "a.bin").stat()
    (tmp_path / "a.bin").write_bytes(b"c" * 100)  # same size; put the mtime back: the ctime still moves
    os.utime(tmp_path / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(IntegrityError, match=r"a.bin: content changed since it was written"):
        verify_checksums(tmp_path, sums, stamp_file=".stamp")
    (tmp_path / "a.bin").write_bytes(b"a" * 100)
    verify_checksums(tmp_path, sums, stamp_file=".stamp")
    assert hashed == ["a.bin", "a.bin"]
    stamp = json.loads((tmp_path / ".stamp").read_text())
    stamp["b.bin"][-1] = "0" * 64  # a stamp that disagrees with the recorded hash is not trusted
    (tmp_path / ".stamp").write_text(json.dumps(stamp))
    verify_checksums(tmp_path, sums, stamp_file=".stamp")
    assert hashed[-1] == "b.bin"
    with pytest.raises(IntegrityError, match="malformed"):
        verify_checksums(tmp_path, {"a.bin": {"size": 100}})


def test_a_second_process_waits_for_the_lock_and_says_for_whom(tmp_path, caplog):
    lock = tmp_path / "x.lock"
    code = ("import sys, time; from qpmlib.files import file_lock\n"
            f"with file_lock({str(lock)!r}):\n    print('held', flush=True); time.sleep(2)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(files.Path(files.__file__).parents[1])))
    assert proc.stdout.readline().strip() == "held"
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="qpmlib.files"), file_lock(lock, what="the test result"):
        waited = time.monotonic() - start
    proc.wait()
    assert waited > 0.5
    assert f"waiting for process {proc.pid}, which is computing the test result" in caplog.text
    with file_lock(lock), file_lock(tmp_path / "y.lock"):  # free again; other locks are independent
        pass
