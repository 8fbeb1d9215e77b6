"""qpmlib.data.cub on a hand-made CUB folder: index, real-data quirks, masks on the patch grid, download."""

import hashlib
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import CUB_IMAGES, expected_soft_patch_mask, make_cub
from PIL import Image

from qpmlib.data import cub
from qpmlib.data.download import ChecksumError
from qpmlib.data.images import load_image


@pytest.fixture
def cub_root(tmp_path):
    return make_cub(tmp_path / "CUB_200_2011")


def test_read_index_columns_sorting_and_labels(cub_root):
    df = cub.read_index(cub_root)
    assert list(df.columns) == ["image_id", "path", "rel_path", "label", "is_train"]
    assert df["image_id"].tolist() == [1, 2, 3, 4]  # images.txt lists 3, 1, 4, 2
    assert df["label"].tolist() == [0, 0, 1, 1]  # 1-based on disk
    assert df["is_train"].tolist() == [True, False, True, False]
    assert df["is_train"].dtype == bool
    assert df["rel_path"][2] == "images/" + CUB_IMAGES[3][0]
    assert all((cub_root / r).resolve() == Path(p) for r, p in zip(df["rel_path"], df["path"]))


def test_greyscale_and_cmyk_jpegs_load_as_rgb(cub_root):
    df = cub.read_index(cub_root)
    for image_id, mode in ((2, "L"), (3, "CMYK")):
        path = df.loc[df.image_id == image_id, "path"].item()
        with Image.open(path) as im:
            assert im.mode == mode
        x = load_image(path, 28, dataset="cub")
        assert tuple(x.shape) == (3, 28, 28)
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # reference min-max step


def test_resize_linear_u8_matches_opencv_closed_form():
    row = np.array([[0, 255]], np.uint8)
    # positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped): 0, 63.75 -> 64, 191.25 -> 191, 255
    assert cub.resize_linear_u8(row, (1, 4)).tolist() == [[0, 64, 191, 255]]
    img = np.arange(30 * 30, dtype=np.int64).reshape(30, 30).astype(np.uint8)
    assert np.array_equal(cub.resize_linear_u8(img, (30, 30)), img)  # same size: identity
    assert np.array_equal(cub.resize_linear_u8(img, (10, 10)), img[1::3, 1::3])  # 3x down: exact samples
    assert np.all(cub.resize_linear_u8(np.full((7, 9), 200, np.uint8), (4, 5)) == 200)
    # a faint value between samples rounds to 0: 0.25 * 0.25 * 8 = 0.5 -> 1, 0.25 * 0.25 * 7 < 0.5 -> 0
    faint = np.zeros((2, 2), np.uint8)
    faint[1, 1] = 8
    assert cub.resize_linear_u8(faint, (4, 4))[1, 1] == 1
    faint[1, 1] = 7
    assert cub.resize_linear_u8(faint, (4, 4))[1, 1] == 0
    with pytest.raises(ValueError, match="uint8"):
        cub.resize_linear_u8(np.zeros((4, 4), np.float32), (2, 2))


def test_patch_mask_soft_values_binarised_after_bilinear_resize(cub_root):
    mask = cub.patch_mask(cub_root, 1, 10)
    assert mask.dtype == bool and mask.shape == (10, 10)
    assert np.array_equal(mask, expected_soft_patch_mask())
    batch = cub.patch_masks(cub_root, [1, 4], 10)
    assert batch.shape == (2, 10, 10)
    assert np.array_equal(batch[0], mask) and batch[1].all()
    with pytest.raises(ValueError, match="unknown image id 99"):
        cub.patch_mask(cub_root, 99, 10)


def test_part_locations_marks_invisible_parts(cub_root):
    df = cub.part_locations(cub_root)
    assert list(df.columns) == ["image_id", "part_id", "part_name", "x", "y", "visible"]
    assert len(df) == 12
    eye = df[df.part_name == "left eye"]
    assert not eye["visible"].any() and (eye["x"] == 0).all()
    beak = df[(df.image_id == 2) & (df.part_id == 2)].iloc[0]
    assert (beak.x, beak.y, bool(beak.visible)) == (25.5, 8.0, True)


