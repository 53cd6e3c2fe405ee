"""Figures of an evaluation, as PNG files: ROC, PR, FROC, reliability, confusion matrices, lesion montage.

Each function draws one figure from numbers (no file reading, except the montage's images, which the
caller loads) and writes it atomically. Figures are built on ``matplotlib.figure.Figure`` with the Agg
canvas, so no global pyplot state and no display is involved, and laid out by matplotlib's constrained
layout, so titles, labels and legends never overlap. Colours come from the Okabe-Ito palette, which
readers with any common colour-vision deficiency tell apart: lines cycle through
:data:`LINE_COLOURS`; overlays draw the label in :data:`LABEL_COLOUR` (solid) and the prediction in
:data:`PREDICTION_COLOUR` (dashed), never red against green.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from dfseg.io import atomic_path

DPI = 100

#: The Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design").
OKABE_ITO: dict[str, str] = {
    "orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73", "yellow": "#F0E442",
    "blue": "#0072B2", "vermillion": "#D55E00", "reddish purple": "#CC79A7", "black": "#000000",
}
#: Line colours, in order of the curves of a figure.
LINE_COLOURS: tuple[str, ...] = tuple(OKABE_ITO[k] for k in ("blue", "orange", "bluish green", "reddish purple",
                                                             "sky blue", "vermillion", "black"))
#: Overlay colours: reference label and prediction.
LABEL_COLOUR = OKABE_ITO["sky blue"]
PREDICTION_COLOUR = OKABE_ITO["orange"]


def _figure(width: float = 4.5, height: float = 4.0):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def counts_text(counts: Mapping[str, Any]) -> str:
    """``"12 subjects, 40/900 patches positive, 15 lesions"`` of :func:`dfseg.evaluation.bands.roc_counts`."""
    total = counts["positives"] + counts["negatives"]
    text = f"{counts['subjects']} subjects, {counts['positives']}/{total} {counts.get('unit', 'items')} positive"
    if counts.get("lesions") is not None:
        text += f", {counts['lesions']} lesions"
    return text


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | os.PathLike,
             title: str = "ROC", *, bands: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
             counts: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """ROC curves, one line per entry ``label -> (fpr, tpr, auroc)``, with optional bands and counts.

    Args:
        curves: ``label -> (fpr, tpr, auroc)``, the step curve of each.
        path: output PNG.
        title: figure title.
        bands: ``label -> {"fpr", "tpr_low", "tpr_high"}`` (:func:`dfseg.evaluation.bands.roc_band`),
            shaded behind the curve of the same label; labels without a band get none.
        counts: ``label -> {"subjects", "positives", "negatives", "unit"[, "lesions"]}``
            (:func:`dfseg.evaluation.bands.roc_counts`), stated in the legend.
    """
    bands, counts = bands or {}, counts or {}
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot()
    confidence = None
    for i, (label, (fpr, tpr, auc)) in enumerate(curves.items()):
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        band = bands.get(label)
        if band is not None and np.isfinite(np.asarray(band["tpr_low"], float)).all():
            ax.fill_between(band["fpr"], band["tpr_low"], band["tpr_high"], step="post", color=colour, alpha=0.25,
                            lw=0)
            confidence = band.get("confidence", 0.95)
        text = f"{label}: AUROC {auc:.3f}"
        if label in counts:
            text += f"\n{counts_text(counts[label])}"
        ax.plot(fpr, tpr, drawstyle="steps-post", color=colour, label=text)
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.axvline(0.05, color="0.8", lw=0.8, ls=":")
    if confidence is not None:
        title += f"\nshaded: pointwise {100 * confidence:.0f}% subject-bootstrap band"
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_roc_multi(comparison: Mapping[str, Any], path: str | os.PathLike, title: str = "Per-patch ROC by model",
                   bands: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
                   counts: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """ROC figure with one curve per model from :func:`dfseg.evaluation.compare.compare_models`.

    Args:
        comparison: ``{"roc": {model: {"fpr", "tpr", "auroc"[, "band", "counts"]}}, ...}``; its own
            band and counts are drawn unless ``bands`` / ``counts`` are given.
        path: output PNG.
        title: figure title.
        bands: ``model -> {"fpr", "tpr_low", "tpr_high"}`` (:func:`dfseg.evaluation.bands.roc_band`).
        counts: ``model -> {"subjects", "positives", "negatives", "unit"[, "lesions"]}``
            (:func:`dfseg.evaluation.bands.roc_counts`) for the legend.
    """
    roc = comparison["roc"]
    curves = {name: (np.asarray(c["fpr"]), np.asarray(c["tpr"]), float(c["auroc"])) for name, c in roc.items()}
    if bands is None and all("band" in c for c in roc.values()):
        bands = {name: c["band"] for name, c in roc.items()}
    if counts is None and all("counts" in c for c in roc.values()):
        counts = {name: c["counts"] for name, c in roc.items()}
    return plot_roc(curves, path, title, bands=bands, counts=counts)


def plot_pr(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | os.PathLike,
            title: str = "Precision-recall") -> Path:
    """PR curves, ``label -> (recall, precision, average_precision)``."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, (recall, precision, ap)) in enumerate(curves.items()):
        ax.plot(np.r_[0.0, recall], np.r_[precision[:1], precision] if len(precision) else [1.0],
                drawstyle="steps-post", color=LINE_COLOURS[i % len(LINE_COLOURS)], label=f"{label} (AP {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_froc(froc: Mapping[str, Any], path: str | os.PathLike, title: str = "FROC") -> Path:
    """FROC step curve on a log FP axis, the LUNA16 operating points, the CPM and the threshold's point.

    Operating points the candidates do not reach (``froc["reached"]``) are drawn hollow: their
    sensitivity is a lower bound; the curve is not drawn past its last point.
    """
    fig = _figure(5.0, 4.2)
    ax = fig.add_subplot()
    fp = np.asarray(froc["curve_fp_per_scan"], float)
    sens = np.asarray(froc["curve_sensitivity"], float)
    rates = np.asarray(froc["fp_rates"], float)
    points = np.asarray(froc["sensitivities"], float)
    reached = np.asarray(froc.get("reached", [True] * rates.size), bool)
    lo = rates.min() / 2
    # the curve starts at 0 FP, which a log axis cannot show: draw it from the left edge; once every lesion
    # is hit the sensitivity cannot change, so the curve runs on to the highest point that reaches
    end = rates[reached].max() if reached.any() else 0.0
    if end > fp[-1]:
        fp, sens = np.r_[fp, end], np.r_[sens, sens[-1]]
    ax.plot(np.clip(fp, lo, None), sens, drawstyle="steps-post", color=LINE_COLOURS[0], label="FROC")
    cpm = f"CPM {froc['cpm']:.3f}" + ("" if reached.all() else ", lower bound")
    ax.plot(rates[reached], points[reached], "o", color=LINE_COLOURS[1], label=f"LUNA16 points ({cpm})")
    if not reached.all():
        ax.plot(rates[~reached], points[~reached], "o", mfc="none", color=LINE_COLOURS[1],
                label="not reached (lower bound)")
    op = froc.get("operating_point")
    if op and op.get("sensitivity") is not None and np.isfinite(op["sensitivity"]):
        ax.plot([max(op["fp_per_scan"], lo)], [op["sensitivity"]], "D", color=LINE_COLOURS[2],
                label=f"threshold {op['threshold']:g}")
    ax.set_xscale("log")
    ax.set(xlabel="false positives per scan", ylabel="lesion sensitivity", xlim=(lo, rates.max() * 1.5),
           ylim=(0, 1.02), title=title)
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.legend(loc="upper left", fontsize=8)  # a FROC rises to the right: the upper left stays clear
    return _save(fig, path)


def plot_reliability(mean_prob: np.ndarray, frac_pos: np.ndarray, counts: np.ndarray, path: str | os.PathLike,
                     ece: float, title: str = "Reliability (lung voxels)", *, unit: str = "voxels") -> Path:
    """Reliability diagram: observed positive fraction vs mean predicted probability per bin, and the
    number of ``unit`` in each bin (written on its bar).

    Args:
        mean_prob, frac_pos, counts: (B,) per equal-width bin (:func:`dfseg.evaluation.metrics.reliability_curve`).
        path: output PNG.
        ece: expected calibration error, in the legend.
        title: figure title.
        unit: what the bins count (``voxels``, ``volumes``); voxel counts are drawn on a log axis.
    """
    fig = _figure(4.8, 5.2)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    counts = np.asarray(counts, float)
    ok = counts > 0
    n_bins = len(counts)
    ax.plot([0, 1], [0, 1], color="0.7", ls="--", lw=0.8)
    ax.plot(np.asarray(mean_prob)[ok], np.asarray(frac_pos)[ok], "o-", color=LINE_COLOURS[0],
            label=f"ECE {ece:.4f}")
    ax.set(ylabel="observed tumour fraction", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="upper left", fontsize=8)
    edges = np.linspace(0, 1, n_bins + 1)
    log = unit == "voxels"
    bars = hist.bar(edges[:-1], np.maximum(counts, 0.5) if log else counts, width=1 / n_bins, align="edge",
                    color="0.6", edgecolor="white", log=log)
    hist.bar_label(bars, labels=[_compact(c) for c in counts], fontsize=6, padding=1)
    hist.margins(y=0.35)
    hist.set(xlabel="predicted probability", ylabel=unit)
    return _save(fig, path)


def _compact(n: float) -> str:
    """A count in at most four characters: 7, 950, 12k, 3.4M."""
    n = float(n)
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.1f}{suffix}" if v < 10 else f"{v:.0f}{suffix}"
    return f"{n:.0f}"


