"""Views the chapters display: interactive widgets and the multi-part displays of the interpretability chapters.

Everything here displays or builds widgets; the numbers come from :mod:`qpmlib.analysis` and the figures from
:mod:`qpmlib.figures`.

* :func:`figure_widget`: a control (slider, drop-down) above a picture that is redrawn when it changes, as PNG
  so that the executed notebook keeps the picture without a live kernel.
* :func:`pair_view`, :func:`show_pair`, :func:`pair_widget`: one class pair of a trained run (Figs. 5, 14-17);
  :func:`show_class_pairs` all of it for a run on another dataset of the profile (Cars: Figs. 16-17).
* :func:`show_failure_category`, :func:`failure_widget`: the failure rows of one category (Figs. 18-23).
* :func:`beside_paper_view`, :func:`beside_bars_widget`: the reproducibility report's numbers beside the paper's.
* :func:`switch_view`, :func:`figure_switch`, :func:`pair_switch`, :func:`failure_switch`,
  :func:`beside_bars_switch`, :func:`gallery_indices`: the static twin of a widget for the rendered book, where no
  Python kernel runs: every state the control can reach is drawn when the chapter runs, and plotly.js (served
  by the book) switches between them (:func:`qpmlib.figures.switch.switch_figure`).
"""

from __future__ import annotations

import html
import json
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import Markdown, display
from matplotlib.figure import Figure

from qpmlib.analysis.failures import FAILURE_CATEGORIES, FAILURE_TITLES, FailureData
from qpmlib.analysis.inspection import RunInspection
from qpmlib.analysis.pairs import (
    class_pair_table,
    confused_pairs_table,
    distinct_on_differing_parts,
    distinguishing_attributes,
    example_index,
    top_activating_patches,
)
from qpmlib.figures.explanations import class_pair_figure, top_patches_figure
from qpmlib.figures.failures import failure_figure
from qpmlib.analysis.summary import table_rows
from qpmlib.figures.plots import bar_beside_paper, figure_png
from qpmlib.figures.switch import PLOTLY_MIME, State, StateLike, picture, switch_figure
from qpmlib.paper import method_display, metric_display

__all__ = ["figure_widget", "pair_view", "show_pair", "show_class_pairs", "pair_widget", "show_failure_category",
           "failure_widget", "beside_paper_view", "beside_bars_widget", "StaticView", "switch_view", "figure_switch",
           "pair_switch", "failure_switch", "beside_bars_switch", "gallery_indices", "PLOTLY_MIME"]

#: Where the live version of a control runs, said next to its static twin in the book.
LIVE_DEFAULT = ("the live control, with every value, is the widget in the cell above: it runs in Jupyter (download "
                "this page's notebook with the download button at the top of the page, then run it)")


def figure_widget(control: widgets.ValueWidget, draw: Callable[[Any], Figure | None]) -> widgets.VBox:
    """``control`` above the PNG of ``draw(control.value)``, redrawn whenever the control changes.

    Args:
        control: any ipywidgets control with a ``value``.
        draw: value -> figure (None draws nothing).

    Returns:
        A VBox of the control and the picture.
    """
    def png(value) -> bytes:
        fig = draw(value)
        return b"" if fig is None else figure_png(fig)

    picture = widgets.Image(value=png(control.value), format="png")
    control.observe(lambda change: setattr(picture, "value", png(change["new"])), names="value")
    return widgets.VBox([control, picture])


# ------------------------------------------------------------------------------------------------- class pairs
def pair_view(ins: RunInspection, pair: tuple[int, int]) -> tuple[Figure, pd.DataFrame]:
    """The two local explanations of a class pair (one test image per class) and the table of its features."""
    c1, c2 = pair
    preds, images, maps = ins.predictions, ins.images["test"], ins.maps("test")
    i1, i2 = (example_index(preds.label, preds.pred, c) for c in pair)
    fig = class_pair_figure(images[i1], maps[i1], images[i2], maps[i2], ins.assignment, None, c1, c2,
                            class_names=ins.names)
    return fig, class_pair_table(ins.assignment, None, c1, c2, parts=ins.parts, class_names=ins.names)


