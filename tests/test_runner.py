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
    with pytest.raises(ChapterFailed, match=r"02_b failed at code cell 2 \('1 / 0'\): ZeroDivisionError"):
        bookrunner.run_chapters("smoke", verbose=False)
    assert (executed / "01_a.ipynb").read_text() == first, "an earlier chapter was touched by a later failure"
    assert (executed / "02_b.failed.ipynb").exists()
    record = json.loads((fake_book / "book" / "_build" / "smoke" / "run.json").read_text())
    assert record["profile"] == "smoke" and set(record["chapters"]) == {"01_a", "02_b"}


@pytest.mark.slow
def test_two_jobs_run_chapters_at_once_and_report_them_in_toc_order(fake_book):
    stamp = ("import json, time\nstart = time.time()\ntime.sleep(3)\n"
             "json.dump([start, time.time()], open('{name}.times', 'w'))")
    for name in ("01_a", "02_b"):
        _write_notebook(fake_book / "chapters" / f"{name}.ipynb",
                        [("profile = 'demo'", ["parameters"]), (stamp.format(name=name), [])])
    timings = bookrunner.run_chapters("smoke", verbose=False, jobs=2)
    assert list(timings) == ["01_a", "02_b"] and not any(t["reused"] for t in timings.values())
    (a0, a1), (b0, b1) = (json.loads((fake_book / "chapters" / f"{n}.times").read_text()) for n in ("01_a", "02_b"))
    assert b0 < a1 and a0 < b1, "the two chapters did not run at the same time"

    # the first chapter fails while the second runs: the failure is raised, the second is still executed
    _write_notebook(fake_book / "chapters" / "01_a.ipynb", [("profile = 'demo'", ["parameters"]), ("1 / 0", [])])
    executed = fake_book / "book" / "_build" / "smoke" / "src" / "chapters"
    (executed / "02_b.ipynb").unlink()
    with pytest.raises(ChapterFailed, match=r"01_a failed at code cell 2 \('1 / 0'\): ZeroDivisionError"):
        bookrunner.run_chapters("smoke", verbose=False, jobs=2)
    assert (executed / "02_b.ipynb").exists() and (executed / "01_a.failed.ipynb").exists()
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        bookrunner.run_chapters("smoke", verbose=False, jobs=0)


@pytest.mark.slow
def test_a_cell_past_its_limit_runs_the_chapter_once_more(fake_book, monkeypatch, capsys):
    monkeypatch.setitem(bookrunner.CELL_TIMEOUT_S, "smoke", 3)
    stalls_once = ("import os, time\nif not os.path.exists('stalled'):\n    open('stalled', 'w').close()\n"
                   "    time.sleep(30)\nprint('b done')")
    _write_notebook(fake_book / "chapters" / "02_b.ipynb", [("profile = 'demo'", ["parameters"]), (stalls_once, [])])
    timings = bookrunner.run_chapters("smoke", verbose=False)
    assert not timings["02_b"]["reused"] and "running the chapter once more" in capsys.readouterr().err
    executed = fake_book / "book" / "_build" / "smoke" / "src" / "chapters" / "02_b.ipynb"
    assert "b done" in executed.read_text()

    stalls = "import time\ntime.sleep(30)"  # twice past the limit: the chapter fails, and says where
    _write_notebook(fake_book / "chapters" / "02_b.ipynb", [("profile = 'demo'", ["parameters"]), (stalls, [])])
    with pytest.raises(ChapterFailed, match="02_b failed at code cell 2"):
        bookrunner.run_chapters("smoke", verbose=False)


PROVENANCE_RECORD = {
    "profile": "smoke", "profile_description": "tiny", "dataset": "synthbirds", "extra_datasets": [],
    "backbone": "tiny_vit_test", "backbone_weights": "random weights", "seeds": [0], "git_commit": "abc1234",
    "device": "cpu", "python": "3.11", "finished": "2026-11-22T00:00:00+00:00",
    "chapters": {"01_a": {"seconds": 1.5, "reused": False}, "02_b": {"seconds": 2.0, "reused": True}},
    "packages": {"torch": "2.14.1"},
}


