"""Extract (or check) the embedding stores of a profile: frozen-backbone tokens for the train and test splits.

Usage::

    python data_scripts/extract_embeddings.py --profile demo
    python data_scripts/extract_embeddings.py --profile paper --device cuda --batch-size 128
    python data_scripts/extract_embeddings.py --profile paper_shapes --book   # every store the book reads

A store that is already complete and up to date is left alone; an interrupted run resumes; a stale one is rebuilt
(see ``qpmlib.embeddings``). The folder of each store is printed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

try:
    import qpmlib  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qpmlib.analysis.plan import embedding_profiles
from qpmlib.config import PROFILES, default_profile_name, get_profile
from qpmlib.embeddings import SPLITS, get_store
from qpmlib.runs.checks import NotReady, check_ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=default_profile_name(), choices=sorted(PROFILES))
    parser.add_argument("--split", default="both", choices=(*SPLITS, "both"))
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: the profile's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the profile's")
    parser.add_argument("--weights", default=None, help="auto | pretrained | random | a checkpoint path")
    parser.add_argument("--book", action="store_true",
                        help="every store the book's chapters read (each dataset and backbone of its runs: Tables "
                             "1-4 and the sweeps), not only the profile's own")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def with_options(prof):
        """The profile with the command line's batch size, weights and device."""
        backbone = prof.backbone
        if args.batch_size is not None:
            backbone = dataclasses.replace(backbone, batch_size=args.batch_size)
        if args.weights is not None:
            backbone = dataclasses.replace(backbone, weights=args.weights)
        train = prof.train if args.device is None else dataclasses.replace(prof.train, device=args.device)
        return prof.replace(backbone=backbone, train=train)

    profile = with_options(get_profile(args.profile))
    profiles = [with_options(p) for p in embedding_profiles(profile)] if args.book else [profile]
    # a GPU profile without CUDA, missing data or weights stop here, before any extraction
    try:
        check_ready(profile, backbones=[p.backbone.name for p in profiles])
    except (ValueError, NotReady) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for prof in profiles:
        for split in SPLITS if args.split == "both" else (args.split,):
            store = get_store(prof, split, verbose=not args.quiet)
            weights = "pretrained" if store.pretrained else "RANDOM"
            shape = store.patch_tokens.shape
            print(f"{prof.data.dataset} {split}, {prof.backbone.name}: {len(store)} images, tokens {shape} fp16, "
                  f"{weights} weights -> {store.path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
