"""Polychromatic forward model and phase-stepping measurement of a Talbot-Lau interferometer.

Signals (docs/physics.md sections 1 and 4), with S'(E) the detector-weighted spectrum, V0(E) the
reference visibility and w = S' V0:

    T = sum S' e^{-A(E)} / sum S'
    D = [sum w e^{-A(E)} e^{-DF(E)} / sum w] / T

Phase stepping: M steps, I_k = a0 + a1 cos(2 pi k / M + phi); T_hat = a0_s / a0_r and
D_hat = V_s / V_r with V = a1 / a0. Dividing the visibilities is what makes D independent of T;
multiplying a1 by T is a known bug and is avoided here by construction.

Dose note (an estimate, not a measurement): Umkehrer et al. 2019 scanned mice in dark-field CT
at about 37 kV for 40 min with 85 mGy. Their detector recorded of the order of 1e3-1e4 counts
per pixel per phase step; dfseg uses :data:`DEFAULT_PHOTONS_PER_PIXEL` = 2e4 counts in total over
all phase steps per pixel and projection as a default, which puts the per-projection dark-field
noise near sqrt(2 * 1.55e-3) ~ 0.056 at V = 0.25.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dfseg.errors import InputError
from dfseg.physics.darkfield import VisibilitySpectrum
from dfseg.physics.spectra import Spectrum

#: Default total counts per pixel over all phase steps of one projection (estimate, see module doc).
DEFAULT_PHOTONS_PER_PIXEL = 2.0e4

#: Bytes one chunk of the (elements x energies) work arrays may take.
_CHUNK_BYTES = 64 * 2**20

#: Elements per chunk of the phase-stepping simulation. Each chunk draws from its own generator,
#: seeded from the caller's in chunk order, so the result does not depend on ``threads``.
_PS_CHUNK = 2**18

#: Expected counts per phase step from which a count is drawn from the Gaussian limit of its
#: Poisson law, ``round(lam + sqrt(lam) z)`` (same mean and variance; skewness 1/sqrt(lam) <= 0.1),
#: about four times faster than an exact Poisson draw; below it counts are exact Poisson draws.
POISSON_GAUSSIAN_FROM = 100.0


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _to_numpy(x) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _spectral_weights(spectrum: Spectrum, visibility: VisibilitySpectrum) -> tuple[np.ndarray, np.ndarray]:
    """Normalised detector weights S'(E) and visibility weights w(E) = S'(E) V0(E) (docs/physics.md section 4)."""
    s = spectrum.weights / spectrum.weights.sum()
    w = s * visibility(spectrum.energies_kev)
    return s, w / w.sum()


def polychromatic_signals(
    spectrum: Spectrum,
    visibility: VisibilitySpectrum,
    attenuation_terms: Sequence[tuple],
    darkfield_terms: Sequence[tuple] = (),
    chunk: int | None = None,
):
    """Expected transmission and visibility ratio of a polychromatic, visibility-weighted beam.

    Args:
        spectrum: S'(E), E bins.
        visibility: V0(E).
        attenuation_terms: ``[(L, mu_E), ...]``; L is a line-integral array (any shape, mutually
            broadcastable, e.g. path length in mm or a projected density), mu_E has shape (E,)
            with the matching unit (1/mm), so A(E) = sum L * mu_E(E).
        darkfield_terms: ``[(P, shape_E), ...]``; DF(E) = sum P * shape_E(E) (e.g. P the projected
            eps at a reference energy and shape_E = eps(E) / eps(E_ref)).
        chunk: elements processed at once (default: as many as fit in ~64 MB of float64 per
            (elements x E) work array). Memory stays O(chunk * E) besides the outputs.

    Returns:
        ``(T, D)``, each of the broadcast shape of the line integrals; float32 if all inputs are
        float32, else float64; numpy, or torch on the input device if any line integral is a tensor.
    """
    e = spectrum.energies_kev
    n_e = e.size
    terms = list(attenuation_terms) + list(darkfield_terms)
    n_att = len(attenuation_terms)
    if not terms:
        raise InputError("polychromatic_signals", "give at least one attenuation or dark-field term")
    like = next((t[0] for t in terms if _is_torch(t[0])), None)
    arrays = [_to_numpy(t[0]) for t in terms]
    coeffs = []
    for i, (_, c) in enumerate(terms):
        c = np.asarray(_to_numpy(c), dtype=np.float64).reshape(-1)
        if c.size != n_e:
            kind = "attenuation" if i < n_att else "dark-field"
            raise InputError(
                f"{kind} term {i}", f"energy coefficients have {c.size} values, spectrum has {n_e} bins"
            )
        coeffs.append(c)
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError as exc:
        raise InputError("polychromatic_signals", f"line integrals do not broadcast: {exc}") from None
    out_dtype = np.result_type(np.float32, *(a.dtype for a in arrays))
    # (K, E): one row of energy coefficients per term, so A(E) + DF(E) = L_row @ coef for a chunk.
    coef_att = np.stack(coeffs[:n_att]) if n_att else np.zeros((0, n_e))
    coef_df = np.stack(coeffs[n_att:]) if len(coeffs) > n_att else np.zeros((0, n_e))
    s, w = _spectral_weights(spectrum, visibility)

    n = int(np.prod(shape))
    # reshape copies only terms that needed broadcasting (at most one full-size copy per term)
    flat = [np.broadcast_to(a, shape).reshape(-1) for a in arrays]
    t_out = np.empty(n, dtype=out_dtype)
    d_out = np.empty(n, dtype=out_dtype)
    step = chunk or max(1, _CHUNK_BYTES // (8 * n_e))
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        # (m, K) @ (K, E): one BLAS call builds A(E) (resp. DF(E)) for the whole chunk.
        att = np.stack([f[sl] for f in flat[:n_att]], axis=1).astype(np.float64) @ coef_att if n_att else None
        if att is None:
            att = np.zeros((sl.stop - sl.start, n_e))
        np.exp(-att, out=att)  # att now holds e^{-A(E)}
        t = att @ s
        if coef_df.shape[0]:
            dfe = np.stack([f[sl] for f in flat[n_att:]], axis=1).astype(np.float64) @ coef_df
            np.exp(-dfe, out=dfe)
            att *= dfe
        vis = att @ w
        t_out[sl] = t
        with np.errstate(divide="ignore", invalid="ignore"):
            d_out[sl] = np.where(t > 0, vis / np.where(t > 0, t, 1.0), 0.0)
    t_out, d_out = t_out.reshape(shape), d_out.reshape(shape)
    if like is not None:
        import torch  # only for tensor input: dfseg.physics itself needs numpy only

        return torch.from_numpy(t_out).to(like.device), torch.from_numpy(d_out).to(like.device)
    return t_out, d_out


def polychromatic_signals_oriented(spectrum, visibility, lines: np.ndarray, mu_e: np.ndarray, p_k: np.ndarray, h: np.ndarray,
                     *, device=None, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """:func:`polychromatic_signals` for N grating orientations that share their attenuation.

    Same model (T = sum S' e^-A / sum S', D = [sum w e^-A e^-DF / sum w] / T, w = S' V0), but the
    attenuation sums are done once per ray and shared by all N grating orientations, energy sums
    are matrix products in float32 torch, and rays are processed in chunks (memory O(chunk * E)).
    ``tests/physics/test_forward.py`` checks it against :func:`polychromatic_signals`.

    Args:
        spectrum: detector-weighted spectrum (E bins).
        visibility: V0(E).
        lines: (M, *R) material line integrals, mm.
        mu_e: (M, E) attenuation coefficients, 1/mm.
        p_k: (K, N, *R) dark-field basis line integrals (unitless).
        h: (K, E) dark-field energy basis functions.
        device: torch device.
        chunk: rays per chunk.

    Returns:
        ``(T, D)``: T (1, *R) and D (N, *R), float32 numpy.
    """
    import torch  # on use: dfseg.physics itself needs numpy only

    s, w = _spectral_weights(spectrum, visibility)
    dev = torch.device(device or "cpu")
    m, r_shape = lines.shape[0], lines.shape[1:]
    k, n = p_k.shape[:2]
    lf = torch.from_numpy(np.ascontiguousarray(lines.reshape(m, -1), dtype=np.float32)).to(dev)
    pf = torch.from_numpy(np.ascontiguousarray(p_k.reshape(k, n, -1), dtype=np.float32)).to(dev)
    mu_t = torch.as_tensor(mu_e, dtype=torch.float32, device=dev)
    h_t = torch.as_tensor(h, dtype=torch.float32, device=dev)
    s_t = torch.as_tensor(s, dtype=torch.float32, device=dev)
    w_t = torch.as_tensor(w, dtype=torch.float32, device=dev)
    n_rays = lf.shape[1]
    t_out = torch.empty(n_rays, dtype=torch.float32, device=dev)
    d_out = torch.empty((n, n_rays), dtype=torch.float32, device=dev)
    for start in range(0, n_rays, chunk):
        sl = slice(start, min(start + chunk, n_rays))
        ea = torch.exp(-(lf[:, sl].T @ mu_t))  # (r, E)
        t = ea @ s_t
        t_out[sl] = t
        for j in range(n):
            edf = torch.exp(-(pf[:, j, sl].T @ h_t))  # (r, E)
            d_out[j, sl] = ((ea * edf) @ w_t) / torch.clamp(t, min=1e-30)
    return (t_out.reshape(1, *r_shape).cpu().numpy(), d_out.reshape(n, *r_shape).cpu().numpy())


def visibility_log_variance(photons, visibility):
    """Delta-method variance of ln V_hat: (2 - V^2) / (N V^2), N total counts over all steps."""
    v = np.asarray(visibility, dtype=np.float64)
    return (2.0 - v * v) / (np.asarray(photons, dtype=np.float64) * v * v)


def fourier_components(counts, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean a0 and first-harmonic amplitude a1 of phase-stepping curves sampled at 2 pi k / M.

    Args:
        counts: intensities with the M phase steps along ``axis`` (M >= 3).
        axis: the phase-step axis.

    Returns:
        ``(a0, a1)``, float64, the shape of ``counts`` without ``axis``.
    """
    c = np.moveaxis(np.asarray(counts, dtype=np.float64), axis, 0)
    m = c.shape[0]
    if m < 3:
        raise InputError("phase_steps", f"need at least 3 phase steps to retrieve a visibility, got {m}")
    ang = 2 * np.pi * np.arange(m) / m
    a0 = c.mean(axis=0)
    re = np.tensordot(np.cos(ang), c, axes=(0, 0))
    im = np.tensordot(np.sin(ang), c, axes=(0, 0))
    return a0, (2.0 / m) * np.hypot(re, im)


def retrieve(counts_sample, counts_ref, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Transmission and visibility ratio from sample and reference phase-stepping curves.

    Returns:
        ``(T, D)`` with T = a0_s / a0_r and D = (a1_s / a0_s) / (a1_r / a0_r).
    """
    a0s, a1s = fourier_components(counts_sample, axis)
    a0r, a1r = fourier_components(counts_ref, axis)
    return _ratios(a0s, a1s, a0r, a1r)


def _ratios(a0s, a1s, a0r, a1r):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = a0s / a0r
        # A pixel with no counts has no measurable visibility: report D = 0 (DF = inf) there.
        vs = np.where(a0s > 0, a1s / np.where(a0s > 0, a0s, 1.0), 0.0)
        vr = a1r / a0r
        d = vs / vr
    return t, d


def phase_stepping_measurement(
    T,
    D,
    *,
    v_ref: float,
    photons_per_pixel: float = DEFAULT_PHOTONS_PER_PIXEL,
    rng: np.random.Generator,
    phase_steps: int = 5,
    ref_photons_per_pixel: float | None = None,
    gain=1.0,
    phase=None,
    threads: int = 1,
):
    """Simulate Poisson phase-stepping scans of sample and reference and retrieve (T_hat, D_hat).

    Sample:    I_k   ~ Poisson(N / M * gain * T * (1 + v_ref * D * cos(2 pi k / M + phi)))
    Reference: I_k^r ~ Poisson(N_ref / M * (1 + v_ref * cos(2 pi k / M + phi)))

    Each element gets its own reference curve (a per-pixel flat field); use
    ``ref_photons_per_pixel=np.inf`` for a noise-free reference.

    Args:
        T: expected transmission, any shape (numpy or torch).
        D: expected visibility ratio, broadcastable to T.
        v_ref: reference visibility (the spectrum-weighted V0 of the empty beam).
        photons_per_pixel: N, expected total counts over all steps in the empty beam.
        rng: the random generator (the only source of randomness).
        phase_steps: M (>= 3).
        ref_photons_per_pixel: N_ref, default N; ``inf`` for a noise-free reference.
        gain: broadcastable multiplier of the sample counts (flux fluctuation x detector drift).
        phase: phi in radians, broadcastable (default 0).
        threads: threads working on chunks at once (the result does not depend on it).

    Counts are Poisson, drawn exactly below :data:`POISSON_GAUSSIAN_FROM` expected counts per
    step and from the Gaussian limit (whole counts, same mean and variance) above it.

    Returns:
        ``(T_hat, D_hat)`` of the broadcast shape; float32 if T is float32, else float64; numpy, or
        torch on T's device when T is a tensor. Work is chunked over elements, steps drawn one
        at a time, so memory stays O(size) for the outputs plus O(chunk).
    """
    if phase_steps < 3:
        raise InputError("phase_steps", f"need at least 3 phase steps, got {phase_steps}")
    if not 0 < v_ref <= 1 or photons_per_pixel <= 0:
        raise InputError(
            "phase_stepping_measurement",
            f"need 0 < v_ref <= 1 and photons_per_pixel > 0, got {v_ref}, {photons_per_pixel}",
        )
    like = T if _is_torch(T) else None
    t, d = _to_numpy(T), _to_numpy(D)
    g = _to_numpy(gain)
    phi = np.zeros(()) if phase is None else _to_numpy(phase)
    shape = np.broadcast_shapes(t.shape, d.shape, np.shape(g), np.shape(phi))
    out_dtype = np.result_type(np.float32, t.dtype)
    n_ref = photons_per_pixel if ref_photons_per_pixel is None else float(ref_photons_per_pixel)
    # Flattened inputs (scalars stay scalars); work goes in chunks so temporaries stay O(chunk).
    flat = [
        np.float64(x) if np.ndim(x) == 0 else np.broadcast_to(x, shape).reshape(-1) for x in (t, d, g, phi)
    ]
    n = int(np.prod(shape))
    t_hat = np.empty(n, dtype=out_dtype)
    d_hat = np.empty(n, dtype=out_dtype)
    starts = range(0, n, _PS_CHUNK)
    seeds = rng.integers(0, 2**63, size=len(starts))

    def run(i: int) -> None:
        sl = slice(starts[i], min(n, starts[i] + _PS_CHUNK))
        tt, dd, gg, pp = (f if np.ndim(f) == 0 else f[sl].astype(np.float64) for f in flat)
        tt = np.broadcast_to(tt, (sl.stop - sl.start,))
        t_hat[sl], d_hat[sl] = _phase_stepping_chunk(tt, dd, gg, pp, v_ref, photons_per_pixel, n_ref, phase_steps,
                                                     np.random.default_rng(seeds[i]))

    if threads > 1 and len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor  # numpy releases the GIL in draws and ufuncs

        with ThreadPoolExecutor(min(threads, len(starts))) as pool:
            list(pool.map(run, range(len(starts))))
    else:
        for i in range(len(starts)):
            run(i)
    t_hat, d_hat = t_hat.reshape(shape), d_hat.reshape(shape)
    if like is not None:
        import torch  # only for tensor input: dfseg.physics itself needs numpy only

        return torch.from_numpy(t_hat).to(like.device), torch.from_numpy(d_hat).to(like.device)
    return t_hat, d_hat


def poisson_counts(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of means ``lam`` (float64): exact below :data:`POISSON_GAUSSIAN_FROM`, else
    ``round(lam + sqrt(lam) z)``, the Gaussian limit with the Poisson mean and variance."""
    lam = np.asarray(lam, dtype=np.float64)
    counts = rng.standard_normal(lam.shape)
    counts *= np.sqrt(lam)
    counts += lam
    np.rint(counts, out=counts)
    low = lam < POISSON_GAUSSIAN_FROM
    if low.any():
        counts[low] = rng.poisson(lam[low])
    return counts


def _phase_stepping_chunk(t, d, g, phi, v_ref, n_photons, n_ref, m, rng):
    """One chunk of :func:`phase_stepping_measurement` on 1-D arrays; steps drawn one at a time."""
    s0, sc, ss = np.zeros(t.shape), np.zeros(t.shape), np.zeros(t.shape)
    r0, rc, rs = np.zeros(t.shape), np.zeros(t.shape), np.zeros(t.shape)
    base = (n_photons / m) * g * t
    mod = v_ref * d
    for k in range(m):
        ang = 2 * np.pi * k / m
        cos_k = np.cos(ang + phi)
        counts = poisson_counts(np.maximum(base * (1 + mod * cos_k), 0.0), rng)
        s0 += counts
        sc += counts * np.cos(ang)
        ss += counts * np.sin(ang)
        lam_r = np.broadcast_to(1 + v_ref * cos_k, t.shape)
        # a noise-free reference is kept at 1 count per step: only ratios are used below
        counts_r = lam_r if np.isinf(n_ref) else poisson_counts((n_ref / m) * lam_r, rng)
        r0 += counts_r
        rc += counts_r * np.cos(ang)
        rs += counts_r * np.sin(ang)
    t_hat, d_hat = _ratios(s0 / m, (2.0 / m) * np.hypot(sc, ss), r0 / m, (2.0 / m) * np.hypot(rc, rs))
    # The reference is normalised by its exposure (N_ref, or m for the unit-scale noise-free one).
    return t_hat * ((m if np.isinf(n_ref) else n_ref) / n_photons), d_hat
