"""The bundles' post-processing: probabilities outside the lung are removed before the presence
score and the binary prediction, as dfseg predict and dfseg evaluate do."""

from __future__ import annotations

import torch

from dfseg.training.transforms import LungOnlyd, eval_postprocessing


def _batch_item():
    logits = torch.full((1, 16, 16, 16), -8.0)
    logits[0, 2:5, 2:5, 2:5] = 8.0  # a confident candidate outside the lung (the body wall)
    logits[0, 10:12, 10:12, 10:12] = 4.0  # one inside it
    lung = torch.zeros((1, 16, 16, 16))
    lung[0, 6:15, 6:15, 6:15] = 1
    label = torch.zeros((1, 16, 16, 16))
    label[0, 10:12, 10:12, 10:12] = 1
    return {"pred": logits, "lung_mask": lung, "label": label}


def test_no_candidate_survives_outside_the_lung():
    out = eval_postprocessing()(_batch_item())
    assert float(out["pred_bin"][0, 2:5, 2:5, 2:5].sum()) == 0
    assert float(out["pred_bin"].sum()) == 8  # the lung's candidate, whole
    assert float(out["presence"]) == torch.sigmoid(torch.tensor(4.0)).item()  # not the outside 8.0
    assert float(out["pred"][0][out["lung_mask"][0] == 0].max()) == 0


def test_without_a_mask_nothing_is_removed():
    item = _batch_item()
    item["lung_mask"] = torch.zeros_like(item["lung_mask"])
    out = LungOnlyd()(item)
    assert torch.equal(out["pred"], item["pred"])
    del item["lung_mask"]
    assert torch.equal(LungOnlyd()(item)["pred"], item["pred"])
