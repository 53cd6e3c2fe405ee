"""compare_models + the Dey-style table and multi-model ROC figure (the API dfseg study builds on)."""

from __future__ import annotations

import copy

import matplotlib.image as mpimg
import numpy as np
import pytest

from dfseg.errors import InputError
from dfseg.evaluation.compare import compare_models
from dfseg.evaluation.plots import plot_roc_multi
from dfseg.evaluation.records import score_scan
from dfseg.reporting.comparison import render_comparison_table


def _records(good: bool, n: int = 6) -> list[dict]:
    """n scans of n subjects; odd scans hold a lesion; the good model finds it, the bad one does not."""
    out = []
    for i in range(n):
        label = np.zeros((16, 16, 16), np.uint8)
        lung = np.ones_like(label)
        prob = np.full(label.shape, 0.1, np.float32)
        if i % 2:
            label[5:9, 5:9, 5:9] = 1
            prob[5:9, 5:9, 5:9] = 0.9 if good else 0.2
        out.append(score_scan(prob, label, lung, (0.1, 0.1, 0.1), scan_id=f"s{i}", subject_id=f"m{i}"))
    return out


def test_identical_models_have_zero_difference():
    recs = _records(True)
    cmp = compare_models({"attn": recs, "df": copy.deepcopy(recs)}, n_bootstrap=50, seed=0)
    assert cmp["models"] == ["attn", "df"]
    for p in cmp["paired"]:
        if p["difference"] == p["difference"]:
            assert p["difference"] == 0.0 and p["p_value"] == 1.0


def test_better_model_wins_and_table_says_so(tmp_path):
    cmp = compare_models({"df": _records(True), "attn": _records(False)}, n_bootstrap=200, seed=0)
    assert cmp["results"]["df"]["patch_sensitivity"]["estimate"] == pytest.approx(1.0)
    assert cmp["results"]["attn"]["patch_sensitivity"]["estimate"] == pytest.approx(0.0)
    sens = next(p for p in cmp["paired"] if p["metric"] == "patch_sensitivity")
    assert sens["difference"] == pytest.approx(1.0) and sens["p_value"] == 0.0
    table = render_comparison_table(cmp)
    assert "| df |" in table and "| attn |" in table and "sens@95spec" in table
    assert "yes, df higher" in table
    path = plot_roc_multi(cmp, tmp_path / "roc_all.png")
    assert mpimg.imread(path).shape[2] == 4


def test_models_on_different_scans_are_refused():
    with pytest.raises(InputError, match="different scans"):
        compare_models({"a": _records(True, 4), "b": _records(True, 6)}, n_bootstrap=5)


def test_several_seeds_give_the_seed_mean_with_each_seed_listed():
    good, bad = _records(True), _records(False)
    cmp = compare_models({"combined": [good, bad, good], "attn": [bad, bad, bad]}, n_bootstrap=100, seed=0)
    sens = cmp["results"]["combined"]["patch_sensitivity"]
    assert sens["per_seed"] == pytest.approx([1.0, 0.0, 1.0])
    assert sens["estimate"] == pytest.approx(2 / 3)
    assert sens["ci_low"] == pytest.approx(2 / 3) and sens["ci_high"] == pytest.approx(2 / 3)  # resamples without a lesion are dropped
    assert cmp["n_seeds"] == {"combined": 3, "attn": 3}
    diff = next(p for p in cmp["paired"] if p["metric"] == "patch_sensitivity")
    assert diff["difference"] == pytest.approx(2 / 3)
    # pooled ROC over the seeds' patches: every seed still ranks its lesion (0.9 or 0.2) above 0.1
    assert cmp["roc"]["combined"]["auroc"] == pytest.approx(1.0)


def test_one_seed_as_a_list_equals_the_plain_record_list():
    recs = _records(True)
    a = compare_models({"df": recs, "attn": _records(False)}, n_bootstrap=50, seed=1)
    b = compare_models({"df": [recs], "attn": [_records(False)]}, n_bootstrap=50, seed=1)
    assert a["results"] == b["results"] and a["paired"] == b["paired"]


def test_a_seed_scored_on_other_scans_is_named():
    with pytest.raises(InputError, match=r"b \(run 1\).*different scans"):
        compare_models({"a": [_records(True, 4)] * 2, "b": [_records(True, 4), _records(True, 6)]}, n_bootstrap=5)


def test_holm_adjustment_in_numbers():
    from dfseg.evaluation.bootstrap import holm
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([float("nan"), 0.02, 0.04])  # nan is not a test: m = 2
    assert np.isnan(out[0]) and out[1:] == pytest.approx([0.04, 0.04])


def test_p_values_are_printed_at_the_resolution_of_the_resamples():
    from dfseg.evaluation.bootstrap import format_p
    assert format_p(0.0, 1000) == "< 0.002"
    assert format_p(0.002, 1000) == "0.002"
    assert format_p(0.0, 200) == "< 0.01"
    assert format_p(float("nan"), 1000) == "n/a"


def test_table_calls_significant_only_after_holm():
    from dfseg.evaluation.bootstrap import format_p
    cmp = compare_models({"df": _records(True), "attn": _records(False)}, n_bootstrap=200, seed=0)
    sens = next(p for p in cmp["paired"] if p["metric"] == "patch_sensitivity")
    assert sens["p_value"] == 0.0 and sens["p_holm"] == 0.0
    assert all(p["p_holm"] >= p["p_value"] for p in cmp["paired"] if p["p_value"] == p["p_value"])
    # a p of 0.03 in a family of 6 tests (Holm: at least 0.03 x 1, here 0.03 x 6 if it is the smallest)
    fake = copy.deepcopy(cmp)
    fake["paired"] = [dict(sens, p_value=0.03, p_holm=0.18)]
    row = next(line for line in render_comparison_table(fake).splitlines() if line.startswith("| df - attn"))
    assert row.endswith("| 0.030 | 0.180 | no |")
    bound = format_p(0.0, sens["n_valid"])
    assert bound == f"< {2 / sens['n_valid']:.3g}"
    table = render_comparison_table(cmp)
    assert f"| {bound} | {bound} | yes, df higher |" in table and "Holm-adjusted over the" in table


def test_study_roc_has_a_subject_bootstrap_band_and_counts(tmp_path):
    cmp = compare_models({"df": [_records(True), _records(True)], "attn": _records(False)}, n_bootstrap=50, seed=0)
    band, counts = cmp["roc"]["df"]["band"], cmp["roc"]["df"]["counts"]
    # perfect separation in every resample: the band is TPR 1 from the first grid point on
    assert band["tpr_low"][1:] == pytest.approx([1.0] * (len(band["fpr"]) - 1))
    assert counts["subjects"] == 6 and counts["lesions"] == 3
    labels = np.concatenate([r["patch_labels"] for r in _records(True)])
    assert (counts["positives"], counts["negatives"]) == (int((labels == 1).sum()), int((labels == 0).sum()))
    path = plot_roc_multi(cmp, tmp_path / "roc.png")
    assert mpimg.imread(path).shape[2] == 4
