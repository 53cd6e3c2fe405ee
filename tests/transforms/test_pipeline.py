"""The projection and volume chains end to end on a small synthetic scan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import KINDS, as_kind

from dfseg.calibration.fit import fit_calibration
from dfseg.simulate.phantoms import write_phantom_scans
from dfseg.tomo import project, projection_angles
from dfseg.transforms.pipeline import projection_chain, volume_chain

ACQ = {"kvp": 70.0, "noise": False}


@pytest.fixture(scope="module")
def cal(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph")
    write_phantom_scans(root, ACQ, seed=0)
    return fit_calibration(root)


def scan(cal):
    """A water disc of known mu and a drifting gain: (N, A, U, Z) ratios plus its sidecar."""
    n, px = 32, 0.5
    x = (np.arange(n) - (n - 1) / 2) * px
    xx, yy = np.meshgrid(x, x, indexing="ij")
    img = 0.03 * (xx**2 + yy**2 < 5**2)
    a = project(img, projection_angles(48), pixel_mm=px)
    gain = 1.0 + 0.05 * np.linspace(0, 1, 48)[None, :, None, None]
    t = np.broadcast_to(np.exp(-a)[None, :, :, None], (4, 48, n, 2)) * gain
    d = np.full_like(t, np.exp(-0.05))
    meta = {**{k: cal["reference"][k] for k in ("kvp", "filtration_mm", "visibility")},
            "air_columns": 4, "voxel_mm": px, "orientations_deg": [0, 45, 90, 135]}
    return img, {"proj_T": t.astype(np.float32), "proj_D": d.astype(np.float32), "meta": meta}


@pytest.mark.parametrize("kind", KINDS)
def test_projection_chain(cal, kind):
    img, data = scan(cal)
    data = {**data, "proj_T": as_kind(kind, data["proj_T"]), "proj_D": as_kind(kind, data["proj_D"])}
    out = projection_chain(cal)(data)
    assert tuple(out["attn"].shape) == (1, 32, 32, 2) and tuple(out["df"].shape) == (5, 32, 32, 2)
    assert isinstance(out["attn"], torch.Tensor) == (kind == "torch")
    attn = np.asarray(out["attn"])[0, ..., 0]
    assert abs(attn[14:18, 14:18].mean() - 0.03) < 0.002  # drift removed, mu recovered
    assert "proj_T" not in out


def test_volume_chain(cal):
    mu = np.zeros((1, 8, 8, 8))
    mu[0, 2:6, 2:6, 2:6] = 0.03
    c1 = cal["beam_hardening"]["water"]["first_order_c1"]
    df = np.repeat(0.02 + c1 * mu, 4, axis=0)
    meta = {**{k: cal["reference"][k] for k in ("kvp", "filtration_mm", "visibility")},
            "orientations_deg": [0, 45, 90, 135]}
    out = volume_chain(cal)({"attn": mu, "df": df, "meta": meta})
    assert out["df"].shape == (5, 8, 8, 8)
    np.testing.assert_allclose(np.asarray(out["df"])[0], 0.02, atol=1e-6)  # c0: BH removed, isotropic
    np.testing.assert_allclose(np.asarray(out["df"])[1], 0.0, atol=1e-6)


def test_projection_chain_on_cone_beam_projections(cal):
    """A lab's geometry (sidecar beam block: cone beam, 360 degrees, off-centre axis) through the whole
    projection chain: flux normalisation, beam-hardening correction, FDK, directional decomposition.
    A water ellipsoid (mu 0.03 /mm) scattering 0.02 /mm on average with a 30 % anisotropy whose main
    direction is 20 degrees: mu, the amplitude and its direction are recovered at the centre."""
    from dfseg.tomo import Ellipsoid, Geometry, ellipsoid_projections

    geometry = Geometry(kind="cone", scan_deg=360, source_object_mm=60, source_detector_mm=120,
                        detector_pixel_mm=1.0, cor_offset_px=1.5, detector_shape=(48, 12))
    path = ellipsoid_projections([Ellipsoid(1.0, (0.0, 0.0, 0.0), (5.0, 5.0, 3.0))], geometry, n_angles=90)
    orientations = [0.0, 45.0, 90.0, 135.0]
    eps = np.array([0.02 * (1 + 0.3 * np.cos(2 * np.deg2rad(w - 20.0))) for w in orientations])
    t = np.broadcast_to(np.exp(-0.03 * path)[None], (4, *path.shape)) * 1.02  # a flux 2 % off
    d = np.exp(-eps[:, None, None, None] * path[None])
    meta = {**{k: cal["reference"][k] for k in ("kvp", "filtration_mm", "visibility")}, "air_columns": 4,
            "voxel_mm": 0.5, "orientations_deg": orientations, "geometry": "ct", "beam": geometry.describe()}
    out = projection_chain(cal)({"proj_T": t.astype(np.float32), "proj_D": d.astype(np.float32), "meta": meta})
    attn, df = np.asarray(out["attn"]), np.asarray(out["df"])
    assert attn.shape[0] == 1 and df.shape[0] == 5 and attn.shape[1:] == df.shape[1:]
    centre = (slice(None), *(slice(s // 2 - 2, s // 2 + 2) for s in attn.shape[1:]))
    assert float(attn[centre].mean()) == pytest.approx(0.03, abs=0.002)
    c0, amp, _, cos2t, sin2t = (float(c.mean()) for c in df[centre])
    assert amp / c0 == pytest.approx(0.3, abs=0.06)  # the beam-hardening term is isotropic
    assert np.rad2deg(0.5 * np.arctan2(sin2t, cos2t)) == pytest.approx(20.0, abs=3.0)
