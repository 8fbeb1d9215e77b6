"""SynthBirds: a procedural fine-grained bird dataset written in CUB-200-2011's own on-disk format.

Why it exists (DESIGN.md, "SynthBirds"): the demo and smoke profiles need a dataset that ships as code, reads
through the same reader as CUB (reference_spec §7.1) and has known parts. Every class is a combination of
part attributes (head colour, belly colour, back colour, wing pattern, beak shape, tail shape, crest, eye ring),
so parts are shared across classes and some class pairs differ in one part only. Pose, scale, position, flip,
lighting and partial occlusion vary per image; backgrounds are cluttered with blobs and branches in the same
colours the birds use, so "where the bird is" cannot be read off colour alone.

Folder written by :func:`generate` (``root`` itself plays the role of ``CUB_200_2011/``)::

    root/
      images.txt  image_class_labels.txt (1-based)  train_test_split.txt  classes.txt
      images/NNN.Name/Name_NNNN_ID.jpg
      segmentations/NNN.Name/Name_NNNN_ID.png       soft grey masks like CUB's (0, 51, ..., 255)
      parts/parts.txt  parts/part_locs.txt          (image_id part_id x y visible), pixel coordinates
      attributes/attributes.txt  attributes/class_attribute_labels_continuous.txt  attributes/class_attributes.csv
      part_segmentations/NNN.Name/Name_NNNN_ID.png  extra ground truth: uint8 part id, 0 = background
      .complete                                     JSON of the generator arguments, written last

With ``layout="cars"`` the same images are written in Stanford Cars' on-disk format instead (reference_spec §7.2),
so that :func:`qpmlib.data.cars.read_index` runs for real on a paper-shaped dataset (196 classes) without the
data. ``root`` then plays the role of ``StanfordCars/``::

    root/
      car_devkit/cars_train_annos.mat  car_devkit/cars_meta.mat   (bbox_x1..y2, class (1-based), fname; class_names)
      cars_train/NNNNN.jpg  cars_test/NNNNN.jpg                     numbered per split, classes interleaved
      cars_test_annos_withlabels.mat
      .complete

There are no masks or parts in that layout, as in Stanford Cars. Image k of class c is byte-identical in both
layouts (same seed); its bounding box is the bird's (the Cars reader ignores boxes, as the reference does).

Images are square, ``image_size`` pixels. Every image draws its randomness from its own
``np.random.default_rng((seed, class, index))``, so the files do not depend on the order of generation and the
same arguments give byte-identical files.
"""

from __future__ import annotations

import colorsys
import concurrent.futures
import functools
import hashlib
import io
import json
import math
import os
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from qpmlib.data.cub import read_index
from qpmlib.files import file_lock

__all__ = [
    "GENERATOR_VERSION",
    "LAYOUTS",
    "PART_NAMES",
    "ATTRIBUTES",
    "ATTRIBUTE_PART",
    "COMPLETE_MARKER",
    "generate",
    "generator_args",
    "attribute_combinations",
    "class_combinations",
    "is_complete",
    "part_names",
    "class_attributes",
    "part_maps",
    "sample_grid",
    "folder_fingerprint",
]

#: Bumped whenever a change to the drawing code changes the files (it is part of the folder's fingerprint).
GENERATOR_VERSION = 1
COMPLETE_MARKER = ".complete"
#: On-disk formats :func:`generate` writes: CUB-200-2011's (with masks and parts) or Stanford Cars'.
LAYOUTS: tuple[str, ...] = ("cub", "cars")
JPEG_QUALITY = 90

#: Part ids are 1-based in ``parts/parts.txt`` and the part label maps (0 = background).
PART_NAMES: tuple[str, ...] = ("back", "belly", "head", "beak", "eye", "wing", "tail", "crest", "legs")
_PID = {name: i + 1 for i, name in enumerate(PART_NAMES)}

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 35), "yellow": (235, 200, 40), "blue": (50, 95, 200), "black": (30, 30, 34),
    "white": (238, 236, 228), "green": (60, 150, 60), "buff": (222, 190, 140), "orange": (235, 125, 35),
    "grey": (150, 150, 155), "brown": (120, 80, 45), "olive": (120, 125, 55), "slate": (80, 95, 120),
}
#: Attribute -> its values. Each attribute changes exactly one part (:data:`ATTRIBUTE_PART`).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "head_colour": ("red", "yellow", "blue", "black", "white", "green"),
    "belly_colour": ("white", "buff", "yellow", "orange", "grey"),
    "back_colour": ("brown", "grey", "olive", "slate"),
    "wing_pattern": ("plain", "barred", "spotted", "striped"),
    "beak_shape": ("cone", "thin", "hooked"),
    "tail_shape": ("fan", "forked", "pointed"),
    "crest": ("none", "crested"),
    "eye_ring": ("none", "ringed"),
}
ATTRIBUTE_PART: dict[str, str] = {
    "head_colour": "head", "belly_colour": "belly", "back_colour": "back", "wing_pattern": "wing",
    "beak_shape": "beak", "tail_shape": "tail", "crest": "crest", "eye_ring": "eye",
}
_GENUS = {  # (beak, tail) -> genus name, for readable class names
    ("cone", "fan"): "Finch", ("cone", "forked"): "Bunting", ("cone", "pointed"): "Grosbeak",
    ("thin", "fan"): "Warbler", ("thin", "forked"): "Swallow", ("thin", "pointed"): "Wren",
    ("hooked", "fan"): "Shrike", ("hooked", "forked"): "Kite", ("hooked", "pointed"): "Falconet",
}
_WING_BASE = (70, 55, 45)
_TAIL_COLOUR = (60, 52, 48)
_LEG_COLOUR = (95, 80, 70)
_CREST_COLOUR = (75, 40, 60)
_MAX_CLASSES = 999  # the NNN. prefix of CUB class folders has three digits


