"""Evaluate a folder of predicted probabilities against a manifest: metrics, CIs, figures, report.

Inputs (docs/ARCHITECTURE.md, "Predictions"): ``<predictions>/<scan_id>_prob.nii.gz`` (float32
probabilities on the scan's grid) for every scan of the chosen manifest split. Outputs in ``out_dir``:

- ``metrics.json``: every cohort metric with a 95% subject-bootstrap CI, confusion matrices, FROC,
  reliability curve, per-scan summary, the rules used, the manifest hash, figure paths;
- ``records.json``: the per-scan records (:mod:`.records`), input of :func:`.compare.compare_models`;
- ``report.md`` (:mod:`dfseg.reporting.report`) and ``figures/*.png``.

Every input is read and checked before anything is written, so a missing or mismatched prediction
leaves no partial output.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfseg import __version__
from dfseg.errors import InputError, OutputExistsError
from dfseg.evaluation import lesions as les
from dfseg.evaluation import metrics as m
from dfseg.evaluation import plots, presence
from dfseg.evaluation import records as rec
from dfseg.evaluation.bootstrap import bootstrap_ci
from dfseg.io import load_nifti, prepare_output_dir, voxel_size, write_json

SPLITS = ("training", "validation", "test")
CONFIDENCE = 0.95

BOOTSTRAP_RULE = ("95% percentile bootstrap intervals resampling subjects with replacement (all scans of a "
                  "drawn subject enter the resample); resamples where a metric is undefined are dropped.")
CALIBRATION_RULE = ("Brier score and ECE over voxels inside the lung mask (or the label), {n} equal-width "
                    "probability bins (MONAI calibration_binning).")
FROC_RULE = ("FROC candidates: 26-connected components of probability >= {floor}, scored by their maximum; "
             "LUNA16 operating points 1/8..8 FP/scan, CPM = mean sensitivity there; several candidates on "
             "one lesion count once, the others are ignored.")


def prediction_path(predictions_dir: str | os.PathLike, scan_id: str) -> Path:
    """Where the prediction of ``scan_id`` lives: ``<predictions_dir>/<scan_id>_prob.nii.gz``."""
    return Path(predictions_dir) / f"{scan_id}_prob.nii.gz"


def select_entries(manifest: dict, split: str) -> list[dict]:
    """Entries of one split (``training``, ``validation``, ``test``) or of all of them (``all``)."""
    if split == "all":
        return [e for s in SPLITS for e in manifest.get(s) or []]
    if split not in SPLITS:
        raise InputError("--split", f"unknown split {split!r}; use one of {', '.join(SPLITS)} or all")
    return list(manifest.get(split) or [])


def _check_manifest(path: str | os.PathLike) -> None:
    """Refuse a manifest with structural problems (schema, duplicate ids, folds, subject leakage).

    Only the document is checked (no image is opened here: :func:`load_scan` checks the files it
    reads), so this costs milliseconds. Acquisition metadata (an entry's ``meta``, or having no
    sidecar and no ``meta``) is not needed to score predictions and is not required.

    Raises:
        InputError: the first problem, with the count of the others.
    """
    import re

    from dfseg.data.validate import validate_manifest

    about_metadata = re.compile(r":(training|validation|test)\[\d+\](\.meta(:.*)?)?$")
    prefix = len(str(path))
    problems = [p for p in validate_manifest(path, check_images=False, check_hashes=False)
                if not (p.where.startswith(str(path)) and about_metadata.fullmatch(p.where[prefix:]))]
    if problems:
        more = f" (and {len(problems) - 1} more; run dfseg validate-manifest)" if len(problems) > 1 else ""
        raise InputError(problems[0].where, problems[0].message + more)


def _read_manifest(path: str | os.PathLike) -> tuple[dict, str]:
    from dfseg.data.manifest import load_manifest, manifest_hash

    return load_manifest(path), manifest_hash(path)


#: Absolute tolerance when comparing affines (spacing and origin), in mm.
AFFINE_ATOL_MM = 1e-4


def _fmt_mm(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ") mm"


def _check_grids(grids: dict[str, tuple[Path, np.ndarray]]) -> None:
    """Refuse images whose spacing or affine differ; name the odd one out.

    Args:
        grids: ``{"prediction" | "label" | "lung_mask": (path, 4x4 affine)}`` (shapes already agree).

    Raises:
        InputError: naming the file that disagrees with the other two (the prediction when all
            three differ) and both spacings, or the affine (origin/direction) difference.
    """
    names = list(grids)

    def same_spacing(a: str, b: str) -> bool:
        return bool(np.allclose(voxel_size(grids[a][1]), voxel_size(grids[b][1]), atol=AFFINE_ATOL_MM))

    def same_affine(a: str, b: str) -> bool:
        return bool(np.allclose(grids[a][1], grids[b][1], atol=AFFINE_ATOL_MM))

    for same, what in ((same_spacing, "spacing"), (same_affine, "affine")):
        if all(same(names[0], n) for n in names[1:]):
            continue
        # the odd one out: the image that disagrees with both others, while those two agree
        odd, ref = names[0], names[1]
        for n in names:
            others = [o for o in names if o != n]
            if len(others) == 2 and same(*others) and not same(n, others[0]):
                odd, ref = n, others[0]
                break
        path, affine = grids[odd]
        ref_path, ref_affine = grids[ref]
        if what == "spacing":
            raise InputError(path, f"voxel spacing {_fmt_mm(voxel_size(affine))} differs from {ref} "
                                   f"{ref_path.name} {_fmt_mm(voxel_size(ref_affine))}")
        raise InputError(path, f"affine (origin {_fmt_mm(affine[:3, 3])}) differs from {ref} {ref_path.name} "
                               f"(origin {_fmt_mm(ref_affine[:3, 3])}): not on the same grid")


def load_scan(entry: dict, predictions_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load ``(prob, label, lung_mask, voxel_mm)`` of one manifest entry and check they fit together.

    Refuses (:class:`InputError` naming the file): a missing/unreadable image, shapes, spacings or
    affines that differ between prediction, label and lung mask, a label or lung mask holding
    values other than 0 and 1, an empty label on an entry with ``has_tumour`` true, and
    probabilities outside [0, 1].
    """
    pred_path = prediction_path(predictions_dir, entry["scan_id"])
    if not pred_path.is_file():
        raise InputError(pred_path, f"missing prediction for scan {entry['scan_id']}")
    label_path, lung_path = Path(entry["label"]), Path(entry["lung_mask"])
    prob, pred_affine = load_nifti(pred_path)
    label, label_affine = load_nifti(label_path)
    lung, lung_affine = load_nifti(lung_path)
    if prob.ndim == 4 and prob.shape[-1] == 1:
        prob = prob[..., 0]
    if prob.shape != label.shape:
        raise InputError(pred_path, f"shape {prob.shape} does not match label {entry['label']} {label.shape}")
    if lung.shape != label.shape:
        raise InputError(lung_path, f"shape {lung.shape} does not match label {label.shape}")
    _check_grids({"prediction": (pred_path, pred_affine), "label": (label_path, label_affine),
                  "lung_mask": (lung_path, lung_affine)})
    for path, array, key in ((label_path, label, "label"), (lung_path, lung, "lung_mask")):
        values = np.unique(array)
        if not np.isin(values, (0, 1)).all():
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
            raise InputError(path, f"{key} must hold only 0 and 1 (binary), found values {shown}")
    if entry.get("has_tumour") is True and not label.any():
        raise InputError(label_path, f"label is empty but has_tumour is true for scan {entry['scan_id']}")
    if prob.min() < 0 or prob.max() > 1:
        raise InputError(pred_path, f"probabilities outside [0, 1] (min {prob.min():.3g}, max {prob.max():.3g})")
    return prob.astype(np.float32), label > 0, lung > 0, voxel_size(label_affine)


