"""report.md rendering from a metrics document."""

from __future__ import annotations

from dfseg.reporting.report import fmt_ci, render_report, write_report

DOC = {
    "predictions": "/p", "manifest": {"path": "/m.json", "sha256": "c" * 64}, "split": "test", "n_scans": 2,
    "n_subjects": 2, "n_lesions": 1, "threshold": 0.5, "n_bootstrap": 10, "seed": 0, "confidence": 0.95,
    "metrics": {"volume_auroc": {"estimate": 0.75, "ci_low": 0.5, "ci_high": 1.0},
                "ece": {"estimate": None, "ci_low": None, "ci_high": None},
                "volume_brier": {"estimate": 0.01, "ci_low": 0.0, "ci_high": 0.02}},
    "froc": {"fp_rates": [0.125, 8.0], "sensitivities": [0.25, 1.0], "cpm": 0.625},
    "volume_reliability": {"mean_prob": [0.1, None], "frac_positive": [0.0, None], "count": [2, 0]},
    "confusion": {"lesion": {"tp": 1, "fp": 2, "fn": 3, "tn": None}},
    "rules": {"matching": "RULE TEXT"},
    "figures": {"roc": "figures/roc.png"},
}


def test_render_report(tmp_path):
    md = render_report(DOC)
    assert "| AUROC | 0.750 | [0.500, 1.000] |" in md
    assert "| expected calibration error, lung voxels | – | – |" in md
    assert "| Brier score, per-volume presence score | 0.010 | [0.000, 0.020] |" in md
    assert "| [0.0, 0.5] | 2 | 0.100 | 0.000 |" in md and "| (0.5, 1.0] | 0 | – | – |" in md
    assert "| sensitivity | 0.250 | 1.000 | 0.625 |" in md
    assert "Not reached" not in md
    assert "| lesion | 1 | 2 | 3 | n/a |" in md
    assert "**Lesion matching rule.** RULE TEXT" in md
    assert "![ROC](figures/roc.png)" in md
    assert "c" * 64 in md
    path = write_report(DOC, tmp_path / "report.md")
    assert path.read_text() == md


def test_fmt_ci():
    assert fmt_ci({"estimate": 0.12345, "ci_low": 0.1, "ci_high": 0.2}) == ("0.123", "[0.100, 0.200]")
    assert fmt_ci(None) == ("–", "–")


def test_report_names_the_froc_points_not_reached_and_the_threshold_point():
    froc = {"fp_rates": [0.125, 1.0, 8.0], "sensitivities": [0.25, 0.5, 0.5], "cpm": 0.4167,
            "reached": [True, True, False], "curve_fp_per_scan": [0.0, 0.5, 2.5],
            "operating_point": {"threshold": 0.5, "fp_per_scan": 0.5, "sensitivity": 0.5}}
    md = render_report({**DOC, "froc": froc})
    assert "| sensitivity | 0.250 | 0.500 | ≥ 0.500 | ≥ 0.417 |" in md
    assert "Not reached: 8 FP per scan. The candidates end at 2.500 FP per scan" in md
    assert "At the threshold 0.5 the FROC passes through 0.500 FP per scan at sensitivity 0.500" in md
