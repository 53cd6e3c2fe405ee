"""``dfseg study``: attenuation vs dark-field vs combined, one model per modality on the same folds.

For each modality: train the bundle on the same fold, infer on the held-out split, evaluate; then
compare every pair of models on the same subjects (paired subject bootstrap) and write the
comparison in the form of the Dey et al. 2025 table, with CIs, plus an ROC figure of all models.
A radiograph cohort (``dfseg simulate --geometry radiograph``) reruns the 2D study: the bundle
trains a 2D network on the single-view images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dfseg.commands import add_no_progress, add_out
from dfseg.errors import InputError
from dfseg.evaluation.compare import compare_models, load_records
from dfseg.evaluation.plots import plot_roc_multi
from dfseg.evaluation.presence import PATCH_SIZE
from dfseg.io import atomic_write, prepare_output_dir, write_json
from dfseg.reporting.comparison import render_comparison_table, render_study
from dfseg.reporting.evaluation import evaluate_predictions
from dfseg.resources import bundle_dir, run_bundle
from dfseg.training import cohort_value

HELP = "attenuation vs dark-field vs combined: train and compare one model per modality"
MODALITIES = ("attn", "df", "combined")



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="cohort manifest.json (preprocessed or raw + --calibration)")
    parser.add_argument("--modalities", default="attn,df,combined", help="comma-separated: attn, df, combined")
    parser.add_argument("--geometry", choices=["ct", "radiograph"], help="must match the cohort (default: read from it)")
    parser.add_argument("--bundle", default="dfseg_attention_unet", help="bundle name or folder (default dfseg_attention_unet)")
    parser.add_argument("--fold", type=int, default=0, help="validation fold used for every modality (default 0)")
    parser.add_argument("--split", default="test", help="split the models are compared on (default test)")
    parser.add_argument("--max-epochs", type=int, help="training epochs per model (bundle default otherwise)")
    parser.add_argument("--calibration", type=Path, help="calibration.json, for raw (not preprocessed) cohorts")
    parser.add_argument("--device", help="torch device (default: CUDA if present)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra bundle override (repeatable)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="subject-bootstrap resamples (default 1000)")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold for sensitivity/specificity")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds, e.g. 0,1,2: one model per input "
                        "and seed; tables give the mean over seeds with subject-bootstrap CIs (default 0)")
    parser.add_argument("--patch-size", type=int, default=PATCH_SIZE,
                        help=f"edge in voxels of the per-patch detection patches (default {PATCH_SIZE})")
    add_out(parser, "output folder (default runs/study-<timestamp>)", type=Path, default=None)
    add_no_progress(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    group.add_argument("--resume", action="store_true", help="keep finished models; training resumes from checkpoints")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; refuses repeats and anything but non-negative integers."""
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError("--seeds", f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise InputError("--seeds", f"need distinct non-negative integers, got {text!r}")
    return seeds


def run(args: argparse.Namespace) -> int:
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise InputError("--modalities", f"unknown {bad}; choose from {', '.join(MODALITIES)}")
    seeds = parse_seeds(args.seeds)
    manifest = args.manifest.resolve()
    geometry = str(cohort_value(manifest, "geometry", "ct", mixed="a study needs one geometry"))
    if args.geometry and args.geometry != geometry:
        raise InputError(manifest, f"cohort geometry is {geometry!r} but --geometry {args.geometry} was given")
    bundle = bundle_dir(args.bundle)
    out = prepare_output_dir(args.out or Path("runs") / f"study-{time.strftime('%Y%m%d-%H%M%S')}",
                             overwrite=args.overwrite, resume=args.resume)
    common: dict[str, object] = {"manifest": manifest, "fold": args.fold, "device": args.device,
                                 "calibration": args.calibration.resolve() if args.calibration else None,
                                 "progress": not args.no_progress}
    if geometry == "radiograph":
        common["spatial_dims"] = 2
    for item in args.override:
        key, _, value = item.partition("=")
        common[key] = value

    records: dict[str, list[list[dict]]] = {}
    jobs = [(modality, seed) for modality in modalities for seed in seeds]
    for i, (modality, seed) in enumerate(jobs, 1):
        run_dir = out / modality if len(seeds) == 1 else out / modality / f"seed-{seed}"
        eval_dir = run_dir / "evaluation"
        print(f"\n[{i}/{len(jobs)}] {modality}, seed {seed}: train -> infer -> evaluate ({run_dir})", flush=True)
        if not (eval_dir / "records.json").is_file():
            run_bundle(bundle, "train", **common, modality=modality, output_dir=run_dir, seed=seed,
                       max_epochs=args.max_epochs)
            run_bundle(bundle, "inference", **common, modality=modality, output_dir=run_dir,
                       split=args.split, predictions_dir=run_dir / "predictions")
            evaluate_predictions(run_dir / "predictions", manifest, eval_dir, split=args.split,
                                 threshold=args.threshold, n_bootstrap=args.bootstrap, seed=seeds[0],
                                 patch_size=args.patch_size, progress=not args.no_progress, overwrite=True)
        records.setdefault(modality, []).append(load_records(eval_dir))

    comparison = compare_models(records, threshold=args.threshold, n_bootstrap=args.bootstrap, seed=seeds[0])
    write_json(out / "study.json", {"geometry": geometry, "manifest": str(manifest), "bundle": bundle.name,
                                    "fold": args.fold, "split": args.split, "training_seeds": seeds,
                                    "patch_size": args.patch_size, **comparison})
    roc_png = plot_roc_multi(comparison, out / "roc_modalities.png", title=f"Per-patch ROC by input ({geometry})")
    with atomic_write(out / "study.md", "w") as fh:
        fh.write(render_study(comparison, geometry=geometry, manifest=manifest, bundle=bundle.name, roc_png=roc_png))
    print(f"\n{render_comparison_table(comparison)}\n\ndfseg study: {out / 'study.md'}")
    return 0
