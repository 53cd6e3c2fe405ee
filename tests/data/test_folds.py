"""Subject-level stratified folds and held-out splits."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfseg.data.folds import assign_folds, held_out_split
from dfseg.errors import InputError


@st.composite
def cohorts(draw):
    """(scans as (subject, scan, has_tumour), k): 1-3 scans per subject, random tumour flags."""
    k = draw(st.integers(2, 6))
    n_subjects = draw(st.integers(k, 40))
    scans = []
    for s in range(n_subjects):
        for j in range(draw(st.integers(1, 3))):
            scans.append((f"sub{s}", f"sub{s}_scan{j}", draw(st.booleans())))
    return scans, k


def _subjects(scans):
    flags: dict[str, bool] = {}
    for subject, _scan, tumour in scans:
        flags[subject] = flags.get(subject, False) or tumour
    return flags


@settings(max_examples=200, deadline=None)
@given(cohorts(), st.integers(0, 2**32 - 1))
def test_folds_keep_subjects_whole_and_balance_tumours(cohort, seed):
    scans, k = cohort
    subjects = _subjects(scans)
    folds = assign_folds(subjects, k, seed)
    # every subject gets exactly one fold, so its scans (looked up by subject) never straddle folds
    scan_folds: dict[str, set[int]] = {}
    for subject, _scan, _t in scans:
        scan_folds.setdefault(subject, set()).add(folds[subject])
    assert all(len(f) == 1 for f in scan_folds.values())
    assert set(folds) == set(subjects) and set(folds.values()) <= set(range(k))
    positives = Counter(folds[s] for s, t in subjects.items() if t)
    pos_counts = [positives.get(f, 0) for f in range(k)]
    assert max(pos_counts) - min(pos_counts) <= 1
    sizes = Counter(folds.values())
    size_counts = [sizes.get(f, 0) for f in range(k)]
    assert max(size_counts) - min(size_counts) <= 1
    # deterministic per seed, and independent of the order subjects are given in
    assert assign_folds(subjects, k, seed) == folds
    assert assign_folds(dict(reversed(list(subjects.items()))), k, seed) == folds


def test_different_seeds_give_different_folds():
    subjects = {f"s{i}": i % 3 == 0 for i in range(30)}
    runs = {tuple(sorted(assign_folds(subjects, 5, seed).items())) for seed in range(5)}
    assert len(runs) == 5


def test_too_few_subjects_or_folds_refused():
    with pytest.raises(InputError, match="3 subjects cannot fill 4 folds"):
        assign_folds({"a": True, "b": False, "c": False}, 4, 0)
    with pytest.raises(InputError, match="at least 2 folds"):
        assign_folds({"a": True, "b": False}, 1, 0)


@settings(max_examples=50, deadline=None)
@given(st.integers(5, 60), st.integers(0, 1000))
def test_held_out_by_subject_is_stratified(n, seed):
    subjects = {f"s{i}": i % 4 == 0 for i in range(n)}
    held = held_out_split(subjects, by="subject", fraction=0.25, seed=seed)
    n_pos = sum(subjects.values())
    assert sum(subjects[s] for s in held) == round(0.25 * n_pos)
    assert sum(not subjects[s] for s in held) == round(0.25 * (n - n_pos))
    assert held_out_split(subjects, by="subject", fraction=0.25, seed=seed) == held


def test_held_out_by_variant_takes_whole_subjects():
    subjects = {"a": True, "b": False, "c": True}
    variants = {"a": {"healthy"}, "b": {"healthy", "fibrosis"}, "c": {"emphysema"}}
    held = held_out_split(subjects, by="variant", subject_variants=variants, test_variants=["fibrosis", "emphysema"])
    assert held == {"b", "c"}
    with pytest.raises(InputError, match=r"no scan has variant\(s\) \['unknown'\]"):
        held_out_split(subjects, by="variant", subject_variants=variants, test_variants=["unknown"])
    assert held_out_split(subjects, by="none") == set()
