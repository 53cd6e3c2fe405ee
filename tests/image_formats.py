"""Writers of the image formats a lab's scans come in (MHA, DICOM series, TIFF stack), for the reader tests.

Arrays are given as dfseg holds them, ``(X, Y, Z[, C])``; geometry as ITK gives it (LPS):
spacing, origin and a 3x3 direction (row-major). :func:`ras_affine` is the affine dfseg must read back.
"""

from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import tifffile

#: A scanner's geometry: 30 degrees about z, anisotropic spacing, an origin far from 0.
SPACING = (0.2, 0.25, 0.3)
ORIGIN = (5.0, -3.0, 12.0)
_T = np.deg2rad(30.0)
DIRECTION = (np.cos(_T), -np.sin(_T), 0.0, np.sin(_T), np.cos(_T), 0.0, 0.0, 0.0, 1.0)
#: DICOM stores values as int16 with this rescale slope, so test data are multiples of it.
DICOM_SLOPE = 0.001


def ras_affine(spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> np.ndarray:
    """The RAS affine of an ITK (LPS) geometry: x and y rows change sign."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing, float)
    affine[:3, 3] = origin
    affine[:2] *= -1
    return affine


def _itk(array_xyz: np.ndarray, spacing, origin, direction) -> sitk.Image:
    arr = np.transpose(array_xyz, (2, 1, 0, 3) if array_xyz.ndim == 4 else (2, 1, 0))
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=array_xyz.ndim == 4)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(d) for d in direction))
    return img


def write_mha(path: Path, array_xyz: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> Path:
    """An ITK MetaImage with a scanner's origin and direction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_itk(array_xyz, spacing, origin, direction), str(path))
    return path


def dicom_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random float values a DICOM series stores exactly (int16 counts times :data:`DICOM_SLOPE`)."""
    return rng.integers(0, 3000, shape) * DICOM_SLOPE


def write_dicom_series(folder: Path, array_xyz: np.ndarray, spacing=SPACING, origin=ORIGIN,
                       direction=DIRECTION, series_uid: str = "1.2.826.0.1.3680043.2.1125.1") -> Path:
    """One DICOM file per z slice (SimpleITK's "DicomSeriesFromArray" example), int16 with a rescale slope."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the process locale to C; put it back
    try:
        _write_dicom_slices(folder, _itk(np.asarray(array_xyz, np.float32), spacing, origin, direction), series_uid)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return folder


def _write_dicom_slices(folder: Path, img: sitk.Image, series_uid: str) -> None:
    d = img.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        slice_ = img[:, :, k]
        tags = {
            "0008|0060": "CT", "0020|000d": series_uid + ".0", "0020|000e": series_uid,
            "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0020|0032": "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k), "0028|1053": str(DICOM_SLOPE), "0028|1052": "0",
            "0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "1",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)


def write_tiff(path: Path, array_xyz: np.ndarray, spacing: tuple[float, float, float] | None = None) -> Path:
    """A TIFF stack stored ``(Z, Y, X)`` (``(Z, C, Y, X)`` with channels): ImageJ spacing in mm when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = array_xyz.ndim == 4
    data = np.ascontiguousarray(np.transpose(array_xyz, (2, 3, 1, 0) if channels else (2, 1, 0)), np.float32)
    if spacing is None:
        tifffile.imwrite(str(path), data)
    else:
        tifffile.imwrite(str(path), data, imagej=True, resolution=(1 / spacing[0], 1 / spacing[1]),
                         metadata={"spacing": spacing[2], "unit": "mm", "axes": "ZCYX" if channels else "ZYX"})
    return path
