"""Chapter helpers: provenance line, random-weights banner, values for glue."""

import numpy as np

from qpmlib.book.chapter import Provenance, banner_markdown, plain_value, provenance, provenance_line


def _prov(pretrained):
    return Provenance("smoke", "synthbirds", "tiny_vit_test", pretrained, (0, 1), "CPU (2 cores)", "abc1234")


def test_provenance_line_names_everything():
    line = provenance_line(_prov(False))
    for part in ("`smoke`", "synthbirds", "`tiny_vit_test`", "**random weights**", "seeds 0, 1", "CPU", "`abc1234`"):
        assert part in line
    assert "pretrained weights" in provenance_line(_prov(True))


def test_banner_only_for_random_weights():
    assert banner_markdown(_prov(True)) is None
    assert "fixed random weights" in banner_markdown(_prov(False))


def test_smoke_profile_has_no_pretrained_backbone():
    p = provenance("smoke")
    assert p.backbone == "tiny_vit_test" and p.pretrained is False and p.seeds == (0,)


def test_plain_value_turns_numpy_scalars_into_python_numbers():
    assert type(plain_value(np.float64(1.5))) is float
    assert type(plain_value(np.int64(3))) is int
    assert plain_value("x") == "x"
