"""Directional (tensor) projector: isotropic and fibre tensors against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfseg.errors import InputError
from dfseg.tomo import project, project_tensor, projection_angles, tensor_projection_weights


def _blob(n=24):
    c = np.arange(n) - (n - 1) / 2
    return ((c[:, None] ** 2 + c[None, :] ** 2) < 64).astype(np.float64)


def test_isotropic_tensor_is_orientation_independent():
    mask = _blob()
    s6 = np.zeros((6, *mask.shape))
    s6[0] = s6[1] = s6[2] = 0.3 * mask
    angles = projection_angles(12)
    w = np.deg2rad([0.0, 30.0, 45.0, 90.0, 135.0])
    out = project_tensor(s6, angles, w, pixel_mm=0.5)
    assert out.shape == (5, 12, 24)
    ref = project(0.3 * mask, angles, pixel_mm=0.5)
    for k in range(5):
        np.testing.assert_allclose(out[k], ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("beta_deg", [0.0, 25.0, 70.0])
def test_inplane_fibre_gives_cos2w(beta_deg):
    """S = s m m^T, m = (cos b, sin b, 0): s^T S s = s cos^2 w sin^2(b - t) = c0 + c2 cos 2w."""
    mask = _blob()
    beta = np.deg2rad(beta_deg)
    m = np.array([np.cos(beta), np.sin(beta), 0.0])
    mm = np.outer(m, m)
    comps = [mm[0, 0], mm[1, 1], mm[2, 2], mm[0, 1], mm[0, 2], mm[1, 2]]
    s6 = np.stack([c * mask for c in comps])
    angles = projection_angles(8)
    w = np.linspace(0, np.pi, 7, endpoint=False)
    out = project_tensor(s6, angles, w)
    base = project(mask, angles)
    expected = (np.cos(w)[:, None, None] ** 2) * (np.sin(beta - angles)[None, :, None] ** 2) * base[None]
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    # Fit DF(w) = c0 + a cos 2w + b sin 2w for one ray: c0 = |a|, b = 0.
    y = out[:, 3, 12]
    design = np.stack([np.ones_like(w), np.cos(2 * w), np.sin(2 * w)], 1)
    c0, a, b = np.linalg.lstsq(design, y, rcond=None)[0]
    assert a == pytest.approx(c0, rel=1e-9) and abs(b) < 1e-9 * max(c0, 1e-30) + 1e-14


def test_vertical_fibre_and_cross_terms():
    mask = _blob()
    angles = projection_angles(6)
    w = np.deg2rad([0.0, 45.0, 90.0])
    s6 = np.zeros((6, *mask.shape))
    s6[2] = mask  # fibre along z: only sin^2 w
    out = project_tensor(s6, angles, w)
    base = project(mask, angles)
    np.testing.assert_allclose(out, np.sin(w)[:, None, None] ** 2 * base[None], atol=1e-12)
    # Weights reproduce s^T S s for a random symmetric tensor.
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 3))
    s_full = q @ q.T
    comps = np.array([s_full[0, 0], s_full[1, 1], s_full[2, 2], s_full[0, 1], s_full[0, 2], s_full[1, 2]])
    wts = tensor_projection_weights(angles, w)
    for n_i, ww in enumerate(w):
        for a_i, t in enumerate(angles):
            s = np.cos(ww) * np.array([-np.sin(t), np.cos(t), 0.0]) + np.sin(ww) * np.array([0, 0, 1.0])
            assert wts[n_i, a_i] @ comps == pytest.approx(s @ s_full @ s, rel=1e-12)


def test_tensor_types_and_batch():
    s6 = np.random.default_rng(2).random((3, 6, 16, 16)).astype(np.float32)
    angles = projection_angles(5)
    out = project_tensor(s6, angles, np.deg2rad([0.0, 60.0, 120.0]))
    assert out.shape == (3, 3, 5, 16) and out.dtype == np.float32
    out_t = project_tensor(torch.from_numpy(s6), angles, np.deg2rad([0.0, 60.0, 120.0]))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), out, rtol=1e-5)
    with pytest.raises(InputError):
        project_tensor(s6[:, :5], angles, [0.0])
