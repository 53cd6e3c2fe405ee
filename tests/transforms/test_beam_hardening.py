"""Beam-hardening correction: projection (exact) and volume (first order) domains, linearisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfseg.calibration.fit import fit_calibration
from dfseg.errors import InputError
from dfseg.simulate.phantoms import write_phantom_scans
from dfseg.transforms.beam_hardening import BeamHardeningCorrection, BeamHardeningCorrectiond

VIS = {"v_max": 0.3, "design_energy_kev": 28.0, "width_kev": 8.0, "floor_fraction": 0.15}


@pytest.fixture(scope="module")
def cal(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    write_phantom_scans(root, {"kvp": 70.0, "visibility": VIS, "noise": False}, seed=0)
    return fit_calibration(root)


@pytest.mark.parametrize("as_torch", [False, True])
def test_projection_domain_removes_wedge_curve(cal, as_torch):
    st = cal["beam_hardening"]["water"]["steps"]
    a = np.asarray(st["A"], np.float32)[None, None, :, None]
    df = np.asarray(st["DF"], np.float32)[None, None, :, None]
    inp = (torch.as_tensor(df), torch.as_tensor(a)) if as_torch else (df, a)
    out = BeamHardeningCorrection(cal)(*inp)
    assert type(out) is type(inp[0]) and out.shape == df.shape and out.dtype == inp[0].dtype
    out = np.asarray(out)
    assert np.max(np.abs(out)) < 0.02 * np.max(np.abs(df))
    # beyond the calibrated range the curve continues linearly (no polynomial blow-up)
    far = BeamHardeningCorrection(cal).spurious(torch.tensor([2.0, 4.0]) * cal["beam_hardening"]["water"]["a_max"])
    slope1 = far[1] - far[0]
    assert torch.isfinite(far).all() and abs(float(far[0])) < 1.0 and float(slope1) == pytest.approx(float(far[1] - far[0]))


@pytest.mark.parametrize("as_torch", [False, True])
def test_volume_domain_first_order(cal, as_torch):
    mu = np.zeros((1, 4, 4, 4))
    mu[0, 1:3, 1:3, 1:3] = 0.05
    c1 = cal["beam_hardening"]["water"]["first_order_c1"]
    eps = np.repeat(0.01 + c1 * mu, 3, axis=0)
    inp = (torch.as_tensor(eps), torch.as_tensor(mu)) if as_torch else (eps, mu)
    out = BeamHardeningCorrection(cal, domain="volume")(*inp)
    assert type(out) is type(inp[0])
    np.testing.assert_allclose(np.asarray(out), 0.01, atol=1e-12)
    assert c1 > 0


def test_linearisation_and_dict(cal):
    st = cal["beam_hardening"]["water"]["steps"]
    a = np.asarray(st["A"])[None, None, :, None]
    t = np.asarray(st["thickness_mm"])[None, None, :, None]
    d = {"proj_T": a.copy(), "proj_D": np.asarray(st["DF"])[None, None, :, None]}
    out = BeamHardeningCorrectiond("proj_D", cal, attn_key="proj_T", linearise=True)(d)
    mu_eff = cal["linearisation"]["water"]["mu_eff_per_mm"]
    np.testing.assert_allclose(out["proj_T"], mu_eff * t, atol=2e-3 * mu_eff * 30)
    assert np.max(np.abs(out["proj_D"])) < 0.01 * np.max(np.abs(d["proj_D"]))
    with pytest.raises(InputError, match="proj_T"):
        BeamHardeningCorrectiond("proj_D", cal)({"proj_D": d["proj_D"]})
    with pytest.raises(InputError, match="shape"):
        BeamHardeningCorrection(cal)(np.zeros((4, 2, 3, 1)), np.zeros((2, 2, 3, 1)))
    with pytest.raises(InputError, match="beam_hardening.aluminium.coefficients"):
        bad = {**cal, "beam_hardening": {"water": cal["beam_hardening"]["water"]}}
        BeamHardeningCorrection(bad)


def test_spine_spurious_darkfield_below_noise(cal):
    """A water-equivalent body with a bone 'spine': spurious eps in the spine before/after correction."""
    from dfseg.physics import (
        VisibilitySpectrum,
        mu,
        phase_stepping_measurement,
        polychromatic_signals,
        tube_spectrum,
    )
    from dfseg.tomo import fbp, project, projection_angles

    n, px = 32, 0.6
    x = (np.arange(n) - (n - 1) / 2) * px
    xx, yy = np.meshgrid(x, x, indexing="ij")
    spine = (xx**2 + (yy + 4) ** 2 < 1.5**2).astype(float)
    soft = (xx**2 + yy**2 < 8**2).astype(float) - spine
    ang = projection_angles(60)
    spec, vis = tube_spectrum(70.0), VisibilitySpectrum(**VIS)
    e = spec.energies_kev
    terms = [(project(soft, ang, pixel_mm=px), mu("soft_tissue", e)), (project(spine, ang, pixel_mm=px), mu("bone", e))]
    t, d = polychromatic_signals(spec, vis, terms)
    a, df = -np.log(t), -np.log(d)
    v_ref = float(np.sum(spec.weights * vis(e)))
    rng = np.random.default_rng(0)
    tn, dn = phase_stepping_measurement(t, d, v_ref=v_ref, photons_per_pixel=2e4, rng=rng, ref_photons_per_pixel=2e5)
    noise = np.std(fbp(-np.log(dn) - df, ang, n, pixel_mm=px)[soft > 0])  # per-voxel eps noise of one scan
    m = spine > 0
    before = fbp(df, ang, n, pixel_mm=px)[m].mean()
    op = BeamHardeningCorrection(cal, aluminium_weight=0.7)  # bone sits between the water and aluminium curves
    corr = op(df[None, :, :, None], a[None, :, :, None])[0, :, :, 0]
    eps = fbp(corr, ang, n, pixel_mm=px)
    after, soft_after = eps[m].mean(), eps[soft > 0].mean()
    water_only = fbp(BeamHardeningCorrection(cal)(df[None, ..., None], a[None, ..., None])[0, ..., 0], ang, n, pixel_mm=px)[m].mean()
    print(f"spine spurious eps before {before:.4f} /mm, water curve {water_only:.4f}, mixed {after:.4f}; soft {soft_after:.4f}; noise {noise:.4f}")
    assert before > 2 * noise
    assert abs(after) < noise and abs(soft_after) < noise  # below the per-voxel noise of one scan