def _finite(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf floats become ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def summarise(records: Sequence[dict], *, threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0,
              progress: bool = False) -> dict:
    """Cohort metrics (with CIs), confusion matrices, FROC and reliability curve from scan records."""
    groups = [r["subject_id"] for r in records]
    table = rec.metric_table(threshold)
    items = table.items()
    if progress:
        from tqdm import tqdm

        items = tqdm(list(items), desc="bootstrap", unit="metric", file=sys.stderr)
    metrics = {name: bootstrap_ci(records, fn, groups=groups, n_boot=n_bootstrap, seed=seed, confidence=CONFIDENCE)
               for name, fn in items}
    vs, vy = rec.volume_arrays(records)
    ps, py = rec.patch_arrays(records)
    lesion_c = rec.lesion_confusion(records)
    voxel_c = {k: sum(r["voxel"][k] for r in records) for k in ("tp", "fp", "fn", "tn")}
    mean_p, frac, count = m.reliability_curve(*rec.calibration_sums(records))
    lesions = rec.all_lesions(records)
    bins = {}
    for name in [b[0] for b in les.SIZE_BINS] + ["<0.5", ">=3"]:
        in_bin = [x for x in lesions if x["size_bin"] == name]
        if in_bin or name in {b[0] for b in les.SIZE_BINS}:
            bins[name] = {"n_lesions": len(in_bin), "n_detected": sum(x["detected"] for x in in_bin)}
    return {
        "n_scans": len(records),
        "n_subjects": len(set(groups)),
        "n_lesions": len(lesions),
        "metrics": metrics,
        "confusion": {
            "volume": m.confusion_counts(vs >= threshold, vy),
            "patch": m.confusion_counts(ps >= threshold, py),
            "lesion": {"tp": lesion_c["tp"], "fp": lesion_c["fp"], "fn": lesion_c["fn"], "tn": None},
            "voxel": voxel_c,
        },
        "froc": {k: v for k, v in rec.froc_of(records).items()},
        "size_bins": bins,
        "reliability": {"mean_prob": mean_p.tolist(), "frac_positive": frac.tolist(), "count": count.tolist()},
    }


def _montage_panels(records: Sequence[dict], entries: dict[str, dict], predictions_dir: Path,
                    threshold: float) -> tuple[list[dict], list[dict]]:
    """Slices through the largest and smallest detected and missed lesions (at most four panels)."""
    picks: list[tuple[str, dict, dict]] = []
    for status in ("detected", "missed"):
        pool = [(r, x) for r in records for x in r["lesions"] if x["detected"] == (status == "detected")]
        if not pool:
            continue
        pool.sort(key=lambda rx: rx[1]["n_voxels"])
        chosen = [("largest", pool[-1])] + ([("smallest", pool[0])] if len(pool) > 1 else [])
        picks += [(f"{which} {status}", r, x) for which, (r, x) in chosen]
    panels, meta = [], []
    for title, r, x in picks:
        entry = entries[r["scan_id"]]
        prob, label, _, _ = load_scan(entry, predictions_dir)
        image = _display_image(entry)
        cx, cy, cz = (int(round(c)) for c in x["centroid"])
        half = max(8, int(math.ceil(x["diameter_mm"] / min(r["voxel_mm"]) * 1.5)))
        sx = slice(max(cx - half, 0), cx + half + 1)
        sy = slice(max(cy - half, 0), cy + half + 1)
        panels.append({"title": f"{title}\n{r['scan_id']} d={x['diameter_mm']:.2f} mm z={cz}",
                       "image": image[sx, sy, cz], "label": label[sx, sy, cz],
                       "pred": prob[sx, sy, cz] >= threshold})
        meta.append({"panel": title, "scan_id": r["scan_id"], "diameter_mm": x["diameter_mm"],
                     "centroid": x["centroid"], "detected": x["detected"]})
    return panels, meta


def _display_image(entry: dict) -> np.ndarray:
    """Background image of the montage: ``attn``, else the isotropic dark-field mean (c0) of ``df``."""
    if entry.get("attn") and Path(entry["attn"]).is_file():
        image, _ = load_nifti(entry["attn"], allow_nonfinite=True)
    else:
        image, _ = load_nifti(entry["df"], allow_nonfinite=True)
    return image.mean(axis=-1) if image.ndim == 4 else image


def evaluate_predictions(predictions_dir: str | os.PathLike, manifest_path: str | os.PathLike,
                         out_dir: str | os.PathLike, *, split: str = "test", threshold: float = 0.5,
                         n_bootstrap: int = 1000, seed: int = 0, progress: bool = True, overwrite: bool = False,
                         patch_size: int = presence.PATCH_SIZE, min_patch_voxels: int = presence.MIN_TUMOUR_VOXELS,
                         froc_floor: float = rec.FROC_FLOOR, n_bins: int = m.N_CALIBRATION_BINS,
                         surface_tolerance_mm: float | None = None) -> dict:
    """Score every scan of ``split``, bootstrap the cohort metrics, write metrics, figures and report.

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
        froc_floor: lowest candidate probability for FROC.
        n_bins: calibration bins.
        surface_tolerance_mm: surface-Dice tolerance in mm (default: the largest voxel edge).

    Returns:
        The ``metrics.json`` document.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(out_dir, "directory is not empty; pass --overwrite to replace it")
    if not 0.0 < threshold <= 1.0:
        raise InputError("--threshold", f"must be in (0, 1], got {threshold}")
    if not Path(predictions_dir).is_dir():
        raise InputError(predictions_dir, "predictions folder not found")
    _check_manifest(manifest_path)
    manifest, manifest_sha = _read_manifest(manifest_path)
    entries = select_entries(manifest, split)
    if not entries:
        raise InputError(manifest_path, f"split {split!r} has no entries")
    for entry in entries:  # fail fast, before minutes of scoring
        p = prediction_path(predictions_dir, entry["scan_id"])
        if not p.is_file():
            raise InputError(p, f"missing prediction for scan {entry['scan_id']}")

    iterator = entries
    if progress:
        from tqdm import tqdm

        iterator = tqdm(entries, desc="scoring", unit="scan", file=sys.stderr)
    records = []
    for entry in iterator:
        prob, label, lung, spacing = load_scan(entry, predictions_dir)
        records.append(rec.score_scan(prob, label, lung, spacing, scan_id=entry["scan_id"],
                                      subject_id=entry["subject_id"], threshold=threshold, patch_size=patch_size,
                                      min_patch_voxels=min_patch_voxels, froc_floor=froc_floor, n_bins=n_bins,
                                      surface_tolerance_mm=surface_tolerance_mm))
    summary = summarise(records, threshold=threshold, n_bootstrap=n_bootstrap, seed=seed, progress=progress)
    tolerance = sorted({r["surface_tolerance_mm"] for r in records})
    doc = {
        "dfseg_version": __version__,
        "created_by": "dfseg evaluate",
        "predictions": str(Path(predictions_dir).resolve()),
        "manifest": {"path": str(Path(manifest_path).resolve()), "sha256": manifest_sha,
                     "name": manifest.get("name"), "pipeline_version": manifest.get("pipeline_version")},
        "split": split,
        "threshold": threshold,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "confidence": CONFIDENCE,
        "parameters": {"patch_size": patch_size, "min_patch_voxels": min_patch_voxels, "froc_floor": froc_floor,
                       "n_calibration_bins": n_bins, "surface_tolerance_mm": tolerance},
        "rules": {"matching": les.MATCHING_RULE, "presence": presence.presence_rule(patch_size, min_patch_voxels),
                  "froc": FROC_RULE.format(floor=froc_floor), "calibration": CALIBRATION_RULE.format(n=n_bins),
                  "bootstrap": BOOTSTRAP_RULE},
        **summary,
        "per_scan": [{"scan_id": r["scan_id"], "subject_id": r["subject_id"], "has_tumour": r["has_tumour"],
                      "volume_score": r["volume_score"], "n_lesions": len(r["lesions"]),
                      "n_detected": sum(x["detected"] for x in r["lesions"]),
                      "n_false_positive_components": sum(not c["tp"] for c in r["components"]),
                      "dice": r["dice"], "surface_dice": r["surface_dice"]} for r in records],
    }

    panels, montage = _montage_panels(records, {e["scan_id"]: e for e in entries}, Path(predictions_dir), threshold)
    out_dir = prepare_output_dir(out_dir, overwrite=overwrite)
    doc["figures"] = _write_figures(out_dir / "figures", records, summary, panels, threshold)
    doc["figures"] = {k: str(Path(v).relative_to(out_dir)) for k, v in doc["figures"].items()}
    doc["montage"] = montage
    doc = _finite(doc)
    write_json(out_dir / "records.json", _finite({"threshold": threshold, "records": records}))
    write_json(out_dir / "metrics.json", doc)
    from dfseg.reporting.report import write_report

    write_report(doc, out_dir / "report.md")
    return doc


def _write_figures(fig_dir: Path, records: Sequence[dict], summary: dict, panels: list[dict],
                   threshold: float) -> dict[str, Path]:
    curves_roc, curves_pr = {}, {}
    for level, arrays in (("volume", rec.volume_arrays(records)), ("patch", rec.patch_arrays(records))):
        scores, labels = arrays
        fpr, tpr, _ = m.roc_curve(scores, labels)
        if not (np.isnan(fpr).any() or np.isnan(tpr).any()):
            curves_roc[level] = (fpr, tpr, m.auroc(scores, labels))
        if labels.any():
            precision, recall, _ = m.pr_curve(scores, labels)
            curves_pr[level] = (recall, precision, m.average_precision(scores, labels))
    rel = summary["reliability"]
    ece = summary["metrics"]["ece"]["estimate"]
    return {
        "roc": plots.plot_roc(curves_roc, fig_dir / "roc.png", "ROC (volume and patch presence)"),
        "pr": plots.plot_pr(curves_pr, fig_dir / "pr.png"),
        "froc": plots.plot_froc(summary["froc"], fig_dir / "froc.png"),
        "reliability": plots.plot_reliability(np.asarray(rel["mean_prob"], float), np.asarray(rel["frac_positive"], float),
                                              np.asarray(rel["count"], float), fig_dir / "reliability.png",
                                              ece if ece is not None else float("nan")),
        "confusion": plots.plot_confusion_matrices(summary["confusion"], fig_dir / "confusion.png"),
        "lesion_montage": plots.plot_lesion_montage(panels, fig_dir / "lesions.png",
                                                    f"Lesions, threshold {threshold:g}"),
    }
