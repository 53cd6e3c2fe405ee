"""Parallel-beam FBP for any :class:`~dfseg.tomo.geometry.Geometry`: angle lists, 360 degree scans,
centre-of-rotation offset, detector pixel != voxel.

Rows are first resampled onto the volume's slices (linear interpolation along v, the rows being
parallel to the slices), then every slice is reconstructed by a ramp filter along u (in mm of the
detector pitch) and a voxel-driven back-projection that reads each filtered projection at the
voxel's own detector coordinate ``u = -x sin t + y cos t`` (linear interpolation, zero beyond the
detector), weighted by :func:`~dfseg.tomo.geometry.angle_weights` (each parallel ray counts once
whatever the angle list). Angles and slices run in chunks within a byte budget; torch only, on the
device of the input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dfseg.errors import InputError
from dfseg.tomo import projector as _projector
from dfseg.tomo.fbp import ramp_filter
from dfseg.tomo.geometry import Geometry, angle_weights
from dfseg.tomo.projector import _as_tensor, _out

__all__ = ["fbp_parallel"]


def _filtered(x: torch.Tensor, resp: torch.Tensor, n_det: int) -> torch.Tensor:
    """Ramp-filter ``(..., U)`` along its last axis (zero-padded rfft to ``2 (len(resp) - 1)``)."""
    p = 2 * (resp.shape[0] - 1)
    spec = torch.fft.rfft(x, n=p, dim=-1)
    spec.mul_(resp)
    return torch.fft.irfft(spec, n=p, dim=-1)[..., :n_det]


def _resample_last(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``x (..., V)`` at fractional indices ``index (Z,)``, zero beyond
    the samples (each sample falls to zero one pitch outside): ``(..., Z)``."""
    n = x.shape[-1]
    i0 = torch.floor(index)
    f = (index - i0).to(x.dtype)
    i0 = i0.long()
    out = x.new_zeros((*x.shape[:-1], index.shape[0]))
    for i, w in ((i0, 1 - f), (i0 + 1, f)):
        ok = (i >= 0) & (i < n)
        out += x[..., i.clamp(0, n - 1)] * (w * ok)
    return out


def _reconstruction_setup(proj, geometry, voxel_mm: float, volume_shape, kind: str, caller: str, other: str):
    """What every reconstruction of a :class:`Geometry` starts from: the geometry (checked to be
    ``kind``), the projections as a tensor, their ``(A, U, V)``, the voxel, the output shape and the
    detector pitch ``(du, dv)`` in mm."""
    g = Geometry.from_meta(geometry)
    if g.kind != kind:
        raise InputError("geometry.kind", f"{caller} needs a {kind} beam, got {g.kind!r} (use {other})")
    p, was_numpy = _as_tensor(proj)
    n_a, n_u, n_v = g.check_projections(p.shape)
    voxel = float(voxel_mm)
    shape = tuple(volume_shape) if volume_shape is not None else g.volume_shape(voxel, n_u, n_v)
    return g, p, was_numpy, (n_a, n_u, n_v), voxel, shape, g.pixel_mm(voxel)


