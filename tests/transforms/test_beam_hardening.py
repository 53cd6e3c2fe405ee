"""Beam-hardening correction: projection (exact) and volume (first order) domains, linearisation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage
from testkit import KINDS, as_kind

from dfseg.calibration.fit import fit_calibration
from dfseg.errors import InputError
from dfseg.physics import (
    VisibilitySpectrum,
    effective_energy,
    mu,
    phase_stepping_measurement,
    polychromatic_signals,
    tube_spectrum,
)
from dfseg.simulate.acquisition import AcquisitionConfig, acquire_ct
from dfseg.simulate.anatomy import build_anatomy
from dfseg.simulate.phantoms import write_phantom_scans
from dfseg.tomo import fbp, project, projection_angles
from dfseg.transforms.beam_hardening import (
    BeamHardeningCorrection,
    BeamHardeningCorrectiond,
    WaterBoneDecomposition,
    ray_darkfield_factor,
    ray_effective_energy,
    water_bone_mu,
)
from dfseg.transforms.flux import FluxNormalizationd
from dfseg.transforms.reconstruction import FBPReconstructiond, NegativeLogd

VIS = {"v_max": 0.3, "design_energy_kev": 28.0, "width_kev": 8.0, "floor_fraction": 0.15}


def _body_with_bone_rod(n: int, px: float, rod_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A 16 mm soft-tissue disc (n^2 pixels of px mm) and a bone rod of radius rod_mm 4 mm off centre."""
    x = (np.arange(n) - (n - 1) / 2) * px
    xx, yy = np.meshgrid(x, x, indexing="ij")
    rod = (xx**2 + (yy + 4) ** 2 < rod_mm**2).astype(float)
    return (xx**2 + yy**2 < 8**2).astype(float) - rod, rod


