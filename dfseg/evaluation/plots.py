"""Figures of an evaluation, as PNG files: ROC, PR, FROC, reliability, confusion matrices, lesion montage.

Each function draws one figure from numbers (no file reading, except the montage's images, which the
caller loads) and writes it atomically. Figures are built on ``matplotlib.figure.Figure`` with the Agg
canvas, so no global pyplot state and no display is involved.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dfseg.io import atomic_path

DPI = 100


def _figure(width: float = 4.5, height: float = 4.0):
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | os.PathLike,
             title: str = "ROC") -> Path:
    """ROC curves, one line per entry ``label -> (fpr, tpr, auroc)``; also the multi-model figure."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{label} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.axvline(0.05, color="0.8", lw=0.8, ls=":")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_roc_multi(comparison: dict, path: str | os.PathLike, title: str = "Per-patch ROC by model") -> Path:
    """ROC figure with one curve per model from :func:`dfseg.evaluation.compare.compare_models`."""
    curves = {name: (np.asarray(c["fpr"]), np.asarray(c["tpr"]), float(c["auroc"]))
              for name, c in comparison["roc"].items()}
    return plot_roc(curves, path, title)


def plot_pr(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | os.PathLike,
            title: str = "Precision-recall") -> Path:
    """PR curves, ``label -> (recall, precision, average_precision)``."""
    fig = _figure()
    ax = fig.add_subplot()
    for label, (recall, precision, ap) in curves.items():
        ax.plot(np.r_[0.0, recall], np.r_[precision[:1], precision] if len(precision) else [1.0],
                drawstyle="steps-post", label=f"{label} (AP {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_froc(froc: dict, path: str | os.PathLike, title: str = "FROC") -> Path:
    """FROC step curve on a log FP axis, with the LUNA16 operating points and the CPM."""
    fig = _figure(5.0, 4.0)
    ax = fig.add_subplot()
    fp = np.asarray(froc["curve_fp_per_scan"], float)
    sens = np.asarray(froc["curve_sensitivity"], float)
    rates = np.asarray(froc["fp_rates"], float)
    lo = rates.min() / 2
    # the curve starts at 0 FP, which a log axis cannot show: draw it from the left edge
    # extend the last point to the right edge: beyond it the sensitivity stays where it is
    ax.plot(np.r_[np.clip(fp, lo, None), rates.max() * 1.5], np.r_[sens, sens[-1:]], drawstyle="steps-post",
            label="FROC")
    ax.plot(rates, froc["sensitivities"], "o", label=f"LUNA16 points (CPM {froc['cpm']:.3f})")
    ax.set_xscale("log")
    ax.set(xlabel="false positives per scan", ylabel="lesion sensitivity", xlim=(lo, rates.max() * 1.5),
           ylim=(0, 1.02), title=title)
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_reliability(mean_prob: np.ndarray, frac_pos: np.ndarray, counts: np.ndarray, path: str | os.PathLike,
                     ece: float, title: str = "Reliability (lung voxels)") -> Path:
    """Reliability diagram: observed positive fraction vs mean predicted probability per bin."""
    fig = _figure(4.5, 5.0)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ok = np.asarray(counts) > 0
    n_bins = len(counts)
    ax.plot([0, 1], [0, 1], color="0.7", ls="--", lw=0.8)
    ax.plot(np.asarray(mean_prob)[ok], np.asarray(frac_pos)[ok], "o-", label=f"ECE {ece:.4f}")
    ax.set(ylabel="observed tumour fraction", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="upper left", fontsize=8)
    edges = np.linspace(0, 1, n_bins + 1)
    hist.bar(edges[:-1], np.maximum(np.asarray(counts, float), 0.5), width=1 / n_bins, align="edge",
             color="0.6", log=True)
    hist.set(xlabel="predicted probability", ylabel="voxels")
    return _save(fig, path)


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


def plot_lesion_montage(panels: Sequence[dict], path: str | os.PathLike, title: str = "Lesions") -> Path:
    """Montage of axial slices through lesions with label (green) and prediction (red) contours.

    Args:
        panels: each ``{"title": str, "image": (H, W), "label": (H, W) bool, "pred": (H, W) bool}``,
            already cropped around the lesion centre; an empty list draws a placeholder.
        path: output PNG.
        title: figure title.
    """
    n = max(len(panels), 1)
    fig = _figure(max(2.6 * n, 4.0), 3.1)
    axes = np.atleast_1d(fig.subplots(1, n))
    if not panels:
        axes[0].text(0.5, 0.5, "no lesions", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, p in zip(axes, panels):
        img = np.asarray(p["image"], float)
        ax.imshow(img.T, cmap="gray", origin="lower", interpolation="nearest")
        for mask, colour in ((p["label"], "lime"), (p["pred"], "red")):
            mask = np.asarray(mask, float)
            if mask.any() and not mask.all():
                ax.contour(mask.T, levels=[0.5], colors=colour, linewidths=1.0, origin="lower")
        ax.set_title(p["title"], fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"{title}\ngreen: label, red: prediction", fontsize=8)
    return _save(fig, path)
