"""Dark frames and phase-stepping retrieval transforms: numbers, types, devices, dictionary keys, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from testkit import DEVICES, KINDS, as_kind

from dfseg.errors import InputError
from dfseg.physics.stepping import retrieve_projections, step_phases, wrap_phase
from dfseg.transforms import (
    DarkFrameSubtraction,
    DarkFrameSubtractiond,
    PhaseSteppingRetrieval,
    PhaseSteppingRetrievalD,
    PhaseSteppingRetrievald,
)

AIR = 3


def raw_scan(seed=0, *, n=2, a=4, m=5, u=16, z=3, f=2, dose=0.0, jitter=0.0):
    """Noise-free raw frames with known T, D, dphi: moire flats, a body between ``AIR`` air columns, darks."""
    rng = np.random.default_rng(seed)
    uu, zz = np.meshgrid(np.arange(u), np.arange(z), indexing="ij")
    a0 = 800.0 * (1 + 0.1 * np.sin(uu / 5.0))
    v = 0.3 + 0.03 * np.cos(zz + uu / 7.0)
    phi = 2 * np.pi * 1.2 * uu / u + 0.5 * zz
    body = (uu >= AIR) & (uu < u - AIR)
    t = np.where(body, np.exp(-0.7 - 0.1 * rng.random((n, a, u, z))), 1.0)
    d = np.where(body, np.exp(-0.4 - 0.1 * rng.random((n, a, u, z))), 1.0)
    dphi = np.where(body, rng.uniform(-1, 1, (n, a, u, z)), 0.0)
    xs = step_phases(m) + jitter * rng.standard_normal((n, a, m))
    xf = step_phases(m) + jitter * rng.standard_normal((n, f, m))
    g = 1 + dose * rng.standard_normal((n, a, m))
    g /= g.mean(axis=-1, keepdims=True)
    dark = 40.0 + rng.uniform(0, 4, (4, u, z))
    sample = g[..., None, None] * (a0 * t)[:, :, None] * (
        1 + (v * d)[:, :, None] * np.cos(xs[..., None, None] + (phi + dphi)[:, :, None]))
    flats = a0 * (1 + v * np.cos(xf[..., None, None] + phi)) * np.ones((n, f, m, 1, 1))
    return {"raw_sample": sample + dark.mean(0), "raw_flat": flats + dark.mean(0), "raw_dark": dark,
            "T": t, "D": d, "dphi": dphi, "phases": xs, "flat_phases": xf, "dose": g}


def assert_exact(out_t, out_d, out_dphi, scan, tol):
    np.testing.assert_allclose(np.asarray(out_t.cpu() if isinstance(out_t, torch.Tensor) else out_t), scan["T"],
                               rtol=tol)
    np.testing.assert_allclose(np.asarray(out_d.cpu() if isinstance(out_d, torch.Tensor) else out_d), scan["D"],
                               rtol=tol)
    dphi = np.asarray(out_dphi.cpu() if isinstance(out_dphi, torch.Tensor) else out_dphi)
    np.testing.assert_allclose(wrap_phase(dphi - scan["dphi"]), 0, atol=tol)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_dark_frame_subtraction_types_and_values(kind, device):
    if kind == "numpy" and device != "cpu":
        pytest.skip("numpy lives on the CPU")
    rng = np.random.default_rng(1)
    frames = rng.integers(100, 1000, (2, 3, 4, 6, 5)).astype(np.uint16)
    darks = rng.uniform(10, 20, (7, 6, 5))
    out = DarkFrameSubtraction()(as_kind(kind, frames, device), as_kind(kind, darks, device))
    assert type(out) is type(as_kind(kind, frames, device))
    assert out.dtype == (torch.float32 if kind == "torch" else np.float32)
    if kind == "torch":
        assert out.device.type == torch.device(device).type
    np.testing.assert_allclose(np.asarray(out.cpu() if kind == "torch" else out), frames - darks.mean(0), rtol=1e-6)
    # one dark frame, float64 kept, clipping
    f64 = frames.astype(np.float64)
    out = DarkFrameSubtraction(as_kind(kind, darks[0] * 50, device), clip=True)(as_kind(kind, f64, device))
    assert out.dtype == (torch.float64 if kind == "torch" else np.float64)
    np.testing.assert_allclose(np.asarray(out.cpu() if kind == "torch" else out), np.maximum(f64 - 50 * darks[0], 0))


def test_dark_frame_subtraction_dict_and_errors():
    scan = raw_scan()
    out = DarkFrameSubtractiond()(scan)
    np.testing.assert_allclose(out["raw_flat"], scan["raw_flat"] - scan["raw_dark"].mean(0), rtol=1e-6)
    assert out["raw_sample"].shape == scan["raw_sample"].shape
    no_dark = {k: v for k, v in scan.items() if k != "raw_dark"}
    with pytest.raises(InputError, match="raw_dark: dark frames missing"):
        DarkFrameSubtractiond()(no_dark)
    assert DarkFrameSubtractiond(allow_missing_keys=True)(no_dark)["raw_sample"] is scan["raw_sample"]
    with pytest.raises(InputError, match=r"dark: expected a dark frame \(U, Z\)"):
        DarkFrameSubtraction()(scan["raw_sample"], scan["raw_dark"][:, :4])
    with pytest.raises(InputError, match="no dark frame"):
        DarkFrameSubtraction()(scan["raw_sample"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device", DEVICES)
def test_retrieval_exact_type_and_device(kind, device):
    if kind == "numpy" and device != "cpu":
        pytest.skip("numpy lives on the CPU")
    scan = raw_scan(2, dose=0.05)
    args = [as_kind(kind, scan[k], device) for k in ("raw_sample", "raw_flat", "raw_dark")]
    t, d, dphi = PhaseSteppingRetrieval(air_columns=AIR)(*args)
    for out in (t, d, dphi):
        assert type(out) is type(args[0]) and out.shape == scan["T"].shape
        assert out.dtype == (torch.float64 if kind == "torch" else np.float64)  # float64 input stays float64
        if kind == "torch":
            assert out.device.type == torch.device(device).type
    assert_exact(t, d, dphi, scan, 1e-10)
    # float32 frames give float32 stacks (still good to float32 precision)
    t32, _, _ = PhaseSteppingRetrieval(air_columns=AIR)(*(as_kind(kind, np.float32(scan[k]), device)
                                                          for k in ("raw_sample", "raw_flat", "raw_dark")))
    assert t32.dtype == (torch.float32 if kind == "torch" else np.float32)
    np.testing.assert_allclose(np.asarray(t32.cpu() if kind == "torch" else t32), scan["T"], rtol=1e-4)


def test_retrieval_matches_physics_and_options():
    scan = raw_scan(3, jitter=0.15, m=6)
    res = PhaseSteppingRetrieval(air_columns=AIR, estimate_phases=True).retrieve(
        scan["raw_sample"], scan["raw_flat"], scan["raw_dark"])
    ref = retrieve_projections(scan["raw_sample"], scan["raw_flat"], darks=scan["raw_dark"], air_columns=AIR,
                               estimate_phases=True)
    for key in ref:
        np.testing.assert_allclose(res[key], ref[key], rtol=1e-12, atol=1e-12)
    assert_exact(res["T"], res["D"], res["dphi"], scan, 1e-8)
    # the true phases given instead of estimated: the same numbers
    t, d, dphi = PhaseSteppingRetrieval(sample_phases=scan["phases"], flat_phases=scan["flat_phases"],
                                        method="lsq")(scan["raw_sample"], scan["raw_flat"], scan["raw_dark"])
    assert_exact(t, d, dphi, scan, 1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_retrieval_dict(kind):
    scan = raw_scan(4, dose=0.05)
    data = {k: as_kind(kind, scan[k]) for k in ("raw_sample", "raw_flat", "raw_dark")}
    data["meta"] = {"air_columns": AIR, "flat_indices": [0, 3]}
    out = PhaseSteppingRetrievald(steps_key="steps")(data)
    assert set(out) >= {"proj_T", "proj_D", "proj_dphi", "steps", "raw_sample", "meta"}
    assert type(out["proj_T"]) is type(data["raw_sample"])
    assert_exact(out["proj_T"], out["proj_D"], out["proj_dphi"], scan, 1e-10)
    np.testing.assert_allclose(np.asarray(out["steps"]["dose"]), scan["dose"], rtol=1e-10)
    # without the air columns in meta: no dose correction, and D is off
    del data["meta"]
    out = PhaseSteppingRetrievalD(output_keys=("T", "D", "P"))(data)
    assert {"T", "D", "P"} <= set(out) and "proj_T" not in out
    assert np.abs(np.asarray(out["D"]) / scan["D"] - 1).max() > 1e-3
    # MetaTensor in, MetaTensor out
    mt = {k: MetaTensor(torch.as_tensor(scan[k])) for k in ("raw_sample", "raw_flat")}
    out = PhaseSteppingRetrievald(air_columns=AIR)(mt)
    assert isinstance(out["proj_T"], MetaTensor) and out["proj_T"].shape == scan["T"].shape


def test_retrieval_errors():
    scan = raw_scan(5)
    s, f, dk = scan["raw_sample"], scan["raw_flat"], scan["raw_dark"]
    op = PhaseSteppingRetrieval()
    cases = [
        (lambda: op(s[:, :, :2], f[:, :, :2]), "sample: need at least 3 phase steps, got 2"),
        (lambda: op(s, f[..., :2]), "flats: shape .* does not match the sample's"),
        (lambda: op(s, np.where(np.arange(3) == 0, np.nan, f)), "flats: holds NaN"),
        (lambda: op(np.where(np.arange(3) == 0, np.inf, s), f), "sample: holds NaN"),
        (lambda: op(s, f * 0), "flats: zero or negative mean counts"),
        (lambda: op(s, f, dk[:, :2]), "darks: expected a dark frame"),
        (lambda: PhaseSteppingRetrieval(method="svd"), "method: must be one of"),
        (lambda: PhaseSteppingRetrievald()({"raw_sample": s}), "raw_flat: raw frames missing"),
        (lambda: PhaseSteppingRetrievald(keys="raw_sample"), "keys must be"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert "proj_T" not in PhaseSteppingRetrievald(allow_missing_keys=True)({"raw_sample": s})
