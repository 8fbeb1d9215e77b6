"""qpmlib.data.prepare / read_index: one entry point per dataset, clear errors for missing real data."""

import dataclasses

import pytest
from data_fixtures import make_cars, make_cub

from qpmlib import data
from qpmlib.data import synthbirds
from qpmlib.profiles import get_profile

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
