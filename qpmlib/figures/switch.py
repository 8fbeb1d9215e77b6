"""Figures that switch between precomputed states in the browser, with no Python kernel behind them.

A live ipywidget redraws its figure in Python when its control moves, so in the rendered book (static HTML) the
control moves and the figure stays. The figures here draw every state the control can reach when the chapter
runs and hand them to Plotly, whose own drop-down menus and sliders show one state at a time::

    states = {f"λ = {v:g}": sweep_maps_figure(prof, "l1_fm", [v], 0, seed=0) for v in values}
    fig = switch_figure(states, control="slider", label="λ_L1-FM")

A state is a matplotlib figure, PNG bytes, a list of them (tiled in a grid), a :class:`State` (pictures, a table
and a caption) or None (nothing to show; its caption says so). Pictures are embedded as data URIs, so the figure
needs nothing but plotly.js (which the book serves itself).

Public names: ``Picture``, ``State``, ``picture``, ``tile``, ``as_state``, ``switch_figure``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from PIL import Image

__all__ = ["Picture", "State", "picture", "tile", "as_state", "table_height", "switch_figure", "PLOTLY_MIME"]

#: The MIME type under which JupyterLab (with plotly's extension) draws a Plotly figure.
PLOTLY_MIME = "application/vnd.plotly.v1+json"
#: Resolution of the embedded pictures (what the book's PNG figures use).
DPI = 72
#: Height in pixels of one line of a table row (plotly wraps long cells onto more lines), and of a table at least.
TABLE_ROW_PX, TABLE_MIN_PX = 26, 80
#: Width in pixels of a character in a table cell, and a cell's padding, to estimate where plotly wraps.
CHAR_PX, CELL_PAD_PX = 7, 16
#: Width in pixels of the rendered book's text column, where a figure is drawn as wide as the column allows.
TEXT_COLUMN_PX = 640
#: Room above the picture for the drop-down and the caption, and below it for the slider.
TOP_PX, SLIDER_PX = 80, 90
#: Room above the picture for the caption alone (a slider's figure has no drop-down there).
CAPTION_PX = 40


@dataclass(frozen=True)
class Picture:
    """An encoded picture: its bytes, their format and its size in pixels."""

    data: bytes
    format: Literal["png", "webp", "jpeg"]
    width: int
    height: int

    @property
    def uri(self) -> str:
        """The picture as a ``data:`` URI."""
        return f"data:image/{self.format};base64," + base64.b64encode(self.data).decode("ascii")


def picture(obj: Figure | bytes | Picture, *, dpi: int = DPI, fmt: Literal["png", "webp", "jpeg"] = "png",
            quality: int = 85) -> Picture:
    """Encode a figure (or re-encode picture bytes) for embedding.

    Args:
        obj: a matplotlib figure, the bytes of a picture in any format Pillow reads, or a :class:`Picture`
            (returned as it is when already in ``fmt``).
        dpi: resolution of a figure.
        fmt: "png" (lossless), "webp" or "jpeg" (lossy, at ``quality``; several times smaller for photographs).
        quality: 1-100, for the lossy formats.

    Returns:
        the encoded picture.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(obj, Picture):
        if obj.format == fmt:
            return obj
        obj = obj.data
    if isinstance(obj, Figure):
        buf = io.BytesIO()
        obj.savefig(buf, format="png", dpi=dpi)
        obj = buf.getvalue()
    if not isinstance(obj, (bytes, bytearray)):
        raise TypeError(f"cannot make a picture of {type(obj).__name__}; give a matplotlib Figure or image bytes")
    image = Image.open(io.BytesIO(obj))
    if fmt == "png" and image.format == "PNG":
        return Picture(bytes(obj), "png", *image.size)
    return _encode(image, fmt, quality)


def _encode(image: Image.Image, fmt: str, quality: int) -> Picture:
    out = io.BytesIO()
    if fmt == "jpeg" or image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB" if fmt == "jpeg" else "RGBA")
    image.save(out, format=fmt.upper(), **({} if fmt == "png" else {"quality": quality}))
    return Picture(out.getvalue(), fmt, *image.size)  # type: ignore[arg-type]


