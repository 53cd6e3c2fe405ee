"""Parallel-beam projector and its exact adjoint, as cached sparse system matrices (torch).

Geometry (docs/ARCHITECTURE.md): images are ``(..., X, Y)`` with pixel centres at
``(i - (X-1)/2) * pixel_mm``; the ray at angle t travels along ``(cos t, sin t)``; the detector
coordinate is ``u = -x sin t + y cos t`` with U = X bins of the pixel size. Sinograms are
``(..., A, U)``.

The projector is Joseph's method: along each ray, step one pixel at a time along the axis the ray
is closest to, interpolate linearly across the other axis and weight by the path length per step
``pixel / max(|cos t|, |sin t|)``. It is stored as a CSR matrix (A*U, X*Y) and applied to all
leading elements at once with one sparse-dense product; ``backproject`` applies its transpose,
so it is the exact adjoint. Matrices are cached per (shape, angles, dtype, device).
"""

from __future__ import annotations

import functools
import hashlib
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from dfseg.errors import InputError

#: Images per sparse product (bounds the dense (X*Y, batch) operand; block size barely matters on CPU).
_BATCH = 1024


def projection_angles(n_angles: int) -> np.ndarray:
    """Equally spaced projection angles ``pi * a / A`` over [0, pi), radians, shape (A,)."""
    if n_angles < 1:
        raise InputError("n_angles", f"need at least one projection angle, got {n_angles}")
    return np.pi * np.arange(n_angles, dtype=np.float64) / n_angles


def _angles_array(angles) -> np.ndarray:
    if isinstance(angles, torch.Tensor):
        angles = angles.detach().cpu().numpy()
    a = np.atleast_1d(np.asarray(angles, dtype=np.float64))
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise InputError("angles", "expected a non-empty 1-D array of finite angles in radians")
    return a


def _size_xy(size) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    x, y = (int(s) for s in size)
    return x, y


