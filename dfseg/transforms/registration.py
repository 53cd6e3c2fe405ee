"""Histology-to-image registration with SimpleITK: rigid, then B-spline; labels resampled nearest-neighbour.

What is compared depends on the fixed image:
- fixed is a label (0/1, e.g. a segmentation of the CT): label-to-label, compared through their
  signed distance maps with mean squares, a smooth cost with a wide capture range that a
  binary overlap measure lacks;
- fixed is an intensity image: Mattes mutual information between the image and a Gaussian-smoothed
  histology label (the label is not an intensity image, so MI rather than a difference).

Arrays are (X, Y, Z) numpy in dfseg order; SimpleITK wants (Z, Y, X), converted here.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type
from scipy import ndimage

from dfseg.data.scan import scan_value
from dfseg.errors import InputError

__all__ = [
    "RegisterHistology",
    "RegisterHistologyD",
    "RegisterHistologyDict",
    "RegisterHistologyd",
    "RegistrationResult",
    "is_label",
    "mean_surface_distance",
    "register_histology",
]


@dataclass
class RegistrationResult:
    """Outcome of :func:`register_histology`.

    Attributes:
        label: (X, Y, Z) uint8 moving label resampled onto the fixed grid.
        transform: SimpleITK transform mapping fixed physical points (mm) to moving ones.
        metric: final metric value of each stage that ran, by stage name.
    """

    label: np.ndarray
    transform: sitk.Transform
    metric: dict[str, float]


def is_label(array: np.ndarray) -> bool:
    """True for a 0/1 (or boolean) image."""
    values = np.unique(np.asarray(array))
    return values.size <= 2 and set(values.tolist()) <= {0, 1}


def _to_sitk(array: np.ndarray, spacing: Sequence[float], dtype: type = np.float32) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(np.asarray(array, dtype=dtype), (2, 1, 0))))
    img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def _from_sitk(img: sitk.Image) -> np.ndarray:
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))


def _distance_map(label: sitk.Image, clamp_mm: float) -> sitk.Image:
    sdm = sitk.SignedMaurerDistanceMap(sitk.Cast(label > 0, sitk.sitkUInt8), insideIsPositive=False,
                                       squaredDistance=False, useImageSpacing=True)
    # far from the surface the distance carries no alignment information, only large residuals
    return sitk.Clamp(sitk.Cast(sdm, sitk.sitkFloat32), sitk.sitkFloat32, -clamp_mm, clamp_mm)


def _method(metric_mi: bool, shrink: Sequence[int], smooth: Sequence[float], seed: int,
            sampling: float) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    if metric_mi:
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    else:
        reg.SetMetricAsMeanSquares()
    if sampling < 1.0:
        # a fixed-seed random subset: B-spline metric gradients over every voxel cost minutes
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(sampling, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smooth))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def register_histology(fixed_image: Any, moving_label: Any, *, spacing: float | Sequence[float] = 1.0,
                       moving_spacing: float | Sequence[float] | None = None, rigid: bool = True,
                       bspline: bool = True, fixed_is_label: bool | None = None,
                       mesh_mm: float | None = None, rigid_iterations: int = 100,
                       bspline_iterations: int = 30, sampling: float = 0.05, seed: int = 0) -> RegistrationResult:
    """Register a histology label volume to an image (or a label) of the same subject.

    Args:
        fixed_image: (X, Y, Z) fixed image (CT intensities or a 0/1 label), numpy or torch.
        moving_label: (X', Y', Z') 0/1 histology label, numpy or torch.
        spacing: fixed voxel size in mm (isotropic or per axis).
        moving_spacing: moving voxel size in mm (default: ``spacing``).
        rigid: run the rigid (Euler 3D) stage.
        bspline: run the B-spline stage after it.
        fixed_is_label: treat the fixed image as a label (``None``: decide from its values).
        mesh_mm: B-spline control-point spacing in mm (default: a quarter of the fixed extent).
        rigid_iterations: optimiser iterations per level of the rigid stage.
        bspline_iterations: L-BFGS-B iterations per level of the B-spline stage.
        sampling: fraction of fixed voxels the metric samples (random, seeded); 1 uses all.
        seed: metric sampling seed.

    Returns:
        :class:`RegistrationResult` with the resampled uint8 label on the fixed grid.
    """
    fixed = np.asarray(fixed_image.detach().cpu() if isinstance(fixed_image, torch.Tensor) else fixed_image)
    moving = np.asarray(moving_label.detach().cpu() if isinstance(moving_label, torch.Tensor) else moving_label)
    if fixed.ndim != 3 or moving.ndim != 3:
        raise InputError("registration", f"expected 3D volumes, got fixed {fixed.shape} and moving {moving.shape}")
    if not is_label(moving):
        raise InputError("moving", "histology label must be 0/1")
    if not np.isfinite(fixed).all():
        raise InputError("fixed", "NaN/Inf voxels")
    if not moving.any():
        raise InputError("moving", "histology label is empty")
    fixed_spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    mov_spacing = fixed_spacing if moving_spacing is None else np.broadcast_to(np.asarray(moving_spacing, float), (3,))
    label_mode = is_label(fixed) if fixed_is_label is None else fixed_is_label

    fixed_img = _to_sitk(fixed, fixed_spacing)
    moving_lab = _to_sitk(moving, mov_spacing, np.uint8)
    extent = fixed_spacing * np.asarray(fixed.shape)
    if label_mode:
        clamp = float(extent.max()) / 4
        fixed_feat = _distance_map(fixed_img, clamp)
        moving_feat = _distance_map(moving_lab, clamp)
        init_fixed, init_moving = sitk.Cast(fixed_img > 0, sitk.sitkFloat32), sitk.Cast(moving_lab, sitk.sitkFloat32)
        centring = sitk.CenteredTransformInitializerFilter.MOMENTS
    else:
        fixed_feat = fixed_img
        moving_feat = sitk.SmoothingRecursiveGaussian(sitk.Cast(moving_lab, sitk.sitkFloat32), float(mov_spacing.min()))
        init_fixed, init_moving = fixed_feat, moving_feat
        centring = sitk.CenteredTransformInitializerFilter.GEOMETRY

    metric: dict[str, float] = {}
    transform: sitk.Transform = sitk.CompositeTransform(3)
    if rigid:
        euler = sitk.CenteredTransformInitializer(init_fixed, init_moving, sitk.Euler3DTransform(), centring)
        reg = _method(not label_mode, (2, 1), (1.0, 0.0), seed, sampling)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                     numberOfIterations=rigid_iterations,
                                                     gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(euler, inPlace=True)
        reg.Execute(fixed_feat, moving_feat)
        metric["rigid"] = float(reg.GetMetricValue())
        transform = sitk.CompositeTransform([euler])
    if bspline:
        mesh = mesh_mm if mesh_mm is not None else float(extent.max()) / 4
        mesh_size = [max(1, int(round(e / mesh))) for e in extent]
        bsp = sitk.BSplineTransformInitializer(fixed_feat, mesh_size, order=3)
        reg = _method(not label_mode, (2, 1), (1.0, 0.0), seed, sampling)
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=bspline_iterations,
                                 maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * bspline_iterations)
        if rigid:
            reg.SetMovingInitialTransform(transform)
        reg.SetInitialTransform(bsp, inPlace=True)
        reg.Execute(fixed_feat, moving_feat)
        metric["bspline"] = float(reg.GetMetricValue())
        # a composite applies its last transform first: fixed point -> B-spline -> rigid -> moving
        transform = sitk.CompositeTransform([euler, bsp]) if rigid else sitk.CompositeTransform([bsp])
    out = sitk.Resample(moving_lab, fixed_img, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return RegistrationResult(_from_sitk(out).astype(np.uint8), transform, metric)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def mean_surface_distance(a: np.ndarray, b: np.ndarray, spacing: float | Sequence[float] = 1.0) -> float:
    """Symmetric mean surface distance between two binary volumes (mm; voxels with ``spacing=1``)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if not a.any() or not b.any():
        return float("inf")
    sa, sb = _surface(a), _surface(b)
    sp = np.broadcast_to(np.asarray(spacing, float), (3,))
    da = ndimage.distance_transform_edt(~sb, sampling=sp)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=sp)[sb]
    return float((da.sum() + db.sum()) / (da.size + db.size))


