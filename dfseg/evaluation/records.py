"""Per-scan evaluation records and the cohort metrics computed from lists of them.

:func:`score_scan` reduces one scan (probabilities, label, lung mask) to a small JSON-serialisable
record; every cohort metric is a function of a list of such records, so the subject bootstrap
(:mod:`.bootstrap`) only has to resample the list. Pooled metrics (patch AUROC, lesion sensitivity,
FROC, voxel and volume Brier and ECE) pool the items of the records they are given; per-scan metrics
(Dice, surface Dice) average over the scans that hold a tumour. A record's ``froc_complete_from`` is
optional when read (without it the record holds every FROC candidate it was scored with).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from dfseg.evaluation import lesions as les
from dfseg.evaluation import metrics as m
from dfseg.evaluation import presence

Record = dict
RecordMetric = Callable[[Sequence[Record]], float]

def score_scan(prob: np.ndarray, label: np.ndarray, lung_mask: np.ndarray, voxel_mm: Sequence[float], *,
               scan_id: str, subject_id: str, threshold: float = 0.5, patch_size: int = presence.PATCH_SIZE,
               min_patch_voxels: int = presence.MIN_TUMOUR_VOXELS, froc_floor: float = les.FROC_FLOOR,
               n_bins: int = m.N_CALIBRATION_BINS, surface_tolerance_mm: float | None = None,
               max_elongation: float | None = les.MAX_LESION_ELONGATION) -> Record:
    """Reduce one scan to its evaluation record.

    The model's output is scored as ``dfseg predict`` reports it: the probability outside the lung
    mask, and in the components above ``threshold`` that are not lesions (smaller than
    :data:`dfseg.evaluation.lesions.MIN_LESION_MM3`, or small and tubular:
    :func:`dfseg.evaluation.lesions.lesion_rule`), is taken as 0 for every metric
    (:func:`~dfseg.evaluation.lesions.lesion_probabilities`; the simulator keeps tumours inside the
    lung mask).

    Args:
        prob: (X, Y, Z) tumour probabilities in [0, 1].
        label: (X, Y, Z) 0/1 tumour label.
        lung_mask: (X, Y, Z) 0/1 lung mask.
        voxel_mm: (3,) voxel spacing in mm.
        scan_id: scan id (kept in the record).
        subject_id: subject id (the bootstrap resampling unit).
        threshold: probability threshold of the binary segmentation.
        patch_size: patch edge in voxels (:mod:`.presence`).
        min_patch_voxels: tumour voxels that make a patch positive.
        froc_floor: lowest score of a FROC candidate below ``threshold`` (:data:`.lesions.FROC_RULE`).
        n_bins: calibration bins.
        surface_tolerance_mm: surface-Dice tolerance in mm (default: the largest voxel edge).
        max_elongation: most elongated small lesion (:data:`.lesions.MAX_LESION_ELONGATION`;
            ``None`` counts every shape).

    Returns:
        A JSON-serialisable dict (keys documented in the code below).
    """
    prob = np.asarray(prob, dtype=np.float64)
    label = np.asarray(label).astype(bool)
    lung = np.asarray(lung_mask).astype(bool)
    spacing = [float(v) for v in np.broadcast_to(np.asarray(voxel_mm, float), (3,))]
    tol = float(max(spacing)) if surface_tolerance_mm is None else float(surface_tolerance_mm)
    prob = les.lesion_probabilities(prob, lung, threshold, spacing, max_elongation)
    pred = prob >= threshold

    matched = les.match_lesions(prob, label, threshold, spacing)
    lesion_scores, fp_scores, complete_from = les.froc_candidates(prob, label, threshold, floor=froc_floor)
    for lesion, score in zip(matched["lesions"], lesion_scores):
        lesion["froc_score"] = score
    patch_s, patch_y = presence.patch_scores(prob, label, lung, patch_size=patch_size,
                                             min_tumour_voxels=min_patch_voxels)
    # calibration over lung (and tumour) voxels: the air around the mouse would swamp it with easy zeros
    region = lung | label
    count, sum_p, sum_y = m.calibration_bins(prob[region], label[region], n_bins)
    return {
        "scan_id": scan_id,
        "subject_id": subject_id,
        "voxel_mm": spacing,
        "shape": list(prob.shape),
        "has_tumour": bool(label.any()),
        "volume_score": presence.volume_score(prob, lung),
        "patch_scores": patch_s.tolist(),
        "patch_labels": patch_y.astype(int).tolist(),
        "lesions": matched["lesions"],
        "components": matched["components"],
        "froc_fp_scores": fp_scores,
        "froc_complete_from": complete_from,
        "voxel": m.confusion_counts(pred, label),
        "dice": m.dice(pred, label) if label.any() else float("nan"),
        "surface_dice": m.surface_dice(pred, label, spacing, tol) if label.any() else float("nan"),
        "surface_tolerance_mm": tol,
        "calibration": {"count": count.tolist(), "sum_prob": sum_p.tolist(), "sum_target": sum_y.tolist()},
        "brier_sum": float(np.sum((prob[region] - label[region]) ** 2)),
        "n_calibration_voxels": int(region.sum()),
    }


# ---------------------------------------------------------------- pooled arrays

def volume_arrays(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """(N,) volume scores and (N,) 0/1 labels."""
    return (np.array([r["volume_score"] for r in records], float),
            np.array([r["has_tumour"] for r in records], int))


def patch_arrays(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """(M,) pooled patch scores and (M,) 0/1 labels."""
    if not records:
        return np.zeros(0), np.zeros(0, int)
    return (np.concatenate([np.asarray(r["patch_scores"], float) for r in records]),
            np.concatenate([np.asarray(r["patch_labels"], int) for r in records]))


def all_lesions(records: Sequence[Record]) -> list[dict]:
    return [lesion for r in records for lesion in r["lesions"]]


def calibration_sums(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled ``(count, sum_prob, sum_target)`` per calibration bin."""
    arrs = [np.array([r["calibration"][k] for r in records], float).sum(axis=0)
            for k in ("count", "sum_prob", "sum_target")]
    return arrs[0], arrs[1], arrs[2]


