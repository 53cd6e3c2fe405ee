"""Subject-level k-fold cross-validation of a bundle: train, then evaluate each held-out fold and the test split.

Per fold ``k``: the bundle's ``train`` workflow with fold k held out for validation (it resumes from
``fold<k>/last.pt`` when present), then its ``evaluate`` workflow on the held-out fold
(``split=val``) and on the test split, each through ``python -m monai.bundle run`` in a subprocess
(:func:`dfseg.resources.run_bundle`). Writes ``fold<k>/`` run directories, ``cv_metrics.json`` (per
fold and pooled, :func:`pooled_metrics`) and ``test_metrics.json`` (per fold).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfseg.evaluation.metrics import auroc
from dfseg.io import read_json, write_json
from dfseg.resources import run_bundle

__all__ = ["cross_validate", "pooled_metrics"]


def pooled_metrics(per_fold: Mapping[int, Mapping[str, Any]]) -> dict:
    """AUROC of the presence scores of all held-out folds together, mean Dice and mean fold AUROC.

    Args:
        per_fold: ``eval_val.json`` of each fold (``metrics`` and per-volume ``volumes`` scores).
    """
    vols = [v for m in per_fold.values() for v in m["volumes"]]
    scores = np.array([v["score"] for v in vols], float)
    labels = np.array([v["has_tumour"] for v in vols], bool)
    dice = [m["metrics"].get("mean_dice") for m in per_fold.values()]
    return {"n_volumes": len(vols), "presence_auroc": auroc(scores, labels) if 0 < labels.sum() < len(labels) else None,
            "mean_dice": float(np.nanmean([d for d in dice if d is not None])) if dice else None,
            "fold_auroc_mean": float(np.nanmean([m["metrics"]["auroc"] for m in per_fold.values()]))}


def cross_validate(bundle: str | os.PathLike, manifest: str | os.PathLike, folds: Sequence[int], out: Path, *,
                   overrides: Mapping[str, object], max_epochs: int | None = None) -> Path:
    """Train and evaluate ``folds`` of ``manifest`` with ``bundle`` into ``out``; return ``cv_metrics.json``.

    Args:
        bundle: bundle folder.
        manifest: cohort manifest.
        folds: the validation folds to run.
        out: output folder (prepared by the caller).
        overrides: bundle settings for every run (``modality``, ``device``, ``calibration``, ...).
        max_epochs: training epochs (the bundle's default when ``None``).
    """
    has_test = bool(read_json(manifest).get("test"))
    per_fold, test = {}, {}
    for k in folds:
        run_dir = out / f"fold{k}"
        infer = {**overrides, "manifest": manifest, "fold": k, "output_dir": run_dir}
        run_bundle(bundle, "train", **infer, **({"max_epochs": max_epochs} if max_epochs else {}))
        run_bundle(bundle, "evaluate", **infer, split="val")
        per_fold[k] = read_json(run_dir / "eval_val.json")
        if has_test:
            run_bundle(bundle, "evaluate", **infer, split="test")
            test[k] = read_json(run_dir / "eval_test.json")
    write_json(out / "cv_metrics.json", {"bundle": Path(bundle).name, "manifest": str(manifest),
                                         "modality": overrides.get("modality"),
                                         "folds": {str(k): m for k, m in per_fold.items()},
                                         "pooled": pooled_metrics(per_fold)})
    write_json(out / "test_metrics.json", {"folds": {str(k): m for k, m in test.items()}})
    return out / "cv_metrics.json"
