"""Detector artefacts of a measured scan: blur (PSF) and ring artefacts from a shared flat field.

They act on the measured projection stacks ``proj_T``/``proj_D`` (N, A, U, Z) that
:func:`dfseg.simulate.acquisition.acquire` returns, in the order a detector applies them, and the
scan is then reconstructed again (the same uncorrected FBP as the acquisition's):

1. **PSF on the intensity.** The detector's point-spread function (scintillator light spread,
   charge sharing) is a Gaussian of ``sigma`` detector pixels over the detector plane (U, Z),
   applied to the recorded intensities. With a flat (sample-free) reference that is uniform
   within the PSF's reach and a uniform Moire phase, blurring the phase-stepping curves
   ``a0 = N T`` and ``a1 = N V_r T D`` gives, after division by the reference, exactly
   ``T' = G * T`` and ``D' = G * (T D) / G * T`` (``G *`` the blur). That is what is applied, to the
   measured (noisy) T and D: the quantum noise is blurred with the signal, as in a scintillator,
   where the X-ray quanta are counted before their light spreads (the approximation: the
   reference's own noise and the Moire phase's variation within the PSF are neglected). The
   kernel is the discrete Gaussian ``e^-t I_n(t)``, ``t = sigma^2`` (Lindeberg 1990, IEEE PAMI
   12:234), whose variance is exactly ``sigma^2`` pixels^2 however small sigma is.
2. **Gain error of the shared flat field, on every projection.** A scanner normalises every
   projection by one flat field per grating orientation, taken once with ``flat_exposures``
   exposures. Its finite counts leave a per-pixel error that is the same in every projection:
   relative ``1 / sqrt(N_f)`` on the open-beam intensity a0 and
   ``sqrt((2 - V^2) / (N_f V^2))`` on ln V (docs: PHYSICS.md section 1), ``N_f`` the flat's counts
   per pixel. On top of it a detector gain non-uniformity the flat does not remove (gain change
   between flat and scan), log-normal with ``gain_sd``, shared by all orientations, multiplies a0
   and a1 alike, so it changes T and not D. Constant over angles, these errors reconstruct to
   rings. (The per-exposure reference noise that :func:`acquire` already draws stays: it is the
   exposure-to-exposure part, this is the shared part.)

The acquisition itself is untouched: :func:`apply_detector_artefacts` takes its result and
returns a new one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage, special

from dfseg.errors import InputError
from dfseg.tomo import fbp, projection_angles

#: Smallest T or D taken into the logarithm, as in the acquisition.
LOG_FLOOR = 1e-6
#: CT slices reconstructed together (memory bound, as in the acquisition).
SLAB_SLICES = 16


def psf_kernel(sigma_px: float) -> np.ndarray:
    """The 1-D discrete Gaussian of standard deviation ``sigma_px`` pixels: ``e^-t I_n(t)``, ``t = sigma^2``.

    Its weights sum to 1 and its variance is ``sigma_px^2`` (up to the truncation at
    ``ceil(5 sigma) + 1`` pixels, below 1e-6); ``sigma_px = 0`` gives ``[1.0]``.

    Raises:
        InputError: a negative or non-finite sigma.
    """
    if not (np.isfinite(sigma_px) and sigma_px >= 0):
        raise InputError("psf_sigma_px", f"must be a finite number >= 0, got {sigma_px}")
    if sigma_px == 0:
        return np.ones(1)
    t = float(sigma_px) ** 2
    n = np.arange(-(int(np.ceil(5 * sigma_px)) + 1), int(np.ceil(5 * sigma_px)) + 2)
    k = special.ive(np.abs(n), t)
    return k / k.sum()


def blur_plane(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur ``a`` (..., U, Z) over its last two axes (the detector plane) with :func:`psf_kernel`.

    Edges repeat the outermost pixel (a detector's edge columns see air). Returns float64.
    """
    k = psf_kernel(sigma_px)
    out = np.asarray(a, np.float64)
    if k.size == 1:
        return out.copy()
    for axis in (-2, -1):
        if out.shape[axis] > 1:
            out = ndimage.convolve1d(out, k, axis=axis, mode="nearest")
    return out


def detector_blur(proj_t: np.ndarray, proj_d: np.ndarray, sigma_px: float) -> tuple[np.ndarray, np.ndarray]:
    """PSF on the intensities: ``T' = G*T``, ``D' = G*(T D) / G*T`` (module docstring), float32.

    Args:
        proj_t, proj_d: (..., U, Z) measured transmission and visibility ratio.
        sigma_px: Gaussian PSF standard deviation, detector pixels.
    """
    t = np.asarray(proj_t, np.float64)
    bt = blur_plane(t, sigma_px)
    btd = blur_plane(t * np.asarray(proj_d, np.float64), sigma_px)
    d = np.where(bt > 0, btd / np.where(bt > 0, bt, 1.0), np.asarray(proj_d, np.float64))
    return bt.astype(np.float32), d.astype(np.float32)