@pytest.fixture(scope="module")
def cal(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    write_phantom_scans(root, {"kvp": 70.0, "visibility": VIS, "noise": False}, seed=0)
    return fit_calibration(root)


@pytest.mark.parametrize("kind", KINDS)
def test_projection_domain_removes_wedge_curve(cal, kind):
    st = cal["beam_hardening"]["water"]["steps"]
    a = np.asarray(st["A"], np.float32)[None, None, :, None]
    df = np.asarray(st["DF"], np.float32)[None, None, :, None]
    inp = (as_kind(kind, df), as_kind(kind, a))
    out = BeamHardeningCorrection(cal)(*inp)
    assert type(out) is type(inp[0]) and out.shape == df.shape and out.dtype == inp[0].dtype
    out = np.asarray(out)
    assert np.max(np.abs(out)) < 0.02 * np.max(np.abs(df))
    # beyond the calibrated range the curve continues linearly (no polynomial blow-up)
    far = BeamHardeningCorrection(cal).spurious(torch.tensor([2.0, 4.0]) * cal["beam_hardening"]["water"]["a_max"])
    slope1 = far[1] - far[0]
    assert torch.isfinite(far).all() and abs(float(far[0])) < 1.0 and float(slope1) == pytest.approx(float(far[1] - far[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_volume_domain_first_order(cal, kind):
    mu = np.zeros((1, 4, 4, 4))
    mu[0, 1:3, 1:3, 1:3] = 0.05
    c1 = cal["beam_hardening"]["water"]["first_order_c1"]
    eps = np.repeat(0.01 + c1 * mu, 3, axis=0)
    inp = (as_kind(kind, eps), as_kind(kind, mu))
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
    n, px = 32, 0.6
    soft, spine = _body_with_bone_rod(n, px, 1.5)
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


def _curves_at(cal, a, w):
    op = BeamHardeningCorrection(cal)
    return op.spurious(torch.as_tensor(a), None if w is None else torch.as_tensor(w)).numpy()


def test_bone_mixing_matches_two_material_physics(cal):
    """Soft tissue + cortical bone rays: the per-ray mix of the water and aluminium curves, weighted by
    the bone share of the attenuation, reproduces the exact polychromatic spurious DF."""

    spec, vis = tube_spectrum(70.0), VisibilitySpectrum(**VIS)
    e = spec.energies_kev
    ts, tb = np.linspace(0, 25, 26)[:, None], np.linspace(0, 4, 9)[None, :]
    t, d = polychromatic_signals(spec, vis, [(ts + 0 * tb, mu("soft_tissue", e)), (tb + 0 * ts, mu("bone", e))])
    a, df = -np.log(t), -np.log(d)
    mu_w, mu_b, e_eff = water_bone_mu(cal)
    assert 25 < e_eff < 40 and 5 < mu_b / mu_w < 8
    w = mu_b * tb / np.maximum(mu_b * tb + float(mu("soft_tissue", np.array([e_eff]))[0]) * ts, 1e-12)
    mixed = np.abs(df - _curves_at(cal, a, w)).max()
    water = np.abs(df - _curves_at(cal, a, None)).max()
    print(f"largest spurious DF {df.max():.3f}; residual: water curve {water:.4f}, per-ray mix {mixed:.4f}")
    assert df.max() > 0.2
    assert mixed < 0.1 * water and mixed < 0.012


def test_water_bone_decomposition_recovers_paths(cal):
    """Two-pass decomposition of a soft-tissue disc with a bone rod: per-ray bone and water paths."""
    n, px = 48, 0.4
    soft, rod = _body_with_bone_rod(n, px, 1.6)
    ang = projection_angles(90)
    spec = tube_spectrum(70.0)
    e = spec.energies_kev
    p_soft, p_bone = project(soft, ang, pixel_mm=px), project(rod, ang, pixel_mm=px)
    t, _ = polychromatic_signals(spec, VisibilitySpectrum(**VIS), [(p_soft, mu("soft_tissue", e)), (p_bone, mu("bone", e))])
    a = -np.log(t)[None, :, :, None].astype(np.float32)  # (1, A, U, 1)
    for inp in (a, torch.as_tensor(a)):
        dec = WaterBoneDecomposition(cal, px, kvp=70.0)
        paths = dec(inp)
        assert type(paths) is type(inp) and paths.shape == (2, 90, n, 1)
    paths = np.asarray(paths)
    through = p_bone > 1.0
    rel_bone = paths[1, :, :, 0][through].mean() / p_bone[through].mean()
    soft_only = (p_bone == 0) & (p_soft > 4.0)
    bone_on_soft = paths[1, :, :, 0][soft_only].mean()
    mu_s = float(mu("soft_tissue", np.array([water_bone_mu(cal)[2]]))[0])
    rel_water = paths[0, :, :, 0][soft_only].mean() / (p_soft[soft_only].mean() * mu_s / dec.mu_water)
    print(f"bone path {rel_bone:.3f} of true, bone on soft-only rays {bone_on_soft:.3f} mm, water path {rel_water:.3f}")
    assert abs(rel_bone - 1) < 0.1 and bone_on_soft < 0.08 and abs(rel_water - 1) < 0.05
    w = dec.aluminium_weight(torch.as_tensor(paths))
    assert w.shape == (1, 90, n, 1) and float(w.min()) >= 0 and float(w.max()) <= 1
    assert float(w[0, :, :, 0][torch.as_tensor(soft_only)].mean()) < 0.05 < 0.2 < float(w[0, :, :, 0][torch.as_tensor(through)].mean())


def test_ray_effective_energy_matches_direct_computation():
    paths = torch.tensor([[0.0, 10.0, 22.0, 5.0], [0.0, 0.0, 1.5, 3.0]], dtype=torch.float64)
    got = ray_effective_energy(paths, 70.0, {"Al": 1.0}, VIS)
    spec = tube_spectrum(70.0, {"Al": 1.0})
    e = spec.energies_kev
    trans = np.exp(-paths[0].numpy()[:, None] * mu("water", e) - paths[1].numpy()[:, None] * mu("bone", e))
    want = effective_energy(spec, VisibilitySpectrum(**VIS), trans)
    assert got.shape == (1, 4)
    np.testing.assert_allclose(got[0].numpy(), want, rtol=2e-3)
    assert float(got[0, 0]) < float(got[0, 1]) < float(got[0, 2])  # harder behind more material
    # dark-field factor: M_ref / M_ray, M = sum w T E^-n / sum w T (first order in DF)
    w = spec.weights * VisibilitySpectrum(**VIS)(e)
    m_ray = (trans * w) @ e**-2.5 / (trans * w).sum(-1)
    m_ref = np.sum(w * np.exp(-3.0 * mu("water", e)) * e**-2.5) / np.sum(w * np.exp(-3.0 * mu("water", e)))
    factor = ray_darkfield_factor(paths, 70.0, {"Al": 1.0}, VIS, 2.5, water_mm=3.0)
    np.testing.assert_allclose(factor[0].numpy(), m_ref / m_ray, rtol=2e-3)
    assert float(factor[0, 0]) < 1.0 < float(factor[0, 2])  # softer than 3 mm water: < 1; harder: > 1


@pytest.fixture(scope="module")
def subject_scan(tmp_path_factory):
    """A simulated mouse (anatomy of the cohort simulator) scanned with its lung scattering switched
    off, so that every dark-field signal in it is spurious; one grating orientation, with noise."""

    size, px, n_ang = 40, 0.6, 90
    root = tmp_path_factory.mktemp("ph_subject")
    visibility = {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0, "floor_fraction": 0.15}
    write_phantom_scans(root, {"kvp": 70.0, "visibility": visibility, "noise": False, "voxel_mm": px}, seed=0)
    cal_s = fit_calibration(root)
    anat = build_anatomy(size, px, np.random.default_rng(3), air_columns=4)
    spec, vis = tube_spectrum(70.0, {"Al": 1.0}), VisibilitySpectrum(**visibility)
    e = spec.energies_kev
    names = sorted(anat.materials)
    lines = project(np.stack([np.moveaxis(anat.materials[m], -1, 0) for m in names]), projection_angles(n_ang),
                    pixel_mm=px)  # (M, Z, A, U)
    t, d = polychromatic_signals(spec, vis, [(np.moveaxis(lines[i], 0, -1), mu(m, e)) for i, m in enumerate(names)])
    v_ref = float(np.sum(spec.weights * vis(e)) / np.sum(spec.weights))
    tn, dn = phase_stepping_measurement(t, d, v_ref=v_ref, rng=np.random.default_rng(0), ref_photons_per_pixel=2e5)
    meta = {"voxel_mm": px, "kvp": 70.0, "filtration_mm": {"Al": 1.0}, "visibility": visibility}
    return {"cal": cal_s, "anatomy": anat, "meta": meta, "clean": (t[None], d[None]), "noisy": (tn[None], dn[None])}


def _subject_eps(scan, t, d, **bh):
    data = {"proj_T": -np.log(t), "proj_D": -np.log(d), "meta": scan["meta"]}
    if bh.pop("correct", True):
        data = BeamHardeningCorrectiond("proj_D", scan["cal"], **bh)(data)
    out = FBPReconstructiond(("proj_T", "proj_D"), ("attn", "df"), check_orientations=False)(data)
    return np.asarray(out["df"])[0]


def test_spine_spurious_darkfield_below_noise_on_simulated_subject(subject_scan):
    """Acceptance (issue 4): on a simulated mouse the spine's spurious DF falls below the per-voxel
    noise of one scan after the projection-domain two-pass bone correction; the water curve alone
    leaves it above noise."""

    s = subject_scan
    spine = ndimage.binary_erosion(s["anatomy"].materials["bone"] > 0.5, iterations=1)
    body = ndimage.binary_erosion(s["anatomy"].body_mask > 0.5, iterations=2) & ~ndimage.binary_dilation(spine, iterations=2)
    noise = np.std(_subject_eps(s, *s["noisy"], correct=False) - _subject_eps(s, *s["clean"], correct=False))
    res = {name: _subject_eps(s, *s["noisy"], **kw) for name, kw in
           [("none", {"correct": False}), ("water", {}), ("two-pass", {"bone_correction": True, "ray_energy": False}),
            ("two-pass+energy", {"bone_correction": True})]}
    spine_eps = {k: float(v[spine].mean()) for k, v in res.items()}
    body_eps = {k: float(v[body].mean()) for k, v in res.items()}
    print(f"spine voxels {int(spine.sum())}, per-voxel noise {noise:.4f} /mm; spine eps {spine_eps}; rest of body {body_eps}")
    assert spine.sum() > 30
    assert spine_eps["none"] > 3 * noise and spine_eps["water"] > noise
    assert abs(spine_eps["two-pass"]) < noise and abs(spine_eps["two-pass+energy"]) < noise
    assert abs(body_eps["two-pass+energy"]) < noise / 2


def test_two_pass_dict_keeps_type_numpy_and_torch_agree(subject_scan):
    s = subject_scan
    t, d = s["clean"]
    data = {"proj_T": -np.log(t).astype(np.float32), "proj_D": -np.log(d).astype(np.float32), "meta": s["meta"]}
    op = BeamHardeningCorrectiond("proj_D", s["cal"], bone_correction=True)
    out_np = op(data)["proj_D"]
    out_t = op({**data, "proj_T": torch.as_tensor(data["proj_T"]), "proj_D": torch.as_tensor(data["proj_D"])})["proj_D"]
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), out_np, atol=1e-6)
    assert out_np.shape == data["proj_D"].shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_pass_on_cuda_matches_cpu(subject_scan):
    s = subject_scan
    t, d = s["clean"]
    data = {"proj_T": torch.as_tensor(-np.log(t)), "proj_D": torch.as_tensor(-np.log(d)), "meta": s["meta"]}
    op = BeamHardeningCorrectiond("proj_D", s["cal"], bone_correction=True)
    cpu = op(data)["proj_D"]
    gpu = op({**data, "proj_T": data["proj_T"].cuda(), "proj_D": data["proj_D"].cuda()})["proj_D"]
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_bone_correction_options_and_errors(cal, subject_scan):
    with pytest.raises(ValueError, match="domain='projection'"):
        BeamHardeningCorrectiond("df", cal, attn_key="attn", domain="volume", bone_correction=True)
    with pytest.raises(ValueError, match="not both"):
        BeamHardeningCorrectiond("proj_D", cal, bone_correction=True, aluminium_weight=0.5)
    t, d = subject_scan["clean"]
    data = {"proj_T": -np.log(t), "proj_D": -np.log(d), "meta": {"voxel_mm": 0.6}}
    with pytest.raises(InputError, match="meta.kvp"):
        BeamHardeningCorrectiond("proj_D", cal, bone_correction=True)(data)
    with pytest.raises(InputError, match="weight"):
        BeamHardeningCorrection(cal)(np.zeros((1, 2, 3, 1)), np.zeros((1, 2, 3, 1)), np.full((1, 2, 3, 1), 1.5))


def test_spine_below_noise_with_lung_scattering_on_simulated_subject(tmp_path):
    """The cohort simulator's own scan (lung scattering on, 4 orientations, noise): after the two-pass
    correction the spine is below the per-voxel noise; without step 3 (per-ray energy) it is not."""



    size, px = 40, 0.6
    cfg = AcquisitionConfig(n_angles=90, photons_per_pixel=2e4)  # the count these thresholds were set at
    root = tmp_path
    write_phantom_scans(root, {**cfg.describe(), "noise": False, "voxel_mm": px}, seed=0)
    cal_s = fit_calibration(root)
    meta = {"voxel_mm": px, "air_columns": cfg.air_columns, "orientations_deg": list(cfg.orientations_deg),
            "kvp": cfg.kvp, "filtration_mm": dict(cfg.filtration_mm), "visibility": dict(cfg.visibility)}
    anat = build_anatomy(size, px, np.random.default_rng(3), air_columns=cfg.air_columns)
    scans = {"noisy": acquire_ct(anat, cfg, np.random.default_rng(1)),
             "clean": acquire_ct(anat, replace(cfg, noise=False), np.random.default_rng(1))}

    def eps(scan, **bh):
        d = NegativeLogd()(FluxNormalizationd("proj_T")({"proj_T": scan["proj_T"], "proj_D": scan["proj_D"], "meta": meta}))
        if bh.pop("correct", True):
            d = BeamHardeningCorrectiond("proj_D", cal_s, **bh)(d)
        return np.asarray(FBPReconstructiond(("proj_T", "proj_D"), ("attn", "df"), average_keys="proj_T")(d)["df"]).mean(0)

    spine = ndimage.binary_erosion(anat.materials["bone"] > 0.5, iterations=1)
    noise = np.std((eps(scans["noisy"], correct=False) - eps(scans["clean"], correct=False))[spine])
    got = {name: float(eps(scans["noisy"], **kw)[spine].mean()) for name, kw in
           [("none", {"correct": False}), ("two-pass", {"bone_correction": True, "ray_energy": False}),
            ("two-pass+energy", {"bone_correction": True})]}
    print(f"lung on: noise {noise:.4f}; spine eps {got}")
    assert got["none"] > noise and abs(got["two-pass"]) > noise
    assert abs(got["two-pass+energy"]) < noise
