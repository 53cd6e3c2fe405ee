"""Pointwise bootstrap bands of ROC curves, resampling subjects, and the counts a ROC legend states.

A band is computed on a fixed grid of false-positive rates: each resample (subjects drawn with
replacement, all their records taken, as :mod:`.bootstrap` does) gives a step ROC curve, read at every
grid rate as the highest true-positive rate of a threshold whose false-positive rate does not exceed it
(the rule of :func:`dfseg.evaluation.metrics.sensitivity_at_specificity`); the band is the percentile
interval of those values at each rate. Resamples that lose a class are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from dfseg.evaluation import metrics as m
from dfseg.evaluation.bootstrap import resample_subjects, subject_groups

#: False-positive rates the bands are read at: 0, 0.01, ..., 1.
FPR_GRID: np.ndarray = np.linspace(0.0, 1.0, 101)

Arrays = Callable[[Sequence[Any]], tuple[np.ndarray, np.ndarray]]


def tpr_on_grid(scores: np.ndarray, labels: np.ndarray, grid: np.ndarray = FPR_GRID) -> np.ndarray:
    """True-positive rate of the step ROC curve at each false-positive rate of ``grid``.

    Args:
        scores: (N,) scores.
        labels: (N,) 0/1 labels.
        grid: (G,) false-positive rates in [0, 1].

    Returns:
        (G,) highest TPR over thresholds whose FPR is at most the grid rate; ``nan`` when a class is absent.
    """
    grid = np.asarray(grid, float)
    fpr, tpr, _ = m.roc_curve(scores, labels)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return np.full(grid.shape, np.nan)
    # both rates grow along the curve: the last point with fpr <= g holds the highest tpr
    return tpr[np.searchsorted(fpr, grid + 1e-12, side="right") - 1]


def roc_band(records: Sequence[Any], arrays: Arrays, *, groups: Sequence[Hashable] | None = None,
             n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
             grid: np.ndarray = FPR_GRID) -> dict[str, Any]:
    """ROC curve on an FPR grid with a pointwise subject-bootstrap band of its TPR.

    Args:
        records: per-scan records (any items ``arrays`` understands).
        arrays: records -> ``(scores, labels)`` pooled over them, e.g.
            :func:`dfseg.evaluation.records.patch_arrays` or ``volume_arrays``.
        groups: subject id of each record (``None``: each record is its own subject).
        n_boot: bootstrap resamples (0: no band, bounds ``nan``).
        seed: seed of ``numpy.random.default_rng``.
        confidence: coverage of the pointwise interval, e.g. 0.95.
        grid: (G,) false-positive rates.

    Returns:
        ``{"fpr", "tpr", "tpr_low", "tpr_high", "confidence", "n_boot", "n_valid"}``: the grid, the curve
        of all records on it, the band's bounds (lists of G floats), and the resamples drawn and used.
    """
    records = list(records)
    grid = np.asarray(grid, float)
    point = tpr_on_grid(*arrays(records), grid)
    grp = subject_groups(len(records), groups)
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(n_boot if grp else 0):
        idx = resample_subjects(grp, rng)
        curve = tpr_on_grid(*arrays([records[i] for i in idx]), grid)
        if np.isfinite(curve).all():
            curves.append(curve)
    if curves:
        tail = 100.0 * (1.0 - confidence) / 2.0
        low, high = np.percentile(np.asarray(curves), [tail, 100.0 - tail], axis=0)
    else:
        low = high = np.full(grid.shape, np.nan)
    return {"fpr": grid.tolist(), "tpr": point.tolist(), "tpr_low": low.tolist(), "tpr_high": high.tolist(),
            "confidence": float(confidence), "n_boot": int(n_boot), "n_valid": len(curves)}


def roc_counts(records: Sequence[Any], arrays: Arrays, *, groups: Sequence[Hashable] | None = None,
               unit: str = "patches", n_lesions: int | None = None) -> dict[str, Any]:
    """What a ROC legend states: subjects, positive and negative items (``unit``), and lesions if given."""
    _, labels = arrays(list(records))
    labels = np.asarray(labels).astype(bool)
    counts: dict[str, Any] = {"subjects": len(set(groups)) if groups is not None else len(records),
                              "positives": int(labels.sum()), "negatives": int((~labels).sum()), "unit": unit}
    if n_lesions is not None:
        counts["lesions"] = int(n_lesions)
    return counts

