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

from dfseg.errors import InputError
from dfseg.evaluation.compare import compare_models, load_records
from dfseg.evaluation.plots import plot_roc_multi
from dfseg.io import atomic_write, prepare_output_dir, read_json, write_json
from dfseg.reporting.comparison import render_comparison_table
from dfseg.reporting.evaluation import evaluate_predictions
from dfseg.resources import bundle_dir, run_bundle

HELP = "attenuation vs dark-field vs combined: train and compare one model per modality"
MODALITIES = ("attn", "df", "combined")

#: Dey, Meyer, Taqi 2025 (arXiv 2510.27679), per-patch results on 2D radiographs (docs/physics.md section 8)
DEY_2025 = {"attn": (0.510, 0.929), "df": (0.837, 0.905), "combined": (0.796, 0.976)}


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
    parser.add_argument("--seed", type=int, default=0, help="training and bootstrap seed (default 0)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="output folder (default runs/study-<timestamp>)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    group.add_argument("--resume", action="store_true", help="keep finished models; training resumes from checkpoints")


def _cohort_geometry(manifest: Path) -> str:
    doc = read_json(manifest)
    entries = [e for split in ("training", "validation", "test") for e in doc.get(split, [])]
    if not entries:
        raise InputError(manifest, "no scans in training, validation or test")
    geometries = {str(e.get("meta", {}).get("geometry", "ct")) for e in entries}
    if len(geometries) != 1:
        raise InputError(manifest, f"mixes geometries {sorted(geometries)}; a study needs one")
    return geometries.pop()


def run(args: argparse.Namespace) -> int:
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise InputError("--modalities", f"unknown {bad}; choose from {', '.join(MODALITIES)}")
    manifest = args.manifest.resolve()
    geometry = _cohort_geometry(manifest)
    if args.geometry and args.geometry != geometry:
        raise InputError(manifest, f"cohort geometry is {geometry!r} but --geometry {args.geometry} was given")
    bundle = bundle_dir(args.bundle)
    out = prepare_output_dir(args.output or Path("runs") / f"study-{time.strftime('%Y%m%d-%H%M%S')}",
                             overwrite=args.overwrite, resume=args.resume)
    common: dict[str, object] = {"manifest": manifest, "fold": args.fold, "device": args.device,
                                 "calibration": args.calibration.resolve() if args.calibration else None}
    if geometry == "radiograph":
        common["spatial_dims"] = 2
    for item in args.override:
        key, _, value = item.partition("=")
        common[key] = value

    records = {}
    for i, modality in enumerate(modalities, 1):
        run_dir, eval_dir = out / modality, out / modality / "evaluation"
        print(f"\n[{i}/{len(modalities)}] {modality}: train -> infer -> evaluate ({run_dir})", flush=True)
        if not (eval_dir / "records.json").is_file():
            run_bundle(bundle, "train", **common, modality=modality, output_dir=run_dir, seed=args.seed,
                       max_epochs=args.max_epochs)
            run_bundle(bundle, "inference", **common, modality=modality, output_dir=run_dir,
                       split=args.split, predictions_dir=run_dir / "predictions")
            evaluate_predictions(run_dir / "predictions", manifest, eval_dir, split=args.split,
                                 threshold=args.threshold, n_bootstrap=args.bootstrap, seed=args.seed,
                                 overwrite=True)
        records[modality] = load_records(eval_dir)

    comparison = compare_models(records, threshold=args.threshold, n_bootstrap=args.bootstrap, seed=args.seed)
    write_json(out / "study.json", {"geometry": geometry, "manifest": str(manifest), "bundle": bundle.name,
                                    "fold": args.fold, "split": args.split, **comparison})
    roc_png = plot_roc_multi(comparison, out / "roc_modalities.png", title=f"Per-patch ROC by input ({geometry})")
    with atomic_write(out / "study.md", "w") as fh:
        fh.write(_render(comparison, geometry, manifest, bundle.name, render_comparison_table(comparison), roc_png))
    print(f"\n{render_comparison_table(comparison)}\n\ndfseg study: {out / 'study.md'}")
    return 0


def _render(comparison: dict, geometry: str, manifest: Path, bundle: str, table: str, roc_png: Path) -> str:
    dey = "\n".join(f"| {m} | {s:.1%} | {p:.1%} |" for m, (s, p) in DEY_2025.items())
    return (f"# Modality study ({geometry})\n\nBundle `{bundle}`, manifest `{manifest}`, "
            f"{comparison['n_scans']} scans of {comparison['n_subjects']} subjects.\n\n## dfseg\n\n{table}\n\n"
            f"![ROC by modality]({roc_png.name})\n\n## Dey et al. 2025 (2D radiographs, per patch)\n\n"
            f"| input | sensitivity | specificity |\n|---|---|---|\n{dey}\n\n"
            "Dey et al. used real Talbot-Lau radiographs of mouse lungs with synthetic tumours; dfseg's numbers "
            "come from simulated data, so agreement in direction, not in value, is what a comparison can show.\n")
