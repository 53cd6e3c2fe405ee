"""Flux, drift and reference-region normalization (docs/physics.md section 6).

Incident flux varies from exposure to exposure and the detector gain drifts slowly during a scan.
Both multiply the sample's counts, so they scale the transmission ``T`` and cancel in the visibility
ratio ``D`` (a ratio of two amplitudes of the same curve): these transforms change ``T`` only.
The first and last ``air_columns`` detector columns see air in every projection (sidecar), so the
true ``T`` there is 1 and whatever the air region reads is the gain.

Projection stacks are channel-first ``(N, A, U, Z)``: N grating orientations, A projection angles,
U detector columns, Z detector rows (docs/ARCHITECTURE.md). All transforms keep the input type and
device (numpy in, numpy out; tensor in, tensor out on the same device).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

from dfseg.data.scan import scan_value
from dfseg.errors import InputError

__all__ = [
    "FluxNormalization", "FluxNormalizationd", "FluxNormalizationD", "FluxNormalizationDict",
    "DetectorDriftCorrection", "DetectorDriftCorrectiond", "DetectorDriftCorrectionD",
    "DetectorDriftCorrectionDict",
    "ReferenceNormalization", "ReferenceNormalizationd", "ReferenceNormalizationD", "ReferenceNormalizationDict",
]


def _as_float_tensor(img: NdarrayOrTensor) -> torch.Tensor:
    t = convert_data_type(img, torch.Tensor)[0]
    return t if t.is_floating_point() else t.float()


def _check_stack(t: torch.Tensor, name: str) -> None:
    if t.ndim != 4:
        raise InputError(name, f"expected a projection stack (N, A, U, Z), got shape {tuple(t.shape)}")


def air_gain(img: NdarrayOrTensor, air_columns: int) -> torch.Tensor:
    """Mean transmission of the air columns per orientation and angle.

    Args:
        img: transmission stack ``(N, A, U, Z)``.
        air_columns: number of air-only detector columns at each edge of U.

    Returns:
        gain ``(N, A)``, float tensor on the input's device.

    Raises:
        InputError: not a 4-D stack, ``air_columns`` out of range, or the air columns hold a
            non-finite value or average to a non-positive transmission (nothing to divide by).
    """
    t = _as_float_tensor(img)
    _check_stack(t, "proj_T")
    u = t.shape[2]
    if not 0 < int(air_columns) <= u // 2:
        raise InputError("air_columns", f"must be in 1..{u // 2} for {u} detector columns, got {air_columns}")
    a = int(air_columns)
    air = torch.cat([t[:, :, :a], t[:, :, u - a:]], dim=2)
    if not bool(torch.isfinite(air).all()):
        raise InputError("proj_T", "the air columns hold NaN or infinite transmission")
    gain = air.mean(dim=(2, 3))
    if not bool((gain > 0).all()):
        raise InputError("proj_T", "the air columns' mean transmission is not positive in some projection")
    return gain


class FluxNormalization(Transform):
    """Divide each projection's transmission by the mean of its air columns: ``T / mean(T_air)``.

    Removes per-exposure flux fluctuations and detector gain drift together (the gain of every
    projection is measured independently, so the correction carries the air region's noise).

    Args:
        air_columns: air-only detector columns at each edge of U (sidecar ``air_columns``).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, air_columns: int) -> None:
        self.air_columns = int(air_columns)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args: img: transmission ``(N, A, U, Z)``, unitless. Returns: same shape and type."""
        t = _as_float_tensor(img)
        gain = air_gain(t, self.air_columns)
        return convert_to_dst_type(t / gain[:, :, None, None], img, dtype=t.dtype)[0]


class DetectorDriftCorrection(Transform):
    """Remove a slow detector gain drift fitted over the angle index from the air region.

    The per-projection air gain is fitted with a polynomial of ``degree`` in the angle index (per
    orientation, least squares) and ``T`` is divided by the fitted gain. Fitting a smooth curve
    averages the air region's noise over all projections, which a per-projection division
    (:class:`FluxNormalization`) cannot; it does not remove fast per-exposure flux jitter.

    Args:
        air_columns: air-only detector columns at each edge of U.
        degree: polynomial degree over the angle index (0 = constant gain).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, air_columns: int, degree: int = 3) -> None:
        self.air_columns = int(air_columns)
        self.degree = int(degree)

    def fitted_gain(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Smooth gain ``(N, A)`` fitted to the air columns, float64 on the input's device."""
        gain = air_gain(img, self.air_columns).double()
        n_angles = gain.shape[1]
        deg = min(self.degree, n_angles - 1)
        x = torch.linspace(-1.0, 1.0, n_angles, dtype=torch.float64, device=gain.device)
        design = torch.stack([x**j for j in range(deg + 1)], dim=1)  # (A, deg+1), well conditioned on [-1, 1]
        coef = torch.linalg.lstsq(design, gain.T).solution  # (deg+1, N)
        return (design @ coef).T

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args: img: transmission ``(N, A, U, Z)``, unitless. Returns: same shape and type."""
        t = _as_float_tensor(img)
        gain = self.fitted_gain(t).to(t.dtype)
        return convert_to_dst_type(t / gain[:, :, None, None], img, dtype=t.dtype)[0]


class ReferenceNormalization(Transform):
    """Divide an image by the mean value of a reference region (a reference phantom, a flat field).

    Args:
        region: the region as a tuple of slices / indices over the image's axes (channel first), or
            ``None`` when a boolean ``mask`` is given at call time.
        target: value the reference region should have after normalization (default 1).
        per_channel: one reference value per channel (first axis) instead of one for the image.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, region: Sequence[slice | int] | None = None, *, target: float = 1.0,
                 per_channel: bool = True) -> None:
        self.region = None if region is None else tuple(region)
        self.target = float(target)
        self.per_channel = per_channel

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Args:
            img: ``(C, ...)`` image (volume or projection stack).
            mask: optional boolean ``(...)`` or ``(C, ...)`` reference-region mask.

        Returns: ``img * target / reference``, same shape and type.
        """
        t = _as_float_tensor(img)
        if mask is not None:
            m = convert_data_type(mask, torch.Tensor, device=t.device)[0].bool()
            m = torch.broadcast_to(m if m.ndim == t.ndim else m[None], t.shape)
        elif self.region is not None:
            m = torch.zeros_like(t, dtype=torch.bool)
            idx = self.region if len(self.region) == t.ndim else (slice(None), *self.region)
            m[idx] = True
        else:
            raise InputError("ReferenceNormalization", "give a region or a mask")
        dims = tuple(range(1, t.ndim)) if self.per_channel else tuple(range(t.ndim))
        count = m.sum(dim=dims, keepdim=True)
        if bool((count == 0).any()):
            raise InputError("ReferenceNormalization", "reference region is empty")
        if not bool(torch.isfinite(t[m]).all()):
            raise InputError("ReferenceNormalization", "reference region holds NaN or infinite values")
        ref = torch.where(m, t, torch.zeros_like(t)).sum(dim=dims, keepdim=True) / count
        if bool((ref == 0).any()):
            raise InputError("ReferenceNormalization", "reference region mean is 0")
        return convert_to_dst_type(t * (self.target / ref), img, dtype=t.dtype)[0]


class _AirDict(MapTransform):
    """Shared dictionary wrapper: ``air_columns`` given or read from ``data[meta_key]``."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    _array_cls: type

    def __init__(self, keys: KeysCollection = "proj_T", air_columns: int | None = None, *,
                 meta_key: str = "meta", allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.air_columns = air_columns
        self.meta_key = meta_key
        self.kwargs = kwargs

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        air = scan_value(d, "air_columns", self.air_columns, meta_key=self.meta_key)
        op = self._array_cls(int(air), **self.kwargs)
        for key in keys:
            d[key] = op(d[key])
        return d


class FluxNormalizationd(_AirDict):
    """Dictionary :class:`FluxNormalization` (default key ``proj_T``; ``air_columns`` from ``meta``)."""

    _array_cls = FluxNormalization


class DetectorDriftCorrectiond(_AirDict):
    """Dictionary :class:`DetectorDriftCorrection` (default key ``proj_T``; ``degree=`` keyword)."""

    _array_cls = DetectorDriftCorrection


class ReferenceNormalizationd(MapTransform):
    """Dictionary :class:`ReferenceNormalization`; the mask may come from another key (``mask_key``)."""

    backend = ReferenceNormalization.backend

    def __init__(self, keys: KeysCollection, region: Sequence[slice | int] | None = None, *,
                 mask_key: str | None = None, target: float = 1.0, per_channel: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = ReferenceNormalization(region, target=target, per_channel=per_channel)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = None
        if self.mask_key is not None:
            if self.mask_key not in d:
                raise InputError(self.mask_key, "reference mask key missing from the data")
            mask = d[self.mask_key]
        for key in self.key_iterator(d):
            d[key] = self.op(d[key], mask)
        return d


FluxNormalizationD = FluxNormalizationDict = FluxNormalizationd
DetectorDriftCorrectionD = DetectorDriftCorrectionDict = DetectorDriftCorrectiond
ReferenceNormalizationD = ReferenceNormalizationDict = ReferenceNormalizationd