def lesion_confusion(records: Sequence[Record]) -> dict[str, int]:
    """Lesion-level counts: detected lesions (tp), missed lesions (fn), false-positive components (fp)."""
    lesions = all_lesions(records)
    comps = [c for r in records for c in r["components"]]
    return {"tp": sum(x["detected"] for x in lesions), "fn": sum(not x["detected"] for x in lesions),
            "fp": sum(not c["tp"] for c in comps), "tp_components": sum(c["tp"] for c in comps)}


def froc_of(records: Sequence[Record], threshold: float | None = None) -> dict:
    """FROC (LUNA16 operating points) over the pooled candidates of ``records``.

    The curve stops at the highest ``froc_complete_from`` of the records (a record without one holds
    every candidate it was scored with); ``threshold`` adds the curve's point at that score threshold.
    """
    scores = [x["froc_score"] for x in all_lesions(records)]
    fps = [s for r in records for s in r["froc_fp_scores"]]
    floors = [r.get("froc_complete_from") for r in records]
    complete_from = max((f for f in floors if f is not None), default=-np.inf)
    return les.froc(np.asarray(scores, float), np.asarray(fps, float), len(records),
                    complete_from=complete_from, threshold=threshold)


# ---------------------------------------------------------------- scalar metrics of record lists

def _nanmean(values: list[float]) -> float:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def volume_auroc(records): return m.auroc(*volume_arrays(records))
def volume_sens_at_95spec(records): return m.sensitivity_at_specificity(*volume_arrays(records), 0.95)
def volume_ap(records): return m.average_precision(*volume_arrays(records))
def patch_auroc(records): return m.auroc(*patch_arrays(records))
def patch_sens_at_95spec(records): return m.sensitivity_at_specificity(*patch_arrays(records), 0.95)
def patch_sens_at_dey_spec(records): return m.sensitivity_at_specificity(*patch_arrays(records), DEY_COMBINED_SPECIFICITY)
def patch_ap(records): return m.average_precision(*patch_arrays(records))


def volume_sensitivity(records, threshold=0.5): return m.sensitivity_specificity(*volume_arrays(records), threshold)[0]
def volume_specificity(records, threshold=0.5): return m.sensitivity_specificity(*volume_arrays(records), threshold)[1]
def patch_sensitivity(records, threshold=0.5): return m.sensitivity_specificity(*patch_arrays(records), threshold)[0]
def patch_specificity(records, threshold=0.5): return m.sensitivity_specificity(*patch_arrays(records), threshold)[1]


