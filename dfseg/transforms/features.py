"""Feature maps added as extra channels: differential dark-field, DF/attenuation ratio, local texture.

All local statistics use a box window of half-width ``radius_mm`` (rounded to whole voxels per
axis), computed with running sums (cost independent of the radius) in torch, so they run on the
input's device. Windows are cut at the volume border and, where a mask is given, at the mask
border (statistics only over voxels inside), so no padding value leaks into a statistic.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type
from scipy import ndimage

from dfseg.data.scan import scan_value
from dfseg.errors import InputError

__all__ = [
    "DarkFieldAttenuationRatio",
    "DarkFieldAttenuationRatioD",
    "DarkFieldAttenuationRatioDict",
    "DarkFieldAttenuationRatiod",
    "DifferentialDarkField",
    "DifferentialDarkFieldD",
    "DifferentialDarkFieldDict",
    "DifferentialDarkFieldd",
    "LocalTexture",
    "LocalTextureD",
    "LocalTextureDict",
    "LocalTextured",
    "box_mean",
    "radius_voxels",
]


def radius_voxels(radius_mm: float, voxel_mm: float | Sequence[float], ndim: int = 3) -> tuple[int, ...]:
    """Half-width of a window in whole voxels per axis (at least 0).

    Args:
        radius_mm: half-width in mm.
        voxel_mm: isotropic voxel size or one per axis, in mm.
        ndim: number of spatial axes.
    """
    vox = np.broadcast_to(np.asarray(voxel_mm, dtype=float), (ndim,))
    return tuple(int(max(0, round(radius_mm / v))) for v in vox)


def _box_sum(x: torch.Tensor, radius: Sequence[int]) -> torch.Tensor:
    """Sum over a (2r+1) box along the last ``len(radius)`` axes, zero outside the volume."""
    if x.device.type == "cpu":
        # scipy's running-sum filter is several times faster than torch cumsum on CPU
        size = (1,) * (x.ndim - len(radius)) + tuple(2 * r + 1 for r in radius)
        out = ndimage.uniform_filter(x.numpy(), size=size, mode="constant", cval=0.0)
        return torch.from_numpy(out) * float(np.prod(size))
    for axis_from_end, r in enumerate(reversed(radius)):
        if r == 0:
            continue
        dim = x.ndim - 1 - axis_from_end
        n = x.shape[dim]
        pad = [0, 0] * axis_from_end + [r + 1, r]
        cs = torch.nn.functional.pad(x, pad).cumsum(dim)
        x = cs.narrow(dim, 2 * r + 1, n) - cs.narrow(dim, 0, n)
    return x


def box_mean(x: torch.Tensor, radius: Sequence[int], weight: torch.Tensor | None = None) -> torch.Tensor:
    """Local (weighted) mean over a box of half-width ``radius`` voxels; 0 where the window has no weight.

    Args:
        x: (C, X, Y, Z) float tensor.
        radius: half-widths in voxels, one per spatial axis.
        weight: optional (1, X, Y, Z) or (C, X, Y, Z) non-negative weights (e.g. a mask).
    """
    w = torch.ones_like(x[:1]) if weight is None else weight.to(x.dtype)
    num = _box_sum(x * w, radius)
    den = _box_sum(w, radius)
    den = den.expand_as(num) if den.shape[0] == 1 else den
    # running sums leave a tiny residue where the window is empty: compare with the total weight
    ok = den > 1e-9 * max(float(w.sum()), 1e-300)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _to_work(img: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Torch view of ``img`` on its own device (float64 by default: running sums stay exact enough)."""
    t = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
    return t.to(dtype)


def _spatial_mask(mask: Any, ref: torch.Tensor, where: str) -> torch.Tensor:
    m = _to_work(mask).to(ref.device)
    if m.ndim == ref.ndim - 1:
        m = m[None]
    if m.shape[0] != 1 or tuple(m.shape[1:]) != tuple(ref.shape[1:]):
        raise InputError(where, f"mask shape {tuple(m.shape)} does not match image {tuple(ref.shape)}")
    return (m > 0).to(ref.dtype)


def _float_dtype(img: Any) -> Any:
    if isinstance(img, torch.Tensor):
        return img.dtype if img.is_floating_point() else torch.float32
    dtype = np.asarray(img).dtype
    return dtype if dtype.kind == "f" else np.float32


