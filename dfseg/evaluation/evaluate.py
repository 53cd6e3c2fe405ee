"""Score a folder of predicted probabilities against a manifest split: per-scan records, cohort summary.

Inputs (docs/ARCHITECTURE.md, "Predictions"): ``<predictions>/<scan_id>_prob.nii.gz`` (float32
probabilities on the scan's grid) for every scan of the chosen manifest split, and each scan's
``label`` and ``lung_mask``. An evaluation runs in three steps:

1. score: :func:`read_split` checks the manifest and that every prediction exists, then
   :func:`score_predictions` reads each scan (:func:`load_scan`) and reduces it to a record
   (:func:`.records.score_scan`);
2. summarise: :func:`summarise` computes the cohort metrics with subject-bootstrap CIs, confusion
   matrices, FROC, size bins and the reliability curve; :func:`metrics_document` adds the inputs,
   parameters and rules, and :func:`montage_panels` cuts the slices the lesion montage shows;
3. write: :mod:`dfseg.reporting.evaluation` writes ``metrics.json``, ``records.json``, the figures and
   ``report.md``; its ``evaluate_predictions`` runs the three steps.

Steps 1 and 2 read and check every input before anything is written, so a missing or mismatched
prediction leaves no partial output.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dfseg import __version__
from dfseg.channels import DF_CHANNELS
from dfseg.data.manifest import SPLITS, load_manifest, manifest_hash
from dfseg.data.scan import LoadScand, load_scan_image, scan_meta
from dfseg.data.validate import binary_problem, grid_problems, raise_first, tumour_problem, validate_manifest
from dfseg.errors import InputError
from dfseg.evaluation import bands, presence
from dfseg.evaluation import lesions as les
from dfseg.evaluation import metrics as m
from dfseg.evaluation import records as rec
from dfseg.evaluation.bootstrap import bootstrap_ci
from dfseg.io import voxel_size

CONFIDENCE = 0.95

BOOTSTRAP_RULE = ("95% percentile bootstrap intervals resampling subjects with replacement (all scans of a "
                  "drawn subject enter the resample); resamples where a metric is undefined are dropped.")
CALIBRATION_RULE = ("Voxel level: Brier score and ECE over voxels inside the lung mask (or the label). Volume "
                    "level: Brier score and ECE of the per-volume presence score against 'the volume holds a "
                    "tumour'. ECE over {n} equal-width probability bins (MONAI calibration_binning).")
ROC_BAND_RULE = ("Pointwise {pct}% percentile intervals of the TPR at each FPR of a 0.01 grid over "
                 "the subject-bootstrap resamples (TPR at an FPR = best TPR of a threshold whose FPR does not "
                 "exceed it); resamples that lose a class are dropped.")

#: The images of a scan that scoring reads: the prediction, then the scan's own label and lung mask.
SCORED_KEYS: tuple[str, ...] = ("prediction", "label", "lung_mask")
_load_scored = LoadScand(SCORED_KEYS)


def prediction_path(predictions_dir: str | os.PathLike, scan_id: str) -> Path:
    """Where the prediction of ``scan_id`` lives: ``<predictions_dir>/<scan_id>_prob.nii.gz``."""
    return Path(predictions_dir) / f"{scan_id}_prob.nii.gz"


def select_entries(manifest: Mapping, split: str) -> list[dict]:
    """Entries of one split (``training``, ``validation``, ``test``) or of all of them (``all``)."""
    if split == "all":
        return [e for s in SPLITS for e in manifest.get(s) or []]
    if split not in SPLITS:
        raise InputError("--split", f"unknown split {split!r}; use one of {', '.join(SPLITS)} or all")
    return list(manifest.get(split) or [])


def read_split(manifest_path: str | os.PathLike, split: str,
               predictions_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
    """Check the manifest, pick the entries of ``split`` and check each has a prediction.

    Only the manifest document is checked here (schema, duplicate ids, folds, subject leakage),
    which costs milliseconds; :func:`load_scan` checks the files it reads. Acquisition metadata
    (sidecars) is not read: scoring needs none.

    Returns:
        ``(manifest, entries)``: how ``metrics.json`` names the manifest (``path``, ``sha256``,
        ``name``, ``pipeline_version``) and the split's entries with absolute paths.

    Raises:
        InputError: the first problem of the manifest (with the count of the others), an empty
            split, a missing predictions folder or prediction.
    """
    if not Path(predictions_dir).is_dir():
        raise InputError(predictions_dir, "predictions folder not found")
    raise_first(validate_manifest(manifest_path, check_images=False, check_hashes=False, require_metadata=False))
    document = load_manifest(manifest_path)
    entries = select_entries(document, split)
    if not entries:
        raise InputError(manifest_path, f"split {split!r} has no entries")
    for entry in entries:  # fail fast, before minutes of scoring
        path = prediction_path(predictions_dir, entry["scan_id"])
        if not path.is_file():
            raise InputError(path, f"missing prediction for scan {entry['scan_id']}")
    manifest = {"path": str(Path(manifest_path).resolve()), "sha256": manifest_hash(manifest_path),
                "name": document.get("name"), "pipeline_version": document.get("pipeline_version")}
    return manifest, entries


def load_scan(entry: Mapping, prediction: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``(prob, label, lung_mask, voxel_mm)`` of one manifest entry and check they fit together.

    The three images are read by :class:`dfseg.data.scan.LoadScand` (NIfTI or any format
    SimpleITK reads) and must share one grid: shape, spacing, origin and direction
    (:func:`dfseg.data.validate.grid_problems`). Refuses, with an :class:`InputError` naming the
    file: a missing or unreadable image, one that is not 3-D, NaN/Inf voxels, images on different
    grids, a label or lung mask holding values other than 0 and 1, a label that contradicts the
    entry's ``has_tumour``, and probabilities outside [0, 1].

    Args:
        entry: a manifest entry with absolute ``label`` and ``lung_mask`` paths and a ``scan_id``.
        prediction: the scan's probability image (:func:`prediction_path`).

    Returns:
        ``prob`` (X, Y, Z) float32, ``label`` and ``lung_mask`` (X, Y, Z) bool, ``voxel_mm`` (3,)
        from the label's affine.
    """
    prediction = Path(prediction)
    if not prediction.is_file():
        raise InputError(prediction, f"missing prediction for scan {entry['scan_id']}")
    paths = {"prediction": prediction, "label": Path(entry["label"]), "lung_mask": Path(entry["lung_mask"])}
    scan = _load_scored({"scan_id": entry["scan_id"], **{key: str(paths[key]) for key in SCORED_KEYS}})
    affines = {key: scan[key].affine.numpy() for key in SCORED_KEYS}
    # the label is the reference grid unless it is the one image that differs from the other two
    off_grid = grid_problems({key: (tuple(scan[key].shape[1:]), affines[key])
                              for key in ("label", "lung_mask", "prediction")})
    if off_grid:
        key, problem = next(iter(off_grid.items()))
        raise InputError(paths[key], problem)
    prob, label, lung = (scan[key].as_tensor()[0].numpy() for key in SCORED_KEYS)
    for key, array in (("label", label), ("lung_mask", lung)):
        problem = binary_problem(key, array)
        if problem is not None:
            raise InputError(paths[key], problem)
    problem = tumour_problem(int(np.count_nonzero(label)), entry.get("has_tumour"))
    if problem is not None:
        raise InputError(paths["label"], f"{problem} for scan {entry['scan_id']}")
    if prob.min() < 0 or prob.max() > 1:
        raise InputError(paths["prediction"], f"probabilities outside [0, 1] (min {prob.min():.3g}, "
                                              f"max {prob.max():.3g})")
    return prob, label > 0, lung > 0, voxel_size(affines["label"])


