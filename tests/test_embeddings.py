"""Tests for qpmlib.embeddings: cached tokens equal a fresh pass, resume, staleness, completeness, bad images."""

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import qpmlib.data
from qpmlib import embeddings
from qpmlib.backbones import build_backbone
from qpmlib.config import get_profile
from qpmlib.data.images import load_image
from qpmlib.embeddings import MANIFEST_FILE, PROGRESS_FILE, extract, get_store, open_store

torch.set_num_threads(1)
SIZE = 56


def write_image(path, seed, size):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


@pytest.fixture()
def dataset(tmp_path):
    """Ten images (PNG and JPEG, 56-112 px, not square) and their index: 7 train, 3 test."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(10):
        name = f"images/bird_{i}." + ("png" if i % 2 else "jpg")
        write_image(root / name, i, (56 + 6 * i, 112 - 5 * i))
        rows.append({"image_id": 10 - i, "path": name, "label": i % 3, "is_train": i < 7})
    return root, pd.DataFrame(rows)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("tiny_vit_test", weights="random", image_size=SIZE, seed=0)


def run(index, root, backbone, out, split="train", **kw):
    kw = {"batch_size": 3, "num_workers": 0, "verbose": False, **kw}
    return extract(index, root, split, backbone, image_size=SIZE, dataset="synthbirds", out_dir=out, **kw)


class CountingForward:
    """Replaces a backbone's forward; counts calls and can raise on a given call."""

    def __init__(self, backbone, fail_on_call=None):
        self.original, self.calls, self.fail_on_call = type(backbone).forward.__get__(backbone), 0, fail_on_call

    def __call__(self, images):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        return self.original(images)


def test_cached_tokens_equal_a_fresh_forward_pass(dataset, backbone, tmp_path, monkeypatch):
    root, index = dataset
    store = run(index, root, backbone, tmp_path / "cache", num_workers=2)
    train = index[index.is_train].sort_values("image_id")
    assert len(store) == 7 and store.grid == 4 and not store.pretrained
    np.testing.assert_array_equal(store.image_ids, train.image_id.to_numpy())
    np.testing.assert_array_equal(store.labels, train.label.to_numpy())
    assert store.patch_tokens.shape == (7, 16, 48) and store.patch_tokens.dtype == np.float16
    assert isinstance(store.patch_tokens, np.memmap) and not store.patch_tokens.flags.writeable
    images = torch.stack([load_image(root / p, SIZE, dataset="synthbirds") for p in train.path])
    cls, patches = backbone(images)
    np.testing.assert_allclose(store.patch_tokens, patches.numpy(), rtol=1e-3, atol=4e-3)
    np.testing.assert_allclose(store.cls, cls.numpy(), rtol=1e-3, atol=4e-3)
    manifest = json.loads((store.path / MANIFEST_FILE).read_text())
    assert manifest["complete"] and manifest["inputs"]["weights_id"] == "random-seed0"
    assert not (store.path / PROGRESS_FILE).exists()
    # a second call is served from the cache without a forward pass
    counter = CountingForward(backbone)
    monkeypatch.setattr(backbone, "forward", counter)
    again = run(index, root, backbone, tmp_path / "cache")
    assert counter.calls == 0 and again.path == store.path
    np.testing.assert_array_equal(again.patch_tokens, store.patch_tokens)


