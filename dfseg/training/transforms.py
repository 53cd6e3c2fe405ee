"""Transform chains the bundles wire: training, validation/evaluation, inference and post-processing.

Chain (keys ``attn``, ``df``, ``label``, ``lung_mask``)::

    LoadScand (channel-first float32 MetaTensors with the file's affine; sidecar -> d["meta"])
      -> [raw reconstructions only] volume_chain(calibration): beam-hardening correction,
         spectrum-aware normalisation, directional decomposition (df: N orientations -> 5 channels)
      -> drop d["meta"] (nested dicts that MONAI's collate cannot batch)
      -> [training only, 3D only] LesionRoomd (cached), then, random, RandSyntheticTumourd on the whole
         volume (centred one radius + one voxel inside the lung mask, as the simulator places tumours)
      -> SelectModalityd(modality) -> "image" (attn 1, df 4, combined 5 channels)
      -> LungReferenceNormalized(image): attn over the body's solid-tissue mu, dark-field over the
         lung's median c0 (dfseg.transforms.intensity; ``normalisation="zscore"``: the per-volume
         z-score of models recorded without a normalisation)
      -> [spatial_dims=2 only] squeeze the singleton Z axis of radiographs: (C, X, Y, 1) -> (C, X, Y)
      -> [training only, random] PatchCropd (MONAI's RandWeightedCropd; patches keep image and
         label only) with centres weighted outside lung / lung / tumour, each lesion alike
         (SamplingMapd), then nnU-Net's augmentation (:func:`augmentation`):
         rotation and scaling, elastic deformation, Gaussian noise, blur, per-channel intensity
         scaling, simulated low resolution; then flips along every axis (:func:`flip_axes`) and
         90-degree rotations in the axial plane

Everything up to the first random transform is deterministic, so ``CacheDataset`` caches it.
Preprocessed manifests (written by ``dfseg preprocess``) skip the correction chain.

Radiograph cohorts (``spatial_dims=2``): images are ``(X, Y, 1)`` on disk (docs/ARCHITECTURE.md); the
chains drop the Z axis so a 2D network sees ``(C, X, Y)``; :class:`dfseg.training.ProbabilityWriter`
writes the probabilities back as ``(X, Y, 1)``. Synthetic tumours are not inserted in 2D: a radiograph
lesion is a projection through the whole mouse, which inserting a 3D sphere into a one-voxel-thick
image does not model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    CopyItemsd,
    DeleteItemsd,
    EnsureTyped,
    Identityd,
    MapTransform,
    NormalizeIntensityd,
    OneOf,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandScaleIntensityd,
    RandSimulateLowResolutiond,
    RandWeightedCropd,
    SpatialPadd,
    SqueezeDimd,
)
from scipy import ndimage

from dfseg.channels import MODALITY_CHANNELS
from dfseg.data.scan import LoadScand
from dfseg.errors import InputError
from dfseg.transforms.intensity import LungReferenceNormalized, TissueReferencesd, check_normalisation
from dfseg.transforms.modality import SelectModalityd
from dfseg.transforms.pipeline import volume_chain
from dfseg.transforms.tumour import LesionRoomd, RandSyntheticTumourd

__all__ = [
    "MODALITY_CHANNELS",
    "LungOnlyd",
    "PresenceScored",
    "augmentation",
    "eval_postprocessing",
    "eval_transforms",
    "flip_axes",
    "in_channels",
    "train_transforms",
]

IMAGE_KEYS = ("attn", "df")
#: the scan's tissue references, measured once per volume where a cache keeps them
REFS_KEY = "tissue_refs"


def flip_axes(spatial_dims: int = 3) -> tuple[int, ...]:
    """The spatial axes training flips at random (each with probability 0.5), as nnU-Net mirrors:
    every axis. Inference mirrors the same axes (:class:`dfseg.training.MirroredInferer`; the run
    record's ``predict.mirror_axes``)."""
    return tuple(range(_check_dims(spatial_dims)))


def in_channels(modality: str) -> int:
    """Number of network input channels of ``modality`` (1, 4 or 5)."""
    if modality not in MODALITY_CHANNELS:
        raise InputError("modality", f"must be one of {', '.join(MODALITY_CHANNELS)}, got {modality!r}")
    return len(MODALITY_CHANNELS[modality])


class SamplingMapd(MapTransform):
    """Add ``d["sampling"]``: the weight of each voxel as a training patch centre.

    Three classes: outside the lung, lung parenchyma, tumour (from label and lung mask). Class c
    gets the total weight ``ratios[c]`` (a class absent from the volume gets none), spread evenly
    over its voxels, except the tumour class, whose weight is split evenly among its lesions (26-
    connected components) and then over each lesion's voxels: a 0.5 mm nodule of 20 voxels is a
    patch centre as often as a 3 mm one of 4000. Negatives go where the hard negatives are (vessels
    and airways in the lung, which look like nodules in attenuation) rather than the air around the
    mouse. :class:`monai.transforms.RandWeightedCropd` draws the centres from this map.

    Args:
        label_key, mask_key: tumour label and lung mask keys.
        output_key: key of the (1, *spatial) float32 weight map.
        ratios: total weight of the outside-lung, lung and tumour classes.
    """

    def __init__(self, label_key: str = "label", mask_key: str = "lung_mask", output_key: str = "sampling",
                 ratios: Sequence[float] = (1.0, 2.0, 3.0)) -> None:
        super().__init__(keys=label_key)
        self.label_key, self.mask_key, self.output_key = label_key, mask_key, output_key
        self.ratios = tuple(float(r) for r in ratios)
        if len(self.ratios) != 3 or min(self.ratios) < 0 or sum(self.ratios) <= 0:
            raise InputError("class_ratios", f"expected 3 non-negative weights, not all 0, got {list(ratios)}")

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        label = np.asarray(torch.as_tensor(d[self.label_key]).cpu()) > 0
        lung = (np.asarray(torch.as_tensor(d[self.mask_key]).cpu()) > 0) if self.mask_key in d else np.zeros_like(label)
        lung &= ~label
        n_lung, n_label = int(lung.sum()), int(label.sum())
        n_out = label.size - n_lung - n_label
        w_out = self.ratios[0] / n_out if n_out else 0.0
        w_lung = self.ratios[1] / n_lung if n_lung else 0.0
        weight = np.where(lung, np.float32(w_lung), np.float32(w_out)).astype(np.float32)
        if n_label:  # lesions: components within the label's bounding box only (they are small)
            box = ndimage.find_objects(label.astype(np.uint8))[0]
            sub = label[box][0] if label.ndim > 1 else label[box]
            components, n_lesions = ndimage.label(sub, structure=np.ones((3,) * sub.ndim))
            sizes = np.bincount(components.ravel(), minlength=n_lesions + 1).astype(np.float64)
            per_voxel = np.zeros_like(sizes)
            per_voxel[1:] = self.ratios[2] / n_lesions / np.maximum(sizes[1:], 1)
            region = weight[box]
            region[0] = np.where(components > 0, per_voxel[components].astype(np.float32), region[0])
        top = float(weight.max())
        d[self.output_key] = torch.from_numpy(weight / top if top > 0 else weight + 1.0)
        return d


def _corrected_scan(keys: Sequence[str], preprocessed: bool, calibration: str | os.PathLike | None) -> list:
    """Read the scan (:class:`LoadScand`), correct raw reconstructions, then drop ``d["meta"]``.

    The correction chain (:func:`dfseg.transforms.pipeline.volume_chain`) reads kVp, filtration,
    visibility and orientations from ``d["meta"]``; afterwards it is dropped because MONAI's
    collate cannot batch its nested dicts. Preprocessed scans are used as they are.
    """
    correction: list = []
    if not preprocessed:
        if calibration in (None, "", "None"):
            raise InputError("calibration", "the manifest's scans are raw reconstructions (not written by "
                                            "dfseg preprocess): give --calibration calibration.json (dfseg calibrate)")
        correction = list(volume_chain(calibration, meta_key="meta").transforms)
    return [LoadScand(keys), *correction, DeleteItemsd(keys="meta")]


def _check_dims(spatial_dims: int) -> int:
    if int(spatial_dims) not in (2, 3):
        raise InputError("spatial_dims", f"must be 2 (radiographs) or 3 (CT), got {spatial_dims!r}")
    return int(spatial_dims)


def _squeeze_z(keys: Sequence[str], spatial_dims: int) -> list:
    """Drop the singleton Z axis of radiographs ((C, X, Y, 1) -> (C, X, Y)) when ``spatial_dims`` is 2."""
    if _check_dims(spatial_dims) == 3:
        return []
    return [SqueezeDimd(keys=list(keys), dim=3)]  # channel-first: Z is dimension 3


def _synthetic(prob: float, diameter_mm: Sequence[float]) -> list:
    if float(prob) <= 0:
        return []
    return [LesionRoomd(mask_key="lung_mask", label_key="label"),  # deterministic: cached with the volume
            RandSyntheticTumourd(keys=("attn", "df", "label"), mask_key="lung_mask", prob=float(prob),
                                 diameter_range_mm=tuple(float(d) for d in diameter_mm))]


def _select(modality: str, normalisation: str) -> list:
    """Network channels, scaled; drops the tissue references :class:`TissueReferencesd` measured."""
    in_channels(modality)
    if check_normalisation(normalisation) == "zscore":
        scale = [NormalizeIntensityd(keys="image", channel_wise=True), DeleteItemsd(keys=REFS_KEY)]
    else:  # attenuation (~0.03/mm) and dark-field (~0.1/mm) in units of the scan's own tissue references
        scale = [LungReferenceNormalized(keys="image", channels=MODALITY_CHANNELS[modality], refs_key=REFS_KEY)]
    return [SelectModalityd(keys=IMAGE_KEYS, modality=modality, output_key="image"), *scale]


class PatchCropd(RandWeightedCropd):
    """:class:`monai.transforms.RandWeightedCropd` that keeps only the cropped keys in its patches.

    MONAI's version deep-copies every other key of the volume into each of the ``num_samples``
    patches, the weight map included, and the data loader then collates those whole volumes.
    Here the patches hold the cropped keys and the small, non-array items (ids, fold, flags); the
    same centres are drawn from the same random state.
    """

    def __call__(self, data: Any, lazy: bool | None = None) -> list[dict]:
        small = {k: v for k, v in data.items()
                 if k not in self.keys and k != self.w_key and not isinstance(v, (torch.Tensor, np.ndarray))}
        ret = [dict(small) for _ in range(self.cropper.num_samples)]
        self.randomize(weight_map=data[self.w_key])
        lazy_ = self.lazy if lazy is None else lazy
        for key in self.key_iterator(data):
            for i, im in enumerate(self.cropper(data[key], randomize=False, lazy=lazy_)):
                ret[i][key] = im
        return ret


def train_transforms(modality: str, patch_size: Sequence[int] | int, *, preprocessed: bool = False,
                     calibration: str | os.PathLike | None = None, num_samples: int = 2,
                     class_ratios: Sequence[float] = (1.0, 2.0, 3.0), synthetic_tumour_prob: float = 0.3,
                     synthetic_diameter_mm: Sequence[float] = (0.5, 3.0), spatial_dims: int = 3,
                     normalisation: str = "lung_reference", augment: bool = True) -> Compose:
    """Training chain: load, correct, synthetic tumours, select modality, normalise, patch, augment.

    Args:
        modality: ``attn``, ``df`` or ``combined``.
        patch_size: training patch in voxels (int or 3 ints); SwinUNETR needs multiples of 32.
        preprocessed: scans already corrected and decomposed by ``dfseg preprocess``.
        calibration: ``calibration.json`` for raw reconstructions.
        num_samples: patches per volume and iteration (``RandWeightedCropd``).
        class_ratios: relative frequency of patches centred outside the lung, in the lung
            parenchyma and on a tumour, the tumour share split evenly among the lesions
            (:class:`SamplingMapd`); a class absent from a volume is skipped.
        synthetic_tumour_prob: probability of inserting a synthetic tumour (``RandSyntheticTumourd``).
        synthetic_diameter_mm: diameter range of synthetic tumours, mm.
        spatial_dims: 3 (CT volumes) or 2 (radiographs stored as (X, Y, 1); Z is squeezed, no
            synthetic tumours).
        normalisation: network-input scaling (:data:`dfseg.transforms.intensity.NORMALISATIONS`).
        augment: nnU-Net's spatial and intensity augmentation (:func:`augmentation`); flips and
            90-degree rotations are always on.

    Returns:
        ``Compose`` producing dicts with ``image`` (C, *patch) float32 and ``label`` (1, *patch).
    """
    dims = _check_dims(spatial_dims)
    patch = (int(patch_size),) * dims if np.ndim(patch_size) == 0 else tuple(int(p) for p in patch_size)
    if len(patch) != dims:
        raise InputError("patch_size", f"expected {dims} sizes for spatial_dims={dims}, got {list(patch)}")
    keys = ("attn", "df", "label", "lung_mask")
    return Compose([
        *_corrected_scan(keys, preprocessed, calibration),
        TissueReferencesd(output_key=REFS_KEY),
        *(_synthetic(synthetic_tumour_prob, synthetic_diameter_mm) if dims == 3 else []),
        *_select(modality, normalisation),
        *_squeeze_z(("image", "label", "lung_mask"), dims),
        SamplingMapd(ratios=class_ratios),
        PatchCropd(keys=("image", "label"), w_key="sampling", spatial_size=patch, num_samples=int(num_samples)),
        # volumes smaller than the patch (allow_smaller keeps them whole) are padded with the
        # normalised mean 0: SwinUNETR needs its full patch (>= 64 voxels, see its bundle).
        SpatialPadd(keys=("image", "label"), spatial_size=patch),
        *(augmentation(dims) if augment else []),
        *(RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=axis) for axis in flip_axes(dims)),
        RandRotate90d(keys=("image", "label"), prob=0.5, spatial_axes=(0, 1)),
        EnsureTyped(keys=("image", "label"), dtype=torch.float32, track_meta=False),
    ])