def show_pair(ins: RunInspection, pair: tuple[int, int], *, n_patches: int = 5) -> pd.DataFrame:
    """Display everything about a class pair: explanations, features, differing attributes, prototype patches.

    Args:
        ins: the run.
        pair: two class labels.
        n_patches: most activating training patches shown per feature.

    Returns:
        The pair's feature table (:func:`qpmlib.analysis.pairs.class_pair_table`).
    """
    fig, table = pair_view(ins, pair)
    display(fig)
    display(table)
    if ins.has_parts:
        differing = distinguishing_attributes(ins.attributes, *pair)
        display(differing)
        share = distinct_on_differing_parts(table, differing)
        display(Markdown(f"Features used by only one of the two classes that sit on a part where the classes "
                         f"differ: **{share:.0%}**." if not math.isnan(share) else
                         "The two classes use the same features."))
    for f, role in zip(table.feature, table.role):
        top = top_activating_patches(ins.maps("train"), f, n_patches)
        where = f", {ins.parts.loc[f, 'part']}" if ins.parts is not None else ""
        display(top_patches_figure(ins.images["train"], top, ins.grid, ncols=n_patches,
                                   title=f"feature {f} ({role}{where})"))
    return table


def _pair_label(ins: RunInspection, pair: tuple[int, int]) -> str:
    return f"{ins.names[pair[0]]} / {ins.names[pair[1]]}"


def pair_widget(ins: RunInspection, pairs: Sequence[tuple[int, int]]) -> widgets.VBox:
    """A drop-down of class pairs above the pair's figure and feature table (redrawn on change)."""
    def render(pair) -> tuple[bytes, str]:
        fig, table = pair_view(ins, pair)
        return figure_png(fig), table.to_html(index=False, float_format="{:.2f}".format)

    choice = widgets.Dropdown(options=[(_pair_label(ins, p), p) for p in pairs], value=pairs[0],
                              description="pair")
    png, html = render(choice.value)
    picture, table = widgets.Image(value=png, format="png"), widgets.HTML(value=html)

    def update(change) -> None:
        picture.value, table.value = render(change["new"])

    choice.observe(update, names="value")
    return widgets.VBox([choice, picture, table])


def pair_switch(ins: RunInspection, pairs: Sequence[tuple[int, int]]) -> StaticView:
    """The static twin of :func:`pair_widget`: every pair's figure and feature table, drawn now."""
    states = {}
    for pair in pairs:
        fig, table = pair_view(ins, pair)
        states[_pair_label(ins, pair)] = State(picture(fig, fmt="webp"), table)
    return switch_view(states, label="pair", what=f"the {len(pairs)} class pairs of the widget")


def show_class_pairs(ins: RunInspection, n_pairs: int, *, n_patches: int = 5) -> list[tuple[int, int]]:
    """Display a run's class pairs as chapter 07 does for its main dataset, in one go (paper Figs. 14-17 on a
    profile's other datasets): the run, the pairs offered (:meth:`RunInspection.class_pairs`: the paper's figure
    pairs first), everything about the first pair (:func:`show_pair`) and every pair's figure (:func:`pair_switch`).

    Args:
        ins: the run, e.g. ``inspect_run(profile, dataset="cars")``.
        n_pairs: most pairs offered.
        n_patches: most activating training patches shown per feature.

    Returns:
        The pairs shown.
    """
    pairs = ins.class_pairs(n_pairs)
    preds = ins.predictions
    display(Markdown(f"**{ins.profile.data.dataset}**: {ins.describe()}."))
    display(confused_pairs_table(preds.label, preds.pred, n_pairs, class_names=ins.names, attributes=ins.attributes))
    show_pair(ins, pairs[0], n_patches=n_patches)
    display(pair_switch(ins, pairs))
    return pairs


# -------------------------------------------------------------------------------------------- failure analysis
def _category_figure(data: FailureData, picks: pd.DataFrame, category: str) -> Figure | None:
    examples = data.examples(picks, category)
    return failure_figure(examples, title=FAILURE_TITLES[category]) if examples else None


