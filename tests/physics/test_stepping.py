"""Phase-stepping retrieval (dfseg.physics.stepping): known answers, FFT == LSQ == forward.retrieve,
Poisson noise against the estimator's predicted spread, jittered steps, dose fluctuations, flats
interpolated in time, a whole scan, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import DEVICES, KINDS, as_kind

from dfseg.errors import InputError
from dfseg.physics import forward
from dfseg.physics.stepping import (
    estimate_steps,
    estimate_steps_from_reference,
    fit_curves,
    interpolate_flats,
    retrieve_projections,
    retrieve_signals,
    signal_ratios,
    step_phases,
    subtract_dark,
    wrap_phase,
)


def curves(a0, v, phi, x, g=1.0):
    """Frames ``(..., M, *pix)``: ``g_k a0 (1 + V cos(x_k + phi))``; x, g ``(..., M)``, a0, v, phi ``(..., *pix)``."""
    x = np.asarray(x, float)
    g = np.broadcast_to(np.asarray(g, float), x.shape)
    extra = np.ndim(a0) - (x.ndim - 1)  # pixel dimensions
    xs = x.reshape(x.shape + (1,) * extra)
    gs = g.reshape(g.shape + (1,) * extra)
    lead = x.ndim - 1
    a0, v, phi = (np.expand_dims(np.asarray(q, float), lead) for q in (a0, v, phi))
    return gs * a0 * (1 + v * np.cos(xs + phi))


def fringe(u, z, shift=0.0):
    """A flat field with moire fringes (1.3 periods across the detector): a0, V, phi ``(u, z)``."""
    uu, zz = np.meshgrid(np.arange(u), np.arange(z), indexing="ij")
    a0 = 1000.0 * (1 + 0.1 * np.sin(uu / 7.0)) * (1 + 0.05 * np.cos(zz / 3.0))
    v = 0.25 + 0.05 * np.cos(zz / 5.0 + uu / 11.0)
    phi = wrap_phase(2 * np.pi * (1.3 * uu / u + 0.4 * zz / z) + 0.3 + shift)
    return a0, v, phi


def close_mod_offset(est, true):
    """Largest phase error once the common offset (which no data can tell) is removed, per leading index."""
    d = wrap_phase(np.asarray(est) - np.asarray(true))
    off = np.angle(np.exp(1j * d).mean(axis=-1, keepdims=True))
    return np.abs(wrap_phase(d - off)).max()


# ------------------------------------------------------------------------------------------------ curves


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method, m", [("fft", 3), ("fft", 8), ("lsq", 3), ("lsq", 5), ("lsq", 11), ("auto", 4)])
def test_known_answer_exact(kind, method, m):
    rng = np.random.default_rng(m)
    lead, pix = (2, 3), (4, 5)
    a0s, a0r = rng.uniform(100, 1000, (*lead, *pix)), rng.uniform(1000, 2000, (*lead, *pix))
    vs, vr = rng.uniform(0.05, 0.3, (*lead, *pix)), rng.uniform(0.3, 0.5, (*lead, *pix))
    phis, phir = rng.uniform(-np.pi, np.pi, (2, *lead, *pix))
    if method == "lsq":  # any phases, different per frame, for sample and flat
        xs, xr = rng.uniform(0, 2 * np.pi, (2, *lead, m))
    else:  # equally spaced over one period, with an offset per projection
        xs = step_phases(m) + rng.uniform(-1, 1, (*lead, 1))
        xr = step_phases(m) + rng.uniform(-1, 1, (*lead, 1))
    s, r = curves(a0s, vs, phis, xs), curves(a0r, vr, phir, xr)
    a0, a1, phi = fit_curves(as_kind(kind, s), as_kind(kind, xs), axis=2, method=method)
    assert type(a0) is type(as_kind(kind, s)) and a0.shape == (*lead, *pix)
    np.testing.assert_allclose(np.asarray(a0), a0s, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(a1), a0s * vs, rtol=1e-10)
    np.testing.assert_allclose(wrap_phase(np.asarray(phi) - phis), 0, atol=1e-10)
    t, d, dphi = retrieve_signals(as_kind(kind, s), as_kind(kind, r), as_kind(kind, xs), as_kind(kind, xr),
                                  axis=2, method=method)
    assert type(t) is type(as_kind(kind, s)) and t.dtype in (np.float64, torch.float64)
    np.testing.assert_allclose(np.asarray(t), a0s / a0r, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(d), vs / vr, rtol=1e-10)
    np.testing.assert_allclose(wrap_phase(np.asarray(dphi) - (phis - phir)), 0, atol=1e-10)
    assert np.all(np.abs(np.asarray(dphi)) <= np.pi)
    t2, d2, dphi2 = signal_ratios(fit_curves(s, xs, axis=2), fit_curves(r, xr, axis=2))
    np.testing.assert_allclose(t2, np.asarray(t), rtol=1e-12)
    np.testing.assert_allclose(dphi2, np.asarray(dphi), atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("m", [3, 5, 8])
def test_fft_equals_lsq_equals_forward_retrieve(kind, m):
    """Equally spaced steps: the FFT path, the least squares path and forward.retrieve give one answer."""
    rng = np.random.default_rng(10 + m)
    x = step_phases(m)
    s = rng.poisson(curves(np.full((6, 7), 500.0), 0.2, rng.uniform(-3, 3, (6, 7)), x)).astype(float)
    r = rng.poisson(curves(np.full((6, 7), 900.0), 0.3, rng.uniform(-3, 3, (6, 7)), x)).astype(float)
    t_ref, d_ref = forward.retrieve(s, r, axis=0)
    for method in ("fft", "lsq", "auto"):
        t, d, _ = retrieve_signals(as_kind(kind, s), as_kind(kind, r), axis=0, method=method)
        np.testing.assert_allclose(np.asarray(t), t_ref, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(d), d_ref, rtol=1e-11)
    phi_fft = fit_curves(s, method="fft")[2]
    phi_lsq = fit_curves(s, x, method="lsq")[2]
    np.testing.assert_allclose(wrap_phase(phi_fft - phi_lsq), 0, atol=1e-11)


@pytest.mark.parametrize("method", ["fft", "lsq"])
def test_poisson_noise_spread_matches_prediction(method):
    """Spread of T, D, dphi over 40 000 noisy pixels against the delta-method variances.

    For M >= 4 equally spaced steps and N counts over all steps, the first-harmonic estimator has
    var(ln a0) = 1/N, var(ln V) = (2 - V^2) / (N V^2) (forward.visibility_log_variance) and
    var(phi) = 2 / (N V^2); sample and flat are independent, so their variances add. With 40 000
    pixels the measured standard deviations carry ~0.4 % sampling error; the delta method's
    neglected terms are O(var) ~ 1 % here. Tolerance: 5 %.
    """
    rng = np.random.default_rng(7)
    m, pix = 8, (200, 200)
    n_r, v_r, t_true, d_true, dphi_true = 2e4, 0.25, 0.5, 0.8, 0.4
    n_s, v_s = n_r * t_true, v_r * d_true
    x = step_phases(m)
    phi_r = rng.uniform(-np.pi, np.pi, pix)
    s = rng.poisson(curves(np.full(pix, n_s / m), v_s, phi_r + dphi_true, x)).astype(float)
    r = rng.poisson(curves(np.full(pix, n_r / m), v_r, phi_r, x)).astype(float)
    t, d, dphi = retrieve_signals(s, r, x if method == "lsq" else None, x if method == "lsq" else None,
                                  method=method)
    predicted = {
        "ln T": np.sqrt(1 / n_s + 1 / n_r),
        "ln D": np.sqrt(forward.visibility_log_variance(n_s, v_s) + forward.visibility_log_variance(n_r, v_r)),
        "dphi": np.sqrt(2 / (n_s * v_s**2) + 2 / (n_r * v_r**2)),
    }
    measured = {"ln T": np.log(t).std(), "ln D": np.log(d).std(), "dphi": dphi.std()}
    for key, value in predicted.items():
        print(f"{method} std {key}: measured {measured[key]:.5f}, predicted {value:.5f}, "
              f"ratio {measured[key] / value:.4f}")
        assert abs(measured[key] / value - 1) < 0.05, key
    # and unbiased within a fraction of the spread of the mean
    assert abs(np.log(t).mean() - np.log(t_true)) < 5 * predicted["ln T"] / 200
    assert abs(np.mean(dphi) - dphi_true) < 5 * predicted["dphi"] / 200
    assert abs(np.log(d).mean() - np.log(d_true)) < 0.01


# ------------------------------------------------------------------------------------------------ darks


@pytest.mark.parametrize("kind", KINDS)
def test_subtract_dark_stack_and_clip(kind):
    rng = np.random.default_rng(3)
    frames = rng.uniform(0, 50, (2, 5, 4, 3))
    darks = rng.uniform(0, 20, (6, 4, 3))
    out = subtract_dark(as_kind(kind, frames), as_kind(kind, darks), stack_axis=0)
    assert type(out) is type(as_kind(kind, frames))
    np.testing.assert_allclose(np.asarray(out), frames - darks.mean(axis=0), rtol=1e-12)
    clipped = np.asarray(subtract_dark(as_kind(kind, frames), as_kind(kind, darks[0]), clip=True))
    np.testing.assert_allclose(clipped, np.maximum(frames - darks[0], 0), rtol=1e-12)
    assert (clipped >= 0).all() and (frames - darks[0] < 0).any()
    with pytest.raises(InputError, match="does not broadcast"):
        subtract_dark(frames, darks[:, :3])
    with pytest.raises(InputError, match="dark: holds NaN"):
        subtract_dark(frames, np.full((4, 3), np.nan))


# ------------------------------------------------------------------------------------------------ steps


def test_jittered_steps_recovered_and_errors_reduced():
    """Jitter std 0.15 rad on a moire flat: phases back to < 1e-8 rad (noise free) and a better T, D, dphi."""
    rng = np.random.default_rng(11)
    m, u, z = 8, 48, 16
    a0, v, phi = fringe(u, z)
    x_true = step_phases(m) + rng.normal(0, 0.15, (3, m))  # three stepping series
    flats = curves(np.stack([a0] * 3), np.stack([v] * 3), np.stack([phi] * 3), x_true)
    x_est, g = estimate_steps(flats, axis=1, fit_dose=False)
    err = close_mod_offset(x_est, x_true)
    print(f"jitter 0.15 rad: max phase error {err:.2e} rad (after the common offset)")
    assert err < 1e-8
    np.testing.assert_allclose(g, 1.0)
    # the estimate's gauge: circular mean offset from the nominal phases is 0
    np.testing.assert_allclose(np.angle(np.exp(1j * (x_est - step_phases(m))).mean(axis=-1)), 0, atol=1e-12)
    # what it buys: flat curves fitted at nominal vs estimated phases
    fitted_nominal = fit_curves(flats, axis=1, method="lsq", phases=step_phases(m))
    fitted = fit_curves(flats, x_est, axis=1)
    v_err_nominal = np.abs(fitted_nominal[1] / fitted_nominal[0] - v).max()
    v_err = np.abs(fitted[1] / fitted[0] - v).max()
    print(f"flat visibility error: nominal phases {v_err_nominal:.2e}, estimated {v_err:.2e}")
    assert v_err_nominal > 1e-3 and v_err < 1e-9

    # Poisson noise, ~1e4 counts per step and pixel: each frame's phase has Fisher information
    # sum_p a0_p V_p^2 / 2 (768 pixels), so std ~ 0.002 rad, inflated by sqrt(M / (M - 3)) for the
    # pixels' own fitted coefficients
    scale = 10.0
    noisy = rng.poisson(flats * scale).astype(float)
    x_noisy, _ = estimate_steps(noisy, axis=1, fit_dose=False)
    d = wrap_phase(x_noisy - x_true)
    d = wrap_phase(d - np.angle(np.exp(1j * d).mean(axis=-1, keepdims=True)))
    predicted = np.sqrt(m / (m - 3) / (scale * a0 * v**2 / 2).sum())
    print(f"Poisson noise: phase error max {np.abs(d).max():.2e}, rms {d.std():.2e} rad, predicted {predicted:.2e}")
    assert np.abs(d).max() < 0.01 and d.std() < 1.3 * predicted


@pytest.mark.parametrize("kind", KINDS)
def test_scan_with_jitter_estimated(kind):
    """Jittered sample and flat steps: T, D, dphi exact once estimated, wrong at nominal phases."""
    sc = make_scan(np.random.default_rng(12), jitter=0.15)
    args = dict(darks=as_kind(kind, sc["darks"]), air_columns=sc["air"])
    nominal = retrieve_projections(as_kind(kind, sc["sample"]), as_kind(kind, sc["flats"]), **args)
    est = retrieve_projections(as_kind(kind, sc["sample"]), as_kind(kind, sc["flats"]), estimate_phases=True,
                               **args)
    assert type(est["T"]) is type(as_kind(kind, sc["sample"]))
    errs = {}
    for name, res in (("nominal", nominal), ("estimated", est)):
        errs[name] = scan_errors(res, sc)
        print(name, {k: f"{e:.2e}" for k, e in errs[name].items()})
    assert min(errs["nominal"].values()) > 1e-3
    assert max(errs["estimated"].values()) < 1e-8
    assert close_mod_offset(np.asarray(est["phases"]), sc["x_sample"]) < 1e-8
    np.testing.assert_allclose(np.asarray(est["dose"]), 1.0, atol=1e-10)


def test_jitter_without_air_region_whole_projection():
    """No air columns: each projection's phases come from the projection itself (AIA), up to an offset."""
    sc = make_scan(np.random.default_rng(13), jitter=0.15, n=1, a=3)
    res = retrieve_projections(sc["sample"], sc["flats"], darks=sc["darks"], estimate_phases=True)
    assert close_mod_offset(res["phases"], sc["x_sample"]) < 1e-8
    # the phases' common offset per projection goes into dphi: T and D are exact
    assert np.abs(res["T"] - sc["T"]).max() < 1e-8 and np.abs(res["D"] - sc["D"]).max() < 1e-8


