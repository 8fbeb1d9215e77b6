"""Run the book: papermill executes every chapter of ``_toc.yml`` in order, Jupyter Book renders the result.

Command line (what ``make book`` and ``make test`` call)::

    python -m qpmlib.book.runner run   --profile demo [--chapters 01_introduction ...] [--force] [--jobs 2]
    python -m qpmlib.book.runner build --profile demo
    python -m qpmlib.book.runner all   --profile demo          # run, then build

Layout of one profile's build, ``book/_build/<profile>/``::

    src/                  staged book source: _config.yml, _toc.yml, book/*.md, executed chapters/*.ipynb
    src/_vendor/vendor/   MathJax and plotly.js, served locally (offline HTML); require.js and the widget manager
                          only when some chapter shows a live ipywidget (none does: each has a static twin)
    run.json              provenance of the run (profile, versions, commit, device, per-chapter times)
    _build/html/          the rendered book (index.html)

A chapter is re-executed only when its source notebook, its parameters, the library code or the pinned
requirements changed (the key is stored in the executed copy's metadata), so running twice does no work twice.
A failing chapter stops the run with its name and the failing cell; executed copies of earlier chapters stay.
``--jobs N`` executes up to N chapters at once (started in ``_toc.yml`` order; ``make book`` uses 2).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from qpmlib import backbones
from qpmlib.book.kernel import RunnerKernelManager
from qpmlib.book.progress import ChapterProgress
from qpmlib.config import PROFILES, get_profile
from qpmlib.figures.switch import PLOTLY_MIME
from qpmlib.files import atomic_write, file_lock
from qpmlib.paths import REPO_ROOT
from qpmlib.runs.checks import check_ready
from qpmlib.runs.provenance import device_label, git_commit, package_versions

__all__ = [
    "Chapter",
    "ChapterFailed",
    "toc_entries",
    "chapters",
    "select_chapters",
    "parameters_cell_names",
    "check_parameters",
    "run_chapters",
    "stage_book",
    "build_book",
    "provenance_markdown",
    "build_dir",
    "parse_parameters",
    "drop_hidden_widget_state",
    "keeps_widget_state",
    "drop_plotly_figures",
    "run_note",
    "add_run_note",
    "main",
]

KEY_METADATA = "qpmlib_run_key"
#: Tag papermill gives the cell of injected parameters.
INJECTED_TAG = "injected-parameters"
#: Types a ``-p`` value may have after YAML parsing (what papermill writes back as a Python literal).
PARAMETER_TYPES = (str, int, float, bool, type(None), list, dict)
#: Longest a single cell may run before papermill stops the chapter (None: no limit, for GPU-length training).
CELL_TIMEOUT_S = {"smoke": 300, "demo": 3600, "paper": None}
VENDOR_DIR = REPO_ROOT / "book" / "_vendor"
#: Packages from the npm registry that make the HTML render offline, and the file each provides.
VENDOR_FILES = {
    "mathjax": "mathjax/es5/tex-chtml.js",
    "requirejs": "require.js",
    "html-manager": "html-manager/dist/embed-amd.js",
    "plotly": "plotly/plotly.min.js",
}
#: The vendored packages that only a page showing a live ipywidget loads (myst-nb adds them to a page whose
#: notebook keeps widget state): staged only when some executed chapter keeps it (see drop_hidden_widget_state).
WIDGET_VENDOR = ("requirejs", "html-manager")
PACKAGES_IN_PROVENANCE = (
    "torch", "torchvision", "timm", "numpy", "scipy", "pandas", "scikit-learn", "schedulefree",
    "gurobipy", "jupyter-book", "myst-nb", "papermill", "ipywidgets", "nbval", "matplotlib", "seaborn",
)


class ChapterFailed(RuntimeError):
    """A chapter raised while papermill executed it."""


@dataclass(frozen=True)
class Chapter:
    """One notebook listed in ``_toc.yml``."""

    name: str  # file stem, e.g. "01_introduction"
    source: Path  # chapters/<name>.ipynb in the repository


def build_dir(profile: str) -> Path:
    """Folder that holds one profile's staged source, run record and HTML."""
    return REPO_ROOT / "book" / "_build" / profile


