"""qpmlib.analysis.standin and qpmlib.figures.standin on tiny stand-ins trained here (cards, curves, probes, PCA,
token norms)."""

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest
import torch

from qpmlib import backbones
from qpmlib.analysis import standin
from qpmlib.config import get_profile
from qpmlib.data import synthbirds
from qpmlib.figures import standin as standin_figures
from qpmlib.pretrain import trainer

TWINS = ("standin_t14", "standin_t14_reg")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Tiny-configuration stand-ins of both register variants, exported with their cards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("weights")
    data = tmp_path_factory.mktemp("data")
    for name in TWINS:
        cfg = trainer.tiny_config(name, steps=4)
        result = trainer.pretrain(cfg, tmp_path_factory.mktemp(name), data_dir=data, verbose=False)
        trainer.export(result, cfg, folder, extra={"held_out_probe": {"linear_probe": 0.5, "knn": 0.25}})
    torch.set_num_threads(threads)
    return folder


@pytest.fixture
def standins(weights_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "WEIGHTS_DIR", weights_dir)
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QPMLIB_DATA", str(tmp_path / "data"))
    return weights_dir


def test_profile_standins():
    assert standin.profile_standins("demo") == ["standin_t14", "standin_s14", "standin_s14_reg"]
    assert standin.profile_standins("smoke") == ["standin_t14", "standin_t14_reg"]
    assert standin.profile_standins("paper") == []
    prof, names, note = standin.shown_standins("paper")  # the paper profile reads DINOv2: the demo's are shown
    assert prof.name == "demo" and names == standin.profile_standins("demo") and "`dinov2_vitb14_reg`" in note
    assert standin.shown_standins("smoke")[1:] == (["standin_t14", "standin_t14_reg"], None)
    assert standin.register_twins(["standin_t14_reg", "standin_s14", "standin_s14_reg"], "standin_s14_reg") == \
        ["standin_s14", "standin_s14_reg"]


def test_probe_headlines_pick_the_main_rows():
    probes = pd.DataFrame([
        {"backbone": "a", "weights": "stand-in", "k-NN": 0.5, "linear probe": 0.75},
        {"backbone": "a", "weights": "random", "k-NN": 0.1, "linear probe": 0.125},
        {"backbone": "b", "weights": "stand-in", "k-NN": 0.9, "linear probe": 0.9},
    ])
    assert standin.probe_headlines(probes, "a", 4) == {"sb_probe": 75.0, "sb_knn": 50.0, "sb_probe_random": 12.5,
                                                       "sb_knn_random": 10.0, "sb_chance": 25.0}
    assert np.isnan(standin.probe_headlines(probes, "b", 4)["sb_knn_random"])
    with pytest.raises(KeyError, match="no stand-in row of 'c'"):
        standin.probe_headlines(probes, "c", 4)


def test_card_table_and_loss_curves(standins):
    table = standin.card_table(list(TWINS))
    assert list(table.index) == list(TWINS)
    assert table.loc["standin_t14_reg", "registers"] == 4 and table.loc["standin_t14", "registers"] == 0
    assert table.loc["standin_t14", "steps"] == 4 and table.loc["standin_t14", "held-out probe"] == 0.5
    assert "auxiliary" in table.loc["standin_t14", "objective"]
    fig = standin_figures.loss_curves_figure(list(TWINS))
    assert isinstance(fig, matplotlib.figure.Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert "DINO: KL(teacher || student)" in titles and "auxiliary: part and value" in titles
    assert all(len(ax.lines) == 2 for ax in fig.axes)


def test_probe_table_pca_and_norms_on_the_smoke_profile(standins):
    prof = get_profile("smoke").replace(seeds=(0,))
    probes = standin.probe_table(prof, list(TWINS), random=("standin_t14_reg",))
    assert list(probes["weights"]) == ["stand-in", "stand-in", "random"]
    assert probes[["k-NN", "linear probe"]].apply(lambda c: c.between(0, 1)).all().all()
    parts = standin.part_probe_table(prof, ["standin_t14_reg"], random=("standin_t14_reg",), n_train=3, n_test=2,
                                     min_patches=1)
    assert list(parts["weights"]) == ["stand-in", "random", "-"] and parts["backbone"].iloc[-1] == "patch position only"
    assert list(parts.columns[3:]) == [*synthbirds.PART_NAMES, "background"]
    assert parts["balanced accuracy"].between(0, 1).all()
    fig = standin_figures.pca_figure(prof, ["standin_t14_reg"], n_images=2, random=("standin_t14_reg",))
    assert len([ax for ax in fig.axes if ax.images]) == 3 * 2  # images, stand-in, random
    norms = standin.token_norms_of(prof, list(TWINS), n_images=3)
    assert norms["standin_t14_reg"]["registers"].shape == (3, 4) and norms["standin_t14"]["patches"].shape == (3, 64)
    table = standin.artefact_table(norms)
    assert table.loc["standin_t14", "registers"] == 0 and np.isnan(table.loc["standin_t14", "median register norm"])
    assert isinstance(standin_figures.norm_histogram_figure(norms), matplotlib.figure.Figure)


def test_twin_part_table_compares_dino_qpm_on_the_stand_in_and_its_random_twin(standins):
    from qpmlib.config import apply_overrides
    from qpmlib.runs.methods import run_methods

    prof = apply_overrides(get_profile("smoke"), {"train.dense_epochs": 1, "train.ft_epochs": 1})
    table = standin.twin_part_table(prof, 0)
    assert list(table["weights"]) == ["stand-in", "random"]
    assert table[["accuracy", "part_alignment", "part_peak_alignment"]].apply(lambda c: c.between(0, 1)).all().all()
    trained = run_methods("dino_qpm", prof, [0], compute=False)[0]  # the row is the stored run of Table 1's setting
    assert table["accuracy"].iloc[0] == trained.metrics["accuracy"]
    assert table["part_peak_alignment"].iloc[0] == trained.metrics["part_peak_alignment"]
    assert standin.twin_requests(prof, 0)[0].overrides == (("backbone.weights", "random"),)
    assert standin.twin_requests("paper", 0) == []  # DINOv2 is no stand-in: no twin run


def norms_with_outliers(share_without, share_with, n=1000):
    def patches(share):
        x = np.ones((1, n))
        x[0, : int(share * n)] = 10.0
        return x

    return {"noreg": {"cls": np.ones(1), "registers": np.zeros((1, 0)), "patches": patches(share_without)},
            "reg": {"cls": np.ones(1), "registers": np.full((1, 4), 8.0), "patches": patches(share_with)}}


@pytest.mark.parametrize("without, with_reg, expected", [(0.02, 0.0, True), (0.002, 0.0, False),
                                                         (0.02, 0.015, False), (0.0, 0.0, False)])
def test_artefact_verdict(without, with_reg, expected):
    table = standin.artefact_table(norms_with_outliers(without, with_reg))
    assert table.loc["noreg", "share > 2 x median"] == pytest.approx(without)
    assert table.loc["reg", "median register norm"] == 8.0
    assert standin.artefacts_appear(table) is expected
    assert standin.artefacts_appear(table.loc[["reg"]]) is False
    assert isinstance(table, pd.DataFrame)


def test_calibration_table_reads_the_committed_runs():
    table = standin.calibration_table()
    assert {"A", "G", "H", "J"} <= set(table.index)
    assert table["held-out probe"].between(0, 1).all() and table["steps"].min() > 0
    ssl_only = table.loc["G"]
    assert "auxiliary" not in ssl_only["objective"] and ssl_only["held-out probe"] < 0.1
