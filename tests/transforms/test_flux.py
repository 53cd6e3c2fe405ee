"""Flux, drift and reference-region normalization (docs/physics.md check 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import KINDS, as_kind

from dfseg.errors import InputError
from dfseg.physics import phase_stepping_measurement
from dfseg.transforms.flux import (
    DetectorDriftCorrection,
    DetectorDriftCorrectiond,
    FluxNormalization,
    FluxNormalizationD,
    ReferenceNormalization,
    ReferenceNormalizationd,
)

AIR = 4


def drifted_stack(rng, noise=True):
    """(N, A, U, Z) transmission: a sample in the middle, 5 % slow drift + 1 % flux, Poisson-like noise."""
    n, a, u, z = 4, 90, 32, 8
    t_true = np.ones((n, a, u, z))
    x = np.linspace(-1, 1, u - 2 * AIR)
    t_true[:, :, AIR:u - AIR] = np.exp(-0.8 * np.sqrt(np.clip(1 - x**2, 0, 1)))[None, None, :, None]
    drift = 1.0 + 0.05 * np.linspace(0, 1, a) ** 1.5
    gain = (1.0 + 0.01 * rng.standard_normal((n, a))) * drift[None]
    if not noise:
        return t_true, t_true * gain[:, :, None, None]
    t_hat, _ = phase_stepping_measurement(t_true, np.ones_like(t_true), v_ref=0.25, photons_per_pixel=2e4, rng=rng,
                                          gain=gain[:, :, None, None])
    return t_true, t_hat


@pytest.mark.parametrize("kind", KINDS)
def test_flux_normalization_removes_5_percent_drift(kind):
    t_true, t_meas = drifted_stack(np.random.default_rng(0))
    inp = as_kind(kind, t_meas.astype(np.float32))
    out = FluxNormalization(AIR)(inp)
    assert type(out) is type(inp) and out.shape == inp.shape
    out = np.asarray(out)
    sample = (slice(None), slice(None), slice(AIR, 32 - AIR))
    bias_before = np.mean(t_meas[sample] - t_true[sample])
    bias = np.mean(out[sample] - t_true[sample])
    print(f"T bias before {bias_before:.2e}, after flux normalization {bias:.2e}")
    assert abs(bias_before) > 0.01
    assert abs(bias) < 1e-3
    # per angle too: the drift is gone along the scan
    per_angle = (out[sample] - t_true[sample]).mean(axis=(0, 2, 3))
    assert np.max(np.abs(np.polyfit(np.arange(per_angle.size), per_angle, 1)[0] * per_angle.size)) < 2e-3


@pytest.mark.parametrize("kind", KINDS)
def test_drift_correction_smooth_gain(kind):
    rng = np.random.default_rng(1)
    t_true, t_meas = drifted_stack(rng, noise=False)
    # no flux jitter: a pure slow drift is fitted exactly by a cubic over the angle index
    n, a = t_meas.shape[:2]
    drift = 1.0 + 0.05 * np.sin(np.linspace(0, 1.5, a))
    t_meas = t_true * drift[None, :, None, None]
    inp = as_kind(kind, t_meas)
    out = DetectorDriftCorrection(AIR, degree=3)(inp)
    assert type(out) is type(inp) and out.dtype == (torch.float64 if kind == "torch" else np.float64)
    err = np.abs(np.asarray(out) - t_true).max()
    assert err < 1e-4


def test_drift_correction_noisy_bias_and_dict():
    rng = np.random.default_rng(2)
    a = 90
    t_true, _ = drifted_stack(rng, noise=False)

    drift = (1.0 + 0.05 * np.linspace(0, 1, a))[None, :, None, None]
    t_meas, d_meas = phase_stepping_measurement(t_true, np.ones_like(t_true), v_ref=0.25, photons_per_pixel=2e4,
                                                rng=rng, gain=drift)
    data = {"proj_T": t_meas, "proj_D": d_meas, "meta": {"air_columns": AIR}}
    out = DetectorDriftCorrectiond(keys="proj_T", degree=2)(data)
    bias = np.mean(out["proj_T"][:, :, AIR:-AIR] - t_true[:, :, AIR:-AIR])
    print(f"drift correction T bias {bias:.2e}")
    assert abs(bias) < 1e-3
    assert out["proj_D"] is d_meas  # dark-field untouched


def test_dict_reads_air_columns_and_missing_meta_is_named():
    t = np.ones((1, 3, 16, 2))
    t[:, 1] *= 1.05
    out = FluxNormalizationD(keys="proj_T")({"proj_T": t, "meta": {"air_columns": 2}})
    np.testing.assert_allclose(out["proj_T"], 1.0)
    with pytest.raises(InputError, match="meta.air_columns"):
        FluxNormalizationD(keys="proj_T")({"proj_T": t, "meta": {}})
    with pytest.raises(InputError, match="air_columns"):
        FluxNormalization(9)(t)
    assert FluxNormalizationD(keys="x", allow_missing_keys=True)({"proj_T": t}) == {"proj_T": t}


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0, -1.0])
@pytest.mark.parametrize("make", [FluxNormalization, DetectorDriftCorrection])
def test_bad_air_region_is_a_one_line_error(make, bad):
    """NaN/inf in the air columns, or an air mean <= 0, is refused before any division or fit."""
    t = np.ones((1, 5, 8, 2))
    if bad in (0.0, -1.0):
        t[0, 2, :2] = bad
        t[0, 2, -2:] = bad
    else:
        t[0, 2, 0, 0] = bad
    for x in (t, torch.as_tensor(t)):
        with pytest.raises(InputError, match="proj_T.*air columns"):
            make(2)(x)


@pytest.mark.parametrize("kind", KINDS)
def test_reference_normalization(kind):
    vol = np.full((2, 8, 8, 8), 3.0)
    vol[1] = 5.0
    vol[:, 2:4, 2:4, 2:4] *= 2.0
    inp = as_kind(kind, vol)
    out = ReferenceNormalization((slice(0, 2), slice(0, 2), slice(0, 2)))(inp)
    assert type(out) is type(inp)
    out = np.asarray(out)
    np.testing.assert_allclose(out[:, 0, 0, 0], 1.0)
    np.testing.assert_allclose(out[:, 3, 3, 3], 2.0)
    mask = np.zeros((1, 8, 8, 8), bool)
    mask[0, 6:, 6:, 6:] = True
    d = ReferenceNormalizationd(keys="df", mask_key="ref", target=0.5)({"df": inp, "ref": mask})
    np.testing.assert_allclose(np.asarray(d["df"])[:, 7, 7, 7], 0.5)
    with pytest.raises(InputError, match="empty"):
        ReferenceNormalization()(vol, np.zeros((8, 8, 8), bool))
    bad = vol.copy()
    bad[0, 1, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        ReferenceNormalization((slice(0, 2), slice(0, 2), slice(0, 2)))(as_kind(kind, bad))
    bad[0, 1, 1, 1] = 3.0
    bad[1, 5, 5, 5] = np.inf  # outside the reference region: normalised like any other voxel
    assert np.isinf(np.asarray(ReferenceNormalization((slice(0, 2),) * 3)(bad))[1, 5, 5, 5])