def toc_entries(toc_file: Path | None = None) -> list[str]:
    """Every ``file:`` entry of a Jupyter Book ``_toc.yml`` (default: the repository's), root first, in order."""
    toc = yaml.safe_load((toc_file or REPO_ROOT / "_toc.yml").read_text())
    found = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({k: v for k, v in toc.items() if k != "root"})
    return found


def chapters(toc_file: Path | None = None) -> list[Chapter]:
    """The chapter notebooks of ``_toc.yml`` in order (entries under ``chapters/``)."""
    toc_file = toc_file or REPO_ROOT / "_toc.yml"
    out = []
    for entry in toc_entries(toc_file):
        if entry.startswith("chapters/"):
            source = toc_file.parent / f"{entry}.ipynb"
            if not source.exists():
                raise FileNotFoundError(f"_toc.yml lists {entry} but {source} does not exist")
            out.append(Chapter(name=source.stem, source=source))
    return out


def select_chapters(names: list[str] | None, available: list[Chapter]) -> list[Chapter]:
    """Chapters whose name (or name without the number prefix) is in ``names``, in ``_toc.yml`` order.

    ``names=None`` selects every chapter; an empty list is an error (a ``--chapters`` without names).

    Raises:
        ValueError: for an unknown name or an empty list; the message lists the valid ones.
    """
    if names is None:
        return list(available)
    if not names:
        raise ValueError("no chapter names given; valid chapters: " + ", ".join(c.name for c in available))
    by_name = {c.name: c for c in available}
    by_name.update({c.name.split("_", 1)[-1]: c for c in available})
    unknown = [n for n in names if n not in by_name]
    if unknown:
        valid = ", ".join(c.name for c in available)
        raise ValueError(f"unknown chapter(s) {', '.join(unknown)}; valid chapters: {valid}")
    wanted = {by_name[n].name for n in names}
    return [c for c in available if c.name in wanted]


def _notebook(path: Path) -> dict:
    return json.loads(path.read_text())


def parameters_cell_names(notebook: Path) -> set[str]:
    """Names assigned in the cell tagged ``parameters``.

    Raises:
        ValueError: when the notebook has no ``parameters`` cell.
    """
    for cell in _notebook(notebook)["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            names = set()
            for node in ast.walk(tree):
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))
            return names
    raise ValueError(f"{notebook} has no cell tagged 'parameters'")


def check_parameters(notebook: Path, parameters: dict) -> None:
    """Refuse parameters the notebook does not declare: papermill would inject them silently.

    Raises:
        ValueError: naming the unknown parameters and the ones the notebook declares.
    """
    declared = parameters_cell_names(notebook)
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise ValueError(
            f"{notebook.name} does not read parameter(s) {', '.join(unknown)}; "
            f"its parameters cell declares: {', '.join(sorted(declared))}"
        )


