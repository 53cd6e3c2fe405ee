"""Network-input scaling in physical reference units, the same whatever the field of view.

The network sees each channel divided by a reference that the scan itself measures inside its
anatomy, never a statistic of the whole field of view (which depends on how much air and body it
holds):

- ``attn`` (mu, 1/mm) over the attenuation of the body's solid tissue: the median of the voxels
  outside the lung that attenuate more than the lung's median
  (:func:`dfseg.transforms.tumour.estimate_tissue_mu`). Air is 0, soft tissue 1, aerated lung
  about ``1 - phi`` (0.15-0.4), bone above 1. The ratio removes what moves the absolute mu
  between scanners: effective energy (kVp, filtration), residual beam hardening, calibration.
- dark-field channels (``c0``, ``amp``, ``amp_cos2t``, ``amp_sin2t``; 1/mm) over the median
  isotropic dark-field ``c0`` of the lung: healthy lung is 1, solid tissue and tumour near 0. The
  ratio removes the grating visibility, the spectrum's dark-field energy dependence and the
  alveolar size, which scale the whole lung's dark-field together.
- ``aniso`` is already a ratio and is kept.

Both references are medians over tissue classes (robust to lesions, which are a small part of the
lung). The rule is stored with a model (``run_info.json["normalisation"]``) and applied alike at
training, validation and ``dfseg predict``. Models recorded without one were trained on a
per-volume z-score (:data:`NORMALISATIONS` ``zscore``) and are fed that way.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from dfseg.errors import InputError
from dfseg.transforms.tumour import estimate_tissue_df, estimate_tissue_mu

__all__ = ["NORMALISATIONS", "LungReferenceNormalize", "LungReferenceNormalized", "LungReferenceNormalizeD",
           "LungReferenceNormalizeDict", "TissueReferencesd", "check_normalisation"]

#: ``lung_reference``: this module's physical scaling; ``zscore``: per-volume, per-channel z-score
#: over the whole field of view (models trained before the physical scaling).
NORMALISATIONS = ("lung_reference", "zscore")

#: dark-field channels scaled by the lung's median c0
_DF_SCALED = ("c0", "amp", "amp_cos2t", "amp_sin2t")


def check_normalisation(name: str) -> str:
    """``name`` if it is one of :data:`NORMALISATIONS`, else a one-line :class:`InputError`."""
    if name not in NORMALISATIONS:
        raise InputError("normalisation", f"must be one of {', '.join(NORMALISATIONS)}, got {name!r}")
    return name


class LungReferenceNormalize(Transform):
    """Scale channels by the scan's own tissue references (module docstring).

    Args:
        channels: the image's channel names, in order (names of :data:`dfseg.channels.ATTN_CHANNELS`
            and :data:`dfseg.channels.DF_CHANNELS`).

    Call with ``(img, lung_mask)``: ``img`` (C, *spatial) numpy array or tensor, ``lung_mask``
    (1, *spatial) or (*spatial). Returns the scaled image of the input's type, device and dtype.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = tuple(channels)
        unknown = [c for c in self.channels if c not in ("attn", "aniso", *_DF_SCALED)]
        if unknown:
            raise InputError("channels", f"unknown channel(s) {unknown}")

    def references(self, img: Any, lung_mask: Any) -> dict[str, float]:
        """The divisors: ``{"attn": mu_tissue, "c0": median lung c0}`` for the channels present."""
        t = torch.as_tensor(img)
        lung = torch.as_tensor(lung_mask).to(t.device).reshape(t.shape[1:]) > 0
        if not bool(lung.any()):
            raise InputError("lung_mask", "empty lung mask: no reference for the network input")
        refs: dict[str, float] = {}
        if "attn" in self.channels:
            try:
                mu = estimate_tissue_mu(t[self.channels.index("attn")], lung)
            except InputError:
                raise InputError("attn", "no solid tissue outside the lung mask (no voxel denser than the lung's "
                                         "median): the network input has no attenuation reference") from None
            if not mu > 0:
                raise InputError("attn", f"solid-tissue attenuation {mu:.3g} /mm is not positive")
            refs["attn"] = mu
        if any(c in self.channels for c in _DF_SCALED):
            if "c0" not in self.channels:
                raise InputError("channels", "dark-field channels without c0 have no lung reference")
            c0 = float(t[self.channels.index("c0")][lung].double().median())
            if not c0 > 0:
                raise InputError("df", f"the lung's median dark-field c0 {c0:.3g} /mm is not positive")
            refs["c0"] = c0
        return refs

    def __call__(self, img: Any, lung_mask: Any, refs: Mapping[str, float] | None = None) -> Any:
        """Scale ``img``; ``refs`` (:meth:`references`, e.g. measured once by :class:`TissueReferencesd`)
        skips measuring them."""
        t = torch.as_tensor(img)
        if t.shape[0] != len(self.channels):
            raise InputError("image", f"{t.shape[0]} channels, expected {len(self.channels)} ({', '.join(self.channels)})")
        refs = self.references(t, lung_mask) if refs is None else refs
        scale = [refs["attn"] if c == "attn" else refs["c0"] if c in _DF_SCALED else 1.0 for c in self.channels]
        dtype = t.dtype if t.is_floating_point() else torch.float32
        div = torch.tensor(scale, dtype=dtype, device=t.device).reshape(-1, *([1] * (t.ndim - 1)))
        out = t.to(dtype) / div
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class LungReferenceNormalized(MapTransform):
    """Dictionary wrapper of :class:`LungReferenceNormalize`.

    Args:
        keys: image key(s) to scale.
        channels: the images' channel names.
        mask_key: lung mask key.
        allow_missing_keys: skip absent keys.
    """

    backend = LungReferenceNormalize.backend

    def __init__(self, keys: KeysCollection, channels: Sequence[str], mask_key: str = "lung_mask",
                 refs_key: str = "tissue_refs", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize, self.mask_key, self.refs_key = LungReferenceNormalize(channels), mask_key, refs_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key not in d:
            raise InputError(self.mask_key, "no lung mask: the network input is scaled by references inside it")
        refs = d.pop(self.refs_key, None)  # measured before the random transforms (TissueReferencesd)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key], d[self.mask_key], refs)
        return d


class TissueReferencesd(MapTransform):
    """Measure a scan's tissue references once, before the random transforms (so a cache holds them).

    ``d[output_key] = {"attn": mu_tissue, "c0": median lung c0, "df_tissue": [one per df channel]}``
    from ``attn`` (1, X, Y, Z), decomposed ``df`` (5, X, Y, Z; c0 first) and the lung mask:
    :class:`LungReferenceNormalized` and :class:`dfseg.transforms.RandSyntheticTumourd` read it
    instead of measuring each sample again (about 0.2 s per 178 x 178 x 32 volume).

    Args:
        attn_key, df_key, mask_key: the scan's keys.
        output_key: where the references go.
    """

    def __init__(self, attn_key: str = "attn", df_key: str = "df", mask_key: str = "lung_mask",
                 output_key: str = "tissue_refs") -> None:
        super().__init__(keys=(attn_key, df_key))
        self.attn_key, self.df_key, self.mask_key, self.output_key = attn_key, df_key, mask_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        attn, df, lung = d[self.attn_key], d[self.df_key], d[self.mask_key]
        refs = LungReferenceNormalize(("attn", "c0")).references(
            torch.cat([torch.as_tensor(attn)[:1], torch.as_tensor(df)[:1]]), lung)
        refs["df_tissue"] = [float(v) for v in estimate_tissue_df(df, attn, lung)]
        d[self.output_key] = refs
        return d


LungReferenceNormalizeD = LungReferenceNormalizeDict = LungReferenceNormalized

