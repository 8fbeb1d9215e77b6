"""Chapter helpers: provenance line, stand-in and random-weights banners, values for glue."""

import numpy as np

from qpmlib.backbones import read_card
from qpmlib.book.chapter import Provenance, banner_markdown, plain_value, provenance, provenance_line, standin_summary


def _prov(pretrained):
    return Provenance("smoke", "synthbirds", "tiny_vit_test", pretrained, (0, 1), "CPU (2 cores)", "abc1234")


def test_provenance_line_names_everything():
    line = provenance_line(_prov(False))
    for part in ("`smoke`", "synthbirds", "`tiny_vit_test`", "**random weights**", "seeds 0, 1", "CPU", "`abc1234`"):
        assert part in line
    assert "pretrained weights" in provenance_line(_prov(True))


def test_banner_warns_for_random_weights_and_describes_the_stand_in():
    assert "fixed random weights" in banner_markdown(_prov(False))
    dinov2 = Provenance("paper", "cub", "dinov2_vitb14_reg", True, (0,), "GPU", "abc1234")
    assert banner_markdown(dinov2) is None
    standin = Provenance("demo", "synthbirds", "standin_s14_reg", True, (0,), "CPU (2 cores)", "abc1234")
    note = banner_markdown(standin)
    assert note.startswith(":::{note}") and "miniature DINOv2" in note and "pretrained itself" in note
    assert "what it cannot show" in note or "nothing here can show" in note
    assert "stand-in pretrained by this project" in provenance_line(standin)


def test_standin_summary_reads_the_card():
    card = read_card("standin_s14_reg")
    text = standin_summary("standin_s14_reg")
    assert f"width {card['architecture']['embed_dim']}" in text and "4 register tokens" in text
    assert f"{card['steps']:,} steps" in text and card["objective"] in text
    assert "no register tokens" in standin_summary("standin_s14")


def test_smoke_profile_reads_the_small_stand_in():
    p = provenance("smoke")
    assert p.backbone == "standin_t14_reg" and p.pretrained is True and p.seeds == (0,)


def test_plain_value_turns_numpy_scalars_into_python_numbers():
    assert type(plain_value(np.float64(1.5))) is float
    assert type(plain_value(np.int64(3))) is int
    assert plain_value("x") == "x"
