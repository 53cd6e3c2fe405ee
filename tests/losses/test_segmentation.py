"""SegmentationLoss: degenerate patches, deep supervision weighting, presence term, Ignite use."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import BoundaryLoss, DiceFocalLoss

from dfseg.losses import DeepSupervisionMaxLoss, SegmentationLoss, presence_target
from dfseg.networks import AttentionResUNet


def _blob(size=16) -> torch.Tensor:
    g = torch.arange(size, dtype=torch.float32)
    xx, yy, zz = torch.meshgrid(g, g, g, indexing="ij")
    return (((xx - 8) ** 2 + (yy - 7) ** 2 + (zz - 9) ** 2) < 9).float()[None, None]


@pytest.mark.parametrize("kind", ["empty", "full", "blob"])
@pytest.mark.parametrize("presence_loss", ["bce", "focal"])
def test_finite_loss_and_gradients_on_degenerate_patches(kind, presence_loss):
    label = {"empty": torch.zeros(2, 1, 16, 16, 16), "full": torch.ones(2, 1, 16, 16, 16),
             "blob": _blob().repeat(2, 1, 1, 1, 1)}[kind]
    torch.manual_seed(0)
    net = AttentionResUNet(3, 2, 1, channels=(4, 8, 16), strides=(2, 2), deep_supervision=True,
                           presence_head=True).train()
    loss = SegmentationLoss(presence_weight=0.5, presence_loss=presence_loss)(net(torch.randn(2, 2, 16, 16, 16)), label)
    assert torch.isfinite(loss) and loss.ndim == 0
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().max()) > 0, name


def test_tensor_prediction_equals_monai_terms():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, 16)
    label = _blob().repeat(2, 1, 1, 1, 1)
    loss = SegmentationLoss(dice_weight=1.0, focal_weight=2.0, boundary_weight=0.5)(logits, label)
    ref = DiceFocalLoss(sigmoid=True, lambda_focal=2.0)(logits, label) + 0.5 * BoundaryLoss(sigmoid=True)(logits, label)
    torch.testing.assert_close(loss, ref)


def test_boundary_term_rewards_the_right_side_of_the_boundary():
    label = _blob()
    right = 20 * (2 * label - 1)  # confident and correct
    wrong = -right
    loss = SegmentationLoss(dice_weight=0, focal_weight=0, boundary_weight=1.0)
    assert float(loss(right, label)) < 0 < float(loss(wrong, label))


def test_deep_supervision_exp_weights_and_list_forms():
    torch.manual_seed(0)
    label = _blob()
    full, half = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 1, 8, 8, 8)
    presence = torch.randn(1, 1)
    base = SegmentationLoss()
    half_target = F.adaptive_max_pool3d(label, (8, 8, 8))
    expected = base(full, label) + 0.5 * base(half, half_target)
    torch.testing.assert_close(base([full, half], label), expected)
    torch.testing.assert_close(base((full, half, presence), label), expected)  # presence_weight 0: ignored
    torch.testing.assert_close(base({"logits": full, "deep": [half], "presence": presence}, label), expected)
    custom = SegmentationLoss(deep_supervision_weights=(1.0, 0.0))
    torch.testing.assert_close(custom([full, half], label), base(full, label))


def test_max_resize_keeps_a_single_voxel_lesion():
    label = torch.zeros(1, 1, 16, 16, 16)
    label[0, 0, 4, 8, 2] = 1  # even coordinates: nearest-exact sampling at 1/2 resolution reads odd ones
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, input, target):
            seen.setdefault("sums", []).append(float(target.sum()))
            return input.sum() * 0

    coarse = [torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 8, 8, 8)]
    DeepSupervisionMaxLoss(Probe(), target_resize="max")(coarse, label)
    DeepSupervisionMaxLoss(Probe(), target_resize="nearest")(coarse, label)
    assert seen["sums"] == [1.0, 1.0, 1.0, 0.0]


def test_presence_term_matches_bce_by_hand():
    label = torch.zeros(2, 1, 8, 8, 8)
    label[1, 0, 2, 2, 2] = 1
    assert presence_target(label).tolist() == [[0.0], [1.0]]
    logits = torch.zeros(2, 1, 8, 8, 8)
    presence = torch.tensor([[2.0], [-1.0]])
    seg_only = SegmentationLoss()(logits, label)
    with_presence = SegmentationLoss(presence_weight=0.3)([logits, presence], label)
    bce = (math.log1p(math.exp(2.0)) + math.log1p(math.exp(1.0))) / 2  # -log(1-s(2)), -log(s(-1))
    assert float(with_presence - seg_only) == pytest.approx(0.3 * bce, rel=1e-5)


def test_bad_predictions_and_options_refused():
    loss = SegmentationLoss()
    with pytest.raises(ValueError, match="presence"):
        loss([torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1), torch.zeros(1, 1)], torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(TypeError):
        loss("logits", torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="presence_loss"):
        SegmentationLoss(presence_loss="hinge")
    with pytest.raises(ValueError, match="boundary_weight"):
        SegmentationLoss(boundary_weight=-1)


@pytest.mark.parametrize("deep", [False, True])
def test_ignite_supervised_trainer(deep):
    """The loss works as SupervisedTrainer's loss_function for tensor and list network outputs."""
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    net = AttentionResUNet(3, 1, 1, channels=(4, 8, 16), strides=(2, 2), deep_supervision=deep, presence_head=deep)
    data = [{"image": torch.randn(2, 1, 16, 16, 16), "label": _blob().repeat(2, 1, 1, 1, 1)}] * 2
    losses = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        loss_function=SegmentationLoss(presence_weight=0.2 if deep else 0.0),
    )
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    trainer.run()
    assert len(losses) == 2 and all(torch.isfinite(torch.as_tensor(v)) for v in losses)


