"""What the console shows while papermill executes a chapter: the running cell, its age, and its own progress.

Two of papermill's own mechanisms carry it:

* papermill saves the output notebook when a cell starts (and every 30 s while it runs), with
  ``metadata.papermill.status == "running"`` on the running cell; a watcher thread reads that file and prints
  ``cell 7 of 22 (records = tables.table1_records(...))`` when the cell changes, then a reminder with the time
  spent every ``every`` seconds;
* ``papermill.execute_notebook(stderr_file=...)`` forwards the kernel's stderr as it arrives: the library's tqdm
  bars (embedding extraction, dense and fine-tune epochs, the QP solver's rounds, the runs of a sweep) write
  there, one update per ``TQDM_MININTERVAL`` seconds, which :class:`ProgressLines` turns into whole lines.

    with ChapterProgress("02_main_results", partial_path) as progress:
        papermill.execute_notebook(..., stderr_file=progress.stream)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

__all__ = ["running_cell", "ProgressLines", "ChapterProgress", "format_seconds"]

#: Tag papermill gives the cell of injected parameters (not counted, as in the runner's error messages).
INJECTED_TAG = "injected-parameters"


def format_seconds(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``, ``3725`` -> ``"1 h 02 min"``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def running_cell(nb: dict) -> tuple[int, int, str] | None:
    """The code cell papermill marks as running in a partly executed notebook.

    Args:
        nb: the notebook as papermill last saved it (a dict read from JSON).

    Returns:
        (its number among the code cells, counted from 1, the injected parameters cell left out; how many code
        cells there are; its first non-empty line), or None when no cell is running.
    """
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"
            and INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    for number, cell in enumerate(code, start=1):
        if cell.get("metadata", {}).get("papermill", {}).get("status") == "running":
            source = "".join(cell.get("source", ""))
            first = next((line.strip() for line in source.splitlines() if line.strip()), "")
            return number, len(code), first
    return None


class ProgressLines:
    """A text stream that prints what is written to it as whole, prefixed lines.

    tqdm redraws its bar with a carriage return; on a terminal that overwrites the line, in a log file it would
    pile every update onto one line. Here each update becomes a line of its own.
    """

    def __init__(self, prefix: str, out: TextIO | None = None, lock: threading.Lock | None = None):
        self.prefix = prefix
        self.out = out or sys.stdout
        self.lock = lock or threading.Lock()
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._pending = self._pending.split("\n")
        with self.lock:
            for line in lines:
                if line.strip():
                    self.out.write(f"{self.prefix}{line.rstrip()}\n")
            self.out.flush()
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self.write("\n")
        self._pending = ""


class ChapterProgress:
    """Watch one papermill execution and report it on the console (a context manager).

    Args:
        name: the chapter's name, in every line.
        notebook: the output notebook papermill writes.
        every: seconds between reminders while one cell runs.
        poll: seconds between reads of the output notebook.
        out: where to print (default stdout).
    """

    def __init__(self, name: str, notebook: Path, *, every: float = 30.0, poll: float = 0.5,
                 out: TextIO | None = None):
        self.name, self.notebook, self.every, self.poll = name, Path(notebook), every, poll
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.stream = ProgressLines(f"[book] {name} | ", self.out, self.lock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"progress {name}", daemon=True)
        self._mtime: tuple[int, int] | None = None
        self._cell: tuple[int, int, str] | None = None

    def _say(self, text: str) -> None:
        with self.lock:
            self.out.write(f"[book] {self.name}: {text}\n")
            self.out.flush()

    def _read(self) -> dict | None:
        try:
            stat = self.notebook.stat()
            mtime = (stat.st_mtime_ns, stat.st_size)  # the size too: two writes can share a coarse mtime
            if mtime == self._mtime:
                return None
            nb = json.loads(self.notebook.read_text())
        except (OSError, ValueError):  # not written yet, or caught while papermill rewrites it
            return None
        self._mtime = mtime
        return nb

    def check(self, now: float, state: dict) -> None:
        """One poll: announce a newly started cell, or remind of the running one every ``every`` seconds."""
        nb = self._read()
        cell = running_cell(nb) if nb is not None else self._cell
        if cell is not None and cell != self._cell:
            number, total, first = cell
            self._say(f"cell {number} of {total}: {first[:90]}")
            state["since"] = state["said"] = now
        elif cell is not None and now - state["said"] >= self.every:
            self._say(f"cell {cell[0]} of {cell[1]} still running ({format_seconds(now - state['since'])})")
            state["said"] = now
        self._cell = cell

    def _watch(self) -> None:
        state = {"since": time.monotonic(), "said": time.monotonic()}
        while not self._stop.wait(self.poll):
            self.check(time.monotonic(), state)

    def __enter__(self) -> ChapterProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.stream.flush()