def _code_fingerprint() -> str:
    """Hash of the library's files and the pinned requirements (a change of any byte re-executes the chapters).

    Every file under ``qpmlib/`` counts (compiled caches excepted), each as its path, its length and its bytes,
    so that no two different trees give the same sequence of bytes.
    """
    h = hashlib.sha256()
    library = sorted(f for f in (REPO_ROOT / "qpmlib").rglob("*")
                     if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo"))
    for f in library + [REPO_ROOT / "requirements.txt"]:
        data = f.read_bytes() if f.exists() else b""
        name = f.relative_to(REPO_ROOT).as_posix().encode()
        h.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _run_key(chapter: Chapter, parameters: dict, code: str) -> str:
    """What an executed copy depends on: each cell's type, tags and source, the parameters and the library."""
    nb = _notebook(chapter.source)
    cells = [(c["cell_type"], c.get("metadata", {}).get("tags", []), "".join(c["source"])) for c in nb["cells"]]
    blob = json.dumps({"cells": cells, "parameters": parameters, "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _executed_key(path: Path) -> str | None:
    try:
        return _notebook(path)["metadata"].get(KEY_METADATA)
    except (OSError, ValueError, KeyError):
        return None


#: Cell tags that keep a cell's outputs out of the rendered book.
HIDDEN_OUTPUT_TAGS = {"remove-output", "remove-cell"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def drop_hidden_widget_state(nb: dict) -> dict:
    """Remove the saved widget state of an executed notebook whose widgets the book does not show.

    A chapter's live ipywidgets are tagged ``remove-output`` (the book shows their static twins instead); their
    saved state would still be embedded in the page, with every picture it holds, and make the page load the
    widget manager for nothing. The state stays when any widget view is shown.

    Returns:
        ``nb`` itself, changed in place.
    """
    shown = any(
        WIDGET_VIEW in out.get("data", {})
        for cell in nb.get("cells", []) if cell.get("cell_type") == "code"
        and not HIDDEN_OUTPUT_TAGS & set(cell.get("metadata", {}).get("tags", []))
        for out in cell.get("outputs", [])
    )
    if not shown:
        nb.get("metadata", {}).pop("widgets", None)
    return nb


def keeps_widget_state(nb: dict) -> bool:
    """Whether an executed notebook keeps saved widget state, so that its page loads the widget manager."""
    return bool(nb.get("metadata", {}).get("widgets"))


def run_note(chapter: str, profile: str) -> str:
    """The lines that open an executed chapter in the book: which profile ran it, and how to run it yourself."""
    others = ", ".join(f"`{p}`" for p in PROFILES)
    return (
        f"> **Run it yourself.** This page was executed on the `{profile}` profile. Download its notebook (the ⤓ "
        f"button at the top of the page), set `profile` in its first code cell ({others}) and run it in Jupyter; "
        f"or, in a clone of the repository, run `python -m qpmlib.book.runner run --profile demo --chapters "
        f"{chapter}` (this chapter) or `make book PROFILE=demo` (the whole book)."
    )


def add_run_note(nb: dict, chapter: str, profile: str) -> dict:
    """Insert :func:`run_note` as a Markdown cell after the chapter's first cell (its title and introduction).

    Returns:
        ``nb`` itself, changed in place.
    """
    cell = {"cell_type": "markdown", "metadata": {"tags": ["qpmlib-run-note"]}, "source": run_note(chapter, profile),
            "id": "qpmlib-run-note"}
    nb["cells"] = [c for c in nb["cells"] if c.get("id") != cell["id"]]
    nb["cells"].insert(min(1, len(nb["cells"])), cell)
    return nb


def drop_plotly_figures(nb: dict) -> dict:
    """Remove the Plotly figures of an executed notebook's outputs that also hold HTML.

    A static twin's output holds its pictures twice: as the Plotly figure JupyterLab draws and in the HTML the
    book draws (with the book's own plotly.js). The book needs the HTML only; the figure would double the size
    of the page's downloadable notebook, and Sphinx has no renderer for it. Running the notebook brings it back.

    Returns:
        ``nb`` itself, changed in place.
    """
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY_MIME in data and "text/html" in data:
                del data[PLOTLY_MIME]
    return nb


def _failing_cell(nb_path: Path) -> str:
    """Describe the first cell of an executed notebook that holds an error output.

    Code cells are counted as in the source notebook: the cell papermill injects after the parameters cell
    (tagged ``injected-parameters``) is not counted, unless it is the one that failed.
    """
    try:
        nb = _notebook(nb_path)
    except (OSError, ValueError):
        return "unknown cell"
    code_index = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        if INJECTED_TAG in cell.get("metadata", {}).get("tags", []):
            if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
                return f"the injected parameters cell (after code cell {code_index}): " + _error_text(cell)
            continue
        code_index += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = "".join(cell["source"]).strip().splitlines()
                head = first[0] if first else ""
                return f"code cell {code_index} ({head!r}): {out.get('ename')}: {out.get('evalue')}"
    return "unknown cell"


def _error_text(cell: dict) -> str:
    out = next(o for o in cell.get("outputs", []) if o.get("output_type") == "error")
    return f"{out.get('ename')}: {out.get('evalue')}"


def run_chapters(
    profile: str,
    names: list[str] | None = None,
    *,
    force: bool = False,
    extra_parameters: dict | None = None,
    verbose: bool = True,
    jobs: int = 1,
) -> dict[str, dict]:
    """Execute chapters with papermill, in ``_toc.yml`` order, into ``build_dir(profile)/src/chapters``.

    With ``jobs`` > 1, chapters still start in ``_toc.yml`` order, but up to ``jobs`` kernels run at once. Each
    chapter reads its runs from the results store (``make runs`` computes them all first; two chapters asking
    for one run compute it once), so the order never changes a number, and one chapter's kernel is mostly
    single-threaded: on 2 cores two at a time take about half the time.

    Args:
        profile: profile name injected as the ``profile`` parameter.
        names: subset of chapters (all when None).
        force: re-execute even when the executed copy is up to date.
        extra_parameters: more papermill parameters; each must be declared by every selected chapter.
        verbose: print one line per chapter.
        jobs: chapters executed at once (at least 1).

    Returns:
        ``{chapter name: {"seconds": float, "reused": bool}}`` in ``_toc.yml`` order.

    Raises:
        ValueError: unknown profile, chapter or parameter (the message lists valid ones), or ``jobs`` < 1.
        ChapterFailed: a chapter raised; names the chapter and the failing cell. Chapters that had not started
            are skipped, running ones finish; the first failing chapter in ``_toc.yml`` order is raised.
    """
    prof = get_profile(profile)  # validates the name
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1 (chapters executed at once), got {jobs}")
    # a GPU profile without CUDA, missing real data or weights stop here, before the first chapter
    check_ready(prof, backbones=prof.sweeps.backbones)
    selected = select_chapters(names, chapters())
    parameters = {"profile": profile, **(extra_parameters or {})}
    for chapter in selected:
        check_parameters(chapter.source, parameters)
    # a second run of the same profile waits, then finds the chapters the first one executed up to date
    with file_lock(build_dir(profile) / ".run.lock", what=f"a book run of profile {profile!r}"):
        return _execute(profile, selected, parameters, force=force, verbose=verbose, jobs=jobs)


def _execute(profile: str, selected: list[Chapter], parameters: dict, *, force: bool, verbose: bool,
             jobs: int) -> dict:
    """The chapter loop of :func:`run_chapters`, run while this process holds the profile's build lock."""
    out_dir = build_dir(profile) / "src" / "chapters"
    out_dir.mkdir(parents=True, exist_ok=True)
    code = _code_fingerprint()
    timings: dict[str, dict] = {}
    env_backup = {k: os.environ.get(k) for k in ("QPMLIB_PROFILE", "PATH", "TQDM_MININTERVAL")}
    os.environ["QPMLIB_PROFILE"] = profile
    # Plain-text progress bars in executed notebooks: a few updates, not one line per refresh.
    os.environ.setdefault("TQDM_MININTERVAL", "30")
    # The "python3" kernel runs `python` from PATH: make that this interpreter (e.g. the book's .venv).
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

    def one(chapter: Chapter) -> dict:
        return _execute_chapter(chapter, out_dir / chapter.source.name, profile, parameters, code,
                                force=force, verbose=verbose)

    try:
        if jobs == 1:
            for chapter in selected:
                timings[chapter.name] = one(chapter)
        else:
            with concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="chapter") as pool:
                futures = {chapter.name: pool.submit(one, chapter) for chapter in selected}
                failed = None
                for name, future in futures.items():  # _toc.yml order
                    if failed is not None:
                        future.cancel()  # not started yet: skipped, as after a failure in a sequential run
                    try:
                        timings[name] = future.result()
                    except concurrent.futures.CancelledError:
                        pass
                    except ChapterFailed as exc:
                        failed = failed or exc
                if failed is not None:
                    raise failed
    finally:
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _record_run(profile, timings)
    return timings


def _execute_chapter(chapter: Chapter, target: Path, profile: str, parameters: dict, code: str, *, force: bool,
                     verbose: bool) -> dict:
    """Execute one chapter into ``target`` (or reuse it when up to date): ``{"seconds", "reused"}``.

    Raises:
        ChapterFailed: the chapter raised; ``target`` is left as it was and the failed copy is kept beside it.
    """
    import papermill

    key = _run_key(chapter, parameters, code)
    if not force and target.exists() and _executed_key(target) == key:
        if verbose:
            print(f"[book] {chapter.name}: up to date, reused", flush=True)
        return {"seconds": 0.0, "reused": True}
    if verbose:
        print(f"[book] {chapter.name}: executing on profile {profile!r} ...", flush=True)
    partial = target.with_suffix(".partial.ipynb")
    start = time.perf_counter()

    def execute() -> None:
        # the running cell and the kernel's progress bars on the console (qpmlib.book.progress)
        with ChapterProgress(chapter.name, partial) if verbose else contextlib.nullcontext() as progress:
            papermill.execute_notebook(
                str(chapter.source),
                str(partial),
                parameters=parameters,
                cwd=str(chapter.source.parent),
                kernel_name="python3",
                progress_bar=False,
                execution_timeout=CELL_TIMEOUT_S.get(profile),
                log_output=False,
                stderr_file=progress.stream if progress is not None else None,
                report_mode=False,
                kernel_manager_class=RunnerKernelManager,  # no reply waits unseen until the cell limit
            )

    try:
        try:
            execute()
        except TimeoutError:
            # a cell past its limit: on a loaded machine the client has been seen to wait for a reply that
            # an idle kernel never sends; every stage is stored, so a second run of the chapter is cheap
            print(f"[book] {chapter.name}: a cell ran past {CELL_TIMEOUT_S.get(profile)} s; running the "
                  "chapter once more (its stored runs are reused)", file=sys.stderr, flush=True)
            execute()
    except Exception as exc:  # a cell error, a cell timeout or a dead kernel all stop the run here
        failed = target.with_suffix(".failed.ipynb")
        if partial.exists():
            partial.replace(failed)
        where = _failing_cell(failed) if failed.exists() else "unknown cell"
        if where == "unknown cell":
            where = f"{where} ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        raise ChapterFailed(
            f"chapter {chapter.name} failed at {where}\n"
            f"  the executed notebook with the traceback is {failed}\n"
            f"  earlier chapters are kept; re-run with --chapters {chapter.name} after fixing"
        ) from exc
    seconds = time.perf_counter() - start
    nb = add_run_note(drop_plotly_figures(drop_hidden_widget_state(_notebook(partial))), chapter.name, profile)
    nb["metadata"][KEY_METADATA] = key
    nb["metadata"]["qpmlib_seconds"] = round(seconds, 2)
    atomic_write(target, json.dumps(nb, indent=1))
    partial.unlink()
    target.with_suffix(".failed.ipynb").unlink(missing_ok=True)
    if verbose:
        print(f"[book] {chapter.name}: done in {seconds:.1f} s", flush=True)
    return {"seconds": round(seconds, 2), "reused": False}


def _backbone_status(profile_name: str) -> str:
    """Whether the profile's backbone has pretrained weights here."""
    prof = get_profile(profile_name)
    try:
        if not backbones.pretrained_available(prof.backbone.name, prof.backbone.weights):
            return "random weights (no pretrained weights available)"
        if prof.backbone.name in backbones.standin_names():
            return "the project's stand-in, pretrained here on SynthBirds (weights/)"
        return "pretrained"
    except Exception as exc:  # the probe must never break the provenance page
        return f"unknown ({exc})"


def _record_run(profile: str, timings: dict[str, dict]) -> None:
    """Merge this run's timings into ``run.json`` (chapters not run now keep their earlier record)."""
    path = build_dir(profile) / "run.json"
    record = json.loads(path.read_text()) if path.exists() else {"chapters": {}}
    prof = get_profile(profile)
    record.update(
        {
            "profile": profile,
            "profile_description": prof.description,
            "dataset": prof.data.dataset,
            "extra_datasets": list(prof.extra_datasets),
            "backbone": prof.backbone.name,
            "backbone_weights": _backbone_status(profile),
            "seeds": list(prof.seeds),
            "git_commit": git_commit(mark_changes=True) or "unknown (not a git checkout)",
            "device": device_label(prof.train.device),
            "python": platform.python_version(),
            "packages": package_versions(PACKAGES_IN_PROVENANCE),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    for name, t in timings.items():
        if t["reused"] and name in record["chapters"]:
            continue
        record["chapters"][name] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, indent=2))


def provenance_markdown(record: dict) -> str:
    """The provenance page of the book, from a ``run.json`` record."""
    lines = [
        "# Provenance of this build",
        "",
        "Every number in this book was produced by the run described here. The chapters were executed by "
        "papermill in `_toc.yml` order; Jupyter Book only rendered them.",
        "",
        "| item | value |",
        "| --- | --- |",
        f"| profile | `{record['profile']}`: {record.get('profile_description', '')} |",
        f"| dataset | {record['dataset']}"
        + (f" (+ {', '.join(record['extra_datasets'])})" if record.get("extra_datasets") else "")
        + " |",
        f"| backbone | `{record['backbone']}`, {record.get('backbone_weights', 'unknown')} |",
        f"| seeds | {', '.join(str(s) for s in record['seeds'])} |",
        f"| git commit | `{record['git_commit']}` |",
        f"| device | {record['device']} |",
        f"| Python | {record['python']} |",
        f"| finished | {record['finished']} |",
        "",
        "## Chapter run times",
        "",
        "| chapter | seconds | note |",
        "| --- | ---: | --- |",
    ]
    total = 0.0
    for name, t in record["chapters"].items():
        total += t["seconds"]
        note = "reused from an earlier run" if t.get("reused") else ""
        lines.append(f"| {name} | {t['seconds']:.1f} | {note} |")
    lines += [f"| **total** | {total:.1f} | |", "", "## Package versions", "", "| package | version |",
              "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in record["packages"].items()]
    return "\n".join(lines) + "\n"


def stage_book(profile: str) -> Path:
    """Assemble the book source for ``profile``: config, prose pages, executed chapters, provenance, vendor JS.

    Raises:
        FileNotFoundError: when a chapter has not been executed yet or the vendored JavaScript is missing.
    """
    src = build_dir(profile) / "src"
    src.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO_ROOT / name, src / name)
    book_src = src / "book"
    if book_src.exists():
        shutil.rmtree(book_src)
    shutil.copytree(REPO_ROOT / "book", book_src, ignore=shutil.ignore_patterns("_build", "_vendor"))
    for page in book_src.rglob("*.md"):  # pages paste values and figures from the chapters (the results page):
        page.touch()  # a new mtime makes Sphinx read them again, or they would show an earlier run's figures
    missing = [c.name for c in chapters() if not (src / "chapters" / c.source.name).exists()]
    if missing:
        raise FileNotFoundError(
            f"chapters not executed yet for profile {profile!r}: {', '.join(missing)}; "
            f"run: python -m qpmlib.book.runner run --profile {profile}"
        )
    record_path = build_dir(profile) / "run.json"
    record = json.loads(record_path.read_text())
    (book_src / "provenance.md").write_text(provenance_markdown(record))
    vendor_target = src / "_vendor" / "vendor"
    widgets = any(keeps_widget_state(_notebook(src / "chapters" / c.source.name)) for c in chapters())
    wanted = [rel for name, rel in VENDOR_FILES.items() if widgets or name not in WIDGET_VENDOR]
    unused = {VENDOR_FILES[name].split("/")[0] for name in WIDGET_VENDOR} if not widgets else set()
    for rel in wanted:
        if not (VENDOR_DIR / rel).exists():
            raise FileNotFoundError(
                f"offline JavaScript missing: {VENDOR_DIR / rel}; run `make vendor` (needs the npm registry once)"
            )
    stamps = sorted(p.name for p in VENDOR_DIR.glob(".complete*"))  # `make vendor` names its stamp by the pins
    if stamps != sorted(p.name for p in vendor_target.glob(".complete*")) or not all(
            (vendor_target / rel).exists() for rel in wanted) or any((vendor_target / u).exists() for u in unused):
        if vendor_target.exists():
            shutil.rmtree(vendor_target)
        vendor_target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(VENDOR_DIR, vendor_target,
                        ignore=lambda folder, names: unused if Path(folder) == VENDOR_DIR else ())
    for entry in unused:  # left in the HTML by an earlier build: Sphinx copies static files but never removes one
        stale = build_dir(profile) / "_build" / "html" / "_static" / "vendor" / entry
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    return src


def build_book(profile: str, *, verbose: bool = True) -> Path:
    """Stage the book and build the HTML with Jupyter Book (execution off, warnings are errors).

    Returns:
        Path of the built ``index.html``.

    Raises:
        RuntimeError: when ``jupyter-book build`` fails (its output is shown).
    """
    src = stage_book(profile)
    out = build_dir(profile)
    cmd = [
        str(Path(sys.executable).parent / "jupyter-book"), "build", str(src), "--path-output", str(out),
        "-W", "-n", "--keep-going",
    ]
    if verbose:
        print("[book] jupyter-book " + " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    index = out / "_build" / "html" / "index.html"
    if verbose:
        print(f"[book] the book is at {index}", flush=True)
    return index


def parse_parameters(pairs: list[list[str]] | list[tuple[str, str]]) -> dict:
    """``-p NAME VALUE`` pairs as a dict, each value parsed as YAML (``3`` -> 3, ``[0, 1]`` -> a list).

    Raises:
        ValueError: for a repeated name, a value that is not valid YAML, or a YAML value that is not a plain
            string, number, boolean, null, list or mapping (a date, for instance); the message names the parameter.
    """
    out: dict = {}
    for name, text in pairs:
        if name in out:
            raise ValueError(f"parameter {name!r} is given twice (-p {name} ...); give it once")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise ValueError(f"-p {name} {text!r}: the value is not valid YAML ({detail}); quote a plain string, "
                             "e.g. -p name \"'text'\"") from None
        if not _plain_value(value):
            raise ValueError(f"-p {name} {text!r}: YAML reads this as {type(value).__name__}; give a string (in "
                             "quotes), a number, true/false, null, a list or a mapping")
        out[name] = value
    return out


def _plain_value(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_value(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_value(v) for v in value)
    return isinstance(value, PARAMETER_TYPES)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m qpmlib.book.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("run", "build", "all"))
    parser.add_argument("--profile", default=None, help=f"one of: {', '.join(PROFILES)} (default: $QPMLIB_PROFILE or demo)")
    parser.add_argument("--chapters", nargs="*", default=None, help="run only these chapters (names from _toc.yml)")
    parser.add_argument("--force", action="store_true", help="re-execute chapters even when up to date")
    parser.add_argument("--jobs", type=int, default=1,
                        help="chapters executed at once, started in _toc.yml order (default: 1)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="extra papermill parameter (YAML value); every selected chapter must declare it")
    args = parser.parse_args(argv)
    try:
        extra = parse_parameters(args.parameter)
        profile = args.profile or os.environ.get("QPMLIB_PROFILE", "demo")
        if "profile" in extra:
            given = extra.pop("profile")
            if args.profile is not None and given != args.profile:
                raise ValueError(f"--profile {args.profile} and -p profile {given} disagree; give the profile once")
            profile = given
        if args.chapters == []:
            raise ValueError("--chapters needs at least one chapter name; valid chapters: "
                             + ", ".join(c.name for c in chapters()))
        get_profile(profile)
        if args.action in ("run", "all"):
            run_chapters(profile, args.chapters, force=args.force, extra_parameters=extra, jobs=args.jobs)
        if args.action in ("build", "all"):
            build_book(profile)
    except (ValueError, FileNotFoundError, ChapterFailed, RuntimeError) as exc:
        print(f"[book] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
