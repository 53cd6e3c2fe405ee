"""``dfseg register``: register a histology label volume to an image (rigid then B-spline)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dfseg.commands import add_out
from dfseg.data.scan import load_scan_image
from dfseg.data.validate import binary_problem
from dfseg.errors import InputError
from dfseg.io import atomic_path, refuse_existing, save_nifti, voxel_size
from dfseg.transforms.registration import register_histology

HELP = "register a histology label volume to an image (rigid then B-spline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixed", required=True, help="image (or label) to register to, NIfTI/MHA/NRRD")
    parser.add_argument("--moving", required=True, help="histology label volume (0/1)")
    add_out(parser, "registered label on the fixed grid (.nii.gz)", required=True)
    parser.add_argument("--transform", default=None, help="also write the SimpleITK transform here (.tfm)")
    parser.add_argument("--no-bspline", action="store_true", help="rigid registration only")
    parser.add_argument("--fixed-is-label", choices=("auto", "yes", "no"), default="auto",
                        help="compare label to label (distance maps) or label to image (mutual information)")
    parser.add_argument("--mesh-mm", type=float, default=None, help="B-spline control-point spacing in mm")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def register_files(fixed: str | os.PathLike, moving: str | os.PathLike, output: str | os.PathLike, *,
                   transform: str | os.PathLike | None = None, bspline: bool = True,
                   fixed_is_label: bool | None = None, mesh_mm: float | None = None,
                   overwrite: bool = False) -> dict:
    """Register the histology label file ``moving`` to the image file ``fixed``; write it on the fixed grid.

    Both files are read as 3-D scan images (:func:`dfseg.data.scan.load_scan_image`); the moving
    label must be binary (:func:`dfseg.data.validate.binary_problem`) and not empty. Outputs are
    refused before anything is read if they exist (unless ``overwrite``) or would replace an input.

    Returns:
        What the command prints: the output path, its tumour voxels and the final metric of each stage.
    """
    fixed, moving, output = Path(fixed), Path(moving), Path(output)
    for src in (fixed, moving):
        if src.exists() and output.exists() and src.resolve() == output.resolve():
            raise InputError(output, "output would overwrite an input")
    refuse_existing(output, overwrite=overwrite)
    if transform:
        refuse_existing(transform, overwrite=overwrite)
    fixed_image = load_scan_image(fixed, "fixed")
    label = load_scan_image(moving, "histology")
    problem = binary_problem("histology label", label)
    if problem is not None:
        raise InputError(moving, problem)
    if not label.any():
        raise InputError(moving, "histology label is empty")
    fixed_affine = fixed_image.affine.numpy()
    result = register_histology(fixed_image[0].numpy(), label[0].numpy().astype(np.uint8),
                                spacing=voxel_size(fixed_affine), moving_spacing=voxel_size(label.affine.numpy()),
                                bspline=bspline, fixed_is_label=fixed_is_label, mesh_mm=mesh_mm)
    save_nifti(output, result.label, fixed_affine, dtype=np.uint8)
    if transform:
        with atomic_path(transform) as tmp:
            sitk.WriteTransform(result.transform, str(tmp))
    return {"output": str(output), "voxels": int(result.label.sum()), "metric": result.metric}


def run(args: argparse.Namespace) -> int:
    summary = register_files(args.fixed, args.moving, args.out, transform=args.transform,
                             bspline=not args.no_bspline, mesh_mm=args.mesh_mm, overwrite=args.overwrite,
                             fixed_is_label={"auto": None, "yes": True, "no": False}[args.fixed_is_label])
    print(json.dumps(summary))
    return 0
