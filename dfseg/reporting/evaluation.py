"""Write the outputs of an evaluation, and :func:`evaluate_predictions`: score -> summarise -> write.

Outputs in ``out_dir`` (what ``dfseg evaluate`` and ``dfseg study`` leave):

- ``metrics.json``: every cohort metric with a 95% subject-bootstrap CI, confusion matrices, FROC
  (with its operating point at the threshold and the LUNA16 points it does not reach), voxel and
  volume reliability curves, ROC curves with subject-bootstrap bands and counts, per-scan summary,
  the rules used, the manifest hash, figure paths and the lesions of the montage (:func:`dfseg.evaluation.evaluate.metrics_document`);
- ``records.json``: the per-scan records, input of :func:`dfseg.evaluation.compare.compare_models`;
- ``report.md`` (:func:`dfseg.reporting.report.render_report`) and ``figures/*.png``.

Scoring and summarising live in :mod:`dfseg.evaluation.evaluate`; this module only writes, so
imports point one way: reporting -> evaluation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfseg.evaluation import lesions as les
from dfseg.evaluation import metrics as m
from dfseg.evaluation import plots, presence
from dfseg.evaluation import records as rec
from dfseg.evaluation.evaluate import (
    metrics_document,
    montage_panels,
    read_split,
    score_predictions,
    summarise,
)
from dfseg.io import prepare_output_dir, refuse_non_empty, write_json
from dfseg.reporting.report import write_report


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf floats become ``None`` (strict JSON has no NaN), numpy scalars Python ones."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_figures(fig_dir: Path, records: Sequence[dict], summary: Mapping, panels: list[dict],
                  threshold: float) -> dict[str, Path]:
    """ROC, PR, FROC, voxel and volume reliability, confusion and lesion-montage figures; their paths by name.

    ROC bands and counts come from ``summary["roc"]`` (:func:`dfseg.evaluation.evaluate.summarise`);
    a summary without them draws the curves alone.
    """
    curves_roc, curves_pr = {}, {}
    for level, arrays in (("volume", rec.volume_arrays(records)), ("patch", rec.patch_arrays(records))):
        scores, labels = arrays
        fpr, tpr, _ = m.roc_curve(scores, labels)
        if not (np.isnan(fpr).any() or np.isnan(tpr).any()):
            curves_roc[level] = (fpr, tpr, m.auroc(scores, labels))
        if labels.any():
            precision, recall, _ = m.pr_curve(scores, labels)
            curves_pr[level] = (recall, precision, m.average_precision(scores, labels))
    roc = summary.get("roc") or {}
    bands = {level: r for level, r in roc.items() if level in curves_roc}
    counts = {level: r["counts"] for level, r in roc.items() if level in curves_roc and r.get("counts")}

    def reliability(key: str, ece_key: str, path: Path, title: str, unit: str) -> Path:
        rel = summary[key]
        ece = summary["metrics"][ece_key]["estimate"]
        return plots.plot_reliability(np.asarray(rel["mean_prob"], float), np.asarray(rel["frac_positive"], float),
                                      np.asarray(rel["count"], float), path, ece if ece is not None else float("nan"),
                                      title, unit=unit)

    figures = {
        "roc": plots.plot_roc(curves_roc, fig_dir / "roc.png", "ROC (volume and patch presence)", bands=bands,
                              counts=counts),
        "pr": plots.plot_pr(curves_pr, fig_dir / "pr.png"),
        "froc": plots.plot_froc(summary["froc"], fig_dir / "froc.png"),
        "reliability": reliability("reliability", "ece", fig_dir / "reliability.png", "Reliability (lung voxels)",
                                   "voxels"),
    }
    if "volume_reliability" in summary:
        figures["volume_reliability"] = reliability("volume_reliability", "volume_ece",
                                                    fig_dir / "reliability_volume.png",
                                                    "Reliability (per-volume presence score)", "volumes")
    figures["confusion"] = plots.plot_confusion_matrices(summary["confusion"], fig_dir / "confusion.png")
    figures["lesion_montage"] = plots.plot_lesion_montage(panels, fig_dir / "lesions.png",
                                                          f"Lesions, threshold {threshold:g}")
    return figures


def write_evaluation(out_dir: str | os.PathLike, doc: Mapping, records: Sequence[dict], panels: list[dict],
                     montage: list[dict], *, overwrite: bool = False) -> dict:
    """Write figures, ``records.json``, ``metrics.json`` and ``report.md`` into ``out_dir``.

    Args:
        out_dir: output folder; refused if it holds files, unless ``overwrite``.
        doc: :func:`dfseg.evaluation.evaluate.metrics_document`.
        records: the per-scan records.
        panels, montage: :func:`dfseg.evaluation.evaluate.montage_panels`.
        overwrite: replace a non-empty ``out_dir``.

    Returns:
        The ``metrics.json`` document as written (figure paths relative to ``out_dir``).
    """
    out_dir = prepare_output_dir(out_dir, overwrite=overwrite)
    figures = write_figures(out_dir / "figures", records, doc, panels, doc["threshold"])
    doc = json_safe({**doc, "figures": {k: str(Path(v).relative_to(out_dir)) for k, v in figures.items()},
                     "montage": montage})
    write_json(out_dir / "records.json", json_safe({"threshold": doc["threshold"], "records": records}))
    write_json(out_dir / "metrics.json", doc)
    write_report(doc, out_dir / "report.md")
    return doc


def evaluate_predictions(predictions_dir: str | os.PathLike, manifest_path: str | os.PathLike,
                         out_dir: str | os.PathLike, *, split: str = "test", threshold: float = 0.5,
                         n_bootstrap: int = 1000, seed: int = 0, progress: bool = True, overwrite: bool = False,
                         patch_size: int = presence.PATCH_SIZE, min_patch_voxels: int = presence.MIN_TUMOUR_VOXELS,
                         froc_floor: float = les.FROC_FLOOR, n_bins: int = m.N_CALIBRATION_BINS,
                         surface_tolerance_mm: float | None = None,
                         max_elongation: float | None = les.MAX_LESION_ELONGATION) -> dict:
    """Score every scan of ``split``, bootstrap the cohort metrics, write metrics, figures and report.

    Every input is read and checked before ``out_dir`` is touched.

    Args:
        predictions_dir: folder of ``<scan_id>_prob.nii.gz``.
        manifest_path: cohort manifest (MONAI datalist JSON).
        out_dir: output folder; refused if it holds files, unless ``overwrite``.
        split: ``test``, ``validation``, ``training`` or ``all``.
        threshold: probability threshold of the binary segmentation and of the fixed-threshold metrics.
        n_bootstrap: subject-bootstrap resamples for the CIs.
        seed: bootstrap seed.
        progress: show progress bars on stderr.
        overwrite: replace a non-empty ``out_dir``.
        patch_size: patch edge in voxels for the per-patch scores.
        min_patch_voxels: tumour voxels that make a patch positive.
        froc_floor: lowest score of a FROC candidate below the threshold.
        n_bins: calibration bins.
        surface_tolerance_mm: surface-Dice tolerance in mm (default: the largest voxel edge).
        max_elongation: most elongated small lesion (:func:`dfseg.evaluation.lesions.lesion_rule`);
            ``None`` counts every shape.

    Returns:
        The ``metrics.json`` document.
    """
    refuse_non_empty(out_dir, overwrite=overwrite)
    manifest, entries = read_split(manifest_path, split, predictions_dir)
    records = score_predictions(predictions_dir, entries, threshold=threshold, progress=progress,
                                patch_size=patch_size, min_patch_voxels=min_patch_voxels, froc_floor=froc_floor,
                                n_bins=n_bins, surface_tolerance_mm=surface_tolerance_mm,
                                max_elongation=max_elongation)
    summary = summarise(records, threshold=threshold, n_bootstrap=n_bootstrap, seed=seed, progress=progress)
    doc = metrics_document(records, summary, predictions_dir=predictions_dir, manifest=manifest, split=split,
                           threshold=threshold, n_bootstrap=n_bootstrap, seed=seed, patch_size=patch_size,
                           min_patch_voxels=min_patch_voxels, froc_floor=froc_floor, n_bins=n_bins,
                           max_elongation=max_elongation)
    panels, montage = montage_panels(records, entries, predictions_dir, threshold)
    return write_evaluation(out_dir, doc, records, panels, montage, overwrite=overwrite)
