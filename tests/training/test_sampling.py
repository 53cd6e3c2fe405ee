"""Training patch centres: every lesion is sampled alike, whatever its size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import RandWeightedCropd

from dfseg.errors import InputError
from dfseg.training.transforms import SamplingMapd


def _scan():
    label = np.zeros((1, 48, 48, 24), np.uint8)
    label[0, 6:22, 6:22, 4:20] = 1  # a 4096-voxel lesion
    label[0, 36:39, 36:39, 10:12] = 2  # an 18-voxel lesion (a 0.5 mm nodule at 0.15 mm), told apart by its value
    lung = np.zeros_like(label)
    lung[0, 2:46, 2:46, 2:22] = 1
    return {"label": torch.from_numpy(label), "lung_mask": torch.from_numpy(lung)}


def test_class_and_lesion_shares_of_the_weight_map():
    d = SamplingMapd(ratios=(1.0, 2.0, 3.0))(_scan())
    w = d["sampling"].numpy().astype(np.float64)
    w /= w.sum()
    label, lung = d["label"].numpy() > 0, d["lung_mask"].numpy() > 0
    assert w[~lung & ~label].sum() == pytest.approx(1 / 6, rel=1e-5)
    assert w[lung & ~label].sum() == pytest.approx(2 / 6, rel=1e-5)
    assert w[0, 6:22, 6:22, 4:20].sum() == pytest.approx(1.5 / 6, rel=1e-5)  # each lesion half the tumour share
    assert w[0, 36:39, 36:39, 10:12].sum() == pytest.approx(1.5 / 6, rel=1e-5)


def test_small_lesion_is_a_patch_centre_as_often_as_a_large_one():
    d = SamplingMapd()(_scan())
    crop = RandWeightedCropd(keys=("label",), w_key="sampling", spatial_size=(8, 8, 8), num_samples=400)
    crop.set_random_state(0)
    patches = crop({"label": d["label"], "sampling": d["sampling"]})
    small = sum(int(p["label"][0, 4, 4, 4] == 2) for p in patches)  # the patch centre is voxel 4 of 8
    large = sum(int(p["label"][0, 4, 4, 4] == 1) for p in patches)
    # the same share each (a quarter of the weight, a little more as centres too near the border are
    # left out by the crop); voxel-uniform sampling would make the small one a centre about 1 time in 230
    assert small >= 100 and large >= 100 and 0.75 <= small / large <= 1.33


def test_absent_classes_and_bad_ratios():
    scan = _scan()
    scan["label"] = torch.zeros_like(scan["label"])
    w = SamplingMapd()(scan)["sampling"]
    assert float(w[scan["lung_mask"] > 0].sum() / w.sum()) == pytest.approx(2 / 3, rel=1e-5)
    with pytest.raises(InputError, match="class_ratios"):
        SamplingMapd(ratios=(1.0, 2.0))


def test_patch_crop_draws_monai_centres_and_leaves_the_volumes_behind():
    """PatchCropd crops what RandWeightedCropd crops, from the same random state, and its patches
    hold only the cropped keys and the small items (no whole-volume copies for the data loader)."""
    from dfseg.training.transforms import PatchCropd

    d = SamplingMapd()(_scan())
    d = {**d, "image": torch.arange(48 * 48 * 24, dtype=torch.float32).reshape(1, 48, 48, 24),
         "attn": torch.ones(1, 48, 48, 24), "scan_id": "sub-0001_ct", "fold": 2}
    kwargs = dict(keys=("image", "label"), w_key="sampling", spatial_size=(8, 8, 8), num_samples=5)
    ours, monai = PatchCropd(**kwargs), RandWeightedCropd(**kwargs)
    ours.set_random_state(3)
    monai.set_random_state(3)
    a, b = ours(d), monai(d)
    assert len(a) == 5
    for pa, pb in zip(a, b):
        assert set(pa) == {"image", "label", "scan_id", "fold"}
        assert torch.equal(pa["image"], pb["image"]) and torch.equal(pa["label"], pb["label"])
        assert pa["scan_id"] == "sub-0001_ct" and pa["fold"] == 2
        assert tuple(pa["image"].shape) == (1, 8, 8, 8)
