"""Subject bootstrap: zero width for constants, nominal coverage, paired comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from dfseg.evaluation.bootstrap import bootstrap_ci, paired_bootstrap


def _mean(values):
    return float(np.mean(values))


def test_constant_metric_has_zero_width():
    ci = bootstrap_ci([0.7] * 12, _mean, n_boot=200, seed=1)
    assert ci["estimate"] == ci["ci_low"] == ci["ci_high"] == pytest.approx(0.7)
    assert ci["n_valid"] == 200


def test_same_seed_same_interval_and_seed_matters():
    rng = np.random.default_rng(0)
    x = list(rng.normal(size=20))
    a, b = bootstrap_ci(x, _mean, n_boot=300, seed=5), bootstrap_ci(x, _mean, n_boot=300, seed=5)
    c = bootstrap_ci(x, _mean, n_boot=300, seed=6)
    assert a == b
    assert a["ci_low"] != c["ci_low"]


def test_coverage_of_normal_mean_is_nominal():
    # 200 simulated cohorts of 40 subjects with per-subject values ~ N(1, 1): the 95% interval of the
    # mean should cover 1 in about 95% of them (percentile bootstrap runs slightly under nominal).
    rng = np.random.default_rng(2024)
    covered = 0
    for rep in range(200):
        x = rng.normal(1.0, 1.0, size=40)
        ci = bootstrap_ci(list(x), _mean, n_boot=300, seed=rep)
        covered += ci["ci_low"] <= 1.0 <= ci["ci_high"]
    assert 0.90 <= covered / 200 <= 0.99


def test_resampling_unit_is_the_subject():
    # 8 subjects with 5 identical scans each: resampling subjects gives the 8-subject interval; treating
    # the 40 scans as independent would make it about sqrt(5) times narrower.
    rng = np.random.default_rng(1)
    per_subject = rng.normal(size=8)
    values = list(np.repeat(per_subject, 5))
    groups = list(np.repeat(np.arange(8), 5))
    by_subject = bootstrap_ci(values, _mean, groups=groups, n_boot=1000, seed=0)
    by_scan = bootstrap_ci(values, _mean, n_boot=1000, seed=0)
    subjects_only = bootstrap_ci(list(per_subject), _mean, n_boot=1000, seed=0)
    width = lambda c: c["ci_high"] - c["ci_low"]  # noqa: E731
    assert width(by_subject) == pytest.approx(width(subjects_only), rel=1e-9)
    assert width(by_scan) < 0.6 * width(by_subject)


def test_undefined_resamples_are_dropped():
    # metric undefined when the resample has fewer than 2 distinct subjects
    values = [0.0, 1.0, 2.0]
    ci = bootstrap_ci(values, lambda v: float(np.mean(v)) if len(set(v)) > 1 else float("nan"), n_boot=300, seed=0)
    assert 0 < ci["n_valid"] < 300


def test_paired_identical_models():
    rng = np.random.default_rng(3)
    x = list(rng.random(15))
    out = paired_bootstrap(x, x, _mean, n_boot=200, seed=0)
    assert out["difference"] == 0.0
    assert out["ci_low"] == out["ci_high"] == 0.0
    assert out["p_value"] == 1.0


def test_paired_clear_difference_is_significant_and_signed():
    rng = np.random.default_rng(4)
    b = rng.normal(size=30)
    a = b + 0.5 + rng.normal(scale=0.1, size=30)  # A is better on every subject
    out = paired_bootstrap(list(a), list(b), _mean, n_boot=500, seed=0)
    assert out["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert 0.4 < out["ci_low"] < out["ci_high"] < 0.6
    assert out["p_value"] < 0.01
    swapped = paired_bootstrap(list(b), list(a), _mean, n_boot=500, seed=0)
    assert swapped["ci_high"] < 0 and swapped["p_value"] < 0.01
