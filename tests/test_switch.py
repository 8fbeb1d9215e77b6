"""Static twins of the widgets: figures that switch between precomputed states with no kernel behind them.

The unit tests check the Plotly figure that :func:`qpmlib.figures.switch.switch_figure` builds; the browser tests
load such figures in headless Chromium with plotly.js served from 127.0.0.1, click the controls as a reader
would, and see the figure change.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import plotly  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from qpmlib.book.views import PLOTLY_MIME, gallery_indices, switch_view  # noqa: E402
from qpmlib.figures.switch import (  # noqa: E402
    TABLE_MIN_PX, TABLE_ROW_PX, Picture, State, as_state, picture, switch_figure, table_height, tile)
from tests import browser  # noqa: E402

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"  # the version plotly.py draws for


def _png(color: tuple[int, int, int], size=(30, 20)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _pixel(pic: Picture, xy) -> tuple:
    return Image.open(io.BytesIO(pic.data)).convert("RGB").getpixel(xy)


# ------------------------------------------------------------------------------------------------ pictures
def test_picture_encodes_figures_and_keeps_png_bytes():
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1])
    pic = picture(fig, dpi=50)
    plt.close(fig)
    assert (pic.format, pic.width, pic.height) == ("png", 100, 50)
    raw = _png((255, 0, 0))
    assert picture(raw).data == raw  # PNG in, PNG out: not re-encoded
    assert base64.b64decode(picture(raw).uri.split(",", 1)[1]) == raw
    jpeg = picture(raw, fmt="jpeg")
    assert jpeg.format == "jpeg" and jpeg.data[:2] == b"\xff\xd8" and (jpeg.width, jpeg.height) == (30, 20)
    with pytest.raises(TypeError, match="give a matplotlib Figure or image bytes"):
        picture("red.png")


def test_tile_places_pictures_row_by_row():
    red, green, blue = _png((255, 0, 0)), _png((0, 255, 0)), _png((0, 0, 255), size=(10, 10))
    grid = tile([red, green, blue], ncols=2, gap=4)
    assert (grid.width, grid.height) == (2 * 30 + 4, 2 * 20 + 4)  # cells as large as the largest picture
    assert _pixel(grid, (5, 5)) == (255, 0, 0)
    assert _pixel(grid, (30 + 4 + 5, 5)) == (0, 255, 0)
    assert _pixel(grid, (32, 5)) == (255, 255, 255)  # the gap
    assert _pixel(grid, (5, 20 + 4 + 5)) == (0, 0, 255)
    assert _pixel(grid, (20, 20 + 4 + 15)) == (255, 255, 255)  # beyond the small picture
    assert tile([red]).data == red
    with pytest.raises(ValueError, match="nothing to tile"):
        tile([])


def test_as_state_accepts_what_chapters_have():
    assert as_state(None, empty="no pair").caption == "no pair" and as_state(None).picture is None
    assert as_state(_png((1, 2, 3))).picture.width == 30
    assert as_state([_png((1, 2, 3))] * 4, ncols=2).picture.width == 2 * 30 + 8
    table = pd.DataFrame({"a": [1]})
    state = as_state(State(_png((1, 2, 3)), table, "cap"), fmt="jpeg")
    assert state.picture.format == "jpeg" and state.table is table and state.caption == "cap"


def test_table_height_grows_with_rows_and_wrapped_cells():
    assert table_height(None, 600) == 0
    assert table_height(pd.DataFrame({"a": [1]}), 600) == TABLE_MIN_PX  # two short lines
    # 2 columns of 200 px wrap at (200 - 16) // 7 = 26 characters: a 60-character cell takes 3 lines
    frame = pd.DataFrame({"name": ["x" * 60, "y"], "value": [1.0, 2.0]})
    assert table_height(frame, 400) == TABLE_ROW_PX * (1 + 3 + 1)
    assert table_height(frame, 1000) == max(TABLE_MIN_PX, TABLE_ROW_PX * 3)  # no wrapping when wide


# --------------------------------------------------------------------------------------------- the figure
def test_dropdown_steps_show_exactly_their_own_picture():
    states = {"red": _png((255, 0, 0)), "none": None, "blue": _png((0, 0, 255), size=(40, 10))}
    fig = switch_figure(states, label="colour")
    assert [t.type for t in fig.data] == ["image", "image"]  # no trace for the empty state
    assert [t.visible for t in fig.data] == [True, False]
    menu = fig.layout.updatemenus[0]
    assert [b.label for b in menu.buttons] == ["red", "none", "blue"]
    visible = [b.args[0]["visible"] for b in menu.buttons]
    assert visible == [[True, False], [False, False], [False, True]]
    assert menu.buttons[1].args[1]["title.text"] == "Nothing to show here."
    assert menu.buttons[2].args[1]["xaxis.range"] == [-0.5, 39.5]  # the axes follow each picture's size
    assert menu.buttons[2].args[1]["yaxis.range"] == [9.5, -0.5]
    assert fig.layout.annotations[0].text == "colour:"
    with pytest.raises(ValueError, match="no states"):
        switch_figure({})
    with pytest.raises(ValueError, match="valid: 'dropdown', 'slider'"):
        switch_figure(states, control="knob")


def test_slider_steps_rewrite_the_shared_table():
    states = {f"λ = {v}": State(_png((0, 0, 0)), pd.DataFrame({"metric": ["acc"], "value": [v]}), f"at {v}")
              for v in (0.1, 0.2)}
    states["none"] = State(caption="nothing")
    fig = switch_figure(states, control="slider", label="λ")
    assert [t.type for t in fig.data] == ["image", "image", "table"]
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["λ = 0.1", "λ = 0.2", "none"]
    assert steps[1].args[0]["visible"] == [False, True, True]  # the table trace stays: its cells change
    assert steps[1].args[0]["cells.values"] == [None, None, [["acc"], ["0.20"]]]
    assert steps[2].args[0]["cells.values"] == [None, None, []] and steps[2].args[1]["title.text"] == "nothing"
    assert [list(c) for c in fig.data[2].cells.values] == [["acc"], ["0.10"]]
    assert fig.layout.sliders[0].currentvalue.prefix == "λ: "


def test_static_view_html_is_one_script_and_says_where_the_live_control_runs():
    view = switch_view({"a</script>": _png((1, 1, 1)), "b": None}, label="model", live="it runs in Jupyter")
    assert view.labels == ["a</script>", "b"]
    page = view.html()
    assert page.count("</script>") == 1  # a label cannot end the script early
    assert "drop-down switches between 2 values of model; it runs in Jupyter." in page
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {PLOTLY_MIME, "text/html", "text/plain"}
    assert bundle[PLOTLY_MIME]["layout"]["updatemenus"][0]["buttons"][1]["label"] == "b"
    spec = json.loads(page.split("var spec = ", 1)[1].split(";\n", 1)[0].replace("<\\/", "</"))
    assert spec["layout"]["autosize"] is True and "width" not in spec["layout"]  # fits the page's width


def test_gallery_indices_are_seeded_sorted_and_keep_the_first():
    picks = gallery_indices(100, 8, seed=3)
    assert picks == sorted(picks) and len(set(picks)) == 8 and all(0 <= i < 100 for i in picks)
    assert gallery_indices(100, 8, seed=3) == picks and gallery_indices(100, 8, seed=4) != picks
    with_first = gallery_indices(100, 8, seed=3, first=42)
    assert with_first[0] == 42 and len(set(with_first)) == 8
    assert gallery_indices(5, 50) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="not an image index"):
        gallery_indices(5, 2, first=5)
    with pytest.raises(ValueError, match="need n >= 1"):
        gallery_indices(0, 2)


# ------------------------------------------------------------------------------------------ in a browser
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    if browser.CHROMIUM is None:
        pytest.skip("headless Chromium is needed: apt-get install chromium")
    site = tmp_path_factory.mktemp("site")
    shutil.copy(PLOTLY_JS, site / "plotly.min.js")
    colours = {"red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 255)}
    # pictures tall enough for the open drop-down (plotly scrolls a menu longer than its figure)
    menu = switch_view({name: _png(c, (240, 200)) for name, c in colours.items()} | {"none": None},
                       label="colour")
    slider = switch_view({f"{v}": State(_png((20 * v, 0, 0)), pd.DataFrame({"v": [v]}), f"caption {v}")
                          for v in range(4)}, control="slider", label="v")
    (site / "index.html").write_text(
        '<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        '<script src="plotly.min.js" defer></script></head>'
        f"<body>{menu.html()}{slider.html()}</body></html>")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    httpd.shutdown()


VISIBLE = "Array.from(document.querySelectorAll('.qpm-switch-figure')[{k}].data).map(t => t.visible === true)"


@pytest.mark.browser
def test_clicking_the_controls_changes_the_figure(page_url):
    with browser.Browser(timeout=30) as b:
        log = b.open(page_url, ready=browser.SWITCHES_DRAWN)
        assert not log.errors, log.errors
        assert all(u.startswith("http://127.0.0.1:") or u.startswith("data:") for u in log.requests), log.requests
        assert b.evaluate(VISIBLE.format(k=0)) == [True, False, False]
        before, after = browser.move_switch(b, 0)  # the drop-down's second entry: "green"
        assert before != after and b.evaluate(VISIBLE.format(k=0)) == [False, True, False]
        before, after = browser.move_switch(b, 1)  # the slider's last step
        assert json.loads(before) == [[True, False, False, False, True], "caption 0", [[["0"]]]]
        assert json.loads(after) == [[False, False, False, True, True], "caption 3", [[["3"]]]]
        assert not b.log.errors, b.log.errors


def _fake_chromium(tmp_path, body: str) -> str:
    script = tmp_path / "chromium"
    script.write_text("#!/bin/sh\n"
                      f'for a in "$@"; do case "$a" in --user-data-dir=*) echo "${{a#*=}}" > {tmp_path}/profile;; esac; done\n'
                      f"echo $$ > {tmp_path}/pid\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.parametrize("body, message", [
    ("echo 'cannot open display' >&2; exit 3", r"exited during startup \(status 3\): cannot open display"),
    ("exec sleep 60", r"did not open its DevTools endpoint within 1 s"),  # silent and alive: must not hang
    ("echo 'DevTools listening on ws://127.0.0.1:9/devtools/browser/x' >&2; exec sleep 60", r"cannot connect to Chromium's DevTools"),
])
def test_a_browser_that_fails_to_start_leaves_no_process_and_no_profile(tmp_path, monkeypatch, body, message):
    monkeypatch.setattr(browser, "CHROMIUM", _fake_chromium(tmp_path, body))
    with pytest.raises(browser.BrowserError, match=message):
        browser.Browser(timeout=1)
    profile = Path((tmp_path / "profile").read_text().strip())
    assert profile.name.startswith("qpm-chromium-") and not profile.exists()
    assert not _alive(int((tmp_path / "pid").read_text()))


def test_the_served_plotly_js_is_the_version_plotly_draws_for():
    """`make vendor` fetches plotly.js from npm; the figures are built by the Python package for its own copy."""
    from qpmlib.book.runner import VENDOR_DIR, VENDOR_FILES
    served = VENDOR_DIR / VENDOR_FILES["plotly"]
    if not served.exists():
        pytest.skip("no vendored JavaScript; run `make vendor`")
    head = served.read_text(errors="replace")[:200]
    assert f"plotly.js v{plotly.offline.get_plotlyjs_version()}" in head, (
        f"{served} is not plotly.js {plotly.offline.get_plotlyjs_version()}: update PLOTLY_PKG in the Makefile")


def test_every_live_widget_in_a_chapter_has_a_static_twin_in_the_book():
    """The rendered book runs no kernel: a widget's output is hidden there, and the next cell draws its twin."""
    from qpmlib.book.runner import chapters

    makers = ("widgets.interact(", "_widget(", "figure_widget(")
    found = 0
    for chapter in chapters():
        cells = [c for c in json.loads(chapter.source.read_text())["cells"] if c["cell_type"] == "code"]
        for k, cell in enumerate(cells):
            source = "".join(cell["source"])
            if not any(m in source for m in makers):
                continue
            found += 1
            tags = cell.get("metadata", {}).get("tags", [])
            assert "remove-output" in tags, f"{chapter.name}: the widget cell {source[:60]!r} is not remove-output"
            twin = "".join(cells[k + 1]["source"]) if k + 1 < len(cells) else ""
            assert "_switch(" in twin or "switch_view(" in twin, f"{chapter.name}: no static twin after {source[:60]!r}"
    assert found >= 9, f"found only {found} widget cells; the chapters hold at least 9"


def test_a_wide_picture_fits_the_text_column_without_empty_space():
    from qpmlib.figures.switch import CAPTION_PX, SLIDER_PX, TEXT_COLUMN_PX, TOP_PX

    wide = _png((0, 0, 0), size=(2 * TEXT_COLUMN_PX, TEXT_COLUMN_PX))
    menu = switch_figure({"a": wide, "b": wide})
    assert menu.layout.width == TEXT_COLUMN_PX  # shown at half size...
    assert menu.layout.height == TOP_PX + TEXT_COLUMN_PX // 2 + 10  # ...and the height follows
    slider = switch_figure({"a": wide, "b": wide}, control="slider")
    assert slider.layout.height == CAPTION_PX + TEXT_COLUMN_PX // 2 + SLIDER_PX
