"""Parallel-beam projector: analytic chord lengths, adjointness, types and shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfseg.errors import InputError
from dfseg.tomo import backproject, project, projection_angles


def _grid(n, sub=8):
    """Sub-pixel sample coordinates (pixel units) for anti-aliased phantoms: (n, n, sub*sub) x and y."""
    c = np.arange(n) - (n - 1) / 2
    o = (np.arange(sub) + 0.5) / sub - 0.5
    x = c[:, None, None, None] + o[None, None, :, None]
    y = c[None, :, None, None] + o[None, None, None, :]
    x, y = np.broadcast_arrays(x, y)
    return x.reshape(n, n, -1), y.reshape(n, n, -1)


def _ellipse_image(n, a, b, psi):
    x, y = _grid(n)
    xr = x * np.cos(psi) + y * np.sin(psi)
    yr = -x * np.sin(psi) + y * np.cos(psi)
    return ((xr / a) ** 2 + (yr / b) ** 2 <= 1).mean(axis=-1)


def _ellipse_chords(angles, n, a, b, psi):
    """Exact chord length through the ellipse for every (angle, detector bin), pixel units."""
    rot = np.array([[np.cos(psi), -np.sin(psi)], [np.sin(psi), np.cos(psi)]])
    m = rot @ np.diag([1 / a**2, 1 / b**2]) @ rot.T
    u = np.arange(n) - (n - 1) / 2
    out = np.zeros((len(angles), n))
    for i, t in enumerate(angles):
        d = np.array([np.cos(t), np.sin(t)])
        nn = np.array([-np.sin(t), np.cos(t)])
        dmd, dmn, nmn = d @ m @ d, d @ m @ nn, nn @ m @ nn
        disc = (u * dmn) ** 2 - dmd * (u**2 * nmn - 1)
        out[i] = 2 * np.sqrt(np.maximum(disc, 0)) / dmd
    return out


@pytest.mark.parametrize(("a", "b", "psi"), [(20.0, 20.0, 0.0), (24.0, 12.0, 0.5)])
def test_line_integrals_match_chords(a, b, psi):
    n, pixel = 64, 0.25
    angles = projection_angles(45)
    img = _ellipse_image(n, a, b, psi) * 0.02
    sino = project(img, angles, pixel_mm=pixel)
    chords = _ellipse_chords(angles, n, a, b, psi) * pixel * 0.02
    # interior rays: chord at least 60% of the longest chord at that angle
    inner = chords > 0.6 * chords.max(axis=1, keepdims=True)
    rel = np.abs(sino[inner] - chords[inner]) / chords[inner]
    assert rel.max() < 0.02, rel.max()
    # Mass is (nearly: Joseph interpolation) conserved in every view: sum over U = image integral.
    np.testing.assert_allclose(sino.sum(axis=1), img.sum() * pixel, rtol=2e-3)


@pytest.mark.parametrize("size", [(16, 16), (16, 24)])
def test_backproject_is_exact_adjoint(size):
    rng = np.random.default_rng(0)
    angles = rng.uniform(0, np.pi, 23)
    x = rng.normal(size=(3, *size))
    y = rng.normal(size=(3, 23, size[0]))
    for pixel in (1.0, 0.3):
        lhs = np.sum(project(x, angles, pixel_mm=pixel) * y)
        rhs = np.sum(x * backproject(y, angles, size, pixel_mm=pixel))
        assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def test_types_shapes_and_devices():
    angles = projection_angles(10)
    img = np.random.default_rng(1).random((2, 3, 12, 12)).astype(np.float32)
    sino = project(img, angles)
    assert isinstance(sino, np.ndarray) and sino.dtype == np.float32 and sino.shape == (2, 3, 10, 12)
    st = project(torch.from_numpy(img), torch.from_numpy(angles))
    assert isinstance(st, torch.Tensor) and st.dtype == torch.float32
    np.testing.assert_allclose(st.numpy(), sino, rtol=1e-6)
    bp = backproject(sino, angles, 12)
    assert bp.shape == (2, 3, 12, 12) and bp.dtype == np.float32
    # a point at pixel (i, j) projects onto u = -x sin t + y cos t at angle t
    pt = np.zeros((12, 12))
    pt[9, 4] = 1.0
    s = project(pt, np.array([0.0, np.pi / 2]))
    x, y = 9 - 5.5, 4 - 5.5
    assert np.argmax(s[0]) == round(y + 5.5) and np.argmax(s[1]) == round(-x + 5.5)
    with pytest.raises(InputError):
        backproject(sino, angles, 13)


def test_projection_angles():
    a = projection_angles(180)
    assert a.shape == (180,) and a[0] == 0 and a[-1] < np.pi
    np.testing.assert_allclose(np.diff(a), np.pi / 180)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    angles = projection_angles(30)
    img = torch.rand(4, 20, 20, dtype=torch.float64)
    cpu = project(img, angles)
    gpu = project(img.cuda(), angles)
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), rtol=1e-10)
