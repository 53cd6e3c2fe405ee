"""``validation_score``: the bundles' key metric is the mean of presence AUROC and mean Dice."""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine
from monai.handlers import ROCAUC, MeanDice, from_engine

from dfseg.training import validation_score


def _run(batches: list[dict]) -> dict:
    auroc = ROCAUC(output_transform=from_engine(["presence", "presence_label"]))
    dice = MeanDice(include_background=True, output_transform=from_engine(["pred_bin", "label"]))
    engine = Engine(lambda engine, batch: batch)
    validation_score(auroc, dice).attach(engine, "val_score")
    auroc.attach(engine, "val_auroc")  # also logged on their own, as in the bundles
    dice.attach(engine, "val_mean_dice")
    return engine.run(batches, max_epochs=1).metrics


def _volume(presence: float, tumour: bool, overlap: int) -> dict:
    """One validation volume: a 4-voxel tumour (if any), the prediction hitting ``overlap`` of them plus 4 - overlap outside."""
    label = torch.zeros(1, 1, 4, 4, 4)
    pred = torch.zeros(1, 1, 4, 4, 4)
    if tumour:
        label[0, 0, 0, 0, :] = 1
        pred[0, 0, 0, 0, :overlap] = 1
        pred[0, 0, 3, 3, : 4 - overlap] = 1
    return {"presence": [torch.tensor([presence])], "presence_label": [torch.tensor([float(tumour)])],
            "pred_bin": [pred[0]], "label": [label[0]]}


def test_the_score_is_the_mean_of_auroc_and_dice():
    # AUROC 0.75: of the 2 x 2 (tumour, tumour-free) pairs, one is ranked the wrong way (0.4 < 0.6)
    volumes = [_volume(0.9, True, 4), _volume(0.4, True, 2), _volume(0.6, False, 0), _volume(0.1, False, 0)]
    metrics = _run(volumes)
    assert math.isclose(metrics["val_auroc"], 0.75)
    assert math.isclose(metrics["val_mean_dice"], (1.0 + 0.5) / 2)
    assert math.isclose(metrics["val_score"], (0.75 + 0.75) / 2)


def test_a_model_that_ranks_but_segments_badly_scores_below_one_that_segments():
    early = _run([_volume(0.9, True, 1), _volume(0.8, True, 1), _volume(0.3, False, 0), _volume(0.2, False, 0)])
    late = _run([_volume(0.9, True, 4), _volume(0.5, True, 3), _volume(0.6, False, 0), _volume(0.2, False, 0)])
    assert early["val_auroc"] > late["val_auroc"]  # what AUROC alone would have kept
    assert late["val_score"] > early["val_score"]


def test_an_undefined_part_is_left_out():
    # no tumour-free volume: MONAI's AUROC is NaN, the score is the Dice alone
    metrics = _run([_volume(0.9, True, 4), _volume(0.4, True, 2)])
    assert math.isnan(metrics["val_auroc"])
    assert math.isclose(metrics["val_score"], 0.75)
