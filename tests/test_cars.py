"""qpmlib.data.cars on tiny folders in the real .mat format (scipy.io.savemat with the devkit's field names)."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from data_fixtures import CARS_CLASSES, CARS_TEST, CARS_TRAIN, make_cars

from qpmlib.data import cars


@pytest.mark.parametrize("nested", [False, True])
def test_read_index_labels_are_class_minus_one(tmp_path, nested):
    root = make_cars(tmp_path / "StanfordCars", nested=nested)
    df = cars.read_index(root)
    assert list(df.columns) == ["image_id", "path", "rel_path", "label", "is_train"]
    assert df["image_id"].tolist() == [1, 2, 3, 4, 5]
    assert df["label"].tolist() == [c - 1 for c in CARS_TRAIN[1] + CARS_TEST[1]]
    assert df["is_train"].tolist() == [True, True, True, False, False]
    sub = "cars_test/cars_test" if nested else "cars_test"
    assert df["rel_path"].iloc[3] == f"{sub}/{CARS_TEST[0][0]}"
    assert all(Path(p).is_file() for p in df["path"])
    assert cars.class_names(root) == CARS_CLASSES
    assert cars.validate(root) == root


def test_missing_test_labels_explain_where_to_get_them(tmp_path):
    root = make_cars(tmp_path / "StanfordCars", test_labels=False)
    with pytest.raises(FileNotFoundError, match="cars_test_annos_withlabels.mat") as err:
        cars.read_index(root)
    assert "eduardo4jesus/stanford-cars-dataset" in str(err.value)


def test_missing_image_is_named(tmp_path):
    root = make_cars(tmp_path / "StanfordCars")
    (root / "cars_train" / "00002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="cars_train/00002.jpg"):
        cars.validate(root)


def test_install_from_a_kaggle_style_zip(tmp_path):
    src = make_cars(tmp_path / "kaggle", nested=True, test_labels=False)
    labels = make_cars(tmp_path / "labels_src")
    archive = tmp_path / "stanford-cars-dataset.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
    data = tmp_path / "data"
    root = cars.install_cars(data, archive=archive, test_labels=labels / "cars_test_annos_withlabels.mat")
    assert root == data / "StanfordCars"
    assert len(cars.read_index(root)) == 5
    assert sorted(p.name for p in root.iterdir()) == [
        "car_devkit", "cars_test", "cars_test_annos_withlabels.mat", "cars_train"
    ]
    with pytest.raises(FileExistsError):
        cars.install_cars(data, archive=archive)


def test_annotation_file_without_labels_is_rejected(tmp_path):
    root = make_cars(tmp_path / "StanfordCars")
    ann = np.zeros((1, 1), dtype=[("fname", "O")])
    ann[0, 0] = (np.array(["00001.jpg"]),)
    scipy.io.savemat(root / "cars_test_annos_withlabels.mat", {"annotations": ann})
    with pytest.raises(ValueError, match="class"):
        cars.read_index(root)