@dataclass(frozen=True)
class _Class:
    index: int  # 0-based
    attrs: dict[str, str]

    @property
    def name(self) -> str:
        a = self.attrs
        words = [a["head_colour"].title() + "_headed"]
        if a["crest"] == "crested":
            words.append("Crested")
        if a["eye_ring"] == "ringed":
            words.append("Spectacled")
        words.append(a["belly_colour"].title() + "_bellied")
        words.append(a["back_colour"].title() + "_backed")
        if a["wing_pattern"] != "plain":
            words.append(a["wing_pattern"].title())
        words.append(_GENUS[(a["beak_shape"], a["tail_shape"])])
        return "_".join(words)

    @property
    def folder(self) -> str:
        return f"{self.index + 1:03d}.{self.name}"


def generator_args(
    *, n_classes: int, n_train: int, n_test: int, image_size: int, seed: int, shortcut: bool = False,
    layout: str = "cub", exclude=(),
) -> dict:
    """The arguments that determine a SynthBirds folder, plus :data:`GENERATOR_VERSION` (stored in ``.complete``).

    ``layout`` is recorded only when it is not "cub", so CUB-layout folders keep the fingerprint they had.
    ``exclude`` (attribute combinations no class may have, see :func:`generate`) enters as the SHA-256 of its sorted
    combinations, and only when it is not empty, so folders generated without it keep their arguments.
    """
    args = {
        "generator": "synthbirds", "version": GENERATOR_VERSION, "n_classes": int(n_classes),
        "n_train": int(n_train), "n_test": int(n_test), "image_size": int(image_size), "seed": int(seed),
        "shortcut": bool(shortcut),
    }
    if layout != "cub":
        args["layout"] = layout
    combos = _combination_set(exclude)
    if combos:
        text = "\n".join(",".join(c) for c in sorted(combos))
        args["exclude"] = f"{len(combos)}:sha256-{hashlib.sha256(text.encode()).hexdigest()}"
    return args


def _combination_set(exclude) -> frozenset[tuple[str, ...]]:
    """Attribute combinations (dicts or tuples in :data:`ATTRIBUTES` order) as a set of checked tuples."""
    names = list(ATTRIBUTES)
    out = set()
    for combo in exclude:
        t = tuple(combo[n] for n in names) if isinstance(combo, dict) else tuple(combo)
        if len(t) != len(names) or any(v not in ATTRIBUTES[n] for n, v in zip(names, t)):
            raise ValueError(
                f"{combo!r} is not an attribute combination; expected one value of each of {', '.join(names)} "
                f"(valid values: {ATTRIBUTES})"
            )
        out.add(t)
    return frozenset(out)


def class_combinations(n_classes: int, seed: int, exclude=()) -> list[tuple[str, ...]]:
    """The attribute combinations of the classes that :func:`generate` draws for these arguments, in label order.

    No image is drawn: this is how a pretraining corpus learns which classes a profile's dataset will have.

    Args:
        n_classes: number of classes, as for :func:`generate`.
        seed: generator seed, as for :func:`generate`.
        exclude: attribute combinations that no class may have, as for :func:`generate`.

    Returns:
        One tuple per class, values in :data:`ATTRIBUTES` order.
    """
    excluded = _combination_set(exclude)
    _check_room(n_classes, excluded)
    return [tuple(c.attrs.values()) for c in _make_classes(n_classes, seed, excluded)]


def _check_room(n_classes: int, excluded: frozenset) -> None:
    left = math.prod(len(v) for v in ATTRIBUTES.values()) - len(excluded)
    if n_classes > left:
        raise ValueError(f"only {left} attribute combinations remain after excluding {len(excluded)}; "
                         f"n_classes={n_classes} is too many")


