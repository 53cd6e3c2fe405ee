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


def _peaks_scan(peaks: dict[tuple[int, int, int], float], lesions: list[tuple[slice, slice, slice]]):
    """A 12^3 scan of 0.4 mm voxels (one voxel is 0.064 mm^3, above the smallest lesion reported):
    probability 0 but for the given voxels, label 1 on the given boxes, lung everywhere."""
    prob = np.zeros((12, 12, 12), np.float32)
    label = np.zeros(prob.shape, np.uint8)
    for box in lesions:
        label[box] = 1
    for ijk, value in peaks.items():
        prob[ijk] = value
    return prob, label, np.ones_like(label)


def _known_answer_records():
    """Three scans, four lesions, several candidates per scan (isolated voxels, each a regional maximum).

    scan A: lesion L1 [1:4]^3 with 0.9 at one corner and 0.3 at the opposite one (two candidates on one
            lesion: the 0.3 is ignored), lesion L2 [7:9]^3 with 0.2 inside; false positives 0.8, 0.4, 0.02.
    scan B: lesion L3 [1:3]^3 with 0.6 inside; false positives 0.7, 0.1, 0.05.
    scan C: lesion L4 [1:3]^3 with nothing on it (never hit); false positives 0.95, 0.45, 0.3, 0.01.
    """
    from dfseg.evaluation.records import score_scan

    a = _peaks_scan({(1, 1, 1): 0.9, (3, 3, 3): 0.3, (8, 8, 8): 0.2, (10, 1, 1): 0.8, (1, 10, 1): 0.4,
                     (1, 1, 10): 0.02}, [np.s_[1:4, 1:4, 1:4], np.s_[7:9, 7:9, 7:9]])
    b = _peaks_scan({(1, 1, 1): 0.6, (10, 1, 1): 0.7, (1, 10, 1): 0.1, (1, 1, 10): 0.05}, [np.s_[1:3, 1:3, 1:3]])
    c = _peaks_scan({(10, 1, 1): 0.95, (1, 10, 1): 0.45, (1, 1, 10): 0.3, (10, 10, 10): 0.01}, [np.s_[1:3, 1:3, 1:3]])
    return [score_scan(*scan, 0.4, scan_id=f"s{i}", subject_id=f"m{i}", threshold=0.5)
            for i, scan in enumerate((a, b, c))]


def test_froc_known_answer_with_several_candidates_per_scan():
    from dfseg.evaluation import records as rec

    records = _known_answer_records()
    assert [x["froc_score"] for x in rec.all_lesions(records)] == pytest.approx([0.9, 0.2, 0.6, -np.inf])
    assert sorted(s for r in records for s in r["froc_fp_scores"]) == pytest.approx(
        [0.01, 0.02, 0.05, 0.1, 0.3, 0.4, 0.45, 0.7, 0.8, 0.95])
    # by decreasing threshold, (FP per scan, sensitivity) of 3 scans and 4 lesions:
    # 0.95 (1/3, 0)  0.9 (1/3, 1/4)  0.8 (2/3, 1/4)  0.7 (1, 1/4)  0.6 (1, 2/4)  0.45 (4/3, 2/4)
    # 0.4 (5/3, 2/4)  0.3 (2, 2/4)  0.2 (2, 3/4)  0.1 (7/3, 3/4)  0.05 (8/3)  0.02 (3)  0.01 (10/3, 3/4)
    froc = rec.froc_of(records, threshold=0.5)
    assert froc["curve_fp_per_scan"] == pytest.approx(np.r_[0, 1, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 10] / 3)
    assert froc["curve_sensitivity"] == pytest.approx(np.r_[0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3] / 4)
    # at 1/8 and 1/4 no threshold keeps FP that low but the empty one; 4 and 8 lie beyond the candidates' end
    # (10/3 FP per scan) with a lesion never hit: not reached, 3/4 a lower bound there
    assert froc["sensitivities"] == pytest.approx([0, 0, 0.25, 0.5, 0.75, 0.75, 0.75])
    assert froc["reached"] == [True] * 5 + [False] * 2 and froc["unreached_fp_rates"] == [4.0, 8.0]
    assert froc["cpm"] == pytest.approx(3.0 / 7) and froc["cpm_complete"] is False
    # the rule that makes them agree: at the threshold, candidates are the matching's components
    assert froc["operating_point"] == {"threshold": 0.5, "fp_per_scan": 1.0, "sensitivity": 0.5}
    assert rec.lesion_sensitivity(records) == 0.5 and rec.lesion_fp_per_scan(records) == 1.0


