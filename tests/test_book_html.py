"""The rendered book, checked as a person would see it.

Reads the HTML built by ``make test`` (profile ``$QPMLIB_BOOK_PROFILE``, default smoke). Static checks: every
internal link and image resolves. Browser checks (headless Chromium on a loopback server): the pages load,
formulas are typeset by the local MathJax, sliders are drawn by the local widget manager, figures are present.
Screenshots of the main pages are kept under ``book/_build/<profile>/screenshots/`` as build artefacts.

Without a built book the tests skip, unless ``QPMLIB_REQUIRE_BOOK=1`` (set by ``make test``) makes that a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from qpmlib.book.runner import build_dir, chapters

PROFILE = os.environ.get("QPMLIB_BOOK_PROFILE", "smoke")
HTML = build_dir(PROFILE) / "_build" / "html"
SHOTS = build_dir(PROFILE) / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _require_book() -> None:
    if not (HTML / "index.html").exists():
        msg = f"no built book at {HTML}; run `make book PROFILE={PROFILE}`"
        if os.environ.get("QPMLIB_REQUIRE_BOOK") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []  # (tag, url)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.refs.append(("a", a["href"]))
        if tag == "img" and a.get("src"):
            self.refs.append(("img", a["src"]))


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(errors="replace"))
    return parser


def _pages() -> list[Path]:
    return sorted(p for p in HTML.rglob("*.html") if "_static" not in p.parts)


def test_internal_links_and_images_resolve():
    _require_book()
    broken = []
    id_cache: dict[Path, set[str]] = {}
    for page in _pages():
        parsed = _parse(page)
        id_cache[page] = parsed.ids
        for tag, url in parsed.refs:
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//") or url.startswith("mailto:"):
                continue
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if not target.exists():
                broken.append(f"{page.relative_to(HTML)}: {tag} {url}")
                continue
            if parts.fragment and target.suffix == ".html":
                ids = id_cache.get(target)
                if ids is None:
                    ids = id_cache[target] = _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(HTML)}: missing anchor {url}")
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_every_chapter_and_the_provenance_page_are_rendered():
    _require_book()
    for chapter in chapters():
        page = HTML / "chapters" / f"{chapter.name}.html"
        assert page.exists(), f"{chapter.name} missing from the built book"
    provenance = (HTML / "book" / "provenance.html").read_text()
    assert f"<code class=\"docutils literal notranslate\"><span class=\"pre\">{PROFILE}</span></code>" in provenance
    assert "01_introduction" in provenance


def test_no_blank_widget_areas_or_cdn_scripts():
    _require_book()
    for page in _pages():
        html = page.read_text(errors="replace")
        # A widget view without saved state renders as an empty box (e.g. tqdm.auto progress bars).
        if "application/vnd.jupyter.widget-view+json" in html:
            assert "application/vnd.jupyter.widget-state+json" in html, f"{page}: widget view without saved state"
        assert "cdn.jsdelivr.net" not in html, f"{page}: loads JavaScript from a CDN"


@pytest.fixture(scope="module")
def server():
    _require_book()
    if CHROMIUM is None:
        pytest.fail("headless Chromium is needed for the book test: apt-get install chromium")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _chromium(*args: str, timeout: int = 90) -> str:
    with tempfile.TemporaryDirectory() as user_data:
        return _chromium_in(user_data, *args, timeout=timeout)


def _chromium_in(user_data: str, *args: str, timeout: int) -> str:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
        "--user-data-dir=" + user_data, "--virtual-time-budget=15000", *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium failed: {proc.stderr[-2000:]}"
    return proc.stdout


def _rendered_dom(url: str) -> str:
    return _chromium("--dump-dom", url)


def _screenshot(url: str, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    out = SHOTS / f"{name}.png"
    _chromium(f"--screenshot={out}", "--window-size=1280,4800", "--hide-scrollbars", url)
    assert out.exists() and out.stat().st_size > 10_000, f"screenshot of {url} is missing or empty"
    return out


def test_formula_is_typeset_offline(server):
    dom = _rendered_dom(f"{server}/index.html")
    assert "mjx-container" in dom, "MathJax did not typeset the formula on the landing page"
    _screenshot(f"{server}/index.html", "index")


@pytest.mark.parametrize("chapter", [c.name for c in chapters()])
def test_chapter_renders_with_figures_and_widgets(server, chapter):
    page = HTML / "chapters" / f"{chapter}.html"
    static = page.read_text(errors="replace")
    dom = _rendered_dom(f"{server}/chapters/{chapter}.html")
    assert "Traceback" not in dom, f"{chapter} shows a traceback"
    if "application/vnd.jupyter.widget-view+json" in static:
        assert "widget-slider" in dom or "widget-dropdown" in dom or "jupyter-widgets" in dom, (
            f"{chapter}: widgets were not rendered by the local widget manager"
        )
    if 'class="math' in static:
        assert "mjx-container" in dom, f"{chapter}: formula not typeset"
    _screenshot(f"{server}/chapters/{chapter}.html", chapter)


def test_figures_present_in_the_book():
    _require_book()
    images = [url for page in _pages() for tag, url in _parse(page).refs if tag == "img"]
    assert any("_images/" in url for url in images), "the built book contains no figure output"


#: Console errors of the theme itself, not of this book: sphinx-thebe's configuration script is added twice to
#: every page under jupyter-book 1.0.4 (a second `const THEBE_JS_URL`), and the pydata theme complains about an
#: empty stored colour mode in a fresh browser profile. Neither touches the book's content.
THEME_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared", "Got invalid theme mode: . Resetting to auto.",
                "favicon.ico")


def _offsite(url: str, server: str) -> bool:
    """A request that leaves the loopback server (data: and blob: URLs are not requests)."""
    return not (url.startswith(server) or url.startswith(("data:", "blob:", "about:")))


@pytest.mark.browser
def test_every_page_loads_offline_and_every_static_control_changes_its_figure(server):
    """Each twin of a widget (qpmlib.book.views.switch_view) is drawn and answers a real click; no page asks for
    anything beyond 127.0.0.1 or logs an error."""
    from tests.browser import STATES, SWITCHES_DRAWN, Browser, move_switch

    pages = [p for p in _pages() if p.name not in ("search.html", "genindex.html")]
    twins = switched = 0
    with Browser(timeout=60) as b:
        for page in pages:
            url = f"{server}/{page.relative_to(HTML).as_posix()}"
            has_switch = "qpm-switch-figure" in page.read_text(errors="replace")
            log = b.open(url, ready=SWITCHES_DRAWN if has_switch else "document.readyState === 'complete'")
            if has_switch:
                for k in range(b.evaluate("document.querySelectorAll('.qpm-switch-figure').length")):
                    twins += 1
                    if b.evaluate(STATES.format(k=k)) < 2:
                        continue  # e.g. one backbone on a small profile: nothing to switch
                    before, after = move_switch(b, k)
                    assert before != after, f"{page.name}: control {k + 1} did not change its figure"
                    switched += 1
            offsite = [u for u in log.requests if _offsite(u, server)]
            assert not offsite, f"{page.name} requested {offsite}"
            errors = [e for e in log.errors if not any(known in e for known in THEME_ERRORS)]
            assert not errors, f"{page.name}: {errors}"
    assert twins >= 9, f"only {twins} static controls in the whole book; every chapter widget has one"
    assert switched >= twins - 2, f"only {switched} of {twins} static controls have more than one state"


def test_results_page_pastes_only_keys_that_its_chapters_glue():
    """book/results.md pastes numbers from the chapters; a key no chapter glues would fail the build late."""
    import json

    from qpmlib.paths import REPO_ROOT

    text = (REPO_ROOT / "book" / "results.md").read_text()
    wanted = set(re.findall(r"\{glue:text\}`/chapters/(\w+)\.ipynb::(\w+):[^`]*`", text))
    wanted |= {(doc, key) for key, doc in re.findall(r"```\{glue\} (\w+)\n:doc: \.\./chapters/(\w+)\.ipynb", text)}
    assert len(wanted) >= 20
    for doc, key in sorted(wanted):
        source = "".join("".join(c["source"]) for c in json.loads(
            (REPO_ROOT / "chapters" / f"{doc}.ipynb").read_text())["cells"] if c["cell_type"] == "code")
        assert re.search(rf"glue\(\s*f?[\"']{key}[\"']", source) or (
            key.startswith("share_") and 'glue(f"share_{cat}"' in source), f"{doc} glues no {key!r}"


def test_results_page_shows_this_runs_numbers():
    _require_book()
    page = (HTML / "book" / "results.html").read_text(errors="replace")
    assert f"<strong>{PROFILE}</strong>" in page or f">{PROFILE}<" in page, "the profile is not on the results page"
    assert page.count("<table") >= 4, "the Table 1 summary or a verdict table is missing"
    assert page.count("_images/") >= 2 or page.count("<img") >= 2, "the radar figures are missing"


def test_every_chapter_page_says_how_to_run_it_and_offers_its_notebook():
    _require_book()
    for chapter in chapters():
        page = (HTML / "chapters" / f"{chapter.name}.html").read_text(errors="replace")
        text = " ".join(re.sub(r"<[^>]+>", " ", page).split())  # code spans split the command into spans
        assert "Run it yourself." in text and f"--chapters {chapter.name}" in text, f"{chapter.name}: no run note"
        assert f"_sources/chapters/{chapter.name}.ipynb" in page, f"{chapter.name}: no notebook download"
        assert (HTML / "_sources" / "chapters" / f"{chapter.name}.ipynb").exists()