def score_predictions(predictions_dir: str | os.PathLike, entries: Sequence[Mapping], *, threshold: float = 0.5,
                      progress: bool = False, patch_size: int = presence.PATCH_SIZE,
                      min_patch_voxels: int = presence.MIN_TUMOUR_VOXELS, froc_floor: float = les.FROC_FLOOR,
                      n_bins: int = m.N_CALIBRATION_BINS, surface_tolerance_mm: float | None = None,
                      max_elongation: float | None = les.MAX_LESION_ELONGATION) -> list[dict]:
    """The per-scan record (:func:`.records.score_scan`) of every entry, in order.

    Args:
        predictions_dir: folder of ``<scan_id>_prob.nii.gz``.
        entries: manifest entries (:func:`read_split`).
        threshold: probability threshold of the binary segmentation, in (0, 1].
        progress: show a progress bar on stderr.
        patch_size, min_patch_voxels, froc_floor, n_bins, surface_tolerance_mm, max_elongation: as in
            :func:`.records.score_scan`.
    """
    if not 0.0 < threshold <= 1.0:
        raise InputError("--threshold", f"must be in (0, 1], got {threshold}")
    records = []
    for entry in tqdm(entries, desc="scoring", unit="scan", file=sys.stderr, disable=not progress):
        prob, label, lung, spacing = load_scan(entry, prediction_path(predictions_dir, entry["scan_id"]))
        records.append(rec.score_scan(prob, label, lung, spacing, scan_id=entry["scan_id"],
                                      subject_id=entry["subject_id"], threshold=threshold, patch_size=patch_size,
                                      min_patch_voxels=min_patch_voxels, froc_floor=froc_floor, n_bins=n_bins,
                                      surface_tolerance_mm=surface_tolerance_mm, max_elongation=max_elongation))
    return records


