"""Centre of rotation from the projections themselves (no calibration scan).

Three estimators of :attr:`Geometry.cor_offset_px <dfseg.tomo.geometry.Geometry>` (where the
rotation axis projects, detector pixels right of the detector centre):

* ``"mirror"`` (parallel beam with projections 180 degrees apart: 360 degree scans, or a
  [0, 180] list): a parallel projection at t + pi is the one at t mirrored about the axis, so the
  mirrored partner is the projection shifted by twice the offset. The cross-correlations of all
  pairs are summed and their peak located to a fraction of a pixel by evaluating the correlation
  through its Fourier series (band-limited interpolation) around the best integer lag.
* ``"centroid"`` (parallel beam, any angles, e.g. [0, 180)): the centre of mass of each
  projection is the projection of the object's centre of mass, a sinusoid
  ``c + a cos t + b sin t`` in t (the first Helgason-Ludwig consistency condition); a linear
  least-squares fit gives c. Needs the object inside the detector in every projection.
* ``"conjugate"`` (cone beam, and parallel beam over more than 180 degrees): every ray of the
  mid-plane (row v = 0) is measured again as its conjugate ``(t + pi + 2 gamma, -gamma)``; the
  offset that makes the sinogram agree best with itself (least squares over all rays whose
  conjugate lies inside the scan, linear interpolation in angle and column) is searched on a
  grid and refined by a bounded scalar minimisation. Works for 360 degree and short scans.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from dfseg.errors import InputError
from dfseg.tomo.geometry import Geometry

__all__ = ["COR_METHODS", "estimate_cor"]

COR_METHODS = ("auto", "mirror", "centroid", "conjugate")


def _as_array(proj) -> np.ndarray:
    if isinstance(proj, torch.Tensor):
        proj = proj.detach().cpu().numpy()
    p = np.asarray(proj, dtype=np.float64)
    if p.ndim < 3:
        raise InputError("projections", f"expected (..., A, U, V), got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise InputError("projections", f"{int((~np.isfinite(p)).sum())} NaN/Inf values")
    return p.reshape(-1, *p.shape[-3:]).mean(axis=0)  # channels see the same axis


def _opposite_pairs(angles: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (a, b) with angle_b = angle_a + pi (mod 2 pi) within a tenth of the angular step."""
    s = np.sort(np.mod(angles, 2 * math.pi))
    steps = np.diff(s)
    step = float(np.median(steps[steps > 1e-9])) if np.any(steps > 1e-9) else math.pi
    tol = min(0.1 * step, 1e-2)
    pairs = []
    for a, t in enumerate(angles):
        d = np.abs(np.angle(np.exp(1j * (angles - t - math.pi))))
        b = int(np.argmin(d))
        if d[b] <= tol and a < b:
            pairs.append((a, b))
    return pairs