def test_provenance_page_lists_the_run():
    md = provenance_markdown(PROVENANCE_RECORD)
    assert "| profile | `smoke`: tiny |" in md
    assert "| **total** | 3.5 | |" in md
    assert "| 02_b | 2.0 | reused from an earlier run |" in md
    assert "| torch | 2.14.1 |" in md


# ---------------------------------------------------------------------------------------------- re-run key and -p
def _key(fake_book, parameters):
    chapter = bookrunner.chapters()[0]
    return bookrunner._run_key(chapter, parameters, bookrunner._code_fingerprint())


def test_run_key_changes_with_each_parameter_and_cell(fake_book):
    base = {"profile": "smoke", "n": 1, "seeds": [0, 1], "flag": True, "name": "a"}
    variants = [base | {"profile": "demo"}, base | {"n": 2}, base | {"n": 1.0}, base | {"seeds": [1, 0]},
                base | {"seeds": [0]}, base | {"flag": False}, base | {"flag": 1}, base | {"name": "b"},
                base | {"name": None}, {k: v for k, v in base.items() if k != "name"}, base | {"extra": 0}]
    keys = {_key(fake_book, base)} | {_key(fake_book, v) for v in variants}
    assert len(keys) == 1 + len(variants)
    assert _key(fake_book, dict(reversed(list(base.items())))) == _key(fake_book, base)  # order does not matter
    nb = fake_book / "chapters" / "01_a.ipynb"
    before = _key(fake_book, base)
    cells = json.loads(nb.read_text())
    cells["cells"][0]["metadata"]["tags"] = []  # the parameters tag decides where papermill injects
    nb.write_text(json.dumps(cells))
    assert _key(fake_book, base) != before


def test_run_key_changes_with_each_byte_of_library_code(fake_book):
    lib = fake_book / "qpmlib"
    (lib / "a.py").write_bytes(b"x = 1\ny = 'two'\n")
    (lib / "b.py").write_bytes(b"z = 3\n")
    base = bookrunner._code_fingerprint()
    seen = {base}
    original = (lib / "a.py").read_bytes()
    for i in range(len(original)):  # every byte of a.py, one bit flipped
        (lib / "a.py").write_bytes(original[:i] + bytes([original[i] ^ 1]) + original[i + 1:])
        seen.add(bookrunner._code_fingerprint())
    assert len(seen) == 1 + len(original)
    (lib / "a.py").write_bytes(original)
    assert bookrunner._code_fingerprint() == base
    # a byte moved across a file boundary, a renamed file, a new data file, a sub-package, the requirements
    (lib / "a.py").write_bytes(original[:-1])
    (lib / "b.py").write_bytes(original[-1:] + b"z = 3\n")
    changes = [bookrunner._code_fingerprint()]
    (lib / "a.py").write_bytes(original)
    (lib / "b.py").write_bytes(b"z = 3\n")
    (lib / "b.py").rename(lib / "c.py")
    changes.append(bookrunner._code_fingerprint())
    (lib / "c.py").rename(lib / "b.py")
    (lib / "table.json").write_text("{}")
    changes.append(bookrunner._code_fingerprint())
    (lib / "table.json").unlink()
    (lib / "sub").mkdir()
    (lib / "sub" / "m.py").write_text("")
    changes.append(bookrunner._code_fingerprint())
    (lib / "sub" / "m.py").unlink()
    (lib / "sub" / "__pycache__").mkdir()
    (lib / "sub" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\x00")
    assert bookrunner._code_fingerprint() == base  # compiled caches do not count
    (fake_book / "requirements.txt").write_text("torch==2.14.1\n")
    changes.append(bookrunner._code_fingerprint())
    assert len(set(changes) | {base}) == len(changes) + 1


def test_failing_cell_is_counted_as_in_the_source_notebook(tmp_path):
    executed = _write_notebook(tmp_path / "x.ipynb", [("profile = 'demo'", ["parameters"]),
                                                      ("profile = 'smoke'", ["injected-parameters"]),
                                                      ("import math", []), ("1 / 0", [])])
    nb = json.loads(executed.read_text())
    nb["cells"].insert(3, {"cell_type": "markdown", "metadata": {}, "source": "text"})
    nb["cells"][4]["outputs"] = [{"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero",
                                  "traceback": []}]
    executed.write_text(json.dumps(nb))
    assert bookrunner._failing_cell(executed) == "code cell 3 ('1 / 0'): ZeroDivisionError: division by zero"
    nb["cells"][1]["outputs"] = [{"output_type": "error", "ename": "NameError", "evalue": "x", "traceback": []}]
    executed.write_text(json.dumps(nb))
    assert bookrunner._failing_cell(executed).startswith("the injected parameters cell (after code cell 1)")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-p", "seeds", "[0, 1"], r"-p seeds '\[0, 1': the value is not valid YAML"),
        (["-p", "when", "2001-12-14"], r"-p when '2001-12-14': YAML reads this as date"),
        (["-p", "n", "1", "-p", "n", "2"], r"parameter 'n' is given twice"),
        (["--chapters"], r"--chapters needs at least one chapter name; valid chapters: 01_a, 02_b"),
        (["-p", "profile", "demo"], r"--profile smoke and -p profile demo disagree"),
        (["-p", "profile", "nope"], r"valid profiles"),
    ],
)
def test_command_line_errors_are_one_clear_line(fake_book, capsys, argv, message):
    argv = ["run"] + (["--profile", "smoke"] if "nope" not in argv else []) + argv
    assert bookrunner.main(argv) == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and err.startswith("[book] error:") and "Traceback" not in err
    assert not (fake_book / "book" / "_build").exists()  # nothing ran


