"""Hand-computed cases for dfseg.evaluation.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from dfseg.evaluation import metrics as m


def test_auroc_known_ranking():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered -> 0.75
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert m.auroc(scores, labels) == pytest.approx(0.75)
    assert m.auroc_monai(scores, labels) == pytest.approx(0.75)


def test_auroc_ties_count_half_and_matches_monai():
    assert m.auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(200), 1)  # many ties
    labels = (rng.random(200) < scores).astype(int)
    assert m.auroc(scores, labels) == pytest.approx(m.auroc_monai(scores, labels), abs=1e-12)


def test_auroc_single_class_is_nan():
    assert np.isnan(m.auroc([0.1, 0.2], [1, 1]))


def test_sensitivity_at_95_specificity():
    # 20 negatives 0.00..0.95; specificity >= 0.95 allows one false positive (0.95), so threshold 0.93
    # keeps 3 of 4 positives (0.93, 0.97, 0.99); including 0.5 would need 10 false positives.
    neg = [i * 0.05 for i in range(20)]
    pos = [0.5, 0.93, 0.97, 0.99]
    assert m.sensitivity_at_specificity(neg + pos, [0] * 20 + [1] * 4, 0.95) == pytest.approx(0.75)
    # with 0.95 specificity demanded exactly (no false positive allowed at 0.96 spec) only 0.97, 0.99 count
    assert m.sensitivity_at_specificity(neg + pos, [0] * 20 + [1] * 4, 0.96) == pytest.approx(0.5)


def test_sensitivity_specificity_at_threshold():
    sens, spec = m.sensitivity_specificity([0.1, 0.6, 0.4, 0.7, 0.9], [0, 0, 1, 1, 1], 0.5)
    assert sens == pytest.approx(2 / 3)
    assert spec == pytest.approx(1 / 2)


def test_roc_curve_points():
    fpr, tpr, thr = m.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert thr[0] == np.inf and thr[1] == pytest.approx(0.8)


def test_average_precision_by_hand():
    # ranked: 0.8(+) 0.4(-) 0.35(+) 0.1(-): AP = 0.5 * 1 + 0.5 * 2/3
    assert m.average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.5 + 1 / 3)


def test_brier_and_ece_known_calibration():
    p = np.array([0.05, 0.05, 0.15, 0.95, 0.95, 0.95, 0.95])
    y = np.array([0, 0, 1, 1, 1, 1, 0])
    assert m.brier_score(p, y) == pytest.approx((2 * 0.05**2 + 0.85**2 + 3 * 0.05**2 + 0.95**2) / 7)
    count, sp, sy = m.calibration_bins(p, y, 10)
    np.testing.assert_allclose(count, [2, 1, 0, 0, 0, 0, 0, 0, 0, 4])
    # bins: |0.1 - 0| + |0.15 - 1| + |3.8 - 3| over 7 voxels
    assert m.expected_calibration_error(count, sp, sy) == pytest.approx(1.75 / 7, abs=1e-6)
    mean_p, frac, _ = m.reliability_curve(count, sp, sy)
    assert mean_p[9] == pytest.approx(0.95, abs=1e-6) and frac[9] == pytest.approx(0.75)
    assert np.isnan(frac[5])


def test_perfect_calibration_has_zero_ece():
    p = np.repeat([0.05, 0.25, 0.75], 20)
    y = np.r_[np.eye(20)[0], np.r_[np.ones(5), np.zeros(15)], np.r_[np.ones(15), np.zeros(5)]]
    assert m.expected_calibration_error(*m.calibration_bins(p, y, 10)) == pytest.approx(0.0, abs=1e-6)


def test_dice_and_surface_dice():
    a = np.zeros((16, 16, 16), bool)
    a[4:8, 4:8, 4:8] = True
    b = np.roll(a, 1, axis=0)
    assert m.dice(a, b) == pytest.approx(2 * 48 / 128)
    assert np.isnan(m.dice(np.zeros(3), np.zeros(3)))
    # a one-voxel shift (0.1 mm) is within a 0.1 mm tolerance, not within 0.05 mm
    assert m.surface_dice(a, b, 0.1, 0.1) == pytest.approx(1.0)
    assert m.surface_dice(a, b, 0.1, 0.05) < 0.9
    assert m.surface_dice(a, a, 0.1, 0.0) == pytest.approx(1.0)
    assert m.surface_dice(a, np.zeros_like(a), 0.1, 0.1) == 0.0


def test_confusion_counts():
    c = m.confusion_counts(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1]))
    assert c == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
