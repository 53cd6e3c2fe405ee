"""``dfseg train``: train one model with a bundle, the short form of ``python -m monai.bundle run``.

The bundle runs in a subprocess exactly as the long command would (:func:`dfseg.resources.run_bundle`),
so both keep giving the same run folder: ``model.pt`` (best validation score), ``last.pt`` (resumes),
``run_info.json``, ``tensorboard/``, and with ``--tracking mlflow`` an MLflow run as well.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from dfseg.commands import add_no_progress, add_out
from dfseg.errors import DfsegError, InputError
from dfseg.io import prepare_output_dir, read_json

HELP = "train one model with a bundle (short for python -m monai.bundle run ... train.yaml)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, type=Path, help="cohort manifest.json (preprocessed, or raw + --calibration)")
    parser.add_argument("--modality", choices=["attn", "df", "combined"], default="combined",
                        help="network input (default combined)")
    add_out(parser, "run folder", type=Path, required=True)
    parser.add_argument("--bundle", default="dfseg_attention_unet",
                        help="bundle name (dfseg_attention_unet, dfseg_swinunetr) or folder (default dfseg_attention_unet)")
    parser.add_argument("--fold", type=int, default=0, help="validation fold; -1 = the manifest's validation list (default 0)")
    parser.add_argument("--max-epochs", type=int, help="training epochs (bundle default otherwise)")
    parser.add_argument("--time-budget", type=float, metavar="MIN",
                        help="wall-clock minutes for the run: as many epochs as fit (at most --max-epochs), the "
                             "learning-rate schedule ending at the last one")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:1 (default: CUDA if present)")
    parser.add_argument("--calibration", type=Path, help="calibration.json, for raw (not preprocessed) cohorts")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="any other bundle setting, e.g. --override patch_size=32 (repeatable)")
    parser.add_argument("--tracking", choices=["tensorboard", "mlflow"], default="tensorboard",
                        help="tensorboard (default, always written) or mlflow: TensorBoard plus an MLflow run")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<out>/mlruns.db, artifacts "
                        "in <out>/mlruns; a server: http://host:5000)")
    parser.add_argument("--experiment", default="dfseg", help="MLflow experiment name (default dfseg)")
    add_no_progress(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace a non-empty run folder")
    group.add_argument("--resume", action="store_true", help="continue the run in the folder from its last.pt")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["patch_size=32", "lr=1e-3"]`` -> ``{"patch_size": "32", "lr": "1e-3"}``; values stay text
    (``monai.bundle`` parses them as its command line would)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise InputError("--override", f"expected KEY=VALUE, e.g. patch_size=32, got {item!r}")
        out[key] = value
    return out


def mlflow_settings(out: Path, uri: str | None, experiment: str) -> dict[str, str]:
    """``monai.bundle run`` arguments that switch on MONAI's MLflow tracking for the run in ``out``.

    MONAI adds its ``MLFlowHandler`` to ``train#handlers`` (training loss per iteration) and
    ``validate#handlers`` (validation metrics per epoch), disabled on DDP ranks > 0.
    """
    from importlib.util import find_spec

    if find_spec("mlflow") is None:
        raise InputError("--tracking mlflow", "needs MLflow: pip install 'dfseg[tracking]'")
    uri = uri or f"sqlite:///{out.resolve() / 'mlruns.db'}"
    if uri.startswith("file:") or "://" not in uri:
        # MONAI's MLFlowHandler (1.6) refuses MLflow's file store, which MLflow 3.13+ has retired
        raise InputError("--tracking-uri", f"{uri!r} is an MLflow file store, which MONAI and MLflow 3 refuse; "
                                           "give sqlite:///path/mlruns.db or a server's http:// URI")
    return {"tracking": "mlflow", "tracking_uri": uri, "experiment_name": experiment, "run_name": out.resolve().name}


def run(args: argparse.Namespace) -> int:
    from dfseg.data.validate import require_valid_manifest
    from dfseg.resources import bundle_dir, run_bundle
    from dfseg.training import cohort_value

    bundle = bundle_dir(args.bundle)
    if not (bundle / "configs" / "train.yaml").is_file():
        raise InputError(args.bundle, "not a bundle (no configs/train.yaml)")
    if args.max_epochs is not None and args.max_epochs < 1:
        raise InputError("--max-epochs", f"must be at least 1, got {args.max_epochs}")
    if args.time_budget is not None and args.time_budget <= 0:
        raise InputError("--time-budget", f"must be > 0 minutes, got {args.time_budget}")
    if args.calibration is not None and not args.calibration.is_file():
        raise InputError(args.calibration, "calibration file not found")
    overrides = parse_overrides(args.override)
    manifest = args.manifest.resolve()
    if not manifest.is_file():
        raise InputError(args.manifest, "manifest not found")
    print(f"dfseg train: checking {manifest} ...", flush=True)
    require_valid_manifest(manifest, check_projections=False, check_hashes=False)
    geometry = str(cohort_value(manifest, "geometry", "ct", mixed="training needs one geometry"))
    settings: dict[str, object] = {"spatial_dims": 2} if geometry == "radiograph" else {}
    settings.update(overrides)
    tracking = mlflow_settings(args.out, args.tracking_uri, args.experiment) if args.tracking == "mlflow" else {}
    out = prepare_output_dir(args.out, overwrite=args.overwrite, resume=args.resume).resolve()

    print(f"dfseg train: {bundle.name}, {args.modality} input, fold {args.fold}, {geometry} cohort -> {out}", flush=True)
    params: dict[str, object] = {"manifest": manifest, "modality": args.modality, "fold": args.fold, "output_dir": out,
                                 "seed": args.seed, "max_epochs": args.max_epochs, "device": args.device,
                                 "calibration": args.calibration.resolve() if args.calibration else None,
                                 "progress": not args.no_progress}
    if args.time_budget is not None:
        params["time_budget"] = args.time_budget
    params.update(settings)
    try:
        run_bundle(bundle, "train", **params, **tracking)
    except DfsegError as err:
        if (out / "last.pt").is_file():
            raise DfsegError(err.where, f"{err.problem}; {out} keeps the last checkpoint: rerun with --resume") from None
        if not args.resume:  # nothing worth keeping: leave no half-made run folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise

    info = read_json(out / "run_info.json") if (out / "run_info.json").is_file() else {}
    epochs = info.get("completed_epochs", "?")
    print(f"dfseg train: {epochs} epoch(s) done; best model {out / 'model.pt'}, resume point {out / 'last.pt'}")
    print(f"dfseg train: TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    if tracking:
        print(f"dfseg train: MLflow: experiment {args.experiment!r}, run {tracking['run_name']!r} at {tracking['tracking_uri']}")
    return 0
