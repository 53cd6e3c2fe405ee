"""ROC bands from subject-bootstrap resamples, and the counts a ROC legend states."""

from __future__ import annotations

import numpy as np
import pytest

from dfseg.evaluation import records as rec
from dfseg.evaluation.bands import FPR_GRID, roc_band, roc_counts, tpr_on_grid


def _records(scores_by_scan, labels_by_scan):
    return [{"subject_id": f"m{i}", "patch_scores": list(s), "patch_labels": list(y), "volume_score": max(s),
             "has_tumour": bool(max(y))} for i, (s, y) in enumerate(zip(scores_by_scan, labels_by_scan))]


def test_tpr_on_grid_reads_the_step_curve():
    # positives 0.9, 0.6, 0.2; negatives 0.8, 0.4: (fpr, tpr) = (0, 0) (0, 1/3) (1/2, 1/3) (1/2, 2/3) (1, 2/3) (1, 1)
    tpr = tpr_on_grid([0.9, 0.6, 0.2, 0.8, 0.4], [1, 1, 1, 0, 0], np.array([0.0, 0.49, 0.5, 0.99, 1.0]))
    assert tpr == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0])
    assert np.isnan(tpr_on_grid([0.1, 0.2], [1, 1], FPR_GRID)).all()


def test_band_contains_the_curve_and_is_ordered():
    rng = np.random.default_rng(0)
    scans = [rng.random(40) for _ in range(12)]
    labels = [(rng.random(40) < 0.3).astype(int) for _ in range(12)]
    scores = [s + 0.5 * y for s, y in zip(scans, labels)]
    records = _records(scores, labels)
    band = roc_band(records, rec.patch_arrays, groups=[r["subject_id"] for r in records], n_boot=200, seed=1)
    low, high, tpr = (np.asarray(band[k]) for k in ("tpr_low", "tpr_high", "tpr"))
    assert band["fpr"] == pytest.approx(FPR_GRID.tolist()) and band["n_valid"] == 200
    assert np.all(low <= tpr + 1e-12) and np.all(tpr <= high + 1e-12)
    assert (high - low).max() > 0.05  # twelve subjects leave real uncertainty
    assert tpr == pytest.approx(tpr_on_grid(*rec.patch_arrays(records)))
    # the same seed gives the same band
    assert roc_band(records, rec.patch_arrays, groups=[r["subject_id"] for r in records], n_boot=200,
                    seed=1) == band


def test_perfect_separation_gives_a_degenerate_band_at_one():
    records = _records([[0.9, 0.8, 0.1], [0.7, 0.2, 0.3], [0.4, 0.05]], [[1, 1, 0], [1, 0, 0], [0, 0]])
    band = roc_band(records, rec.patch_arrays, n_boot=100, seed=0)
    assert band["tpr"] == [1.0] * FPR_GRID.size
    assert band["tpr_low"] == [1.0] * FPR_GRID.size and band["tpr_high"] == [1.0] * FPR_GRID.size
    # resamples holding only the last scan (no positive) are dropped, not counted as TPR 0 or 1
    assert band["n_valid"] < 100


def test_no_resamples_give_no_band():
    records = _records([[0.9, 0.1]], [[1, 0]])
    band = roc_band(records, rec.patch_arrays, n_boot=0)
    assert band["n_valid"] == 0 and np.isnan(band["tpr_low"]).all() and np.isnan(band["tpr_high"]).all()


def test_counts_of_subjects_positives_and_lesions():
    records = _records([[0.9, 0.8, 0.1], [0.7, 0.2, 0.3], [0.4, 0.05]], [[1, 1, 0], [1, 0, 0], [0, 0]])
    groups = ["a", "a", "b"]
    assert roc_counts(records, rec.patch_arrays, groups=groups, n_lesions=2) == {
        "subjects": 2, "positives": 3, "negatives": 5, "unit": "patches", "lesions": 2}
    assert roc_counts(records, rec.volume_arrays, unit="volumes") == {
        "subjects": 3, "positives": 2, "negatives": 1, "unit": "volumes"}
