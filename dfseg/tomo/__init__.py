"""dfseg.tomo: parallel-beam projector, adjoint, FBP and tensor projector (torch, batched, CPU/CUDA);
scan geometries beyond it (:class:`Geometry`: angle lists, 360 degree scans, centre-of-rotation
offset, detector pixel != voxel, circular cone beam) with their projector, parallel FBP, FDK,
centre-of-rotation estimation and analytic ellipsoid phantoms.

The operators run in blocks of angles within a memory budget (``budget_bytes=`` on every call;
the default is ``dfseg.tomo.projector.OPERATOR_BUDGET_BYTES``, which is read at each call and may
be reassigned there; built blocks are cached within ``dfseg.tomo.projector.OPERATOR_CACHE_BYTES``,
or within ``budget_bytes`` when a call states it). :func:`operator_cache_bytes` and :func:`operator_stats` report the memory
held by cached blocks and the largest block built.
"""

from __future__ import annotations

from dfseg.tomo.cone import fdk, parker_weights, project_geometry, redundancy_weights
from dfseg.tomo.cor import COR_METHODS, estimate_cor
from dfseg.tomo.fbp import FILTERS, fbp, filter_sinogram, ramp_filter
from dfseg.tomo.geometry import GEOMETRY_KINDS, Geometry, angle_weights, detector_rays
from dfseg.tomo.parallel import fbp_parallel
from dfseg.tomo.phantom import Ellipsoid, ellipsoid_projections, ellipsoid_volume, line_integrals
from dfseg.tomo.projector import (
    OPERATOR_BUDGET_BYTES,
    backproject,
    clear_operator_cache,
    operator_cache_bytes,
    operator_stats,
    project,
    project_tensor,
    projection_angles,
    tensor_projection_weights,
)
from dfseg.tomo.reconstruct import reconstruct

__all__ = [
    "FILTERS",
    "OPERATOR_BUDGET_BYTES",
    "backproject",
    "clear_operator_cache",
    "fbp",
    "filter_sinogram",
    "operator_cache_bytes",
    "operator_stats",
    "project",
    "project_tensor",
    "projection_angles",
    "ramp_filter",
    "tensor_projection_weights",
    # geometry beyond the default parallel beam
    "COR_METHODS",
    "GEOMETRY_KINDS",
    "Ellipsoid",
    "Geometry",
    "angle_weights",
    "detector_rays",
    "ellipsoid_projections",
    "ellipsoid_volume",
    "estimate_cor",
    "fbp_parallel",
    "fdk",
    "line_integrals",
    "parker_weights",
    "project_geometry",
    "reconstruct",
    "redundancy_weights",
]