def _two_lesions():
    lab = torch.zeros(2, 1, 24, 24, 24)
    lab[0, 0, 2:18, 2:18, 2:18] = 1  # 4096 voxels
    lab[0, 0, 20:23, 20:23, 20:23] = 1  # 27 voxels, apart from the first (26-connectivity)
    lab[1, 0, 5:8, 5:8, 5:8] = 1  # 27 voxels in the second input
    return lab


def test_blob_dice_weighs_every_lesion_alike():
    """Missing one small lesion of three costs the blob term 1/3, the batch Dice 0.6 %."""
    from dfseg.losses import BlobDiceLoss

    lab = _two_lesions()
    logit = torch.where(lab > 0, 30.0, -30.0)
    logit[0, 0, 20:23, 20:23, 20:23] = -30.0  # the small lesion of input 0 missed
    assert float(BlobDiceLoss()(logit, lab)) == pytest.approx(1 / 3, abs=1e-4)
    batch = SegmentationLoss(focal_weight=0, boundary_weight=0)(logit, lab)
    assert float(batch) == pytest.approx(1 - 2 * 4123 / (4123 + 4150), abs=1e-4)
    # a false positive elsewhere counts against every lesion's Dice (its background is the patch)
    perfect = torch.where(lab > 0, 30.0, -30.0)
    assert float(BlobDiceLoss()(perfect, lab)) == pytest.approx(0.0, abs=1e-4)
    fp = perfect.clone()
    fp[1, 0, 15:18, 15:18, 15:18] = 30.0  # 27 false voxels in input 1: its lesion's Dice 2*27/81
    assert float(BlobDiceLoss()(fp, lab)) == pytest.approx((1 - 54 / 81) / 3, abs=1e-4)
    # the term is added with its weight; no lesion, no term; gradients reach the logits
    both = SegmentationLoss(focal_weight=0, boundary_weight=0, blob_weight=2.0)(logit, lab)
    assert float(both) == pytest.approx(float(batch) + 2 / 3, abs=1e-4)
    empty = torch.zeros_like(lab)
    assert float(BlobDiceLoss()(logit, empty)) == 0.0
    x = torch.zeros_like(lab, requires_grad=True)
    BlobDiceLoss()(x, lab).backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        SegmentationLoss(blob_weight=-1)
