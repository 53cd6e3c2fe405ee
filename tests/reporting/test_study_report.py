"""study.md of dfseg study: comparison table, ROC figure link, Dey et al.'s numbers."""

from __future__ import annotations

from pathlib import Path

from dfseg.reporting.comparison import DEY_2025, render_study


def test_render_study_links_figure_and_quotes_dey():
    comparison = {"metrics": {}, "models": [], "results": {}, "n_scans": 6, "n_subjects": 3, "paired": [],
                  "n_bootstrap": 10, "seed": 0}
    text = render_study(comparison, geometry="ct", manifest="m.json", bundle="b", roc_png=Path("/x/roc.png"))
    assert text.startswith("# Modality study (ct)") and "![ROC by modality](roc.png)" in text
    assert "6 scans of 3 subjects" in text
    assert all(f"| {m} | {s:.1%} | {p:.1%} | n/a | n/a | n/a |" in text for m, (s, p) in DEY_2025.items())


def test_study_puts_dfseg_beside_dey_and_lists_each_seed():
    def ci(v, per):
        return {"estimate": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "per_seed": per}
    names = ["patch_sensitivity", "patch_specificity", "patch_sens_at_dey_spec"]
    comparison = {"metrics": names, "models": ["combined"], "n_seeds": {"combined": 3}, "paired": [],
                  "results": {"combined": {"patch_sensitivity": ci(0.8, [0.7, 0.8, 0.9]),
                                           "patch_specificity": ci(0.95, [0.95, 0.95, 0.95]),
                                           "patch_sens_at_dey_spec": ci(0.6, [0.5, 0.6, 0.7])}},
                  "n_scans": 40, "n_subjects": 40, "n_bootstrap": 10, "seed": 0}
    text = render_study(comparison, geometry="radiograph", manifest="m.json", bundle="b", roc_png="roc.png")
    assert "| combined | 79.6% | 97.6% | 0.800 | 0.950 | 0.600 |" in text
    assert "| attn | 51.0% | 92.9% | n/a | n/a | n/a |" in text
    assert "mean over the training seeds (combined: 3)" in text
    assert "| combined | sensitivity | 0.700, 0.800, 0.900 | 0.200 |" in text
