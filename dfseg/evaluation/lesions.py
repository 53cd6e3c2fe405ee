"""Lesion-wise evaluation: connected components, the matching rule, lesion sizes, FROC.

Matching rule (stated in every report, see :data:`MATCHING_RULE`): lesions and predicted
components are 26-connected components (:func:`connected_components`, the one labelling routine of
dfseg). A predicted component is a **true positive if it overlaps a reference lesion by at least one
voxel**; a reference lesion is **detected** if at least one predicted component overlaps it. One
component touching two lesions detects both and is one true positive; two components on one lesion
detect it once and are both true positives (neither is a false positive). A component that overlaps
no lesion is a false positive. Candidates are scored by the maximum probability inside them.

FROC follows LUNA16: operating points 1/8 ... 8 false positives per scan, CPM = mean sensitivity at
those points; several candidates on one lesion count once (the highest-scoring one), the others are
ignored rather than counted as false positives. The sensitivity at an FP rate is the best one reached
by a threshold whose FP rate does not exceed it (a step curve, no interpolation). FROC candidates
(:data:`FROC_RULE`, :func:`froc_candidates`) are the matching's components at the segmentation
threshold and, below it, the regional maxima of the probability map down to a low floor, so the curve
passes exactly through the matching's operating point (lesion sensitivity and false-positive components
per scan at the threshold) and goes on to higher FP rates. An operating point the candidates do not
reach is reported as such (:func:`froc`, ``reached``), with the sensitivity of the curve's end as a
lower bound.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from dfseg.errors import InputError

#: LUNA16 FROC operating points, false positives per scan.
LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

#: Lowest score of a FROC candidate below the segmentation threshold (a regional maximum of the map).
FROC_FLOOR = 1e-6

#: Most false-positive FROC candidates a scan keeps, its highest-scoring ones: 50 times the highest
#: LUNA16 rate, so a cohort's curve to 8 FP per scan is complete unless one scan holds 50 times its share.
FROC_MAX_FP = 400

#: Lesion-size bins by equivalent diameter in mm, half-open ``[low, high)``.
SIZE_BINS: tuple[tuple[str, float, float], ...] = (("0.5-1", 0.5, 1.0), ("1-2", 1.0, 2.0), ("2-3", 2.0, 3.0))

MATCHING_RULE = (
    "Lesions and predicted components are 26-connected components. A predicted component (voxels with "
    "probability >= threshold) is a true positive if it overlaps a reference lesion by at least one voxel; "
    "a reference lesion is detected if any predicted component overlaps it. Duplicate components on one "
    "lesion are all true positives; a component overlapping no lesion is a false positive. Candidates are "
    "scored by their maximum probability. Per-lesion Dice compares the lesion with the union of the "
    "components that overlap it."
)


FROC_RULE = (
    "FROC candidates: at or above the segmentation threshold, the predicted components of the matching rule "
    "(scored by their maximum, hits by overlap); below it, the regional maxima of the probability map (a "
    "voxel or flat top with every neighbour lower) down to probability {floor:g}, each a hit on the lesion its "
    "top lies in. A lesion's score is its best candidate's; several candidates on one lesion count once, the "
    "others are ignored; the rest are false positives (at most {max_fp} per scan, the highest). So the FROC "
    "passes through the matching's operating point: at the threshold its sensitivity is the lesion sensitivity "
    "and its FP rate the false-positive components per scan. LUNA16 operating points 1/8..8 FP/scan, CPM = "
    "mean sensitivity there; a point the candidates do not reach is listed as not reached and its "
    "sensitivity (the curve's last) is a lower bound."
)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 26-connected (full-connectivity) components of a boolean mask.

    Args:
        mask: (X, Y, Z) (or any ndim) boolean array.

    Returns:
        ``(labels, n)``: int32 array of the same shape (0 = background, 1..n = components) and n.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return labels.astype(np.int32, copy=False), int(n)


#: Smallest lesion reported, mm^3: half the volume of a 0.5 mm sphere, the smallest tumour dfseg
#: targets (9.7 voxels of 0.15 mm, half a voxel of 0.4 mm). Smaller components are noise specks.
MIN_LESION_MM3 = 0.5 * math.pi / 6 * 0.5**3

#: Most elongated lesion reported among the small candidates (:data:`ELONGATION_CHECK_MM3`): the
#: ratio of a component's longest to its second-longest principal axis
#: (:func:`component_elongation`; an ellipsoid's is its length over its width, a solid tube's 1.15
#: times its length over its diameter). A candidate more than two and a half times as long as it is
#: wide is a piece of a vessel or airway wall, the lung's solid tubes of 0.3-0.7 mm, not a nodule:
#: the simulator's tumour labels under 1 mm reach 1.52 in every shape model, the tumour components
#: models have outlined 2.0 (docs/ARCHITECTURE.md, "Predictions").
MAX_LESION_ELONGATION = 2.5

#: Candidates smaller than this volume, a 1 mm sphere's (0.52 mm^3, 155 voxels of 0.15 mm), are held
#: to :data:`MAX_LESION_ELONGATION`: that is where a tumour is as wide as a vessel. Larger components
#: count whatever their shape, so a tumour that a prediction joins to a vessel is never dropped.
ELONGATION_CHECK_MM3 = math.pi / 6 * 1.0**3

def check_max_elongation(value: float) -> float | None:
    """The ``--max-elongation`` option: ``None`` (every shape counts) for 0, refused below 1 (no
    component is less elongated than 1)."""
    value = float(value)
    if value == 0:
        return None
    if not value >= 1.0:
        raise InputError("--max-elongation", f"must be 0 (every shape) or at least 1, got {value:g}")
    return value


def lesion_rule(max_elongation: float | None = MAX_LESION_ELONGATION) -> str:
    """What counts as a lesion (:func:`lesion_mask`), in words, for reports."""
    shape = ("" if max_elongation is None else
             f"; a component smaller than a 1 mm sphere that is more than {max_elongation:g} times as long as it "
             "is wide (elongation: the square root of its largest over its second-largest principal moment) is a "
             "vessel or airway segment, not a lesion")
    return ("A lesion is a 26-connected component of probability >= threshold inside the lung of at least half "
            f"the volume of a 0.5 mm sphere{shape}.")


def component_elongation(labels: np.ndarray, n: int, voxel_mm: float | tuple[float, ...]) -> np.ndarray:
    """(n,) elongation of each labelled component: ``sqrt(l1 / l2)`` of the two largest eigenvalues of
    its second moments in mm (ITK ``LabelShapeStatisticsImageFilter``'s ``Elongation``).

    Each voxel is taken as a cube of the largest voxel edge, not a point (its own second moment
    ``max(spacing)**2 / 12`` is added on every axis): a one-voxel-thick line then has a finite
    elongation (its length over its voxel width) where ITK reports 0, and on an anisotropic grid a
    single voxel is as round as the grid can resolve, not as elongated as the voxel.

    Args:
        labels: (X, Y, Z) int component ids 0..n (:func:`connected_components`).
        n: number of components.
        voxel_mm: voxel spacing, scalar or per axis.
    """
    if n == 0:
        return np.zeros(0)
    spacing = np.broadcast_to(np.asarray(voxel_mm, float), (labels.ndim,))
    inside = np.nonzero(labels)
    ids = labels[inside]
    count = np.bincount(ids, minlength=n + 1)[1:].astype(float)
    xyz = [np.asarray(i, float) * s for i, s in zip(inside, spacing)]
    mean = np.stack([np.bincount(ids, weights=c, minlength=n + 1)[1:] for c in xyz], axis=1) / count[:, None]
    cov = np.empty((n, labels.ndim, labels.ndim))
    for a in range(labels.ndim):
        for b in range(a, labels.ndim):
            second = np.bincount(ids, weights=xyz[a] * xyz[b], minlength=n + 1)[1:] / count
            cov[:, a, b] = cov[:, b, a] = second - mean[:, a] * mean[:, b]
    cov += np.eye(labels.ndim) * (spacing.max() ** 2 / 12.0)
    eig = np.linalg.eigvalsh(cov)  # ascending
    return np.sqrt(eig[:, -1] / eig[:, -2])


def lesion_mask(mask: np.ndarray, voxel_mm: float | tuple[float, ...], min_volume_mm3: float = MIN_LESION_MM3,
                max_elongation: float | None = MAX_LESION_ELONGATION) -> np.ndarray:
    """``mask`` without the 26-connected components that are not lesions (:func:`lesion_rule`).

    Dropped: components smaller than ``min_volume_mm3``, and components smaller than
    :data:`ELONGATION_CHECK_MM3` whose elongation (:func:`component_elongation`) exceeds
    ``max_elongation`` (``None`` keeps every shape). The one rule for what counts as a lesion:
    ``dfseg predict`` lists these components and the evaluation scores them.
    """
    labels, n = connected_components(mask)
    if n == 0:
        return np.asarray(mask, dtype=bool)
    voxel = float(np.prod(np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))))
    volumes = np.bincount(labels.ravel(), minlength=n + 1) * voxel
    keep = volumes >= min_volume_mm3
    if max_elongation is not None:
        check = np.flatnonzero(keep[1:] & (volumes[1:] < ELONGATION_CHECK_MM3)) + 1
        if check.size:
            sub, _ = _keep_labels(labels, n, np.isin(np.arange(1, n + 1), check))
            keep[check] &= component_elongation(sub, check.size, voxel_mm) <= float(max_elongation)
    keep[0] = False
    return keep[labels]


def lesion_probabilities(prob: np.ndarray, lung_mask: np.ndarray, threshold: float,
                         voxel_mm: float | tuple[float, ...], max_elongation: float | None = MAX_LESION_ELONGATION
                         ) -> np.ndarray:
    """``prob`` as dfseg reports it: 0 outside the lung and in the components at or above ``threshold``
    that are not lesions (:func:`lesion_mask`), so every candidate above the threshold is a lesion and
    the presence score (the maximum) is that of a lesion or of a sub-threshold peak."""
    prob = np.where(np.asarray(lung_mask, dtype=bool), np.asarray(prob, dtype=np.float64), 0.0)
    above = prob >= threshold
    return np.where(above & ~lesion_mask(above, voxel_mm, max_elongation=max_elongation), 0.0, prob)


def equivalent_diameter_mm(n_voxels: int, voxel_mm: float | tuple[float, ...]) -> float:
    """Diameter (mm) of the sphere with the volume of ``n_voxels`` voxels: ``(6 V / pi) ** (1/3)``."""
    voxel_volume = float(np.prod(np.broadcast_to(np.asarray(voxel_mm, float), (3,))))
    return float((6.0 * n_voxels * voxel_volume / math.pi) ** (1.0 / 3.0))


def size_bin(diameter_mm: float) -> str:
    """Name of the size bin of a lesion diameter (``"<0.5"`` / ``">=3"`` outside the study range)."""
    for name, low, high in SIZE_BINS:
        if low <= diameter_mm < high:
            return name
    return "<0.5" if diameter_mm < SIZE_BINS[0][1] else ">=3"


def _overlap_pairs(ref_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """(K, 2) array of distinct ``(ref_id, pred_id)`` pairs that share at least one voxel."""
    both = (ref_labels > 0) & (pred_labels > 0)
    if not both.any():
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.stack([ref_labels[both], pred_labels[both]], axis=1).astype(np.int64)
    return np.unique(pairs, axis=0)


def _component_max(prob: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) maximum of ``prob`` in each labelled component (work in proportion to the labelled voxels)."""
    if n == 0:
        return np.zeros(0)
    inside = labels > 0
    out = np.full(n + 1, -np.inf)
    np.maximum.at(out, labels[inside], np.asarray(prob, dtype=float)[inside])
    return out[1:]


def _keep_labels(labels: np.ndarray, n: int, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """``labels`` renumbered 1..k over the k ids with ``keep[id - 1]``, the others set to 0."""
    new_id = np.r_[0, np.cumsum(keep)] * np.r_[False, keep]
    return new_id[labels].astype(np.int32), int(keep.sum())


def match_lesions(prob: np.ndarray, reference: np.ndarray, threshold: float,
                  voxel_mm: float | tuple[float, ...]) -> dict:
    """Match predicted components (``prob >= threshold``) to reference lesions by the overlap rule.

    Args:
        prob: (X, Y, Z) float probabilities.
        reference: (X, Y, Z) 0/1 tumour label.
        threshold: probability threshold of the binary prediction.
        voxel_mm: voxel spacing in mm.

    Returns:
        ``{"lesions": [...], "components": [...]}``. Each lesion: ``n_voxels``, ``diameter_mm``,
        ``size_bin``, ``centroid`` (voxel indices, floats), ``detected``, ``dice`` (lesion vs union of
        overlapping components), ``max_prob`` (inside the lesion). Each component: ``n_voxels``,
        ``score`` (max probability), ``tp``.
    """
    prob = np.asarray(prob, dtype=np.float64)
    ref_labels, n_ref = connected_components(reference)
    pred_mask = prob >= threshold
    pred_labels, n_pred = connected_components(pred_mask)
    pairs = _overlap_pairs(ref_labels, pred_labels)
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    centroids = ndimage.center_of_mass(np.ones_like(ref_labels), ref_labels, range(1, n_ref + 1)) if n_ref else []
    lesion_max = _component_max(prob, ref_labels, n_ref)
    comp_score = _component_max(prob, pred_labels, n_pred)
    tp_components = set(pairs[:, 1].tolist())

    lesions = []
    for i in range(1, n_ref + 1):
        hits = pairs[pairs[:, 0] == i, 1]
        lesion = ref_labels == i
        if hits.size:
            union = np.isin(pred_labels, hits)
            lesion_dice = 2.0 * np.count_nonzero(union & lesion) / (int(union.sum()) + int(ref_sizes[i]))
        else:
            lesion_dice = 0.0
        diameter = equivalent_diameter_mm(int(ref_sizes[i]), voxel_mm)
        lesions.append({
            "n_voxels": int(ref_sizes[i]), "diameter_mm": diameter, "size_bin": size_bin(diameter),
            "centroid": [float(c) for c in centroids[i - 1]], "detected": bool(hits.size),
            "dice": float(lesion_dice), "max_prob": float(lesion_max[i - 1]),
        })
    components = [{"n_voxels": int(pred_sizes[j]), "score": float(comp_score[j - 1]), "tp": j in tp_components}
                  for j in range(1, n_pred + 1)]
    return {"lesions": lesions, "components": components}


def regional_maxima(prob: np.ndarray, floor: float) -> tuple[np.ndarray, int]:
    """Regional maxima of a probability map: plateaus no neighbour of which is as high.

    A regional maximum is a 26-connected set of voxels of one value whose 26-neighbours outside it are
    all lower (a single voxel above its neighbours, or a flat top). A flat region that touches a higher
    voxel anywhere is not one.

    Args:
        prob: (X, Y, Z) probabilities.
        floor: lowest value of a maximum kept.

    Returns:
        ``(labels, n)`` as :func:`connected_components`: one label per maximum.
    """
    prob = np.asarray(prob, dtype=np.float64)
    peak = (prob == ndimage.maximum_filter(prob, size=3, mode="constant", cval=-np.inf)) & (prob >= floor)
    labels, n = connected_components(peak)
    if n == 0:
        return labels, 0
    # a peak voxel's neighbours are never higher; an equal one outside the peak set continues the plateau
    # towards a higher voxel, so the plateau is not a maximum
    outside = ndimage.maximum_filter(np.where(peak, -np.inf, prob), size=3, mode="constant", cval=-np.inf)
    keep = np.ones(n, dtype=bool)
    keep[labels[peak & (outside == prob)] - 1] = False
    return _keep_labels(labels, n, keep)


def froc_candidates(prob: np.ndarray, reference: np.ndarray, threshold: float, *, floor: float = FROC_FLOOR,
                    max_fp: int = FROC_MAX_FP) -> tuple[list[float], list[float], float]:
    """FROC candidates of one scan (rule in :data:`FROC_RULE`).

    Candidates scoring at or above ``threshold`` are the components of ``prob >= threshold``, scored
    by their maximum and matched by overlap as :func:`match_lesions` matches them; below it, the regional
    maxima (:func:`regional_maxima`) of ``prob`` scoring at least ``floor``, each a hit on the lesions
    its plateau overlaps. A lesion's score is that of its best candidate.

    Args:
        prob: (X, Y, Z) probabilities.
        reference: (X, Y, Z) 0/1 tumour label.
        threshold: the segmentation threshold of :func:`match_lesions`.
        floor: lowest score of a candidate below ``threshold``.
        max_fp: most false-positive scores kept (the highest ones).

    Returns:
        ``(lesion_scores, fp_scores, complete_from)``: per reference lesion (in
        :func:`connected_components` order) its best candidate's score, ``-inf`` if no candidate hits it;
        the false-positive scores, highest first; and the lowest score down to which ``fp_scores`` holds
        every false positive of the rule (``min(floor, threshold)``, higher when ``max_fp`` cut the list).
    """
    prob = np.asarray(prob, dtype=np.float64)
    ref_labels, n_ref = connected_components(reference)
    lesion_scores = np.full(n_ref, -np.inf)
    fp_scores = []
    box = _bounding_box(prob >= min(floor, threshold))
    below = prob[box] < threshold
    for cand_labels, n_cand in (connected_components(prob[box] >= threshold),
                                _masked(regional_maxima(prob[box], floor), below)):
        scores = _component_max(prob[box], cand_labels, n_cand)
        pairs = _overlap_pairs(ref_labels[box], cand_labels)
        for ref_id, cand_id in pairs:
            lesion_scores[ref_id - 1] = max(lesion_scores[ref_id - 1], scores[cand_id - 1])
        is_fp = np.ones(n_cand, dtype=bool)
        is_fp[pairs[:, 1] - 1] = False
        fp_scores.append(scores[is_fp])
    fps = np.sort(np.concatenate(fp_scores))[::-1]
    complete_from = float(min(floor, threshold))
    if fps.size > max_fp:
        complete_from = float(np.nextafter(fps[max_fp], np.inf))
        fps = fps[fps >= complete_from]
    return lesion_scores.tolist(), fps.tolist(), complete_from


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` grown by one voxel (an empty mask: the whole array)."""
    if not mask.any():
        return tuple(slice(None) for _ in mask.shape)
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)


def _masked(labelled: tuple[np.ndarray, int], keep: np.ndarray) -> tuple[np.ndarray, int]:
    """The labelled regions lying in ``keep`` (a regional maximum lies wholly on one side of a threshold)."""
    labels, n = labelled
    if n == 0:
        return labels, 0
    inside = np.zeros(n, dtype=bool)
    inside[labels[keep & (labels > 0)] - 1] = True
    return _keep_labels(labels, n, inside)


def froc(lesion_scores: np.ndarray, fp_scores: np.ndarray, n_scans: int,
         fp_rates: tuple[float, ...] = LUNA16_FP_RATES, *, complete_from: float = -np.inf,
         threshold: float | None = None) -> dict:
    """FROC curve, sensitivities at the given FP rates, and CPM (their mean).

    Args:
        lesion_scores: (L,) best candidate score per reference lesion over all scans (``-inf`` or ``nan``
            = never hit).
        fp_scores: (F,) scores of all false-positive candidates over all scans.
        n_scans: number of scans the candidates come from (the FP-rate denominator).
        fp_rates: operating points in false positives per scan.
        complete_from: lowest threshold at which ``fp_scores`` holds every false positive; the curve
            stops there (lower scores are dropped).
        threshold: a score threshold whose point of the curve to report (``operating_point``).

    Returns:
        ``{"fp_rates", "sensitivities", "reached", "unreached_fp_rates", "cpm", "cpm_complete",
        "complete_from", "curve_fp_per_scan", "curve_sensitivity", "curve_threshold"}`` and, with
        ``threshold``, ``"operating_point": {"threshold", "fp_per_scan", "sensitivity"}``. The curve has one
        point per distinct candidate score, by decreasing threshold, starting at (0, 0) (threshold
        ``inf``). A rate is reached when the curve ends at or beyond it, or every lesion is hit before
        it; at a rate not reached the sensitivity is the curve's last one, a lower bound. Sensitivities
        are ``nan`` when there is no lesion.
    """
    les = np.asarray(lesion_scores, float).ravel()
    les = np.where(np.isnan(les), -np.inf, les)  # JSON round trips turn -inf into None -> nan
    fps = np.asarray(fp_scores, float).ravel()
    floor = -np.inf if complete_from is None or np.isnan(complete_from) else float(complete_from)
    les = np.where(les >= floor, les, -np.inf)
    fps = fps[fps >= floor]
    thresholds = np.unique(np.r_[les[np.isfinite(les)], fps])[::-1]
    n_les = les.size
    hit, nfp = _counts_at(les, fps, thresholds)
    curve_fp = np.r_[0.0, nfp / max(n_scans, 1)]
    curve_sens = np.r_[0.0, hit / n_les] if n_les else np.full(thresholds.size + 1, np.nan)
    sens, reached = [], []
    for rate in fp_rates:
        ok = curve_fp <= rate + 1e-12
        sens.append(float(curve_sens[ok].max()) if n_les else float("nan"))
        reached.append(bool(curve_fp[-1] >= rate - 1e-12 or (n_les and curve_sens[-1] == 1.0)))
    out = {"fp_rates": list(fp_rates), "sensitivities": sens, "reached": reached,
           "unreached_fp_rates": [r for r, ok in zip(fp_rates, reached) if not ok],
           "cpm": float(np.mean(sens)), "cpm_complete": all(reached), "complete_from": floor,
           "curve_fp_per_scan": curve_fp.tolist(), "curve_sensitivity": curve_sens.tolist(),
           "curve_threshold": np.r_[np.inf, thresholds].tolist()}
    if threshold is not None:
        hit_t, nfp_t = _counts_at(les, fps, np.array([float(threshold)]))
        out["operating_point"] = {"threshold": float(threshold), "fp_per_scan": float(nfp_t[0] / max(n_scans, 1)),
                                  "sensitivity": float(hit_t[0] / n_les) if n_les else float("nan")}
    return out


def _counts_at(lesion_scores: np.ndarray, fp_scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lesions hit and false positives at each threshold (scores ``>=`` it)."""
    # count of scores >= t = size - (number strictly below t)
    hit = lesion_scores.size - np.searchsorted(np.sort(lesion_scores), thresholds, side="left")
    nfp = fp_scores.size - np.searchsorted(np.sort(fp_scores), thresholds, side="left")
    return hit, nfp