# ------------------------------------------------------------------------------------------------ dose


@pytest.mark.parametrize("kind", KINDS)
def test_dose_fluctuation_corrected_from_air_columns(kind):
    """5 % random dose per frame, in sample and flats: exact with the correction, off by % without."""
    sc = make_scan(np.random.default_rng(14), dose=0.05)
    raw = retrieve_projections(as_kind(kind, sc["sample"]), as_kind(kind, sc["flats"]), darks=sc["darks"])
    res = retrieve_projections(as_kind(kind, sc["sample"]), as_kind(kind, sc["flats"]), darks=sc["darks"],
                               air_columns=sc["air"])
    e_raw, e = scan_errors(raw, sc), scan_errors(res, sc)
    print("without", {k: f"{v:.2e}" for k, v in e_raw.items()}, "with", {k: f"{v:.2e}" for k, v in e.items()})
    assert e_raw["D"] > 1e-2 and max(e.values()) < 1e-9
    g = sc["g_sample"] / sc["g_sample"].mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(res["dose"]), g, rtol=1e-10)
    gf = sc["g_flats"] / sc["g_flats"].mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(res["flat_dose"]), gf, rtol=1e-10)
    # the air columns: T is each projection's mean dose (left for the flux normalisation), D = 1
    air = np.asarray(res["T"])[:, :, : sc["air"]]
    np.testing.assert_allclose(air, np.broadcast_to(sc["g_sample"].mean(axis=-1)[:, :, None, None], air.shape),
                               rtol=1e-10)
    np.testing.assert_allclose(np.asarray(res["D"])[:, :, : sc["air"]], 1.0, rtol=1e-10)


