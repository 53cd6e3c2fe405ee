"""Network input in the scan's own tissue units: the same tissue gives the same input whatever the
field of view, the dose or the visibility; z-score does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import NormalizeIntensity
from testkit import KINDS, as_kind

from dfseg.channels import MODALITY_CHANNELS
from dfseg.errors import InputError
from dfseg.transforms.intensity import LungReferenceNormalize, LungReferenceNormalized, check_normalisation

MU_T, MU_BONE, MU_LUNG, C0_LUNG = 0.03, 0.08, 0.008, 0.1
CHANNELS = MODALITY_CHANNELS["combined"]  # attn, c0, amp, amp_cos2t, amp_sin2t


def thorax(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(5, n, n, n) combined image and (1, n, n, n) lung mask: air, a tissue body with a bone
    slab, a lung box with a solid lesion, 3 % noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((5, n, n, n), np.float32)
    img[0, 4:-4, 4:-4, 4:-4] = MU_T
    img[0, 4:8, 4:-4, 4:-4] = MU_BONE
    lung = np.zeros((1, n, n, n), np.uint8)
    lung[0, n // 4 + 2:-n // 5, n // 4:-n // 4, n // 4:-n // 4] = 1
    img[0][lung[0] > 0] = MU_LUNG
    img[1][lung[0] > 0] = C0_LUNG
    img[2][lung[0] > 0] = 0.3 * C0_LUNG
    img[3][lung[0] > 0] = 0.2 * C0_LUNG
    img[4][lung[0] > 0] = -0.1 * C0_LUNG
    c = n // 2
    img[0, c - 2:c + 2, c - 2:c + 2, c - 2:c + 2] = MU_T  # a lesion: solid, no dark-field
    img[1:, c - 2:c + 2, c - 2:c + 2, c - 2:c + 2] = 0.0
    img[[0, 1]] *= (1 + 0.03 * rng.standard_normal((2, n, n, n))).astype(np.float32)
    return img, lung


@pytest.mark.parametrize("kind", KINDS)
def test_known_references(kind):
    img, lung = thorax()
    out = LungReferenceNormalize(CHANNELS)(as_kind(kind, img), as_kind(kind, lung))
    assert type(out) is type(as_kind(kind, img)) and out.dtype == as_kind(kind, img).dtype
    out = np.asarray(out)
    tissue = (img[0] > 0.02) & (img[0] < 0.05) & (lung[0] == 0)
    assert np.median(out[0][tissue]) == pytest.approx(1.0, abs=0.01)  # soft tissue is 1
    assert np.median(out[0][lung[0] > 0]) == pytest.approx(MU_LUNG / MU_T, rel=0.03)
    assert np.median(out[1][lung[0] > 0]) == pytest.approx(1.0, abs=1e-5)  # healthy lung c0 is 1
    np.testing.assert_allclose(out[2:][:, lung[0] > 0].mean(axis=1), [0.3, 0.2, -0.1], rtol=0.02)
    assert out[0].min() == 0 and float(out[0].max()) > 2.5  # air 0, bone above tissue


def _crop(x: np.ndarray, lung: np.ndarray, margin: int) -> np.ndarray:
    idx = np.nonzero(lung[0])
    box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)
    return x[(slice(None), *box)], box


def test_same_tissue_same_input_whatever_the_field_of_view():
    """A lung crop (the body fills the view) and the whole thorax give the same input voxel for voxel;
    the whole-volume z-score moves by far more."""
    img, lung = thorax()
    whole = LungReferenceNormalize(CHANNELS)(img, lung)
    crop_img, box = _crop(img, lung, margin=3)
    crop_lung, _ = _crop(lung, lung, margin=3)
    cropped = LungReferenceNormalize(CHANNELS)(crop_img, crop_lung)
    np.testing.assert_allclose(cropped, whole[(slice(None), *box)], rtol=0.02, atol=1e-3)
    z_whole = NormalizeIntensity(channel_wise=True)(img)[(slice(None), *box)]
    z_crop = NormalizeIntensity(channel_wise=True)(crop_img)
    assert float(np.abs(np.asarray(z_crop) - np.asarray(z_whole)).max()) > 0.5


def test_dose_visibility_and_energy_drop_out():
    """Scaling dark-field (visibility, alveolar size) or attenuation (effective energy) changes nothing."""
    img, lung = thorax()
    other = img.copy()
    other[0] *= 0.8  # a harder beam: every mu 20 % lower
    other[1:] *= 0.55  # a lower visibility spectrum: every dark-field 45 % lower
    np.testing.assert_allclose(LungReferenceNormalize(CHANNELS)(other, lung),
                               LungReferenceNormalize(CHANNELS)(img, lung), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("modality", ["attn", "df"])
def test_other_modalities(modality):
    img, lung = thorax()
    channels = MODALITY_CHANNELS[modality]
    sub = img[[CHANNELS.index(c) for c in channels]]
    out = LungReferenceNormalized(keys="image", channels=channels)({"image": sub, "lung_mask": lung})["image"]
    full = LungReferenceNormalize(CHANNELS)(img, lung)
    np.testing.assert_allclose(out, full[[CHANNELS.index(c) for c in channels]], rtol=1e-6)


def test_bad_input():
    img, lung = thorax()
    with pytest.raises(InputError, match="empty lung mask"):
        LungReferenceNormalize(CHANNELS)(img, np.zeros_like(lung))
    dead = img.copy()
    dead[1:] = 0
    with pytest.raises(InputError, match="median dark-field c0 0 /mm is not positive"):
        LungReferenceNormalize(CHANNELS)(dead, lung)
    with pytest.raises(InputError, match="3 channels, expected 5"):
        LungReferenceNormalize(CHANNELS)(img[:3], lung)
    with pytest.raises(InputError, match="no lung mask"):
        LungReferenceNormalized(keys="image", channels=CHANNELS)({"image": img})
    with pytest.raises(InputError, match="normalisation: must be one of lung_reference, zscore, got 'minmax'"):
        check_normalisation("minmax")


def test_torch_device_kept():
    img, lung = thorax(32)
    out = LungReferenceNormalize(CHANNELS)(torch.from_numpy(img), torch.from_numpy(lung))
    assert isinstance(out, torch.Tensor) and out.device.type == "cpu" and out.dtype == torch.float32


def test_references_measured_once_give_the_same_input():
    """TissueReferencesd measures before the random transforms (a cache keeps it); the scaling that
    reads them equals the one that measures, and drops them."""
    from dfseg.transforms.intensity import TissueReferencesd

    img, lung = thorax()
    df = np.concatenate([img[1:2], img[2:3], np.zeros_like(img[1:2]), img[3:5]])  # c0, amp, aniso, cos, sin
    d = TissueReferencesd()({"attn": img[:1], "df": df, "lung_mask": lung})
    refs = d["tissue_refs"]
    assert refs["attn"] == pytest.approx(float(np.median(img[0][(img[0] > np.median(img[0][lung[0] > 0])) & (lung[0] == 0)])), rel=1e-4)
    assert refs["c0"] == pytest.approx(float(np.median(img[1][lung[0] > 0])), rel=1e-4)
    assert len(refs["df_tissue"]) == 5 and abs(refs["df_tissue"][0]) < 1e-6  # no dark-field in solid tissue
    out = LungReferenceNormalized(keys="image", channels=CHANNELS)({"image": img, "lung_mask": lung, "tissue_refs": refs})
    assert "tissue_refs" not in out
    np.testing.assert_allclose(out["image"], LungReferenceNormalize(CHANNELS)(img, lung), rtol=1e-6)


def test_a_lung_mask_over_the_whole_body_is_refused():
    img, lung = thorax()
    everything = (img[:1] > 0).astype(np.uint8)
    with pytest.raises(InputError, match="^attn: no solid tissue outside the lung mask"):
        LungReferenceNormalize(CHANNELS)(img, everything)