def plot_confusion_matrices(matrices: Mapping[str, dict[str, int]], path: str | os.PathLike) -> Path:
    """One 2x2 panel per level (``level -> {"tp","fp","fn","tn"}``; ``tn`` may be missing, e.g. lesions)."""
    fig = _figure(3.2 * len(matrices), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(matrices)))
    for ax, (level, c) in zip(axes, matrices.items()):
        cells = np.array([[c.get("tn"), c.get("fp")], [c.get("fn"), c.get("tp")]], dtype=object)
        shade = np.array([[v if v is not None else 0 for v in row] for row in cells], float)
        ax.imshow(shade / max(shade.max(), 1), cmap="Blues", vmin=0, vmax=1.3)
        for (i, j), v in np.ndenumerate(cells):
            ax.text(j, i, "n/a" if v is None else f"{v:,}", ha="center", va="center", fontsize=9)
        ax.set_xticks([0, 1], ["pred 0", "pred 1"])
        ax.set_yticks([0, 1], ["true 0", "true 1"])
        ax.set_title(level)
    return _save(fig, path)


def scale_bar_mm(width_mm: float) -> float:
    """A round scale-bar length (0.1, 0.2, 0.5, 1, 2, 5 ... mm) of about a quarter of ``width_mm``."""
    target = max(float(width_mm), 1e-6) / 4
    exponent = np.floor(np.log10(target))
    for step in (5, 2, 1):
        if step * 10**exponent <= target:
            return float(step * 10**exponent)
    return float(10**exponent)