def summarise(records: Sequence[dict], *, threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0,
              progress: bool = False) -> dict:
    """Cohort metrics (with CIs), confusion matrices, FROC, reliability curves and ROC bands from scan records.

    Returns:
        ``{"n_scans", "n_subjects", "n_lesions", "metrics", "confusion", "froc", "size_bins",
        "reliability", "volume_reliability", "roc"}``: ``reliability`` per lung voxel and
        ``volume_reliability`` per volume (``mean_prob``, ``frac_positive``, ``count`` per bin); ``roc``
        per level (``volume``, ``patch``) the curve on an FPR grid with its subject-bootstrap band
        (:func:`.bands.roc_band`), ``auroc`` and the ``counts`` a legend states (:func:`.bands.roc_counts`).
    """
    groups = [r["subject_id"] for r in records]
    table = rec.metric_table(threshold)
    items = tqdm(list(table.items()), desc="bootstrap", unit="metric", file=sys.stderr, disable=not progress)
    metrics = {name: bootstrap_ci(records, fn, groups=groups, n_boot=n_bootstrap, seed=seed, confidence=CONFIDENCE)
               for name, fn in items}
    vs, vy = rec.volume_arrays(records)
    ps, py = rec.patch_arrays(records)
    lesion_c = rec.lesion_confusion(records)
    voxel_c = {k: sum(r["voxel"][k] for r in records) for k in ("tp", "fp", "fn", "tn")}
    mean_p, frac, count = m.reliability_curve(*rec.calibration_sums(records))
    vol_p, vol_frac, vol_count = m.reliability_curve(*rec.volume_calibration(records))
    lesions = rec.all_lesions(records)
    roc = {}
    for level, arrays, unit, n_les in (("volume", rec.volume_arrays, "volumes", None),
                                       ("patch", rec.patch_arrays, "patches", len(lesions))):
        roc[level] = {**bands.roc_band(records, arrays, groups=groups, n_boot=n_bootstrap, seed=seed,
                                       confidence=CONFIDENCE),
                      "auroc": m.auroc(*arrays(records)),
                      "counts": bands.roc_counts(records, arrays, groups=groups, unit=unit, n_lesions=n_les)}
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
        "froc": dict(rec.froc_of(records, threshold)),
        "size_bins": bins,
        "reliability": {"mean_prob": mean_p.tolist(), "frac_positive": frac.tolist(), "count": count.tolist()},
        "volume_reliability": {"mean_prob": vol_p.tolist(), "frac_positive": vol_frac.tolist(),
                               "count": vol_count.tolist()},
        "roc": roc,
    }


def metrics_document(records: Sequence[dict], summary: Mapping, *, predictions_dir: str | os.PathLike,
                     manifest: Mapping, split: str, threshold: float, n_bootstrap: int, seed: int,
                     patch_size: int = presence.PATCH_SIZE, min_patch_voxels: int = presence.MIN_TUMOUR_VOXELS,
                     froc_floor: float = les.FROC_FLOOR, n_bins: int = m.N_CALIBRATION_BINS,
                     max_elongation: float | None = les.MAX_LESION_ELONGATION) -> dict:
    """The ``metrics.json`` document (figures and montage aside): inputs, parameters, rules, summary, per scan.

    Args:
        records: the per-scan records (:func:`score_predictions`).
        summary: :func:`summarise` of them.
        predictions_dir: the predictions folder.
        manifest: how the manifest is named (:func:`read_split`).
        split, threshold, n_bootstrap, seed, patch_size, min_patch_voxels, froc_floor, n_bins,
            max_elongation: the parameters the records and summary were computed with.
    """
    tolerance = sorted({r["surface_tolerance_mm"] for r in records})
    return {
        "dfseg_version": __version__,
        "created_by": "dfseg evaluate",
        "predictions": str(Path(predictions_dir).resolve()),
        "manifest": dict(manifest),
        "split": split,
        "threshold": threshold,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "confidence": CONFIDENCE,
        "parameters": {"patch_size": patch_size, "min_patch_voxels": min_patch_voxels, "froc_floor": froc_floor,
                       "n_calibration_bins": n_bins, "surface_tolerance_mm": tolerance,
                       "max_lesion_elongation": max_elongation},
        "rules": {"lesion": les.lesion_rule(max_elongation), "matching": les.MATCHING_RULE, "presence": presence.presence_rule(patch_size, min_patch_voxels),
                  "froc": les.FROC_RULE.format(floor=froc_floor, max_fp=les.FROC_MAX_FP),
                  "calibration": CALIBRATION_RULE.format(n=n_bins), "bootstrap": BOOTSTRAP_RULE,
                  "roc_bands": ROC_BAND_RULE.format(pct=round(100 * CONFIDENCE))},
        **summary,
        "per_scan": [{"scan_id": r["scan_id"], "subject_id": r["subject_id"], "has_tumour": r["has_tumour"],
                      "volume_score": r["volume_score"], "n_lesions": len(r["lesions"]),
                      "n_detected": sum(x["detected"] for x in r["lesions"]),
                      "n_false_positive_components": sum(not c["tp"] for c in r["components"]),
                      "dice": r["dice"], "surface_dice": r["surface_dice"]} for r in records],
    }


