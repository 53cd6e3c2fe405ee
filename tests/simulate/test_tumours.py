"""Tumour labels keep every tumour: partial-volume aware rasterisation and the evaluation's size bins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from dfseg.evaluation.lesions import connected_components, match_lesions
from dfseg.simulate.anatomy import Anatomy
from dfseg.simulate.tumours import (
    TumourShape,
    boundary_depth,
    insert_tumour,
    label_voxels,
    occupancy,
    sample_shape,
)


def _block(n: int, voxel_mm: float) -> Anatomy:
    """A hand-made anatomy: an n^3 grid that is all body and all aerated lung."""
    shape = (n, n, n)
    ones = np.ones(shape, np.float32)
    return Anatomy(
        voxel_mm=voxel_mm,
        materials={"air": 0.8 * ones, "lung_tissue": 0.2 * ones, "soft_tissue": np.zeros(shape, np.float32)},
        radius_um=30 * ones, air_fraction=0.8 * ones,
        orientation=np.broadcast_to(np.array([0, 0, 1], np.float32), (*shape, 3)).copy(),
        anisotropy=0.1 * ones, lung_mask=np.ones(shape, bool), body_mask=np.ones(shape, bool),
        label=np.zeros(shape, np.uint8),
    )


# an even grid: 0 mm is a voxel corner, +voxel/2 a voxel centre
_OFFSETS = ((0.0, 0.0, 0.0), (0.25, 0.0, 0.0), (0.5, 0.5, 0.5), (0.1, 0.3, 0.45),
            (0.33, 0.17, 0.08), (0.5, 0.0, 0.25), (-0.4, 0.2, 0.5), (0.5, 0.5, 0.0))


@pytest.mark.parametrize("offset", _OFFSETS)
def test_half_millimetre_sphere_label_volume_matches_the_sphere(offset):
    v, d = 0.15, 0.5
    a = _block(16, v)
    centre = tuple(v / 2 + o * v for o in offset)
    insert_tumour(a, centre, d)
    n = int(a.label.sum())
    expected = math.pi / 6 * d**3 / v**3  # 19.4 voxels
    assert n > 0 and abs(n - expected) <= 1.0
    assert a.tumours[0]["label_voxels"] == n
    assert connected_components(a.label)[1] == 1


@pytest.mark.parametrize("voxel_mm", (0.4, 0.5))
@pytest.mark.parametrize("diameter", (0.5, 0.59))
def test_small_tumour_on_a_voxel_corner_keeps_label_voxels(voxel_mm, diameter):
    a = _block(16, voxel_mm)
    _, f = occupancy(a.shape, voxel_mm, (0.0, 0.0, 0.0), diameter, TumourShape.sphere())
    assert f.max() < 0.5  # the old rule (occupancy >= 0.5) gave no label voxel at all
    insert_tumour(a, (0.0, 0.0, 0.0), diameter)
    n = int(a.label.sum())
    assert n >= 1
    assert n == max(1, math.floor(float(f.sum()) + 0.5))
    assert a.tumours[0]["label_voxels"] == n
    assert a.tumours[0]["size_bin"] == "<0.5" or a.tumours[0]["label_diameter_mm"] >= 0.5


@pytest.mark.parametrize(("diameter", "model"), ((0.5, "sphere"), (0.7, "smooth"), (0.95, "sphere"),
                                                 (1.3, "lobulated"), (2.1, "smooth"), (2.9, "sphere")))
def test_record_size_bin_is_the_evaluations_bin_of_the_written_label(diameter, model):
    v = 0.15
    a = _block(32, v)
    shape = TumourShape.sphere() if model == "sphere" else sample_shape(np.random.default_rng(11), model)
    insert_tumour(a, (0.04, -0.06, 0.05), diameter, shape)
    table = match_lesions(a.label.astype(np.float64), a.label, 0.5, v)["lesions"]
    assert len(table) == 1
    rec = a.tumours[0]
    assert rec["label_voxels"] == table[0]["n_voxels"]
    assert rec["label_diameter_mm"] == pytest.approx(table[0]["diameter_mm"], rel=1e-12)
    assert rec["size_bin"] == table[0]["size_bin"]
    assert abs(rec["label_diameter_mm"] / diameter - 1) < 0.1


@pytest.mark.parametrize(("diameter", "model", "centre"), ((2.0, "lobulated", (0.0, 0.0, 0.0)),
                                                       (0.5, "sphere", (0.075, 0.075, 0.075))))
def test_a_half_occupancy_set_of_the_right_size_is_kept_as_it_is(diameter, model, centre):
    v = 0.15
    a = _block(32, v)
    shape = TumourShape.sphere() if model == "sphere" else sample_shape(np.random.default_rng(2), model)
    box, f = occupancy(a.shape, v, centre, diameter, shape)
    half = f >= 0.5
    assert half.sum() >= math.floor(float(f.sum()) + 0.5)  # already (at least) the tumour's volume
    insert_tumour(a, centre, diameter, shape)
    expected = np.zeros(a.shape, bool)
    expected[box] = half
    assert np.array_equal(a.label > 0, expected)  # neither topped up nor shrunk
    assert a.tumours[0]["label_voxels"] == int(half.sum())


def test_label_voxels_rule_in_numbers():
    # the >= 0.5 set (one voxel) is short of round(sum f) = 3: the two next highest join, ties by index
    f = np.array([0.6, 0.3, 0.45, 0.3, 0.3, 0.3, 0.3], np.float32)  # sum 2.55
    assert label_voxels(f).tolist() == [True, True, True, False, False, False, False]
    # a set that is larger than the volume is not shrunk
    f = np.array([0.5, 0.5, 0.5, 0.0], np.float32)  # sum 1.5 -> 2 voxels, but three have f >= 0.5
    assert label_voxels(f).tolist() == [True, True, True, False]
    # any positive occupancy gives at least one voxel; none gives none
    assert label_voxels(np.array([0.01, 0.02, 0.0])).tolist() == [False, True, False]
    assert not label_voxels(np.zeros(4)).any()


def test_occupancy_outside_the_body_gets_no_label():
    a = _block(16, 0.4)
    a.body_mask[:] = False
    a.body_mask[:, :, :8] = True  # only z < 0 is body
    insert_tumour(a, (0.0, 0.0, 0.0), 0.59)
    assert a.label.sum() >= 1 and not a.label[:, :, 8:].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_depth_equals_the_whole_grid_transform(seed):
    rng = np.random.default_rng(seed)
    free = np.zeros((30, 26, 20), dtype=bool)
    free[4:25, 3:20, 0:14] = ndimage.binary_opening(rng.random((21, 17, 14)) < 0.8)  # touches z = 0
    expected = ndimage.distance_transform_edt(np.pad(free, 1))[1:-1, 1:-1, 1:-1]
    np.testing.assert_array_equal(boundary_depth(free), expected)
    assert boundary_depth(free)[free].max() > 1
    assert not boundary_depth(np.zeros((4, 4, 4), dtype=bool)).any()
