"""Filtered back-projection for the parallel-beam geometry of :mod:`dfseg.tomo.projector`.

The ramp filter and the pixel-driven back-projection run block by block over the angles and in
batches of sinograms that fit the projector's memory budget, so no filtered copy of the whole
input is held.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dfseg.errors import InputError
from dfseg.tomo.projector import _angles_array, _as_tensor, _out, _size_xy, apply_operator

FILTERS = ("ramp", "shepp-logan", "hann")


def ramp_filter(n_det: int, filter_name: str = "ramp", *, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Frequency response of the band-limited ramp filter on a zero-padded detector.

    The ramp is sampled in the spatial domain (Kak & Slaney eq. 3.61: h(0) = 1/4,
    h(n odd) = -1/(pi n)^2, h(n even) = 0) and transformed, which gets the DC term right and
    avoids the cupping of a frequency-sampled |f|. Padding to at least 2U stops the circular
    convolution from wrapping.

    Args:
        n_det: U, detector bins.
        filter_name: ``"ramp"``, ``"shepp-logan"`` or ``"hann"`` (apodisation of the ramp).

    Returns:
        Real response, shape (P // 2 + 1,) for an rfft of length P = next power of two >= 2U;
        in units of 1/pixel (divide by the pixel size for 1/mm).
    """
    if filter_name not in FILTERS:
        raise InputError("filter_name", f"unknown filter {filter_name!r}; choose one of {', '.join(FILTERS)}")
    p = max(64, 1 << math.ceil(math.log2(2 * n_det)))
    n = np.concatenate([np.arange(0, p // 2 + 1), np.arange(-(p // 2) + 1, 0)])
    h = np.zeros(p)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    resp = np.real(np.fft.rfft(h))
    f = np.fft.rfftfreq(p)  # cycles per pixel, 0..0.5
    if filter_name == "shepp-logan":
        resp = resp * np.sinc(f)  # sin(pi f / (2 f_max)) / (pi f / (2 f_max)) with f_max = 0.5
    elif filter_name == "hann":
        resp = resp * 0.5 * (1 + np.cos(2 * np.pi * f))
    return torch.as_tensor(resp, dtype=dtype, device=device)


def filter_sinogram(sino: torch.Tensor, filter_name: str = "ramp") -> torch.Tensor:
    """Convolve sinograms ``(..., A, U)`` with the ramp filter along U (pixel units)."""
    n_det = sino.shape[-1]
    resp = ramp_filter(n_det, filter_name, dtype=sino.dtype, device=sino.device)
    p = 2 * (resp.shape[0] - 1)
    spec = torch.fft.rfft(sino, n=p, dim=-1) * resp
    return torch.fft.irfft(spec, n=p, dim=-1)[..., :n_det]


def fbp(sino, angles, size, *, pixel_mm: float = 1.0, filter_name: str = "ramp", budget_bytes: int | None = None):
    """Filtered back-projection: sinograms of line integrals -> images in 1/mm.

    Args:
        sino: ``(..., A, U)`` line integrals (unitless, e.g. A = -ln T), angles over [0, pi).
        angles: radians, shape (A,), equally spaced over [0, pi) for a correct scale.
        size: X (square) or ``(X, Y)``; U must equal X.
        pixel_mm: pixel size in mm.
        filter_name: ``"ramp"``, ``"shepp-logan"`` or ``"hann"``.
        budget_bytes: memory budget of the back-projector blocks, their cache and the dense
            temporaries (default :data:`dfseg.tomo.projector.OPERATOR_BUDGET_BYTES`).

    Returns:
        ``(..., X, Y)`` reconstruction in 1/mm; numpy in -> numpy out, tensors stay on their device.
    """
    s, was_numpy = _as_tensor(sino)
    nx, ny = _size_xy(size)
    a = _angles_array(angles)
    if s.ndim < 2 or s.shape[-2:] != (a.size, nx):
        raise InputError("fbp", f"sinogram shape {tuple(s.shape)} does not end in (A={a.size}, U={nx})")
    resp = ramp_filter(nx, filter_name, dtype=s.dtype, device=s.device)
    p = 2 * (resp.shape[0] - 1)

    def filtered(seg: torch.Tensor, n_angles: int) -> torch.Tensor:
        """Filter a block's sinogram columns ``(n, n_angles*U)`` along U."""
        spec = torch.fft.rfft(seg.reshape(-1, n_angles, nx), n=p, dim=-1)
        spec.mul_(resp)
        q = torch.fft.irfft(spec, n=p, dim=-1)
        del spec
        return q[..., :nx].reshape(-1, n_angles * nx)

    # per sinogram row: the complex spectrum, the padded filtered row, its U bins and their transpose
    row_bytes = s.element_size() * ((p + 2) + p + 2 * nx)
    img = apply_operator(
        "fbp", s.reshape(-1, a.size * nx), nx, ny, a, budget_bytes=budget_bytes,
        prepare=filtered, prepare_bytes=row_bytes,
    )
    img.mul_(math.pi / a.size / pixel_mm)
    return _out(img.reshape(*s.shape[:-2], nx, ny), was_numpy)