def montage_panels(records: Sequence[dict], entries: Sequence[Mapping], predictions_dir: str | os.PathLike,
                   threshold: float) -> tuple[list[dict], list[dict]]:
    """Slices through the largest and smallest detected and missed lesions (at most four lesions).

    Each lesion is shown on attenuation and on dark-field (:func:`display_images`), the same axial
    slice and crop.

    Returns:
        ``(panels, montage)``: the panels :func:`dfseg.evaluation.plots.plot_lesion_montage` draws
        (title, images by name, label and prediction slices, in-plane voxel size in mm) and what
        ``metrics.json`` records of each (scan, diameter, centroid, detected).
    """
    by_id = {e["scan_id"]: e for e in entries}
    picks: list[tuple[str, dict, dict]] = []
    for status in ("detected", "missed"):
        pool = [(r, x) for r in records for x in r["lesions"] if x["detected"] == (status == "detected")]
        if not pool:
            continue
        pool.sort(key=lambda rx: rx[1]["n_voxels"])
        chosen = [("largest", pool[-1])] + ([("smallest", pool[0])] if len(pool) > 1 else [])
        picks += [(f"{which} {status}", r, x) for which, (r, x) in chosen]
    panels, montage = [], []
    for title, r, x in picks:
        entry = by_id[r["scan_id"]]
        prob, label, _, _ = load_scan(entry, prediction_path(predictions_dir, r["scan_id"]))
        images = display_images(entry)
        cx, cy, cz = (int(round(c)) for c in x["centroid"])
        half = max(8, int(math.ceil(x["diameter_mm"] / min(r["voxel_mm"]) * 1.5)))
        sx = slice(max(cx - half, 0), cx + half + 1)
        sy = slice(max(cy - half, 0), cy + half + 1)
        panels.append({"title": f"{title}\n{r['scan_id']} d={x['diameter_mm']:.2f} mm z={cz}",
                       "images": {name: image[sx, sy, cz] for name, image in images.items()},
                       "label": label[sx, sy, cz], "pred": prob[sx, sy, cz] >= threshold,
                       "voxel_mm": r["voxel_mm"][:2]})
        montage.append({"panel": title, "scan_id": r["scan_id"], "diameter_mm": x["diameter_mm"],
                        "centroid": x["centroid"], "detected": x["detected"]})
    return panels, montage


def display_images(entry: Mapping) -> dict[str, np.ndarray]:
    """The montage's backgrounds, each (X, Y, Z), NaN/Inf allowed: ``attenuation`` and ``dark-field``.

    Dark-field is ``c0`` of a decomposed (preprocessed) scan, else the mean over the grating
    orientations (what ``c0`` estimates). An image the entry does not name, or whose file is missing,
    is left out.
    """
    images = {}
    if entry.get("attn") and Path(entry["attn"]).is_file():
        images["attenuation"] = load_scan_image(entry["attn"], "attn", allow_nonfinite=True).as_tensor()[0].numpy()
    if entry.get("df") and Path(entry["df"]).is_file():
        df = load_scan_image(entry["df"], "df", allow_nonfinite=True).as_tensor().numpy()
        sidecar = entry.get("sidecar")
        meta = scan_meta(entry) if not sidecar or Path(sidecar).is_file() else dict(entry.get("meta") or {})
        decomposed = bool(meta.get("preprocessed")) and df.shape[0] == len(DF_CHANNELS)
        images["dark-field c0" if decomposed else "dark-field"] = df[0] if decomposed else df.mean(axis=0)
    return images