def _joseph_hits(n_primary: int, n_secondary: int, u: np.ndarray, slope: float, cosine: float, *,
                 sign: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Joseph weights of one angle, marching along the axis the ray crosses most steeply.

    The ray of detector bin k crosses primary coordinate p at secondary coordinate
    ``p * slope + sign * u_k / cosine``; the two secondary pixels around it share the step length
    ``1 / |cosine|`` by linear interpolation. Returns ``(bin, primary, secondary, weight)`` arrays
    of the non-zero weights, lower neighbour first.
    """
    p = np.arange(n_primary) - (n_primary - 1) / 2
    f = p[None, :] * slope + sign * (u[:, None] / cosine) + (n_secondary - 1) / 2  # (U, P) fractional index
    step = 1.0 / abs(cosine)
    kk, pp = np.meshgrid(np.arange(len(u)), np.arange(n_primary), indexing="ij")
    s0 = np.floor(f).astype(np.int64)
    frac = f - s0
    hits = []
    for ss, wt in ((s0, 1.0 - frac), (s0 + 1, frac)):
        ok = (ss >= 0) & (ss < n_secondary) & (wt > 0)
        hits.append((kk[ok], pp[ok], ss[ok], (wt * step)[ok]))
    return hits


def joseph_matrix(nx: int, ny: int, angles: np.ndarray) -> sp.csr_matrix:
    """Joseph projector in pixel units, scipy CSR of shape (A*U, X*Y), U = X, float64.

    Row ``a*U + k`` holds the weights of detector bin k at angle a; column ``i*Y + j`` is pixel
    (i, j) of a C-ordered (X, Y) image.
    """
    nu = nx
    rows, cols, vals = [], [], []
    u = np.arange(nu) - (nu - 1) / 2
    for a, t in enumerate(angles):
        c, s = np.cos(t), np.sin(t)
        march_x = abs(c) >= abs(s)
        # Marching over columns i (x), the ray crosses x at y = x tan t + u / cos t; over rows j (y),
        # it crosses y at x = y cot t - u / sin t.
        hits = _joseph_hits(nx, ny, u, s / c, c, sign=1.0) if march_x else _joseph_hits(ny, nx, u, c / s, s, sign=-1.0)
        for kk, primary, secondary, weight in hits:
            i, j = (primary, secondary) if march_x else (secondary, primary)
            rows.append(a * nu + kk)
            cols.append(i * ny + j)
            vals.append(weight)
    mat = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(angles) * nu, nx * ny),
    )
    return mat.tocsr()


def pixel_backprojection_matrix(nx: int, ny: int, angles: np.ndarray) -> sp.csr_matrix:
    """Pixel-driven back-projector (linear interpolation on the detector), CSR (X*Y, A*U), float64.

    Used by FBP: each pixel reads the filtered sinogram at its own detector coordinate, which
    has unit gain at every angle (the transpose of Joseph's method does not).
    """
    nu = nx
    x = (np.arange(nx) - (nx - 1) / 2)[:, None]
    y = (np.arange(ny) - (ny - 1) / 2)[None, :]
    pix = np.broadcast_to(np.arange(nx * ny).reshape(nx, ny), (nx, ny))
    rows, cols, vals = [], [], []
    for a, t in enumerate(angles):
        f = -x * np.sin(t) + y * np.cos(t) + (nu - 1) / 2
        k0 = np.floor(f).astype(np.int64)
        frac = f - k0
        for kk, wt in ((k0, 1.0 - frac), (k0 + 1, frac)):
            ok = (kk >= 0) & (kk < nu) & (wt > 0)
            rows.append(pix[ok])
            cols.append((a * nu + kk)[ok])
            vals.append(wt[ok])
    mat = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(nx * ny, len(angles) * nu),
    )
    return mat.tocsr()


def _angles_key(angles: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(angles, dtype=np.float64).tobytes()).hexdigest()


_ANGLES: dict[str, np.ndarray] = {}


@functools.lru_cache(maxsize=16)
def _system_matrix(kind: str, nx: int, ny: int, akey: str, dtype: torch.dtype, device: str) -> torch.Tensor:
    angles = _ANGLES[akey]
    if kind == "project":
        m = joseph_matrix(nx, ny, angles)
    elif kind == "backproject":
        m = joseph_matrix(nx, ny, angles).T.tocsr()
    elif kind == "fbp":
        m = pixel_backprojection_matrix(nx, ny, angles)
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    m.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR is beta" / invariant-check notices
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(m.data).to(dtype),
            size=m.shape,
            check_invariants=False,
        ).to(device)


def system_matrix(kind: str, nx: int, ny: int, angles, dtype: torch.dtype, device) -> torch.Tensor:
    """Cached torch CSR matrix: ``"project"`` (A*U, X*Y), ``"backproject"`` its transpose,
    ``"fbp"`` the pixel-driven back-projector (X*Y, A*U); pixel units."""
    a = _angles_array(angles)
    key = _angles_key(a)
    _ANGLES.setdefault(key, a)
    return _system_matrix(kind, nx, ny, key, dtype, str(torch.device(device)))


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    """Input as a floating tensor, and whether the caller gave numpy (to convert back)."""
    if isinstance(x, torch.Tensor):
        t, was_numpy = x, False
    else:
        t, was_numpy = torch.from_numpy(np.ascontiguousarray(np.asarray(x))), True
    if not torch.is_floating_point(t):
        t = t.to(torch.float64 if was_numpy else torch.get_default_dtype())
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t, was_numpy


def _out(t: torch.Tensor, was_numpy: bool):
    return t.cpu().numpy() if was_numpy else t


def apply_matrix(mat: torch.Tensor, x: torch.Tensor, n_in: int) -> torch.Tensor:
    """Multiply every row of the flattened leading elements: ``x (..., n_in) -> (..., n_out)``."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, n_in)
    outs = []
    for start in range(0, flat.shape[0], _BATCH):
        block = flat[start : start + _BATCH]
        outs.append((mat @ block.T.contiguous()).T)
    out = torch.cat(outs, 0) if outs else flat.new_zeros((0, mat.shape[0]))
    return out.reshape(*lead, mat.shape[0])


def project(images, angles, *, pixel_mm: float = 1.0):
    """Parallel-beam line integrals.

    Args:
        images: ``(..., X, Y)`` values per unit length (e.g. mu in 1/mm); numpy or torch.
        angles: projection angles in radians, shape (A,).
        pixel_mm: pixel size in mm (line integrals are scaled by it).

    Returns:
        Sinograms ``(..., A, U)`` with U = X; numpy in -> numpy out, tensors stay on their device.
    """
    x, was_numpy = _as_tensor(images)
    if x.ndim < 2:
        raise InputError("project", f"images must be (..., X, Y), got shape {tuple(x.shape)}")
    nx, ny = x.shape[-2:]
    a = _angles_array(angles)
    mat = system_matrix("project", nx, ny, a, x.dtype, x.device)
    sino = apply_matrix(mat, x.reshape(*x.shape[:-2], nx * ny), nx * ny) * pixel_mm
    return _out(sino.reshape(*x.shape[:-2], a.size, nx), was_numpy)


def backproject(sino, angles, size, *, pixel_mm: float = 1.0):
    """Exact adjoint of :func:`project` (same ``pixel_mm``): ``(..., A, U) -> (..., X, Y)``.

    Args:
        sino: sinograms ``(..., A, U)``.
        angles: radians, shape (A,).
        size: X (square image) or ``(X, Y)``; U must equal X.
        pixel_mm: pixel size in mm.
    """
    s, was_numpy = _as_tensor(sino)
    nx, ny = _size_xy(size)
    a = _angles_array(angles)
    if s.ndim < 2 or s.shape[-2:] != (a.size, nx):
        raise InputError(
            "backproject", f"sinogram shape {tuple(s.shape)} does not end in (A={a.size}, U={nx})"
        )
    mat = system_matrix("backproject", nx, ny, a, s.dtype, s.device)
    img = apply_matrix(mat, s.reshape(*s.shape[:-2], a.size * nx), a.size * nx) * pixel_mm
    return _out(img.reshape(*s.shape[:-2], nx, ny), was_numpy)


def tensor_projection_weights(angles, orientations_rad) -> np.ndarray:
    """Weights (N, A, 6) so that s^T S s = sum_c w[n, a, c] * S_c for s(t, w) = cos w u(t) + sin w z.

    Component order (Sxx, Syy, Szz, Sxy, Sxz, Syz); u(t) = (-sin t, cos t, 0).
    """
    t = _angles_array(angles)[None, :]
    w = np.atleast_1d(np.asarray(orientations_rad, dtype=np.float64))[:, None]
    st, ct, sw, cw = np.sin(t), np.cos(t), np.sin(w), np.cos(w)
    ones = np.ones_like(st * sw)
    return np.stack(
        [
            cw**2 * st**2 * ones,  # Sxx: (cos w)^2 u_x^2
            cw**2 * ct**2 * ones,  # Syy
            sw**2 * ones,  # Szz
            -2 * cw**2 * st * ct,  # Sxy: 2 u_x u_y
            -2 * sw * cw * st,  # Sxz: 2 (cos w u_x)(sin w)
            2 * sw * cw * ct,  # Syz
        ],
        axis=-1,
    )


def project_tensor(S6, angles, orientations_rad, *, pixel_mm: float = 1.0):
    """Directional dark-field projections of a per-pixel scattering tensor (X-ray tensor tomography).

    Each ray with sensitivity direction s(t, w) integrates s^T S s; this is linear in the six
    components, so they are projected once and combined per angle and orientation.

    Args:
        S6: ``(..., 6, X, Y)`` tensor components (Sxx, Syy, Szz, Sxy, Sxz, Syz), 1/mm.
        angles: projection angles t in radians, shape (A,).
        orientations_rad: grating orientations w in radians, shape (N,).
        pixel_mm: pixel size in mm.

    Returns:
        ``(..., N, A, U)`` dark-field line integrals; numpy in -> numpy out.
    """
    x, was_numpy = _as_tensor(S6)
    if x.ndim < 3 or x.shape[-3] != 6:
        raise InputError("project_tensor", f"S6 must be (..., 6, X, Y), got shape {tuple(x.shape)}")
    comp = project(x, angles, pixel_mm=pixel_mm)  # (..., 6, A, U)
    w = torch.as_tensor(tensor_projection_weights(angles, orientations_rad), dtype=x.dtype, device=x.device)
    out = torch.einsum("...cau,nac->...nau", comp, w)
    return _out(out, was_numpy)
