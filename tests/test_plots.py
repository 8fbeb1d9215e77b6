"""qpmlib.figures.plots: the structure of every plot (the radar's numbers are tested in test_tables.py)."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from qpmlib import paper
from qpmlib.analysis import summary as tables
from qpmlib.analysis.tables import radar_frame
from qpmlib.figures import plots


def test_radar_plot_structure_and_legend():
    frame = radar_frame(paper.paper_values(), methods=paper.FIG2_METHODS)
    fig = plots.radar_plot(frame)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.name == "polar"
    assert len(ax.lines) == 4 and all(len(line.get_xdata()) == 8 for line in ax.lines)  # closed heptagons
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "DINO-QPM (98.4 %)"  # largest area first
    assert len(ax.get_xticklabels()) == 7 and ax.get_xticklabels()[3].get_text().startswith("1 / ")


def test_radar_plot_rejects_gaps():
    frame = pd.DataFrame({"accuracy": [1.0, np.nan], "sid_at_5": [1.0, 1.0], "plausibility": [1.0, 1.0]},
                         index=["a", "b"])
    with pytest.raises(ValueError, match="b"):
        plots.radar_plot(frame)


def _sweep_frame():
    rows = []
    for lam in (0.0, 1.0, 5.0):
        for stage in ("dense", "finetune"):
            for metric, base in (("accuracy", 0.8), ("plausibility", 0.6)):
                rows.append({"l1_fm": lam, "stage": stage, "metric": metric, "mean": base + 0.01 * lam,
                             "std": 0.005})
    return pd.DataFrame(rows)


def test_lambda_sweep_plot_panels_lines_and_reference():
    fig = plots.lambda_sweep_plot(_sweep_frame(), "l1_fm", ["accuracy", "plausibility"], hue="stage",
                                  reference={"accuracy": 0.8})
    assert len(fig.axes) == 2
    acc, plaus = fig.axes
    assert len(acc.containers) == 2 and len(plaus.containers) == 2  # one errorbar line per stage
    assert "dense model (reference)" in acc.get_legend_handles_labels()[1]
    assert "dense model (reference)" not in plaus.get_legend_handles_labels()[1]
    y = acc.containers[0].lines[0].get_ydata()
    assert y.tolist() == pytest.approx([80.0, 81.0, 85.0])  # percent scaling, sorted by lambda
    assert acc.get_ylabel() == "Accuracy [%]"


def test_lambda_sweep_plot_errors():
    with pytest.raises(ValueError, match="sid_at_5"):
        plots.lambda_sweep_plot(_sweep_frame(), "l1_fm", "sid_at_5")
    with pytest.raises(ValueError, match="missing"):
        plots.lambda_sweep_plot(_sweep_frame(), "fdl", "accuracy")


def test_depth_plot_one_line_per_stage_and_source():
    df = pd.DataFrame([
        {"n_layers": n, "stage": s, "pooling": src, "metric": "accuracy", "mean": 0.7 + 0.02 * n}
        for n in (0, 1, 2, 4) for s in ("dense", "qpm") for src in ("avg_pooling", "cls")
    ])
    fig = plots.depth_plot(df)
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.containers) == 4
    assert ax.get_legend_handles_labels()[1] == ["dense, avg_pooling", "dense, cls", "qpm, avg_pooling", "qpm, cls"]
    assert [t for t in ax.get_xticks()] == [0, 1, 2, 4]


def test_grid_heatmap_panels_and_values():
    df = pd.DataFrame([
        {"n_selected": a, "n_per_class": b, "dataset": d, "metric": "accuracy", "mean": 0.9 + 0.001 * a}
        for a in (40, 50) for b in (4, 5) for d in ("cub", "cars")
    ])
    fig = plots.grid_heatmap(df, "n_per_class", "n_selected", col="dataset", metric="accuracy")
    assert len(fig.axes) == 4  # two heatmaps, two colour bars
    annotations = sorted({t.get_text() for t in fig.axes[0].texts})
    assert annotations == ["94.0", "95.0"]
    with pytest.raises(ValueError, match="summarise"):
        plots.grid_heatmap(pd.concat([df, df]), "n_per_class", "n_selected", col="dataset", metric="accuracy")


def test_bar_beside_paper_structure():
    ours = pd.DataFrame({"method": ["dino_qpm", "dense"], "dataset": ["cub", "cub"],
                         "metric": ["accuracy", "accuracy"], "mean": [0.88, 0.78], "std": [0.01, 0.02]})
    beside = tables.beside_paper(ours, "table1")
    fig = plots.bar_beside_paper(beside, metrics=["accuracy", "plausibility"])
    assert len(fig.axes) == 3  # accuracy cub, accuracy cars, plausibility cub
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 8  # ours and paper for all eight methods
    heights = [p.get_height() for p in ax.patches[:8]]
    assert heights[6] == pytest.approx(88.0) and math.isnan(heights[0])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ours", "paper"]
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.bar_beside_paper(beside, metrics=["seconds_per_epoch"])


def test_plots_emit_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.radar_plot(radar_frame(paper.paper_values(), methods=paper.FIG2_METHODS))
        plots.lambda_sweep_plot(_sweep_frame(), "l1_fm", "accuracy", hue="stage", logx=True)


def test_radar_frame_takes_counts_from_any_dataset():
    ours = pd.DataFrame({"method": ["m1", "m1"], "dataset": ["cub", "cub"],
                         "metric": ["accuracy", "n_features"], "mean": [0.9, 50.0]})
    frame = radar_frame(ours, [("accuracy", "cub"), ("n_features", "any")], value="mean")
    assert frame.loc["m1"].tolist() == [0.9, 50.0]
    with pytest.raises(ValueError, match="m2"):
        radar_frame(ours, value="mean", methods=["m2"])


def test_figure_png_returns_png_bytes_of_the_figure():
    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [0, 1])
    data = plots.figure_png(fig, dpi=50)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # the IHDR chunk holds the size in pixels: 2 x 1 inches at 50 dpi
    assert int.from_bytes(data[16:20], "big") == 100 and int.from_bytes(data[20:24], "big") == 50


def test_cosine_histogram_marks_the_mean():
    fig = plots.cosine_histogram(np.array([0.1, 0.2, 0.6]), title="t")
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "t"
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "mean 0.300"


def test_sweep_heatmap_uses_the_parameters_labels():
    rows = [{"hidden_size": h, "n_features": f, "stage": "dino_qpm", "metric": "accuracy", "mean": 0.5}
            for h in (32, 64) for f in (16, 24)]
    fig = plots.sweep_heatmap(pd.DataFrame(rows), "hidden_size", "n_features", "accuracy")
    assert fig.axes[0].get_xlabel() == "N_hidden" and fig.axes[0].get_ylabel() == "N_f"
