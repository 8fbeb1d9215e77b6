"""Tests for qpmlib.pretrain.corpus: disjoint SynthBirds sets and the multi-crop views of a training step."""

import numpy as np
import pytest
import torch
from PIL import Image

from qpmlib.data import synthbirds as sb
from qpmlib.data.images import preprocess
from qpmlib.pretrain import corpus
from qpmlib.pretrain.corpus import CORPUS, HELD_OUT, PATCH_LABELS, MultiCrop, SynthSet
from qpmlib.config import get_profile

SMALL = SynthSet("small", n_classes=5, n_train=2, n_test=1, image_size=56, seed=11)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return corpus.prepare_set(SMALL, tmp_path_factory.mktemp("data"), verbose=False)


def profile_classes(name):
    data = get_profile(name).data
    return set(sb.class_combinations(data.n_classes, data.seed))


def test_corpus_and_held_out_share_no_class_with_the_profiles_or_each_other():
    demo, smoke = profile_classes("demo"), profile_classes("smoke")
    excluded = set(corpus.excluded_combinations(CORPUS))
    assert demo | smoke <= excluded and len(excluded) == len(demo | smoke)
    corpus_classes = set(sb.class_combinations(CORPUS.n_classes, CORPUS.seed, excluded))
    held = set(sb.class_combinations(HELD_OUT.n_classes, HELD_OUT.seed, corpus.excluded_combinations(HELD_OUT)))
    assert len(corpus_classes) == CORPUS.n_classes and len(held) == HELD_OUT.n_classes
    assert not corpus_classes & (demo | smoke)
    assert not held & (demo | smoke | corpus_classes)


def test_generated_set_has_the_computed_classes_and_a_card(small_root):
    written = sb.attribute_combinations(small_root)
    assert written == sb.class_combinations(SMALL.n_classes, SMALL.seed, corpus.excluded_combinations(SMALL))
    assert not set(written) & profile_classes("demo")
    card = SMALL.card()
    assert card["folder"] == small_root.name and card["generator_args"]["exclude"].startswith("25:sha256-")
    assert card["excludes_classes_of"] == ["smoke", "demo"]


def test_patch_labels_cover_every_part_value():
    assert PATCH_LABELS[0] == "background"
    for attr, part in sb.ATTRIBUTE_PART.items():
        for value in sb.ATTRIBUTES[attr]:
            assert f"{part}:{value}" in PATCH_LABELS
    assert "legs" in PATCH_LABELS and len(set(PATCH_LABELS)) == len(PATCH_LABELS)


def views(data, seed, **kw):
    args = dict(global_size=28, local_size=14, n_local=3)
    return data.batch([0, 3, 5], np.random.default_rng(seed), **{**args, **kw})


def test_multicrop_shapes_and_determinism(small_root):
    data = MultiCrop(small_root, split="all")
    assert len(data) == SMALL.n_classes * (SMALL.n_train + SMALL.n_test)
    v = views(data, 0)
    assert v["global"].shape == (6, 3, 28, 28) and v["local"].shape == (9, 3, 14, 14)
    assert v["parts"].shape == (6, 2, 2) and v["patch_labels"].shape == (6, 2, 2)
    assert v["attributes"].shape == (3, len(sb.ATTRIBUTES))
    assert 0 <= v["global"].min() and v["global"].max() <= 1  # the reference preprocessing's [0, 1] range
    again = views(data, 0)
    for key in v:
        assert torch.equal(v[key], again[key])
    assert not torch.equal(v["global"], views(data, 1)["global"])
    assert views(data, 0, n_local=0)["local"].shape == (0, 3, 14, 14)


def test_whole_image_crops_match_the_reference_preprocessing_and_part_map(small_root):
    data = MultiCrop(small_root, split="all")
    # scale (1, 1) admits only the whole image; without blur a crop is the preprocessed (maybe flipped) image
    v = data.batch([2], np.random.default_rng(0), global_size=56, local_size=14, n_local=0,
                   global_scale=(1.0, 1.0), blur_probability=0.0)
    with Image.open(data.paths[2]) as im:
        img = im.convert("RGB")
    straight = preprocess(img, 56, dataset="synthbirds")
    mirrored = preprocess(img.transpose(Image.FLIP_LEFT_RIGHT), 56, dataset="synthbirds")
    part_map = np.asarray(Image.open(data.parts[2]).resize((4, 4), Image.NEAREST), dtype=np.int64)
    for c in range(2):
        flipped = torch.allclose(v["global"][c], mirrored)
        assert flipped or torch.allclose(v["global"][c], straight)
        expected = part_map[:, ::-1] if flipped else part_map
        assert (v["parts"][c].numpy() == expected).all()


def test_patch_labels_name_the_part_and_its_value(small_root):
    data = MultiCrop(small_root, split="all")
    v = data.batch(range(len(data)), np.random.default_rng(2), global_size=56, local_size=14, n_local=0)
    attrs = list(sb.ATTRIBUTES)
    for crop in range(2 * len(data)):
        image = crop % len(data)
        for pid, lab in zip(v["parts"][crop].ravel().tolist(), v["patch_labels"][crop].ravel().tolist()):
            name = PATCH_LABELS[lab]
            if pid == 0:
                assert name == "background"
                continue
            part = sb.PART_NAMES[pid - 1]
            assert name.split(":")[0] == part
            attr = next((a for a, p in sb.ATTRIBUTE_PART.items() if p == part), None)
            if attr is not None:
                assert name == f"{part}:{sb.ATTRIBUTES[attr][v['attributes'][image, attrs.index(attr)]]}"