def test_dose_functions_noise_free_and_poisson():
    rng = np.random.default_rng(15)
    m, u, z = 6, 32, 8
    a0, v, phi = fringe(u, z)
    x = step_phases(m) + rng.normal(0, 0.1, m)
    g = 1 + 0.05 * rng.standard_normal(m)
    frames = curves(a0, v, phi, x, g)
    _, g_est = estimate_steps(frames, x, fit_phases=False)
    np.testing.assert_allclose(g_est, g / g.mean(), rtol=1e-10)
    x_ref, g_ref = estimate_steps_from_reference(frames, (a0, a0 * v, phi), step_phases(m), fit_phases=True)
    np.testing.assert_allclose(g_ref, g, rtol=1e-10)
    np.testing.assert_allclose(wrap_phase(x_ref - x), 0, atol=1e-10)
    _, g_ratio = estimate_steps_from_reference(frames, (a0, a0 * v, phi), x, fit_phases=False)
    np.testing.assert_allclose(g_ratio, g, rtol=1e-10)
    # Poisson noise at ~1000 counts per step: the dose from 256 pixels is good to ~1/sqrt(256e3) ~ 0.2 %
    noisy = rng.poisson(frames).astype(float)
    _, g_noisy = estimate_steps_from_reference(noisy, (a0, a0 * v, phi), x, fit_phases=False)
    err = np.abs(g_noisy / g - 1).max()
    print(f"dose from 256 noisy air pixels: max relative error {err:.2e}")
    assert err < 0.01


