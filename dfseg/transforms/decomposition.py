"""Directional dark-field decomposition: N grating-orientation channels -> isotropic + anisotropic parts.

Per voxel the dark-field seen with grating sensitivity at angle w is (docs/physics.md section 3)
``DF(w) = c0 + a cos 2w + b sin 2w``, with ``a = |c2| cos 2theta`` and ``b = |c2| sin 2theta``.
Least squares on the design matrix ``[1, cos 2w, sin 2w]`` gives ``(c0, a, b)`` for any set of at
least three distinct angles mod 180 deg; the 3 x N (weighted) pseudo-inverse is computed once per
angle set and applied to every voxel with one tensor contraction.

Output channels, in the order of docs/ARCHITECTURE.md: ``c0``, ``amp`` (|c2|), ``aniso``
(|c2| / c0, 0 where c0 ~ 0), ``amp_cos2t``, ``amp_sin2t``. Orientation is carried as the
amplitude-weighted (cos 2theta, sin 2theta) pair so it has no wrap-around at +-90 deg.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from dfseg.channels import DF_CHANNELS
from dfseg.data.scan import as_floats, scan_value
from dfseg.errors import InputError

#: Two angles closer than this (deg, mod 180) count as the same orientation.
ANGLE_TOL_DEG = 1e-3

__all__ = [
    "DF_CHANNELS",
    "DirectionalDecomposition",
    "DirectionalDecompositionD",
    "DirectionalDecompositionDict",
    "DirectionalDecompositiond",
    "decomposition_operator",
    "design_matrix",
    "directional_decomposition",
    "fit_coefficients",
    "fit_orientation",
]


def _distinct_mod180(angles_deg: Sequence[float]) -> list[float]:
    """Distinct orientations mod 180 deg (within :data:`ANGLE_TOL_DEG`), sorted."""
    distinct: list[float] = []
    for w in sorted(float(a) % 180.0 for a in angles_deg):
        # 179.9999 and 0 are the same orientation: compare on the circle of period 180
        if all(min(abs(w - d), 180.0 - abs(w - d)) > ANGLE_TOL_DEG for d in distinct):
            distinct.append(w)
    return distinct


def design_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """Design matrix of the directional model.

    Args:
        angles_deg: (N,) grating orientations in degrees.

    Returns:
        (N, 3) float64 matrix with rows ``[1, cos 2w, sin 2w]``.

    Raises:
        ValueError: fewer than 3 distinct orientations mod 180 deg (theta is then undefined).
    """
    angles = [float(a) for a in np.asarray(angles_deg, dtype=float).ravel()]
    if len(_distinct_mod180(angles)) < 3:
        raise ValueError(
            f"directional decomposition needs >= 3 distinct grating orientations mod 180 deg, got {angles}"
        )
    w = np.deg2rad(np.asarray(angles))
    return np.stack([np.ones_like(w), np.cos(2 * w), np.sin(2 * w)], axis=1)


def decomposition_operator(angles_deg: Sequence[float], weights: Sequence[float] | None = None) -> np.ndarray:
    """(Weighted) least-squares operator that maps N orientation samples to ``(c0, a, b)``.

    Args:
        angles_deg: (N,) grating orientations in degrees (>= 3 distinct mod 180).
        weights: optional (N,) non-negative per-orientation weights (e.g. inverse noise
            variances) for weighted least squares; ``None`` is ordinary least squares.

    Returns:
        (3, N) float64 matrix ``P = (X^T W X)^-1 X^T W``; ``(c0, a, b) = P @ y``.
    """
    x = design_matrix(angles_deg)
    if weights is None:
        wts = np.ones(x.shape[0])
    else:
        wts = np.asarray(weights, dtype=float).ravel()
        if wts.shape != (x.shape[0],) or not np.all(np.isfinite(wts)) or np.any(wts < 0):
            raise ValueError(f"weights must be {x.shape[0]} finite non-negative numbers, got {list(wts)}")
    xtw = x.T * wts
    gram = xtw @ x
    if np.linalg.cond(gram) > 1e12:
        raise ValueError("directional decomposition: weights leave fewer than 3 distinct orientations")
    return np.linalg.solve(gram, xtw)


def _contract(op: np.ndarray, y: Any, channel_dim: int) -> Any:
    """Apply the (3, N) operator along ``channel_dim`` of ``y``; result has 3 channels first."""
    if isinstance(y, torch.Tensor):
        dtype = y.dtype if y.is_floating_point() else torch.float32
        p = torch.as_tensor(op, dtype=dtype, device=y.device)
        return torch.tensordot(p, y.to(dtype).movedim(channel_dim, 0), dims=([1], [0]))
    y = np.asarray(y)
    dtype = y.dtype if y.dtype.kind == "f" else np.float32
    # tensordot goes through BLAS: one matrix product over all voxels
    return np.tensordot(op.astype(dtype), np.moveaxis(y.astype(dtype, copy=False), channel_dim, 0), axes=(1, 0))


def fit_coefficients(y: Any, angles_deg: Sequence[float], *, weights: Sequence[float] | None = None,
                     channel_dim: int = 0) -> Any:
    """Least-squares coefficients ``(c0, a, b)`` of ``DF(w) = c0 + a cos 2w + b sin 2w``.

    Args:
        y: (..., N, ...) numpy array or torch tensor of dark-field values (any unit), the N
            orientation samples along ``channel_dim``.
        angles_deg: (N,) grating orientations in degrees.
        weights: optional (N,) per-orientation weights (weighted least squares).
        channel_dim: axis of ``y`` that holds the orientations.

    Returns:
        (3, ...) array/tensor of the same kind (and device) as ``y``: ``c0, a, b``.
    """
    n = len(np.asarray(angles_deg).ravel())
    if y.shape[channel_dim] != n:
        raise InputError("df", f"{y.shape[channel_dim]} orientation channels but {n} angles {list(np.ravel(angles_deg))}")
    return _contract(decomposition_operator(angles_deg, weights), y, channel_dim)


def fit_orientation(y: Any, angles_deg: Sequence[float], *, weights: Sequence[float] | None = None,
                    channel_dim: int = 0) -> Any:
    """Orientation of strongest scattering, ``theta = atan2(b, a) / 2``.

    Args:
        y: (..., N, ...) dark-field samples, orientations along ``channel_dim``.
        angles_deg: (N,) grating orientations in degrees.
        weights: optional (N,) per-orientation weights.
        channel_dim: axis of ``y`` that holds the orientations.

    Returns:
        theta in degrees, in (-90, 90], shape of ``y`` without ``channel_dim``, same kind as ``y``.
    """
    c = fit_coefficients(y, angles_deg, weights=weights, channel_dim=channel_dim)
    if isinstance(c, torch.Tensor):
        return torch.rad2deg(0.5 * torch.atan2(c[2], c[1]))
    return np.rad2deg(0.5 * np.arctan2(c[2], c[1]))


def directional_decomposition(y: Any, angles_deg: Sequence[float], *, weights: Sequence[float] | None = None,
                              eps: float = 1e-6) -> Any:
    """Decompose (N, ...) orientation channels into the five ``DF_CHANNELS``.

    Args:
        y: (N, X, Y, Z) (or any (N, ...)) numpy array or torch tensor; dark-field per grating
            orientation, e.g. the linear diffusion coefficient eps in 1/mm.
        angles_deg: (N,) grating orientations in degrees, >= 3 distinct mod 180.
        weights: optional (N,) per-orientation weights for weighted least squares.
        eps: ``|c0| <= eps`` (same unit as ``y``) gives ``aniso = 0`` instead of a division.

    Returns:
        (5, ...) array/tensor of the same kind, dtype (float) and device as ``y``:
        ``c0, amp, aniso, amp_cos2t, amp_sin2t`` (c0, amp and the cos/sin pair in the unit of ``y``,
        aniso unitless).
    """
    c0, a, b = fit_coefficients(y, angles_deg, weights=weights, channel_dim=0)
    if isinstance(c0, torch.Tensor):
        amp = torch.hypot(a, b)
        safe = c0.abs() > eps
        aniso = torch.where(safe, amp / torch.where(safe, c0, torch.ones_like(c0)), torch.zeros_like(c0))
        return torch.stack([c0, amp, aniso, a, b])
    amp = np.sqrt(a * a + b * b)  # several times faster than np.hypot; no overflow at DF magnitudes
    safe = np.abs(c0) > eps
    aniso = np.zeros_like(c0)
    np.divide(amp, c0, out=aniso, where=safe)
    return np.stack([c0, amp, aniso, a, b])


class DirectionalDecomposition(Transform):
    """N grating-orientation channels -> ``(c0, amp, aniso, amp_cos2t, amp_sin2t)``.

    Args:
        angles_deg: (N,) grating orientations in degrees (>= 3 distinct mod 180); may instead be
            given per call.
        eps: ``|c0| <= eps`` gives ``aniso = 0`` (unit of the input, e.g. 1/mm).
        weights: optional (N,) per-orientation weights for weighted least squares.

    Example:
        >>> DirectionalDecomposition([0, 45, 90, 135])(np.ones((4, 8, 8, 8))).shape
        (5, 8, 8, 8)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, angles_deg: Sequence[float] | None = None, eps: float = 1e-6, *,
                 weights: Sequence[float] | None = None) -> None:
        self.angles_deg = None if angles_deg is None else [float(a) for a in np.ravel(angles_deg)]
        self.eps = float(eps)
        self.weights = weights
        if self.angles_deg is not None:
            # fail at construction, not at the first image
            decomposition_operator(self.angles_deg, weights)

    def __call__(self, img: Any, angles_deg: Sequence[float] | None = None, *, where: str = "df") -> Any:
        """Decompose ``img`` (N, X, Y, Z) -> (5, X, Y, Z), same type and device.

        Args:
            img: (N, ...) orientation channels.
            angles_deg: overrides the constructor's angles for this call.
            where: name used in error messages (file or key).
        """
        angles = self.angles_deg if angles_deg is None else [float(a) for a in np.ravel(angles_deg)]
        if angles is None:
            raise InputError(where, "no grating orientations given (angles_deg)")
        if img.ndim < 1 or img.shape[0] != len(angles):
            raise InputError(where, f"expected {len(angles)} orientation channels for angles {angles} deg, "
                                    f"found {img.shape[0] if img.ndim else 0}")
        out = directional_decomposition(img, angles, weights=self.weights, eps=self.eps)
        if isinstance(img, torch.Tensor):
            out, *_ = convert_to_dst_type(out, img, dtype=out.dtype)
        return out


