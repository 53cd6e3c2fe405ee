"""``report.md`` of an evaluation: metric tables with CIs, the rules used, figure links, data hash.

:func:`render_report` turns the ``metrics.json`` document of an evaluation
(:func:`dfseg.reporting.evaluation.write_evaluation`) into Markdown; :func:`write_report` writes it
atomically. Figure links are relative to the report's folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dfseg.io import atomic_write

#: Report rows: (metric key in metrics.json, label shown).
SECTIONS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Per-volume lesion presence", (
        ("volume_auroc", "AUROC"), ("volume_sens_at_95spec", "sensitivity at 95% specificity"),
        ("volume_sensitivity", "sensitivity at threshold"), ("volume_specificity", "specificity at threshold"),
        ("volume_average_precision", "average precision"))),
    ("Per-patch lesion presence", (
        ("patch_auroc", "AUROC"), ("patch_sens_at_95spec", "sensitivity at 95% specificity"),
        ("patch_sensitivity", "sensitivity at threshold"), ("patch_specificity", "specificity at threshold"),
        ("patch_average_precision", "average precision"))),
    ("Lesion-wise detection", (
        ("lesion_sensitivity", "lesion sensitivity"), ("lesion_precision", "component precision"),
        ("lesion_fp_per_scan", "false-positive components per scan"), ("froc_cpm", "FROC CPM"),
        ("lesion_sensitivity_0.5-1mm", "sensitivity, 0.5-1 mm"), ("lesion_sensitivity_1-2mm", "sensitivity, 1-2 mm"),
        ("lesion_sensitivity_2-3mm", "sensitivity, 2-3 mm"))),
    ("Segmentation", (
        ("dice", "Dice (mean over scans with tumour)"), ("surface_dice", "surface Dice (mean over scans with tumour)"),
        ("lesion_dice", "per-lesion Dice"), ("lesion_dice_0.5-1mm", "per-lesion Dice, 0.5-1 mm"),
        ("lesion_dice_1-2mm", "per-lesion Dice, 1-2 mm"), ("lesion_dice_2-3mm", "per-lesion Dice, 2-3 mm"))),
    ("Calibration", (
        ("brier", "Brier score, lung voxels"), ("ece", "expected calibration error, lung voxels"),
        ("volume_brier", "Brier score, per-volume presence score"),
        ("volume_ece", "expected calibration error, per-volume presence score"))),
)

FIGURE_TITLES = {"roc": "ROC", "pr": "Precision-recall", "froc": "FROC", "reliability": "Reliability curve, lung voxels",
                 "volume_reliability": "Reliability curve, per-volume presence score",
                 "confusion": "Confusion matrices", "lesion_montage": "Lesion montage"}


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table; ``None``/NaN as an en dash."""
    if value is None or value != value:
        return "–"
    return f"{value:.{digits}f}"


def fmt_ci(ci: Mapping[str, float | None] | None, digits: int = 3) -> tuple[str, str]:
    """``(estimate, "[low, high]")`` of a bootstrap result."""
    if not ci:
        return "–", "–"
    if ci.get("ci_low") is None or ci.get("ci_high") is None:
        return fmt(ci.get("estimate"), digits), "–"
    return fmt(ci.get("estimate"), digits), f"[{fmt(ci['ci_low'], digits)}, {fmt(ci['ci_high'], digits)}]"


def _confusion_table(confusion: Mapping[str, Mapping[str, int | None]]) -> list[str]:
    lines = ["| level | TP | FP | FN | TN |", "|---|---:|---:|---:|---:|"]
    for level, c in confusion.items():
        cells = ["n/a" if c.get(k) is None else f"{c[k]:,}" for k in ("tp", "fp", "fn", "tn")]
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return lines


def _froc_section(froc: Mapping) -> list[str]:
    """LUNA16 operating points (``>=`` marks a lower bound at a point not reached) and the threshold's point."""
    if not froc:
        return []
    reached = froc.get("reached") or [True] * len(froc["fp_rates"])
    cells = [fmt(s) if ok else f"≥ {fmt(s)}" for s, ok in zip(froc["sensitivities"], reached)]
    cpm = fmt(froc.get("cpm")) if all(reached) else f"≥ {fmt(froc.get('cpm'))}"
    lines = ["## FROC operating points (LUNA16)", "",
             "| FP per scan | " + " | ".join(f"{r:g}" for r in froc["fp_rates"]) + " | CPM |",
             "|---|" + "---:|" * (len(froc["fp_rates"]) + 1),
             "| sensitivity | " + " | ".join(cells) + f" | {cpm} |", ""]
    unreached = [r for r, ok in zip(froc["fp_rates"], reached) if not ok]
    if unreached:
        end = (froc.get("curve_fp_per_scan") or [0.0])[-1]
        lines += [f"Not reached: {', '.join(f'{r:g}' for r in unreached)} FP per scan. The candidates end at "
                  f"{fmt(end)} FP per scan; the sensitivity there (≥) is a lower bound.", ""]
    op = froc.get("operating_point")
    if op:
        lines += [f"At the threshold {op['threshold']:g} the FROC passes through {fmt(op['fp_per_scan'])} FP per "
                  f"scan at sensitivity {fmt(op['sensitivity'])}: the lesion sensitivity and false-positive "
                  "components per scan of the matching rule.", ""]
    return lines


