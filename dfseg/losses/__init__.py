"""dfseg.losses: DiceFocal + boundary segmentation loss with deep supervision and presence terms."""

from __future__ import annotations

from dfseg.losses.segmentation import DeepSupervisionMaxLoss, SegmentationLoss, presence_target

__all__ = ["DeepSupervisionMaxLoss", "SegmentationLoss", "presence_target"]