def lesion_montage_figure(panels: Sequence[Mapping[str, Any]], title: str = "Lesions") -> Figure:
    """The lesion montage as a figure: one column per lesion, one row per image (e.g. attenuation and
    dark-field), label and prediction contours on every image, a scale bar in mm on each.

    Args:
        panels: each ``{"title": str, "images": {name: (H, W)}, "label": (H, W) bool, "pred": (H, W) bool,
            "voxel_mm": (dx, dy)}``, cropped around the lesion centre; every panel names the same images.
            An empty list draws a placeholder.
        title: figure title.
    """
    names = list(panels[0]["images"]) if panels else []
    n_cols, n_rows = max(len(panels), 1), max(len(names), 1)
    fig = _figure(max(2.3 * n_cols, 4.0), 2.3 * n_rows + 1.0)
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no lesions", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for col, p in enumerate(panels):
        dx, dy = (float(v) for v in p.get("voxel_mm", (1.0, 1.0)))
        for row, name in enumerate(names):
            ax = axes[row, col]
            img = np.asarray(p["images"][name], float)
            extent = (0.0, img.shape[0] * dx, 0.0, img.shape[1] * dy)
            finite = img[np.isfinite(img)]
            lo, hi = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
            ax.imshow(img.T, cmap="gray", origin="lower", interpolation="nearest", extent=extent,
                      vmin=lo, vmax=hi if hi > lo else lo + 1)
            # the label's line is wider, so it shows around and between the prediction's dashes where they coincide
            for mask, colour, style, width in ((p["label"], LABEL_COLOUR, "solid", 2.0),
                                               (p["pred"], PREDICTION_COLOUR, "dashed", 1.2)):
                mask = np.asarray(mask, float)
                if mask.any() and not mask.all():
                    ax.contour(mask.T, levels=[0.5], colors=colour, linewidths=width, linestyles=style,
                               origin="lower", extent=extent)
            bar = scale_bar_mm(extent[1])
            ax.add_artist(AnchoredSizeBar(ax.transData, bar, f"{bar:g} mm", "lower right", pad=0.3, color="white",
                                          frameon=False, size_vertical=extent[3] / 60, fontproperties={"size": 7}))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(p["title"], fontsize=8)
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
    handles = [Line2D([], [], color=LABEL_COLOUR, lw=2.0, label="label"),
               Line2D([], [], color=PREDICTION_COLOUR, lw=1.5, ls="--", label="prediction")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_lesion_montage(panels: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "Lesions") -> Path:
    """Write :func:`lesion_montage_figure` of ``panels`` to ``path`` (PNG)."""
    return _save(lesion_montage_figure(panels, title), path)
