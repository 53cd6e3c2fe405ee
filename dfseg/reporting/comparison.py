"""Dey-style comparison table of models (one per input modality) with CIs and paired differences.

Input: the dict of :func:`dfseg.evaluation.compare.compare_models`. The first table mirrors Dey et
al. 2025 (sensitivity, specificity, AUROC, sensitivity at 95% and 97.6% specificity, Dice, per patch)
with 95% subject-bootstrap CIs; the second lists every paired difference with its CI, its p-value
raw and Holm-adjusted over the table, and says whether it is significant (adjusted p < alpha), in
either direction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dfseg.evaluation.bootstrap import format_p
from dfseg.evaluation.records import DEY_COLUMNS
from dfseg.reporting.report import fmt

#: Column labels for metric keys beyond the Dey columns.
LABELS = dict(DEY_COLUMNS)
#: Dey, Meyer, Taqi 2025 (arXiv 2510.27679), per-patch (sensitivity, specificity) on 2D radiographs
#: (docs/physics.md section 8)
DEY_2025 = {"attn": (0.510, 0.929), "df": (0.837, 0.905), "combined": (0.796, 0.976)}


def render_comparison_table(comparison: Mapping, *, alpha: float = 0.05, digits: int = 3) -> str:
    """Markdown tables: metrics per model with CIs, then paired differences with CI and p-value.

    Args:
        comparison: result of :func:`dfseg.evaluation.compare.compare_models`.
        alpha: family-wise significance level: a difference is significant when its Holm-adjusted
            p-value (``p_holm``) is below it.
        digits: decimals.
    """
    names = list(comparison["metrics"])
    header = "| model | " + " | ".join(LABELS.get(n, n) for n in names) + " |"
    lines = [header, "|---|" + "---|" * len(names)]
    for model in comparison["models"]:
        cells = []
        for n in names:
            r = comparison["results"][model][n]
            ci = "" if r.get("ci_low") is None or r["ci_low"] != r["ci_low"] else \
                f" [{fmt(r['ci_low'], digits)}, {fmt(r['ci_high'], digits)}]"
            cells.append(f"{fmt(r['estimate'], digits)}{ci}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    seeds = comparison.get("n_seeds") or {}
    several = any(n > 1 for n in seeds.values())
    lines += ["", f"Per-patch detection at threshold {comparison.get('threshold', 0.5):g}; Dice per scan with "
              f"tumour. {comparison['n_scans']} scans of {comparison['n_subjects']} subjects; 95% CIs from "
              f"{comparison['n_bootstrap']} subject-bootstrap resamples (seed {comparison['seed']})."
              + (" Each value is the mean over the training seeds (" + ", ".join(f"{k}: {v}" for k, v in seeds.items())
                 + "), recomputed on every resample; the seeds' own values follow." if several else ""), ""]
    if several:
        lines += ["| model | metric | per seed | seed range |", "|---|---|---|---:|"]
        for model in comparison["models"]:
            for n in names:
                per = comparison["results"][model][n].get("per_seed") or []
                finite = [v for v in per if v == v]
                spread = fmt(max(finite) - min(finite), digits) if finite else "n/a"
                lines.append(f"| {model} | {LABELS.get(n, n)} | {', '.join(fmt(v, digits) for v in per)} | {spread} |")
        lines.append("")
    if comparison.get("paired"):
        lines += [f"Paired differences (row model minus column model) on the same resampled subjects; p is "
                  f"two-sided, Holm-adjusted over the {len(comparison['paired'])} comparisons of this table; "
                  f"a difference is called significant when the adjusted p < {alpha:g}. The CIs are not "
                  "adjusted. A p-value below 2 / (resamples) is shown as < that bound.", "",
                  "| comparison | metric | difference | 95% CI | p | p (Holm) | significant |",
                  "|---|---|---:|---|---:|---:|---|"]
        for p in comparison["paired"]:
            lo, hi = p.get("ci_low"), p.get("ci_high")
            adjusted = p.get("p_holm", p.get("p_value"))
            sig = adjusted is not None and adjusted == adjusted and adjusted < alpha and p["difference"] != 0
            direction = ("yes, " + (f"{p['a']} higher" if p["difference"] > 0 else f"{p['b']} higher")) if sig else "no"
            n_valid = int(p.get("n_valid", p.get("n_boot", 0)) or 0)
            lines.append(f"| {p['a']} - {p['b']} | {LABELS.get(p['metric'], p['metric'])} | "
                         f"{fmt(p['difference'], digits)} | [{fmt(lo, digits)}, {fmt(hi, digits)}] | "
                         f"{format_p(p.get('p_value'), n_valid)} | {format_p(adjusted, n_valid)} | {direction} |")
        lines.append("")
    return "\n".join(lines)


def side_by_side(comparison: Mapping, model: str, digits: int = 3) -> str:
    """dfseg's patch sensitivity, specificity and sensitivity at 97.6% specificity for ``model`` as
    table cells (``n/a`` where the study did not train that input or compute that metric)."""
    results = comparison.get("results", {}).get(model, {})
    cells = []
    for name in ("patch_sensitivity", "patch_specificity", "patch_sens_at_dey_spec"):
        r = results.get(name)
        cells.append(" n/a |" if r is None else f" {fmt(r['estimate'], digits)} |")
    return "".join(cells)


def render_study(comparison: Mapping, *, geometry: str, manifest: str | os.PathLike, bundle: str,
                 roc_png: str | os.PathLike) -> str:
    """``study.md`` of ``dfseg study``: the comparison table, the ROC figure and Dey et al.'s numbers."""
    dey = "\n".join(f"| {m} | {s:.1%} | {p:.1%} |{side_by_side(comparison, m)}" for m, (s, p) in DEY_2025.items())
    return (f"# Modality study ({geometry})\n\nBundle `{bundle}`, manifest `{manifest}`, "
            f"{comparison['n_scans']} scans of {comparison['n_subjects']} subjects.\n\n## dfseg\n\n"
            f"{render_comparison_table(comparison)}\n\n"
            f"![ROC by modality]({Path(roc_png).name})\n\n## Dey et al. 2025 (2D radiographs, per patch)\n\n"
            "| input | sensitivity | specificity | dfseg sensitivity | dfseg specificity | dfseg sens@97.6spec |\n"
            f"|---|---|---|---|---|---|\n{dey}\n\n"
            "Dey et al. used real Talbot-Lau radiographs of mouse lungs with synthetic tumours; dfseg's numbers "
            "come from simulated data, so agreement in direction, not in value, is what a comparison can show.\n")