def tile(pictures: Sequence[Figure | bytes | Picture], *, ncols: int | None = None, gap: int = 8,
         fmt: Literal["png", "webp", "jpeg"] = "png", dpi: int = DPI) -> Picture:
    """Several pictures in one, row by row on a white background, each cell as large as the largest picture.

    Args:
        pictures: what to tile, in reading order.
        ncols: pictures per row (default: all in one row).
        gap: pixels between cells.
        fmt: format of the result.
        dpi: resolution of figures among ``pictures``.

    Returns:
        the tiled picture; a single picture is returned as it is (re-encoded to ``fmt``).

    Raises:
        ValueError: when ``pictures`` is empty.
    """
    if not pictures:
        raise ValueError("nothing to tile; give at least one picture")
    encoded = [picture(p, dpi=dpi) for p in pictures]
    if len(encoded) == 1:
        return picture(encoded[0], fmt=fmt)
    ncols = min(ncols or len(encoded), len(encoded))
    nrows = -(-len(encoded) // ncols)
    cell_w, cell_h = max(p.width for p in encoded), max(p.height for p in encoded)
    canvas = Image.new("RGB", (ncols * cell_w + (ncols - 1) * gap, nrows * cell_h + (nrows - 1) * gap), "white")
    for k, p in enumerate(encoded):
        row, col = divmod(k, ncols)
        image = Image.open(io.BytesIO(p.data)).convert("RGBA")
        canvas.paste(image, (col * (cell_w + gap), row * (cell_h + gap)), image)
    return _encode(canvas, fmt, 85)


@dataclass(frozen=True)
class State:
    """What one position of the control shows: a picture (or none), a table under it, a caption above it."""

    picture: Picture | None = None
    table: pd.DataFrame | None = None
    caption: str = ""


StateLike = Union[State, Figure, bytes, Picture, Sequence[Union[Figure, bytes, Picture]], None]


def as_state(value: StateLike, *, ncols: int | None = None, fmt: Literal["png", "webp", "jpeg"] = "png",
             empty: str = "Nothing to show here.") -> State:
    """Turn what a caller has into a :class:`State`.

    Args:
        value: a State (its picture re-encoded to ``fmt``), a figure or picture, a list of them (tiled with
            ``ncols`` per row), or None (no picture, captioned ``empty``).
        ncols: pictures per row when tiling a list.
        fmt: picture format.
        empty: caption of an empty state.
    """
    if isinstance(value, State):
        return value if value.picture is None else State(picture(value.picture, fmt=fmt), value.table,
                                                         value.caption)
    if value is None:
        return State(caption=empty)
    if isinstance(value, (Figure, bytes, bytearray, Picture)):
        return State(picture(value, fmt=fmt))
    return State(tile(list(value), ncols=ncols, fmt=fmt))


def _cell_text(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.2f}"
    return str(value)


def _table_columns(table: pd.DataFrame | None) -> tuple[list[str], list[list[str]]]:
    """Header and cell texts of a table (empty for None)."""
    if table is None:
        return [], []
    return [str(c) for c in table.columns], [[_cell_text(v) for v in table[c]] for c in table.columns]


def table_height(table: pd.DataFrame | None, width: int) -> int:
    """The height in pixels a plotly Table needs for ``table`` in a figure ``width`` pixels wide (0 for None).

    Each row is as tall as its most wrapped cell: columns share the width equally, a cell wraps at about
    ``(column width - padding) / CHAR_PX`` characters.
    """
    if table is None:
        return 0
    header, cells = _table_columns(table)
    per_line = max(1, (width / max(1, len(header)) - CELL_PAD_PX) // CHAR_PX)
    rows = [header] + [list(row) for row in zip(*cells)]
    lines = sum(max([-(-len(text) // per_line) for text in row] + [1]) for row in rows)
    return int(max(TABLE_MIN_PX, TABLE_ROW_PX * lines))


def switch_figure(states: Mapping[str, StateLike], *, control: Literal["dropdown", "slider"] = "dropdown",
                  label: str = "", ncols: int | None = None, fmt: Literal["png", "webp", "jpeg"] = "png",
                  empty: str = "Nothing to show here.", width: int | None = None) -> go.Figure:
    """A Plotly figure that shows one state at a time, chosen with Plotly's own drop-down or slider.

    Every state's picture is an ``Image`` trace on one shared pair of hidden axes; each step of the control makes
    exactly that state's picture visible and sets the caption (the figure title) and the axes' range to that
    picture. Tables share one ``Table`` trace under the pictures whose header and cells each step rewrites (a
    hidden Table trace would stay on screen: plotly.js does not remove it).

    Args:
        states: control label -> state (see :func:`as_state`), in the control's order; the first is shown first.
        control: "dropdown" (a menu above the picture) or "slider" (a slider under it).
        label: what the control chooses, e.g. "model" or "λ_L1-FM".
        ncols: pictures per row when a state is a list of figures.
        fmt: picture format ("webp" or "jpeg" make photographs several times smaller).
        empty: caption of a state without a picture.
        width: figure width in pixels (default: the widest picture, at least 600 and at most
            :data:`TEXT_COLUMN_PX`, where a wider picture is shown smaller).

    Returns:
        the figure; its layout has one ``updatemenus`` or ``sliders`` entry with one step per state.

    Raises:
        ValueError: for no states or an unknown control.
    """
    if not states:
        raise ValueError("no states to switch between; give at least one")
    if control not in ("dropdown", "slider"):
        raise ValueError(f"unknown control {control!r}; valid: 'dropdown', 'slider'")
    made = {name: as_state(value, ncols=ncols, fmt=fmt, empty=empty) for name, value in states.items()}
    pictures = [s.picture for s in made.values() if s.picture is not None]
    pic_h = max((p.height for p in pictures), default=0)
    pic_w = max((p.width for p in pictures), default=0)
    # as wide as the widest picture, but no wider than the book's text column: the page would shrink the picture
    # and leave the height computed for it empty
    width = width or max(600, min(pic_w, TEXT_COLUMN_PX))
    # the book's text column is narrower than most pictures: estimate the wrapping there
    table_h = max((table_height(s.table, min(width, TEXT_COLUMN_PX)) for s in made.values()), default=0)
    shown_h = pic_h * min(1.0, width / pic_w) if pic_w else 0
    bottom = SLIDER_PX if control == "slider" else 10
    top = CAPTION_PX if control == "slider" else TOP_PX
    height = int(top + shown_h + table_h + bottom) + (20 if not pictures else 0)
    plot_h = height - top - bottom
    split = table_h / plot_h if plot_h else 0.0  # fraction of the plotting area given to the table
    fig = go.Figure(layout={"template": "none"})  # no theme: plotly's default one would add 10 kB to every figure
    owners: list[int] = []  # state index of every picture trace, in trace order
    for k, state in enumerate(made.values()):
        if state.picture is not None:
            fig.add_trace(go.Image(source=state.picture.uri, visible=k == 0, hoverinfo="skip", name=""))
            owners.append(k)
    has_table = any(s.table is not None for s in made.values())
    if has_table:
        header, cells = _table_columns(next(iter(made.values())).table)
        fig.add_trace(go.Table(header={"values": header, "align": "left", "fill": {"color": "#e8e8e8"}},
                               cells={"values": cells, "align": "left"},
                               domain={"x": [0.0, 1.0], "y": [0.0, max(split - 0.02, 0.0)]}))

    def traces_for(k: int, state: State) -> dict:
        out: dict = {"visible": [owner == k for owner in owners] + ([True] if has_table else [])}
        if has_table:  # one value per trace: None leaves the pictures alone
            header, cells = _table_columns(state.table)
            out["header.values"] = [None] * len(owners) + [header]
            out["cells.values"] = [None] * len(owners) + [cells]
        return out

    def layout_for(state: State) -> dict:
        out: dict = {"title.text": state.caption}
        if state.picture is not None:
            out["xaxis.range"] = [-0.5, state.picture.width - 0.5]
            out["yaxis.range"] = [state.picture.height - 0.5, -0.5]
        return out

    steps = [{"label": name, "method": "update", "args": [traces_for(k, state), layout_for(state)]}
             for k, (name, state) in enumerate(made.items())]
    first = next(iter(made.values()))
    fig.update_layout(
        width=width, height=height, margin={"l": 10, "r": 10, "t": top, "b": bottom},
        title={"text": first.caption, "x": 0.0, "xanchor": "left", "xref": "paper", "y": 1.0, "yref": "paper",
               "yanchor": "bottom", "pad": {"b": 6}, "font": {"size": 13}},
        plot_bgcolor="white", paper_bgcolor="white",
        xaxis={"visible": False, "fixedrange": True, "domain": [0.0, 1.0]},
        yaxis={"visible": False, "fixedrange": True, "scaleanchor": "x", "domain": [min(split, 0.98), 1.0]},
        **{k: v for k, v in layout_for(first).items() if k != "title.text"},
    )
    if control == "dropdown":
        fig.update_layout(
            updatemenus=[{"type": "dropdown", "direction": "down", "active": 0, "buttons": steps, "x": 0.0,
                          "xanchor": "left", "y": 1.0, "yanchor": "bottom", "pad": {"b": 30, "l": 70},
                          "showactive": True}],
            annotations=[{"text": f"{label}:", "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.0,
                          "xanchor": "left", "y": 1.0, "yanchor": "bottom", "yshift": 38}],
        )
    else:
        fig.update_layout(sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": f"{label}: "},
                                    "pad": {"t": 10}, "x": 0.0, "len": 1.0}])
    return fig
