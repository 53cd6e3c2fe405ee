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
    assert all(f"| {m} | {s:.1%} | {p:.1%} |" in text for m, (s, p) in DEY_2025.items())