def augmentation(spatial_dims: int = 3) -> list:
    """nnU-Net's data augmentation (Isensee et al. 2021, its default probabilities) on a patch.

    Spatial, image and label together (label resampled nearest-neighbour, edges replicated):
    rotation up to 15 degrees about each axis and scaling by 0.8-1.2 along each axis (probability 0.2:
    posture, voxel sizes 0.12-0.19 mm from a 0.15 mm scan), elastic deformation (0.1: lung
    inflation and soft anatomy). Image only, in the normalised tissue units: Gaussian noise of std
    up to 0.05 (0.1: a lower dose), Gaussian blur of 0.5-1 voxel (0.2: a wider detector
    point-spread function), per-channel intensity scaling by 0.85-1.15 (0.15: references off by a
    few per cent), simulated low resolution by 0.5-1 (0.25: a coarser scanner). Intensity stays
    proportional (no shift, no gamma), so air and solid tissue keep their physical zero of
    dark-field.
    """
    keys, modes = ("image", "label"), ("bilinear", "nearest")
    angle = np.deg2rad(15.0)
    if _check_dims(spatial_dims) == 3:
        rotate, deform = (angle, angle, angle), Rand3DElasticd(
            keys=keys, prob=1.0, sigma_range=(5.0, 7.0), magnitude_range=(30.0, 80.0), mode=modes,
            padding_mode="border")
    else:
        rotate, deform = angle, Rand2DElasticd(
            keys=keys, prob=1.0, spacing=(8, 8), magnitude_range=(0.5, 1.5), mode=modes, padding_mode="border")
    # MONAI's elastic transforms build their displacement field even when they skip: OneOf runs it
    # only when chosen
    elastic = OneOf([deform, Identityd(keys=keys)], weights=(0.1, 0.9))
    smooth = (0.5, 1.0)
    return [
        RandAffined(keys=keys, prob=0.2, rotate_range=rotate, scale_range=(0.2,) * spatial_dims, mode=modes,
                    padding_mode="border"),
        elastic,
        RandGaussianNoised(keys="image", prob=0.1, mean=0.0, std=0.05),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=smooth, sigma_y=smooth, sigma_z=smooth),
        RandScaleIntensityd(keys="image", prob=0.15, factors=0.15, channel_wise=True),
        RandSimulateLowResolutiond(keys="image", prob=0.25, zoom_range=(0.5, 1.0)),
    ]