def test_froc_agrees_with_lesion_matching_at_the_threshold():
    """Smooth random maps: at every threshold the FROC passes through the matching's operating point."""
    from scipy import ndimage

    from dfseg.evaluation import records as rec

    rng = np.random.default_rng(3)
    for threshold in (0.5, 0.6, 0.7):
        records = []
        for i in range(3):
            prob = ndimage.gaussian_filter(rng.random((20, 20, 20)), 1.5)
            prob = ((prob - prob.min()) / (prob.max() - prob.min())).astype(np.float32)
            label = np.zeros(prob.shape, np.uint8)
            for corner in rng.integers(0, 17, size=(3, 3)):
                label[tuple(slice(c, c + 3) for c in corner)] = 1
            records.append(rec.score_scan(prob, label, np.ones_like(label), 0.4, scan_id=f"s{i}",
                                          subject_id=f"m{i}", threshold=threshold))
        op = rec.froc_of(records, threshold)["operating_point"]
        assert op["sensitivity"] == pytest.approx(rec.lesion_sensitivity(records))
        assert op["fp_per_scan"] == pytest.approx(rec.lesion_fp_per_scan(records))
        assert rec.lesion_fp_per_scan(records) > 0 and 0 < rec.lesion_sensitivity(records) < 1


def test_regional_maxima_skip_plateaus_that_touch_a_higher_voxel():
    prob = np.zeros((9, 9, 9))
    prob[1:4, 1:4, 1:4] = 0.2      # a plateau with a higher voxel on it: not a maximum
    prob[2, 2, 2] = 0.5            # ... the voxel is
    prob[6:8, 6:8, 6:8] = 0.3      # a flat top: one maximum
    labels, n = les.regional_maxima(prob, floor=0.1)
    assert n == 2
    assert labels[2, 2, 2] > 0 and labels[1, 1, 1] == 0
    assert np.count_nonzero(labels == labels[6, 6, 6]) == 8
    assert les.regional_maxima(prob, floor=0.4)[1] == 1


def test_froc_candidates_keep_the_highest_false_positives_and_say_where_the_list_is_complete():
    prob = np.zeros((12, 12, 12))
    for k, value in enumerate((0.9, 0.4, 0.3, 0.2, 0.1)):
        prob[2 * k + 1, 1, 1] = value
    label = np.zeros(prob.shape, np.uint8)
    label[9:12, 9:12, 9:12] = 1
    prob[10, 10, 10] = 0.05        # the lesion's only candidate
    lesion_scores, fps, complete_from = les.froc_candidates(prob, label, 0.5, floor=0.01, max_fp=3)
    assert lesion_scores == pytest.approx([0.05]) and fps == pytest.approx([0.9, 0.4, 0.3])
    assert complete_from == np.nextafter(0.2, 1.0)
    # the curve stops where the list stops being complete: the 0.05 hit lies below it
    out = les.froc(lesion_scores, fps, 1, complete_from=complete_from)
    assert out["curve_sensitivity"][-1] == 0.0 and out["curve_fp_per_scan"][-1] == 3.0
    assert out["unreached_fp_rates"] == [4.0, 8.0]
    assert les.froc_candidates(prob, label, 0.5, floor=0.01)[2] == 0.01


def test_records_without_a_completeness_floor_still_score():
    from dfseg.evaluation import records as rec

    records = _known_answer_records()
    for r in records:
        del r["froc_complete_from"]
    assert rec.froc_of(records)["cpm"] == pytest.approx(3.0 / 7)


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


def _ball(shape, centre, radii_vox):
    """Boolean ellipsoid with semi-axes ``radii_vox`` (voxels) along X, Y, Z at ``centre``."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii_vox)) <= 1.0


def test_component_elongation_is_itks_with_each_voxel_a_cube():
    """Oracle: SimpleITK's principal moments; each voxel adds the second moment of a cube, s**2 / 12."""
    import SimpleITK as sitk
    from scipy import ndimage

    rng = np.random.default_rng(3)
    labels, n = les.connected_components(ndimage.gaussian_filter(rng.random((40, 36, 30)), 2) > 0.53)
    spacing = 0.15
    ours = les.component_elongation(labels, n, spacing)
    image = sitk.GetImageFromArray(np.transpose(labels, (2, 1, 0)).astype(np.uint32))
    image.SetSpacing([spacing] * 3)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(image)
    checked = 0
    for i in range(1, n + 1):
        if stats.GetNumberOfPixels(i) < 20:
            continue
        moments = np.sort(stats.GetPrincipalMoments(i)) + spacing**2 / 12
        assert ours[i - 1] == pytest.approx(np.sqrt(moments[2] / moments[1]), rel=1e-6)
        checked += 1
    assert checked >= 10