class RegisterHistology(Transform):
    """Register a histology label to a fixed image (:func:`register_histology`), keeping the label's layout.

    Args:
        spacing: fixed voxel size in mm (isotropic or per axis); may instead be given per call.
        rigid, bspline, fixed_is_label, mesh_mm: as in :func:`register_histology`.

    CPU only (SimpleITK): torch inputs come back as tensors on their original device.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, spacing: float | Sequence[float] = 1.0, *, rigid: bool = True, bspline: bool = True,
                 fixed_is_label: bool | None = None, mesh_mm: float | None = None) -> None:
        self.spacing = spacing
        self.kwargs = {"rigid": rigid, "bspline": bspline, "fixed_is_label": fixed_is_label, "mesh_mm": mesh_mm}

    def __call__(self, moving: NdarrayOrTensor, fixed: NdarrayOrTensor, *,
                 spacing: float | Sequence[float] | None = None) -> tuple[NdarrayOrTensor, sitk.Transform]:
        """Args:
            moving: histology label, (1, X', Y', Z') or (X', Y', Z').
            fixed: the image (or label) to register to, (1, X, Y, Z) or (X, Y, Z).
            spacing: overrides the constructor's fixed voxel size for this call.

        Returns:
            ``(label, transform)``: the label resampled onto the fixed grid, in the type, dtype and
            layout of ``moving``, and the SimpleITK transform (fixed points to moving points).
        """
        fixed3 = fixed[0] if fixed.ndim == 4 else fixed
        channel = moving.ndim == 4
        result = register_histology(fixed3, moving[0] if channel else moving,
                                    spacing=self.spacing if spacing is None else spacing, **self.kwargs)
        out = result.label[None] if channel else result.label
        return convert_to_dst_type(out, moving, dtype=moving.dtype)[0], result.transform


class RegisterHistologyd(MapTransform):
    """Dictionary :class:`RegisterHistology`: register ``data[key]`` (histology labels) to ``data[fixed_key]``.

    Args:
        keys: moving histology label keys, (1, X', Y', Z') or (X', Y', Z').
        fixed_key: the image (or label) to register to, (1, X, Y, Z) or (X, Y, Z).
        spacing: fixed voxel size in mm; ``None`` reads ``voxel_mm`` from the metadata, else the
            fixed image's affine, else 1.
        rigid, bspline, fixed_is_label, mesh_mm: as in :func:`register_histology`.
        transform_key: if given, the SimpleITK transform of the last key is stored there.
        meta_key: where the scan's metadata lives in the data dictionary.
        allow_missing_keys: skip absent keys.
    """

    backend = RegisterHistology.backend

    def __init__(self, keys: KeysCollection = "histology", fixed_key: str = "label", *,
                 spacing: float | Sequence[float] | None = None, rigid: bool = True, bspline: bool = True,
                 fixed_is_label: bool | None = None, mesh_mm: float | None = None,
                 transform_key: str | None = None, meta_key: str = "meta", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fixed_key, self.spacing, self.transform_key = fixed_key, spacing, transform_key
        self.meta_key = meta_key
        self.register = RegisterHistology(rigid=rigid, bspline=bspline, fixed_is_label=fixed_is_label, mesh_mm=mesh_mm)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        spacing = scan_value(d, "voxel_mm", self.spacing, key=self.fixed_key, meta_key=self.meta_key, default=1.0)
        for key in self.key_iterator(d):
            d[key], transform = self.register(d[key], d[self.fixed_key], spacing=spacing)
            if self.transform_key:
                d[self.transform_key] = transform
        return d


RegisterHistologyD = RegisterHistologyDict = RegisterHistologyd
