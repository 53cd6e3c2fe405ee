"""Benchmark: the demo's training recipe with changed bundle settings, on a finished demo run's cohort.

Usage: ``python bench/demo_recipe.py RUN OUT [KEY=JSON ...]``, e.g.
``python bench/demo_recipe.py runs/demo-20261203-225614 runs/recipe-blob blob_weight=1.0`` or
``'loss#boundary_weight=0.0'``. Trains the attention U-Net bundle on ``RUN/preprocessed`` with the
settings ``dfseg demo`` uses (fold 0, seed 0, the demo's epochs and time budget, patches, batch and
learning rate; ``max_epochs=N time_budget=0`` trains exactly N epochs, which compares across
machines and loads: the budget counts wall-clock time), plus the given settings (MONAI bundle ids, values as JSON),
predicts the test mice and scores them with ``dfseg evaluate``. Prints JSON: training seconds,
per-volume AUROC, lesion sensitivity per size bin, false-positive components per scan and Dice.
Takes about 10 minutes on 2 CPU cores; ``make bench`` leaves it out (it needs a demo run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dfseg.cli import main as dfseg_main
from dfseg.commands.demo import DEFAULT
from dfseg.io import prepare_output_dir, read_json
from dfseg.resources import bundle_dir, run_bundle


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=JSON, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished `dfseg demo` run folder (its preprocessed/ cohort)")
    parser.add_argument("out", type=Path, help="new folder for the training, predictions and evaluation")
    parser.add_argument("settings", nargs="*", type=_setting, help="bundle settings KEY=JSON")
    args = parser.parse_args()
    manifest = args.run / "preprocessed" / "manifest.json"
    if not manifest.is_file():
        parser.error(f"{manifest}: not found (RUN must be a finished `dfseg demo` run)")
    out = prepare_output_dir(args.out, overwrite=False)
    settings = dict(args.settings)
    bundle = bundle_dir("dfseg_attention_unet")
    recipe = dict(manifest=manifest, fold=0, modality="combined", max_epochs=DEFAULT.max_epochs,
                  time_budget=DEFAULT.time_budget_min,
                  val_interval=DEFAULT.val_interval, patience=10_000, patch_size=DEFAULT.patch_size,
                  batch_size=DEFAULT.batch_size, num_samples=DEFAULT.num_samples, channels=list(DEFAULT.channels),
                  learning_rate=DEFAULT.learning_rate, device="cpu", seed=DEFAULT.seed, num_workers=0, progress=False)
    recipe.update(settings)
    t = time.perf_counter()
    run_bundle(bundle, "train", output_dir=out / "train", **recipe)
    train_s = time.perf_counter() - t
    # the settings again: those that shape the network or its input must rebuild it (the others are unused there)
    inference = dict(manifest=manifest, modality="combined", split="test", channels=list(DEFAULT.channels),
                     device="cpu", output_dir=out / "train", predictions_dir=out / "predictions", num_workers=0)
    inference.update({k: v for k, v in settings.items() if k not in ("output_dir", "predictions_dir", "split")})
    run_bundle(bundle, "inference", **inference)
    code = dfseg_main(["evaluate", "--predictions", str(out / "predictions"), "--manifest", str(manifest),
                       "-o", str(out / "evaluation"), "--split", "test", "--seed", "0", "--no-progress"])
    if code:
        raise SystemExit(code)
    doc = read_json(out / "evaluation" / "metrics.json")
    m = doc["metrics"]

    def est(key: str) -> float | None:
        value = m.get(key)
        return round(value["estimate"], 4) if isinstance(value, dict) and value.get("estimate") is not None else None

    print(json.dumps({
        "run": str(args.run), "settings": settings, "train_s": round(train_s, 1),
        "volume_auroc": est("volume_auroc"), "lesion_sensitivity": est("lesion_sensitivity"),
        "size_bins": {k: f"{v['n_detected']}/{v['n_lesions']}" for k, v in doc["size_bins"].items()},
        "fp_per_scan": est("lesion_fp_per_scan"), "dice": est("dice"), "lesion_dice": est("lesion_dice"),
    }, indent=2))


if __name__ == "__main__":
    main()
