"""One entry point for projection stacks in any geometry: parallel FBP or cone-beam FDK."""

from __future__ import annotations

import torch

from dfseg.tomo.cone import fdk
from dfseg.tomo.fbp import fbp
from dfseg.tomo.geometry import Geometry
from dfseg.tomo.parallel import fbp_parallel
from dfseg.tomo.projector import _as_tensor, _out, projection_angles

__all__ = ["reconstruct"]


def reconstruct(proj, geometry: Geometry | dict | str | None, voxel_mm: float, *,
                volume_shape: tuple[int, int, int] | None = None, filter_name: str = "ramp",
                budget_bytes: int | None = None):
    """Reconstruct ``(..., A, U, V)`` line integrals into ``(..., X, Y, Z)`` volumes in 1/mm.

    dfseg's original geometry (parallel, A angles evenly over 180 degrees, detector pixel =
    voxel, centred axis, default volume) goes to :func:`dfseg.tomo.fbp` slice by slice, exactly as
    before; any other parallel geometry to :func:`dfseg.tomo.parallel.fbp_parallel`; cone beam
    to :func:`dfseg.tomo.cone.fdk`.

    Args:
        proj: ``(..., A, U, V)`` line integrals, numpy or torch.
        geometry: a :class:`Geometry`, its sidecar block, ``"ct"`` or ``None`` (the default).
        voxel_mm: voxel size of the output in mm.
        volume_shape: ``(X, Y, Z)``; default :meth:`Geometry.volume_shape`.
        filter_name: ``"ramp"``, ``"shepp-logan"`` or ``"hann"``.
        budget_bytes: memory budget of the operators.
    """
    g = Geometry.from_meta(geometry)
    p, was_numpy = _as_tensor(proj)
    n_a, n_u, n_v = g.check_projections(p.shape)
    kwargs = {"volume_shape": volume_shape, "filter_name": filter_name, "budget_bytes": budget_bytes}
    if g.kind == "cone":
        return _out(fdk(p, g, voxel_mm, **kwargs), was_numpy)
    default_shape = (n_u, n_u, n_v)
    if g.is_default(n_a, n_u, float(voxel_mm)) and (volume_shape is None or tuple(volume_shape) == default_shape):
        angles = torch.as_tensor(projection_angles(n_a), dtype=p.dtype, device=p.device)
        sino = p.movedim(-1, -3)  # (..., V, A, U): rows fold into the batch
        vol = fbp(sino, angles, n_u, pixel_mm=float(voxel_mm), filter_name=filter_name, budget_bytes=budget_bytes)
        return _out(vol.movedim(-3, -1).contiguous(), was_numpy)
    return _out(fbp_parallel(p, g, voxel_mm, **kwargs), was_numpy)
