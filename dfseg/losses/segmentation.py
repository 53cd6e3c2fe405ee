"""Composite segmentation loss: DiceFocal + boundary, deep supervision, optional presence term.

``SegmentationLoss()(pred, label)`` is what the bundles hand to Ignite's ``SupervisedTrainer`` as
``loss_function``. ``pred`` is whatever the network's ``forward`` returns in training mode:

- a tensor ``(B, C, *spatial)`` of logits;
- a list/tuple ``[logits, deep_1, ..., deep_k]`` (deep supervision, coarser scales may have a
  smaller spatial size: the label is resized to each) optionally followed by presence logits
  ``(B, 1)`` (any 2-D tensor in the list is taken as a presence logit), as
  ``dfseg.networks.AttentionResUNet`` returns;
- a dict with ``logits``, optional ``deep`` (list) and ``presence`` (``forward_with_aux``).

Per scale the loss is ``dice_weight * Dice + focal_weight * Focal + boundary_weight * Boundary``
(MONAI ``DiceFocalLoss`` and ``BoundaryLoss``; the boundary term uses MONAI's signed Euclidean
distance map of the label, negative inside); scales are combined by MONAI ``DeepSupervisionLoss``
(weights 1, 0.5, 0.25, ... by default). The presence term compares the presence logit with
``label.sum() > 0`` per input. The blob term (:class:`BlobDiceLoss`, on the finest scale) is the
mean Dice loss of each lesion on its own, so a 0.5 mm nodule of 20 voxels weighs as much as a
3 mm tumour of 4000.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import BoundaryLoss, DeepSupervisionLoss, DiceFocalLoss, DiceLoss
from monai.losses.focal_loss import FocalLoss
from scipy import ndimage
from torch.nn.modules.loss import _Loss

__all__ = ["BlobDiceLoss", "DeepSupervisionMaxLoss", "SegmentationLoss", "presence_target"]


def presence_target(label: torch.Tensor) -> torch.Tensor:
    """``(B, 1)`` float: 1 where the label patch holds any foreground voxel, else 0.

    Args:
        label: ``(B, C, *spatial)`` binary (or one-hot) label; channel 0 counts only when C == 1.
    """
    fg = label if label.shape[1] == 1 else label[:, 1:]
    return (fg.flatten(1) > 0.5).any(dim=1, keepdim=True).to(torch.float32)


class _DiceFocalBoundary(_Loss):
    """``dice_weight * Dice + focal_weight * Focal + boundary_weight * Boundary`` on one scale."""

    def __init__(
        self, dice_weight: float, focal_weight: float, boundary_weight: float, sigmoid: bool, gamma: float,
        batch_dice: bool = True,
    ) -> None:
        super().__init__()
        self.dice_focal = DiceFocalLoss(
            sigmoid=sigmoid,
            softmax=not sigmoid,
            to_onehot_y=not sigmoid,
            gamma=gamma,
            lambda_dice=dice_weight,
            lambda_focal=focal_weight,
            batch=batch_dice,
        )
        self.boundary = BoundaryLoss(sigmoid=sigmoid, softmax=not sigmoid, to_onehot_y=not sigmoid)
        self.boundary_weight = boundary_weight

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.dice_focal(input, target)
        if self.boundary_weight:
            loss = loss + self.boundary_weight * self.boundary(input, target)
        return loss


class BlobDiceLoss(_Loss):
    """Instance-wise Dice ("blob loss", Kofler et al. 2023, MELBA): each lesion's own Dice, averaged.

    A Dice over the batch is dominated by the largest lesions: missing a 20-voxel nodule next to a
    4000-voxel tumour costs it 0.5 %. Here every lesion (26-connected component of the label, per
    input) gets a MONAI ``DiceLoss`` of its own, on the probabilities with the other lesions masked
    out, so its background (the false positives anywhere in the patch) still counts; the loss is the
    mean over all lesions of the batch, 0 for a batch without lesions.

    Args:
        sigmoid: logits are sigmoid outputs of one tumour channel (softmax: channel 1 is the tumour).
        smooth: the Dice's smoothing terms (MONAI's ``smooth_nr`` / ``smooth_dr``).
    """

    def __init__(self, sigmoid: bool = True, smooth: float = 1e-5) -> None:
        super().__init__()
        self.sigmoid = sigmoid
        self.dice = DiceLoss(sigmoid=False, softmax=False, reduction="none", smooth_nr=smooth, smooth_dr=smooth)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(input[:, :1]) if self.sigmoid else torch.softmax(input, dim=1)[:, 1:2]
        fg = (target[:, :1] if target.shape[1] == 1 else target[:, 1:2]) > 0.5
        preds, masks = [], []
        for b, lesions in enumerate(fg.cpu().numpy()):
            components, n = ndimage.label(lesions[0], structure=np.ones((3,) * (lesions.ndim - 1)))
            if not n:
                continue
            comp = torch.from_numpy(components).to(prob.device)
            for i in range(1, n + 1):
                keep = (comp == 0) | (comp == i)  # this lesion and all background
                preds.append(prob[b, 0] * keep)
                masks.append((comp == i).to(prob.dtype))
        if not preds:
            return prob.sum() * 0.0
        return self.dice(torch.stack(preds)[:, None], torch.stack(masks)[:, None]).mean()


class DeepSupervisionMaxLoss(DeepSupervisionLoss):
    """MONAI ``DeepSupervisionLoss`` that can shrink the label by max pooling instead of nearest.

    MONAI resizes the label to each coarse output with nearest-neighbour sampling, which drops
    lesions smaller than the sampling step (a 1-2 voxel tumour vanishes at 1/4 resolution with high
    probability). ``target_resize="max"`` marks a coarse voxel as tumour when any fine voxel in it
    is, so every lesion is seen at every scale.

    Args:
        loss: the per-scale loss.
        weight_mode: MONAI's ``"exp"`` (1, 0.5, 0.25, ...), ``"same"`` or ``"two"``.
        weights: explicit per-scale weights (finest first); overrides ``weight_mode``.
        target_resize: ``"max"`` (adaptive max pooling) or ``"nearest"`` (MONAI's behaviour).
    """

    def __init__(
        self,
        loss: _Loss,
        weight_mode: str = "exp",
        weights: Sequence[float] | None = None,
        target_resize: str = "max",
    ) -> None:
        super().__init__(loss, weight_mode=weight_mode, weights=None if weights is None else list(weights))
        if target_resize not in ("max", "nearest"):
            raise ValueError(f"target_resize must be 'max' or 'nearest', got {target_resize!r}")
        self.target_resize = target_resize

    def get_loss(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.shape[2:] != target.shape[2:] and self.target_resize == "max":
            pool = F.adaptive_max_pool3d if target.dim() == 5 else F.adaptive_max_pool2d
            target = pool(target.float(), tuple(input.shape[2:]))
        return super().get_loss(input, target)


class SegmentationLoss(_Loss):
    """DiceFocal + boundary loss with deep-supervision weighting and an optional presence term.

    Args:
        dice_weight: weight of the Dice term.
        focal_weight: weight of the focal term.
        boundary_weight: weight of the boundary (signed-distance) term; 0 disables it (it costs one
            Euclidean distance transform per label channel and scale on the CPU/GPU).
        deep_supervision_weights: per-scale weights, finest first; ``None`` uses MONAI's ``"exp"``
            decay (1, 0.5, 0.25, ..., floored at 0.0625).
        presence_weight: weight of the presence term (0 disables it; presence logits are then ignored).
        presence_loss: ``"bce"`` or ``"focal"`` (sigmoid focal loss, gamma ``focal_gamma``).
        sigmoid: logits are per-class sigmoid outputs (binary tumour channel, label ``(B, 1, ...)``);
            False uses softmax with a one-hot converted integer label.
        focal_gamma: focusing parameter of both focal terms.
        ds_target_resize: how the label is shrunk for coarse deep-supervision outputs, ``"max"``
            (keeps tiny lesions) or ``"nearest"`` (MONAI's default).
        batch_dice: compute the Dice term over the whole batch (nnU-Net's "batch Dice") instead of
            per patch. Most patches of small lesions hold no tumour, and a per-patch Dice of an empty
            patch is ~1 whatever the network predicts, which drowns the signal of the few positive
            patches; over the batch, every patch's false positives still count.
        blob_weight: weight of :class:`BlobDiceLoss` on the finest scale (0 disables it).

    Returns (forward): a scalar tensor.
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        focal_weight: float = 1.0,
        boundary_weight: float = 0.5,
        deep_supervision_weights: Sequence[float] | None = None,
        presence_weight: float = 0.0,
        presence_loss: str = "bce",
        sigmoid: bool = True,
        focal_gamma: float = 2.0,
        ds_target_resize: str = "max",
        batch_dice: bool = True,
        blob_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if presence_loss not in ("bce", "focal"):
            raise ValueError(f"presence_loss must be 'bce' or 'focal', got {presence_loss!r}")
        for name, w in (("dice_weight", dice_weight), ("focal_weight", focal_weight),
                        ("boundary_weight", boundary_weight), ("presence_weight", presence_weight),
                        ("blob_weight", blob_weight)):
            if w < 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.segmentation = DeepSupervisionMaxLoss(
            _DiceFocalBoundary(dice_weight, focal_weight, boundary_weight, sigmoid, focal_gamma, batch_dice),
            weight_mode="exp",
            weights=deep_supervision_weights,
            target_resize=ds_target_resize,
        )
        self.presence_weight = presence_weight
        self.presence_loss = presence_loss
        self.blob_weight = blob_weight
        self.blob = BlobDiceLoss(sigmoid=sigmoid)
        self.presence_focal = FocalLoss(gamma=focal_gamma, use_softmax=False)

    def split(
        self, pred: torch.Tensor | Sequence[torch.Tensor] | dict
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Split a network output into segmentation logits (finest first) and the presence logit."""
        if isinstance(pred, torch.Tensor):
            return [pred], None
        if isinstance(pred, dict):
            return [pred["logits"], *pred.get("deep", [])], pred.get("presence")
        if isinstance(pred, (list, tuple)):
            seg = [p for p in pred if p.dim() > 2]
            pres = [p for p in pred if p.dim() == 2]
            if not seg or len(pres) > 1:
                raise ValueError(
                    f"expected [logits, deep..., presence?]: got tensors of shapes {[tuple(p.shape) for p in pred]}"
                )
            return seg, pres[0] if pres else None
        raise TypeError(f"prediction must be a tensor, a list of tensors or a dict, got {type(pred).__name__}")

    def forward(self, pred: torch.Tensor | Sequence[torch.Tensor] | dict, label: torch.Tensor) -> torch.Tensor:
        """Loss of a network output against the label.

        Args:
            pred: logits tensor ``(B, C, *spatial)``, list ``[logits, deep..., presence?]`` or dict (see module doc).
            label: ``(B, 1, *spatial)`` tumour label 0/1 (any numeric dtype).
        """
        seg, presence = self.split(pred)
        target = label.float()
        loss = self.segmentation(seg if len(seg) > 1 else seg[0], target)
        if self.blob_weight > 0:
            loss = loss + self.blob_weight * self.blob(seg[0], target)
        if presence is not None and self.presence_weight > 0:
            y = presence_target(target).to(presence.device)
            logit = presence.float()
            if self.presence_loss == "bce":
                term = F.binary_cross_entropy_with_logits(logit, y)
            else:
                term = self.presence_focal(logit, y)
            loss = loss + self.presence_weight * term
        return loss
