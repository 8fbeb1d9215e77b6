"""qpmlib.data.synthbirds: CUB format, determinism, class design, part ground truth, atomic writing."""

import colorsys
import hashlib
import itertools
import json
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from qpmlib.data import cub
from qpmlib.data import synthbirds as sb

ARGS = dict(n_classes=4, n_train=3, n_test=2, image_size=64, seed=3)


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return sb.generate(tmp_path_factory.mktemp("sb") / "birds", **ARGS, verbose=False)


def test_same_arguments_give_identical_files(root, tmp_path):
    again = sb.generate(tmp_path / "again", **ARGS, verbose=False)
    assert _hashes(root) == _hashes(again)
    other = sb.generate(tmp_path / "other", **{**ARGS, "seed": 4}, verbose=False)
    jpgs = lambda h: {v for k, v in h.items() if k.endswith(".jpg")}  # noqa: E731
    assert not jpgs(_hashes(root)) & jpgs(_hashes(other))  # another seed draws other images


@pytest.mark.parametrize("layout", ["cub", "cars"])
def test_images_rendered_by_several_threads_are_the_same_files(root, tmp_path, monkeypatch, layout):
    monkeypatch.setattr(sb, "RENDER_THREADS", 1)
    one = sb.generate(tmp_path / "one", **ARGS, layout=layout, verbose=False)
    monkeypatch.setattr(sb, "RENDER_THREADS", 3)
    three = sb.generate(tmp_path / "three", **ARGS, layout=layout, verbose=False)
    # a .mat file's 128-byte header holds the second it was written; the rest must match
    tail = lambda r: {p.relative_to(r).as_posix(): p.read_bytes()[128 if p.suffix == ".mat" else 0:]  # noqa: E731
                      for p in sorted(r.rglob("*")) if p.is_file()}
    assert tail(one) == tail(three)
    if layout == "cub":
        assert _hashes(one) == _hashes(root)


