"""Filtered back-projection scale and accuracy on a uniform cylinder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfseg.errors import InputError
from dfseg.tomo import fbp, project, projection_angles


def _disc(n, radius, sub=8):
    c = np.arange(n) - (n - 1) / 2
    o = (np.arange(sub) + 0.5) / sub - 0.5
    x = (c[:, None] + o[None, :]).reshape(-1)
    inside = (x[:, None] ** 2 + x[None, :] ** 2) <= radius**2
    return inside.reshape(n, sub, n, sub).mean(axis=(1, 3))


@pytest.mark.parametrize(("filter_name", "tol"), [("ramp", 0.02), ("shepp-logan", 0.02), ("hann", 0.03)])
def test_fbp_uniform_cylinder(filter_name, tol):
    n, pixel, mu = 64, 0.5, 0.02
    angles = projection_angles(180)
    img = _disc(n, 22.0) * mu
    rec = fbp(project(img, angles, pixel_mm=pixel), angles, n, pixel_mm=pixel, filter_name=filter_name)
    c = np.arange(n) - (n - 1) / 2
    r = np.hypot(c[:, None], c[None, :])
    interior = rec[r < 22.0 - 4]
    assert abs(interior.mean() / mu - 1) < 0.005, interior.mean()
    assert np.abs(interior / mu - 1).max() < tol
    # Outside the object the reconstruction is near zero.
    assert np.abs(rec[(r > 26) & (r < 30)]).max() < 0.05 * mu


def test_fbp_batched_float32_torch_and_linear():
    n = 32
    angles = projection_angles(60)
    img = np.stack([_disc(n, 10), 2 * _disc(n, 10)]).astype(np.float32) * 0.05
    sino = project(img, angles)
    rec = fbp(sino, angles, n)
    assert rec.dtype == np.float32 and rec.shape == (2, n, n)
    np.testing.assert_allclose(rec[1], 2 * rec[0], rtol=1e-5, atol=1e-7)
    rt = fbp(torch.from_numpy(sino), angles, n)
    assert isinstance(rt, torch.Tensor)
    np.testing.assert_allclose(rt.numpy(), rec, rtol=1e-5, atol=1e-7)
    with pytest.raises(InputError, match="unknown filter"):
        fbp(sino, angles, n, filter_name="cosine-ish")
