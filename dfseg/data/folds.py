"""Subject-level cross-validation folds and held-out test splits.

Folds are assigned per subject (mouse), never per scan, so repeated scans of one animal never
straddle a train/validation boundary. Assignment is stratified by tumour presence and depends only
on the set of subjects and the seed (not on the order they are given in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from dfseg.errors import InputError


def _shuffled(ids: Iterable[str], rng: np.random.Generator) -> list[str]:
    """Sort (so input order never matters), then shuffle with ``rng``."""
    ordered = sorted(ids)
    return [ordered[i] for i in rng.permutation(len(ordered))]


def assign_folds(subjects: Mapping[str, bool], k: int, seed: int) -> dict[str, int]:
    """Assign each subject to one of ``k`` folds, stratified by tumour presence.

    Tumour-positive subjects are dealt round-robin (so their counts per fold differ by at most 1);
    tumour-free subjects then go, one by one, to the fold with the fewest subjects, which keeps
    total fold sizes within +-1 whenever there are enough tumour-free subjects to level them.

    Args:
        subjects: subject id -> True if any scan of that subject has a tumour.
        k: number of folds (>= 2, <= number of subjects).
        seed: seed of the ``numpy.random.Generator`` that shuffles subjects and folds.

    Returns:
        subject id -> fold index in ``0..k-1``.
    """
    if k < 2:
        raise InputError("num_folds", f"need at least 2 folds, got {k}")
    if len(subjects) < k:
        raise InputError("num_folds", f"{len(subjects)} subjects cannot fill {k} folds; use fewer folds")
    rng = np.random.default_rng(seed)
    positives = _shuffled((s for s, t in subjects.items() if t), rng)
    negatives = _shuffled((s for s, t in subjects.items() if not t), rng)
    # a random fold order, so the folds that get the odd extra subject vary with the seed
    order = [int(f) for f in rng.permutation(k)]
    folds: dict[str, int] = {}
    sizes = [0] * k
    for i, subject in enumerate(positives):
        fold = order[i % k]
        folds[subject] = fold
        sizes[fold] += 1
    for subject in negatives:
        # fewest subjects first; ties broken by the seeded order
        fold = min(order, key=lambda f: (sizes[f], order.index(f)))
        folds[subject] = fold
        sizes[fold] += 1
    return folds


def held_out_split(subjects: Mapping[str, bool], *, by: str = "subject", fraction: float = 0.2,
                   seed: int = 0, subject_variants: Mapping[str, Iterable[str]] | None = None,
                   test_variants: Iterable[str] = ()) -> set[str]:
    """Choose the subjects of a held-out test set.

    Args:
        subjects: subject id -> True if any scan of that subject has a tumour.
        by: ``"subject"`` (a stratified random ``fraction`` of subjects), ``"variant"`` (every
            subject with a scan of a phantom variant in ``test_variants``) or ``"none"``.
        fraction: share of subjects held out when ``by="subject"``, taken separately from the
            tumour-positive and tumour-free subjects (each rounded to the nearest integer).
        seed: seed of the generator that picks the subjects.
        subject_variants: subject id -> variants of its scans (needed for ``by="variant"``).
        test_variants: phantom variants held out when ``by="variant"``.

    Returns:
        The ids of the held-out subjects. A subject is held out whole (all of its scans), so the
        test set never shares a subject with training.
    """
    if by == "none":
        return set()
    if by == "subject":
        if not 0.0 <= fraction < 1.0:
            raise InputError("test_fraction", f"must be in [0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        held: set[str] = set()
        for flag in (True, False):
            group = _shuffled((s for s, t in subjects.items() if t is flag), rng)
            held.update(group[: int(round(fraction * len(group)))])
        return held
    if by == "variant":
        wanted = set(test_variants)
        if not wanted:
            raise InputError("test_variants", "a split by variant needs at least one test variant")
        if subject_variants is None:
            raise InputError("test_variants", "a split by variant needs the variant of every subject")
        known = {v for vs in subject_variants.values() for v in vs}
        missing = sorted(wanted - known)
        if missing:
            raise InputError("test_variants", f"no scan has variant(s) {missing}; known: {sorted(known)}")
        return {s for s in subjects if wanted & set(subject_variants.get(s, ()))}
    raise InputError("test_split.by", f"must be 'subject', 'variant' or 'none', got {by!r}")