class DirectionalDecompositiond(MapTransform):
    """Dictionary version of :class:`DirectionalDecomposition`.

    Args:
        keys: keys of (N, X, Y, Z) orientation-channel images to decompose (e.g. ``"df"``).
        angles_key: the metadata field (in ``data[meta_key]``) holding the orientations in degrees
            when ``angles_deg`` is not given.
        angles_deg: fixed orientations in degrees; overrides ``angles_key``.
        eps: ``|c0| <= eps`` gives ``aniso = 0``.
        weights: optional (N,) per-orientation weights.
        output_key: write the result here instead of replacing ``key`` (single key only).
        meta_key: where the scan's metadata lives in the data dictionary.
        allow_missing_keys: skip keys that are absent.
    """

    backend = DirectionalDecomposition.backend

    def __init__(self, keys: KeysCollection, angles_key: str = "orientations_deg", *,
                 angles_deg: Sequence[float] | None = None, eps: float = 1e-6,
                 weights: Sequence[float] | None = None, output_key: str | None = None,
                 meta_key: str = "meta", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.angles_key = angles_key
        self.meta_key = meta_key
        self.output_key = output_key
        if output_key is not None and len(self.keys) != 1:
            raise ValueError("output_key needs exactly one key")
        self.decompose = DirectionalDecomposition(angles_deg, eps, weights=weights)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            angles = as_floats(scan_value(d, self.angles_key, self.decompose.angles_deg, meta_key=self.meta_key))
            d[self.output_key or key] = self.decompose(d[key], angles, where=str(key))
        return d


DirectionalDecompositionD = DirectionalDecompositionDict = DirectionalDecompositiond
