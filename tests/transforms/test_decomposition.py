"""Directional decomposition: closed-form LS, docs/physics.md check 3, types, devices, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import DEVICES, KINDS, as_kind

from dfseg.errors import InputError
from dfseg.transforms.decomposition import (
    DF_CHANNELS,
    DirectionalDecomposition,
    DirectionalDecompositiond,
    decomposition_operator,
    fit_orientation,
)


def _model(angles_deg, c0, c2, theta_deg):
    w = np.deg2rad(np.asarray(angles_deg, float))
    return c0 + c2 * np.cos(2 * (w - np.deg2rad(theta_deg)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("angles", [[0, 45, 90, 135], [0, 60, 120], [10, 35, 80, 100, 170], [0, 30, 60, 90, 120, 150, 180]])
def test_exact_recovery_any_angle_set(kind, angles):
    rng = np.random.default_rng(0)
    shape = (6, 5, 4)
    c0 = rng.uniform(0.5, 2, shape)
    c2 = rng.uniform(0.0, 0.4, shape)
    theta = rng.uniform(-89, 89, shape)
    y = np.stack([c0 + c2 * np.cos(2 * np.deg2rad(a - theta)) for a in angles])
    out = DirectionalDecomposition(angles)(as_kind(kind, y))
    assert type(out) is type(as_kind(kind, y))
    out = np.asarray(out)
    assert out.shape == (5, *shape)
    np.testing.assert_allclose(out[0], c0, atol=1e-10)
    np.testing.assert_allclose(out[1], c2, atol=1e-10)
    np.testing.assert_allclose(out[2], c2 / c0, atol=1e-10)
    np.testing.assert_allclose(out[3], c2 * np.cos(2 * np.deg2rad(theta)), atol=1e-10)
    np.testing.assert_allclose(out[4], c2 * np.sin(2 * np.deg2rad(theta)), atol=1e-10)
    th = np.asarray(fit_orientation(as_kind(kind, y), angles))
    dt = (th - theta + 90) % 180 - 90
    np.testing.assert_allclose(dt[c2 > 1e-3], 0, atol=1e-6)


def test_equally_spaced_matches_closed_form_sums():
    angles = np.arange(8) * 22.5
    p = decomposition_operator(angles)
    w = np.deg2rad(angles)
    np.testing.assert_allclose(p[0], 1 / 8, atol=1e-12)
    np.testing.assert_allclose(p[1], 2 / 8 * np.cos(2 * w), atol=1e-12)
    np.testing.assert_allclose(p[2], 2 / 8 * np.sin(2 * w), atol=1e-12)


@pytest.mark.parametrize("n, expected_deg", [(3, 2.34), (4, 2.03), (8, 1.43)])
def test_orientation_noise_physics_check3(n, expected_deg):
    """c0=1, c2=0.2, theta=30 deg, sigma=0.02: std(theta) within 5 % of theory, |bias| < 0.2 deg."""
    rng = np.random.default_rng(1234 + n)
    angles = np.arange(n) * 180.0 / n
    clean = _model(angles, 1.0, 0.2, 30.0)
    y = clean[:, None] + rng.normal(0.0, 0.02, (n, 200_000))
    theta = fit_orientation(y, angles)
    theory = np.rad2deg(0.02 / (0.2 * np.sqrt(2 * n)))
    assert abs(theory - expected_deg) < 0.01
    assert abs(theta.std() / theory - 1) < 0.05
    assert abs(theta.mean() - 30.0) < 0.2


def test_two_equal_layers_at_0_and_60_fit_30():
    angles = [0, 45, 90, 135]
    y = _model(angles, 0.5, 0.1, 0.0) + _model(angles, 0.5, 0.1, 60.0)
    assert float(fit_orientation(y, angles)) == pytest.approx(30.0, abs=1e-9)
    out = DirectionalDecomposition(angles)(y)
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx(0.1)  # |e^{0} + e^{i 120deg}| * 0.1 = 0.1


@pytest.mark.parametrize("angles", [[0, 90], [0, 180, 90], [10, 190, 370]])
def test_fewer_than_three_distinct_orientations_raise(angles):
    with pytest.raises(ValueError, match="needs >= 3 distinct grating orientations mod 180 deg"):
        DirectionalDecomposition(angles)


def test_n2_message_names_angles():
    with pytest.raises(ValueError) as err:
        DirectionalDecomposition([0, 90])
    assert str(err.value) == ("directional decomposition needs >= 3 distinct grating orientations "
                              "mod 180 deg, got [0.0, 90.0]")


def test_channel_count_mismatch_names_counts():
    with pytest.raises(InputError, match=r"df: expected 4 orientation channels .* found 3"):
        DirectionalDecomposition([0, 45, 90, 135])(np.zeros((3, 4, 4, 4)))


@pytest.mark.parametrize("kind", KINDS)
def test_zero_c0_gives_zero_anisotropy(kind):
    y = np.zeros((4, 3, 3, 3), np.float32)
    out = DirectionalDecomposition([0, 45, 90, 135])(as_kind(kind, y))
    assert np.all(np.isfinite(np.asarray(out)))
    assert np.all(np.asarray(out)[2] == 0)


def test_weighted_ls_ignores_zero_weight_outlier():
    angles = [0, 45, 90, 135, 20]
    y = _model(angles, 1.0, 0.2, 10.0)
    y[4] += 5.0  # corrupt the fifth orientation, then give it zero weight
    out = DirectionalDecomposition(angles, weights=[1, 1, 1, 1, 0])(y)
    assert out[0] == pytest.approx(1.0) and out[1] == pytest.approx(0.2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_keeps_device_and_dtype(device, dtype):
    y = torch.rand(4, 8, 8, 8, dtype=dtype, device=device)
    out = DirectionalDecomposition([0, 45, 90, 135])(y)
    assert out.device == y.device and out.dtype == dtype and out.shape == (5, 8, 8, 8)
    ref = DirectionalDecomposition([0, 45, 90, 135])(y.cpu().numpy())
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["meta", "other_meta_key", "given"])
def test_dict_reads_angles_from_data(kind, where):
    angles = [0, 60, 120]
    y = as_kind(kind, np.stack([_model(angles, 1.0, 0.3, 45.0)[i] * np.ones((4, 4, 4)) for i in range(3)]))
    data = {"df": y, "attn": np.ones((1, 4, 4, 4))}
    if where == "meta":
        data["meta"] = {"orientations_deg": angles}
        op = DirectionalDecompositiond("df")
    elif where == "other_meta_key":
        data["scan"] = {"orientations_deg": angles}
        op = DirectionalDecompositiond("df", meta_key="scan")
    else:  # an explicit value wins over the metadata
        data["meta"] = {"orientations_deg": [0, 45, 90, 135]}
        op = DirectionalDecompositiond("df", angles_deg=angles)
    out = op(data)
    assert type(out["df"]) is type(y) and out["df"].shape[0] == len(DF_CHANNELS)
    assert np.allclose(np.asarray(out["df"])[4], 0.3)  # sin 90deg
    assert out["attn"] is data["attn"]


def test_dict_missing_angles_and_missing_key():
    with pytest.raises(InputError, match="meta.orientations_deg: missing"):
        DirectionalDecompositiond("df")({"df": np.zeros((4, 2, 2, 2))})
    out = DirectionalDecompositiond("df", angles_deg=[0, 45, 90, 135], allow_missing_keys=True)({"x": 1})
    assert out == {"x": 1}
