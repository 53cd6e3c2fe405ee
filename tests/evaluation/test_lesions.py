"""Lesion matching, sizes and FROC on hand-built cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dfseg.evaluation import lesions as les


def _two_lesions():
    label = np.zeros((24, 24, 24), np.uint8)
    label[2:6, 2:6, 2:6] = 1        # lesion A, hit
    label[14:18, 14:18, 14:18] = 1  # lesion B, missed
    prob = np.full(label.shape, 0.02)
    prob[3:7, 3:7, 3:7] = 0.8       # overlaps A by 27 voxels
    prob[10, 20, 2] = 0.9           # false positive, 1 voxel
    prob[20:22, 2:4, 20:22] = 0.6   # false positive, 8 voxels
    return prob, label


def test_two_lesions_one_hit_one_missed():
    prob, label = _two_lesions()
    out = les.match_lesions(prob, label, 0.5, 0.1)
    detected = [x["detected"] for x in out["lesions"]]
    assert detected == [True, False]
    assert np.mean(detected) == 0.5
    assert sum(not c["tp"] for c in out["components"]) == 2
    assert sum(c["tp"] for c in out["components"]) == 1
    # lesion A: 64 voxels, component 64 voxels, overlap 27
    assert out["lesions"][0]["dice"] == pytest.approx(2 * 27 / 128)
    assert out["lesions"][1]["dice"] == 0.0
    assert sorted(c["score"] for c in out["components"]) == pytest.approx([0.6, 0.8, 0.9])
    assert out["lesions"][0]["centroid"] == pytest.approx([3.5, 3.5, 3.5])


def test_connectivity_is_26():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # corner neighbours
    assert les.connected_components(mask)[1] == 1


def test_equivalent_diameter_and_bins():
    # 524 voxels of 0.1 mm ~ 0.524 mm^3, the volume of a 1 mm sphere
    assert les.equivalent_diameter_mm(1000, 0.1) == pytest.approx((6 / math.pi) ** (1 / 3))
    assert les.equivalent_diameter_mm(round(math.pi / 6 * 1000), 0.1) == pytest.approx(1.0, abs=1e-3)
    assert [les.size_bin(d) for d in (0.3, 0.5, 0.99, 1.0, 2.5, 3.0)] == ["<0.5", "0.5-1", "0.5-1", "1-2", "2-3", ">=3"]


def test_froc_known_candidate_list():
    # 4 lesions over 2 scans; hits scored 0.9, 0.7, 0.3, one never hit; FP scores 0.8, 0.6, 0.2, 0.1.
    # thresholds:   0.9 -> (FP/scan 0, sens 1/4); 0.8 -> (0.5, 1/4); 0.7 -> (0.5, 2/4); 0.6 -> (1, 2/4);
    #               0.3 -> (1, 3/4); 0.2 -> (1.5, 3/4); 0.1 -> (2, 3/4)
    out = les.froc([0.9, 0.7, 0.3, -np.inf], [0.8, 0.6, 0.2, 0.1], n_scans=2)
    assert out["sensitivities"] == pytest.approx([0.25, 0.25, 0.5, 0.75, 0.75, 0.75, 0.75])
    assert out["cpm"] == pytest.approx(4.0 / 7)
    # never-hit lesions may come back from JSON as None/nan
    assert les.froc([0.9, 0.7, 0.3, float("nan")], [0.8, 0.6, 0.2, 0.1], 2)["cpm"] == pytest.approx(4.0 / 7)


def test_froc_candidates_dedupe_hits():
    prob, label = _two_lesions()
    prob[2, 2, 5] = 0.95  # a second candidate on lesion A? it touches the first component -> same one
    prob[5, 5, 2] = 0.3
    lesion_scores, fp_scores = les.froc_candidates(prob, label, floor=0.1)
    assert lesion_scores[0] == pytest.approx(0.95)
    assert lesion_scores[1] == -np.inf
    assert sorted(fp_scores) == pytest.approx([0.6, 0.9])


def test_lesion_mask_drops_components_below_half_a_half_millimetre_sphere():
    from dfseg.evaluation.lesions import MIN_LESION_MM3, lesion_mask

    assert MIN_LESION_MM3 == pytest.approx(0.5 * np.pi / 6 * 0.125)
    mask = np.zeros((30, 30, 30), bool)
    mask[2:4, 2:4, 2:4] = True  # 8 voxels of 0.15 mm: 0.027 mm^3, a speck
    mask[10:13, 10:13, 10:12] = True  # 18 voxels: 0.061 mm^3, a 0.49 mm sphere's volume
    kept = lesion_mask(mask, 0.15)
    assert not kept[2:4, 2:4, 2:4].any() and kept[10:13, 10:13, 10:12].all() and kept.sum() == 18
    assert lesion_mask(mask, 0.4).sum() == 26  # at 0.4 mm every voxel is 0.064 mm^3: all kept
    assert lesion_mask(mask, (0.15, 0.15, 0.3)).sum() == 26  # anisotropic: the speck is 0.054 mm^3