def attribute_combinations(root: str | Path) -> list[tuple[str, ...]]:
    """Each class's attribute values of a SynthBirds folder, as tuples in :data:`ATTRIBUTES` order (label order).

    Pass them as ``exclude`` to :func:`generate` to make a folder that shares no class with ``root``.

    Raises:
        FileNotFoundError: ``root`` is not a SynthBirds folder (see :func:`class_attributes`).
    """
    table = class_attributes(root).sort_values("label")
    return [tuple(row) for row in table[list(ATTRIBUTES)].itertuples(index=False)]


def is_complete(root: str | Path, args: dict | None = None) -> bool:
    """Whether ``root`` holds a finished SynthBirds folder (and, if ``args`` is given, made with those arguments)."""
    marker = Path(root) / COMPLETE_MARKER
    if not marker.is_file():
        return False
    if args is None:
        return True
    try:
        return json.loads(marker.read_text()) == args
    except json.JSONDecodeError:
        return False


def _make_classes(n_classes: int, seed: int, exclude: frozenset[tuple[str, ...]] = frozenset()) -> list[_Class]:
    """Pick distinct attribute combinations; every second class copies an earlier one and changes one attribute.

    Combinations in ``exclude`` are never picked; without exclusions the classes depend only on ``seed``.
    """
    rng = np.random.default_rng((seed, 0xC1A55))
    names = list(ATTRIBUTES)
    chosen: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set(exclude)
    while len(chosen) < n_classes:
        if len(chosen) % 2 == 1:
            combo = list(chosen[int(rng.integers(len(chosen)))])
            k = int(rng.integers(len(names)))
            others = [v for v in ATTRIBUTES[names[k]] if v != combo[k]]
            combo[k] = others[int(rng.integers(len(others)))]
        else:
            combo = [vals[int(rng.integers(len(vals)))] for vals in ATTRIBUTES.values()]
        combo_t = tuple(combo)
        if combo_t not in seen:
            seen.add(combo_t)
            chosen.append(combo_t)
    return [_Class(i, dict(zip(names, c))) for i, c in enumerate(chosen)]


# ----------------------------------------------------------------------------------------------------------
# Drawing: every bird part is an implicit shape in a canonical bird frame (u to the beak, v down, body length
# about 1). Pixels are mapped into that frame, so coverage (anti-aliased) is computed with numpy.


def _ellipse(u, v, cx, cy, rx, ry, angle, pix):
    c, s = math.cos(angle), math.sin(angle)
    du, dv = u - cx, v - cy
    x, y = (du * c + dv * s) / rx, (dv * c - du * s) / ry
    q = np.sqrt(x * x + y * y)
    return np.clip(0.5 - (q - 1.0) * (min(rx, ry) / pix), 0.0, 1.0)


def _polygon(u, v, pts, pix):
    """Coverage of a convex polygon given by its corners (either orientation)."""
    pts = [(float(x), float(y)) for x, y in pts]
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]))
    sign = 1.0 if area > 0 else -1.0
    d = None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        ex, ey = x1 - x0, y1 - y0
        n = sign / math.hypot(ex, ey)
        e = (u - x0) * (ey * n) - (v - y0) * (ex * n)  # > 0 outside this edge
        d = e if d is None else np.maximum(d, e, out=d)
    return np.clip(0.5 - d * (1.0 / pix), 0.0, 1.0)