def flat_field_factors(shape: tuple[int, int, int], rng: np.random.Generator, *, gain_sd: float,
                       flat_counts: float | None, v_ref: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel factors of a shared flat field's error, constant over projection angles.

    Args:
        shape: ``(N, U, Z)``: orientations and the detector plane.
        rng: random generator.
        gain_sd: standard deviation of the log detector gain the flat does not remove (shared by
            all orientations; changes T, not D).
        flat_counts: counts per pixel of each orientation's flat field (all its exposures and
            phase steps); None for a noise-free flat.
        v_ref: open-beam visibility (sets the flat's visibility noise).

    Returns:
        ``(f_t, f_d)`` float64 (N, 1, U, Z), to multiply ``proj_T`` and ``proj_D`` by:
        ``f_t = exp(g - e_a0)``, ``f_d = exp(-e_lnV)``.
    """
    n, u, z = shape
    if not gain_sd >= 0:
        raise InputError("ring_gain_sd", f"must be >= 0, got {gain_sd}")
    g = gain_sd * rng.standard_normal((1, u, z))
    if flat_counts is None:
        e0 = np.zeros((n, u, z))
        ev = np.zeros((n, u, z))
    else:
        if not flat_counts > 0:
            raise InputError("flat_counts", f"must be positive, got {flat_counts}")
        e0 = rng.standard_normal((n, u, z)) / np.sqrt(flat_counts)
        ev = rng.standard_normal((n, u, z)) * np.sqrt((2 - v_ref**2) / (flat_counts * v_ref**2))
    return np.exp(g - e0)[:, None], np.exp(-ev)[:, None]


def _neg_log(x: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(x, LOG_FLOOR))


def reconstruct(proj_t: np.ndarray, proj_d: np.ndarray, shape: tuple[int, ...], pixel_mm: float, geometry: str,
                *, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The acquisition's uncorrected reconstruction of measured stacks.

    CT: ``attn = fbp(mean_n -ln T_n)`` (X, Y, Z) and ``df_n = fbp(-ln D_n)`` (X, Y, Z, N), 1/mm,
    over angles ``projection_angles(A)``, in slabs of :data:`SLAB_SLICES` slices. Radiograph:
    ``attn = mean_n -ln T`` (X, Z) and ``df = -ln D`` (X, Z, N).

    Args:
        proj_t, proj_d: (N, A, U, Z) measured T and D.
        shape: the anatomy's (X, Y, Z).
        pixel_mm: detector pixel = voxel size, mm.
        geometry: ``"ct"`` or ``"radiograph"``.
        device: torch device (default CUDA when available).
    """
    if geometry == "radiograph":
        attn = _neg_log(proj_t[:, 0]).mean(axis=0)
        return attn.astype(np.float32), np.moveaxis(_neg_log(proj_d[:, 0]), 0, -1).astype(np.float32)
    nx, ny, nz = shape
    n_or, n_a = proj_t.shape[:2]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    angles = projection_angles(n_a)
    attn = np.empty((nx, ny, nz), np.float32)
    df = np.empty((nx, ny, nz, n_or), np.float32)
    for z0 in range(0, nz, SLAB_SLICES):
        zs = slice(z0, min(z0 + SLAB_SLICES, nz))
        logs = np.concatenate([_neg_log(proj_t[..., zs]).mean(axis=0, keepdims=True),
                               _neg_log(proj_d[..., zs])]).astype(np.float32)
        logs_t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(logs, -1, 1))).to(dev)  # (1+N, z, A, U)
        rec = fbp(logs_t, angles, (nx, ny), pixel_mm=pixel_mm).cpu().numpy()  # (1+N, z, X, Y)
        attn[..., zs] = np.moveaxis(rec[0], 0, -1)
        df[:, :, zs] = np.moveaxis(rec[1:], (0, 1), (3, 2))
    return attn, df


def apply_detector_artefacts(scan: dict[str, Any], rng: np.random.Generator, *, psf_sigma_px: float,
                             ring_gain_sd: float, flat_counts: float | None, shape: tuple[int, ...],
                             pixel_mm: float, geometry: str) -> dict[str, Any]:
    """Blur, then the shared flat's gain error, on a scan's stacks; reconstruct again (module docstring).

    Args:
        scan: :func:`dfseg.simulate.acquisition.acquire`'s result (``proj_T``, ``proj_D``,
            ``v_ref``, ...); not modified.
        rng: random generator (the flat field's errors).
        psf_sigma_px: Gaussian PSF standard deviation, detector pixels (0: no blur).
        ring_gain_sd: log detector-gain non-uniformity the flat does not remove.
        flat_counts: counts per pixel of each orientation's flat field (None: noise-free flat).
        shape: the anatomy's (X, Y, Z).
        pixel_mm: detector pixel, mm.
        geometry: ``"ct"`` or ``"radiograph"``.

    Returns:
        A copy of ``scan`` with new ``proj_T``, ``proj_D``, ``attn``, ``df`` and ``artefacts``
        (the PSF sigma, and the realised standard deviations of ln f_t and ln f_d).
    """
    t, d = detector_blur(scan["proj_T"], scan["proj_D"], psf_sigma_px)
    n, _, u, z = t.shape
    f_t, f_d = flat_field_factors((n, u, z), rng, gain_sd=ring_gain_sd, flat_counts=flat_counts,
                                  v_ref=float(scan["v_ref"]))
    t = (t * f_t).astype(np.float32)
    d = (d * f_d).astype(np.float32)
    attn, df = reconstruct(t, d, shape, pixel_mm, geometry)
    info = {"psf_sigma_px": float(psf_sigma_px), "ring_gain_sd": float(ring_gain_sd),
            "flat_counts": None if flat_counts is None else float(flat_counts),
            "ring_log_t_sd": float(np.log(f_t).std()), "ring_log_d_sd": float(np.log(f_d).std())}
    return {**scan, "proj_T": t, "proj_D": d, "attn": attn, "df": df, "artefacts": info}