def eval_transforms(modality: str, *, preprocessed: bool = False,
                    calibration: str | os.PathLike | None = None, with_label: bool = True,
                    spatial_dims: int = 3, normalisation: str = "lung_reference") -> Compose:
    """Deterministic whole-volume chain for validation, evaluation and inference.

    Returns dicts with ``image`` (C, X, Y, Z), ``lung_mask`` (1, X, Y, Z) and, when ``with_label``,
    ``label`` (1, X, Y, Z) (without the Z axis when ``spatial_dims`` is 2); ``image`` keeps its
    MetaTensor affine so predictions can be saved on the scan's grid.
    """
    keys = ("attn", "df", "lung_mask") + (("label",) if with_label else ())
    return Compose([
        *_corrected_scan(keys, preprocessed, calibration),
        *_select(modality, normalisation),
        *_squeeze_z(("image", "lung_mask") + (("label",) if with_label else ()), spatial_dims),
    ])


class PresenceScored(MapTransform):
    """Per-volume lesion-presence score and target (docs/ARCHITECTURE.md).

    ``presence`` = maximum of ``pred`` (probabilities, (1, X, Y, Z)) inside ``lung_mask`` (whole
    volume when the mask is empty); ``presence_label`` = 1 if ``label`` holds any tumour voxel.
    Both are 1-element float tensors so MONAI's ``ROCAUC`` handler can batch them.
    """

    def __init__(self, pred_key: str = "pred", mask_key: str = "lung_mask", label_key: str = "label",
                 output_key: str = "presence") -> None:
        super().__init__(keys=pred_key, allow_missing_keys=True)
        self.pred_key, self.mask_key, self.label_key, self.output_key = pred_key, mask_key, label_key, output_key

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        pred = torch.as_tensor(d[self.pred_key]).float()
        mask = d.get(self.mask_key)
        if mask is not None and bool((torch.as_tensor(mask) > 0).any()):
            inside = torch.as_tensor(mask).to(pred.device) > 0
            score = pred[inside.expand_as(pred)].max()
        else:
            score = pred.max()
        d[self.output_key] = score.reshape(1).as_subclass(torch.Tensor)
        if d.get(self.label_key) is not None:  # inference: the evaluator's batch has label None
            d[f"{self.output_key}_label"] = (torch.as_tensor(d[self.label_key]) > 0).any().float().reshape(1)
        return d


