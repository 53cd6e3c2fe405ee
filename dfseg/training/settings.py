"""Values the bundle configs derive from their settings: the ROI size, the network and the run folder.

Each is one call in the YAML, so a config names components and numbers and computes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from dfseg.networks import build
from dfseg.training.transforms import in_channels

__all__ = ["build_network", "output_dir", "roi_size"]

#: environment variable naming the folder default run folders go in (the Docker image sets /runs)
RUNS_ENV = "DFSEG_RUNS"


def output_dir(bundle_root: str | os.PathLike, fold: int | str) -> str:
    """The run folder of a training run given no ``output_dir``.

    ``$DFSEG_RUNS/<bundle name>/fold<k>`` when the ``DFSEG_RUNS`` environment variable is set (the
    Docker image sets ``/runs``: the bundles it ships are read-only to the container user), else
    ``<bundle_root>/runs/fold<k>``.
    """
    runs = os.environ.get(RUNS_ENV)
    if runs:
        return str(Path(runs) / Path(bundle_root).resolve().name / f"fold{fold}")
    return os.path.join(str(bundle_root), "runs", f"fold{fold}")


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
