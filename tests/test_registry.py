"""qpmlib.data.prepare / read_index: one entry point per dataset, clear errors for missing real data."""

import dataclasses

import numpy as np
import pytest
from PIL import Image
from data_fixtures import make_cars, make_cub

from qpmlib import data
from qpmlib.data import synthbirds
from qpmlib.data.images import ImageList, display_image
from qpmlib.config import get_profile

TINY = dataclasses.replace(get_profile("smoke").data, n_classes=3, n_train=2, n_test=1, image_size=48)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("QPMLIB_DATA", str(tmp_path))
    return tmp_path


def test_prepare_generates_synthbirds_once_in_a_hashed_folder(data_dir):
    root = data.prepare(TINY, verbose=False)
    assert root.parent == data_dir and root.name.startswith("synthbirds-")
    assert synthbirds.is_complete(root)
    mtime = (root / synthbirds.COMPLETE_MARKER).stat().st_mtime_ns
    assert data.prepare(TINY, verbose=False) == root
    assert (root / synthbirds.COMPLETE_MARKER).stat().st_mtime_ns == mtime  # not regenerated
    other = data.prepare(dataclasses.replace(TINY, seed=1), verbose=False)
    assert other != root
    df = data.read_index(root, "synthbirds")
    assert len(df) == 9 and df["label"].max() == 2


def test_real_datasets_are_checked_not_downloaded(data_dir):
    cub_cfg = get_profile("paper").data
    with pytest.raises(FileNotFoundError, match="download_cub.py") as err:
        data.prepare(cub_cfg)
    assert str(data_dir / "CUB_200_2011") in str(err.value)
    make_cub(data_dir / "CUB200" / "CUB_200_2011")  # the reference code's layout
    with pytest.warns(UserWarning, match="5994 / 5794"):
        root = data.prepare(cub_cfg)
    assert root == data_dir / "CUB200" / "CUB_200_2011"
    assert data.read_index(root, "cub")["label"].tolist() == [0, 0, 1, 1]

    cars_cfg = dataclasses.replace(cub_cfg, dataset="cars")
    with pytest.raises(FileNotFoundError, match="StanfordCars"):
        data.prepare(cars_cfg)
    make_cars(data_dir / "StanfordCars")
    with pytest.warns(UserWarning, match="8144 / 8041"):
        assert data.prepare(cars_cfg) == data_dir / "StanfordCars"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="synthbirds, cub, cars, synthcars"):
        data.prepare(dataclasses.replace(TINY, dataset="imagenet"))
    with pytest.raises(ValueError, match="valid datasets"):
        data.read_index(".", "mnist")


def test_class_names_and_images(tmp_path):
    (tmp_path / "classes.txt").write_text("2 002.Beta_Bird\n1 001.Alpha_Bird\n")
    assert data.class_names(tmp_path, "synthbirds") == ["Alpha Bird", "Beta Bird"]
    with pytest.raises(ValueError, match="valid datasets"):
        data.class_names(tmp_path, "imagenet")
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[..., 0] = 255
    Image.fromarray(pixels).save(tmp_path / "red.png")
    img = display_image(tmp_path / "red.png", 8)
    assert img.shape == (8, 8, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., 0], 1.0) and np.testing.assert_allclose(img[..., 1:], 0.0)
    images = ImageList([tmp_path / "red.png"] * 3, 5)
    assert len(images) == 3 and images[2].shape == (5, 5, 3) and images[-1] is images[2]
    with pytest.raises(IndexError):
        images[3]
