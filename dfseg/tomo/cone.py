"""Circular cone beam: a ray-driven projector for any geometry and FDK reconstruction (torch, CPU or CUDA).

Projector (:func:`project_geometry`, parallel or cone): Joseph's method in 3D. Per angle the rays
step plane by plane along the volume axis (x or y) the central ray is closest to; at each plane
the volume is interpolated bilinearly (``grid_sample`` on the stack of planes, zero outside) and
weighted by the path length per step ``voxel / |d_axis|``. In dfseg's default geometry it is
:func:`dfseg.tomo.project` (tests/tomo/test_geometry.py).

FDK (:func:`fdk`, Feldkamp-Davis-Kress): cosine pre-weighting ``SD / sqrt(SD^2 + u^2 + v^2)``,
the ramp filter along detector rows in the pitch seen at the axis (``du / M``), and a voxel-driven
back-projection: each voxel reads the filtered projection at its own detector position
(bilinear, zero beyond the detector) weighted by ``(SO / (SO + s))^2``, s the voxel's distance
from the axis towards the detector. Redundancy: a full orbit weights each angle by its angular
cell over 2 pi, halved (:func:`~dfseg.tomo.geometry.angle_weights`); a shorter scan (at least
180 degrees plus the fan angle) gets Parker's short-scan weights, generalised to over-scans.

Memory stays within a byte budget (``budget_bytes``, default
:data:`dfseg.tomo.projector.OPERATOR_BUDGET_BYTES`): angles, detector rows and z-slabs run in
chunks. Leading dimensions (channels, orientations) fold into one batch that shares the
sampling grids.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dfseg.errors import InputError
from dfseg.tomo import projector as _projector
from dfseg.tomo.fbp import ramp_filter
from dfseg.tomo.geometry import Geometry, angle_weights, detector_rays
from dfseg.tomo.parallel import _filtered, _reconstruction_setup
from dfseg.tomo.projector import _as_tensor, _out

__all__ = ["fdk", "parker_weights", "project_geometry", "redundancy_weights"]


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``[(a0, a1), ...]`` runs of equal consecutive flags."""
    cuts = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
    return list(zip(np.r_[0, cuts].tolist(), np.r_[cuts, flags.size].tolist()))


