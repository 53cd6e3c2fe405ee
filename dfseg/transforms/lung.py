"""Lung mask from the images, for scans that come without one.

Physics: the lungs are aerated tissue. Their attenuation lies between air (outside the body) and
soft tissue, and their alveolar air-tissue interfaces give a strong dark-field, which solid tissue
and air do not. So, with thresholds taken from the scan itself (no fixed numbers): each threshold
splits its values into two classes with Otsu's method and cuts half-way between the two classes'
medians, so a voxel on a blurred edge belongs to the class it is at least half made of; two classes
less than ``min_contrast`` noise standard deviations apart mean the tissue is not there.

0. the dark-field ``c0`` is smoothed by a Gaussian of ``smoothing_mm`` (fixed in mm, not in voxels:
   at a fixed dose a voxel's dark-field noise grows as the voxel shrinks);
1. **body**: ``attn`` above the air/tissue threshold of the whole volume, holes filled in every
   axial slice (the aerated lungs are enclosed by the chest wall in each slice). A class is air
   when its median attenuation is near zero against the tissue class's (air is 1/800 as dense as
   water); when the attenuation's lower class is not air (lung against soft tissue, or soft tissue
   against bone), that class is split again, and a view with no air at all (a field of view
   cropped to the lungs, the body filling it) is body throughout;
2. **lung candidates**: body voxels whose isotropic dark-field ``c0`` lies above the
   solid/aerated threshold of ``c0`` inside the body;
3. **morphology**, radii in mm so the result does not depend on the voxel size: an opening removes
   isolated speckles of noise, the ``max_components`` largest 26-connected components (the one
   labelling routine of dfseg, :func:`dfseg.evaluation.lesions.connected_components`) of at least
   ``min_volume_mm3`` are kept, then a closing of each component on its own (so it does not bridge
   the mediastinum) and a 3-D hole fill put back what the aerated lung encloses or borders: vessels,
   airways and **tumours** (solid, so dark in ``c0``). A nodule inside the lung is a hole and is
   covered whatever its size; a nodule that replaces the lung's outer rim is covered only where it
   lies within the lung's outline as the closing restores it (docs/lung_mask.md gives the numbers).

Inputs are the corrected attenuation (1, X, Y, Z) and the isotropic dark-field ``c0`` (channel 0
of the decomposed ``df``, :data:`dfseg.channels.DF_CHANNELS`); raw reconstructions work as well,
since every threshold comes from the data. Its agreement with the simulator's lung masks is
measured by ``bench/lung_mask.py`` and reported in docs/lung_mask.md.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type
from scipy import ndimage

from dfseg.data.scan import as_floats, scan_value
from dfseg.errors import InputError
from dfseg.evaluation.lesions import connected_components

#: Air's attenuation is under this share of the tissue class's (physically about 0.1 %: air is 1/800
#: as dense as water); aerated lung, at most about 90 % air, stays above 10 % of soft tissue's.
AIR_ATTENUATION_RATIO = 0.05
#: The attenuation's lower class is split at most this many times looking for air (air, lung, soft
#: tissue and bone are four classes).
MAX_AIR_SPLITS = 3

__all__ = [
    "LungMask",
    "LungMaskD",
    "LungMaskDict",
    "LungMaskd",
    "morphology",
    "otsu_threshold",
    "reach",
]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a set of values: the cut that maximises the between-class variance.

    The histogram spans the 0.5th to 99.5th percentile, so a few extreme voxels (streaks, bone)
    do not squeeze the two classes into a handful of bins.

    Args:
        values: any array; flattened.
        bins: histogram bins.

    Returns:
        the threshold (a bin edge; values above it are the upper class), or ``nan`` when the values
        are all equal (no two classes).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan")
    lo, hi = np.percentile(v, [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
        if not hi > lo:
            return float("nan")
    counts, edges = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(counts)[:-1].astype(np.float64)  # class 0 = bins 0..k, k < bins - 1
    w1 = counts.sum() - w0
    s0 = np.cumsum(counts * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (np.sum(counts * centres) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1 + int(np.argmax(between))])


def reach(radius_mm: float, voxel_mm: float | Sequence[float]) -> tuple[int, ...] | None:
    """Voxels per axis a ball of ``radius_mm`` reaches on a grid of ``voxel_mm``; ``None`` when it is
    under one voxel along every axis (no morphology to do)."""
    vox = np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))
    r = np.floor(radius_mm / vox + 1e-9).astype(int)
    return tuple(int(v) for v in r) if r.any() else None


def morphology(mask: np.ndarray, radius_mm: float, voxel_mm: float | Sequence[float], kind: str) -> np.ndarray:
    """Binary ``"opening"`` or ``"closing"`` of an (X, Y, Z) mask by a ball of ``radius_mm``.

    Dilation and erosion by a ball are thresholds of the Euclidean distance transform (in mm, so
    anisotropic voxels are handled), which costs the same for any radius: a 1.5 mm ball at 0.1 mm
    voxels has 14,000 voxels, and a structuring-element filter would take minutes on a 192^3 scan.
    The volume's faces are taken to continue the mask (edge padding), so a lung cut by the field of
    view keeps its cut face.
    """
    r = reach(radius_mm, voxel_mm)
    if r is None:
        return mask.copy()
    vox = np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))
    pad = [(n, n) for n in r]
    x = np.pad(mask, pad, mode="edge")
    tol = radius_mm + 1e-9

    def dilate(m: np.ndarray) -> np.ndarray:
        return ndimage.distance_transform_edt(~m, sampling=vox) <= tol if m.any() else m

    def erode(m: np.ndarray) -> np.ndarray:
        return ndimage.distance_transform_edt(m, sampling=vox) > tol if not m.all() else m

    if kind == "opening":
        x = dilate(erode(x))
    elif kind == "closing":
        x = erode(dilate(x))
    else:
        raise ValueError(f"kind must be 'opening' or 'closing', got {kind!r}")
    return x[tuple(slice(n, x.shape[i] - n) for i, n in enumerate(r))]


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial (X, Y) slice."""
    out = np.empty_like(mask)
    for z in range(mask.shape[2]):
        out[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return out


class LungMask(Transform):
    """Segment the lungs from attenuation and isotropic dark-field (module docstring: the method).

    Args:
        opening_mm: radius of the opening that removes noise speckles, mm (0: none).
        closing_mm: radius of the closing of each lung, mm (0: none): it fills dents in the lung's
            outline narrower than about twice this radius (vessels and nodules at the wall); larger
            radii also fill the lung's concave side around the heart.
        min_volume_mm3: components smaller than this are not lung.
        max_components: keep at most this many of the largest components (2: left and right lung;
            they may touch and form one).
        min_contrast: the two classes of each threshold must lie this many noise standard deviations
            apart (upper-class median minus lower-class median over the lower class's robust standard
            deviation); Otsu's method splits pure noise too (at about 2.3), an image with a body and
            lungs gives 7 to 15 on the simulator.
        smoothing_mm: sigma of a Gaussian applied to ``c0`` first, mm (0: none). Its size in mm,
            not voxels, keeps the noise the dark-field threshold sees about the same at any voxel
            size (at a fixed dose a voxel's noise grows as the voxel shrinks).

    Call with ``attn`` (1, X, Y, Z), ``c0`` (1, X, Y, Z) and the voxel size (mm, scalar or per
    axis); returns a (1, X, Y, Z) 0/1 mask, uint8, of the type and device of ``attn`` (a
    ``MetaTensor`` keeps its affine).

    Raises:
        InputError: wrong shapes, a radiograph (fewer than 3 voxels along an axis), non-finite
            values, no lung found.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, *, opening_mm: float = 0.5, closing_mm: float = 1.5, min_volume_mm3: float = 2.0,
                 max_components: int = 2, min_contrast: float = 4.0, smoothing_mm: float = 0.15) -> None:
        if min(opening_mm, closing_mm, min_volume_mm3, min_contrast, smoothing_mm) < 0:
            raise ValueError("opening_mm, closing_mm, min_volume_mm3, min_contrast and smoothing_mm must be >= 0")
        self.smoothing_mm = float(smoothing_mm)
        if max_components < 1:
            raise ValueError(f"max_components must be >= 1, got {max_components}")
        self.opening_mm, self.closing_mm = float(opening_mm), float(closing_mm)
        self.min_volume_mm3, self.max_components = float(min_volume_mm3), int(max_components)
        self.min_contrast = float(min_contrast)

    def __call__(self, attn: Any, c0: Any, voxel_mm: float | Sequence[float], *,
                 where: tuple[str, str] = ("attn", "df")) -> Any:
        """Compute the mask.

        Args:
            attn: (1, X, Y, Z) attenuation (mu, 1/mm; corrected or raw).
            c0: (1, X, Y, Z) isotropic dark-field (eps, 1/mm).
            voxel_mm: voxel size in mm, isotropic or (3,).
            where: names of the two inputs in error messages.
        """
        a, c = self._numpy(attn, where[0]), self._numpy(c0, where[1])
        if a.shape != c.shape:
            raise InputError(", ".join(where), f"spatial shapes differ: {a.shape} and {c.shape}")
        if min(a.shape) < 3:
            raise InputError(where[0], f"shape {a.shape} is not a CT volume; the lung mask works on volumes only "
                                       "(not on radiographs)")
        vox = np.broadcast_to(np.asarray(as_floats(voxel_mm), dtype=float), (3,))
        if not np.all(vox > 0):
            raise InputError("voxel_mm", f"must be positive, got {list(vox)}")
        mask = self.segment(a, c, vox, where)
        return convert_to_dst_type(mask[None].astype(np.uint8), attn, dtype=torch.uint8 if isinstance(
            attn, torch.Tensor) else np.uint8)[0]

    @staticmethod
    def _numpy(img: Any, where: str) -> np.ndarray:
        if img is None:
            raise InputError(where, "missing: the lung mask needs the attenuation and the isotropic dark-field")
        x = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        if x.ndim != 4 or x.shape[0] != 1:
            raise InputError(where, f"expected a (1, X, Y, Z) image, found shape {tuple(x.shape)}")
        x = x[0].astype(np.float64)
        if not np.isfinite(x).all():
            raise InputError(where, f"{int((~np.isfinite(x)).sum())} non-finite voxels (NaN or Inf)")
        return x

    def segment(self, attn: np.ndarray, c0: np.ndarray, voxel_mm: np.ndarray,
                where: tuple[str, str] = ("attn", "df")) -> np.ndarray:
        """The method on (X, Y, Z) float arrays; returns an (X, Y, Z) boolean mask."""
        if self.smoothing_mm > 0:  # a Gaussian of fixed size in mm: fine voxels are noisier at a fixed dose
            c0 = ndimage.gaussian_filter(c0, tuple(self.smoothing_mm / v for v in voxel_mm))
        t_air = self._air_threshold(attn)
        # no air in view (a field of view cropped to the lungs): the whole field of view is body
        body = np.ones(attn.shape, bool) if t_air is None else _fill_slices(attn > t_air)
        lung = self._aerated(body, c0, voxel_mm, where)
        margin = reach(self.closing_mm, voxel_mm)
        if margin is not None:  # each lung on its own, so the closing does not bridge the mediastinum
            labels, _ = connected_components(lung)
            lung = np.zeros_like(lung)
            for k, box in enumerate(ndimage.find_objects(labels), start=1):
                # the component's box and the closing's reach: same result as the whole volume, less work
                box = tuple(slice(max(b.start - m, 0), min(b.stop + m, size)) for b, m, size in
                            zip(box, margin, labels.shape, strict=True))
                lung[box] |= morphology(labels[box] == k, self.closing_mm, voxel_mm, "closing")
        return ndimage.binary_fill_holes(lung)

    def _aerated(self, body: np.ndarray, c0: np.ndarray, voxel_mm: np.ndarray, where: tuple[str, str]) -> np.ndarray:
        """Aerated tissue in ``body``: ``c0`` above the solid/aerated threshold, opened, the largest components."""
        t_lung = self._split(c0[body], where[1], "no aerated tissue (dark-field above solid tissue) in the body")
        lung = self._largest(morphology(body & (c0 > t_lung), self.opening_mm, voxel_mm, "opening"), voxel_mm)
        if not lung.any():
            raise InputError(", ".join(where), f"no lung found: no aerated region (strong dark-field inside the body) "
                                               f"of at least {self.min_volume_mm3:g} mm^3")
        return lung

    def _air_threshold(self, attn: np.ndarray) -> float | None:
        """The attenuation threshold between air and body, or None when no air is in view.

        The attenuation's two classes are air and body in a view of the whole thorax; in a view
        cropped to the lungs they are lung and soft tissue, or soft tissue and bone. Air is the
        lower class when its median is under :data:`AIR_ATTENUATION_RATIO` of the upper class's;
        otherwise the lower class is split again, down to where it holds no two classes.
        """
        values = attn.ravel()
        for _ in range(MAX_AIR_SPLITS):
            classes = self._classes(values)
            if classes is None:
                return None
            threshold, low, high = classes
            if high > 0 and abs(low) <= AIR_ATTENUATION_RATIO * high:
                return threshold
            values = values[values <= threshold]
        return None

    def _classes(self, values: np.ndarray) -> tuple[float, float, float] | None:
        """Otsu's two classes of ``values`` as ``(threshold, lower median, upper median)``, the
        threshold half-way between the medians; None when they lie less than ``min_contrast`` noise
        standard deviations apart (no two classes).

        Half-way, so a voxel at the lung's blurred edge counts as lung when at least half of it is.
        """
        if values.size < 2:
            return None
        t = otsu_threshold(values)
        if not np.isfinite(t):
            return None
        low, high = values[values <= t], values[values > t]
        if low.size == 0 or high.size == 0:
            return None
        m_low, m_high = float(np.median(low)), float(np.median(high))
        sd = 1.4826 * np.median(np.abs(low - m_low))
        contrast = (m_high - m_low) / sd if sd > 0 else np.inf
        if contrast < self.min_contrast:
            return None
        return 0.5 * (m_low + m_high), m_low, m_high

    def _split(self, values: np.ndarray, where: str, absent: str) -> float:
        """Threshold between the two classes of ``values`` (:meth:`_classes`).

        Raises:
            InputError: ``no lung found: <absent>`` when the values hold no two distinct classes.
        """
        classes = self._classes(values)
        if classes is None:
            raise InputError(where, f"no lung found: {absent}")
        return classes[0]

    def _largest(self, mask: np.ndarray, voxel_mm: np.ndarray) -> np.ndarray:
        """The ``max_components`` largest components of at least ``min_volume_mm3``."""
        labels, n = connected_components(mask)
        if n == 0:
            return mask
        volumes = np.bincount(labels.ravel(), minlength=n + 1)[1:] * float(np.prod(voxel_mm))
        order = np.argsort(-volumes, kind="stable")[: self.max_components]
        keep = [int(i) + 1 for i in order if volumes[i] >= self.min_volume_mm3]
        return np.isin(labels, keep)


class LungMaskd(MapTransform):
    """Dictionary version of :class:`LungMask`: a lung mask from ``attn`` and ``df`` channel ``c0``.

    Args:
        attn_key: the (1, X, Y, Z) attenuation.
        df_key: the decomposed dark-field (5, X, Y, Z) (``dfseg preprocess`` output, or
            :func:`~dfseg.transforms.pipeline.volume_chain`); ``df_channel`` picks ``c0``.
        df_channel: the channel of ``df_key`` holding the isotropic dark-field.
        output_key: where the (1, X, Y, Z) uint8 mask goes.
        voxel_mm: voxel size in mm; ``None`` reads it from the metadata, else the attenuation's affine.
        meta_key: where the scan's metadata lives in the data dictionary.
        allow_missing_keys: without ``attn_key`` or ``df_key`` leave the data unchanged.
        **kwargs: :class:`LungMask` settings (``opening_mm``, ``closing_mm``, ...).
    """

    backend = LungMask.backend

    def __init__(self, attn_key: str = "attn", df_key: str = "df", df_channel: int = 0, output_key: str = "lung_mask",
                 voxel_mm: float | Sequence[float] | None = None, meta_key: str = "meta", *,
                 allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__((attn_key, df_key), allow_missing_keys)
        self.attn_key, self.df_key, self.df_channel = attn_key, df_key, int(df_channel)
        self.output_key, self.voxel_mm, self.meta_key = output_key, voxel_mm, meta_key
        self.mask = LungMask(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.allow_missing_keys and (self.attn_key not in d or self.df_key not in d):
            return d
        for key in (self.attn_key, self.df_key):
            if key not in d:
                raise InputError(key, "not in the data: the lung mask needs the attenuation and the dark-field")
        df = d[self.df_key]
        if df.ndim != 4 or not 0 <= self.df_channel < df.shape[0]:
            raise InputError(self.df_key, f"expected a (C, X, Y, Z) dark-field with channel {self.df_channel}, "
                                          f"found shape {tuple(df.shape)}")
        vox = scan_value(d, "voxel_mm", self.voxel_mm, key=self.attn_key, meta_key=self.meta_key)
        d[self.output_key] = self.mask(d[self.attn_key], df[self.df_channel:self.df_channel + 1], vox,
                                       where=(self.attn_key, self.df_key))
        return d


LungMaskD = LungMaskDict = LungMaskd
