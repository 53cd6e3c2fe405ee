"""report.md rendering from a metrics document."""

from __future__ import annotations

from dfseg.reporting.report import fmt_ci, render_report, write_report

DOC = {
    "predictions": "/p", "manifest": {"path": "/m.json", "sha256": "c" * 64}, "split": "test", "n_scans": 2,
    "n_subjects": 2, "n_lesions": 1, "threshold": 0.5, "n_bootstrap": 10, "seed": 0, "confidence": 0.95,
    "metrics": {"volume_auroc": {"estimate": 0.75, "ci_low": 0.5, "ci_high": 1.0},
                "ece": {"estimate": None, "ci_low": None, "ci_high": None}},
    "froc": {"fp_rates": [0.125, 8.0], "sensitivities": [0.25, 1.0], "cpm": 0.625},
    "confusion": {"lesion": {"tp": 1, "fp": 2, "fn": 3, "tn": None}},
    "rules": {"matching": "RULE TEXT"},
    "figures": {"roc": "figures/roc.png"},
}


def test_render_report(tmp_path):
    md = render_report(DOC)
    assert "| AUROC | 0.750 | [0.500, 1.000] |" in md
    assert "| expected calibration error | – | – |" in md
    assert "| sensitivity | 0.250 | 1.000 | 0.625 |" in md
    assert "| lesion | 1 | 2 | 3 | n/a |" in md
    assert "**Lesion matching rule.** RULE TEXT" in md
    assert "![ROC](figures/roc.png)" in md
    assert "c" * 64 in md
    path = write_report(DOC, tmp_path / "report.md")
    assert path.read_text() == md


def test_fmt_ci():
    assert fmt_ci({"estimate": 0.12345, "ci_low": 0.1, "ci_high": 0.2}) == ("0.123", "[0.100, 0.200]")
    assert fmt_ci(None) == ("–", "–")
