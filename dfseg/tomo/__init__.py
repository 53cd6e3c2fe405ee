"""dfseg.tomo: parallel-beam projector, adjoint, FBP and tensor projector (torch, batched, CPU/CUDA)."""

from __future__ import annotations

from dfseg.tomo.fbp import FILTERS, fbp, filter_sinogram, ramp_filter
from dfseg.tomo.projector import (
    backproject,
    project,
    project_tensor,
    projection_angles,
    tensor_projection_weights,
)

__all__ = [
    "FILTERS",
    "backproject",
    "fbp",
    "filter_sinogram",
    "project",
    "project_tensor",
    "projection_angles",
    "ramp_filter",
    "tensor_projection_weights",
]