def _finish(feature: torch.Tensor, img: Any, append: bool) -> Any:
    """Feature (or input + feature) converted back to the input's type, float dtype and device."""
    if append:
        feature = torch.cat([_to_work(img, feature.dtype).to(feature.device), feature], dim=0)
    out, *_ = convert_to_dst_type(feature, img, dtype=_float_dtype(img))
    return out


class DifferentialDarkField(Transform):
    """Dark-field minus its local lung background: lesions (local DF loss) show as negative values.

    ``ddf = (DF - mean_{window, inside mask} DF) * mask``; 0 outside the mask.

    Args:
        radius_mm: half-width of the background window in mm (wider than the lesions of interest).
        voxel_mm: voxel size in mm (isotropic or per axis).
        channel: which channel of the input is the dark-field (0 = ``c0`` after decomposition).
        append: return the input with the feature appended as the last channel (else only the feature).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, radius_mm: float = 2.0, voxel_mm: float | Sequence[float] = 1.0, *,
                 channel: int = 0, append: bool = True) -> None:
        self.radius_mm, self.voxel_mm, self.channel, self.append = radius_mm, voxel_mm, channel, append

    def __call__(self, img: Any, mask: Any = None, *, voxel_mm: float | Sequence[float] | None = None,
                 where: str = "df") -> Any:
        """Args: img (C, X, Y, Z) dark-field (1/mm); mask (1, X, Y, Z) or (X, Y, Z) lung mask or None."""
        x = _to_work(img)
        df = x[self.channel: self.channel + 1]
        m = torch.ones_like(df) if mask is None else _spatial_mask(mask, df, where)
        r = radius_voxels(self.radius_mm, self.voxel_mm if voxel_mm is None else voxel_mm, df.ndim - 1)
        feature = (df - box_mean(df, r, m)) * m
        return _finish(feature, img, self.append)


class DarkFieldAttenuationRatio(Transform):
    """Dark-field over attenuation, ``DF / mu`` (unitless), 0 where ``|mu| <= eps``.

    Args:
        channel: which channel of the dark-field input to use (0 = ``c0``).
        eps: smallest ``|mu|`` (1/mm) divided by; below it the ratio is 0 (air).
        append: return the dark-field input with the ratio appended (else only the ratio).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channel: int = 0, eps: float = 1e-4, *, append: bool = False) -> None:
        self.channel, self.eps, self.append = channel, eps, append

    def __call__(self, df: Any, attn: Any, *, where: str = "attn") -> Any:
        """Args: df (C, X, Y, Z) dark-field in 1/mm; attn (1, X, Y, Z) attenuation mu in 1/mm."""
        # element-wise only: the input's own float precision is enough (and 2x cheaper than float64)
        work = _float_dtype(df) if isinstance(df, torch.Tensor) else torch.from_numpy(np.zeros(0, _float_dtype(df))).dtype
        d = _to_work(df, work)[self.channel: self.channel + 1]
        a = _to_work(attn, work).to(d.device)
        if a.ndim == d.ndim - 1:
            a = a[None]
        if tuple(a.shape) != tuple(d.shape):
            raise InputError(where, f"shape {tuple(a.shape)} does not match dark-field channel {tuple(d.shape)}")
        ok = a.abs() > self.eps
        feature = d / torch.where(ok, a, torch.ones_like(a)) * ok
        return _finish(feature, df, self.append)


