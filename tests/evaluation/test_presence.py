"""Presence scores per volume and per patch."""

from __future__ import annotations

import numpy as np
import pytest

from dfseg.evaluation import presence


def test_volume_score_is_max_inside_lung():
    prob = np.zeros((8, 8, 8))
    lung = np.zeros((8, 8, 8), bool)
    lung[2:6, 2:6, 2:6] = True
    prob[0, 0, 0] = 0.99  # outside the lung: ignored
    prob[3, 3, 3] = 0.4
    assert presence.volume_score(prob, lung) == pytest.approx(0.4)
    assert presence.volume_score(prob, np.zeros_like(lung)) == pytest.approx(0.99)


def test_patch_tiling_and_labels():
    prob = np.zeros((20, 20, 20))
    label = np.zeros((20, 20, 20), np.uint8)
    lung = np.zeros((20, 20, 20), bool)
    lung[2:14, 2:14, 2:14] = True       # bbox 12 -> patches start at 2 and 10 on each axis: 8 patches
    label[3, 3, 3] = 1                  # 1 tumour voxel in patch (2,2,2)
    label[11:13, 11:13, 11:13] = 1      # 8 tumour voxels in patch (10,10,10)
    prob[12, 12, 12] = 0.7
    scores, labels = presence.patch_scores(prob, label, lung, patch_size=8, min_tumour_voxels=1)
    assert scores.size == 8 and labels.sum() == 2
    assert scores[labels == 1].max() == pytest.approx(0.7)
    # with k = 4 the 1-voxel patch is neither positive nor negative: dropped
    scores4, labels4 = presence.patch_scores(prob, label, lung, patch_size=8, min_tumour_voxels=4)
    assert scores4.size == 7 and labels4.sum() == 1


def test_radiograph_patches_are_flat():
    prob = np.zeros((16, 16, 1))
    lung = np.ones((16, 16, 1), bool)
    scores, _ = presence.patch_scores(prob, np.zeros_like(lung), lung, patch_size=8)
    assert scores.size == 4
