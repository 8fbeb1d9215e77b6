"""Pretrain the stand-in backbones (miniature DINOv2s) on the SynthBirds corpus and write their weights and cards.

Examples:
    python data_scripts/pretrain_backbone.py --all                 # every variant, as committed (hours on a CPU)
    python data_scripts/pretrain_backbone.py --variant standin_s14_reg
    python data_scripts/pretrain_backbone.py --variant standin_t14_reg --tiny --weights-dir /tmp/w   # seconds

Each run works in ``$QPMLIB_HOME/pretrain/<variant>`` and checkpoints every few minutes: run the same command
again after an interruption and it resumes where it stopped, ending with bit-identical weights (on the same number
of threads). At the end it writes ``<variant>.safetensors`` (fp16) and the provenance card ``<variant>.json`` into
``weights/`` (or ``--weights-dir``), after measuring the held-out probe of the calibration
(``qpmlib.pretrain.corpus.HELD_OUT``) for the card.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from qpmlib import backbones, paths  # noqa: E402
from qpmlib.pretrain import probe, trainer  # noqa: E402
from qpmlib.pretrain.corpus import HELD_OUT, prepare_set  # noqa: E402


def main(argv: list[str] | None = None) -> list[Path]:
    names = backbones.standin_names()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", default=[], metavar="NAME",
                        help=f"stand-in(s) to pretrain; valid: {', '.join(names)}")
    parser.add_argument("--all", action="store_true", help="pretrain every variant")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny configuration (tiny corpus, a few steps): checks the script in seconds")
    parser.add_argument("--steps", type=int, default=None, help="override the number of steps")
    parser.add_argument("--seed", type=int, default=None, help="override the seed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="working folder of the runs (default: $QPMLIB_HOME/pretrain)")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help=f"where weights and cards go (default: {backbones.WEIGHTS_DIR})")
    parser.add_argument("--no-probe", action="store_true", help="skip the held-out probe for the card")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    unknown = [v for v in args.variant if v not in names]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; valid variants: {', '.join(names)}")
    variants = names if args.all else args.variant
    if not variants:
        parser.error(f"name a --variant or pass --all; valid variants: {', '.join(names)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    run_root = args.run_dir or paths.home() / "pretrain"
    written = []
    for variant in variants:
        changes = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
        cfg = trainer.tiny_config(variant, **changes) if args.tiny else trainer.config_for(variant, **changes)
        run_dir = run_root / (variant + ("-tiny" if args.tiny else ""))
        start = time.perf_counter()
        result = trainer.pretrain(cfg, run_dir, verbose=not args.quiet)
        extra = {}
        if not (args.no_probe or args.tiny):
            extra["held_out_probe"] = _held_out(result, cfg, run_dir)
        path = trainer.export(result, cfg, args.weights_dir, extra=extra)
        print(f"{variant}: {len(result.history)} steps, {result.wall_seconds / 60:.1f} min of training "
              f"({result.images_per_second:.1f} images/s), written {path} "
              f"[{time.perf_counter() - start:.0f} s in this session]")
        written.append(path)
    return written


def _held_out(result: trainer.PretrainResult, cfg: trainer.PretrainConfig, run_dir: Path) -> dict:
    """The calibration probe (CLS + mean patch token, ridge and k-NN) on the held-out set at 224 px."""
    tmp = trainer.export(result, cfg, run_dir / "probe_weights")
    backbone = backbones.build_backbone(cfg.variant, weights=tmp, image_size=HELD_OUT.image_size)
    scores = probe.heldout_probe(backbone, prepare_set(HELD_OUT), out_dir=run_dir / "probe_cache")
    return {"set": HELD_OUT.card(), "image_size": HELD_OUT.image_size, **scores}


if __name__ == "__main__":
    main()
