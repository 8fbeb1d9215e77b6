"""qpmlib.data.download: resume over HTTP Range, checksum before use, safe and atomic extraction (local only)."""

import hashlib
import http.server
import io
import random
import tarfile
import threading
from pathlib import Path

import pytest

from qpmlib.data import download as dl


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


PAYLOAD = _tarball({f"pkg/file{i}.bin": random.Random(i).randbytes(3000) for i in range(4)})
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Server:
    """127.0.0.1 server for PAYLOAD that honours Range, logs requests and can cut the body after N bytes."""

    def __init__(self, *, honour_range=True):
        self.log: list[str | None] = []
        self.cut_after: int | None = None
        self.honour_range = honour_range
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                rng = self.headers.get("Range")
                owner.log.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if (rng and owner.honour_range) else 0
                body = PAYLOAD[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.cut_after is not None:
                    body, owner.cut_after = body[: owner.cut_after], None
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data.tgz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def test_download_verifies_checksum(server, tmp_path):
    dest = dl.download(server.url, tmp_path / "a.tgz", md5=MD5, verbose=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.tgz.part").exists()
    assert dl.file_digest(dest, "sha256") == hashlib.sha256(PAYLOAD).hexdigest()


def test_checksum_mismatch_leaves_nothing_to_extract(server, tmp_path):
    with pytest.raises(dl.ChecksumError, match="expected 0+"):
        dl.download(server.url, tmp_path / "a.tgz", md5="0" * 32, verbose=False)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part


def test_interrupted_download_resumes_with_range(server, tmp_path):
    assert len(PAYLOAD) > 10_000
    server.cut_after = 1000
    with pytest.raises(OSError, match="resume"):
        dl.download(server.url, tmp_path / "a.tgz", md5=MD5, verbose=False)
    part = tmp_path / "a.tgz.part"
    assert part.stat().st_size == 1000
    dest = dl.download(server.url, tmp_path / "a.tgz", md5=MD5, verbose=False)
    assert server.log == [None, "bytes=1000-"]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(tmp_path):
    s = _Server(honour_range=False)
    try:
        (tmp_path / "a.tgz.part").write_bytes(b"garbage-prefix")
        dest = dl.download(s.url, tmp_path / "a.tgz", md5=MD5, verbose=False)
        assert dest.read_bytes() == PAYLOAD
    finally:
        s.close()


def test_file_url_and_corrupt_existing_file(tmp_path):
    src = tmp_path / "src.tgz"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "a.tgz"
    assert dl.download(src.as_uri(), dest, md5=MD5, verbose=False).read_bytes() == PAYLOAD
    dest.write_bytes(b"corrupt")
    with pytest.raises(dl.ChecksumError):
        dl.download(src.as_uri(), dest, md5=MD5, verbose=False)
    assert not dest.exists()


def _evil_tar(path: Path, kind: str) -> None:
    with tarfile.open(path, "w") as tf:
        good = tarfile.TarInfo("ok.txt")
        good.size = 2
        tf.addfile(good, io.BytesIO(b"ok"))
        if kind == "symlink":
            link = tarfile.TarInfo("link")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tf.addfile(link)
        else:
            bad = tarfile.TarInfo("../evil.txt" if kind == "dotdot" else "/tmp/evil-qpmlib.txt")
            bad.size = 4
            tf.addfile(bad, io.BytesIO(b"evil"))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_safe_extract_refuses_escaping_members(tmp_path, kind):
    archive = tmp_path / "evil.tar"
    _evil_tar(archive, kind)
    target = tmp_path / "target"
    with pytest.raises(dl.UnsafeArchiveError):
        dl.safe_extract(archive, target)
    assert not (tmp_path / "evil.txt").exists()
    assert list(target.iterdir()) == []  # checked before anything is written


def test_extract_and_move_is_atomic(tmp_path):
    archive = tmp_path / "a.tgz"
    archive.write_bytes(PAYLOAD)
    dl.extract_and_move(archive, {"pkg": tmp_path / "final"}, work_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == [f"file{i}.bin" for i in range(4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz", "final"]  # temp folder removed

    truncated = tmp_path / "t.tgz"
    truncated.write_bytes(PAYLOAD[: len(PAYLOAD) // 2])
    with pytest.raises((tarfile.TarError, EOFError, OSError, ValueError)):
        dl.extract_and_move(truncated, {"pkg": tmp_path / "final2"}, work_dir=tmp_path)
    assert not (tmp_path / "final2").exists()  # a half extraction never sits at the final path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz", "final", "t.tgz"]

    with pytest.raises(FileNotFoundError, match="no entry 'other'"):
        dl.extract_and_move(archive, {"other": tmp_path / "x"}, work_dir=tmp_path)
    with pytest.raises(FileExistsError):
        dl.extract_and_move(archive, {"pkg": tmp_path / "final"}, work_dir=tmp_path)


def test_refused_connection_and_unknown_host_name_the_url(tmp_path):
    import socket

    with socket.socket() as s:  # a port that nothing listens on: bind, read the number, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/CUB_200_2011.tgz"
    with pytest.raises(OSError, match=rf"cannot download {url}: .*[Rr]efused"):
        dl.download(url, tmp_path / "x.tgz", verbose=False)
    (tmp_path / "x.tgz.part").write_bytes(b"abc")
    with pytest.raises(OSError, match=r"x.tgz.part is kept"):
        dl.download(url, tmp_path / "x.tgz", verbose=False)
    missing = (tmp_path / "nothing.tgz").as_uri()
    with pytest.raises(OSError, match=rf"cannot download {missing}"):
        dl.download(missing, tmp_path / "y.tgz", verbose=False)
