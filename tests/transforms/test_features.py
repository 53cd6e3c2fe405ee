"""Feature maps: known answers on constants and steps, types, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from testkit import DEVICES, KINDS, as_kind

from dfseg.errors import InputError
from dfseg.transforms.features import (
    DarkFieldAttenuationRatio,
    DarkFieldAttenuationRatiod,
    DifferentialDarkField,
    DifferentialDarkFieldd,
    LocalTexture,
    LocalTextured,
    radius_voxels,
)


def _step(n=32):
    """(1, n, 8, 8): 1 for x < n/2, 2 for x >= n/2."""
    img = np.ones((1, n, 8, 8), np.float32)
    img[:, n // 2:] = 2.0
    return img


def test_radius_voxels():
    assert radius_voxels(2.0, 0.5) == (4, 4, 4)
    assert radius_voxels(1.0, (1.0, 0.5, 2.0)) == (1, 2, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_constant_gives_zero(kind):
    img = as_kind(kind, np.full((5, 12, 12, 12), 0.37, np.float32))
    mask = as_kind(kind, np.ones((1, 12, 12, 12), np.uint8))
    ddf = DifferentialDarkField(2.0, 0.5)(img, mask)
    tex = LocalTexture(1.0, 0.5)(img)
    assert type(ddf) is type(img) and ddf.shape == (6, 12, 12, 12) and tex.shape == (10, 12, 12, 12)
    assert np.abs(np.asarray(ddf)[5]).max() < 1e-6
    assert np.abs(np.asarray(tex)[5:]).max() < 1e-6


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("r", [1, 3])
def test_step_known_answers(kind, r):
    img = as_kind(kind, _step())
    ddf = np.asarray(DifferentialDarkField(float(r), 1.0, append=False)(img))
    tex = np.asarray(LocalTexture(float(r), 1.0, append=False)(img))
    assert ddf.shape == (1, 32, 8, 8)
    # first voxel of the high side: window holds r ones and r+1 twos
    assert ddf[0, 16, 4, 4] == pytest.approx(r / (2 * r + 1), abs=1e-6)
    assert ddf[0, 15, 4, 4] == pytest.approx(-r / (2 * r + 1), abs=1e-6)
    assert abs(ddf[0, 4, 4, 4]) < 1e-6 and abs(ddf[0, 28, 4, 4]) < 1e-6
    p = (r + 1) / (2 * r + 1)
    assert tex[0, 16, 4, 4] == pytest.approx(np.sqrt(p * (1 - p)), abs=1e-5)
    assert tex[0, 4, 4, 4] < 1e-6


def test_differential_respects_mask():
    """Background comes only from inside the mask: a brighter region outside does not leak in."""
    img = np.full((1, 16, 16, 16), 0.5, np.float32)
    img[:, :, :8] = 5.0
    mask = np.zeros((16, 16, 16), np.uint8)
    mask[:, 8:] = 1
    out = DifferentialDarkField(3.0, append=False)(img, mask)
    assert np.abs(out).max() < 1e-6  # inside: constant 0.5, outside: zeroed


@pytest.mark.parametrize("kind", KINDS)
def test_ratio_safe_division(kind):
    df = np.stack([np.full((4, 4, 4), 0.2), np.zeros((4, 4, 4))]).astype(np.float32)
    attn = np.full((1, 4, 4, 4), 0.04, np.float32)
    attn[0, 0] = 0.0
    out = DarkFieldAttenuationRatio()(as_kind(kind, df), as_kind(kind, attn))
    assert type(out) is type(as_kind(kind, df)) and out.shape == (1, 4, 4, 4)
    out = np.asarray(out)
    assert np.all(out[0, 0] == 0) and np.allclose(out[0, 1:], 5.0)


def test_ratio_shape_mismatch():
    with pytest.raises(InputError, match="attn: shape"):
        DarkFieldAttenuationRatio()(np.ones((5, 4, 4, 4)), np.ones((1, 4, 4, 3)))


@pytest.mark.parametrize("kind", KINDS)
def test_dict_versions(kind):
    df = as_kind(kind, np.concatenate([_step(), np.zeros((4, 32, 8, 8), np.float32)]))
    data = {"df": df, "attn": as_kind(kind, np.full((1, 32, 8, 8), 0.5, np.float32)),
            "lung_mask": np.ones((1, 32, 8, 8)), "meta": {"voxel_mm": 0.5}}
    out = DifferentialDarkFieldd("df", radius_mm=1.0)(data)  # 2 voxels at 0.5 mm
    assert out["df"].shape == (6, 32, 8, 8)
    assert float(np.asarray(out["df"])[5, 16, 4, 4]) == pytest.approx(2 / 5, abs=1e-6)
    out = DarkFieldAttenuationRatiod("df")(data)
    assert np.allclose(np.asarray(out["df_attn_ratio"])[0, 20], 4.0)
    out = LocalTextured("df", channels=[0], output_key="tex")(data)
    assert out["tex"].shape == (1, 32, 8, 8) and out["df"] is df


def test_dict_voxel_size_given_or_from_meta_or_affine():
    """An explicit voxel_mm wins, else the metadata, else the image's affine (dfseg.data.scan_value)."""
    img = _step()
    want = np.asarray(DifferentialDarkField(1.0, 0.5, append=False)(img))
    affine = torch.diag(torch.tensor([0.5, 0.5, 0.5, 1.0], dtype=torch.float64))
    for data, given in (({"df": img, "meta": {"voxel_mm": 2.0}}, 0.5),
                        ({"df": img, "meta": {"voxel_mm": 0.5}}, None),
                        ({"df": MetaTensor(torch.as_tensor(img), affine=affine)}, None)):
        out = DifferentialDarkFieldd("df", mask_key=None, radius_mm=1.0, voxel_mm=given, output_key="ddf")(data)
        np.testing.assert_allclose(np.asarray(out["ddf"]), want, atol=1e-6)
    with pytest.raises(InputError, match="meta.voxel_mm: missing"):
        DifferentialDarkFieldd("df", mask_key=None)({"df": img})


@pytest.mark.parametrize("device", DEVICES)
def test_torch_device_and_dtype(device):
    img = torch.as_tensor(_step(), device=device)
    for out in (DifferentialDarkField(1.0)(img), LocalTexture(1.0)(img),
                DarkFieldAttenuationRatio()(img, torch.ones_like(img))):
        assert out.device == img.device and out.dtype == torch.float32