def test_missing_files_are_named_with_the_fetch_command(cub_root):
    assert cub.validate(cub_root) == cub_root
    seg = (cub_root / "segmentations" / CUB_IMAGES[3][0]).with_suffix(".png")
    seg.unlink()
    with pytest.raises(FileNotFoundError, match="Beta_Bird_0001.png") as err:
        cub.validate(cub_root)
    assert cub.FETCH_COMMAND in str(err.value)
    assert cub.validate(cub_root, segmentations=False) == cub_root
    with pytest.raises(FileNotFoundError, match="Beta_Bird_0001.png"):
        cub.patch_mask(cub_root, 3, 16)
    (cub_root / "images" / CUB_IMAGES[2][0]).unlink()
    with pytest.raises(FileNotFoundError, match="Alpha_Bird_0002.jpg"):
        cub.validate(cub_root, segmentations=False)
    (cub_root / "train_test_split.txt").unlink()
    with pytest.raises(FileNotFoundError, match="train_test_split.txt"):
        cub.read_index(cub_root)


def test_find_root_accepts_the_reference_layout(tmp_path):
    assert cub.find_root(tmp_path) == tmp_path / "CUB_200_2011"
    make_cub(tmp_path / "CUB200" / "CUB_200_2011")
    assert cub.find_root(tmp_path) == tmp_path / "CUB200" / "CUB_200_2011"


def _tgz(path, src_dir, arcname):
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src_dir, arcname=arcname)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_cub_from_local_archives(tmp_path):
    made = make_cub(tmp_path / "src" / "CUB_200_2011")
    seg_md5 = _tgz(tmp_path / "segmentations.tgz", made / "segmentations", "segmentations")
    shutil.rmtree(made / "segmentations")
    img_md5 = _tgz(tmp_path / "CUB_200_2011.tgz", made, "CUB_200_2011")
    images = cub.Source((tmp_path / "CUB_200_2011.tgz").as_uri(), img_md5, "CUB_200_2011.tgz",
                        (("CUB_200_2011", "CUB_200_2011"),), ".complete-images")
    segs = cub.Source((tmp_path / "segmentations.tgz").as_uri(), seg_md5, "segmentations.tgz",
                      (("segmentations", "CUB_200_2011/segmentations"),), ".complete-segmentations")
    data = tmp_path / "data"

    bad = cub.Source(images.url, "0" * 32, images.filename, images.moves, images.marker)
    with pytest.raises(ChecksumError):
        cub.download_cub(data, sources=(bad, segs), verbose=False)
    assert not (data / "CUB_200_2011").exists()  # nothing extracted from an unverified archive

    root = cub.download_cub(data, sources=(images, segs), verbose=False)
    assert root == data / "CUB_200_2011"
    assert (root / ".complete-images").is_file() and (root / ".complete-segmentations").is_file()
    assert cub.read_index(root)["image_id"].tolist() == [1, 2, 3, 4]
    assert np.array_equal(cub.patch_mask(root, 1, 10), expected_soft_patch_mask())
    assert not (data / ".downloads" / "CUB_200_2011.tgz").exists()  # archives removed after install
    assert sorted(p.name for p in data.iterdir()) == [".downloads", "CUB_200_2011"]
    # a second call finds the markers and downloads nothing
    (tmp_path / "CUB_200_2011.tgz").unlink()
    assert cub.download_cub(data, sources=(images, segs), verbose=False) == root


