"""Generate the SynthBirds dataset of a profile (or custom sizes) and print where it is.

Examples:
    python data_scripts/make_synthbirds.py --profile smoke
    python data_scripts/make_synthbirds.py --profile demo
    python data_scripts/make_synthbirds.py --root /tmp/birds --n-classes 10 --n-train 20 --n-test 10 --image-size 224

With --profile the folder is $QPMLIB_DATA/synthbirds-<hash of the sizes> (what the book's chapters use); an
existing complete folder is reused. The sizes come from qpmlib.config unless overridden.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qpmlib.data import prepare, synthbirds  # noqa: E402
from qpmlib.config import PROFILES, default_profile_name, get_profile  # noqa: E402


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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    cfg = get_profile(args.profile).data
    if cfg.dataset != "synthbirds":
        cfg = get_profile("demo").data
    overrides = {k: getattr(args, k) for k in ("n_classes", "n_train", "n_test", "image_size", "seed")
                 if getattr(args, k) is not None}
    cfg = dataclasses.replace(cfg, dataset="synthbirds", shortcut=args.shortcut or cfg.shortcut, **overrides)
    start = time.perf_counter()
    if args.root is None:
        root = prepare(cfg, verbose=not args.quiet)
    else:
        root = synthbirds.generate(args.root, n_classes=cfg.n_classes, n_train=cfg.n_train, n_test=cfg.n_test,
                                   image_size=cfg.image_size, seed=cfg.seed, shortcut=cfg.shortcut,
                                   verbose=not args.quiet)
    n = cfg.n_classes * (cfg.n_train + cfg.n_test)
    print(f"SynthBirds ({cfg.n_classes} classes x ({cfg.n_train} train + {cfg.n_test} test) = {n} images, "
          f"{cfg.image_size} px, seed {cfg.seed}) ready in {time.perf_counter() - start:.1f} s at:\n{root}")
    return root


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as exc:  # ChecksumError is a ValueError
        sys.exit(f"error: {exc}")