def project_geometry(volume, geometry: Geometry | dict | None, voxel_mm: float, *, n_angles: int | None = None,
                     budget_bytes: int | None = None):
    """Line integrals of volumes through a parallel or cone-beam geometry (Joseph's method, 3D).

    Args:
        volume: ``(..., X, Y, Z)`` values per mm (e.g. mu in 1/mm), numpy or torch; leading
            dimensions are projected independently.
        geometry: the scan geometry (or its sidecar block). Without ``detector_shape`` the detector
            covers the volume: ``U = round(X voxel M / du)``, ``V = round(Z voxel M / dv)``.
        voxel_mm: voxel size in mm (cubic voxels).
        n_angles: A when the geometry has no angle list.
        budget_bytes: bytes for the sampling grids and samples of one chunk of rays (default
            :data:`dfseg.tomo.projector.OPERATOR_BUDGET_BYTES`); the volumes are also held
            once or twice more, as stacks of planes along x and y.

    Returns:
        ``(..., A, U, V)`` line integrals (unitless); numpy in -> numpy out, tensors stay on
        their device.
    """
    g = Geometry.from_meta(geometry)
    x, was_numpy = _as_tensor(volume)
    if x.ndim < 3:
        raise InputError("project_geometry", f"volumes must be (..., X, Y, Z), got shape {tuple(x.shape)}")
    voxel = float(voxel_mm)
    nx, ny, nz = x.shape[-3:]
    du, dv = g.pixel_mm(voxel)
    if g.detector_shape is not None:
        n_u, n_v = g.detector_shape
    else:
        n_u = max(1, round(nx * voxel * g.magnification / du))
        n_v = max(1, round(nz * voxel * g.magnification / dv))
    t_all = g.angles(n_angles)
    n_a = t_all.size
    lead = x.shape[:-3]
    vol = x.reshape(-1, nx, ny, nz)
    nb = vol.shape[0]
    # one image per plane of the marching axis, batch as channels: (X, B, Y, Z) or (Y, B, X, Z)
    stacks = (vol.permute(1, 0, 2, 3).contiguous(), None)
    dt, dev = x.dtype, x.device
    u_np, v_np = g.detector_coordinates(n_u, n_v, voxel)
    u = torch.as_tensor(u_np, dtype=dt, device=dev)
    v = torch.as_tensor(v_np, dtype=dt, device=dev)
    half = torch.tensor([nx, ny, nz], dtype=dt, device=dev) * (voxel / 2)  # normalised = coordinate / half
    planes = [(torch.arange(n, dtype=dt, device=dev) - (n - 1) / 2) * voxel for n in (nx, ny)]
    out = x.new_empty((nb, n_a, n_u, n_v))
    budget = _projector._budget(budget_bytes)
    item = x.element_size()
    along_x = np.abs(np.cos(t_all)) >= np.abs(np.sin(t_all))
    for r0, r1 in _runs(along_x):
        axis = 0 if along_x[r0] else 1
        other = 1 - axis
        if axis == 1 and stacks[1] is None:
            stacks = (stacks[0], vol.permute(2, 0, 1, 3).contiguous())
        images = stacks[axis]
        steps = planes[axis]
        n_s = steps.shape[0]
        rays = max(1, budget // ((6 + nb) * n_s * item))  # parameter, grid, samples per plane and ray
        v_chunk = n_v if rays >= n_u * n_v else max(1, rays // n_u)
        a_chunk = max(1, rays // (n_u * v_chunk)) if v_chunk == n_v else 1
        for a0 in range(r0, r1, a_chunk):
            a1 = min(a0 + a_chunk, r1)
            t = torch.as_tensor(t_all[a0:a1], dtype=dt, device=dev)
            for v0 in range(0, n_v, v_chunk):
                v1 = min(v0 + v_chunk, n_v)
                o, d = detector_rays(g, t, u, v[v0:v1])  # (a, U, v, 3)
                o, d = o.reshape(1, -1, 3), d.reshape(1, -1, 3)  # rays flattened
                lam = (steps[:, None] - o[..., axis]) / d[..., axis]  # (S, rays): ray parameter at each plane
                # bilinear in each plane (the plane's own coordinate is exact): grid (S, rays, 1, 2) as (z, other)
                grid = x.new_empty((n_s, o.shape[1], 1, 2))
                for k, c in ((2, 0), (other, 1)):
                    torch.addcmul(o[..., k] / half[k], lam, d[..., k] / half[k], out=grid[..., 0, c])
                del lam
                samp = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                del grid
                step_len = voxel / d[0, :, axis].abs()  # (rays,)
                out[:, a0:a1, :, v0:v1] = (samp.sum(0)[:, :, 0] * step_len).reshape(nb, a1 - a0, n_u, v1 - v0)
                del samp
    return _out(out.reshape(*lead, n_a, n_u, n_v), was_numpy)


# --------------------------------------------------------------------------- redundancy weights


def parker_weights(beta: np.ndarray, gamma: np.ndarray, scan: float) -> np.ndarray:
    """Parker's short-scan weights ``(A, U)``, generalised to scans longer than pi + fan angle.

    Args:
        beta: (A,) angles from the start of the scan, radians, in ``[0, scan]``.
        gamma: (U,) fan angle of each column, radians (positive along the rotation direction;
            the conjugate of ray (beta, gamma) is (beta + pi + 2 gamma, -gamma)).
        scan: the scanned arc ``pi + 2 delta``, radians, with ``delta >= max |gamma|``.

    Returns:
        Weights in [0, 1]; the two measurements of each line sum to one.
    """
    delta = (scan - math.pi) / 2
    b = np.asarray(beta, dtype=np.float64)[:, None]
    gm = np.asarray(gamma, dtype=np.float64)[None, :]
    eps = 1e-12
    w = np.ones((b.shape[0], gm.shape[1]))
    rise = b < 2 * (delta - gm)
    w = np.where(rise, np.sin(math.pi / 4 * b / np.maximum(delta - gm, eps)) ** 2, w)
    fall = b > math.pi - 2 * gm
    w = np.where(fall, np.sin(math.pi / 4 * (scan - b) / np.maximum(delta + gm, eps)) ** 2, w)
    return np.clip(w, 0.0, 1.0)


def redundancy_weights(geometry: Geometry, angles: np.ndarray, u_mm: np.ndarray) -> np.ndarray:
    """Per-(angle, column) quadrature weights of a cone-beam scan, ``(A, U)``, radians.

    A full orbit (no gap between angles much longer than the median one) gets each angle's cell
    on the 2 pi circle, halved: every line is measured twice. A shorter arc gets its angular
    cells times :func:`parker_weights`; it must cover at least 180 degrees plus the fan angle.

    Args:
        geometry: a cone geometry.
        angles: (A,) radians.
        u_mm: (U,) detector column coordinates from the axis' projection, mm.
    """
    a = np.asarray(angles, dtype=np.float64)
    n = a.size
    gamma = np.arctan(np.asarray(u_mm, dtype=np.float64) / geometry.source_detector_mm)
    s = np.sort(np.mod(a, 2 * math.pi))
    gaps = np.diff(np.r_[s, s[0] + 2 * math.pi])
    positive = gaps[gaps > 1e-9]
    med = float(np.median(positive)) if positive.size else 2 * math.pi
    if n > 1 and gaps.max() <= 4 * med:
        return np.broadcast_to(angle_weights(a, 2 * math.pi)[:, None], (n, gamma.size)).copy()
    # short scan: start after the largest gap, beta increasing along the rotation direction
    start = s[(int(np.argmax(gaps)) + 1) % s.size]
    beta = np.mod(a - start, 2 * math.pi)
    scan = float(beta.max())
    need = math.pi + 2 * float(np.abs(gamma).max())
    if scan < need - 0.5 * med:
        raise InputError("geometry.angles_deg",
                         f"a cone-beam scan over {math.degrees(scan):.1f} deg is too short: FDK needs 360 deg "
                         f"or a short scan of at least 180 deg + the fan angle = {math.degrees(need):.1f} deg")
    order = np.argsort(beta, kind="stable")
    bs = beta[order]
    g = np.diff(bs)
    g_lo = np.r_[g[:1], g] if g.size else np.array([med])
    g_hi = np.r_[g, g[-1:]] if g.size else np.array([med])
    cell = np.empty(n)
    cell[order] = 0.5 * (g_lo + g_hi)
    return cell[:, None] * parker_weights(beta, gamma, max(scan, need))


# --------------------------------------------------------------------------- FDK


def fdk(proj, geometry: Geometry | dict, voxel_mm: float, *, volume_shape: tuple[int, int, int] | None = None,
        filter_name: str = "ramp", budget_bytes: int | None = None):
    """Feldkamp-Davis-Kress reconstruction of circular cone-beam projection stacks.

    Args:
        proj: ``(..., A, U, V)`` line integrals (unitless), numpy or torch; leading dimensions
            (channels, orientations) are reconstructed independently.
        geometry: a cone :class:`Geometry` (or its sidecar block): a full 360 degree orbit, or a
            short scan of at least 180 degrees plus the fan angle (Parker weights).
        voxel_mm: voxel size of the output in mm.
        volume_shape: ``(X, Y, Z)``; default :meth:`Geometry.volume_shape` (the detector's field
            of view at the axis).
        filter_name: ``"ramp"``, ``"shepp-logan"`` or ``"hann"``.
        budget_bytes: bytes for one chunk of filtered projections and back-projection
            temporaries (default :data:`dfseg.tomo.projector.OPERATOR_BUDGET_BYTES`).

    Returns:
        ``(..., X, Y, Z)`` in 1/mm; numpy in -> numpy out, tensors stay on their device.
    """
    g, p, was_numpy, (n_a, n_u, n_v), voxel, (nx, ny, nz), (du, dv) = _reconstruction_setup(
        proj, geometry, voxel_mm, volume_shape, "cone", "fdk", "fbp_parallel")
    so, sd = g.source_object_mm, g.source_detector_mm
    du_axis = du * so / sd
    angles = g.angles(n_a)
    u_np, v_np = g.detector_coordinates(n_u, n_v, voxel)
    lead = p.shape[:-3]
    x = p.reshape(-1, n_a, n_u, n_v)
    nb = x.shape[0]
    dt, dev = x.dtype, x.device
    item = x.element_size()
    budget = _projector._budget(budget_bytes)

    # pre-weights (A, U, V): redundancy x cosine, then the ramp in 1/mm at the axis
    red = torch.as_tensor(redundancy_weights(g, angles, u_np), dtype=dt, device=dev)
    cosw = sd / np.sqrt(sd**2 + u_np[:, None] ** 2 + v_np[None, :] ** 2)
    cosw = torch.as_tensor(cosw / du_axis, dtype=dt, device=dev)
    resp = ramp_filter(n_u, filter_name, dtype=dt, device=dev)
    pad = 2 * (resp.shape[0] - 1)

    npix = nx * ny
    # per (angle, voxel) of a slab: grid (2), row index (1), samples (nb), weight and sum (1)
    per_av = (4 + nb) * item
    per_angle_filter = nb * n_v * (3 * pad + 2 * n_u) * item
    full = npix * nz * per_av + per_angle_filter
    a_chunk = max(1, min(n_a, budget // full))
    z_chunk = nz if a_chunk > 1 else max(1, min(nz, (budget - per_angle_filter) // max(1, npix * per_av)))

    xs = (torch.arange(nx, dtype=dt, device=dev) - (nx - 1) / 2) * voxel
    ys = (torch.arange(ny, dtype=dt, device=dev) - (ny - 1) / 2) * voxel
    zs = (torch.arange(nz, dtype=dt, device=dev) - (nz - 1) / 2) * voxel
    t_all = torch.as_tensor(angles, dtype=dt, device=dev)
    vol = x.new_zeros((nb, npix, nz))
    for a0 in range(0, n_a, a_chunk):
        a1 = min(a0 + a_chunk, n_a)
        na = a1 - a0
        q = x[:, a0:a1] * (red[a0:a1, :, None] * cosw)  # (nb, a, U, V)
        q = _filtered(q.transpose(-1, -2), resp, n_u)  # (nb, a, V, U)
        q = q.transpose(0, 1).contiguous()  # (a, nb, V, U): one image per angle, batch as channels
        c, s = torch.cos(t_all[a0:a1])[:, None, None], torch.sin(t_all[a0:a1])[:, None, None]
        depth = so + xs[None, :, None] * c + ys[None, None, :] * s  # (a, X, Y) source distance along d(t)
        lateral = -xs[None, :, None] * s + ys[None, None, :] * c
        mag = (sd / depth).reshape(na, npix)
        # normalised detector coordinates (align_corners=False, centred): 2 index / n - 1 = 2 u / (n pitch)
        gx = (lateral.reshape(na, npix) * mag + g.cor_offset_px * du) * (2 / (du * n_u))
        wdist = ((so / depth) ** 2).reshape(na, npix)[:, None, :, None]
        del depth, lateral
        for z0 in range(0, nz, z_chunk):
            z1 = min(z0 + z_chunk, nz)
            grid = x.new_empty((na, npix, z1 - z0, 2))
            grid[..., 0] = gx[:, :, None]
            torch.mul(mag[:, :, None], zs[z0:z1] * (2 / (dv * n_v)), out=grid[..., 1])
            samp = F.grid_sample(q, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            del grid
            samp.mul_(wdist)
            vol[:, :, z0:z1] += samp.sum(0)
            del samp
        del q
    return _out(vol.reshape(*lead, nx, ny, nz), was_numpy)
