"""Console progress while a chapter runs: the running cell, reminders, the kernel's tqdm lines, and failures."""

from __future__ import annotations

import io
import json
import re

import pytest

from qpmlib.book import runner as bookrunner
from qpmlib.book.progress import ChapterProgress, ProgressLines, format_seconds, running_cell

from tests.test_runner import _write_notebook, fake_book  # noqa: F401  (fixture)


def _nb(statuses: list[str | None], tags: list[list[str]] | None = None) -> dict:
    tags = tags or [[] for _ in statuses]
    return {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# title"},
        *({"cell_type": "code", "source": [f"\n  x{i} = {i}\n", "y = 2\n"],
           "metadata": {"tags": t, **({"papermill": {"status": s}} if s else {})}}
          for i, (s, t) in enumerate(zip(statuses, tags))),
    ]}


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.4, 60, 75, 3599, 3600, 3725)] == [
        "0 s", "59 s", "1 min 00 s", "1 min 15 s", "59 min 59 s", "1 h 00 min", "1 h 02 min"]


def test_running_cell_counts_code_cells_without_the_injected_one():
    nb = _nb(["completed", None, "running", "pending"], [["parameters"], ["injected-parameters"], [], []])
    assert running_cell(nb) == (2, 3, "x2 = 2")
    assert running_cell(_nb(["completed", "completed"])) is None
    assert running_cell({}) is None


def test_progress_lines_turn_carriage_returns_into_prefixed_lines():
    out = io.StringIO()
    lines = ProgressLines("> ", out)
    lines.write("epochs:  10%|#  | 1/10\repochs:  20%|## ")
    lines.write("| 2/10\r")
    lines.write("\r\nwarning: x\n\n   \n")
    lines.write("tail without newline")
    assert out.getvalue() == "> epochs:  10%|#  | 1/10\n> epochs:  20%|## | 2/10\n> warning: x\n"
    lines.flush()
    assert out.getvalue().endswith("> tail without newline\n")
    lines.flush()  # nothing pending: nothing more
    assert out.getvalue().count("tail") == 1


def test_chapter_progress_announces_cells_and_reminds_while_one_runs(tmp_path):
    path = tmp_path / "partial.ipynb"
    out = io.StringIO()
    progress = ChapterProgress("02_x", path, every=30, out=out)
    state = {"since": 0.0, "said": 0.0}
    progress.check(1.0, state)  # the file does not exist yet
    assert out.getvalue() == ""
    path.write_text(json.dumps(_nb(["running", "pending"])))
    progress.check(2.0, state)
    progress.check(20.0, state)  # same cell, file unchanged, < every: silent
    progress.check(33.0, state)  # a reminder, even though papermill did not rewrite the file
    path.write_text("{ half written")  # caught mid-write: ignored, the running cell is remembered
    progress.check(40.0, state)
    path.write_text(json.dumps(_nb(["completed", "running"])))
    progress.check(41.0, state)
    progress.check(100.0, state)
    assert out.getvalue().splitlines() == [
        "[book] 02_x: cell 1 of 2: x0 = 0",
        "[book] 02_x: cell 1 of 2 still running (31 s)",
        "[book] 02_x: cell 2 of 2: x1 = 1",
        "[book] 02_x: cell 2 of 2 still running (59 s)",
    ]


def test_chapter_progress_stops_its_thread_and_flushes_when_the_body_raises(tmp_path):
    out = io.StringIO()
    with pytest.raises(RuntimeError, match="kernel died"):
        with ChapterProgress("01_a", tmp_path / "none.ipynb", poll=0.01, out=out) as progress:
            progress.stream.write("stage 3/5")
            raise RuntimeError("kernel died")
    assert not progress._thread.is_alive()
    assert out.getvalue() == "[book] 01_a | stage 3/5\n"


@pytest.mark.slow
def test_book_run_prints_cells_and_kernel_progress_and_stops_cleanly_on_failure(fake_book, capsys):  # noqa: F811
    _write_notebook(fake_book / "chapters" / "01_a.ipynb", [
        ("profile = 'demo'", ["parameters"]),
        ("import time\nfrom tqdm import tqdm\nfor _ in tqdm(range(3), desc='stage', mininterval=0):\n"
         "    time.sleep(0.1)", []),
        ("time.sleep(3)", []),
    ])
    _write_notebook(fake_book / "chapters" / "02_b.ipynb", [("profile = 'demo'", ["parameters"]),
                                                            ("import time; time.sleep(3); 1 / 0", [])])
    with pytest.raises(bookrunner.ChapterFailed, match="02_b failed at code cell 2"):
        bookrunner.run_chapters("smoke", verbose=True)
    out = capsys.readouterr().out
    assert "[book] 01_a | stage: 100%" in out, out  # tqdm's bar, forwarded from the kernel's stderr
    # cells counted as in the source notebook (the parameters cell is cell 1), as ChapterFailed counts them
    assert re.search(r"\[book\] 01_a: cell 3 of 3: time.sleep\(3\)", out), out
    assert "[book] 01_a: done in" in out
    assert re.search(r"\[book\] 02_b: cell 2 of 2: import time; time.sleep\(3\); 1 / 0", out), out
    assert "02_b: done" not in out
    import threading
    assert not [t for t in threading.enumerate() if t.name.startswith("progress ")], "a watcher thread was left"