def test_empty_chapter_list_is_an_error_in_the_api_too():
    with pytest.raises(ValueError, match="no chapter names given"):
        select_chapters([], chapters())
    assert select_chapters(None, chapters()) == chapters()


@pytest.mark.slow
def test_parameters_reach_the_executed_notebook_and_a_change_re_executes(fake_book):
    _write_notebook(fake_book / "chapters" / "01_a.ipynb",
                    [("profile = 'demo'\nseeds = (0,)\nscale = 1.0", ["parameters"]),
                     ("print('seeds', list(seeds), 'scale', scale * 2, profile)", [])])
    argv = ["run", "--profile", "smoke", "--chapters", "01_a", "-p", "seeds", "[3, 4]", "-p", "scale", "2.5"]
    assert bookrunner.main(argv) == 0
    executed = fake_book / "book" / "_build" / "smoke" / "src" / "chapters" / "01_a.ipynb"
    cells = json.loads(executed.read_text())["cells"]
    outputs = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
    assert "seeds [3, 4] scale 5.0 smoke" in outputs
    assert bookrunner.run_chapters("smoke", ["01_a"], extra_parameters={"seeds": [3, 4], "scale": 2.5},
                                   verbose=False)["01_a"]["reused"]
    assert not bookrunner.run_chapters("smoke", ["01_a"], extra_parameters={"seeds": [3, 4], "scale": 2.0},
                                       verbose=False)["01_a"]["reused"]
    assert not (fake_book / "book" / "_build" / "smoke" / "src" / "chapters" / "02_b.ipynb").exists()


def test_selected_chapters_keep_the_toc_order(fake_book):
    available = chapters()
    assert [c.name for c in select_chapters(["b", "01_a"], available)] == ["01_a", "02_b"]
    assert [c.name for c in select_chapters(["02_b", "02_b"], available)] == ["02_b"]


def test_a_book_run_holds_the_profile_lock_while_it_executes(fake_book, monkeypatch):
    import contextlib

    events = []

    @contextlib.contextmanager
    def recording_lock(path, what=""):
        events.append(("lock", path))
        yield
        events.append(("unlock", path))

    monkeypatch.setattr(bookrunner, "file_lock", recording_lock)
    monkeypatch.setattr(bookrunner, "_execute", lambda *a, **k: events.append(("execute",)) or {})
    bookrunner.run_chapters("smoke", verbose=False)
    lock = fake_book / "book" / "_build" / "smoke" / ".run.lock"
    assert events == [("lock", lock), ("execute",), ("unlock", lock)]