class LocalTexture(Transform):
    """Local standard deviation over a box window, per channel.

    Args:
        radius_mm: half-width of the window in mm.
        voxel_mm: voxel size in mm.
        channels: which input channels to compute it for (``None``: all).
        append: return the input with the texture channels appended (else only the texture).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, radius_mm: float = 1.0, voxel_mm: float | Sequence[float] = 1.0, *,
                 channels: Sequence[int] | None = None, append: bool = True) -> None:
        self.radius_mm, self.voxel_mm, self.append = radius_mm, voxel_mm, append
        self.channels = None if channels is None else list(channels)

    def __call__(self, img: Any, mask: Any = None, *, voxel_mm: float | Sequence[float] | None = None,
                 where: str = "image") -> Any:
        """Args: img (C, X, Y, Z); mask optional (1, X, Y, Z): statistics only over voxels inside it."""
        x = _to_work(img)
        if self.channels is not None:
            x = x[self.channels]
        m = None if mask is None else _spatial_mask(mask, x, where)
        # centre each channel first: E[x^2] - E[x]^2 then cancels less
        x = x - x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        r = radius_voxels(self.radius_mm, self.voxel_mm if voxel_mm is None else voxel_mm, x.ndim - 1)
        mean = box_mean(x, r, m)
        var = box_mean(x * x, r, m) - mean * mean
        feature = var.clamp_min(0).sqrt()
        if m is not None:
            feature = feature * m
        return _finish(feature, img, self.append)


class _FeatureD(MapTransform):
    """Shared dictionary logic: feature of ``data[key]`` appended to it or written to ``output_key``."""

    def __init__(self, keys: KeysCollection, output_key: str | None, allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        if output_key is not None and len(self.keys) != 1:
            raise ValueError("output_key needs exactly one key")
        self.output_key = output_key


class _WindowFeatureD(_FeatureD):
    """Shared dictionary logic of the window features: voxel size from the metadata, optional mask key."""

    op: Any
    mask_key: str | None
    voxel_mm: float | Sequence[float] | None
    meta_key: str

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            vox = scan_value(d, "voxel_mm", self.voxel_mm, key=key, meta_key=self.meta_key)
            mask = None if self.mask_key is None else d[self.mask_key]
            d[self.output_key or key] = self.op(d[key], mask, voxel_mm=vox, where=str(key))
        return d


class DifferentialDarkFieldd(_WindowFeatureD):
    """Dictionary version of :class:`DifferentialDarkField`.

    Args:
        keys: dark-field keys (e.g. ``"df"``, decomposed).
        mask_key: lung mask key (``None``: whole volume).
        radius_mm, channel: as in :class:`DifferentialDarkField`.
        voxel_mm: voxel size in mm; ``None`` reads it from the metadata (else the image's affine).
        output_key: write only the feature there; ``None`` appends it to ``key``.
        meta_key: where the scan's metadata lives in the data dictionary.
    """

    backend = DifferentialDarkField.backend

    def __init__(self, keys: KeysCollection = "df", mask_key: str | None = "lung_mask", *,
                 radius_mm: float = 2.0, voxel_mm: float | Sequence[float] | None = None, channel: int = 0,
                 output_key: str | None = None, meta_key: str = "meta", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, output_key, allow_missing_keys)
        self.mask_key, self.voxel_mm, self.meta_key = mask_key, voxel_mm, meta_key
        self.op = DifferentialDarkField(radius_mm, 1.0, channel=channel, append=output_key is None)


class DarkFieldAttenuationRatiod(_FeatureD):
    """Dictionary version of :class:`DarkFieldAttenuationRatio`.

    Args:
        keys: dark-field keys.
        attn_key: attenuation key.
        channel, eps: as in :class:`DarkFieldAttenuationRatio`.
        output_key: key for the ratio; ``None`` appends it to ``key``.
    """

    backend = DarkFieldAttenuationRatio.backend

    def __init__(self, keys: KeysCollection = "df", attn_key: str = "attn", *, channel: int = 0,
                 eps: float = 1e-4, output_key: str | None = "df_attn_ratio",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, output_key, allow_missing_keys)
        self.attn_key = attn_key
        self.op = DarkFieldAttenuationRatio(channel, eps, append=output_key is None)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key or key] = self.op(d[key], d[self.attn_key], where=str(self.attn_key))
        return d


class LocalTextured(_WindowFeatureD):
    """Dictionary version of :class:`LocalTexture`.

    Args:
        keys: image keys.
        mask_key: optional mask key restricting the statistics.
        radius_mm, channels: as in :class:`LocalTexture`.
        voxel_mm: voxel size in mm; ``None`` reads it from the metadata (else the image's affine).
        output_key: write only the texture there; ``None`` appends it to ``key``.
        meta_key: where the scan's metadata lives in the data dictionary.
    """

    backend = LocalTexture.backend

    def __init__(self, keys: KeysCollection = "df", mask_key: str | None = None, *, radius_mm: float = 1.0,
                 voxel_mm: float | Sequence[float] | None = None, channels: Sequence[int] | None = None,
                 output_key: str | None = None, meta_key: str = "meta", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, output_key, allow_missing_keys)
        self.mask_key, self.voxel_mm, self.meta_key = mask_key, voxel_mm, meta_key
        self.op = LocalTexture(radius_mm, 1.0, channels=channels, append=output_key is None)


DifferentialDarkFieldD = DifferentialDarkFieldDict = DifferentialDarkFieldd
DarkFieldAttenuationRatioD = DarkFieldAttenuationRatioDict = DarkFieldAttenuationRatiod
LocalTextureD = LocalTextureDict = LocalTextured