def _mirror(sino: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    n_u = sino.shape[1]
    n_fft = 2 * n_u
    x = np.fft.rfft(sino[[a for a, _ in pairs]], n=n_fft, axis=-1)
    y = np.fft.rfft(sino[[b for _, b in pairs], ::-1], n=n_fft, axis=-1)
    cross = (x * np.conj(y)).sum(axis=0)  # correlation c(L) = sum_k x[k + L] y[k], summed over pairs
    corr = np.fft.irfft(cross, n=n_fft)
    lags = np.r_[np.arange(n_u), np.arange(-n_u, 0)]
    best = float(lags[int(np.argmax(corr))])
    # band-limited interpolation of c around the best integer lag: c(s) = Re sum_f w_f X_f conj(Y_f) e^{2 pi i f s}
    f = np.arange(cross.size) / n_fft
    wts = np.full(cross.size, 2.0)
    wts[0] = 1.0
    if n_fft % 2 == 0:
        wts[-1] = 1.0

    def neg_corr(s: float) -> float:
        return -float(np.real((wts * cross * np.exp(2j * math.pi * f * s)).sum()))

    lag = minimize_scalar(neg_corr, bounds=(best - 1, best + 1), method="bounded", options={"xatol": 1e-4}).x
    # the mirrored partner is the projection shifted by 2 * cor
    return float(lag) / 2


def _centroid(sino: np.ndarray, angles: np.ndarray) -> float:
    mass = sino.sum(axis=1)
    if np.any(mass <= 0):
        raise InputError("projections", "the centroid method needs positive line integrals in every projection")
    k = np.arange(sino.shape[1])
    m = (sino * k).sum(axis=1) / mass
    design = np.stack([np.ones_like(angles), np.cos(angles), np.sin(angles)], axis=1)
    if np.linalg.matrix_rank(design) < 3:
        raise InputError("geometry.angles_deg", "the centroid method needs at least three distinct angles")
    c = np.linalg.lstsq(design, m, rcond=None)[0][0]
    return float(c - (sino.shape[1] - 1) / 2)


def _mid_row(p: np.ndarray) -> np.ndarray:
    n_v = p.shape[-1]
    c = (n_v - 1) / 2
    lo, hi = math.floor(c), math.ceil(c)
    return 0.5 * (p[..., lo] + p[..., hi])


class _Conjugate:
    """Mismatch between a mid-plane sinogram and its conjugate rays, as a function of the offset."""

    def __init__(self, sino: np.ndarray, angles: np.ndarray, geometry: Geometry, du: float):
        self.sino = sino
        self.n_a, self.n_u = sino.shape
        self.du = du
        self.sd = geometry.source_detector_mm if geometry.kind == "cone" else None
        a = np.mod(angles, 2 * math.pi)
        order = np.argsort(a, kind="stable")
        s = a[order]
        gaps = np.diff(np.r_[s, s[0] + 2 * math.pi])
        med = float(np.median(gaps[gaps > 1e-12]))
        self.full = bool(gaps.max() <= 4 * med)
        self.start = 0.0 if self.full else float(s[(int(np.argmax(gaps)) + 1) % s.size])
        beta = np.mod(a - self.start, 2 * math.pi)
        order = np.argsort(beta, kind="stable")
        self.beta_sorted = beta[order]
        self.rows_sorted = sino[order]
        self.beta = beta

    def _angle_interp(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Neighbours and weights of query angles q (from the start), with a validity mask."""
        b = self.beta_sorted
        n = b.size
        q = np.mod(q, 2 * math.pi)
        hi = np.searchsorted(b, q, side="right")
        if self.full:
            lo = (hi - 1) % n
            hi = hi % n
            b_lo = b[lo]
            span = np.mod(b[hi] - b_lo, 2 * math.pi)
            span = np.where(span <= 0, 2 * math.pi, span)
            w = np.mod(q - b_lo, 2 * math.pi) / span
            ok = np.ones(q.shape, bool)
        else:
            ok = (hi >= 1) & (hi <= n - 1) | np.isclose(q, b[-1])
            hi = np.clip(hi, 1, n - 1)
            lo = hi - 1
            span = b[hi] - b[lo]
            w = np.where(span > 0, (q - b[lo]) / np.where(span > 0, span, 1), 0.0)
            ok &= (w >= 0) & (w <= 1)
        return lo, hi, np.clip(w, 0, 1), ok

    def cost(self, cor: float) -> float:
        k = np.arange(self.n_u)
        c = (self.n_u - 1) / 2 + cor
        u = (k - c) * self.du
        gamma = np.arctan(u / self.sd) if self.sd is not None else np.zeros_like(u)
        q = self.beta[:, None] + math.pi + 2 * gamma[None, :]  # (A, U) conjugate angles
        kc = 2 * c - k  # conjugate column
        lo, hi, w, ok = self._angle_interp(q)
        k0 = np.floor(kc).astype(int)
        fk = kc - k0
        col_ok = (k0 >= 0) & (k0 + 1 <= self.n_u - 1) | np.isclose(kc, self.n_u - 1)
        k0 = np.clip(k0, 0, self.n_u - 2)
        ok &= col_ok[None, :]
        if ok.sum() < 0.05 * ok.size:
            return math.inf
        r = self.rows_sorted
        kk = np.broadcast_to(k0, q.shape)

        def at(rows: np.ndarray) -> np.ndarray:
            return r[rows, kk] * (1 - fk) + r[rows, kk + 1] * fk

        conj = at(lo) * (1 - w) + at(hi) * w
        diff = (self.sino - conj)[ok]
        return float(np.mean(diff**2))


def estimate_cor(proj, geometry: Geometry | dict | None = None, *, voxel_mm: float | None = None,
                 method: str = "auto", search_px: float | None = None) -> float:
    """Centre-of-rotation offset of a projection stack, detector pixels (``Geometry.cor_offset_px``).

    Args:
        proj: ``(..., A, U, V)`` line integrals (unitless), numpy or torch; leading channels are
            averaged.
        geometry: the scan geometry (its own ``cor_offset_px`` is ignored); default parallel over
            [0, 180).
        voxel_mm: only for a cone geometry without ``detector_pixel_mm``.
        method: ``"auto"`` (parallel: ``"mirror"`` when projections 180 degrees apart exist, else
            ``"centroid"``; cone: ``"conjugate"``), or one of them.
        search_px: ``"conjugate"``: offsets searched within +-search_px (default U / 4).

    Returns:
        The offset in detector pixels; ``geometry.replace(cor_offset_px=...)`` reconstructs with it.
    """
    if method not in COR_METHODS:
        raise InputError("method", f"unknown centre-of-rotation method {method!r}; choose one of {', '.join(COR_METHODS)}")
    g = Geometry.from_meta(geometry)
    p = _as_array(proj)
    n_a, n_u, n_v = g.check_projections(p.shape)
    angles = g.angles(n_a)
    if method == "auto":
        method = "conjugate" if g.kind == "cone" else ("mirror" if _opposite_pairs(angles) else "centroid")
    if method in ("mirror", "centroid") and g.kind != "parallel":
        raise InputError("method", f"{method!r} holds for parallel beams only; use 'conjugate' for cone beam")
    if method == "mirror":
        pairs = _opposite_pairs(angles)
        if not pairs:
            raise InputError("geometry.angles_deg", "no two projections 180 degrees apart for the mirror method")
        return _mirror(p.sum(axis=-1), pairs)
    if method == "centroid":
        return _centroid(p.sum(axis=-1), angles)
    du = g.pixel_mm(voxel_mm)[0]
    problem = _Conjugate(_mid_row(p), angles, g, du)
    reach = float(search_px) if search_px is not None else n_u / 4
    grid = np.arange(-reach, reach + 1e-9, 0.25)
    costs = np.array([problem.cost(c) for c in grid])
    if not np.any(np.isfinite(costs)):
        raise InputError("projections", "too few conjugate rays inside the scan to estimate the centre of rotation")
    best = float(grid[int(np.argmin(costs))])
    res = minimize_scalar(problem.cost, bounds=(best - 0.5, best + 0.5), method="bounded", options={"xatol": 1e-3})
    return float(res.x)