def lesion_sensitivity(records, size_bin: str | None = None) -> float:
    lesions = [x for x in all_lesions(records) if size_bin is None or x["size_bin"] == size_bin]
    return float(np.mean([x["detected"] for x in lesions])) if lesions else float("nan")


def lesion_dice(records, size_bin: str | None = None) -> float:
    return _nanmean([x["dice"] for x in all_lesions(records) if size_bin is None or x["size_bin"] == size_bin])


def lesion_precision(records) -> float:
    c = lesion_confusion(records)
    n = c["tp_components"] + c["fp"]
    return c["tp_components"] / n if n else float("nan")


def lesion_fp_per_scan(records) -> float:
    return lesion_confusion(records)["fp"] / len(records) if records else float("nan")


def froc_cpm(records) -> float: return froc_of(records)["cpm"]
def mean_dice(records) -> float: return _nanmean([r["dice"] for r in records])
def mean_surface_dice(records) -> float: return _nanmean([r["surface_dice"] for r in records])


def brier(records) -> float:
    n = sum(r["n_calibration_voxels"] for r in records)
    return sum(r["brier_sum"] for r in records) / n if n else float("nan")


def ece(records) -> float: return m.expected_calibration_error(*calibration_sums(records))


def volume_calibration(records, n_bins: int = m.N_CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(count, sum_prob, sum_target)`` per bin of the volume scores against "the volume has a tumour"."""
    return m.calibration_bins(*volume_arrays(records), n_bins)


def volume_brier(records) -> float:
    """Brier score of the per-volume presence score (label: the volume holds a tumour)."""
    return m.brier_score(*volume_arrays(records))


def volume_ece(records, n_bins: int = m.N_CALIBRATION_BINS) -> float:
    """ECE of the per-volume presence score over ``n_bins`` equal-width bins."""
    return m.expected_calibration_error(*volume_calibration(records, n_bins))


def metric_table(threshold: float = 0.5) -> dict[str, RecordMetric]:
    """Every scalar cohort metric, name -> function of a record list (the report's rows)."""
    table: dict[str, RecordMetric] = {
        "volume_auroc": volume_auroc,
        "volume_sens_at_95spec": volume_sens_at_95spec,
        "volume_sensitivity": functools.partial(volume_sensitivity, threshold=threshold),
        "volume_specificity": functools.partial(volume_specificity, threshold=threshold),
        "volume_average_precision": volume_ap,
        "patch_auroc": patch_auroc,
        "patch_sens_at_95spec": patch_sens_at_95spec,
        "patch_sens_at_dey_spec": patch_sens_at_dey_spec,
        "patch_sensitivity": functools.partial(patch_sensitivity, threshold=threshold),
        "patch_specificity": functools.partial(patch_specificity, threshold=threshold),
        "patch_average_precision": patch_ap,
        "lesion_sensitivity": lesion_sensitivity,
        "lesion_precision": lesion_precision,
        "lesion_fp_per_scan": lesion_fp_per_scan,
        "froc_cpm": froc_cpm,
        "dice": mean_dice,
        "surface_dice": mean_surface_dice,
        "lesion_dice": lesion_dice,
        "brier": brier,
        "ece": ece,
        "volume_brier": volume_brier,
        "volume_ece": volume_ece,
    }
    for name, _, _ in les.SIZE_BINS:
        table[f"lesion_sensitivity_{name}mm"] = functools.partial(lesion_sensitivity, size_bin=name)
        table[f"lesion_dice_{name}mm"] = functools.partial(lesion_dice, size_bin=name)
    return table


#: Per-patch specificity of Dey et al. 2025's combined model (0.976); ``patch_sens_at_dey_spec`` is
#: the sensitivity a model reaches at that specificity.
DEY_COMBINED_SPECIFICITY = 0.976

#: The columns of the Dey et al. comparison table (per-patch detection plus segmentation Dice).
DEY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("patch_sensitivity", "sensitivity"), ("patch_specificity", "specificity"), ("patch_auroc", "AUROC"),
    ("patch_sens_at_95spec", "sens@95spec"), ("patch_sens_at_dey_spec", "sens@97.6spec"), ("dice", "Dice"),
)
