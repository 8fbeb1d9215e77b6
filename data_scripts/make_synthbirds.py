"""Generate the SynthBirds dataset of a profile (or custom sizes) and print where it is.

Examples:
    python data_scripts/make_synthbirds.py --profile smoke
    python data_scripts/make_synthbirds.py --profile demo
    python data_scripts/make_synthbirds.py --root /tmp/birds --n-classes 10 --n-train 20 --n-test 10 --image-size 224
    python data_scripts/make_synthbirds.py --layout cars --root /tmp/StanfordCars --n-classes 196
    python data_scripts/make_synthbirds.py --paper-shapes      # 200 classes (CUB layout) + 196 (Cars layout)

With --profile the folder is $QPMLIB_DATA/synthbirds-<hash of the sizes> (what the book's chapters use); an
existing complete folder is reused. The sizes come from qpmlib.config unless overridden. ``--layout cars``
writes the same images in Stanford Cars' layout ($QPMLIB_DATA/synthcars-<hash>, read by qpmlib.data.cars).
``--paper-shapes`` writes both paper-shaped folders (dataset "synthbirds" with 200 classes and "synthcars" with
196, PAPER_SHAPES_PER_CLASS images per class at --image-size, default 224 px) and prints the time each took.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qpmlib.config import PROFILES, default_profile_name, get_profile  # noqa: E402
from qpmlib.data import prepare, synthbirds  # noqa: E402
from qpmlib.data.registry import synthbirds_root  # noqa: E402

#: Paper-shaped generated data (issue 16): (dataset, classes) with PAPER_SHAPES_PER_CLASS = (train, test) images.
PAPER_SHAPES = (("synthbirds", 200), ("synthcars", 196))
PAPER_SHAPES_PER_CLASS = (3, 2)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help=f"take the sizes from this profile (default: {default_profile_name()}); the paper "
                             "profile uses real CUB, so only its sizes' fields apply")
    parser.add_argument("--root", type=Path, default=None,
                        help="write here instead of $QPMLIB_DATA/synthbirds-<hash>")
    for name in ("n_classes", "n_train", "n_test", "image_size", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"override {name}")
    parser.add_argument("--shortcut", action="store_true", help="tie the background to the class in train only")
    parser.add_argument("--layout", choices=synthbirds.LAYOUTS, default="cub",
                        help="on-disk format: CUB-200-2011's (default) or Stanford Cars' (dataset 'synthcars')")
    parser.add_argument("--paper-shapes", action="store_true",
                        help="write the 200-class CUB-layout and 196-class Cars-layout folders of the paper shapes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.paper_shapes:
        return paper_shapes(args)

    cfg = get_profile(args.profile).data
    if cfg.dataset != "synthbirds":
        cfg = get_profile("demo").data
    overrides = {k: getattr(args, k) for k in ("n_classes", "n_train", "n_test", "image_size", "seed")
                 if getattr(args, k) is not None}
    dataset = "synthcars" if args.layout == "cars" else "synthbirds"
    cfg = dataclasses.replace(cfg, dataset=dataset, shortcut=args.shortcut or cfg.shortcut, **overrides)
    start = time.perf_counter()
    if args.root is None:
        root = prepare(cfg, verbose=not args.quiet)
    else:
        root = synthbirds.generate(args.root, n_classes=cfg.n_classes, n_train=cfg.n_train, n_test=cfg.n_test,
                                   image_size=cfg.image_size, seed=cfg.seed, shortcut=cfg.shortcut,
                                   layout=args.layout, verbose=not args.quiet)
    n = cfg.n_classes * (cfg.n_train + cfg.n_test)
    print(f"SynthBirds ({args.layout} layout, {cfg.n_classes} classes x ({cfg.n_train} train + {cfg.n_test} test) = "
          f"{n} images, {cfg.image_size} px, seed {cfg.seed}) ready in {time.perf_counter() - start:.1f} s at:\n{root}")
    return root


def paper_shapes(args: argparse.Namespace) -> list[Path]:
    """Both paper-shaped folders under $QPMLIB_DATA (or --root), with the generation time of each."""
    n_train, n_test = args.n_train or PAPER_SHAPES_PER_CLASS[0], args.n_test or PAPER_SHAPES_PER_CLASS[1]
    base = get_profile("demo").data
    roots = []
    for dataset, n_classes in PAPER_SHAPES:
        cfg = dataclasses.replace(base, dataset=dataset, n_classes=args.n_classes or n_classes, n_train=n_train,
                                  n_test=n_test, image_size=args.image_size or 224, seed=args.seed or 0)
        target = synthbirds_root(cfg) if args.root is None else args.root / f"{dataset}-{cfg.n_classes}"
        existed = synthbirds.is_complete(target)
        start = time.perf_counter()
        root = synthbirds.generate(target, n_classes=cfg.n_classes, n_train=n_train, n_test=n_test,
                                   image_size=cfg.image_size, seed=cfg.seed,
                                   layout="cars" if dataset == "synthcars" else "cub", verbose=not args.quiet)
        took = "already there" if existed else f"generated in {time.perf_counter() - start:.1f} s"
        print(f"{dataset}: {cfg.n_classes} classes x ({n_train} + {n_test}) images at {cfg.image_size} px, {took}: "
              f"{root}")
        roots.append(root)
    return roots


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as exc:  # ChecksumError is a ValueError
        sys.exit(f"error: {exc}")
