"""Install and check Stanford Cars from files you downloaded by hand (reference_spec §7.2).

Nothing is fetched from Kaggle by this script (no Kaggle account or package needed). Get, in a browser:

  1. the Kaggle dataset eduardo4jesus/stanford-cars-dataset
     (https://www.kaggle.com/datasets/eduardo4jesus/stanford-cars-dataset): a zip with car_devkit/,
     cars_train/ and cars_test/;
  2. cars_test_annos_withlabels.mat, the test labels missing from that zip (the reference code points to the
     copy in the GitHub repository phongdinhv/stanford-cars-model).

Then:
  python data_scripts/download_cars.py --archive ~/Downloads/archive.zip --test-labels ~/Downloads/cars_test_annos_withlabels.mat

The zip is extracted safely into <root>/StanfordCars (members escaping the folder are refused), the label file
is copied beside it, and the result is checked: 196 classes, 8,144 train / 8,041 test images.
Without --archive/--test-labels the script only checks an existing <root>/StanfordCars.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qpmlib import paths  # noqa: E402
from qpmlib.data import cars  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None,
                        help="folder that will hold StanfordCars/ (default: $QPMLIB_DATA or <repo>/.qpm/data)")
    parser.add_argument("--archive", type=Path, default=None, help="the zip downloaded from Kaggle")
    parser.add_argument("--test-labels", type=Path, default=None, help="cars_test_annos_withlabels.mat")
    args = parser.parse_args(argv)
    root = cars.install_cars(args.root or paths.data_dir(), archive=args.archive, test_labels=args.test_labels)
    df = cars.read_index(root)
    n_train, n_test = int(df.is_train.sum()), int((~df.is_train).sum())
    print(f"Stanford Cars ready at {root}: {n_train} train / {n_test} test images, {df.label.nunique()} classes")
    if (n_train, n_test) != (cars.N_TRAIN, cars.N_TEST):
        print(f"warning: the standard split has {cars.N_TRAIN} / {cars.N_TEST} images", file=sys.stderr)
    return root


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as exc:  # ChecksumError is a ValueError
        sys.exit(f"error: {exc}")
