"""Per-volume calibration of the presence score: Brier, ECE and reliability bins on known answers."""

from __future__ import annotations

import numpy as np
import pytest

from dfseg.evaluation import records as rec


def _volumes(scores, tumour):
    return [{"subject_id": f"m{i}", "volume_score": s, "has_tumour": bool(y)} for i, (s, y) in enumerate(zip(scores, tumour))]


def test_brier_of_confident_scores():
    # 0.9 on a tumour, 0.1 on a clean volume: 0.01 each; 0.9 on a clean volume: 0.81
    records = _volumes([0.9, 0.1, 0.9], [1, 0, 0])
    assert rec.volume_brier(records) == pytest.approx((0.01 + 0.01 + 0.81) / 3)
    assert rec.metric_table()["volume_brier"](records) == pytest.approx(0.83 / 3)


def test_perfectly_calibrated_volumes_have_zero_ece():
    # four volumes at 0.25, one with a tumour; four at 0.75, three with a tumour
    records = _volumes([0.25] * 4 + [0.75] * 4, [1, 0, 0, 0, 1, 1, 1, 0])
    assert rec.volume_ece(records) == pytest.approx(0.0, abs=1e-7)
    count, sum_p, sum_y = rec.volume_calibration(records)
    assert count[2] == 4 and count[7] == 4 and count.sum() == 8
    assert sum_y[2] == 1 and sum_y[7] == 3


def test_ece_of_overconfident_volumes():
    # bin 0.9-1.0: two volumes at 0.95, one with a tumour -> |1.9 - 1|; bin 0.0-0.1: 0.05, clean -> 0.05
    records = _volumes([0.95, 0.95, 0.05], [1, 0, 0])
    assert rec.volume_ece(records) == pytest.approx((0.9 + 0.05) / 3, rel=1e-6)
    assert rec.metric_table()["volume_ece"](records) == pytest.approx(0.95 / 3, rel=1e-6)


def test_no_volume_gives_nan():
    assert np.isnan(rec.volume_brier([])) and np.isnan(rec.volume_ece([]))
