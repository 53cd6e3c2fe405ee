"""dfseg.tomo: parallel-beam projector, adjoint, FBP and tensor projector (torch, batched, CPU/CUDA).

The operators run in blocks of angles within a memory budget (``budget_bytes=`` on every call;
the default is ``dfseg.tomo.projector.OPERATOR_BUDGET_BYTES``, which is read at each call and may
be reassigned there). :func:`operator_cache_bytes` and :func:`operator_stats` report the memory
held by cached blocks and the largest block built.
"""

from __future__ import annotations

from dfseg.tomo.fbp import FILTERS, fbp, filter_sinogram, ramp_filter
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
]
