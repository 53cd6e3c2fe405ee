"""``dfseg cv``: subject-level k-fold cross-validation of a bundle (:mod:`dfseg.training.cross_validation`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfseg.commands import add_no_progress, add_out
from dfseg.errors import InputError
from dfseg.io import prepare_output_dir, read_json
from dfseg.training.cross_validation import cross_validate

HELP = "subject-level k-fold cross-validation of a bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory (bundles/dfseg_attention_unet)")
    parser.add_argument("--manifest", required=True, type=Path, help="cohort manifest.json")
    parser.add_argument("--folds", type=int, default=5, help="number of folds to run (default 5)")
    parser.add_argument("--fold", type=int, help="run only this fold")
    parser.add_argument("--modality", choices=["attn", "df", "combined"], default="combined")
    parser.add_argument("--max-epochs", type=int, help="training epochs (bundle default otherwise)")
    add_out(parser, "output directory (default runs/cv)", type=Path, default=Path("runs/cv"))
    parser.add_argument("--device", help="torch device (default: CUDA if present)")
    parser.add_argument("--calibration", type=Path, help="calibration.json for raw reconstructions")
    add_no_progress(parser)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra bundle override, e.g. --override patch_size=32 (repeatable)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    group.add_argument("--resume", action="store_true", help="continue: finished folds are kept, others resume")


def run(args: argparse.Namespace) -> int:
    bundle = args.bundle.resolve()
    if not (bundle / "configs" / "train.yaml").is_file():
        raise InputError(args.bundle, "not a bundle (no configs/train.yaml)")
    manifest = args.manifest.resolve()
    num_folds = int(read_json(manifest).get("num_folds", args.folds))
    folds = [args.fold] if args.fold is not None else list(range(min(args.folds, num_folds)))
    out = prepare_output_dir(args.out, overwrite=args.overwrite, resume=args.resume or args.fold is not None)
    overrides: dict[str, object] = {"modality": args.modality, "device": args.device,
                                    "calibration": args.calibration.resolve() if args.calibration else None,
                                    "progress": not args.no_progress}
    overrides.update(item.partition("=")[::2] for item in args.override)
    path = cross_validate(bundle, manifest, folds, out, overrides=overrides, max_epochs=args.max_epochs)
    print(f"dfseg cv: {len(folds)} fold(s) -> {path}")
    return 0