# ------------------------------------------------------------------------------------------------ time


@pytest.mark.parametrize("kind", KINDS)
def test_flats_interpolated_in_time(kind):
    """Flats drifting linearly in a0, V and phi: interpolated exactly between flats, nearest outside."""
    u, z = 12, 3
    a0, v, phi = fringe(u, z)
    times = np.array([0.0, 10.0, 20.0])
    drift = lambda t: (a0 * (1 + 0.01 * t), a0 * (1 + 0.01 * t) * v * (1 - 0.005 * t),  # noqa: E731
                       wrap_phase(phi + 0.04 * t))
    flat = tuple(np.stack(q) for q in zip(*(drift(t) for t in times), strict=True))
    pos = np.array([-3.0, 0.0, 2.5, 10.0, 17.0, 25.0])
    out = interpolate_flats(tuple(as_kind(kind, q) for q in flat), times, pos)
    assert type(out[0]) is type(as_kind(kind, flat[0])) and out[0].shape == (6, u, z)
    for j, t in enumerate(np.clip(pos, 0, 20)):
        want = drift(t)
        np.testing.assert_allclose(np.asarray(out[0][j]), want[0], rtol=1e-12)
        np.testing.assert_allclose(np.asarray(out[1][j]), want[1], rtol=1e-12)
        np.testing.assert_allclose(wrap_phase(np.asarray(out[2][j]) - want[2]), 0, atol=1e-12)
    with pytest.raises(InputError, match="increase strictly"):
        interpolate_flats(flat, [0, 0, 1], pos)


