"""Sliding-window inference with test-time mirroring, the one inferer of the bundles' inference and
``dfseg predict``.

nnU-Net (Isensee et al. 2021) predicts every window together with its mirror images along the
spatial axes and averages the logits (``nnunetv2``'s ``_internal_maybe_mirror_and_predict``): with
``k`` mirror axes, ``2**k`` forward passes per window. It mirrors the axes its training flipped
(``inference_allowed_mirroring_axes``), every axis by default; so does dfseg: the run record's
``predict.mirror_axes`` (:func:`dfseg.training.trained_mirror_axes`), every axis for runs trained
with :func:`dfseg.training.flip_axes`. :class:`MirroredInferer` does this inside
MONAI's :class:`~monai.inferers.SlidingWindowInferer`, so the Gaussian blending of the windows is
MONAI's. Training validation stays unmirrored (one pass per window), as nnU-Net's online validation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

__all__ = ["LEGACY_MIRROR_AXES", "MirroredInferer", "check_mirror_axes", "mirrored", "recorded_mirror_axes"]

#: the axes a run's inference mirrors when its record names none: runs recorded before training
#: flipped Z too were trained with flips along X and Y only
LEGACY_MIRROR_AXES = (0, 1)


def check_mirror_axes(axes: Sequence[int] | None, spatial_dims: int) -> tuple[int, ...]:
    """Checked spatial mirror axes: distinct, each in ``0 .. spatial_dims - 1``; None or empty: none.

    Raises:
        ValueError: an axis outside the image's spatial axes, or one given twice.
    """
    problem = f"mirror axes must be distinct spatial axes 0..{int(spatial_dims) - 1}, got {axes!r}"
    try:
        checked = tuple(int(a) for a in (axes or ()))
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if len(set(checked)) != len(checked) or any(not 0 <= a < int(spatial_dims) for a in checked):
        raise ValueError(problem)
    return checked


def recorded_mirror_axes(plan: Mapping[str, Any] | None, spatial_dims: int) -> tuple[int, ...]:
    """The axes a run's inference mirrors, from its record's ``predict`` entry (``plan``): its
    ``mirror_axes`` (the axes training flipped), else :data:`LEGACY_MIRROR_AXES`.

    Raises:
        ValueError: the recorded axes are not distinct spatial axes of a ``spatial_dims`` image.
    """
    recorded = (plan or {}).get("mirror_axes")
    return check_mirror_axes(LEGACY_MIRROR_AXES[:int(spatial_dims)] if recorded is None else recorded, spatial_dims)


def mirrored(network: Callable[..., torch.Tensor], axes: Sequence[int]) -> Callable[..., torch.Tensor]:
    """``network`` averaged over its input's mirror images: for every subset of the spatial ``axes``
    (the empty one included), flip the (N, C, *spatial) input, run ``network``, flip its output back;
    the mean of the ``2**len(axes)`` outputs. No axes: ``network`` itself."""
    dims = [int(a) + 2 for a in axes]
    if not dims:
        return network
    subsets = [c for k in range(len(dims) + 1) for c in itertools.combinations(dims, k)]

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        total = None
        for flip in subsets:
            y = network(torch.flip(x, flip) if flip else x, *args, **kwargs)
            y = torch.flip(y, flip) if flip else y
            total = y if total is None else total + y
        return total / len(subsets)

    return forward


class MirroredInferer(SlidingWindowInferer):
    """MONAI's sliding-window inferer whose every window is predicted with its mirror images
    (:func:`mirrored`: the logits averaged over all ``2**len(mirror_axes)`` flips, nnU-Net's
    test-time mirroring).

    Args:
        roi_size: the window, voxels per spatial axis (the training patch).
        sw_batch_size, overlap, mode, **kwargs: as :class:`monai.inferers.SlidingWindowInferer`.
        mirror_axes: spatial axes to mirror (0 = X); empty: plain sliding-window inference.
    """

    def __init__(self, roi_size: Sequence[int] | int, sw_batch_size: int = 1, overlap: float = 0.25,
                 mode: str = "gaussian", mirror_axes: Sequence[int] = (0, 1, 2), **kwargs: Any) -> None:
        super().__init__(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, **kwargs)
        dims = len(roi_size) if isinstance(roi_size, Sequence) else 3
        self.mirror_axes = check_mirror_axes(mirror_axes, dims)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        check_mirror_axes(self.mirror_axes, inputs.ndim - 2)
        return super().__call__(inputs, mirrored(network, self.mirror_axes), *args, **kwargs)
