"""Values the bundle configs derive from their settings: the ROI size and the network.

Each is one call in the YAML, so a config names components and numbers and computes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn as nn

from dfseg.networks import build
from dfseg.training.transforms import in_channels

__all__ = ["build_network", "roi_size"]


def roi_size(patch_size: int | str | Sequence[int], spatial_dims: int) -> list[int]:
    """The training patch and sliding-window ROI in voxels.

    Args:
        patch_size: one size for every axis (an int, or its string from the command line) or one per axis.
        spatial_dims: 3 (CT volumes) or 2 (radiographs).
    """
    if isinstance(patch_size, (int, str)):
        return [int(patch_size)] * int(spatial_dims)
    return [int(p) for p in patch_size]


def build_network(network_args: Mapping[str, Any], modality: str, roi_size: Sequence[int]) -> nn.Module:
    """``dfseg.networks.build(**network_args)`` with the input channels of ``modality``.

    Args:
        network_args: ``name`` and the constructor arguments (the bundle's ``network_args``, which
            ``run_info.json`` records as ``network``).
        modality: ``attn``, ``df`` or ``combined`` (1, 4 or 5 input channels).
        roi_size: the patch / ROI size, checked against the network's size constraint (SwinUNETR).
    """
    return build(in_channels=in_channels(modality), img_size=roi_size, **network_args)