def show_failure_category(data: FailureData, picks: pd.DataFrame, category: str) -> Figure | None:
    """Display the failure rows of one category (or say that it is empty); returns the figure."""
    fig = _category_figure(data, picks, category)
    if fig is None:
        display(Markdown(f"*No test image is in the category “{FAILURE_TITLES[category]}” for this run.*"))
    else:
        display(fig)
    return fig


def failure_widget(data: FailureData, picks: pd.DataFrame) -> widgets.VBox:
    """A drop-down of the failure categories above that category's rows."""
    control = widgets.Dropdown(options=[(FAILURE_TITLES[c], c) for c in FAILURE_CATEGORIES],
                               value=FAILURE_CATEGORIES[0], description="category")
    return figure_widget(control, lambda category: _category_figure(data, picks, category))


def failure_switch(data: FailureData, picks: pd.DataFrame) -> StaticView:
    """The static twin of :func:`failure_widget`: the rows of every failure category, drawn now."""
    return figure_switch([(FAILURE_TITLES[c], c) for c in FAILURE_CATEGORIES],
                         lambda category: _category_figure(data, picks, category), label="category", fmt="webp",
                         empty="No test image is in this category for this run.")


# ----------------------------------------------------------------------------------------- reproducibility report
def beside_paper_view(frame: pd.DataFrame):
    """A :func:`qpmlib.analysis.summary.gather_beside_paper` table for reading: display names, signed differences.

    Returns:
        pandas Styler with columns table, row, dataset, metric, ours, paper, difference and reason.
    """
    view = frame.assign(row=[method_display(r) for r in frame.row], metric=[metric_display(m) for m in frame.metric])
    return (view[["table", "row", "dataset", "metric", "ours", "paper", "difference", "reason"]].style
            .format({"difference": lambda v: "n/a" if v != v else f"{v:+.1f}"}).hide(axis="index"))


def beside_bars_widget(beside: pd.DataFrame, tables: Sequence[str]) -> widgets.VBox:
    """A drop-down of the paper's tables above the bars of ours beside the paper's for that table.

    Args:
        beside: :func:`qpmlib.analysis.summary.gather_beside_paper` table.
        tables: table names to offer, the first shown.
    """
    return figure_widget(widgets.Dropdown(options=list(tables), value=tables[0], description="table"),
                         lambda table: _beside_bars(beside, table))


def _beside_bars(beside: pd.DataFrame, table: str) -> Figure | None:
    rows = table_rows(beside, table)
    return bar_beside_paper(rows) if rows["ours_mean"].notna().any() else None


def beside_bars_switch(beside: pd.DataFrame, tables: Sequence[str]) -> StaticView:
    """The static twin of :func:`beside_bars_widget`: the bars of every table, drawn now."""
    return figure_switch([(t, t) for t in tables], lambda table: _beside_bars(beside, table), label="table",
                         empty="This run has no number for this table.")


