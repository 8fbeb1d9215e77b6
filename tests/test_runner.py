"""The book runner: _toc.yml order, parameter checks, reuse, and what a failing chapter leaves behind."""

from __future__ import annotations

import json
import re

import pytest

from qpmlib.book import runner as bookrunner
from qpmlib.book.runner import (
    ChapterFailed,
    check_parameters,
    chapters,
    parameters_cell_names,
    provenance_markdown,
    select_chapters,
    toc_entries,
)
from qpmlib.paths import REPO_ROOT
from qpmlib.config import PROFILES


def _write_notebook(path, cells):
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {"tags": tags} if tags else {},
                "source": src,
                "outputs": [],
                "execution_count": None,
                "id": f"c{i}",
            }
            for i, (src, tags) in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))
    return path


def test_toc_lists_root_first_and_every_chapter_exists():
    entries = toc_entries()
    assert entries[0] == "book/index"
    names = [c.name for c in chapters()]
    assert names == sorted(names), "chapters must appear in _toc.yml in their numbered order"
    assert all((REPO_ROOT / f"{e}.ipynb").exists() or (REPO_ROOT / f"{e}.md").exists()
               or e == "book/provenance" for e in entries)


def test_every_chapter_declares_profile_and_reads_each_parameter():
    """A papermill parameter that a notebook declares but never uses would be a silent override."""
    for chapter in chapters():
        declared = parameters_cell_names(chapter.source)
        assert "profile" in declared, f"{chapter.name}: the parameters cell must define `profile`"
        nb = json.loads(chapter.source.read_text())
        rest = "\n".join(
            "".join(c["source"]) for c in nb["cells"]
            if c["cell_type"] == "code" and "parameters" not in c.get("metadata", {}).get("tags", [])
        )
        for name in declared:
            assert re.search(rf"\b{name}\b", rest), f"{chapter.name}: parameter {name!r} is never read"


def test_source_notebooks_are_committed_without_outputs():
    for chapter in chapters():
        nb = json.loads(chapter.source.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, f"{chapter.name} has outputs"


def test_unknown_parameter_is_rejected(tmp_path):
    nb = _write_notebook(tmp_path / "x.ipynb", [("profile = 'demo'\nseeds = (0,)", ["parameters"]), ("print(profile, seeds)", [])])
    assert parameters_cell_names(nb) == {"profile", "seeds"}
    check_parameters(nb, {"profile": "smoke", "seeds": [1]})
    with pytest.raises(ValueError, match=r"does not read parameter\(s\) lamda.*declares: profile, seeds"):
        check_parameters(nb, {"profile": "smoke", "lamda": 1.0})


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = _write_notebook(tmp_path / "x.ipynb", [("x = 1", [])])
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        parameters_cell_names(nb)


def test_unknown_chapter_and_profile_list_the_valid_names():
    available = chapters()
    with pytest.raises(ValueError, match="valid chapters: " + available[0].name):
        select_chapters(["no_such_chapter"], available)
    assert select_chapters([available[0].name.split("_", 1)[1]], available) == [available[0]]
    with pytest.raises(ValueError, match="valid profiles: " + ", ".join(PROFILES)):
        bookrunner.run_chapters("nope")
    assert bookrunner.main(["run", "--profile", "nope"]) == 1


@pytest.fixture()
def fake_book(tmp_path, monkeypatch):
    """A repository with two chapters, the second of which can be made to fail."""
    (tmp_path / "chapters").mkdir()
    (tmp_path / "qpmlib").mkdir()
    (tmp_path / "qpmlib" / "x.py").write_text("")
    (tmp_path / "requirements.txt").write_text("")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/index\nchapters:\n  - file: chapters/01_a\n  - file: chapters/02_b\n"
    )
    _write_notebook(tmp_path / "chapters" / "01_a.ipynb", [("profile = 'demo'", ["parameters"]), ("print('a', profile)", [])])
    _write_notebook(tmp_path / "chapters" / "02_b.ipynb", [("profile = 'demo'", ["parameters"]), ("print('b', profile)", [])])
    monkeypatch.setattr(bookrunner, "REPO_ROOT", tmp_path)
    return tmp_path


@pytest.mark.slow
def test_run_reuses_up_to_date_chapters_and_keeps_earlier_ones_on_failure(fake_book):
    timings = bookrunner.run_chapters("smoke", verbose=False)
    assert [t["reused"] for t in timings.values()] == [False, False]
    executed = fake_book / "book" / "_build" / "smoke" / "src" / "chapters"
    first = (executed / "01_a.ipynb").read_text()
    assert "a smoke" in first  # the injected parameter reached the notebook

    again = bookrunner.run_chapters("smoke", verbose=False)
    assert [t["reused"] for t in again.values()] == [True, True]

    _write_notebook(fake_book / "chapters" / "02_b.ipynb", [("profile = 'demo'", ["parameters"]), ("1 / 0", [])])
    with pytest.raises(ChapterFailed, match=r"02_b failed at code cell \d+ \('1 / 0'\): ZeroDivisionError"):
        bookrunner.run_chapters("smoke", verbose=False)
    assert (executed / "01_a.ipynb").read_text() == first, "an earlier chapter was touched by a later failure"
    assert (executed / "02_b.failed.ipynb").exists()
    record = json.loads((fake_book / "book" / "_build" / "smoke" / "run.json").read_text())
    assert record["profile"] == "smoke" and set(record["chapters"]) == {"01_a", "02_b"}


def test_provenance_page_lists_the_run():
    record = {
        "profile": "smoke", "profile_description": "tiny", "dataset": "synthbirds", "extra_datasets": [],
        "backbone": "tiny_vit_test", "backbone_weights": "random weights", "seeds": [0], "git_commit": "abc1234",
        "device": "cpu", "python": "3.11", "finished": "2026-11-22T00:00:00+00:00",
        "chapters": {"01_a": {"seconds": 1.5, "reused": False}, "02_b": {"seconds": 2.0, "reused": True}},
        "packages": {"torch": "2.14.1"},
    }
    md = provenance_markdown(record)
    assert "| profile | `smoke`: tiny |" in md
    assert "| **total** | 3.5 | |" in md
    assert "| 02_b | 2.0 | reused from an earlier run |" in md
    assert "| torch | 2.14.1 |" in md
