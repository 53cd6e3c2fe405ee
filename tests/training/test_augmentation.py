"""nnU-Net's augmentation in the training chain: what it holds, label and image kept aligned,
intensity transforms on the image only and proportional."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, Randomizable

from dfseg.training.transforms import augmentation

EXPECTED = ["RandAffined", "OneOf", "RandGaussianNoised", "RandGaussianSmoothd", "RandScaleIntensityd",
            "RandSimulateLowResolutiond"]


def _always(transforms: list) -> Compose:
    for t in transforms:
        t.prob = 1.0  # every augmentation on, to check what each does
        if hasattr(t, "rand_affine"):
            t.rand_affine.prob = 1.0
    return Compose(transforms).set_random_state(0)


def _patch(n: int = 32) -> dict:
    """A sphere lesion (label 1) of image value 1 in a background 0.25, five channels."""
    x, y, z = np.mgrid[:n, :n, :n] - (n - 1) / 2
    label = ((x - 3) ** 2 + y**2 + (z + 2) ** 2 <= 7.0**2).astype(np.float32)[None]
    image = np.repeat(0.25 + 0.75 * label, 5, axis=0).astype(np.float32)
    return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}


def test_the_augmentations_nnunet_uses():
    names = [type(t).__name__ for t in augmentation(3)]
    assert names == EXPECTED
    elastic = augmentation(3)[1]  # elastic deformation with probability 0.1, else nothing
    assert [type(t).__name__ for t in elastic.transforms] == ["Rand3DElasticd", "Identityd"]
    assert list(elastic.weights) == pytest.approx([0.1, 0.9])
    assert type(augmentation(2)[1].transforms[0]).__name__ == "Rand2DElasticd"
    assert all(isinstance(t, Randomizable) for t in augmentation(3))  # seeded by the dataset


@pytest.mark.parametrize("index", [0, 1])  # rotation + scaling, elastic deformation
def test_spatial_transforms_keep_image_and_label_aligned(index):
    d = _patch()
    spatial = augmentation(3)[index]
    t = _always([spatial if index == 0 else spatial.transforms[0]])
    out = t(d)
    image, label = np.asarray(out["image"]), np.asarray(out["label"])
    assert image.shape == (5, 32, 32, 32) and label.shape == (1, 32, 32, 32)
    assert set(np.unique(label)) <= {0.0, 1.0}
    moved = np.abs(label - np.asarray(d["label"])).sum()
    assert moved > 50  # the transform did something
    lesion = image[0] > 0.625  # half-way between background and lesion
    dice = 2 * (lesion & (label[0] > 0)).sum() / (lesion.sum() + label.sum())
    assert dice > 0.9, dice


def test_intensity_transforms_touch_the_image_only():
    d = _patch()
    out = _always(augmentation(3)[2:])(dict(d))
    assert torch.equal(out["label"], d["label"])
    image = np.asarray(out["image"])
    assert not np.allclose(image, np.asarray(d["image"]))
    inside, outside = image[:, np.asarray(d["label"])[0] > 0], image[:, np.asarray(d["label"])[0] == 0]
    # proportional: the lesion stays about 4x its background (scaling, blur and noise, no shift)
    ratio = np.median(inside, axis=1) / np.median(outside, axis=1)
    assert np.all((ratio > 2.5) & (ratio < 5.5)), ratio