# ------------------------------------------------------------------------------------ static twins of the widgets
class StaticView:
    """A :func:`~qpmlib.figures.switch.switch_figure` to display in a notebook and in the rendered book.

    Its outputs are the Plotly figure (drawn by JupyterLab's plotly extension) and an HTML snippet for the book:
    a sentence saying what the control holds and where its live version runs, then the figure, drawn by the
    ``Plotly`` global that the book loads from its own copy of plotly.js.
    """

    def __init__(self, figure: go.Figure, note: str):
        self.figure = figure
        self.note = note

    @property
    def labels(self) -> list[str]:
        """The control's step labels, in order."""
        menus = self.figure.layout.updatemenus or self.figure.layout.sliders
        steps = menus[0].buttons if self.figure.layout.updatemenus else menus[0].steps
        return [s.label for s in steps]

    def html(self) -> str:
        """The book's HTML: the note, a div and the script that draws the figure into it once the page has loaded."""
        div = f"qpm-switch-{uuid.uuid4().hex[:12]}"
        layout = self.figure.layout
        fitted = go.Figure(self.figure).update_layout(width=None, autosize=True)  # as wide as the page allows
        spec = fitted.to_json()  # plotly's encoder (numpy arrays, NaN); "</" is escaped so the script stays one
        spec = spec.replace("</", "<\\/")
        config = json.dumps({"displayModeBar": False, "responsive": True, "typesetMath": False})
        return (
            f'<div class="qpm-switch">\n<p class="qpm-switch-note"><em>{html.escape(self.note)}</em></p>\n'
            f'<div id="{div}" class="qpm-switch-figure" style="width: 100%; max-width: {layout.width}px; '
            f'height: {layout.height}px;"></div>\n'
            f'<script type="text/javascript">(function () {{\n'
            f'  var spec = {spec};\n'
            f'  function draw() {{ Plotly.newPlot("{div}", spec.data, spec.layout, {config}); }}\n'
            f'  if (document.readyState === "loading") {{ document.addEventListener("DOMContentLoaded", draw); }}'
            f' else {{ draw(); }}\n}})();</script>\n</div>'
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {
            PLOTLY_MIME: json.loads(self.figure.to_json()),
            "text/html": self.html(),
            "text/plain": f"<switch between {len(self.labels)} precomputed states: {', '.join(self.labels)}>",
        }


def switch_view(states: Mapping[str, StateLike], *, control: str = "dropdown", label: str = "",
                live: str = LIVE_DEFAULT, what: str | None = None, **options) -> StaticView:
    """The static twin of a widget: every state drawn now, switched in the browser by a drop-down or a slider.

    Args:
        states: control label -> what that position shows (a figure, a list of figures, a
            :class:`~qpmlib.figures.switch.State` or None); see :func:`qpmlib.figures.switch.switch_figure`.
        control: "dropdown" or "slider".
        label: what the control chooses.
        live: where the live version runs and what more it offers, ending the sentence shown above the figure.
        what: how the sentence names the states (default: "<n> values of <label>").
        **options: passed to :func:`~qpmlib.figures.switch.switch_figure` (ncols, fmt, empty, width).

    Returns:
        a :class:`StaticView` (a cell that ends with it displays it).
    """
    what = what or f"{len(states)} values of {label or 'the control'}"
    note = f"Precomputed when this chapter ran: this {control.replace('dropdown', 'drop-down')} switches between " \
           f"{what}; {live}."
    return StaticView(switch_figure(states, control=control, label=label, **options), note)


def figure_switch(choices: Sequence[tuple[str, Any]], draw: Callable[[Any], StateLike], *, label: str,
                  control: str = "dropdown", **options) -> StaticView:
    """The static twin of :func:`figure_widget`: ``draw`` called now for every choice of the control.

    Args:
        choices: (label shown, value passed to ``draw``) for each position of the control, in order.
        draw: value -> figure, list of figures, :class:`~qpmlib.figures.switch.State` or None.
        label: what the control chooses.
        control: "dropdown" or "slider".
        **options: passed to :func:`switch_view` (live, what, ncols, fmt, empty, width).
    """
    return switch_view({name: draw(value) for name, value in choices}, control=control, label=label, **options)


def gallery_indices(n: int, k: int, *, seed: int = 0, first: int | None = None) -> list[int]:
    """A fixed, seeded choice of ``k`` of ``n`` images (sorted), e.g. the test images of a static gallery.

    Args:
        n: how many images there are.
        k: how many to pick (all when ``k >= n``).
        seed: seed of the pick.
        first: an index to include whatever the pick (e.g. the chapter's default image), placed first.

    Raises:
        ValueError: for ``n < 1`` or ``k < 1``, or ``first`` outside ``[0, n)``.
    """
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 images and k >= 1 picks, got n={n}, k={k}")
    if first is not None and not 0 <= first < n:
        raise ValueError(f"first={first} is not an image index in [0, {n})")
    rest = [i for i in range(n) if i != first]
    picked = np.random.default_rng(seed).choice(len(rest), size=min(k - (first is not None), len(rest)),
                                                replace=False)
    return ([first] if first is not None else []) + sorted(int(rest[j]) for j in picked)
