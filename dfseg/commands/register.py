"""``dfseg register``: register a histology label volume to an image (rigid then B-spline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dfseg.errors import InputError

HELP = "register a histology label volume to an image (rigid then B-spline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", required=True, help="image (or label) to register to, NIfTI/MHA/NRRD")
    parser.add_argument("--moving", required=True, help="histology label volume (0/1)")
    parser.add_argument("-o", "--output", required=True, help="registered label on the fixed grid (.nii.gz)")
    parser.add_argument("--transform", default=None, help="also write the SimpleITK transform here (.tfm)")
    parser.add_argument("--no-bspline", action="store_true", help="rigid registration only")
    parser.add_argument("--fixed-is-label", choices=("auto", "yes", "no"), default="auto",
                        help="compare label to label (distance maps) or label to image (mutual information)")
    parser.add_argument("--mesh-mm", type=float, default=None, help="B-spline control-point spacing in mm")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _volume(path: Path, array: np.ndarray) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(path, f"expected a 3D volume (X, Y, Z), found shape {array.shape}")
    return array


def run(args: argparse.Namespace) -> int:
    from dfseg.io import atomic_path, load_nifti, refuse_existing, save_nifti, voxel_size
    from dfseg.transforms.registration import is_label, register_histology

    fixed_path, moving_path, out_path = Path(args.fixed), Path(args.moving), Path(args.output)
    for src in (fixed_path, moving_path):
        if src.exists() and out_path.exists() and src.resolve() == out_path.resolve():
            raise InputError(out_path, "output would overwrite an input")
    refuse_existing(out_path, overwrite=args.overwrite)
    if args.transform:
        refuse_existing(args.transform, overwrite=args.overwrite)
    fixed, fixed_affine = load_nifti(fixed_path)
    moving, moving_affine = load_nifti(moving_path)
    fixed, moving = _volume(fixed_path, fixed), _volume(moving_path, moving)
    if not is_label(moving):
        raise InputError(moving_path, "histology label must hold only 0 and 1")
    if not moving.any():
        raise InputError(moving_path, "histology label is empty")
    spacing = voxel_size(fixed_affine)
    fixed_is_label = {"auto": None, "yes": True, "no": False}[args.fixed_is_label]
    result = register_histology(fixed.astype(np.float32), moving.astype(np.uint8), spacing=spacing,
                                moving_spacing=voxel_size(moving_affine), bspline=not args.no_bspline,
                                fixed_is_label=fixed_is_label, mesh_mm=args.mesh_mm)
    save_nifti(out_path, result.label, tuple(spacing), dtype=np.uint8)
    if args.transform:
        import SimpleITK as sitk

        with atomic_path(args.transform) as tmp:
            sitk.WriteTransform(result.transform, str(tmp))
    print(json.dumps({"output": str(out_path), "voxels": int(result.label.sum()), "metric": result.metric}))
    return 0
