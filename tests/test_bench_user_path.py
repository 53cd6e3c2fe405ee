"""bench/user_path.py: scoring a lesion list against the simulator's label."""

from __future__ import annotations

import numpy as np
import pytest
from testkit import bench_module


@pytest.fixture(scope="module")
def user_path():
    return bench_module("user_path")


def _ball(shape, centre, radius_vox):
    idx = np.indices(shape)
    return sum((i - c) ** 2 for i, c in zip(idx, centre, strict=True)) <= radius_vox**2


def test_score_scan_counts_found_tumours_by_size_and_false_positives(user_path):
    shape, voxel = (40, 40, 40), 0.15
    big = _ball(shape, (10, 10, 10), 5)  # 11 voxels across: about 1.6 mm
    small = _ball(shape, (30, 30, 30), 2)  # 0.5-1 mm
    label = (big | small).astype(np.uint8)
    lesions = np.zeros(shape, np.uint16)
    lesions[_ball(shape, (10, 10, 11), 4)] = 1  # on the big tumour
    lesions[_ball(shape, (30, 8, 30), 1)] = 2  # on no tumour voxel
    row = user_path.score_scan(lesions, label, voxel)
    assert row["found"] == {"ge_1mm": [1, 1], "0.5_1mm": [0, 1]}
    assert row["false_positives"] == 1 and row["has_tumour"]
    expected = 2 * ((lesions > 0) & (label > 0)).sum() / ((lesions > 0).sum() + label.sum())
    assert row["dice"] == pytest.approx(expected) and 0.3 < row["dice"] < 0.9
    empty = user_path.score_scan(lesions, np.zeros(shape, np.uint8), voxel)
    assert empty["dice"] is None and empty["false_positives"] == 2 and not empty["has_tumour"]


def test_auroc_is_the_mann_whitney_statistic(user_path):
    assert user_path.auroc([True, True, False, False], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    assert user_path.auroc([True, False], [0.5, 0.5]) == pytest.approx(0.5)
    assert user_path.auroc([True, True], [0.1, 0.2]) is None
