"""The model dfseg ships (bundles/dfseg_attention_unet/models, made by ``make model``) on scans it did not write.

A mouse no dfseg model has seen (cohort seed 3, subject 1: the shipped model's cohort has seed 0, the
generalisation bench's seeds 0-2; tumours of 1.69, 1.03 and 0.53 mm; for the SwinUNETR, trained on
the 40-mouse seed-0 demo cohort, that cohort's held-out subject 21) is simulated at the demo
protocol's scanner and written the way a lab would hand it over: attenuation
and dark-field only, no label, no lung mask, no projections, as MHA with a scanner's origin and
direction, as a DICOM series (attenuation) with an MHA dark-field, and as TIFF stacks. ``dfseg
predict`` with no ``--model`` must list every tumour of at least 1 mm, on the input's own grid.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from image_formats import DICOM_SLOPE, ras_affine, write_dicom_series, write_mha, write_tiff
from scipy import ndimage

from dfseg.cli import main
from dfseg.io import load_nifti
from dfseg.resources import shipped_model
from dfseg.simulate.acquisition import AcquisitionConfig
from dfseg.simulate.cohort import simulate_subject
from dfseg.simulate.protocols import get_protocol

DEMO = get_protocol("demo")
VOXEL = DEMO.voxel_mm
ORIGIN = (-12.0, 7.5, 30.0)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


def _simulate(index: int, seed: int):
    """Subject ``index`` of a cohort of ``seed`` at the demo protocol (178 x 178 x 32 at 0.15 mm), as the demo simulates it."""
    result = simulate_subject(index, size=DEMO.grid(), voxel_mm=VOXEL, seed=seed, protocol=DEMO.name,
                              acquisition=AcquisitionConfig(n_angles=DEMO.n_angles))
    side = {k: v for k, v in result["sidecar"].items() if k not in ("tumours", "has_tumour")}
    return result["images"], side, result["sidecar"]["tumours"]


@pytest.fixture(scope="module")
def mouse():
    return _simulate(1, seed=3)


def _write(folder: Path, images: dict, side: dict, fmt: str) -> Path:
    folder.mkdir(parents=True)
    spacing = (VOXEL,) * 3
    if fmt == "mha":
        write_mha(folder / "attn.mha", images["attn"], spacing, ORIGIN, DIRECTION)
        write_mha(folder / "df.mha", images["df"], spacing, ORIGIN, DIRECTION)
    elif fmt == "dicom":  # a DICOM series holds one scalar volume: the orientations come as MHA
        attn = np.round(images["attn"] / DICOM_SLOPE) * DICOM_SLOPE
        write_dicom_series(folder / "attn", attn, spacing, ORIGIN, DIRECTION)
        write_mha(folder / "df.mha", images["df"], spacing, ORIGIN, DIRECTION)
    else:  # TIFF stacks carry a spacing but no origin or direction
        write_tiff(folder / "attn.tif", images["attn"], spacing)
        write_tiff(folder / "df.tif", images["df"], spacing)
    (folder / "sidecar.json").write_text(json.dumps(side))
    return folder


def _assert_every_tumour_of_1mm_listed(folder: Path, images: dict, tumours: list, affine_expected: np.ndarray,
                                       what: str) -> None:
    """``dfseg predict``'s outputs for the mouse in ``folder``: on the input's grid and geometry, every
    tumour of at least 1 mm overlapping a lesion, at most one false positive, CSV centroids in their lesions."""
    lesions, affine = load_nifti(folder / "lesions.nii.gz")
    np.testing.assert_allclose(affine, affine_expected, atol=1e-6)
    assert lesions.shape == images["attn"].shape
    # the simulator's label (X, Y, Z), read on the same voxel grid: each tumour >= 1 mm overlaps a lesion
    label, n = ndimage.label(images["label"] > 0)
    sizes = ndimage.sum(images["label"] > 0, label, range(1, n + 1))
    big = [i + 1 for i, s in enumerate(sizes) if s * VOXEL**3 >= np.pi / 6 * 1.0**3]  # volume of a 1 mm sphere
    assert len(big) >= 2 and any(t["diameter_mm"] < 1 for t in tumours)  # the case is not trivial
    for component in big:
        assert (lesions[label == component] > 0).any(), f"tumour component {component} not found ({what})"
    rows = list(csv.DictReader(open(folder / "lesions.csv")))
    false_positives = [r for r in rows if not (images["label"][lesions == int(r["id"])] > 0).any()]
    assert len(rows) >= len(big) and len(false_positives) <= 1  # at most one lesion on no tumour voxel
    for row in rows:  # each CSV centroid lies in its own lesion
        ijk = tuple(int(round(float(row[f"centroid_{a}"]))) for a in "ijk")
        assert lesions[ijk] == int(row["id"])


@pytest.mark.parametrize("fmt", ["mha", "dicom", "tiff"])
def test_shipped_model_lists_every_tumour_of_1mm(mouse, fmt, tmp_path, capsys):
    images, side, tumours = mouse
    scan = _write(tmp_path / "lab" / "mouse", images, side, fmt)
    out = tmp_path / "results"
    assert main(["predict", str(scan), "-o", str(out)]) == 0, capsys.readouterr().err
    expected = ras_affine((VOXEL,) * 3, ORIGIN, DIRECTION) if fmt != "tiff" else np.diag([VOXEL] * 3 + [1.0])
    _assert_every_tumour_of_1mm_listed(out / side["scan_id"], images, tumours, expected, fmt)


def test_shipped_model_is_packaged():
    model = shipped_model()
    record = json.loads((model / "run_info.json").read_text())
    assert record["predict"]["correction"]["calibration"]["path"] == "calibration.json"
    assert (model / "model.pt").stat().st_size < 5 * 2**20


@pytest.mark.slow  # SwinUNETR on a CPU: about 35 s on 2 cores
def test_shipped_swinunetr_lists_every_tumour_of_1mm(tmp_path, capsys):
    """The bundle's SwinUNETR (bundles/dfseg_swinunetr/models, ``make model-swinunetr``: the 40-mouse
    seed-0 demo cohort) through ``dfseg predict --model`` on that cohort's held-out subject 21, handed
    over as MHA with a scanner's geometry."""
    images, side, tumours = _simulate(21, seed=0)
    scan = _write(tmp_path / "lab" / "mouse", images, side, "mha")
    out = tmp_path / "results"
    model = shipped_model().parents[1] / "dfseg_swinunetr" / "models"
    assert main(["predict", str(scan), "-o", str(out), "--model", str(model)]) == 0, capsys.readouterr().err
    _assert_every_tumour_of_1mm_listed(out / side["scan_id"], images, tumours,
                                       ras_affine((VOXEL,) * 3, ORIGIN, DIRECTION), "SwinUNETR")
