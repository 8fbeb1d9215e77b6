"""Download, verify and install CUB-200-2011 with its segmentation masks (reference_spec §7.1).

Sources (CaltechDATA; both are checked against their published md5 before anything is extracted):
  images        https://data.caltech.edu/records/65de6-vp158  CUB_200_2011.tgz  (1.1 GB)
  segmentations https://data.caltech.edu/records/w9d68-gec53  segmentations.tgz (about 39 MB)

The result is <root>/CUB_200_2011/ with segmentations/ inside it. An interrupted download resumes when the
command is run again; archives are extracted into a temporary folder and moved into place only when complete.
Default root: $QPMLIB_DATA (else <repo>/.qpm/data), where the book looks for the data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qpmlib import paths  # noqa: E402
from qpmlib.data import cub  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None,
                        help="folder that will hold CUB_200_2011/ (default: $QPMLIB_DATA or <repo>/.qpm/data)")
    parser.add_argument("--no-segmentations", action="store_true",
                        help="skip the segmentation masks (Plausibility then cannot be computed)")
    parser.add_argument("--keep-archives", action="store_true", help="keep the .tgz files in <root>/.downloads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    root = cub.download_cub(args.root or paths.data_dir(), segmentations=not args.no_segmentations,
                            keep_archives=args.keep_archives, verbose=not args.quiet)
    df = cub.read_index(root)
    print(f"CUB-200-2011 ready at {root}: {int(df.is_train.sum())} train / {int((~df.is_train).sum())} test images")
    return root


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as exc:  # ChecksumError is a ValueError
        sys.exit(f"error: {exc}")