def fbp_parallel(proj, geometry: Geometry | dict | None, voxel_mm: float, *,
                 volume_shape: tuple[int, int, int] | None = None, filter_name: str = "ramp",
                 budget_bytes: int | None = None):
    """Parallel-beam filtered back-projection of projection stacks in any parallel geometry.

    Args:
        proj: ``(..., A, U, V)`` line integrals (unitless), numpy or torch; leading dimensions
            (channels, orientations) are reconstructed independently.
        geometry: a parallel :class:`Geometry` (or its sidecar block); angles any list, 180 or
            360 degrees.
        voxel_mm: voxel size of the output in mm.
        volume_shape: ``(X, Y, Z)``; default :meth:`Geometry.volume_shape`.
        filter_name: ``"ramp"``, ``"shepp-logan"`` or ``"hann"``.
        budget_bytes: bytes for the filtered chunks and back-projection temporaries (default
            :data:`dfseg.tomo.projector.OPERATOR_BUDGET_BYTES`).

    Returns:
        ``(..., X, Y, Z)`` in 1/mm; numpy in -> numpy out, tensors stay on their device.
    """
    g, p, was_numpy, (n_a, n_u, n_v), voxel, (nx, ny, nz), (du, dv) = _reconstruction_setup(
        proj, geometry, voxel_mm, volume_shape, "parallel", "fbp_parallel", "fdk")
    budget = _projector._budget(budget_bytes)
    angles = g.angles(n_a)
    weights = angle_weights(angles, math.pi)
    lead = p.shape[:-3]
    x = p.reshape(-1, n_a, n_u, n_v)
    if n_v != nz or dv != voxel:
        z = (torch.arange(nz, dtype=torch.float64) - (nz - 1) / 2) * voxel
        x = _resample_last(x, (z / dv + (n_v - 1) / 2).to(x.device))
    sino = x.permute(0, 3, 1, 2).reshape(-1, n_a, n_u)  # (B*Z, A, U): slices fold into the batch
    img = backproject_parallel(sino, angles, weights, du, g.cor_offset_px, (nx, ny), voxel,
                               filter_name=filter_name, budget=budget)
    vol = img.reshape(*lead, nz, nx, ny).movedim(-3, -1).contiguous()
    return _out(vol, was_numpy)


def backproject_parallel(sino: torch.Tensor, angles, weights, du: float, cor_px: float, size: tuple[int, int],
                         voxel_mm: float, *, filter_name: str | None = "ramp", budget: int) -> torch.Tensor:
    """Filter (optional) and back-project sinograms ``(n, A, U)`` onto ``(n, X, Y)`` images.

    Each angle's filtered row is scaled by ``weights[a] / du`` and read at the pixel's column
    ``(-x sin t + y cos t) / du + (U-1)/2 + cor_px`` (linear interpolation, zero outside).
    ``filter_name=None`` skips the filter (a plain weighted back-projection).
    """
    n, n_a, n_u = sino.shape
    nx, ny = size
    dt, dev = sino.dtype, sino.device
    item = sino.element_size()
    resp = None if filter_name is None else ramp_filter(n_u, filter_name, dtype=dt, device=dev)
    pad = 0 if resp is None else 2 * (resp.shape[0] - 1)
    npix = nx * ny
    per_row_angle = (3 * pad + n_u + 2 * npix) * item  # spectrum, filtered row, samples, their sum
    per_angle = 4 * npix * item  # grid and column indices
    a_chunk = max(1, min(n_a, budget // (n * per_row_angle + per_angle)))
    n_chunk = n if a_chunk > 1 else max(1, min(n, (budget - per_angle) // per_row_angle))
    xs = (torch.arange(nx, dtype=torch.float64, device=dev) - (nx - 1) / 2) * voxel_mm
    ys = (torch.arange(ny, dtype=torch.float64, device=dev) - (ny - 1) / 2) * voxel_mm
    t = torch.as_tensor(angles, dtype=torch.float64, device=dev)
    scale = torch.as_tensor(weights, dtype=dt, device=dev) / du
    out = sino.new_zeros((n, npix))
    for a0 in range(0, n_a, a_chunk):
        a1 = min(a0 + a_chunk, n_a)
        c, s = torch.cos(t[a0:a1]), torch.sin(t[a0:a1])
        col = (-xs[None, :, None] * s[:, None, None] + ys[None, None, :] * c[:, None, None]) / du
        col = col + (n_u - 1) / 2 + cor_px
        grid = torch.zeros((a1 - a0, 1, npix, 2), dtype=dt, device=dev)
        grid[..., 0] = ((2 * col + 1) / n_u - 1).reshape(a1 - a0, 1, npix)  # align_corners=False
        del col
        for n0 in range(0, n, n_chunk):
            n1 = min(n0 + n_chunk, n)
            q = sino[n0:n1, a0:a1]
            q = _filtered(q, resp, n_u) if resp is not None else q.clone()
            q.mul_(scale[a0:a1, None])
            q = q.transpose(0, 1).unsqueeze(2)  # (a, n, 1, U): one image per angle, rows as channels
            samp = F.grid_sample(q, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out[n0:n1] += samp.sum(0)[:, 0]
            del q, samp
    return out.reshape(n, nx, ny)
