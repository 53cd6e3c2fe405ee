"""Histology registration: a known rigid + smooth deformation of a label is recovered."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from testkit import KINDS, as_kind

from dfseg.errors import InputError
from dfseg.transforms.registration import (
    RegisterHistology,
    RegisterHistologyd,
    _from_sitk,
    _to_sitk,
    mean_surface_distance,
    register_histology,
)

N = 40


def _ellipsoid(n=N, axes=(13, 9, 7)):
    g = np.indices((n, n, n)).astype(float) - (n - 1) / 2
    return ((g[0] / axes[0]) ** 2 + (g[1] / axes[1]) ** 2 + (g[2] / axes[2]) ** 2 <= 1).astype(np.uint8)


def _deform(label):
    """Known rigid motion (20 deg, 5.4 voxel shift) plus a smooth sinusoidal displacement (<= 2 voxels)."""
    n = label.shape[0]
    img = _to_sitk(label, (1, 1, 1), np.uint8)
    rigid = sitk.Euler3DTransform(((n - 1) / 2,) * 3, np.deg2rad(6), np.deg2rad(-5), np.deg2rad(20), (4.0, -3.0, 2.0))
    g = np.indices((n, n, n)).astype(float)
    disp = np.stack([2.0 * np.sin(2 * np.pi * g[1] / n), 1.5 * np.sin(2 * np.pi * g[2] / n),
                     1.0 * np.cos(2 * np.pi * g[0] / n)], -1)
    field = sitk.GetImageFromArray(np.transpose(disp, (2, 1, 0, 3)).astype(np.float64), isVector=True)
    tr = sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(field)])
    return _from_sitk(sitk.Resample(img, img, tr, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))


@pytest.fixture(scope="module")
def pair():
    fixed = _ellipsoid()
    return fixed, _deform(fixed)


def test_surface_distance_known_answer():
    a = np.zeros((20, 20, 20), np.uint8)
    a[5:15, 5:15, 5:15] = 1
    b = np.roll(a, 2, axis=0)
    assert mean_surface_distance(a, a) == 0.0
    assert 0.5 < mean_surface_distance(a, b) < 2.0
    assert mean_surface_distance(a, b, spacing=0.5) == pytest.approx(0.5 * mean_surface_distance(a, b))


def test_rigid_then_bspline_recovers_deformation(pair):
    fixed, moving = pair
    before = mean_surface_distance(fixed, moving)
    result = register_histology(fixed, moving, spacing=1.0)
    after = mean_surface_distance(fixed, result.label)
    assert before > 1.5  # the deformation is real
    assert after < 1.0  # acceptance: below one voxel
    assert result.label.dtype == np.uint8 and set(np.unique(result.label)) <= {0, 1}
    assert set(result.metric) == {"rigid", "bspline"}


@pytest.mark.parametrize("kind", KINDS)
def test_dict_transform_keeps_type(pair, kind):
    fixed, moving = pair
    data = {"label": as_kind(kind, fixed[None]), "histology": as_kind(kind, moving[None]), "meta": {"voxel_mm": 1.0}}
    out = RegisterHistologyd("histology", "label", bspline=False, transform_key="histology_transform")(data)
    assert type(out["histology"]) is type(data["histology"]) and out["histology"].shape == (1, N, N, N)
    assert mean_surface_distance(fixed, np.asarray(out["histology"])[0]) < 1.0
    assert isinstance(out["histology_transform"], sitk.Transform)
    label, transform = RegisterHistology(1.0, bspline=False)(data["histology"][0], data["label"])  # no channel
    assert type(label) is type(data["histology"]) and label.shape == (N, N, N)
    assert mean_surface_distance(fixed, np.asarray(label)) < 1.0
    assert isinstance(transform, sitk.Transform)


def test_intensity_fixed_image_rigid(pair):
    """Fixed is an intensity image (tissue 1.0 in a 0.2 background, noise): MI on the smoothed label."""
    fixed, moving = pair
    rng = np.random.default_rng(0)
    image = 0.2 + 0.8 * fixed + rng.normal(0, 0.05, fixed.shape)
    result = register_histology(image, moving, bspline=False)
    assert mean_surface_distance(fixed, result.label) < 1.0


def test_bad_inputs():
    with pytest.raises(InputError, match="moving: histology label must be 0/1"):
        register_histology(np.zeros((8, 8, 8)), np.full((8, 8, 8), 3))
    with pytest.raises(InputError, match="empty"):
        register_histology(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)))