def test_scan_with_drifting_flats():
    """A scan between 3 drifting flats: exact with interpolation; the first flat alone is off."""
    sc = make_scan(np.random.default_rng(16), f=3, drift=True)
    res = retrieve_projections(sc["sample"], sc["flats"], darks=sc["darks"], flat_indices=sc["flat_times"],
                               sample_indices=sc["times"])
    first = retrieve_projections(sc["sample"], sc["flats"][:, :1], darks=sc["darks"])
    e, e_first = scan_errors(res, sc), scan_errors(first, sc)
    print("interpolated", {k: f"{v:.2e}" for k, v in e.items()}, "first flat", {k: f"{v:.2e}" for k, v in e_first.items()})
    assert max(e.values()) < 1e-10 and min(e_first.values()) > 1e-3
    # default flat times: evenly over the scan, which is how make_scan places them
    res2 = retrieve_projections(sc["sample"], sc["flats"], darks=sc["darks"])
    np.testing.assert_allclose(res2["T"], res["T"], rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_scan_everything_at_once(device):
    """Jitter, sample dose fluctuation, drifting flats, darks: exact T, D, dphi on every device."""
    sc = make_scan(np.random.default_rng(17), jitter=0.15, dose=0.05, f=3, drift=True, flat_dose=0.0)
    res = retrieve_projections(torch.as_tensor(sc["sample"], device=device), torch.as_tensor(sc["flats"], device=device),
                               darks=torch.as_tensor(sc["darks"], device=device), air_columns=sc["air"],
                               estimate_phases=True, flat_indices=sc["flat_times"])
    for key in ("T", "D", "dphi", "phases", "dose", "flat_phases", "flat_dose"):
        assert res[key].device.type == torch.device(device).type and res[key].dtype == torch.float64
    e = scan_errors(res, sc)
    print({k: f"{v:.2e}" for k, v in e.items()})
    assert max(e.values()) < 1e-8


def test_jitter_and_dose_in_the_flats():
    """Jittered flats whose doses fluctuate too: a flat's frames cannot tell the first harmonic of
    its doses from a change of its phases and visibility (a Lorentz boost, stepping._boost); the
    projections' doses, seen against the flat, can. Stable sample doses pin it exactly; with
    fluctuating doses everywhere, pooling the projections beats each flat on its own."""
    sc = make_scan(np.random.default_rng(19), jitter=0.15, dose=0.0, flat_dose=0.05, f=3, drift=True, a=8)
    res = retrieve_projections(sc["sample"], sc["flats"], darks=sc["darks"], air_columns=sc["air"],
                               estimate_phases=True)
    e = scan_errors(res, sc)
    print("flat doses 5 %, sample 0 %:", {k: f"{v:.2e}" for k, v in e.items()})
    assert max(e.values()) < 1e-8
    np.testing.assert_allclose(res["flat_dose"], sc["g_flats"], rtol=1e-8)


def test_jitter_and_dose_everywhere_pools_projections(monkeypatch):
    """2 % doses in every frame, 20 projections per flat, 4 orientations: each flat alone has its own
    first-harmonic error, sigma sqrt(2 / M) ~ 1.3 % rms in its doses; pooled with the projections
    it serves (about 13 effective), a few times less."""
    from dfseg.physics import stepping

    sc = make_scan(np.random.default_rng(20), jitter=0.15, dose=0.02, f=2, a=40, n=4, u=16, z=2)
    kw = dict(darks=sc["darks"], air_columns=sc["air"], estimate_phases=True)
    rms = {}
    for name, passes in (("pooled", stepping._MAX_REFINE), ("alone", 0)):
        monkeypatch.setattr(stepping, "_MAX_REFINE", passes)
        res = retrieve_projections(sc["sample"], sc["flats"], **kw)
        rms[name] = (np.sqrt(np.mean((res["flat_dose"] - sc["g_flats"]) ** 2)),
                     np.sqrt(np.mean((res["D"] / sc["D"] - 1) ** 2)))
        print(f"{name}: flat dose rms error {rms[name][0]:.2e}, D rms relative error {rms[name][1]:.2e}")
    assert 0.008 < rms["alone"][0] < 0.02
    assert rms["pooled"][0] < 0.5 * rms["alone"][0] and rms["pooled"][1] < 0.5 * rms["alone"][1]


# ------------------------------------------------------------------------------------------------ errors


def test_errors():
    sc = make_scan(np.random.default_rng(18), n=1, a=2)
    s, f = sc["sample"], sc["flats"]
    cases = [
        (lambda: retrieve_projections(s[:, :, :2], f[:, :, :2]), "sample: need at least 3 phase steps, got 2"),
        (lambda: retrieve_projections(s, f[:, :, :4]), "flats: shape .* does not match the sample's"),
        (lambda: retrieve_projections(s[0], f), r"sample: expected frames \(N, A, M, U, Z\)"),
        (lambda: retrieve_projections(np.where(np.arange(s.shape[-1]) == 1, np.nan, s), f), "sample: holds NaN"),
        (lambda: retrieve_projections(s, np.where(np.arange(f.shape[-1]) == 1, np.inf, f)), "flats: holds NaN"),
        (lambda: retrieve_projections(s, np.zeros_like(f)), "flats: zero or negative mean counts"),
        (lambda: retrieve_projections(s, f, darks=sc["darks"][:, :3]), r"darks: expected a dark frame"),
        (lambda: retrieve_projections(s, f, sample_phases=np.ones(4)), "sample_phases: shape"),
        (lambda: retrieve_projections(s, f, flat_phases=np.zeros(s.shape[2])), "do not determine a stepping curve"),
        (lambda: retrieve_projections(s, f, method="fft", sample_phases=np.arange(s.shape[2])),
         "method 'fft' needs equally spaced steps"),
        (lambda: retrieve_projections(s, f, method="svd"), "method: must be one of"),
        (lambda: retrieve_projections(s, f, air_columns=100), "air_columns: must be in"),
        (lambda: retrieve_projections(s, f, flat_indices=[0, 1, 2]), "flat_indices: 3 indices for 2"),
        (lambda: retrieve_projections(s[:, :, :3], f[:, :, :3], estimate_phases=True), "at least 4 steps"),
        (lambda: fit_curves(np.ones((2, 4))), "frames: need at least 3 phase steps, got 2"),
        (lambda: estimate_steps(np.ones((4, 3, 3)), fit_phases=True), "fringe phase does not vary"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ helpers


def make_scan(rng, *, n=2, a=6, m=5, u=24, z=4, f=2, air=4, jitter=0.0, dose=0.0, drift=False, flat_dose=None):
    """Noise-free raw frames of a scan with known T, D, dphi (the first and last ``air`` columns air).

    Flats at times ``linspace(0, A - 1, F)``; with ``drift`` the flat field's a0, V and phi change
    linearly with time, and each projection sees the field of its own time. ``dose``: std of the
    sample frames' dose fluctuation (each projection also gets a 2 % overall flux factor);
    ``flat_dose``: the flats' (default ``dose``).
    """
    times = np.arange(a, dtype=float)
    flat_times = np.linspace(0, a - 1, f)
    a0, v, phi = fringe(u, z)

    def field(t):
        k = t / (a - 1) if drift else 0.0
        return a0 * (1 + 0.2 * k), v * (1 - 0.2 * k), wrap_phase(phi + 0.8 * k)

    uu = np.arange(u)[:, None]
    body = ((uu >= air) & (uu < u - air)).astype(float) * np.ones((1, z))
    ang = np.arange(a)[None, :, None, None]
    t_true = np.exp(-body * (0.5 + 0.2 * np.sin(uu / 3.0 + ang) + 0.1 * np.arange(n)[:, None, None, None]))
    d_true = np.exp(-body * (0.3 + 0.1 * np.cos(uu / 4.0 - ang)))
    dphi_true = body * 0.6 * np.sin(uu / 2.0 + ang + np.arange(n)[:, None, None, None])
    x_sample = step_phases(m) + jitter * rng.standard_normal((n, a, m))
    x_flats = step_phases(m) + jitter * rng.standard_normal((n, f, m))
    g_sample = (1 + 0.02 * rng.standard_normal((n, a, 1))) * (1 + dose * rng.standard_normal((n, a, m)))
    g_flats = 1 + (dose if flat_dose is None else flat_dose) * rng.standard_normal((n, f, m))
    g_flats /= g_flats.mean(axis=-1, keepdims=True)  # a flat's overall exposure is part of the flat
    dark_level = 50.0 + rng.uniform(0, 5, (3, u, z))
    sample = np.empty((n, a, m, u, z))
    for j, t in enumerate(times):
        fa0, fv, fphi = field(t)
        sample[:, j] = curves(fa0 * t_true[:, j], fv * d_true[:, j], fphi + dphi_true[:, j], x_sample[:, j],
                              g_sample[:, j])
    flats = np.empty((n, f, m, u, z))
    for j, t in enumerate(flat_times):
        fa0, fv, fphi = field(t)
        flats[:, j] = curves(np.stack([fa0] * n), np.stack([fv] * n), np.stack([fphi] * n), x_flats[:, j],
                             g_flats[:, j])
    dark = dark_level.mean(axis=0)
    return {"sample": sample + dark, "flats": flats + dark, "darks": dark_level, "air": air,
            "T": t_true * g_sample.mean(axis=-1)[..., None, None], "D": d_true, "dphi": dphi_true,
            "x_sample": x_sample, "x_flats": x_flats, "g_sample": g_sample, "g_flats": g_flats,
            "times": times, "flat_times": flat_times}


def scan_errors(res, sc):
    """Largest errors of T (relative), D (relative) and dphi (radians) over the scan."""
    t, d, dphi = (np.asarray(res[k].cpu() if isinstance(res[k], torch.Tensor) else res[k]) for k in ("T", "D", "dphi"))
    return {"T": np.abs(t / sc["T"] - 1).max(), "D": np.abs(d / sc["D"] - 1).max(),
            "dphi": np.abs(wrap_phase(dphi - sc["dphi"])).max()}