def test_read_index_rejects_inconsistent_files(cub_root):
    (cub_root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n")
    with pytest.raises(ValueError, match=r"image_class_labels.txt lists no entry for image id\(s\) \[4\]"):
        cub.read_index(cub_root)
    (cub_root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 2\n9 1\n")
    with pytest.raises(ValueError, match=r"image_class_labels.txt, line 5: image id 9 is not in"):
        cub.read_index(cub_root)


# Each case edits one index file of the 4-image fixture (ids 1-4; classes 1, 1, 2, 2; split 1, 0, 1, 0) and
# expects an error at read time that names the file and, for a bad line, its number.
STRICT_CASES = {
    "duplicate image id": ("images.txt", "1 001.Alpha_Bird/Alpha_Bird_0001.jpg\n"
                           "2 001.Alpha_Bird/Alpha_Bird_0002.jpg\n3 002.Beta_Bird/Beta_Bird_0001.jpg\n"
                           "4 002.Beta_Bird/Beta_Bird_0002.jpg\n1 002.Beta_Bird/Beta_Bird_0002.jpg\n",
                           r"images.txt, line 5: id 1 is listed again \(first on line 1\)"),
    "duplicate label line": ("image_class_labels.txt", "1 1\n2 1\n3 2\n4 2\n4 1\n", r"line 5: id 4 is listed again"),
    "label 0": ("image_class_labels.txt", "1 0\n2 1\n3 2\n4 2\n", r"image_class_labels.txt, line 1: the class id of "
                r"image 1 is '0', expected an integer in 1..2"),
    "label above N_c": ("image_class_labels.txt", "1 1\n2 1\n3 3\n4 2\n", r"line 3: the class id of image 3 is '3'"),
    "negative label": ("image_class_labels.txt", "1 1\n2 -1\n3 2\n4 2\n", r"line 2: the class id of image 2 is '-1'"),
    "split flag 2": ("train_test_split.txt", "1 1\n2 0\n3 2\n4 0\n", r"train_test_split.txt, line 3: the split flag "
                     r"of image 3 is '2', expected an integer in 0..1"),
    "split flag text": ("train_test_split.txt", "1 1\n2 0\n3 yes\n4 0\n",
                        r"line 3: the split flag of image 3 is 'yes'"),
    "class without training images": ("train_test_split.txt", "1 1\n2 0\n3 0\n4 0\n",
                                      r"class\(es\) 2 \(002.Beta_Bird\) have no training images"),
    "class without test images": ("train_test_split.txt", "1 1\n2 1\n3 1\n4 0\n",
                                  r"class\(es\) 1 \(001.Alpha_Bird\) have no test images"),
    "class with no images": ("classes.txt", "1 001.Alpha_Bird\n2 002.Beta_Bird\n3 003.Gamma_Bird\n",
                             r"class\(es\) 3 \(003.Gamma_Bird\) have no training images"),
    "one class": ("classes.txt", "1 001.Alpha_Bird\n", r"classes.txt lists 1 class\(es\); classification needs at "
                  r"least 2"),
    "gap in class ids": ("classes.txt", "1 001.Alpha_Bird\n3 002.Beta_Bird\n", r"classes.txt must number its "
                         r"classes 1..N without gaps; missing \[2\]"),
    "line without a value": ("train_test_split.txt", "1 1\n2\n3 1\n4 0\n", r"train_test_split.txt, line 2: expected "
                             r"'<id> <is_training_image 0 or 1>'"),
    "non-integer id": ("images.txt", "1 a.jpg\nx2 b.jpg\n", r"images.txt, line 2: expected '<id> <image path"),
    "path leaving images/": ("images.txt", "1 001.Alpha_Bird/Alpha_Bird_0001.jpg\n2 ../../../etc/passwd\n"
                             "3 002.Beta_Bird/Beta_Bird_0001.jpg\n4 002.Beta_Bird/Beta_Bird_0002.jpg\n",
                             r"images.txt, line 2: image path '../../../etc/passwd' leaves the images/ folder"),
}


@pytest.mark.parametrize("case", sorted(STRICT_CASES))
def test_strict_reader_names_file_and_line(cub_root, case):
    name, text, match = STRICT_CASES[case]
    cub.read_index(cub_root)  # the fixture itself is valid
    (cub_root / name).write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        cub.read_index(cub_root)
    assert str(cub_root) in str(err.value)


def test_pil_mask_modes_are_read_as_grey(cub_root):
    # a mask saved as RGB (some re-encoded copies are) gives the same patch mask
    path = (cub_root / "segmentations" / CUB_IMAGES[1][0]).with_suffix(".png")
    grey = np.asarray(Image.open(path))
    Image.fromarray(np.stack([grey] * 3, -1)).save(path)
    assert np.array_equal(cub.patch_mask(cub_root, 1, 10), expected_soft_patch_mask())
