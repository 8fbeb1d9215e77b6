"""Tests for qpmlib.files: publishing races, atomic rewrites, and locks between processes."""

import hashlib
import multiprocessing as mp
import os
import signal
import time

import pytest

from qpmlib.files import atomic_write, file_lock, file_sha256, publish, temp_path


def _publish_folder(final, writer, start):
    """Write a two-file folder that names its writer, then publish it when ``start`` is set."""
    tmp = temp_path(final)
    tmp.mkdir()
    (tmp / "a.txt").write_text(f"writer {writer}\n" * 1000)
    (tmp / "b.txt").write_text(f"writer {writer}")
    start.wait()
    os._exit(0 if publish(tmp, final) else 3)


def test_racing_publishers_leave_exactly_one_complete_entry(tmp_path):
    ctx = mp.get_context("fork")
    final, start = tmp_path / "entry", ctx.Event()
    procs = [ctx.Process(target=_publish_folder, args=(final, w, start)) for w in range(6)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(30)
    assert sorted(p.exitcode for p in procs) == [0, 3, 3, 3, 3, 3]  # one winner, five told they lost
    writer = (final / "b.txt").read_text().split()[-1]
    assert (final / "a.txt").read_text() == f"writer {writer}\n" * 1000  # both files from the same writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # the losers' copies are gone


def test_publish_never_replaces_a_file(tmp_path):
    final = tmp_path / "x.json"
    for text in ("first", "second"):
        tmp = temp_path(final)
        tmp.write_text(text)
        publish(tmp, final)
    assert final.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "ledger.json"
    atomic_write(target, "old")

    def broken(fh):
        fh.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["ledger.json"]
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert file_sha256(target) == hashlib.sha256(b"new").hexdigest()


def _hold(lock, ready, out):
    with file_lock(lock):
        ready.set()
        time.sleep(1.0)
        out.write_text("holder finished")
        time.sleep(60)  # killed here by the second test


def test_a_second_process_waits_for_the_lock_and_a_killed_holder_releases_it(tmp_path):
    ctx = mp.get_context("fork")
    lock, out, ready = tmp_path / ".locks" / "e.lock", tmp_path / "out", ctx.Event()
    holder = ctx.Process(target=_hold, args=(lock, ready, out))
    holder.start()
    assert ready.wait(30)
    killer = ctx.Process(target=lambda: (time.sleep(2.0), os.kill(holder.pid, signal.SIGKILL)))
    killer.start()
    t0 = time.monotonic()
    with file_lock(lock):  # waits until the holder is killed (after it wrote its file)
        waited = time.monotonic() - t0
        assert out.read_text() == "holder finished"
    holder.join(10)
    killer.join(10)
    assert holder.exitcode == -signal.SIGKILL and waited > 1.0
