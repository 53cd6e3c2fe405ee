"""Acquisition: forward model fast path, tumour contrast, beam hardening on bone, fibre orientation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage, stats

from dfseg.simulate.acquisition import AcquisitionConfig, acquire_ct, acquire_radiograph
from dfseg.simulate.anatomy import build_anatomy
from dfseg.simulate.tumours import TumourShape, insert_tumour
from dfseg.tomo import project, projection_angles

ORIENT = np.deg2rad([0.0, 45.0, 90.0, 135.0])


def _fit_theta_deg(y: np.ndarray, w: np.ndarray = ORIENT) -> tuple[float, float]:
    """Least-squares fit y = c0 + a cos 2w + b sin 2w; returns (theta in [0, 180) deg, |c2|)."""
    design = np.stack([np.ones_like(w), np.cos(2 * w), np.sin(2 * w)], axis=1)
    c0, a, b = np.linalg.lstsq(design, y, rcond=None)[0]
    return float(np.rad2deg(np.arctan2(b, a) / 2) % 180), float(np.hypot(a, b))


def _angle_diff(a: float, b: float) -> float:
    d = abs(a - b) % 180
    return min(d, 180 - d)


@pytest.fixture(scope="module")
def tumour_ct():
    a = build_anatomy(48, 0.4, np.random.default_rng(11))
    lung_idx = np.argwhere(ndimage.distance_transform_edt(a.lung_mask) >= 4)
    centre = (lung_idx[len(lung_idx) // 2] - 23.5) * 0.4
    insert_tumour(a, centre, 2.0, TumourShape.sphere())
    cfg = AcquisitionConfig(n_angles=90, photons_per_pixel=1e5)
    return a, acquire_ct(a, cfg, np.random.default_rng(12))


def test_ct_shapes_and_air_columns(tumour_ct):
    a, r = tumour_ct
    assert r["proj_T"].shape == (4, 90, 48, 48) and r["proj_D"].shape == (4, 90, 48, 48)
    assert r["attn"].shape == (48, 48, 48) and r["df"].shape == (48, 48, 48, 4)
    air = np.concatenate([r["proj_T"][:, :, :4], r["proj_T"][:, :, -4:]], axis=2)
    # air columns see only flux x drift x noise, never the body
    assert abs(float(np.mean(-np.log(air)))) < 0.03 and float(np.max(-np.log(air))) < 0.2


def test_tumour_lowers_df_and_raises_attenuation(tumour_ct):
    a, r = tumour_ct
    t = a.label > 0
    ring = ndimage.binary_dilation(t, iterations=3) & ~ndimage.binary_dilation(t, iterations=1) & a.lung_mask
    df = r["df"].mean(axis=-1)
    assert ring.sum() > 20 and t.sum() > 20
    assert df[t].mean() < df[ring].mean() - 2 * df[ring].std() / np.sqrt(t.sum())
    assert df[t].mean() < 0.6 * df[ring].mean()
    assert r["attn"][t].mean() > r["attn"][ring].mean() + 0.01  # tissue (~0.03/mm) vs aerated lung


def _bone_only(a):
    b = build_anatomy(32, 0.5, np.random.default_rng(2))
    b.air_fraction[:] = 0  # no scatterers anywhere: any dark-field is beam hardening
    return b


@pytest.mark.parametrize("mono", (True, False))
def test_spine_dark_field_is_beam_hardening(mono):
    a = _bone_only(None)
    cfg = AcquisitionConfig(n_angles=36, noise=False, flux_sigma=0.0, drift_amplitude=0.0,
                            monochromatic_kev=35.0 if mono else None)
    r = acquire_ct(a, cfg, np.random.default_rng(0))
    df_proj = -np.log(r["proj_D"])  # (N, A, U, Z)
    bone = project(np.moveaxis(a.materials["bone"], -1, 0), projection_angles(36), pixel_mm=0.5)  # (Z, A, U)
    bone = np.moveaxis(bone, 0, -1)  # (A, U, Z)
    spine = a.materials["bone"] > 0.5
    if mono:
        assert np.abs(df_proj).max() < 1e-5
        assert abs(float(r["df"].mean(-1)[spine].mean())) < 1e-4
    else:
        soft = sum(a.materials[m] for m in ("soft_tissue", "lung_tissue"))
        soft = np.moveaxis(project(np.moveaxis(soft, -1, 0), projection_angles(36), pixel_mm=0.5), 0, -1)
        through = bone > 0.5
        # spurious DF grows with bone path length (at fixed soft-tissue path: linear model)
        design = np.stack([np.ones(through.sum()), bone[through], soft[through]], axis=1)
        coef, *_ = np.linalg.lstsq(design, df_proj[0][through], rcond=None)
        assert coef[1] > 0 and coef[1] > 3 * coef[2]
        assert stats.spearmanr(bone[through], df_proj[0][through]).statistic > 0.8
        thick = bone > np.percentile(bone[through], 90)
        assert df_proj[0][thick].mean() > 0.01
        assert r["df"].mean(-1)[spine].mean() > 5 * abs(float(r["df"].mean(-1)[~a.body_mask].mean()))


def _fibre_anatomy(orientation):
    a = build_anatomy(32, 0.5, np.random.default_rng(4))
    a.orientation[:] = np.asarray(orientation, np.float32) / np.linalg.norm(orientation)
    a.anisotropy[a.air_fraction > 0] = 0.5
    return a


@pytest.mark.parametrize("alpha", (0.0, 30.0, 75.0, 120.0))
def test_radiograph_fibre_orientation(alpha):
    r_a = np.deg2rad(alpha)
    a = _fibre_anatomy([np.cos(r_a), 0.0, np.sin(r_a)])  # fibres in the detector plane (x, z)
    r = acquire_radiograph(a, AcquisitionConfig(geometry="radiograph"), np.random.default_rng(1))
    lung = a.lung_mask.any(axis=1)
    theta, amp = _fit_theta_deg(r["df"][lung].mean(axis=0))
    assert amp > 0.01
    assert _angle_diff(theta, alpha + 90.0) < 5.0  # strongest scattering is perpendicular to fibres


@pytest.mark.parametrize(("orientation", "expected"), (([0, 0, 1], 0.0), ([1, 0, 0], 90.0), ([0.6, 0.8, 0], 90.0)))
def test_ct_fibre_orientation(orientation, expected):
    a = _fibre_anatomy(orientation)
    r = acquire_ct(a, AcquisitionConfig(n_angles=60), np.random.default_rng(2))
    theta, amp = _fit_theta_deg(r["df"][a.lung_mask].mean(axis=0))
    assert amp > 0.005
    assert _angle_diff(theta, expected) < 5.0


def test_config_rejects_bad_values():
    from dfseg.errors import InputError

    with pytest.raises(InputError, match="geometry"):
        AcquisitionConfig(geometry="fan")
    with pytest.raises(InputError, match="phase steps"):
        replace(AcquisitionConfig(), phase_steps=2)
