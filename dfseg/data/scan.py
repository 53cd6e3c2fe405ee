"""One scan, read once: :class:`LoadScand` and the one metadata lookup :func:`scan_value`.

A scan is a manifest entry (or a datalist item): image paths under the keys of
:data:`IMAGE_KEYS`, a ``sidecar`` path, and optionally a ``meta`` copy of the sidecar and flat
sidecar fields (``kvp``, ``voxel_mm``, ...). :class:`LoadScand` turns it into the data dictionary
every stage works on:

- each image key becomes a channel-first ``MetaTensor`` (float32) carrying the file's own affine
  (origin, direction and spacing, RAS as NIfTI stores it) and ``filename_or_obj``;
- ``d["meta"]`` holds the scan's acquisition metadata: the entry's ``meta`` and flat fields,
  overridden by the sidecar file (the source of truth; the manifest's copy may be stale).

:func:`scan_value` answers "what is this scan's voxel size / orientations / kVp / ..." from an
explicit argument, else ``d["meta"]``, else (voxel size only) the image's affine.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from dfseg.errors import InputError
from dfseg.io import load_nifti, read_json, voxel_size

__all__ = ["CHANNEL_KEYS", "IMAGE_KEYS", "META_FIELDS", "LoadScand", "as_floats", "load_scan_image", "scan_meta",
           "scan_value"]

#: Image keys a manifest entry may name.
IMAGE_KEYS: tuple[str, ...] = ("attn", "df", "label", "lung_mask", "histology", "proj_T", "proj_D")
#: Images stored channels-last on disk ``(..., N)`` (orientations or decomposed channels).
CHANNEL_KEYS: tuple[str, ...] = ("df", "proj_T", "proj_D")
#: Flat fields of a hand-written datalist that are acquisition metadata (dfseg's own datalists carry ``meta``).
META_FIELDS: tuple[str, ...] = ("orientations_deg", "voxel_mm", "kvp", "filtration_mm", "geometry", "air_columns",
                                "n_angles", "phase_steps", "photons_per_pixel", "visibility")

_MISSING = object()


def scan_meta(entry: Mapping[Hashable, Any], sidecar_key: str = "sidecar", meta_key: str = "meta") -> dict:
    """The scan's acquisition metadata: flat fields, then ``entry[meta_key]``, then the sidecar file."""
    meta: dict[str, Any] = {k: entry[k] for k in META_FIELDS if entry.get(k) is not None}
    if isinstance(entry.get(meta_key), Mapping):
        meta.update(entry[meta_key])
    path = entry.get(sidecar_key)
    if isinstance(path, (str, os.PathLike)) and path:
        sidecar = read_json(path)
        if not isinstance(sidecar, Mapping):
            raise InputError(path, f"sidecar must be a JSON object, found {type(sidecar).__name__}")
        meta.update(sidecar)
    return meta


def load_scan_image(path: str | os.PathLike, key: str, *, allow_nonfinite: bool = False,
                    voxel_mm: Any = None) -> MetaTensor:
    """Read one image of a scan as a channel-first float32 ``MetaTensor`` with the file's affine.

    ``df``/``proj_T``/``proj_D`` are ``(..., N)`` on disk and become ``(N, ...)`` (a 3-D one gets
    one channel); every other key gets a leading channel (a trailing singleton channel is dropped
    first). Errors name the file (:func:`dfseg.io.load_nifti`); NaN/Inf voxels are one of them
    unless ``allow_nonfinite`` (an image only displayed, never computed on). ``voxel_mm`` (the
    sidecar's) sizes a TIFF stack whose own metadata gives no spacing.
    """
    array, affine = load_nifti(path, allow_nonfinite=allow_nonfinite, voxel_mm=voxel_mm)
    if key in CHANNEL_KEYS:
        if array.ndim == 3:
            array = array[..., None]
        if array.ndim != 4:
            raise InputError(path, f"expected a 4-D image (..., N) for {key}, got shape {array.shape}")
        array = np.moveaxis(array, -1, 0)
    else:
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 3:
            raise InputError(path, f"expected a 3-D image for {key}, got shape {array.shape}")
        array = array[None]
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return MetaTensor(tensor, affine=torch.as_tensor(affine, dtype=torch.float64),
                      meta={"filename_or_obj": str(path), "original_affine": np.asarray(affine)})