def test_widget_state_is_dropped_only_when_no_widget_is_shown():
    view = {"output_type": "display_data", "data": {bookrunner.WIDGET_VIEW: {"model_id": "m"}}}

    def nb(tags):
        return {"cells": [{"cell_type": "markdown", "source": ""},
                          {"cell_type": "code", "metadata": {"tags": tags}, "outputs": [view]}],
                "metadata": {"widgets": {"state": {"m": {}}}}}

    for hidden in (["remove-output"], ["remove-cell", "x"]):
        assert "widgets" not in bookrunner.drop_hidden_widget_state(nb(hidden))["metadata"]
    for shown in ([], ["remove-input"]):
        assert "widgets" in bookrunner.drop_hidden_widget_state(nb(shown))["metadata"]


def test_widget_manager_is_staged_only_when_a_chapter_keeps_widget_state(fake_book, monkeypatch):
    vendor = fake_book / "vendor"
    for rel in bookrunner.VENDOR_FILES.values():
        (vendor / rel).parent.mkdir(parents=True, exist_ok=True)
        (vendor / rel).write_text("/* js */")
    (vendor / ".complete-1").touch()
    monkeypatch.setattr(bookrunner, "VENDOR_DIR", vendor)
    (fake_book / "_config.yml").write_text("title: t\n")
    (fake_book / "book").mkdir()
    (fake_book / "book" / "index.md").write_text("# t\n")
    out = fake_book / "book" / "_build" / "smoke"
    (out / "src" / "chapters").mkdir(parents=True)
    for name in ("01_a", "02_b"):
        (out / "src" / "chapters" / f"{name}.ipynb").write_text((fake_book / "chapters" / f"{name}.ipynb").read_text())
    (out / "run.json").write_text(json.dumps(PROVENANCE_RECORD))
    stale = out / "_build" / "html" / "_static" / "vendor" / "html-manager" / "dist" / "embed-amd.js"
    stale.parent.mkdir(parents=True)
    stale.write_text("/* an earlier build's */")

    staged = bookrunner.stage_book("smoke") / "_vendor" / "vendor"
    assert (staged / "plotly" / "plotly.min.js").exists() and (staged / "mathjax" / "es5" / "tex-chtml.js").exists()
    assert not (staged / "html-manager").exists() and not (staged / "require.js").exists()
    assert not stale.parent.parent.exists(), "an earlier build's widget manager stays in the HTML"

    executed = out / "src" / "chapters" / "02_b.ipynb"
    nb = json.loads(executed.read_text())
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"m": {}}}}
    executed.write_text(json.dumps(nb))
    staged = bookrunner.stage_book("smoke") / "_vendor" / "vendor"
    assert all((staged / rel).exists() for rel in bookrunner.VENDOR_FILES.values())


def test_plotly_figures_are_dropped_only_beside_html():
    twin = {"output_type": "display_data", "data": {bookrunner.PLOTLY_MIME: {"data": []}, "text/html": "<div>"}}
    alone = {"output_type": "display_data", "data": {bookrunner.PLOTLY_MIME: {"data": []}}}
    nb = {"cells": [{"cell_type": "markdown", "source": ""},
                    {"cell_type": "code", "outputs": [twin, alone, {"output_type": "stream", "text": "x"}]}]}
    outputs = bookrunner.drop_plotly_figures(nb)["cells"][1]["outputs"]
    assert outputs[0]["data"] == {"text/html": "<div>"}
    assert bookrunner.PLOTLY_MIME in outputs[1]["data"]  # nothing else would show it


def test_run_note_opens_each_executed_chapter_once():
    nb = {"cells": [{"cell_type": "markdown", "source": "# Title"}, {"cell_type": "code", "source": "x = 1"}]}
    for _ in range(2):  # a second pass replaces the note instead of adding another
        bookrunner.add_run_note(nb, "02_main_results", "smoke")
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "markdown", "code"]
    note = nb["cells"][1]["source"]
    assert "executed on the `smoke` profile" in note
    assert "--chapters 02_main_results" in note and all(f"`{p}`" in note for p in PROFILES)
