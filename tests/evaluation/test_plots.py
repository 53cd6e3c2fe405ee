"""Figures: colour-blind-safe overlays, scale bars, no overlapping titles, ROC bands and counts."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.text import Text

from dfseg.evaluation import plots


def _panel(seed: int, title: str) -> dict:
    rng = np.random.default_rng(seed)
    label = np.zeros((21, 21), bool)
    label[7:14, 7:14] = True
    pred = np.zeros_like(label)
    pred[9:16, 8:15] = True
    return {"title": title, "images": {"attenuation": rng.random((21, 21)), "dark-field": rng.random((21, 21))},
            "label": label, "pred": pred, "voxel_mm": (0.15, 0.15)}


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _near(img: np.ndarray, colour: str, tol: float = 0.03) -> int:
    return int((np.abs(img[..., :3] - np.asarray(to_rgb(colour))) < tol).all(axis=-1).sum())


def test_montage_has_both_images_per_lesion_and_no_overlapping_titles():
    panels = [_panel(i, f"largest detected\ns{i} d=1.05 mm z=12") for i in range(4)]
    fig = plots.lesion_montage_figure(panels, "Lesions, threshold 0.5")
    axes = np.asarray(fig.axes).reshape(2, 4)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["attenuation", "dark-field"]
    assert [ax.get_title() for ax in axes[0]] == [p["title"] for p in panels]
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    boxes = [fig._suptitle.get_window_extent(renderer)]
    boxes += [ax.title.get_window_extent(renderer) for ax in axes[0]]
    boxes += [ax.get_window_extent(renderer) for ax in axes.ravel()]
    boxes += [legend.get_window_extent(renderer) for legend in fig.legends]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not _overlaps(boxes[i], boxes[j]), (i, j)


def test_montage_png_uses_okabe_ito_contours_and_a_mm_scale_bar(tmp_path):
    panels = [_panel(0, "largest detected"), _panel(1, "largest missed")]
    path = plots.plot_lesion_montage(panels, tmp_path / "lesions.png", "Lesions")
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 300
    assert _near(img, plots.LABEL_COLOUR) > 50 and _near(img, plots.PREDICTION_COLOUR) > 50
    assert _near(img, "#ff0000", 0.1) == 0 and _near(img, "#00ff00", 0.1) == 0
    fig = plots.lesion_montage_figure(panels)
    texts = [t.get_text() for ax in fig.axes for artist in ax.artists for t in artist.findobj(Text)]
    assert texts.count("0.5 mm") == 4  # 21 voxels of 0.15 mm = 3.15 mm wide: a 0.5 mm bar on every image


def test_scale_bar_lengths_are_round_quarters():
    assert [plots.scale_bar_mm(w) for w in (3.15, 4.0, 10.0, 0.9, 30.0)] == pytest.approx([0.5, 1.0, 2.0, 0.2, 5.0])


def test_empty_montage_draws_a_placeholder(tmp_path):
    img = mpimg.imread(plots.plot_lesion_montage([], tmp_path / "none.png"))
    assert img.shape[0] > 100 and img[..., :3].min() < 0.5


def test_roc_legend_states_counts_and_bands_are_drawn(tmp_path):
    fpr = np.array([0.0, 0.0, 0.5, 1.0])
    tpr = np.array([0.0, 0.5, 1.0, 1.0])
    grid = np.linspace(0, 1, 11)
    band = {"fpr": grid.tolist(), "tpr_low": np.clip(grid, 0, 1).tolist(), "tpr_high": [1.0] * 11,
            "confidence": 0.95}
    counts = {"subjects": 12, "positives": 40, "negatives": 860, "unit": "patches", "lesions": 15}
    comparison = {"roc": {"df": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auroc": 0.875}}}
    path = plots.plot_roc_multi(comparison, tmp_path / "roc.png", "Per-patch ROC", bands={"df": band},
                                counts={"df": counts})
    img = mpimg.imread(path)
    assert img.shape[0] > 300
    # the band is the first line colour at a quarter opacity over white
    shade = 0.75 + 0.25 * np.asarray(to_rgb(plots.LINE_COLOURS[0]))
    assert (np.abs(img[..., :3] - shade) < 0.03).all(axis=-1).sum() > 1000
    assert plots.counts_text(counts) == "12 subjects, 40/900 patches positive, 15 lesions"
    # without bands or counts the old call still works
    assert mpimg.imread(plots.plot_roc_multi(comparison, tmp_path / "plain.png")).shape == img.shape


def test_reliability_writes_the_count_of_every_bin(tmp_path):
    counts = np.array([3, 0, 0, 0, 0, 0, 0, 0, 1, 4], float)
    mean = np.where(counts > 0, np.linspace(0.05, 0.95, 10), np.nan)
    frac = np.where(counts > 0, [0, 0, 0, 0, 0, 0, 0, 0, 1, 0.75], np.nan)
    path = plots.plot_reliability(mean, frac, counts, tmp_path / "rel.png", 0.1, "per volume", unit="volumes")
    assert mpimg.imread(path).shape[0] > 300
    assert [plots._compact(c) for c in (7, 950, 12_345, 3_400_000)] == ["7", "950", "12k", "3.4M"]


def test_predict_montage_outlines_lesions_in_the_prediction_colour():
    from dfseg.predict import _panel

    volume = np.zeros((6, 6, 3))
    edge = np.zeros((6, 6), bool)
    edge[2, 3] = True
    rgb = _panel(volume, 1, np.array([0.0, 1.0]), edge)
    assert tuple(rgb[::-1].transpose(1, 0, 2)[2, 3]) == pytest.approx(to_rgb(plots.PREDICTION_COLOUR))
