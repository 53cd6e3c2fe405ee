"""Values the bundle configs derive from their settings: the ROI size, the network and the run folder.

Each is one call in the YAML, so a config names components and numbers and computes nothing.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from dfseg.errors import InputError
from dfseg.networks import build
from dfseg.training.inferers import recorded_mirror_axes
from dfseg.training.transforms import flip_axes, in_channels

__all__ = ["build_network", "output_dir", "roi_size", "trained_mirror_axes", "trained_roi_size"]

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


def _run_record(output_dir: str | os.PathLike) -> tuple[Path, dict | None]:
    """``output_dir/run_info.json`` and its record (None when there is no such file).

    Raises:
        InputError: the file is not readable JSON.
    """
    path = Path(output_dir) / "run_info.json"
    if not path.is_file():
        return path, None
    try:
        return path, json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(str(path), f"not a readable run_info.json ({err})") from None


def trained_roi_size(output_dir: str | os.PathLike, patch_size: int | str | Sequence[int], spatial_dims: int) -> list[int]:
    """The sliding-window ROI of inference: the patch the checkpoint in ``output_dir`` was trained on.

    The networks normalise each window by its own statistics (instance normalisation), so a window
    of another size than the training patch shows the network other feature statistics than it
    learned: a 32-voxel model run in 64-voxel windows loses its small lesions. The trained patch is
    ``run_info.json``'s ``predict.roi_size`` (what ``dfseg predict`` uses), else its
    ``hyper_parameters.patch_size``; without a ``run_info.json`` it is ``patch_size``. A
    ``patch_size`` that differs from the trained patch is named on stderr and not used.

    Args:
        output_dir: the run folder holding ``model.pt`` and ``run_info.json``.
        patch_size: the bundle's ``patch_size`` setting (:func:`roi_size`).
        spatial_dims: 3 (CT volumes) or 2 (radiographs).

    Raises:
        InputError: ``run_info.json`` is not JSON or its patch has the wrong number of axes.
    """
    given = roi_size(patch_size, spatial_dims)
    path, info = _run_record(output_dir)
    if info is None:
        return given
    trained = (info.get("predict") or {}).get("roi_size") or (info.get("hyper_parameters") or {}).get("patch_size")
    if trained is None:
        return given
    trained = roi_size(trained, spatial_dims)
    if len(trained) != int(spatial_dims):
        raise InputError(str(path), f"trained patch {trained} has {len(trained)} axes, the run has {spatial_dims}")
    if trained != given:
        print(f"inference window {' x '.join(map(str, trained))}: the patch the model was trained on ({path}); "
              f"patch_size {' x '.join(map(str, given))} is not used", file=sys.stderr)
    return trained


def trained_mirror_axes(output_dir: str | os.PathLike, spatial_dims: int) -> list[int]:
    """The axes inference mirrors (:class:`dfseg.training.MirroredInferer`): those the checkpoint in
    ``output_dir`` was trained flipping.

    ``run_info.json``'s ``predict.mirror_axes`` (what ``dfseg predict`` uses); a record without it
    was trained flipping X and Y (:func:`dfseg.training.recorded_mirror_axes`); without a
    ``run_info.json``, the axes training flips now (:func:`dfseg.training.flip_axes`).

    Raises:
        InputError: ``run_info.json`` is not JSON or names axes the image does not have.
    """
    path, info = _run_record(output_dir)
    if info is None:
        return list(flip_axes(spatial_dims))
    try:
        return list(recorded_mirror_axes(info.get("predict"), spatial_dims))
    except ValueError as err:
        raise InputError(str(path), f"predict.mirror_axes: {err}") from None


def build_network(network_args: Mapping[str, Any], modality: str, roi_size: Sequence[int]) -> nn.Module:
    """``dfseg.networks.build(**network_args)`` with the input channels of ``modality``.

    Args:
        network_args: ``name`` and the constructor arguments (the bundle's ``network_args``, which
            ``run_info.json`` records as ``network``).
        modality: ``attn``, ``df`` or ``combined`` (1, 4 or 5 input channels).
        roi_size: the patch / ROI size, checked against the network's size constraint (SwinUNETR).
    """
    return build(in_channels=in_channels(modality), img_size=roi_size, **network_args)