class LungOnlyd(MapTransform):
    """Zero ``pred`` outside the lung mask: tumours live in the lung, so no candidate survives outside
    it (``dfseg predict`` and ``dfseg evaluate`` apply the same rule). An absent or empty mask
    leaves ``pred`` unchanged.
    """

    def __init__(self, keys: Any = "pred", mask_key: str = "lung_mask") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.mask_key = mask_key

    def __call__(self, data: Any) -> Any:
        d = dict(data)
        mask = d.get(self.mask_key)
        if mask is None or not bool((torch.as_tensor(mask) > 0).any()):
            return d
        for key in self.key_iterator(d):
            pred = d[key]
            inside = (torch.as_tensor(mask) > 0).to(torch.as_tensor(pred).device)
            d[key] = pred * inside.to(torch.as_tensor(pred).dtype).expand_as(torch.as_tensor(pred))
        return d


def eval_postprocessing(threshold: float = 0.5) -> Compose:
    """Sigmoid on ``pred``, zero outside the lung (:class:`LungOnlyd`), presence score, binary
    ``pred_bin`` for Dice."""
    return Compose([
        Activationsd(keys="pred", sigmoid=True),
        LungOnlyd(),
        PresenceScored(),
        CopyItemsd(keys="pred", names="pred_bin"),
        AsDiscreted(keys="pred_bin", threshold=float(threshold)),
    ])
