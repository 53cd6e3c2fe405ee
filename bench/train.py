"""Training throughput of both bundles on a small synthetic cohort: prints JSON (samples/s, GPU use).

A sample is one training patch (batch_size x num_samples per iteration). Run: python bench/train.py [--size tiny|medium]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "training"))
from cohort import make_cohort  # noqa: E402

SETTINGS = {  # bundle -> network overrides (tiny keeps CPU runs short); SwinUNETR needs patches >= 64
    "tiny": {"dfseg_attention_unet": {"channels": [8, 16, 32], "strides": [2, 2], "patch_size": 32},
             "dfseg_swinunetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "patch_size": 64}},
    "medium": {"dfseg_attention_unet": {"patch_size": 32}, "dfseg_swinunetr": {"feature_size": 24, "patch_size": 64}},
}


def _gpu_util() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5).stdout
        return float(out.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def bench(bundle: str, manifest: Path, out: Path, overrides: dict, epochs: int) -> dict:
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    root = REPO / "bundles" / bundle
    loss = {}
    if importlib.util.find_spec("dfseg.losses") is None or not hasattr(__import__("dfseg.losses").losses, "SegmentationLoss"):
        loss = {"loss": "$monai.losses.DiceFocalLoss(sigmoid=True)", "deep_supervision": False}
    wf = ConfigWorkflow(config_file=str(root / "configs" / "train.yaml"), workflow_type="train",
                        meta_file=str(root / "configs" / "metadata.json"), bundle_root=str(root),
                        manifest=str(manifest), output_dir=str(out), max_epochs=epochs,
                        batch_size=2, num_samples=2, num_workers=2, val_interval=1000,
                        **({"device": "cpu"} if not torch.cuda.is_available() else {}), **overrides, **loss)
    wf.initialize()
    trainer = wf.trainer
    stamps, util = [], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))
    if torch.cuda.is_available():
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=5), lambda e: util.append(_gpu_util()))
    wf.run()
    per_iter = (stamps[-1] - stamps[1]) / max(len(stamps) - 2, 1)  # skip the first (warm-up) iteration
    return {"bundle": bundle, "patch": overrides["patch_size"], "iterations": len(stamps),
            "samples_per_s": round(4 / per_iter, 3),
            "gpu_utilisation_pct": (sum(u for u in util if u is not None) / len(util)) if util else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=list(SETTINGS), default="tiny")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_cohort(Path(tmp) / "cohort", n_subjects=8 if args.size == "tiny" else 16)
        for bundle, overrides in SETTINGS[args.size].items():
            if bundle == "dfseg_swinunetr" and importlib.util.find_spec("einops") is None:
                results.append({"bundle": bundle, "skipped": "MONAI SwinUNETR needs einops"})
                continue
            results.append(bench(bundle, manifest, Path(tmp) / bundle, overrides, args.epochs))
    print(json.dumps({"device": "cuda" if torch.cuda.is_available() else "cpu", "size": args.size,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