def _bird_layers(u, v, pix, attrs, rng):
    """Yield (part name, coverage (H, W), colour (H, W, 3) or (3,)) in drawing order (back to front)."""
    j = lambda a, s=0.06: a * (1.0 + rng.uniform(-s, s))  # noqa: E731 - per-image proportion jitter
    tail = attrs["tail_shape"]
    if tail == "fan":
        cov = _polygon(u, v, [(-0.30, -0.06), (-0.30, 0.10), (j(-0.78), 0.26), (j(-0.82), -0.10)], pix)
    elif tail == "forked":
        cov = np.maximum(
            _polygon(u, v, [(-0.30, -0.04), (-0.30, 0.06), (j(-0.86), -0.12), (-0.80, -0.17)], pix),
            _polygon(u, v, [(-0.30, 0.00), (-0.30, 0.10), (-0.80, 0.27), (j(-0.86), 0.21)], pix),
        )
    else:
        cov = _polygon(u, v, [(-0.30, -0.05), (-0.30, 0.09), (j(-0.95), 0.05)], pix)
    yield "tail", cov, np.array(_TAIL_COLOUR, np.float32)
    legs = np.maximum(
        _polygon(u, v, [(-0.03, 0.15), (0.0, 0.15), (0.0, 0.43), (-0.03, 0.43)], pix),
        _polygon(u, v, [(0.07, 0.15), (0.10, 0.15), (0.10, 0.43), (0.07, 0.43)], pix),
    )
    legs = np.maximum(legs, _polygon(u, v, [(-0.07, 0.41), (0.16, 0.41), (0.16, 0.44), (-0.07, 0.44)], pix))
    yield "legs", legs, np.array(_LEG_COLOUR, np.float32)
    if attrs["crest"] == "crested":
        cov = _polygon(u, v, [(0.30, -0.30), (j(0.12, 0.1), j(-0.62, 0.1)), (0.48, -0.36)], pix)
        yield "crest", cov, np.array(_CREST_COLOUR, np.float32)
    body_rx, body_ry = j(0.42), j(0.25)
    body = _ellipse(u, v, 0.0, 0.02, body_rx, body_ry, -0.25, pix)
    yield "back", body, np.array(_COLOURS[attrs["back_colour"]], np.float32)
    belly = np.minimum(_ellipse(u, v, 0.10, 0.14, 0.34, 0.17, -0.35, pix), body)
    yield "belly", belly, np.array(_COLOURS[attrs["belly_colour"]], np.float32)
    wang = -0.22
    wing = _ellipse(u, v, -0.08, -0.01, j(0.31), j(0.12), wang, pix)
    colour = np.broadcast_to(np.array(_WING_BASE, np.float32), u.shape + (3,)).copy()
    pattern = attrs["wing_pattern"]
    if pattern != "plain":
        c, s = math.cos(wang), math.sin(wang)
        x, y = (u + 0.08) * c + (v + 0.01) * s, -(u + 0.08) * s + (v + 0.01) * c
        if pattern == "barred":
            m = np.sin(x * (2 * np.pi / 0.085)) > 0.35
        elif pattern == "striped":
            m = np.sin(y * (2 * np.pi / 0.07)) > 0.3
        else:
            gx, gy = np.round(x / 0.09) * 0.09, np.round(y / 0.08) * 0.08
            m = (x - gx) ** 2 + (y - gy) ** 2 < 0.024**2
        colour[m] = (235, 230, 215)
    yield "wing", wing, colour
    yield "head", _ellipse(u, v, 0.40, -0.25, j(0.17), j(0.16), 0.0, pix), np.array(
        _COLOURS[attrs["head_colour"]], np.float32
    )
    beak = attrs["beak_shape"]
    if beak == "cone":
        cov = _polygon(u, v, [(0.52, -0.31), (j(0.70), -0.24), (0.52, -0.16)], pix)
    elif beak == "thin":
        cov = _polygon(u, v, [(0.53, -0.27), (j(0.88), -0.24), (0.53, -0.21)], pix)
    else:
        cov = np.maximum(
            _polygon(u, v, [(0.52, -0.31), (0.68, -0.27), (0.70, -0.22), (0.52, -0.19)], pix),
            _polygon(u, v, [(0.64, -0.25), (0.71, -0.24), (0.69, -0.14)], pix),
        )
    yield "beak", cov, np.array((225, 170, 60) if beak == "cone" else (50, 45, 40), np.float32)
    if attrs["eye_ring"] == "ringed":
        yield "eye", _ellipse(u, v, 0.45, -0.28, 0.055, 0.055, 0.0, pix), np.array(_COLOURS["white"], np.float32)
    yield "eye", _ellipse(u, v, 0.45, -0.28, 0.028, 0.028, 0.0, pix), np.array((10, 10, 12), np.float32)


def _background(size: int, hue: float, rng) -> Image.Image:
    """Smooth two-tone backdrop with blobs and branches in bird colours, slightly blurred (depth of field)."""
    top = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.25, 0.55), rng.uniform(0.55, 0.9))) * 255
    bottom = np.array(colorsys.hsv_to_rgb((hue + rng.uniform(-0.08, 0.08)) % 1, rng.uniform(0.3, 0.7),
                                          rng.uniform(0.3, 0.65))) * 255
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    arr = (top * (1 - t) + bottom * t) * np.ones((1, size, 1), np.float32)
    img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    palette = list(_COLOURS.values())
    for _ in range(int(rng.integers(6, 14))):  # blobs (leaves, flowers, stones)
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.03, 0.14) * size
        col = np.array(palette[int(rng.integers(len(palette)))]) * rng.uniform(0.7, 1.05)
        draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.0), cx + r, cy + r * rng.uniform(0.5, 1.0)],
                     fill=tuple(int(c) for c in np.clip(col, 0, 255)))
    for _ in range(int(rng.integers(1, 4))):  # twigs
        x0, y0, x1, y1 = rng.uniform(-0.1, 1.1, 4) * size
        col = (int(rng.integers(60, 130)), int(rng.integers(45, 90)), int(rng.integers(30, 60)))
        draw.line([x0, y0, x1, y1], fill=col, width=max(1, int(size * rng.uniform(0.01, 0.03))))
    return img.filter(ImageFilter.GaussianBlur(radius=size / 224 * rng.uniform(0.6, 1.6)))


