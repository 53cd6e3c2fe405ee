"""Projections to volumes: negative log and filtered back-projection as MONAI transforms.

Projection stacks are ``(N, A, U, Z)`` (N orientations, A angles over [0, 180) deg, U detector
columns = X, Z rows); volumes are ``(N, X, Y, Z)`` (docs/ARCHITECTURE.md). The reconstruction of
line integrals of pixel size ``pixel_mm`` is in 1/mm (mu for ``-ln T``, eps for ``-ln D``).

With a ``geometry`` (a :class:`dfseg.tomo.Geometry` or the sidecar's ``geometry`` block) the
stack may be any parallel or circular cone-beam scan: angle lists, 360 degree scans, a
centre-of-rotation offset, a detector pitch other than the voxel; Z is then the detector rows
(V) and the volume ``(N, X, Y, Z)`` is on the voxel grid of ``pixel_mm`` (default: the detector's
field of view at the axis). Without one, the original parallel-beam path runs unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

from dfseg.data.scan import scan_value
from dfseg.errors import InputError
from dfseg.tomo import Geometry, fbp, projection_angles, reconstruct

__all__ = [
    "NegativeLog", "NegativeLogd", "NegativeLogD", "NegativeLogDict",
    "FBPReconstruction", "FBPReconstructiond", "FBPReconstructionD", "FBPReconstructionDict",
]


class NegativeLog(Transform):
    """Ratio to line integral: ``-ln(max(x, floor))`` (T -> A, D -> DF).

    Args:
        floor: smallest ratio kept (a photon-starved pixel would give +inf).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, floor: float = 1e-6) -> None:
        self.floor = float(floor)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args: img: ratios, any shape. Returns: line integrals, same shape and type."""
        t = convert_data_type(img, torch.Tensor)[0]
        t = t if t.is_floating_point() else t.float()
        return convert_to_dst_type(-torch.log(torch.clamp(t, min=self.floor)), img, dtype=t.dtype)[0]


class FBPReconstruction(Transform):
    """Filtered back-projection of every channel and detector row (``dfseg.tomo.fbp``).

    Args:
        pixel_mm: voxel size in mm (without ``geometry``: also the detector pixel).
        filter_name: ``"ramp"``, ``"shepp-logan"`` or ``"hann"``.
        average_channels: average the N reconstructions into one channel (the attenuation of the
            N orientation scans measures the same mu; averaging lowers its noise).
        n_orientations: if given, the number of channels the stack must have.
        geometry: the scan geometry (:class:`dfseg.tomo.Geometry` or its sidecar block);
            ``None`` (or ``"ct"``): dfseg's parallel beam over [0, 180), detector pixel = voxel.
        volume_shape: ``(X, Y, Z)`` of the output with a geometry; default: the detector's field
            of view at the axis in voxels of ``pixel_mm``.
        budget_bytes: memory budget of the reconstruction (default
            :data:`dfseg.tomo.projector.OPERATOR_BUDGET_BYTES`).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, pixel_mm: float = 1.0, *, filter_name: str = "ramp", average_channels: bool = False,
                 n_orientations: int | None = None, geometry: Geometry | Mapping[str, Any] | str | None = None,
                 volume_shape: tuple[int, int, int] | None = None, budget_bytes: int | None = None) -> None:
        self.pixel_mm = float(pixel_mm)
        self.filter_name = filter_name
        self.average_channels = average_channels
        self.n_orientations = n_orientations
        self.geometry = None if geometry is None else Geometry.from_meta(geometry)
        self.volume_shape = None if volume_shape is None else tuple(int(v) for v in volume_shape)
        self.budget_bytes = budget_bytes

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args:
            img: line integrals ``(N, A, U, Z)``, unitless.

        Returns:
            ``(N, X, Y, Z)`` (or ``(1, X, Y, Z)`` when averaging) in 1/mm; X = Y = U without a
            geometry.
        """
        t = convert_data_type(img, torch.Tensor)[0]
        t = t if t.is_floating_point() else t.float()
        if t.ndim != 4:
            raise InputError("projections", f"expected (N, A, U, Z), got shape {tuple(t.shape)}")
        n, a, u, z = t.shape
        if self.n_orientations is not None and n != self.n_orientations:
            raise InputError("projections", f"expected {self.n_orientations} orientation channels from the sidecar, found {n}")
        if not bool(torch.isfinite(t).all()):
            raise InputError("projections", f"{int((~torch.isfinite(t)).sum())} NaN/Inf values")
        if self.geometry is not None:
            vol = reconstruct(t.as_subclass(torch.Tensor), self.geometry, self.pixel_mm, volume_shape=self.volume_shape,
                              filter_name=self.filter_name, budget_bytes=self.budget_bytes)
        else:
            angles = torch.as_tensor(projection_angles(a), dtype=t.dtype, device=t.device)
            sino = t.permute(0, 3, 1, 2)  # (N, Z, A, U): Z folds into the batch
            vol = fbp(sino, angles, u, pixel_mm=self.pixel_mm, filter_name=self.filter_name)  # (N, Z, X, Y)
            vol = vol.permute(0, 2, 3, 1).contiguous()
        if self.average_channels:
            vol = vol.mean(dim=0, keepdim=True)
        return convert_to_dst_type(vol, img, dtype=t.dtype)[0]


class NegativeLogd(MapTransform):
    """Dictionary :class:`NegativeLog` (default keys ``proj_T``, ``proj_D``)."""

    backend = NegativeLog.backend

    def __init__(self, keys: KeysCollection = ("proj_T", "proj_D"), floor: float = 1e-6,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = NegativeLog(floor)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key])
        return d


class FBPReconstructiond(MapTransform):
    """Dictionary :class:`FBPReconstruction`: ``proj_T`` -> ``attn``, ``proj_D`` -> ``df``.

    Args:
        keys: projection keys.
        output_keys: where to put each reconstruction (default: the same keys).
        pixel_mm: voxel size in mm, else ``meta["voxel_mm"]``.
        average_keys: keys whose channels are averaged into one (e.g. ``("proj_T",)``).
        check_orientations: compare the channel count with ``len(meta["orientations_deg"])``
            when the sidecar has it.
        geometry: the scan geometry, else the sidecar's ``meta["beam"]`` block (the fields of
            :meth:`dfseg.tomo.Geometry.describe`; ``meta["geometry"]`` when that is a mapping);
            no block keeps dfseg's parallel beam (``meta["geometry"]`` is the scan type, ``"ct"``).
        volume_shape: ``(X, Y, Z)`` of the outputs with a geometry (default: the detector's field
            of view at the axis).
        budget_bytes: memory budget of the reconstruction.
        meta_key: sidecar key in the data dictionary.
    """

    backend = FBPReconstruction.backend

    def __init__(self, keys: KeysCollection = ("proj_T", "proj_D"), output_keys: KeysCollection | None = None, *,
                 pixel_mm: float | None = None, filter_name: str = "ramp", average_keys: KeysCollection = (),
                 check_orientations: bool = True, geometry: Geometry | Mapping[str, Any] | str | None = None,
                 volume_shape: tuple[int, int, int] | None = None, budget_bytes: int | None = None,
                 meta_key: str = "meta", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        out = self.keys if output_keys is None else ((output_keys,) if isinstance(output_keys, str) else tuple(output_keys))
        if len(out) != len(self.keys):
            raise ValueError("output_keys must match keys one to one")
        self.output_keys = dict(zip(self.keys, out))
        self.pixel_mm = pixel_mm
        self.filter_name = filter_name
        self.average_keys = {average_keys} if isinstance(average_keys, str) else set(average_keys)
        self.check_orientations = check_orientations
        self.geometry = None if geometry is None else Geometry.from_meta(geometry)
        self.volume_shape = volume_shape
        self.budget_bytes = budget_bytes
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        pixel = float(scan_value(d, "voxel_mm", self.pixel_mm, meta_key=self.meta_key))
        orientations = scan_value(d, "orientations_deg", meta_key=self.meta_key, default=None)
        n_or = len(orientations) if self.check_orientations and orientations else None
        geometry = self.geometry
        if geometry is None:  # the sidecar's "beam" block (its "geometry" names the scan type: ct)
            for name in ("beam", "geometry"):
                block = scan_value(d, name, meta_key=self.meta_key, default=None)
                if isinstance(block, Mapping | Geometry):
                    try:
                        geometry = Geometry.from_meta(block)
                    except InputError as err:
                        field = str(err.where).removeprefix("geometry")
                        raise InputError(f"{self.meta_key}.{name}{field}", err.problem) from None
                    break
        for key in keys:
            op = FBPReconstruction(pixel, filter_name=self.filter_name, average_channels=key in self.average_keys,
                                   n_orientations=n_or, geometry=geometry, volume_shape=self.volume_shape,
                                   budget_bytes=self.budget_bytes)
            try:
                vol = op(d[key])
            except InputError as err:
                raise InputError(key, err.problem if err.where == "projections" else f"{err.where} {err.problem}") from None
            d[self.output_keys[key]] = vol
            if self.output_keys[key] != key:
                del d[key]
        return d


NegativeLogD = NegativeLogDict = NegativeLogd
FBPReconstructionD = FBPReconstructionDict = FBPReconstructiond