def _volume_reliability_section(rel: Mapping) -> list[str]:
    """Per-volume reliability bins: volumes, mean presence score and tumour fraction of each."""
    counts = rel.get("count") or []
    if not counts:
        return []
    edges = [i / len(counts) for i in range(len(counts) + 1)]
    lines = ["## Per-volume reliability (presence score)", "",
             "| score bin | volumes | mean score | fraction with tumour |", "|---|---:|---:|---:|"]
    for i, n in enumerate(counts):
        # MONAI's bins hold their upper edge; the first also holds 0
        low = f"[{edges[i]:.1f}" if i == 0 else f"({edges[i]:.1f}"
        lines.append(f"| {low}, {edges[i + 1]:.1f}] | {int(n)} | {fmt(rel['mean_prob'][i])} | "
                     f"{fmt(rel['frac_positive'][i])} |")
    return lines + [""]


def render_report(doc: Mapping) -> str:
    """Markdown report of a ``metrics.json`` document."""
    metrics = doc.get("metrics", {})
    manifest = doc.get("manifest", {})
    conf = int(round(100 * doc.get("confidence", 0.95)))
    lines = [
        "# dfseg evaluation report", "",
        f"- predictions: `{doc.get('predictions')}`",
        f"- manifest: `{manifest.get('path')}` (sha256 `{manifest.get('sha256')}`)",
        f"- split: `{doc.get('split')}`; scans: {doc.get('n_scans')}, subjects: {doc.get('n_subjects')}, "
        f"reference lesions: {doc.get('n_lesions')}",
        f"- threshold: {doc.get('threshold')}; bootstrap: {doc.get('n_bootstrap')} resamples of subjects, "
        f"seed {doc.get('seed')}",
        f"- dfseg {doc.get('dfseg_version')}", "",
    ]
    for title, rows in SECTIONS:
        lines += [f"## {title}", "", f"| metric | estimate | {conf}% CI |", "|---|---:|---|"]
        for key, label in rows:
            if key in metrics:
                est, ci = fmt_ci(metrics[key])
                lines.append(f"| {label} | {est} | {ci} |")
        lines.append("")
    lines += _froc_section(doc.get("froc") or {})
    lines += _volume_reliability_section(doc.get("volume_reliability") or {})
    bins = doc.get("size_bins") or {}
    if bins:
        lines += ["## Lesions by size (equivalent diameter)", "", "| size bin (mm) | lesions | detected |",
                  "|---|---:|---:|"]
        lines += [f"| {name} | {b['n_lesions']} | {b['n_detected']} |" for name, b in bins.items()]
        lines.append("")
    if doc.get("confusion"):
        lines += ["## Confusion matrices", "", *_confusion_table(doc["confusion"]),
                  "", "Lesion level: TP = detected lesions, FN = missed lesions, FP = false-positive components "
                  "(true negatives are undefined for lesions).", ""]
    rules = doc.get("rules") or {}
    if rules:
        lines += ["## Rules", ""]
        names = {"lesion": "What counts as a lesion", "matching": "Lesion matching rule", "presence": "Presence scores", "froc": "FROC",
                 "calibration": "Calibration", "bootstrap": "Confidence intervals", "roc_bands": "ROC bands"}
        lines += [f"- **{names.get(k, k)}.** {v}" for k, v in rules.items()]
        lines.append("")
    figures = doc.get("figures") or {}
    if figures:
        lines += ["## Figures", ""]
        for key, rel in figures.items():
            lines += [f"### {FIGURE_TITLES.get(key, key)}", "", f"![{FIGURE_TITLES.get(key, key)}]({rel})", ""]
    per_scan = doc.get("per_scan") or []
    if per_scan:
        lines += ["## Per scan", "", "| scan | subject | tumour | volume score | lesions | detected | FP comps | Dice | surface Dice |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for s in per_scan:
            lines.append(f"| {s['scan_id']} | {s['subject_id']} | {'yes' if s['has_tumour'] else 'no'} | "
                         f"{fmt(s['volume_score'])} | {s['n_lesions']} | {s['n_detected']} | "
                         f"{s['n_false_positive_components']} | {fmt(s['dice'])} | {fmt(s['surface_dice'])} |")
        lines.append("")
    return "\n".join(lines)


def write_report(doc: Mapping, path: str | os.PathLike) -> Path:
    """Write :func:`render_report` of ``doc`` to ``path`` atomically."""
    path = Path(path)
    with atomic_write(path, "w") as fh:
        fh.write(render_report(doc))
    return path
