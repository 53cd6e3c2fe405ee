"""Anatomy and tumours: micro-structure where lung is, tensor model, SVD basis, tumour size and physics."""

from __future__ import annotations

import numpy as np
import pytest

from dfseg.errors import InputError
from dfseg.evaluation.lesions import equivalent_diameter_mm
from dfseg.physics import linear_diffusion_coefficient
from dfseg.simulate.anatomy import build_anatomy, scattering_basis, tensor_shape
from dfseg.simulate.tumours import (
    SHAPE_MODELS,
    TumourShape,
    insert_tumour,
    occupancy,
    sample_shape,
    sample_tumours,
)


@pytest.fixture(scope="module")
def anatomy32():
    return build_anatomy(32, 0.5, np.random.default_rng(3))


def test_lung_has_microstructure_and_other_tissue_none(anatomy32):
    a = anatomy32
    lung = a.lung_mask
    assert lung.sum() > 500
    # aerated micro-structure on (almost) every lung voxel; vessels are the only solid exception
    assert np.mean(a.air_fraction[lung] > 0.3) > 0.9
    assert np.all(a.radius_um[lung & (a.air_fraction > 0)] > 5)
    # bone and soft tissue carry no true dark-field
    assert np.all(a.air_fraction[a.materials["bone"] > 0.5] == 0)
    assert np.all(a.air_fraction[~a.body_mask] == 0)
    # material fractions sum to the body fraction (<= 1 without tumours)
    total = sum(a.materials.values())
    assert total.max() <= 1.0 + 1e-5 and total[a.body_mask].min() > 0.49


def test_body_leaves_air_columns(anatomy32):
    x, y, _ = anatomy32.coordinates_mm()
    r = np.sqrt(x**2 + y**2)[..., 0]
    occupied = anatomy32.body_mask.any(axis=2)
    assert r[occupied].max() <= (16 - 4 - 0.5) * 0.5


def test_tensor_mean_is_eps_and_fibres_scatter_perpendicular():
    o = np.array([0.0, 0.6, 0.8], np.float32)
    s6 = tensor_shape(o[None], np.array([0.5], np.float32))[:, 0]
    S = np.array([[s6[0], s6[3], s6[4]], [s6[3], s6[1], s6[5]], [s6[4], s6[5], s6[2]]])
    assert np.trace(S) / 3 == pytest.approx(1.0, abs=1e-6)  # mean of s^T S s over the sphere
    assert o @ S @ o == pytest.approx(0.5, abs=1e-6)  # (1 - a) along the fibre
    perp = np.array([1.0, 0.0, 0.0])
    assert perp @ S @ perp == pytest.approx(0.5 + 0.75, abs=1e-6)  # (1 - a) + 1.5 a across it


def test_scattering_basis_reproduces_eps():
    e = np.arange(15.0, 71.0)
    r = np.array([18.0, 30.0, 47.0, 30.0])
    phi = np.array([0.7, 0.75, 0.8, 0.0])
    h, c, err = scattering_basis(r, phi, e, n_basis=2)
    assert err < 1e-3
    for i in range(3):
        exact = linear_diffusion_coefficient(e, r[i], phi[i])
        np.testing.assert_allclose(c[:, i] @ h, exact, rtol=2e-3, atol=1e-6)
    assert np.all(c[:, 3] == 0)


@pytest.mark.parametrize("model", ("sphere", *SHAPE_MODELS))
@pytest.mark.parametrize("diameter", (1.0, 2.0, 3.0))
def test_equivalent_diameter_within_15_percent(model, diameter):
    a = build_anatomy(32, 0.2, np.random.default_rng(0))
    shape = TumourShape.sphere() if model == "sphere" else sample_shape(np.random.default_rng(7), model)
    insert_tumour(a, (0.03, -0.05, 0.04), diameter, shape)
    d = equivalent_diameter_mm(int((a.label > 0).sum()), a.voxel_mm)
    assert abs(d / diameter - 1) < 0.15


def test_tumour_replaces_alveoli_with_tissue(anatomy32):
    a = build_anatomy(32, 0.5, np.random.default_rng(3))
    before = a.materials["soft_tissue"] + a.materials["lung_tissue"]
    centre = np.argwhere(a.lung_mask)[len(np.argwhere(a.lung_mask)) // 2]
    c_mm = (centre - 15.5) * 0.5
    insert_tumour(a, c_mm, 2.0, sample_shape(np.random.default_rng(1), "smooth"))
    t = a.label > 0
    assert t.sum() > 10
    assert a.air_fraction[t].mean() < 0.25 * anatomy32.air_fraction[a.lung_mask].mean()
    assert a.anisotropy[t].mean() < 0.5 * anatomy32.anisotropy[a.lung_mask].mean()
    after = a.materials["soft_tissue"] + a.materials["lung_tissue"]
    assert after[t].mean() > before[t].mean() + 0.2  # solid tissue replaces air: attenuation rises
    assert a.materials["air"][t].mean() < 0.1
    assert a.tumours[0]["diameter_mm"] == 2.0


def test_sample_tumours_lie_in_lung():
    a = build_anatomy(48, 0.4, np.random.default_rng(5))
    sample_tumours(a, np.random.default_rng(6), count=3, diameter_range_mm=(0.8, 1.6))
    assert len(a.tumours) == 3
    lab = a.label > 0
    assert lab.sum() > 0
    assert np.mean(a.lung_mask[lab]) > 0.9
    for t in a.tumours:
        assert 0.8 <= t["diameter_mm"] <= 1.6


def test_occupancy_per_axis_voxels_and_outside_grid():
    shape = sample_shape(np.random.default_rng(2), "lobulated")
    box, frac = occupancy((24, 24, 24), 0.2, (0.1, -0.3, 0.2), 2.0, shape)
    box3, frac3 = occupancy((24, 24, 24), (0.2, 0.2, 0.2), (0.1, -0.3, 0.2), 2.0, shape)
    assert box3 == box and np.array_equal(frac3, frac)  # an isotropic tuple is the scalar, bit for bit
    box_z, frac_z = occupancy((24, 24, 48), (0.2, 0.2, 0.1), (0.1, -0.3, 0.2), 2.0, shape)
    assert frac_z.shape[2] > frac.shape[2] and abs(frac_z.sum() * 0.5 / frac.sum() - 1) < 0.02  # same volume
    with pytest.raises(InputError, match="outside the grid"):
        occupancy((24, 24, 24), 0.2, (50.0, 0.0, 0.0), 2.0, shape)
    box, frac = occupancy((24, 24, 24), 0.2, (50.0, 0.0, 0.0), 2.0, shape, missing_ok=True)
    assert frac.size == 0 and np.zeros((24, 24, 24))[box].shape == frac.shape
