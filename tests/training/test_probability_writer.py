"""``ProbabilityWriter``: the bundles' prediction files keep the scan's geometry."""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from dfseg.training import ProbabilityWriter


def test_a_volume_keeps_origin_direction_and_spacing(tmp_path):
    # a lung crop's shifted origin, an oblique direction and anisotropic spacing
    angle = np.deg2rad(30.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, -1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([0.15, 0.12, 0.2])
    affine[:3, 3] = [2.7, -7.2, 31.5]
    prob = np.random.default_rng(0).random((1, 6, 5, 4)).astype(np.float32)
    pred = MetaTensor(torch.from_numpy(prob), affine=torch.as_tensor(affine))
    engine = SimpleNamespace(state=SimpleNamespace(batch=[{"scan_id": "crop"}], output=[{"pred": pred}]))
    ProbabilityWriter(tmp_path)(engine)
    written = nib.load(tmp_path / "crop_prob.nii.gz")
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(written.dataobj), prob[0])


def test_a_radiograph_keeps_its_pixel_size(tmp_path):
    affine = torch.diag(torch.tensor([0.05, 0.05, 1.0]))
    pred = MetaTensor(torch.rand(1, 8, 6), affine=affine)
    engine = SimpleNamespace(state=SimpleNamespace(batch=[{"scan_id": "r"}], output=[{"pred": pred}]))
    ProbabilityWriter(tmp_path)(engine)
    written = nib.load(tmp_path / "r_prob.nii.gz")
    assert written.shape == (8, 6, 1)
    np.testing.assert_allclose(np.diag(written.affine)[:3], [0.05, 0.05, 0.05], atol=1e-7)
