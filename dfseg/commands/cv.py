"""``dfseg cv``: subject-level k-fold cross-validation of a bundle.

Per fold ``k``: train (the bundle's ``train`` workflow, fold k held out for validation), evaluate on
the held-out fold (the ``evaluate`` workflow, ``--split val``) and on the test split (``--split test``),
each through ``python -m monai.bundle run`` in a subprocess. Writes ``fold<k>/`` run directories,
``cv_metrics.json`` (per fold and pooled: AUROC of the per-volume presence scores of all held-out
folds together, mean Dice) and ``test_metrics.json`` (per fold).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dfseg.errors import InputError
from dfseg.evaluation.metrics import auroc
from dfseg.io import prepare_output_dir, read_json, write_json
from dfseg.resources import run_bundle

HELP = "subject-level k-fold cross-validation of a bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory (bundles/dfseg_attention_unet)")
    parser.add_argument("--manifest", required=True, type=Path, help="cohort manifest.json")
    parser.add_argument("--folds", type=int, default=5, help="number of folds to run (default 5)")
    parser.add_argument("--fold", type=int, help="run only this fold")
    parser.add_argument("--modality", choices=["attn", "df", "combined"], default="combined")
    parser.add_argument("--max-epochs", type=int, help="training epochs (bundle default otherwise)")
    parser.add_argument("--output", type=Path, default=Path("runs/cv"), help="output directory")
    parser.add_argument("--device", help="torch device (default: CUDA if present)")
    parser.add_argument("--calibration", type=Path, help="calibration.json for raw reconstructions")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra bundle override, e.g. --override patch_size=32 (repeatable)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    group.add_argument("--resume", action="store_true", help="continue: finished folds are kept, others resume")


def _pooled(per_fold: dict[int, dict]) -> dict:
    vols = [v for m in per_fold.values() for v in m["volumes"]]
    scores = np.array([v["score"] for v in vols], float)
    labels = np.array([v["has_tumour"] for v in vols], bool)
    dice = [m["metrics"].get("mean_dice") for m in per_fold.values()]
    return {"n_volumes": len(vols), "presence_auroc": auroc(scores, labels) if 0 < labels.sum() < len(labels) else None,
            "mean_dice": float(np.nanmean([d for d in dice if d is not None])) if dice else None,
            "fold_auroc_mean": float(np.nanmean([m["metrics"]["auroc"] for m in per_fold.values()]))}


def run(args: argparse.Namespace) -> int:
    bundle = args.bundle.resolve()
    if not (bundle / "configs" / "train.yaml").is_file():
        raise InputError(args.bundle, "not a bundle (no configs/train.yaml)")
    manifest = args.manifest.resolve()
    num_folds = int(read_json(manifest).get("num_folds", args.folds))
    folds = [args.fold] if args.fold is not None else list(range(min(args.folds, num_folds)))
    out = prepare_output_dir(args.output, overwrite=args.overwrite, resume=args.resume or args.fold is not None)
    common: dict[str, object] = {"manifest": manifest, "modality": args.modality}
    if args.device:
        common["device"] = args.device
    if args.calibration:
        common["calibration"] = args.calibration.resolve()
    for item in args.override:
        key, _, value = item.partition("=")
        common[key] = value
    per_fold, test = {}, {}
    for k in folds:
        run_dir = out / f"fold{k}"
        train = {**common, "fold": k, "output_dir": run_dir}
        if args.max_epochs:
            train["max_epochs"] = args.max_epochs
        infer = {key: v for key, v in train.items() if key != "max_epochs"}
        run_bundle(bundle, "train", **train)  # resumes from run_dir/last.pt when present
        run_bundle(bundle, "evaluate", **infer, split="val")
        per_fold[k] = read_json(run_dir / "eval_val.json")
        if read_json(manifest).get("test"):
            run_bundle(bundle, "evaluate", **infer, split="test")
            test[k] = read_json(run_dir / "eval_test.json")
    write_json(out / "cv_metrics.json", {"bundle": bundle.name, "manifest": str(manifest), "modality": args.modality,
                                         "folds": {str(k): m for k, m in per_fold.items()},
                                         "pooled": _pooled(per_fold)})
    write_json(out / "test_metrics.json", {"folds": {str(k): m for k, m in test.items()}})
    print(f"dfseg cv: {len(per_fold)} fold(s) -> {out / 'cv_metrics.json'}")
    return 0
