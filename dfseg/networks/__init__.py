"""dfseg.networks: attention-gated residual U-Net and a factory for it, SwinUNETR and MONAI baselines."""

from __future__ import annotations

from dfseg.networks.attention_resunet import AttentionGate, AttentionResUNet
from dfseg.networks.factory import NETWORKS, build, count_parameters

__all__ = ["NETWORKS", "AttentionGate", "AttentionResUNet", "build", "count_parameters"]
