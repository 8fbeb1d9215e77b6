"""qpmlib.data.cars on tiny folders in the real .mat format (scipy.io.savemat with the devkit's field names)."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from data_fixtures import CARS_CLASSES, CARS_TEST, CARS_TRAIN, _annotations, make_cars

from qpmlib.data import cars


@pytest.mark.parametrize("nested", [False, True])
def test_read_index_labels_are_class_minus_one(tmp_path, nested):
    root = make_cars(tmp_path / "StanfordCars", nested=nested)
    df = cars.read_index(root)
    assert list(df.columns) == ["image_id", "path", "rel_path", "label", "is_train"]
    assert df["image_id"].tolist() == [1, 2, 3, 4, 5, 6]
    assert df["label"].tolist() == [c - 1 for c in CARS_TRAIN[1] + CARS_TEST[1]]
    assert df["is_train"].tolist() == [True, True, True, False, False, False]
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
    assert len(cars.read_index(root)) == 6
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


@pytest.mark.parametrize(
    "train, test, match",
    [
        ((["a.jpg", "b.jpg", "a.jpg"], [1, 2, 3]), CARS_TEST,
         r"cars_train_annos.mat, entry 3: file a.jpg is listed again"),
        ((["a.jpg", "b.jpg", "c.jpg"], [1, 4, 3]), CARS_TEST,
         r"cars_train_annos.mat, entry 2: class 4 of b.jpg is not an integer in 1..3"),
        ((["a.jpg", "b.jpg", "c.jpg"], [0, 2, 3]), CARS_TEST, r"entry 1: class 0 of a.jpg"),
        (CARS_TRAIN, (["x.jpg", "y.jpg", "z.jpg"], [1, 1, 3]),
         r"cars_test_annos_withlabels.mat: class\(es\) \[2\] have no test images"),
        ((["../a.jpg", "b.jpg", "c.jpg"], [1, 2, 3]), CARS_TEST, r"entry 1: file name '../a.jpg' is not a plain"),
    ],
)
def test_strict_reader_names_file_and_entry(tmp_path, train, test, match):
    root = make_cars(tmp_path / "StanfordCars")
    scipy.io.savemat(root / "car_devkit" / "cars_train_annos.mat", {"annotations": _annotations(*train)})
    scipy.io.savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _annotations(*test)})
    with pytest.raises(ValueError, match=match):
        cars.read_index(root)


def test_fewer_than_two_classes_is_an_error(tmp_path):
    root = make_cars(tmp_path / "StanfordCars")
    (root / "car_devkit" / "cars_meta.mat").unlink()  # without the class list, N_c is 1 + the largest class
    for name, (fnames, _) in (("car_devkit/cars_train_annos.mat", CARS_TRAIN), ("cars_test_annos_withlabels.mat",
                                                                                CARS_TEST)):
        scipy.io.savemat(root / name, {"annotations": _annotations(fnames, [1] * len(fnames))})
    with pytest.raises(ValueError, match=r"has 1 class\(es\); classification needs at least 2"):
        cars.read_index(root)
