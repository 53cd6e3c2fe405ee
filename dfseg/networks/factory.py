"""Build a segmentation network by name, checking the input-size constraints up front."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from monai.networks.nets import AttentionUnet, SwinUNETR, UNet

from dfseg.errors import InputError
from dfseg.networks.attention_resunet import AttentionResUNet

__all__ = ["NETWORKS", "build", "count_parameters"]

NETWORKS = ("attention_unet", "swinunetr", "unet", "monai_attention_unet")

_DEFAULT_CHANNELS = (16, 32, 64, 128)
_DEFAULT_STRIDES = (2, 2, 2)


def _check_swin_size(
    img_size: Sequence[int] | int | None, spatial_dims: int, patch_size: int, norm_name: object
) -> None:
    if img_size is None:
        return
    sizes = (int(img_size),) * spatial_dims if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(sizes) != spatial_dims:
        raise InputError("img_size", f"expected {spatial_dims} spatial sizes, got {sizes}")
    divisor = patch_size**5  # patch embedding then four 2x patch mergings
    if any(s % divisor for s in sizes):
        raise InputError(
            "img_size",
            f"SwinUNETR needs every spatial size divisible by {divisor}, got {sizes}; "
            f"choose a patch/ROI size such as {tuple(max(divisor, round(s / divisor) * divisor) for s in sizes)}",
        )
    instance = str(norm_name[0] if isinstance(norm_name, (tuple, list)) else norm_name).lower() == "instance"
    if instance and all(s == divisor for s in sizes):
        # The bottleneck is then 1 voxel, and instance norm cannot normalise a single value.
        raise InputError(
            "img_size",
            f"SwinUNETR with instance norm needs at least one spatial size of {2 * divisor} or more "
            f"(its bottleneck is size / {divisor}), got {sizes}; enlarge the patch or pass norm_name='batch'",
        )


def build(
    name: str,
    in_channels: int,
    out_channels: int = 1,
    *,
    spatial_dims: int = 3,
    img_size: Sequence[int] | int | None = None,
    **kwargs,
) -> nn.Module:
    """Build a network.

    Args:
        name: ``"attention_unet"`` (dfseg ``AttentionResUNet``), ``"swinunetr"`` (MONAI ``SwinUNETR``),
            ``"unet"`` (MONAI residual ``UNet`` baseline) or ``"monai_attention_unet"`` (MONAI
            ``AttentionUnet``, for benchmarks).
        in_channels: input channels.
        out_channels: output logit channels.
        spatial_dims: 2 or 3.
        img_size: the training patch / inference ROI size in voxels; when given it is checked
            against the network's divisibility constraint (SwinUNETR: every size divisible by 32).
        **kwargs: passed to the network's constructor (``channels``, ``strides``, ``feature_size``,
            ``deep_supervision``, ...). The U-Nets default to channels (16, 32, 64, 128) and strides
            (2, 2, 2); the MONAI UNet to 2 residual units and instance norm.

    Raises:
        InputError (a ValueError): unknown name or an ``img_size`` the network cannot take.
    """
    key = name.lower()
    if key == "attention_unet":
        return AttentionResUNet(spatial_dims, in_channels, out_channels, **kwargs)
    if key == "swinunetr":
        _check_swin_size(img_size, spatial_dims, int(kwargs.get("patch_size", 2)), kwargs.get("norm_name", "instance"))
        kwargs.setdefault("feature_size", 24)
        return SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims, **kwargs)
    if key == "unet":
        kwargs.setdefault("channels", _DEFAULT_CHANNELS)
        kwargs.setdefault("strides", _DEFAULT_STRIDES)
        kwargs.setdefault("num_res_units", 2)
        kwargs.setdefault("norm", "instance")
        return UNet(spatial_dims, in_channels, out_channels, **kwargs)
    if key == "monai_attention_unet":
        kwargs.setdefault("channels", _DEFAULT_CHANNELS)
        kwargs.setdefault("strides", _DEFAULT_STRIDES)
        return AttentionUnet(spatial_dims, in_channels, out_channels, **kwargs)
    raise InputError("network name", f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