def test_cub_format_read_by_the_cub_reader(root):
    df = cub.read_index(root)
    n = ARGS["n_classes"] * (ARGS["n_train"] + ARGS["n_test"])
    assert len(df) == n and df["image_id"].tolist() == list(range(1, n + 1))
    assert sorted(df["label"].unique()) == list(range(ARGS["n_classes"]))
    per_class = df.groupby("label")["is_train"].agg(["sum", "count"])
    assert (per_class["sum"] == ARGS["n_train"]).all() and (per_class["count"] == n // ARGS["n_classes"]).all()
    assert cub.validate(root) == root
    with Image.open(df["path"][0]) as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
    classes = (root / "classes.txt").read_text().splitlines()
    assert classes[0].startswith("1 001.") and len(classes) == ARGS["n_classes"]
    assert json.loads((root / sb.COMPLETE_MARKER).read_text()) == sb.generator_args(**ARGS)


def test_segmentations_are_soft_and_contain_the_parts(root):
    df = cub.read_index(root)
    for rel in df["rel_path"][:5]:
        seg = np.asarray(Image.open((root / rel.replace("images/", "segmentations/", 1)).with_suffix(".png")))
        parts = np.asarray(Image.open((root / rel.replace("images/", "part_segmentations/", 1)).with_suffix(".png")))
        assert set(np.unique(seg)) <= {0, 51, 102, 153, 204, 255} and 0 < len(np.unique(seg)) > 2
        assert parts.max() <= len(sb.PART_NAMES)
        assert (seg[parts > 0] > 0).all()  # every part pixel is inside the bird mask
        assert (parts > 0).mean() > 0.03
    mask = cub.patch_mask(root, 1, 8)
    assert mask.any() and not mask.all()


def test_part_maps_fractions_and_keypoints_agree(root):
    ids = [1, 2, 3]
    maps = sb.part_maps(root, ids, 8)
    assert maps.shape == (3, len(sb.PART_NAMES), 8, 8) and maps.dtype == np.float32
    assert np.all(maps >= 0) and np.all(maps.sum(1) <= 1 + 1e-6)
    locs = cub.part_locations(root)
    for k, image_id in enumerate(ids):
        rows = locs[locs.image_id == image_id].sort_values("part_id")
        visible = maps[k].reshape(len(sb.PART_NAMES), -1).sum(1) * (64 / 8) ** 2 >= 4  # >= 4 pixels
        assert rows["visible"].tolist() == visible.tolist()
        for _, row in rows[rows.visible].iterrows():  # the keypoint (part centroid) lies in the image
            assert 0 < row.x < 64 and 0 < row.y < 64
    assert sb.part_names(root) == list(sb.PART_NAMES)


def test_part_maps_closed_form(root, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(root, work)
    rel = cub.read_index(work)["rel_path"][0]
    lab = np.zeros((64, 64), np.uint8)
    lab[:32, :32] = 3  # head fills patch (0, 0) of a 2 x 2 grid
    lab[32:, :16] = 7  # tail fills half of patch (1, 0)
    Image.fromarray(lab).save((work / rel.replace("images/", "part_segmentations/", 1)).with_suffix(".png"))
    maps = sb.part_maps(work, [1], 2)[0]
    assert maps[2, 0, 0] == 1.0 and maps[6, 1, 0] == 0.5
    assert maps.sum() == 1.5
    with pytest.raises(ValueError, match="unknown image id"):
        sb.part_maps(work, [999], 2)


def test_classes_share_parts_and_some_pairs_differ_in_one_part(root):
    classes = sb._make_classes(25, 0)
    combos = [tuple(c.attrs.values()) for c in classes]
    assert len(set(combos)) == 25 and len({c.name for c in classes}) == 25
    diffs = [sum(x != y for x, y in zip(a, b)) for a, b in itertools.combinations(combos, 2)]
    assert diffs.count(1) >= 12  # every second class is a one-attribute mutation
    for attr in sb.ATTRIBUTES:  # a part value is shared by several classes
        assert max(np.unique([c.attrs[attr] for c in classes], return_counts=True)[1]) >= 2
    table = sb.class_attributes(root)
    names = [line.split(" ", 1)[1].split(".", 1)[1] for line in (root / "classes.txt").read_text().splitlines()]
    assert table["name"].tolist() == names and table["label"].tolist() == list(range(ARGS["n_classes"]))
    assert set(sb.ATTRIBUTES) <= set(table.columns) and set(sb.ATTRIBUTE_PART.values()) <= set(sb.PART_NAMES)


def test_shortcut_ties_background_hue_to_class_in_train_only(tmp_path):
    args = {**ARGS, "n_classes": 2, "n_train": 6, "n_test": 6, "shortcut": True}
    r = sb.generate(tmp_path / "short", **args, verbose=False)
    df = cub.read_index(r)

    def background_angle(rel):  # hue (as an angle) of the mean background colour in the upper half
        rgb = np.asarray(Image.open(r / rel), dtype=float)[:32]
        seg = np.asarray(Image.open((r / rel.replace("images/", "segmentations/", 1)).with_suffix(".png")))[:32]
        mean = rgb[seg == 0].mean(0) / 255
        return 2 * np.pi * colorsys.rgb_to_hsv(*mean)[0]

    spread = {}
    for split in (True, False):
        angles = [background_angle(p) for p in df[(df.label == 1) & (df.is_train == split)]["rel_path"]]
        spread[split] = 1 - abs(np.mean(np.exp(1j * np.array(angles))))  # circular variance
    assert spread[True] < 0.1 < spread[False]


def test_interrupted_generation_leaves_no_folder(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = sb._render

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sb, "_render", failing)
    with pytest.raises(KeyboardInterrupt):
        sb.generate(tmp_path / "birds", **ARGS, verbose=False)
    # neither the folder nor its temporary copy; only the generators' lock file stays (removing it is racy)
    assert [p.name for p in tmp_path.iterdir()] == [".birds.lock"]
    monkeypatch.setattr(sb, "_render", real)
    r = sb.generate(tmp_path / "birds", **ARGS, verbose=False)
    assert sb.is_complete(r, sb.generator_args(**ARGS))
    assert not sb.is_complete(r, sb.generator_args(**{**ARGS, "seed": 0}))
    with pytest.raises(FileExistsError, match="not a complete SynthBirds folder"):
        sb.generate(r, **{**ARGS, "seed": 0}, verbose=False)
    (tmp_path / "user").mkdir()
    with pytest.raises(FileExistsError):
        sb.generate(tmp_path / "user", **ARGS, verbose=False)


@pytest.mark.parametrize("bad", [dict(n_classes=1), dict(n_train=0), dict(image_size=16)])
def test_argument_checks(tmp_path, bad):
    with pytest.raises(ValueError):
        sb.generate(tmp_path / "x", **{**ARGS, **bad}, verbose=False)


def test_sample_grid_titles_every_class(root):
    import matplotlib.figure

    fig = sb.sample_grid(root, per_class=1)
    assert isinstance(fig, matplotlib.figure.Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == ARGS["n_classes"]
    fig2 = sb.sample_grid(root, per_class=2, max_classes=2)
    assert len([ax for ax in fig2.axes if ax.images]) == 4


# ---------------------------------------------------------------------------------------------- Cars layout
def _image_hashes_by_label(df) -> list[tuple[int, bool, str]]:
    return sorted((int(r.label), bool(r.is_train), hashlib.sha256(Path(r.path).read_bytes()).hexdigest())
                  for r in df.itertuples())


def test_cars_layout_is_read_by_the_cars_reader(root, tmp_path):
    from qpmlib.data import cars

    args = {k: v for k, v in ARGS.items()}
    out = sb.generate(tmp_path / "StanfordCars", **args, layout="cars", verbose=False)
    assert cars.validate(out) == out
    df = cars.read_index(out)
    n_train, n_test = ARGS["n_classes"] * ARGS["n_train"], ARGS["n_classes"] * ARGS["n_test"]
    assert (int(df.is_train.sum()), int((~df.is_train).sum())) == (n_train, n_test)
    assert sorted(p.name for p in (out / "cars_train").iterdir()) == [f"{i:05d}.jpg" for i in range(1, n_train + 1)]
    assert df[df.is_train].label.head(ARGS["n_classes"]).nunique() > 1  # classes interleaved, as in Stanford Cars
    # the same images with the same labels as the CUB layout, and the same class names
    assert _image_hashes_by_label(df) == _image_hashes_by_label(cub.read_index(root))
    assert cars.class_names(out) == [line.split(".", 1)[1] for line in (root / "classes.txt").read_text().splitlines()]
    assert json.loads((out / sb.COMPLETE_MARKER).read_text()) == sb.generator_args(**ARGS, layout="cars")
    assert "layout" not in sb.generator_args(**ARGS)  # CUB-layout folders keep their fingerprint
    with pytest.raises(ValueError, match="unknown layout 'voc'; valid layouts: cub, cars"):
        sb.generate(tmp_path / "x", **ARGS, layout="voc", verbose=False)


def test_paper_shapes_read_by_the_real_readers(tmp_path, monkeypatch):
    """200 classes in CUB's layout and 196 in Stanford Cars', found through the registry and read by the real
    CUB and Cars readers (1 + 1 images per class at 32 px keep this quick)."""
    from qpmlib import data
    from qpmlib.config import DataConfig

    monkeypatch.setenv("QPMLIB_DATA", str(tmp_path))
    for dataset, n_classes, reader_columns in (("synthbirds", 200, "segmentations"), ("synthcars", 196, "cars_train")):
        cfg = DataConfig(dataset=dataset, image_size=32, n_classes=n_classes, n_train=1, n_test=1, seed=0)
        folder = data.prepare(cfg, verbose=False)
        assert folder.name.startswith(f"{dataset}-") and (folder / reader_columns).is_dir()
        df = data.read_index(folder, dataset)
        assert len(df) == 2 * n_classes and sorted(df.label.unique()) == list(range(n_classes))
        assert (df.groupby("label").is_train.sum() == 1).all()


def test_exclude_avoids_given_classes_and_leaves_other_folders_unchanged(root, tmp_path):
    assert "exclude" not in sb.generator_args(**ARGS)  # folders made without exclusions keep their arguments
    classes = sb.attribute_combinations(root)
    assert classes == sb.class_combinations(ARGS["n_classes"], ARGS["seed"])
    other = sb.generate(tmp_path / "disjoint", **ARGS, exclude=classes[:2], verbose=False)
    assert not set(sb.attribute_combinations(other)) & set(classes[:2])
    marker = json.loads((other / sb.COMPLETE_MARKER).read_text())
    assert marker["exclude"].startswith("2:sha256-")
    assert sb.class_combinations(ARGS["n_classes"], ARGS["seed"], exclude=[dict(zip(sb.ATTRIBUTES, c))
                                                                           for c in classes[:2]]) == \
        sb.attribute_combinations(other)  # dicts and tuples name the same combinations
    with pytest.raises(ValueError, match="not an attribute combination"):
        sb.class_combinations(3, 0, exclude=[("purple",) * len(sb.ATTRIBUTES)])
    every = list(itertools.product(*sb.ATTRIBUTES.values()))
    with pytest.raises(ValueError, match="remain after excluding"):
        sb.class_combinations(3, 0, exclude=every[2:])