def test_interrupted_extraction_resumes_to_the_same_arrays(dataset, backbone, tmp_path, monkeypatch):
    root, index = dataset
    reference = run(index, root, backbone, tmp_path / "a")
    crash = CountingForward(backbone, fail_on_call=2)
    monkeypatch.setattr(backbone, "forward", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(index, root, backbone, tmp_path / "b")
    folder = embeddings.store_dir(root, "train", backbone, dataset="synthbirds", out_dir=tmp_path / "b")
    assert json.loads((folder / PROGRESS_FILE).read_text())["rows_done"] == 3
    assert not json.loads((folder / MANIFEST_FILE).read_text())["complete"]
    with pytest.raises(ValueError, match="not a complete embedding store"):
        open_store(folder)
    resume = CountingForward(backbone)
    monkeypatch.setattr(backbone, "forward", resume)
    store = run(index, root, backbone, tmp_path / "b")
    assert resume.calls == 2  # rows 3-5 and 6: the first batch was not redone
    np.testing.assert_array_equal(store.patch_tokens, reference.patch_tokens)
    np.testing.assert_array_equal(store.cls, reference.cls)


def test_changed_inputs_are_detected_and_rebuilt(dataset, backbone, tmp_path, caplog):
    root, index = dataset
    out = tmp_path / "cache"
    first = run(index, root, backbone, out, split="test")
    old = np.array(first.patch_tokens)
    replaced = index[~index.is_train].iloc[0]
    write_image(root / replaced.path, 99, (90, 90))
    with caplog.at_level(logging.WARNING, logger="qpmlib.embeddings"):
        second = run(index, root, backbone, out, split="test")
    assert "stale" in caplog.text and "1 changed" in caplog.text and replaced.path in caplog.text
    row = int(np.flatnonzero(second.image_ids == replaced.image_id)[0])
    fresh = backbone(load_image(root / replaced.path, SIZE, dataset="synthbirds")[None])[1][0].numpy()
    np.testing.assert_allclose(second.patch_tokens[row], fresh, rtol=1e-3, atol=4e-3)
    assert not np.allclose(second.patch_tokens[row], old[row], atol=1e-2)
    others = np.arange(len(second)) != row
    np.testing.assert_array_equal(second.patch_tokens[others], old[others])
    # a manifest that claims other settings (here the image size) is not trusted either
    manifest = json.loads((second.path / MANIFEST_FILE).read_text())
    manifest["inputs"]["image_size"] = 112
    (second.path / MANIFEST_FILE).write_text(json.dumps(manifest))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qpmlib.embeddings"):
        run(index, root, backbone, out, split="test")
    assert "image_size: 112 -> 56" in caplog.text
    # another image size is another store
    big = build_backbone("tiny_vit_test", weights="random", image_size=84)
    other = extract(index, root, "test", big, image_size=84, dataset="synthbirds", out_dir=out, verbose=False)
    assert other.path != second.path and other.grid == 6


def test_image_replaced_by_one_of_the_same_size_is_detected(dataset, backbone, tmp_path, caplog):
    root, index = dataset
    first = run(index, root, backbone, tmp_path / "cache", split="test")
    replaced = index[~index.is_train].iloc[1]
    path = root / replaced.path
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size, other content; the modification time is put back
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with caplog.at_level(logging.WARNING, logger="qpmlib.embeddings"):
        second = run(index, root, backbone, tmp_path / "cache", split="test")
    assert "stale" in caplog.text and "1 changed" in caplog.text and replaced.path in caplog.text
    assert second.manifest["inputs"]["images_sha256"] != first.manifest["inputs"]["images_sha256"]


def test_store_without_complete_flag_is_never_used(dataset, backbone, tmp_path, monkeypatch):
    root, index = dataset
    store = run(index, root, backbone, tmp_path / "cache", split="test")
    manifest = json.loads((store.path / MANIFEST_FILE).read_text())
    manifest["complete"] = False
    (store.path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a complete"):
        open_store(store.path)
    counter = CountingForward(backbone)
    monkeypatch.setattr(backbone, "forward", counter)
    rebuilt = run(index, root, backbone, tmp_path / "cache", split="test")
    assert counter.calls == 1 and rebuilt.manifest["complete"]
    # a truncated array file with a complete manifest is rebuilt too
    (rebuilt.path / "cls.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(ValueError, match="cls.npy"):
        open_store(rebuilt.path)
    run(index, root, backbone, tmp_path / "cache", split="test")
    assert counter.calls == 2


def test_corrupt_image_is_reported_by_path(dataset, backbone, tmp_path):
    root, index = dataset
    bad = index[index.is_train].iloc[2].path
    (root / bad).write_bytes(b"this is not a jpeg at all")
    with pytest.raises(OSError, match=rf"1 image\(s\) cannot be decoded: .*{bad}"):
        run(index, root, backbone, tmp_path / "cache", num_workers=2)
    folder = embeddings.store_dir(root, "train", backbone, dataset="synthbirds", out_dir=tmp_path / "cache")
    assert not json.loads((folder / MANIFEST_FILE).read_text())["complete"]
    with pytest.raises(FileNotFoundError, match="bird_404"):
        run(pd.DataFrame([{"image_id": 1, "path": "images/bird_404.jpg", "label": 0}]), root, backbone, tmp_path)


def test_argument_errors(dataset, backbone, tmp_path):
    root, index = dataset
    with pytest.raises(ValueError, match="differs from the backbone's 56"):
        extract(index, root, "train", backbone, image_size=224, dataset="synthbirds", out_dir=tmp_path)
    with pytest.raises(ValueError, match="train, test"):
        run(index, root, backbone, tmp_path, split="val")
    with pytest.raises(ValueError, match="lacks columns"):
        run(index.drop(columns="label"), root, backbone, tmp_path)


def test_get_store_uses_the_profile_and_the_cache(dataset, tmp_path, monkeypatch):
    root, index = dataset
    monkeypatch.setenv("QPMLIB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(qpmlib.data, "prepare", lambda cfg: root, raising=False)
    monkeypatch.setattr(qpmlib.data, "read_index", lambda r, name: index, raising=False)
    smoke = get_profile("smoke")
    profile = smoke.replace(data=dataclasses.replace(smoke.data, image_size=SIZE))
    train = get_store(profile, "train", verbose=False)
    test = get_store(profile, "test", verbose=False)
    assert (len(train), len(test), train.grid) == (7, 3, 4)
    assert train.manifest["inputs"]["backbone"] == smoke.backbone.name
    assert train.path.parent == tmp_path / "home" / "cache"
    assert get_store(profile, "train", verbose=False).path == train.path


# ---------------------------------------------------------------------------------------------- damaged stores
def _damage_tokens_same_size(path):
    """Change one fp16 value of patch_tokens.npy in place and put the modification time back."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size - 2)
        old = fh.read(2)
        fh.seek(st.st_size - 2)
        fh.write(bytes([old[0] ^ 0x40, old[1]]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


DAMAGE = {
    "empty patch tokens": (lambda p: (p / "patch_tokens.npy").write_bytes(b""), "patch_tokens.npy: holds 0 bytes"),
    "manifest is a JSON list": (lambda p: (p / MANIFEST_FILE).write_text("[1, 2]"),
                                "manifest.json: holds a JSON list, not an object"),
    "manifest is empty": (lambda p: (p / MANIFEST_FILE).write_text(""), "manifest.json: is empty"),
    "manifest is not JSON": (lambda p: (p / MANIFEST_FILE).write_text('{"complete": tr'),
                             "manifest.json: is not valid JSON"),
    "token contents edited at the same size": (lambda p: _damage_tokens_same_size(p / "patch_tokens.npy"),
                                               "patch_tokens.npy: content changed since it was written"),
    "labels edited": (lambda p: np.save(p / "labels.npy", np.zeros(3, np.int64)), "labels.npy: content changed"),
    "cls file missing": (lambda p: (p / "cls.npy").unlink(), "cls.npy: is missing"),
    "no checksums (older qpmlib)": (
        lambda p: (p / MANIFEST_FILE).write_text(json.dumps(
            {k: v for k, v in json.loads((p / MANIFEST_FILE).read_text()).items() if k != "checksums"})),
        "manifest.json: records no checksums of the array files"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_store_is_rebuilt_with_one_line_naming_the_problem(dataset, backbone, tmp_path, monkeypatch, caplog,
                                                                   case):
    root, index = dataset
    store = run(index, root, backbone, tmp_path / "cache", split="test")
    reference = np.array(store.patch_tokens)
    damage, problem = DAMAGE[case]
    damage(store.path)
    with pytest.raises(ValueError, match=re.escape(problem)) as err:
        open_store(store.path)
    assert str(store.path) in str(err.value)
    counter = CountingForward(backbone)
    monkeypatch.setattr(backbone, "forward", counter)
    with caplog.at_level(logging.WARNING, logger="qpmlib.embeddings"):
        rebuilt = run(index, root, backbone, tmp_path / "cache", split="test")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and problem in warnings[0]
    assert str(store.path) in warnings[0] and warnings[0].endswith("rebuilding it")
    assert counter.calls == 1  # 3 test images, one batch
    np.testing.assert_array_equal(rebuilt.patch_tokens, reference)


def test_opening_an_unchanged_store_reads_no_array(dataset, backbone, tmp_path, monkeypatch):
    import qpmlib.files

    root, index = dataset
    store = run(index, root, backbone, tmp_path / "cache")
    hashed = []
    real = qpmlib.files.file_sha256
    monkeypatch.setattr(qpmlib.files, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    open_store(store.path)
    assert hashed == []  # the stamp written when the store was sealed still matches every file
    (store.path / embeddings.STAMP_FILE).unlink()
    open_store(store.path)
    assert sorted(hashed) == sorted(embeddings._DATA_FILES)  # no stamp: every file hashed once ...
    hashed.clear()
    open_store(store.path)
    assert hashed == []  # ... and remembered
    os.utime(store.path / "cls.npy")  # a touched file (same bytes) is hashed again, and accepted
    open_store(store.path)
    assert hashed == ["cls.npy"]


def test_store_on_a_read_only_disk_still_opens(dataset, backbone, tmp_path, monkeypatch):
    import qpmlib.files

    root, index = dataset
    store = run(index, root, backbone, tmp_path / "cache", split="test")
    (store.path / embeddings.STAMP_FILE).unlink()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(qpmlib.files, "atomic_write_json", refuse)  # the stamp cannot be written: no harm
    assert len(open_store(store.path)) == 3
    assert not (store.path / embeddings.STAMP_FILE).exists()
