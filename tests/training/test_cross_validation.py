"""pooled_metrics: the cross-validation summary against hand-computed values."""

from __future__ import annotations

import pytest

from dfseg.training.cross_validation import pooled_metrics


def test_pooled_auroc_dice_and_fold_mean() -> None:
    per_fold = {
        0: {"metrics": {"auroc": 1.0, "mean_dice": 0.6},
            "volumes": [{"score": 0.9, "has_tumour": True}, {"score": 0.2, "has_tumour": False}]},
        1: {"metrics": {"auroc": 0.5, "mean_dice": None},
            "volumes": [{"score": 0.3, "has_tumour": True}, {"score": 0.4, "has_tumour": False}]},
    }
    pooled = pooled_metrics(per_fold)
    # pooled pairs (tumour, healthy): (0.9, 0.2) (0.9, 0.4) (0.3, 0.2) right, (0.3, 0.4) wrong -> 3/4
    assert pooled["presence_auroc"] == pytest.approx(0.75)
    assert pooled["n_volumes"] == 4
    assert pooled["mean_dice"] == pytest.approx(0.6)  # folds without a Dice are left out
    assert pooled["fold_auroc_mean"] == pytest.approx(0.75)


def test_pooled_auroc_undefined_with_one_class() -> None:
    per_fold = {0: {"metrics": {"auroc": float("nan"), "mean_dice": 0.5},
                    "volumes": [{"score": 0.9, "has_tumour": True}]}}
    assert pooled_metrics(per_fold)["presence_auroc"] is None
