"""Tests for qpmlib.book.store: the command line of ``make runs``, ``make export`` and ``make import``."""

import pytest

from qpmlib.analysis.plan import book_requests
from qpmlib.book.store import main
from qpmlib.runs.tasks import plan_requests


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QPMLIB_EXECUTOR", raising=False)
    return tmp_path / "home"


def test_dry_run_prints_every_job_of_the_book_and_computes_nothing(home, capsys):
    assert main(["runs", "--profile", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    run_plan, pending = plan_requests(book_requests("smoke"), "smoke")
    assert str(run_plan) in out and f"{pending} run(s) wait for embeddings" in out
    assert f"{len(run_plan.jobs)} job(s) to submit, 0 already stored" in out
    assert "nothing was computed or submitted" in out
    assert not (home / "results").exists() and not (home / "slurm").exists()


def test_errors_say_what_to_do(home, tmp_path, capsys, monkeypatch):
    assert main(["export", "--profile", "smoke"]) == 1
    assert "export needs --archive FILE" in capsys.readouterr().err
    assert main(["export", "--profile", "smoke", "--archive", str(tmp_path / "a.tar")]) == 1
    assert "not stored or damaged" in capsys.readouterr().err and not (tmp_path / "a.tar").exists()
    (tmp_path / "b.tar").write_bytes(b"not a tar")
    assert main(["import", "--archive", str(tmp_path / "b.tar")]) == 1
    assert "[import] error" in capsys.readouterr().err and not (home / "results").exists()
    monkeypatch.setenv("QPMLIB_EXECUTOR", "ray")
    assert main(["runs", "--profile", "smoke"]) == 1
    assert "unknown executor 'ray'" in capsys.readouterr().err
    monkeypatch.delenv("QPMLIB_EXECUTOR")
    assert main(["runs", "--profile", "smoke", "--workers", "0"]) == 1
    assert "cluster.workers must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (home / "results").exists()
