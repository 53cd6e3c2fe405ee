"""``dfseg evaluate``: detection, segmentation and calibration metrics with bootstrap CIs, and a report."""

from __future__ import annotations

import argparse
import sys

from dfseg.commands import add_no_progress, add_out
from dfseg.errors import InputError
from dfseg.evaluation.lesions import MAX_LESION_ELONGATION, check_max_elongation
from dfseg.reporting.evaluation import evaluate_predictions

HELP = "detection, segmentation and calibration metrics with bootstrap CIs, report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, metavar="DIR",
                        help="folder of <scan_id>_prob.nii.gz tumour probabilities")
    parser.add_argument("--manifest", required=True, metavar="M", help="cohort manifest (MONAI datalist JSON)")
    add_out(parser, "output folder: metrics.json, records.json, report.md, figures/", required=True)
    parser.add_argument("--split", default="test", help="manifest split: test, validation, training or all (default test)")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    parser.add_argument("--max-elongation", type=float, default=MAX_LESION_ELONGATION, metavar="E",
                        help="a component smaller than a 1 mm sphere more than E times as long as it is wide is a "
                             f"vessel segment, not a lesion (default {MAX_LESION_ELONGATION:g}; 0 counts every shape)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="subject-bootstrap resamples for the 95%% CIs (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--patch-size", type=int, default=8, metavar="P", help="patch edge in voxels (default 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    add_no_progress(parser, "--quiet")


def run(args: argparse.Namespace) -> int:
    if args.bootstrap < 0:
        raise InputError("--bootstrap", f"must be >= 0, got {args.bootstrap}")
    if args.patch_size < 1:
        raise InputError("--patch-size", f"must be >= 1, got {args.patch_size}")
    doc = evaluate_predictions(args.predictions, args.manifest, args.out, split=args.split,
                               threshold=args.threshold, n_bootstrap=args.bootstrap, seed=args.seed,
                               progress=not args.no_progress and sys.stderr.isatty(), overwrite=args.overwrite,
                               patch_size=args.patch_size, max_elongation=check_max_elongation(args.max_elongation))
    m = doc["metrics"]

    def line(key: str, label: str) -> str:
        r = m[key]
        if r["estimate"] is None:
            return f"  {label:<28} -"
        ci = "" if r["ci_low"] is None else f"  (95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f})"
        return f"  {label:<28} {r['estimate']:.3f}{ci}"

    print(f"evaluated {doc['n_scans']} scans of {doc['n_subjects']} subjects, {doc['n_lesions']} lesions")
    for key, label in (("volume_auroc", "volume AUROC"), ("patch_auroc", "patch AUROC"),
                       ("patch_sens_at_95spec", "patch sens@95%spec"), ("lesion_sensitivity", "lesion sensitivity"),
                       ("froc_cpm", "FROC CPM"), ("dice", "Dice"), ("ece", "ECE")):
        print(line(key, label))
    print(f"report: {args.out}/report.md")
    return 0