def _render(size: int, attrs: dict[str, str], hue: float, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image.

    Returns:
        rgb uint8 (S, S, 3), part label map uint8 (S, S) (0 = background), bird alpha float32 (S, S) in [0, 1].
    """
    img = np.asarray(_background(size, hue, rng), dtype=np.float32).copy()
    scale = size * rng.uniform(0.40, 0.56)  # pixels per bird unit; the bird is ~1.75 units long
    angle = rng.uniform(-0.35, 0.35)
    flip = rng.random() < 0.5
    half_w, half_h = 0.9 * scale, 0.55 * scale
    cx = size / 2 + rng.uniform(-1, 1) * max(0.0, size / 2 - half_w) * 0.9
    cy = size / 2 + rng.uniform(-1, 1) * max(0.0, size / 2 - half_h) * 0.9
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = (xs - cx) / scale, (ys - cy) / scale
    c, s = math.cos(angle), math.sin(angle)
    u, v = dx * c + dy * s, dy * c - dx * s
    if flip:
        u = -u
    u, v = u - 0.05, v + 0.05  # canonical frame centre of the bird's extent
    pix = 1.0 / scale
    # perch under the feet (background, drawn before the bird)
    perch = _polygon(u, v, [(-1.6, 0.43), (1.6, 0.40), (1.6, 0.49), (-1.6, 0.52)], pix)
    img += (np.array((105, 75, 50), np.float32) - img) * perch[..., None]
    labels = np.zeros((size, size), np.uint8)
    alpha = np.zeros((size, size), np.float32)
    for part, cov, colour in _bird_layers(u, v, pix, attrs, rng):
        img += (colour - img) * cov[..., None]
        labels[cov >= 0.5] = _PID[part]
        alpha = np.maximum(alpha, cov)
    if rng.random() < 0.35:  # a foreground leaf partly hides the bird
        lx, ly = cx + rng.uniform(-0.7, 0.7) * scale, cy + rng.uniform(-0.5, 0.5) * scale
        r = rng.uniform(0.10, 0.22) * scale
        leaf = np.clip(0.5 - (np.hypot((xs - lx) / 1.6, ys - ly) - r), 0.0, 1.0)
        green = np.array((55, 110, 45), np.float32) * np.float32(rng.uniform(0.8, 1.2))
        img += (green - img) * leaf[..., None]
        labels[leaf >= 0.5] = 0
        alpha = alpha * (1 - leaf)
    # lighting: global gain, a linear gradient in a random direction, colour cast, sensor noise
    theta = rng.uniform(0, 2 * np.pi)
    grad = ((xs - size / 2) * math.cos(theta) + (ys - size / 2) * math.sin(theta)) * (1.0 / size)
    gain = rng.uniform(0.75, 1.15) * (1 + rng.uniform(0.0, 0.5) * grad)
    img *= gain[..., None]
    img *= rng.uniform(0.93, 1.07, 3).astype(np.float32)
    img += rng.standard_normal(img.shape, dtype=np.float32) * 3.0
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), labels, alpha


def _soft_mask(alpha: np.ndarray) -> np.ndarray:
    """CUB-like soft segmentation: a blurred silhouette quantised to the 6 levels 0, 51, ..., 255."""
    blurred = np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(1)))
    return (np.round(blurred.astype(np.float32) / 51.0) * 51).astype(np.uint8)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return buf.getvalue()


def _write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def generate(
    root: str | Path,
    *,
    n_classes: int,
    n_train: int,
    n_test: int,
    image_size: int,
    seed: int,
    shortcut: bool = False,
    layout: str = "cub",
    exclude=(),
    verbose: bool = True,
) -> Path:
    """Write a SynthBirds folder in CUB-200-2011 or Stanford Cars format (see the module docstring for the layouts).

    The folder is generated under a temporary name beside ``root`` and renamed when finished; its
    ``.complete`` marker holds :func:`generator_args`. An existing complete folder made with the same
    arguments is returned untouched.

    Args:
        root: folder to create (plays the role of ``CUB_200_2011/``).
        n_classes: number of classes (2..999).
        n_train: training images per class (>= 1).
        n_test: test images per class (>= 1).
        image_size: side of the square images in pixels (>= 32).
        seed: generator seed; the same arguments give byte-identical files.
        shortcut: if True, the background hue is tied to the class in the training split only (test images
            get random hues), the "shortcut" variant for failure analysis.
        layout: "cub" (``root`` plays ``CUB_200_2011/``) or "cars" (``root`` plays ``StanfordCars/``).
        exclude: attribute combinations (dicts, or tuples in :data:`ATTRIBUTES` order, e.g. from
            :func:`attribute_combinations`) that no class may have: a folder disjoint from another one's classes.
        verbose: show a tqdm progress bar.

    Returns:
        ``root``.

    Raises:
        ValueError: for sizes out of range or an unknown layout.
        FileExistsError: ``root`` exists but is not a complete SynthBirds folder made with these arguments.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if not 2 <= n_classes <= _MAX_CLASSES:
        raise ValueError(f"n_classes must be in 2..{_MAX_CLASSES}, got {n_classes}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    excluded = _combination_set(exclude)
    _check_room(n_classes, excluded)
    root = Path(root)
    args = generator_args(n_classes=n_classes, n_train=n_train, n_test=n_test, image_size=image_size,
                          seed=seed, shortcut=shortcut, layout=layout, exclude=excluded)
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        # one generator per folder at a time: a second process waits, then finds the folder complete; the partial
        # folders left by killed generators can only be removed safely while holding the lock
        with file_lock(root.parent / f".{root.name}.lock", what=f"SynthBirds folder {root}"):
            if not root.exists():
                for stale in root.parent.glob(f".{root.name}.partial-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
                tmp.mkdir()
                try:
                    (_write_cars_folder if layout == "cars" else _write_folder)(tmp, args, excluded, verbose=verbose)
                    (tmp / COMPLETE_MARKER).write_text(json.dumps(args, sort_keys=True))
                    os.replace(tmp, root)
                finally:
                    if tmp.exists():
                        shutil.rmtree(tmp, ignore_errors=True)
    if is_complete(root, args):
        return root
    raise FileExistsError(
        f"{root} exists but is not a complete SynthBirds folder made with {args}; delete it or pick another root"
    )


def _render_sample(args: dict, classes: list[_Class], cls: _Class, k: int) -> tuple[np.ndarray, ...]:
    """Image k of a class (k < n_train: training image), drawn from its own generator (see :func:`_render`)."""
    rng = np.random.default_rng((args["seed"], cls.index, k, 7))
    if args["shortcut"] and k < args["n_train"]:
        hue = (cls.index / len(classes) + rng.uniform(-0.01, 0.01)) % 1.0
    else:
        hue = rng.random()
    return _render(args["image_size"], cls.attrs, hue, rng)


#: Threads that render a folder's images (NumPy and Pillow release the GIL for most of the work).
RENDER_THREADS = 2


def _encoded_sample(args: dict, classes: list[_Class], job: tuple[int, int]) -> dict:
    """Image k of the c-th class (``job = (c, k)``), encoded as the files store it, with its parts' centres and box."""
    c, k = job
    rgb, part_map, alpha = _render_sample(args, classes, classes[c], k)
    out = {"jpg": _jpeg_bytes(rgb)}
    ys, xs = np.nonzero(part_map)
    out["box"] = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (1, 1, 1, 1)
    if args.get("layout", "cub") == "cub":
        out["mask"], out["parts"] = _png_bytes(_soft_mask(alpha)), _png_bytes(part_map)
        centres = []
        for pid in range(1, len(PART_NAMES) + 1):
            ys, xs = np.nonzero(part_map == pid)
            centres.append((pid, xs.mean() + 0.5, ys.mean() + 0.5, 1) if len(xs) >= 4 else (pid, 0.0, 0.0, 0))
        out["centres"] = centres
    return out


def _encoded_samples(args: dict, classes: list[_Class], jobs: list[tuple[int, int]], *, desc: str, verbose: bool):
    """:func:`_encoded_sample` of every job, in order, rendered by :data:`RENDER_THREADS` threads (every image has
    its own generator, so the bytes do not depend on which thread drew it)."""
    with tqdm(total=len(jobs), desc=desc, unit="img", disable=not verbose) as bar, \
            concurrent.futures.ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="synthbirds") as pool:
        for sample in pool.map(functools.partial(_encoded_sample, args, classes), jobs):
            yield sample
            bar.update(1)


def _write_folder(out: Path, args: dict, exclude: frozenset[tuple[str, ...]], *, verbose: bool) -> None:
    classes = _make_classes(args["n_classes"], args["seed"], exclude)
    per_class = args["n_train"] + args["n_test"]
    images, labels, split, locs = [], [], [], []
    for cls in classes:
        for dir_name in ("images", "segmentations", "part_segmentations"):
            (out / dir_name / cls.folder).mkdir(parents=True)
    jobs = [(c, k) for c in range(len(classes)) for k in range(per_class)]
    for image_id, ((c, k), sample) in enumerate(zip(jobs, _encoded_samples(args, classes, jobs, desc="SynthBirds",
                                                                             verbose=verbose)), start=1):
        cls = classes[c]
        rel = f"{cls.folder}/{cls.name}_{k + 1:04d}_{image_id}"
        (out / "images" / f"{rel}.jpg").write_bytes(sample["jpg"])
        (out / "segmentations" / f"{rel}.png").write_bytes(sample["mask"])
        (out / "part_segmentations" / f"{rel}.png").write_bytes(sample["parts"])
        images.append(f"{image_id} {rel}.jpg")
        labels.append(f"{image_id} {cls.index + 1}")
        split.append(f"{image_id} {int(k < args['n_train'])}")
        locs += [f"{image_id} {pid} {x:.1f} {y:.1f} {visible}" for pid, x, y, visible in sample["centres"]]
    _write_text(out / "images.txt", images)
    _write_text(out / "image_class_labels.txt", labels)
    _write_text(out / "train_test_split.txt", split)
    _write_text(out / "classes.txt", [f"{c.index + 1} {c.folder}" for c in classes])
    _write_text(out / "parts" / "parts.txt", [f"{i + 1} {n}" for i, n in enumerate(PART_NAMES)])
    _write_text(out / "parts" / "part_locs.txt", locs)
    attr_names = [f"has_{a}::{v}" for a, vals in ATTRIBUTES.items() for v in vals]
    _write_text(out / "attributes" / "attributes.txt", [f"{i + 1} {n}" for i, n in enumerate(attr_names)])
    _write_text(
        out / "attributes" / "class_attribute_labels_continuous.txt",
        [" ".join("100.0" if c.attrs[n.split("::")[0][4:]] == n.split("::")[1] else "0.0" for n in attr_names)
         for c in classes],
    )
    table = pd.DataFrame([{"class_id": c.index + 1, "name": c.name, **c.attrs} for c in classes])
    table.to_csv(out / "attributes" / "class_attributes.csv", index=False, lineterminator="\n")


def _cars_annotations(rows: list[tuple[tuple[int, int, int, int], int, str]]) -> np.ndarray:
    """Stanford Cars' annotation struct array (1, N): bbox_x1, bbox_y1, bbox_x2, bbox_y2, class (1-based), fname."""
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    ann = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for n, (box, cls, fname) in enumerate(rows):
        ann[0, n] = (*(np.array([[v]], np.uint16) for v in box), np.array([[cls]], np.uint16), np.array([fname]))
    return ann


def _write_cars_folder(out: Path, args: dict, exclude: frozenset[tuple[str, ...]], *, verbose: bool) -> None:
    """The images of :func:`_write_folder`, in Stanford Cars' layout (see the module docstring)."""
    import scipy.io

    classes = _make_classes(args["n_classes"], args["seed"], exclude)
    samples = [(c, k) for c in range(len(classes)) for k in range(args["n_train"] + args["n_test"])]
    order = np.random.default_rng((args["seed"], 0xCA125)).permutation(len(samples))  # classes interleaved
    rows: dict[str, list] = {"cars_train": [], "cars_test": []}
    for split in rows:
        (out / split).mkdir(parents=True)
    jobs = [samples[i] for i in order]
    for (c, k), sample in zip(jobs, _encoded_samples(args, classes, jobs, desc="SynthBirds (Cars layout)",
                                                      verbose=verbose)):
        split = "cars_train" if k < args["n_train"] else "cars_test"
        fname = f"{len(rows[split]) + 1:05d}.jpg"
        (out / split / fname).write_bytes(sample["jpg"])
        rows[split].append((sample["box"], classes[c].index + 1, fname))
    (out / "car_devkit").mkdir()
    scipy.io.savemat(out / "car_devkit" / "cars_train_annos.mat", {"annotations": _cars_annotations(rows["cars_train"])})
    scipy.io.savemat(out / "cars_test_annos_withlabels.mat", {"annotations": _cars_annotations(rows["cars_test"])})
    names = np.empty((1, len(classes)), dtype=object)
    names[0, :] = [np.array([c.name]) for c in classes]
    scipy.io.savemat(out / "car_devkit" / "cars_meta.mat", {"class_names": names})


def part_names(root: str | Path) -> list[str]:
    """Part names in id order, read from ``parts/parts.txt`` (index i holds part id i + 1).

    Raises:
        FileNotFoundError: naming the missing ``parts/parts.txt``.
    """
    path = Path(root) / "parts" / "parts.txt"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; is {root} a CUB-format folder?")
    rows = [line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip()]
    return [name for _, name in sorted(rows, key=lambda r: int(r[0]))]


def class_attributes(root: str | Path) -> pd.DataFrame:
    """Each SynthBirds class's attribute values.

    Args:
        root: a SynthBirds folder.

    Returns:
        DataFrame with columns ``class_id`` (1-based, as in ``classes.txt``), ``label`` (0-based), ``name`` and
        one column per attribute of :data:`ATTRIBUTES`; :data:`ATTRIBUTE_PART` maps an attribute to its part.

    Raises:
        FileNotFoundError: ``attributes/class_attributes.csv`` is missing (e.g. for real CUB).
    """
    path = Path(root) / "attributes" / "class_attributes.csv"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}; class_attributes is only defined for SynthBirds folders")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["class_id"] = df["class_id"].astype(int)
    df.insert(1, "label", df["class_id"] - 1)
    return df


def part_maps(root: str | Path, image_ids, grid: int) -> np.ndarray:
    """Per patch, the fraction of its pixels covered by each part (from ``part_segmentations/``).

    Pixel (y, x) of an H x W map belongs to patch (floor(y * grid / H), floor(x * grid / W)); when H and W are
    multiples of ``grid`` this is the exact area fraction of each patch.

    Args:
        root: a SynthBirds folder.
        image_ids: 1-based image ids (as in ``images.txt``), length N.
        grid: patches per side (e.g. 16 for ViT-/14 at 224 px).

    Returns:
        float32 array (N, n_parts, grid, grid); channel p is part id p + 1 (:func:`part_names` order). Over the
        part channels plus background the fractions sum to 1 in every patch.

    Raises:
        ValueError: grid < 1 or an unknown image id.
        FileNotFoundError: naming a missing part map.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    root = Path(root)
    n_parts = len(part_names(root))
    index = dict(
        line.split(maxsplit=1) for line in (root / "images.txt").read_text().splitlines() if line.strip()
    )
    ids = [int(i) for i in np.atleast_1d(np.asarray(image_ids))]
    out = np.zeros((len(ids), n_parts, grid, grid), np.float32)
    for n, image_id in enumerate(ids):
        if str(image_id) not in index:
            raise ValueError(f"unknown image id {image_id}; valid ids are 1..{len(index)}")
        path = (root / "part_segmentations" / index[str(image_id)]).with_suffix(".png")
        if not path.is_file():
            raise FileNotFoundError(f"missing part map {path}")
        lab = np.asarray(Image.open(path), dtype=np.int64)  # (H, W)
        h, w = lab.shape
        rows = (np.arange(h) * grid // h)[:, None]
        cols = (np.arange(w) * grid // w)[None, :]
        cell = (rows * grid + cols).ravel()
        counts = np.bincount(cell, minlength=grid * grid).astype(np.float32)
        hist = np.bincount(cell * (n_parts + 1) + lab.ravel(), minlength=grid * grid * (n_parts + 1))
        hist = hist.reshape(grid * grid, n_parts + 1)[:, 1:].astype(np.float32) / counts[:, None]
        out[n] = hist.T.reshape(n_parts, grid, grid)
    return out


def sample_grid(root: str | Path, *, per_class: int = 1, max_classes: int | None = None, ncols: int = 5):
    """A figure with ``per_class`` training images of each class, titled with the class names.

    Args:
        root: a CUB-format folder (SynthBirds or CUB).
        per_class: images per class; with more than one, each class gets a row.
        max_classes: show only the first this many classes (None: all).
        ncols: columns when ``per_class == 1``.

    Returns:
        matplotlib Figure.
    """
    from matplotlib.figure import Figure

    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    df = read_index(root)
    names = _class_names(root)
    labels = sorted(df["label"].unique())[: max_classes or None]
    picks = []
    for lab in labels:
        rows = df[(df["label"] == lab) & df["is_train"]].head(per_class)
        picks += [(p, names[lab]) for p in rows["path"]]
    cols = per_class if per_class > 1 else min(ncols, len(picks))
    nrows = -(-len(picks) // cols)
    fig = Figure(figsize=(2.3 * cols, 2.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (path, name) in zip(axes.ravel(), picks):
        with Image.open(path) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(textwrap.fill(name.replace("_", " "), 22), fontsize=7)
    return fig


def _class_names(root: str | Path) -> list[str]:
    lines = (Path(root) / "classes.txt").read_text().splitlines()
    rows = sorted((int(a), b) for a, b in (line.split(maxsplit=1) for line in lines if line.strip()))
    return [b.split(".", 1)[1] if "." in b else b for _, b in rows]


def folder_fingerprint(args: dict) -> str:
    """Short hash of :func:`generator_args` output, used to name generated folders."""
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:10]