def test_component_elongation_of_ellipsoids_and_lines():
    """An ellipsoid's elongation is its length over its width; a line of L voxels has variance
    (L**2 - 1) / 12 + 1 / 12 along it and 1 / 12 across, so its elongation is L."""
    shape = (60, 40, 40)
    for a, b in ((24.0, 8.0), (12.0, 12.0), (20.0, 10.0)):
        labels, n = les.connected_components(_ball(shape, (30, 20, 20), (a, b, b)))
        assert les.component_elongation(labels, n, 0.15)[0] == pytest.approx(a / b, rel=0.03)
    line = np.zeros((20, 20, 20), bool)
    line[3:13, 5, 5] = True  # 10 voxels: variance (10**2 - 1) / 12 + 1 / 12 along, 1 / 12 across
    labels, n = les.connected_components(line)
    assert les.component_elongation(labels, n, 0.15)[0] == pytest.approx(10.0)
    # anisotropic voxels: one voxel is as round as the grid resolves, not as long as the voxel
    one = np.zeros((5, 5, 5), bool)
    one[2, 2, 2] = True
    labels, n = les.connected_components(one)
    assert les.component_elongation(labels, n, (0.5, 0.5, 2.0))[0] == pytest.approx(1.0)


def test_lesion_mask_drops_small_tubes_and_keeps_nodules():
    """At 0.15 mm: a 0.45 mm wide, 2.4 mm long vessel segment (0.38 mm^3, elongation ~4.6) is not a
    lesion; a 0.6 mm nodule and a 3 x 1 x 1 mm ellipsoid (1.6 mm^3, above the 1 mm sphere's volume)
    are, whatever the latter's shape."""
    assert les.ELONGATION_CHECK_MM3 == pytest.approx(np.pi / 6)
    shape = (80, 60, 40)
    tube = np.zeros(shape, bool)
    tube[5:21, 10:13, 10:13] = True  # 16 x 3 x 3 voxels
    nodule = _ball(shape, (40, 40, 20), (2.0, 2.0, 2.0))  # 0.6 mm across
    big = _ball(shape, (50, 15, 25), (10.0, 3.4, 3.4))  # 3 x 1 x 1 mm
    mask = tube | nodule | big
    labels, n = les.connected_components(mask)
    elongation = les.component_elongation(labels, n, 0.15)
    tube_e, nodule_e, big_e = (elongation[labels[p] - 1] for p in ((12, 11, 11), (40, 40, 20), (50, 15, 25)))
    assert tube_e > 4 and nodule_e < 1.2
    assert big_e > les.MAX_LESION_ELONGATION  # kept for its size, not its shape
    kept = les.lesion_mask(mask, 0.15)
    assert not (kept & tube).any() and (kept == (nodule | big)).all()
    assert (les.lesion_mask(mask, 0.15, max_elongation=None) == mask).all()
    assert (les.lesion_mask(mask, 0.15, max_elongation=6.0) == mask).all()
    # the probabilities dfseg reports: 0 in the tube and outside the lung, the nodule's peak the presence
    prob = np.where(tube, 0.99, np.where(nodule, 0.8, 0.0))
    lung = np.ones(shape, bool)
    lung[:, :, 35:] = False
    prob[:, :, 36] = 0.7
    reported = les.lesion_probabilities(prob, lung, 0.5, 0.15)
    assert reported.max() == pytest.approx(0.8) and not reported[tube].any() and not reported[:, :, 35:].any()
    assert les.lesion_probabilities(prob, lung, 0.5, 0.15, max_elongation=None).max() == pytest.approx(0.99)


def test_max_elongation_option():
    from dfseg.errors import InputError

    assert les.check_max_elongation(0) is None and les.check_max_elongation(2.5) == 2.5
    with pytest.raises(InputError, match="--max-elongation"):
        les.check_max_elongation(0.5)
    assert "2.5 times as long as it is wide" in les.lesion_rule(2.5)
    assert "times" not in les.lesion_rule(None)


def test_score_scan_counts_no_vessel_segment_as_a_false_positive():
    from dfseg.evaluation import records as rec

    shape = (40, 30, 20)
    label = _ball(shape, (30, 20, 10), (3.0, 3.0, 3.0))
    prob = np.where(label, 0.9, 0.0)
    prob[2:18, 3:6, 3:6] = 0.97  # a vessel segment, 0.45 mm wide and 2.4 mm long
    lung = np.ones(shape, bool)
    scored = rec.score_scan(prob, label, lung, (0.15,) * 3, scan_id="s", subject_id="s")
    assert [c["tp"] for c in scored["components"]] == [True] and scored["volume_score"] == pytest.approx(0.9)
    every = rec.score_scan(prob, label, lung, (0.15,) * 3, scan_id="s", subject_id="s", max_elongation=None)
    assert sorted(c["tp"] for c in every["components"]) == [False, True]
    assert every["volume_score"] == pytest.approx(0.97)
