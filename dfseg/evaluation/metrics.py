"""Scalar and curve metrics on flat arrays: ROC/AUROC, operating points, PR/AP, calibration, Dice.

All functions take numpy arrays and return plain floats or arrays; they never read files.
``scores`` are real numbers (higher = more likely positive), ``labels`` are 0/1 (any shape, flattened).
Undefined values (an AUROC with one class only, a Dice of two empty masks) are ``nan``, never an
exception, so bootstrap resamples that lose a class are simply skipped by :mod:`.bootstrap`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_roc_auc, compute_surface_dice
from monai.metrics.calibration import calibration_binning
from scipy.stats import rankdata

#: Default number of equal-width probability bins for ECE and the reliability curve.
N_CALIBRATION_BINS = 10


def _flat(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    return s, y


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties).

    Equals the probability that a random positive scores higher than a random negative (ties count
    one half), which is what MONAI's ``compute_roc_auc`` returns; this version is vectorised so the
    bootstrap can call it thousands of times.

    Args:
        scores: (N,) scores.
        labels: (N,) 0/1 labels.

    Returns:
        AUROC in [0, 1], or ``nan`` when only one class is present.
    """
    s, y = _flat(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc_monai(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC from MONAI's ``compute_roc_auc`` (reference implementation, used to cross-check :func:`auroc`)."""
    s, y = _flat(scores, labels)
    if y.all() or not y.any():
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(s), torch.as_tensor(y.astype(np.int64))))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: one point per distinct score, decision rule ``score >= threshold``.

    Returns:
        ``(fpr, tpr, thresholds)``, each (K+1,), starting at (0, 0) with threshold ``+inf``.
        Rates are ``nan`` when the class they divide by is absent.
    """
    s, y = _flat(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.array([], int)
    tps = np.cumsum(y)[last_of_value]
    fps = np.cumsum(~y)[last_of_value]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(tps.size + 1, np.nan)
        fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(fps.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last_of_value]]


def sensitivity_at_specificity(scores: np.ndarray, labels: np.ndarray, specificity: float = 0.95) -> float:
    """Highest sensitivity over all thresholds whose specificity is at least ``specificity``.

    No interpolation between ROC points: the operating point must be reachable by a threshold.
    """
    fpr, tpr, _ = roc_curve(scores, labels)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    ok = fpr <= (1.0 - specificity) + 1e-12
    return float(tpr[ok].max())


def confusion_counts(predicted: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Binary confusion counts ``{"tp", "fp", "fn", "tn"}`` of two same-shape boolean arrays."""
    p = np.asarray(predicted, dtype=bool).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(p.size - tp - fp - fn)}


def sensitivity_specificity(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """Sensitivity and specificity of the rule ``score >= threshold`` (``nan`` for an absent class)."""
    s, y = _flat(scores, labels)
    c = confusion_counts(s >= threshold, y)
    sens = c["tp"] / (c["tp"] + c["fn"]) if (c["tp"] + c["fn"]) else float("nan")
    spec = c["tn"] / (c["tn"] + c["fp"]) if (c["tn"] + c["fp"]) else float("nan")
    return float(sens), float(spec)


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve, one point per distinct score (rule ``score >= threshold``).

    Returns:
        ``(precision, recall, thresholds)``, each (K,), by decreasing threshold.
    """
    _, tpr, thr = roc_curve(scores, labels)
    s, y = _flat(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1] if s.size else np.array([], int)
    n_predicted = last_of_value + 1
    tps = np.cumsum(y[order])[last_of_value]
    precision = tps / n_predicted
    return precision.astype(float), tpr[1:], thr[1:]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` (step integral of the PR curve, no interpolation)."""
    s, y = _flat(scores, labels)
    if not y.any():
        return float("nan")
    precision, recall, _ = pr_curve(s, y)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier_score(prob: np.ndarray, target: np.ndarray) -> float:
    """Mean squared difference between probabilities and 0/1 targets."""
    p, y = _flat(prob, target)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def calibration_bins(prob: np.ndarray, target: np.ndarray, n_bins: int = N_CALIBRATION_BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin sums over ``n_bins`` equal-width probability bins (MONAI ``calibration_binning``).

    Sums rather than means are returned so bins of several scans (or of a bootstrap resample) can be
    pooled by adding them.

    Returns:
        ``(count, sum_prob, sum_target)``, each (n_bins,) float64.
    """
    p, y = _flat(prob, target)
    if p.size == 0:
        z = np.zeros(n_bins)
        return z, z.copy(), z.copy()
    mean_p, mean_y, count = calibration_binning(
        torch.as_tensor(p, dtype=torch.float64)[None, None], torch.as_tensor(y, dtype=torch.float64)[None, None],
        num_bins=n_bins)
    count = count[0, 0].double().numpy()
    sum_p = np.nan_to_num(mean_p[0, 0].double().numpy()) * count
    sum_y = np.nan_to_num(mean_y[0, 0].double().numpy()) * count
    return count, sum_p, sum_y


def expected_calibration_error(count: np.ndarray, sum_prob: np.ndarray, sum_target: np.ndarray) -> float:
    """ECE ``sum_b (n_b / N) |mean_prob_b - frac_positive_b|`` from pooled bin sums."""
    count = np.asarray(count, float)
    total = count.sum()
    if total == 0:
        return float("nan")
    return float(np.abs(np.asarray(sum_prob, float) - np.asarray(sum_target, float)).sum() / total)


def reliability_curve(count: np.ndarray, sum_prob: np.ndarray, sum_target: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean predicted probability and observed positive fraction per bin (``nan`` for empty bins)."""
    count = np.asarray(count, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(sum_prob) / count, np.asarray(sum_target) / count, count


def dice(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient ``2|A and B| / (|A| + |B|)``; ``nan`` when both masks are empty."""
    a = np.asarray(predicted, dtype=bool)
    b = np.asarray(reference, dtype=bool)
    denom = int(a.sum()) + int(b.sum())
    return float(2.0 * np.count_nonzero(a & b) / denom) if denom else float("nan")


def surface_dice(predicted: np.ndarray, reference: np.ndarray, voxel_mm: float | tuple[float, ...],
                 tolerance_mm: float) -> float:
    """Normalised surface Dice (MONAI ``compute_surface_dice``) at a boundary tolerance in mm.

    Args:
        predicted: (X, Y, Z) or (X, Y) boolean mask.
        reference: same shape boolean mask.
        voxel_mm: voxel spacing in mm (isotropic or per axis).
        tolerance_mm: boundary elements closer than this (mm) to the other boundary count as correct.

    Returns:
        NSD in [0, 1]; ``nan`` when both masks are empty, 0 when exactly one is.
    """
    a = np.asarray(predicted, dtype=bool)
    b = np.asarray(reference, dtype=bool)
    if not a.any() and not b.any():
        return float("nan")
    if not a.any() or not b.any():
        return 0.0
    spacing = [float(v) for v in np.broadcast_to(np.asarray(voxel_mm, float), (a.ndim,))]
    onehot = [torch.as_tensor(np.stack([~m, m])[None].astype(np.float32)) for m in (a, b)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nsd = compute_surface_dice(onehot[0], onehot[1], class_thresholds=[float(tolerance_mm)],
                                   include_background=False, spacing=spacing)
    return float(nsd[0, 0])
