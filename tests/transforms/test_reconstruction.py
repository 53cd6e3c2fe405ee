"""FBP reconstruction transform: (N, A, U, Z) line integrals -> (N, X, Y, Z) in 1/mm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import KINDS, as_kind

from dfseg.errors import InputError
from dfseg.tomo import project, projection_angles
from dfseg.transforms.reconstruction import FBPReconstruction, FBPReconstructiond, NegativeLog, NegativeLogd


def disc_stack(n=32, px=0.5, mu=0.04, z=3, channels=2):
    x = (np.arange(n) - (n - 1) / 2) * px
    xx, yy = np.meshgrid(x, x, indexing="ij")
    img = mu * (xx**2 + yy**2 < (0.3 * n * px) ** 2)
    sino = project(img, projection_angles(64), pixel_mm=px)  # (A, U)
    stack = np.broadcast_to(sino[None, :, :, None], (channels, *sino.shape, z)).copy()
    return img, stack


@pytest.mark.parametrize("kind", KINDS)
def test_fbp_recovers_mu(kind):
    img, stack = disc_stack()
    inp = as_kind(kind, stack.astype(np.float32))
    vol = FBPReconstruction(0.5)(inp)
    assert type(vol) is type(inp) and tuple(vol.shape) == (2, 32, 32, 3)
    v = np.asarray(vol)
    inside = img > 0
    core = np.zeros_like(inside)
    core[12:20, 12:20] = True
    assert abs(v[0, core & inside, 1].mean() - 0.04) < 0.002
    assert abs(v[1, ~inside, 0].mean()) < 0.003
    avg = FBPReconstruction(0.5, average_channels=True)(inp)
    assert tuple(avg.shape) == (1, 32, 32, 3)


def test_dict_meta_channels_nan_and_neglog():
    img, stack = disc_stack(channels=4)
    t = np.exp(-stack)
    d = {"proj_T": t, "proj_D": t.copy(), "meta": {"voxel_mm": 0.5, "orientations_deg": [0, 45, 90, 135]}}
    d = NegativeLogd()(d)
    np.testing.assert_allclose(d["proj_T"], stack, atol=1e-12)
    out = FBPReconstructiond(output_keys=("attn", "df"), average_keys="proj_T")(d)
    assert out["attn"].shape == (1, 32, 32, 3) and out["df"].shape == (4, 32, 32, 3) and "proj_T" not in out
    bad = dict(d, meta={"voxel_mm": 0.5, "orientations_deg": [0, 60, 120]})
    with pytest.raises(InputError, match="expected 3 orientation channels from the sidecar, found 4") as err:
        FBPReconstructiond()(bad)
    assert str(err.value).startswith("proj_T:")
    nan = d["proj_D"].copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        FBPReconstructiond(keys="proj_D")(dict(d, proj_D=nan))
    assert float(NegativeLog()(torch.tensor([0.0]))) == pytest.approx(-np.log(1e-6))
