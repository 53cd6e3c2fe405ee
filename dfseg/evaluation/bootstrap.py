"""Bootstrap confidence intervals that resample subjects, and paired model comparisons.

Scans of one mouse are correlated, and voxels or patches of one scan even more so; resampling them
would give intervals that are far too narrow. Here the unit of resampling is the subject: a
resample draws subjects with replacement and takes all of their records. The metric is any function
of a list of records (per-scan dicts, numbers, ...), so one routine serves every metric.
Percentile intervals; resamples on which the metric is undefined (``nan``, e.g. an AUROC of a
resample with no positive) are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

Metric = Callable[[Sequence[Any]], float]


def subject_groups(n: int, groups: Sequence[Hashable] | None) -> list[np.ndarray]:
    """Record indices per subject, in order of first appearance."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} records")
    index: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    return [np.asarray(v) for v in index.values()]


def resample_subjects(groups: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Record indices of one resample: subjects drawn with replacement, all records of each."""
    pick = rng.integers(0, len(groups), size=len(groups))
    return np.concatenate([groups[k] for k in pick])


def bootstrap_ci(records: Sequence[Any], metric: Metric, *, groups: Sequence[Hashable] | None = None,
                 n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, float]:
    """Point estimate and percentile bootstrap CI of ``metric(records)``, resampling subjects.

    Args:
        records: per-scan (or per-subject) records.
        metric: function of a list of records returning a float (``nan`` when undefined).
        groups: subject id of each record (``None``: each record is its own subject).
        n_boot: number of bootstrap resamples (0: no interval).
        seed: seed of ``numpy.random.default_rng``.
        confidence: interval coverage, e.g. 0.95.

    Returns:
        ``{"estimate", "ci_low", "ci_high", "n_boot", "n_valid"}`` (bounds ``nan`` without valid resamples).
    """
    records = list(records)
    estimate = float(metric(records))
    grp = subject_groups(len(records), groups)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot if grp else 0):
        idx = resample_subjects(grp, rng)
        values.append(float(metric([records[i] for i in idx])))
    vals = np.asarray(values, float)
    vals = vals[np.isfinite(vals)]
    lo, hi = _percentiles(vals, confidence)
    return {"estimate": estimate, "ci_low": lo, "ci_high": hi, "n_boot": int(n_boot), "n_valid": int(vals.size)}


def _percentiles(vals: np.ndarray, confidence: float) -> tuple[float, float]:
    if vals.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(vals, [tail, 100.0 - tail])
    return float(lo), float(hi)


def paired_bootstrap(records_a: Sequence[Any], records_b: Sequence[Any], metric: Metric, *,
                     groups: Sequence[Hashable] | None = None, n_boot: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float]:
    """Paired bootstrap of ``metric(a) - metric(b)`` for two models scored on the same subjects.

    Each resample draws one set of subjects and evaluates both models on it, so subject-to-subject
    variation cancels in the difference. The two-sided p-value is
    ``min(1, 2 * min(P(diff <= 0), P(diff >= 0)))`` over the valid resamples (identical models give
    difference 0 and p = 1).

    Args:
        records_a: records of model A, aligned with ``records_b`` (same scans, same order).
        records_b: records of model B.
        metric: function of a list of records returning a float.
        groups: subject id of each record position (``None``: each position is its own subject).
        n_boot: number of resamples.
        seed: seed of ``numpy.random.default_rng``.
        confidence: interval coverage.

    Returns:
        ``{"estimate_a", "estimate_b", "difference", "ci_low", "ci_high", "p_value", "n_boot", "n_valid"}``.
    """
    records_a, records_b = list(records_a), list(records_b)
    if len(records_a) != len(records_b):
        raise ValueError(f"paired comparison needs the same records: {len(records_a)} vs {len(records_b)}")
    est_a, est_b = float(metric(records_a)), float(metric(records_b))
    grp = subject_groups(len(records_a), groups)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot if grp else 0):
        idx = resample_subjects(grp, rng)
        diffs.append(float(metric([records_a[i] for i in idx])) - float(metric([records_b[i] for i in idx])))
    d = np.asarray(diffs, float)
    d = d[np.isfinite(d)]
    lo, hi = _percentiles(d, confidence)
    p = float(min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0)))) if d.size else float("nan")
    return {"estimate_a": est_a, "estimate_b": est_b, "difference": est_a - est_b, "ci_low": lo, "ci_high": hi,
            "p_value": p, "n_boot": int(n_boot), "n_valid": int(d.size)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, at most 1) of a family of tests.

    The i-th smallest of m p-values is multiplied by ``m - i`` (i from 0) and the running maximum
    is kept, so rejecting where the adjusted p < alpha controls the family-wise error rate at alpha.
    ``nan`` entries (undefined tests) stay ``nan`` and do not count in m.
    """
    p = np.asarray(p_values, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[k]))
        out[k] = running
    return out.tolist()


def p_resolution(n_valid: int) -> float:
    """Smallest two-sided p-value a bootstrap of ``n_valid`` resamples can tell from 0: ``2 / n_valid``."""
    return 2.0 / n_valid if n_valid > 0 else float("nan")


def format_p(p: float | None, n_valid: int, digits: int = 3) -> str:
    """A bootstrap p-value at the resolution its resamples support: ``"< 0.002"`` when no resample
    (of ``n_valid``) fell on the other side of 0, otherwise the value; ``"n/a"`` when undefined."""
    if p is None or p != p:
        return "n/a"
    floor = p_resolution(n_valid)
    if p < floor:
        return f"< {floor:.{digits}g}"
    return f"{p:.{digits}f}"
