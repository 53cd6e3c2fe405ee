"""dfseg.losses: DiceFocal + boundary segmentation loss with deep supervision, presence and blob terms."""

from __future__ import annotations

from dfseg.losses.segmentation import BlobDiceLoss, DeepSupervisionMaxLoss, SegmentationLoss, presence_target

__all__ = ["BlobDiceLoss", "DeepSupervisionMaxLoss", "SegmentationLoss", "presence_target"]
