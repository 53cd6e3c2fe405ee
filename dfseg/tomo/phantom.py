"""Analytic ellipsoid phantoms: exact line integrals for any :class:`~dfseg.tomo.geometry.Geometry`.

A ray ``o + s d`` (unit d) meets the ellipsoid ``|R^T (x - c) / a| <= 1`` over a chord of length
``2 sqrt(B^2 - A C) / A`` with ``A = |d'|^2``, ``B = o'.d'``, ``C = |o'|^2 - 1`` in the ellipsoid's
scaled frame (``o' = R^T (o - c) / a``, ``d' = R^T d / a``). The projections are the closed form;
the volume is the phantom sampled on the voxel grid (supersampled, so edges get partial volumes).
An ellipsoid is uniform, or ``profile="quadratic"``: ``value * (1 - r^2)`` in its scaled radius r,
continuous at the surface, with line integral ``value * A L^3 / 6`` over a chord of length L (its
projections have no edge for discretisation errors to concentrate on). Used as the oracle of the
projectors and reconstructions (tests, bench).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dfseg.tomo.geometry import Geometry, detector_rays

__all__ = ["PROFILES", "Ellipsoid", "ellipsoid_projections", "ellipsoid_volume", "line_integrals"]

PROFILES = ("uniform", "quadratic")


@dataclass(frozen=True)
class Ellipsoid:
    """One ellipsoid: ``value`` (1/mm) added inside.

    Args:
        value: added attenuation (at the centre for the quadratic profile), 1/mm.
        centre_mm: (x, y, z) centre in mm.
        axes_mm: (a, b, c) semi-axes in mm.
        phi_deg: rotation about z, degrees.
        profile: ``"uniform"`` or ``"quadratic"`` (``value * (1 - r^2)``, r the scaled radius).
    """

    value: float
    centre_mm: tuple[float, float, float]
    axes_mm: tuple[float, float, float]
    phi_deg: float = 0.0
    profile: str = "uniform"

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; one of {PROFILES}")

    def _frame(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = math.radians(self.phi_deg)
        rot = np.array([[math.cos(p), -math.sin(p), 0.0], [math.sin(p), math.cos(p), 0.0], [0.0, 0.0, 1.0]])
        return np.asarray(self.centre_mm, float), rot, np.asarray(self.axes_mm, float)


def line_integrals(ellipsoids: Sequence[Ellipsoid], origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Exact line integrals along rays ``origin + s direction`` (unit directions), shape ``origin.shape[:-1]``."""
    o = np.asarray(origin, dtype=np.float64)
    d = np.asarray(direction, dtype=np.float64)
    out = np.zeros(o.shape[:-1])
    for e in ellipsoids:
        c, rot, ax = e._frame()
        op = ((o - c) @ rot) / ax
        dp = (d @ rot) / ax
        a = np.einsum("...i,...i->...", dp, dp)
        b = np.einsum("...i,...i->...", op, dp)
        cc = np.einsum("...i,...i->...", op, op) - 1.0
        chord = 2.0 * np.sqrt(np.clip(b * b - a * cc, 0.0, None)) / a
        # quadratic: 1 - |o' + s d'|^2 = a (s - s1)(s2 - s) over the chord, integral a L^3 / 6
        out += e.value * (chord if e.profile == "uniform" else a * chord**3 / 6.0)
    return out


def ellipsoid_projections(ellipsoids: Sequence[Ellipsoid], geometry: Geometry, *, n_angles: int | None = None,
                          voxel_mm: float | None = None) -> np.ndarray:
    """Exact projections ``(A, U, V)`` (line integrals, unitless) of the phantom in ``geometry``.

    Args:
        ellipsoids: the phantom.
        geometry: needs ``detector_shape``; ``detector_pixel_mm`` or ``voxel_mm`` for the pitch.
        n_angles: A when the geometry has no angle list.
        voxel_mm: only to derive the detector pitch when ``detector_pixel_mm`` is unset.
    """
    if geometry.detector_shape is None:
        raise ValueError("ellipsoid_projections needs geometry.detector_shape")
    n_u, n_v = geometry.detector_shape
    t = torch.as_tensor(geometry.angles(n_angles), dtype=torch.float64)
    u, v = (torch.as_tensor(x) for x in geometry.detector_coordinates(n_u, n_v, voxel_mm))
    out = np.empty((t.shape[0], n_u, n_v))
    step = max(1, 2**22 // (n_u * n_v))
    for a0 in range(0, t.shape[0], step):
        o, d = detector_rays(geometry, t[a0:a0 + step], u, v)
        out[a0:a0 + step] = line_integrals(ellipsoids, o.numpy(), d.numpy())
    return out


def ellipsoid_volume(ellipsoids: Sequence[Ellipsoid], shape: Sequence[int], voxel_mm: float, *,
                     supersample: int = 3) -> np.ndarray:
    """The phantom on the voxel grid ``(X, Y, Z)`` (centres at ``(i - (n-1)/2) * voxel_mm``), 1/mm,
    each voxel the mean of ``supersample**3`` point samples."""
    nx, ny, nz = (int(s) for s in shape)
    off = ((np.arange(supersample) + 0.5) / supersample - 0.5) * voxel_mm
    axes = [((np.arange(n) - (n - 1) / 2) * voxel_mm)[:, None] + off[None, :] for n in (nx, ny, nz)]
    x, y, z = (a.reshape(-1) for a in axes)
    vol = np.zeros((nx * supersample, ny * supersample, nz * supersample))
    for e in ellipsoids:
        c, rot, ax = e._frame()
        # point p inside when |R^T (p - c) / a| <= 1; R is a rotation about z
        xx = (x - c[0])[:, None, None]
        yy = (y - c[1])[None, :, None]
        zz = ((z - c[2]) / ax[2])[None, None, :]
        xr = (xx * rot[0, 0] + yy * rot[1, 0]) / ax[0]
        yr = (xx * rot[0, 1] + yy * rot[1, 1]) / ax[1]
        r2 = xr**2 + yr**2 + zz**2
        vol += e.value * ((r2 <= 1.0) if e.profile == "uniform" else np.clip(1.0 - r2, 0.0, None))
    return vol.reshape(nx, supersample, ny, supersample, nz, supersample).mean(axis=(1, 3, 5))