class LoadScand(MapTransform):
    """Read a scan's images and sidecar into one data dictionary (module docstring).

    Args:
        keys: image keys to read (e.g. ``("attn", "df", "label", "lung_mask")``).
        meta_key: where the acquisition metadata goes.
        sidecar_key: the key holding the sidecar path.
        check_orientations: refuse a ``df``/``proj_*`` image whose channel count differs from the
            sidecar's ``orientations_deg`` (only for raw scans: decomposed ``df`` has 5 channels).
        allow_missing_keys: skip image keys the entry does not name.
    """

    def __init__(self, keys: KeysCollection, meta_key: str = "meta", sidecar_key: str = "sidecar", *,
                 check_orientations: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.meta_key, self.sidecar_key = meta_key, sidecar_key
        self.check_orientations = check_orientations

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.meta_key] = scan_meta(d, self.sidecar_key, self.meta_key)
        where = d.get("scan_id", "scan")
        for key in self.keys:
            path = d.get(key)
            if path is None or path == "":
                if self.allow_missing_keys:
                    continue
                raise InputError(f"{where}.{key}", "missing from the manifest entry")
            if not isinstance(path, (str, os.PathLike)):
                continue  # already loaded
            img = load_scan_image(path, str(key), voxel_mm=d[self.meta_key].get("voxel_mm"))
            n_or = len(d[self.meta_key].get("orientations_deg") or [])
            if self.check_orientations and key in CHANNEL_KEYS and n_or and img.shape[0] != n_or:
                raise InputError(path, f"expected {n_or} orientation channels from sidecar, found {img.shape[0]}")
            d[key] = img
        return d


def _affine_spacing(img: Any) -> tuple[float, ...] | None:
    affine = getattr(img, "affine", None)
    if isinstance(affine, torch.Tensor) and affine.shape[-1] == 4:
        aff = affine.detach().cpu().double()
        if not torch.allclose(aff, torch.eye(4, dtype=aff.dtype)):
            return tuple(float(v) for v in voxel_size(aff.numpy()))
    return None


def scan_value(data: Mapping[Hashable, Any] | None, name: str, given: Any = None, *, key: Hashable | None = None,
               meta_key: str = "meta", default: Any = _MISSING) -> Any:
    """One acquisition parameter of a scan: ``given``, else ``data[meta_key][name]``, else a fallback.

    Args:
        data: the data dictionary (:class:`LoadScand`'s output) or ``None``.
        name: the sidecar field (``voxel_mm``, ``orientations_deg``, ``kvp``, ``air_columns``, ...).
        given: an explicit value; wins when not ``None``.
        key: for ``voxel_mm``: the image whose affine answers when the metadata does not.
        meta_key: where the metadata lives in ``data``.
        default: returned when nothing answers; without it a missing value is an error.

    Raises:
        InputError: nothing answers and no ``default`` was given.
    """
    if given is not None:
        return given
    meta = None if data is None else data.get(meta_key)
    if isinstance(meta, Mapping) and meta.get(name) is not None:
        value = meta[name]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().tolist()
        return value
    if name == "voxel_mm" and data is not None and key is not None:
        spacing = _affine_spacing(data.get(key))
        if spacing is not None:
            return spacing
    if default is not _MISSING:
        return default
    raise InputError(f"{meta_key}.{name}", "missing; give it to the transform or put it in the scan's sidecar")


def as_floats(value: Any) -> list[float]:
    """A scalar or sequence metadata value as a flat list of floats."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return [float(v) for v in np.ravel(np.asarray(value, dtype=float))]

