"""Lesion-presence scores: one per volume and one per patch.

Rules (stated in reports via :data:`PRESENCE_RULE`):

- **Volume**: score = maximum tumour probability inside the lung mask (the whole volume when the
  mask is empty), as docs/ARCHITECTURE.md fixes; the volume is positive if its label holds any tumour
  voxel. No smoothing: a single confident voxel decides, which is what a detector of 0.5 mm lesions
  (a handful of voxels) needs.
- **Patch**: the bounding box of the lung mask is tiled, from its lower corner, into non-overlapping
  patches of ``P`` voxels per axis (the last patch along an axis may be smaller; an axis shorter than
  ``P``, e.g. Z = 1 of a radiograph, gives one patch of its length). Patches holding no lung voxel
  are dropped. Score = maximum probability in the patch; a patch is positive if it holds at least
  ``k`` tumour voxels, negative if it holds none, and ignored (neither) in between, so a patch that
  only grazes a lesion is not forced into either class.
"""

from __future__ import annotations

import itertools

import numpy as np

#: Default patch edge P in voxels and the minimum tumour voxels k of a positive patch.
PATCH_SIZE = 8
MIN_TUMOUR_VOXELS = 1


def presence_rule(patch_size: int = PATCH_SIZE, min_tumour_voxels: int = MIN_TUMOUR_VOXELS) -> str:
    """One-paragraph statement of the presence-score rules with the parameters used."""
    return (
        "Volume score = maximum probability inside the lung mask; a volume is positive if its label has "
        f"any tumour voxel. Patch score = maximum probability in a {patch_size}^3-voxel patch tiling the "
        f"lung bounding box (patches without lung voxels dropped); a patch is positive with >= "
        f"{min_tumour_voxels} tumour voxel(s), negative with none, ignored in between."
    )


def volume_score(prob: np.ndarray, lung_mask: np.ndarray | None = None) -> float:
    """Per-volume lesion-presence score: maximum probability inside the lung mask.

    Args:
        prob: (X, Y, Z) probabilities.
        lung_mask: (X, Y, Z) 0/1 lung mask, or ``None`` for the whole volume.
    """
    prob = np.asarray(prob)
    if lung_mask is not None:
        mask = np.asarray(lung_mask, dtype=bool)
        if mask.any():
            return float(prob[mask].max())
    return float(prob.max())


def patch_scores(prob: np.ndarray, label: np.ndarray, lung_mask: np.ndarray, *, patch_size: int = PATCH_SIZE,
                 min_tumour_voxels: int = MIN_TUMOUR_VOXELS) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch scores and labels on the tiled lung bounding box (rule in the module docstring).

    Args:
        prob: (X, Y, Z) probabilities.
        label: (X, Y, Z) 0/1 tumour label.
        lung_mask: (X, Y, Z) 0/1 lung mask; an empty mask tiles the whole volume.
        patch_size: patch edge P in voxels.
        min_tumour_voxels: tumour voxels k that make a patch positive.

    Returns:
        ``(scores, labels)``: (M,) float64 max probabilities and (M,) int8 labels (0/1) of the kept patches.
    """
    prob = np.asarray(prob)
    label = np.asarray(label, dtype=bool)
    lung = np.asarray(lung_mask, dtype=bool)
    if lung.any():
        idx = np.nonzero(lung)
        lo = [int(i.min()) for i in idx]
        hi = [int(i.max()) + 1 for i in idx]
    else:
        lung = np.ones_like(lung)
        lo, hi = [0] * prob.ndim, list(prob.shape)
    starts = [range(a, b, patch_size) for a, b in zip(lo, hi)]
    scores, labels = [], []
    for corner in itertools.product(*starts):
        sl = tuple(slice(c, min(c + patch_size, b)) for c, b in zip(corner, hi))
        if not lung[sl].any():
            continue
        n_tumour = int(np.count_nonzero(label[sl]))
        if 0 < n_tumour < min_tumour_voxels:
            continue
        scores.append(float(prob[sl].max()))
        labels.append(1 if n_tumour else 0)
    return np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int8)
