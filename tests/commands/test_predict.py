"""``dfseg predict`` on hand-built run folders: the input grid survives, lesions are where the model says,
the run record drives the correction and resampling, bad input is one line and leaves nothing.

The run folders are not trained: a tiny attention U-Net with every weight zero and the output bias
at +3 predicts p = sigmoid(3) = 0.953 everywhere, so the lesions are exactly the lung mask's
components (two ellipsoids of different sizes: lesion 1 is the larger one).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dfseg.cli import main
from dfseg.io import load_nifti, save_nifti, voxel_size, write_json
from dfseg.predict import CSV_COLUMNS, lesion_table
from dfseg.tomo import project, projection_angles
from dfseg.training import build_network, run_info

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from cohort import make_cohort, raw_calibration  # noqa: E402

NETWORK = {"name": "attention_unet", "spatial_dims": 3, "channels": [4, 8, 16], "strides": [2, 2]}
P_ALL = float(torch.sigmoid(torch.tensor(3.0)))
SHAPE = (30, 28, 26)
VOXEL = 0.12  # the training cohort (tests/training/cohort.py) has 0.1 mm voxels: predict resamples
# a rotation (det +1) and an origin far from zero: the scanner's geometry must survive
ANGLE = np.deg2rad(30.0)
DIRECTION = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0.0], [np.sin(ANGLE), np.cos(ANGLE), 0.0], [0.0, 0.0, 1.0]])
ORIGIN = (12.5, -7.25, 3.0)


def make_run(folder: Path, manifest: Path, *, preprocessed: bool = True, calibration: Path | None = None,
             modality: str = "combined") -> Path:
    """A run folder (model.pt + run_info.json) whose network predicts sigmoid(3) everywhere."""
    net = build_network(NETWORK, modality, [32] * 3)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.decoder[1].head.bias.fill_(3.0)
    folder.mkdir(parents=True)
    torch.save({"model": net.state_dict()}, folder / "model.pt")
    info = run_info(bundle="test", manifest=manifest, fold=0, modality=modality, seed=0,
                    hyper_parameters={"patch_size": [32] * 3}, network=NETWORK, model=net, spatial_dims=3,
                    calibration=calibration, preprocessed=preprocessed)
    write_json(folder / "run_info.json", info)
    return folder


def _lungs() -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(float)
    big = (((grid - (9, 13, 13)) / (6, 8, 9)) ** 2).sum(-1) <= 1
    small = (((grid - (22, 13, 13)) / (4, 5, 6)) ** 2).sum(-1) <= 1
    return big | small


def _write_mha(path: Path, array: np.ndarray, spacing: tuple[float, float, float] = (VOXEL,) * 3) -> None:
    """(X, Y, Z[, C]) array as MHA with ``ORIGIN``/``DIRECTION`` (ITK's LPS: the RAS affine is
    diag(-1, -1, 1) times it)."""
    vector = array.ndim == 4
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0, 3) if vector else (2, 1, 0))),
                                 isVector=vector)
    img.SetSpacing(spacing)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION.ravel().tolist())
    sitk.WriteImage(img, str(path))


def write_scan(folder: Path, *, raw: bool = False, lung: bool = True, **overrides) -> Path:
    """A scan folder of MHA files, no label: attn, df (5 decomposed channels, or 4 orientations when
    ``raw``), lung_mask, sidecar."""
    rng = np.random.default_rng(1)
    lungs = _lungs()
    folder.mkdir(parents=True)
    attn = np.where(lungs, 0.005, 0.02) + rng.normal(0, 0.001, SHAPE)
    c0 = np.where(lungs, 0.01, 0.001) + rng.normal(0, 0.0005, SHAPE)
    if raw:
        df = np.stack([c0 * (1 + 0.1 * np.cos(2 * np.deg2rad(w - 30))) for w in (0, 45, 90, 135)], -1)
    else:
        df = np.stack([c0, 0.2 * c0, 0.2 * np.ones(SHAPE), 0.12 * c0, 0.16 * c0], -1)
    images = {"attn": attn, "df": df, "lung_mask": lungs.astype(np.uint8)}
    images.update(overrides)
    for key, array in images.items():
        if array is None:
            continue
        _write_mha(folder / f"{key}.mha", array.astype(np.uint8 if key == "lung_mask" else np.float32))
    if not lung:
        (folder / "lung_mask.mha").unlink()
    write_json(folder / "sidecar.json", {
        "subject_id": "lab1", "scan_id": folder.name, "kvp": 50.0, "filtration_mm": {"Al": 0.5},
        "visibility": {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0},
        "orientations_deg": [0.0, 45.0, 90.0, 135.0], "voxel_mm": VOXEL, "preprocessed": not raw})
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    manifest = make_cohort(root / "cohort", n_subjects=4)
    return make_run(root / "run", manifest), root


def _predict(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(["predict", *map(str, argv)])
    return rc, capsys.readouterr().err


def test_run_info_records_what_predict_needs(trained):
    run, _ = trained
    plan = json.loads((run / "run_info.json").read_text())["predict"]
    assert plan["voxel_mm"] == pytest.approx([0.1] * 3)
    assert plan["roi_size"] == [32, 32, 32]
    assert plan["mirror_axes"] == [0, 1, 2]  # training flips every axis; inference mirrors them
    assert plan["correction"]["preprocessed"] is True and plan["correction"]["domain"] == "volume"


def test_mha_scan_outputs_on_the_input_grid(trained, tmp_path, capsys):
    run, _ = trained
    scan = write_scan(tmp_path / "lab" / "mouse7")
    out = tmp_path / "out"
    rc, err = _predict(["--model", run, scan, "-o", out], capsys)
    assert rc == 0, err
    folder = out / "mouse7"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["prob.nii.gz", "mask.nii.gz", "lesions.nii.gz", "lesions.seg.nrrd", "lesions.csv", "lesions.png",
         "summary.json"])
    _, affine = load_nifti(scan / "attn.mha")
    assert np.allclose(voxel_size(affine), VOXEL) and not np.allclose(affine[:3, :3], np.diag([VOXEL] * 3))
    lungs = _lungs()
    for name, dtype in (("prob.nii.gz", np.float32), ("mask.nii.gz", np.uint8), ("lesions.nii.gz", np.uint16),
                        ("lesions.seg.nrrd", np.uint16)):
        array, written = load_nifti(folder / name)
        assert array.shape == SHAPE, name
        assert array.dtype == dtype, name
        np.testing.assert_allclose(written, affine, atol=1e-6, err_msg=name)
    prob = load_nifti(folder / "prob.nii.gz")[0]
    # constant logits: resampling to 0.1 mm and back leaves p = sigmoid(3) on every voxel
    np.testing.assert_allclose(prob, P_ALL, atol=1e-5)
    mask = load_nifti(folder / "mask.nii.gz")[0]
    assert np.array_equal(mask > 0, lungs)  # p >= 0.5 everywhere, kept inside the lung only
    labels = load_nifti(folder / "lesions.nii.gz")[0]
    rows = list(csv.DictReader((folder / "lesions.csv").open()))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [int(r["id"]) for r in rows] == [1, 2]
    assert [int(r["n_voxels"]) for r in rows] == sorted([int((labels == i).sum()) for i in (1, 2)], reverse=True)
    for r in rows:
        ijk = np.array([float(r[f"centroid_{a}"]) for a in "ijk"])
        assert labels[tuple(np.round(ijk).astype(int))] == int(r["id"])  # the centroid lies in its lesion
        xyz = affine[:3, :3] @ ijk + affine[:3, 3]
        assert np.allclose(xyz, [float(r[f"centroid_{a}_mm"]) for a in "xyz"], atol=1e-4)
        n = int(r["n_voxels"])
        assert float(r["volume_mm3"]) == pytest.approx(n * VOXEL**3, rel=1e-5)
        assert float(r["equivalent_diameter_mm"]) == pytest.approx((6 * n * VOXEL**3 / np.pi) ** (1 / 3), rel=1e-5)
        assert float(r["max_prob"]) == pytest.approx(P_ALL, abs=1e-5)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_lesions"] == 2 and summary["presence_score"] == pytest.approx(P_ALL, abs=1e-5)
    assert summary["resampled_to_model_voxel"] is True
    assert summary["model"]["mirror_axes"] == [0, 1, 2]
    assert summary["correction"].startswith("none")
    assert summary["lung_mask"].startswith("given")
    nrrd = sitk.ReadImage(str(folder / "lesions.seg.nrrd"))
    assert nrrd.GetMetaData("Segment1_LabelValue") == "2"
    box = np.argwhere(labels == 1)
    assert nrrd.GetMetaData("Segment0_Extent").split() == [str(v) for a, b in zip(box.min(0), box.max(0)) for v in (a, b)]
    assert (out / "scans.csv").read_text().splitlines()[1].startswith("mouse7,")


def test_mirror_axes_come_from_the_record(trained, tmp_path, capsys):
    """Inference mirrors the axes the run record names; a record without them (trained before
    training flipped Z) mirrors X and Y; --no-mirror runs one pass."""
    run, _ = trained
    legacy = tmp_path / "legacy"
    shutil.copytree(run, legacy)
    info = json.loads((legacy / "run_info.json").read_text())
    del info["predict"]["mirror_axes"]
    (legacy / "run_info.json").write_text(json.dumps(info))
    scan = write_scan(tmp_path / "lab" / "mouse8")
    for model, extra, expected in ((legacy, [], [0, 1]), (run, ["--no-mirror"], [])):
        out = tmp_path / f"out_{model.name}_{len(extra)}"
        rc, err = _predict(["--model", model, scan, "-o", out, *extra], capsys)
        assert rc == 0, err
        assert json.loads((out / "mouse8" / "summary.json").read_text())["model"]["mirror_axes"] == expected
    info["predict"]["mirror_axes"] = [0, 5]
    (legacy / "run_info.json").write_text(json.dumps(info))
    rc, err = _predict(["--model", legacy, scan, "-o", tmp_path / "bad"], capsys)
    assert rc != 0 and "run_info.json" in err and "mirror_axes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_raw_scan_goes_through_the_recorded_calibration(tmp_path, capsys):
    manifest = make_cohort(tmp_path / "cohort", n_subjects=4, preprocessed=False)
    cal = raw_calibration(tmp_path / "calibration.json")
    run = make_run(tmp_path / "run", manifest, preprocessed=False, calibration=cal)
    plan = json.loads((run / "run_info.json").read_text())["predict"]["correction"]
    assert plan["preprocessed"] is False and plan["calibration"]["path"] == str(cal.resolve())
    scan = write_scan(tmp_path / "lab" / "raw1", raw=True)
    rc, err = _predict(["--model", run, "--attn", scan / "attn.mha", "--df", scan / "df.mha",
                        "--sidecar", scan / "sidecar.json", "--lung-mask", scan / "lung_mask.mha",
                        "-o", tmp_path / "out"], capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "out" / "raw1" / "summary.json").read_text())
    assert summary["correction"].startswith("volume chain") and str(cal) in summary["correction"]
    assert summary["n_lesions"] == 2
    # a lab's own calibration (other curves and exponent) is used when it states dark-field at the
    # model's reference energy; at another energy it is refused in one line, naming the fix
    doc = json.loads(cal.read_text())
    lab = tmp_path / "lab_calibration.json"
    write_json(lab, doc | {"energy_exponent": {"n": 2.5}})
    rc, err = _predict(["--model", run, scan, "-o", tmp_path / "out_lab", "--calibration", lab], capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "out_lab" / "raw1" / "summary.json").read_text())
    assert str(lab.resolve()) in summary["correction"]
    other = tmp_path / "other.json"
    write_json(other, doc | {"reference": doc["reference"] | {"e_ref_kev": 35.0}})
    rc, err = _predict(["--model", run, scan, "-o", tmp_path / "out2", "--calibration", other], capsys)
    assert rc == 1 and "states dark-field at 35.00 keV, the model's at 30.00 keV" in err and "--e-ref-kev 30.0000" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out2").exists()
    # a raw scan at a spectrum the model's calibration lacks is refused, naming the way out
    hot = write_scan(tmp_path / "lab" / "raw60", raw=True)
    write_json(hot / "sidecar.json", json.loads((hot / "sidecar.json").read_text()) | {"kvp": 60.0})
    rc, err = _predict(["--model", run, hot, "-o", tmp_path / "out_hot"], capsys)
    assert rc == 1 and "60" in err and "--calibration" in err and "--e-ref-kev 30.0000" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out_hot").exists()
    # a scan preprocessed with a calibration of other units is refused, with the model's own or the lab's it runs
    for name, used, ok in (("pre_other", other, False), ("pre_lab", lab, True)):
        pre = write_scan(tmp_path / "lab" / name)
        write_json(pre / "sidecar.json", json.loads((pre / "sidecar.json").read_text())
                   | {"preprocessing": {"domain": "volume", "calibration": str(used)}})
        rc, err = _predict(["--model", run, pre, "-o", tmp_path / f"out_{name}"], capsys)
        assert (rc == 0) == ok, err
        if not ok:
            assert "sidecar.json" in err and "35.00 keV" in err and not (tmp_path / f"out_{name}").exists()


def test_projection_domain_model_reconstructs_scans_with_projections(tmp_path, capsys):
    """A model whose training scans were preprocessed in the projection domain: a raw scan that brings
    proj_T/proj_D goes through the projection chain (FBP) with the recorded calibration."""
    manifest = make_cohort(tmp_path / "cohort", n_subjects=4)
    cal = raw_calibration(tmp_path / "calibration.json")
    for sidecar in (tmp_path / "cohort" / "scans").glob("*/sidecar.json"):  # as dfseg preprocess records it
        write_json(sidecar, json.loads(sidecar.read_text()) | {"preprocessing": {"domain": "projection",
                                                                                   "calibration": str(cal)}})
    run = make_run(tmp_path / "run", manifest)
    plan = json.loads((run / "run_info.json").read_text())["predict"]["correction"]
    assert plan["domain"] == "projection" and plan["calibration"]["path"] == str(cal.resolve())
    n, px, angles = 16, 0.5, 24
    x = (np.arange(n) - (n - 1) / 2) * px
    disc = (x[:, None] ** 2 + x[None, :] ** 2 < 3**2)
    t = np.exp(-project(0.03 * disc, projection_angles(angles), pixel_mm=px))
    folder = tmp_path / "scan" / "p1"
    t4 = np.broadcast_to(t[:, :, None, None], (angles, n, 2, 4)).astype(np.float32)
    save_nifti(folder / "proj_T.nii.gz", t4, px)
    save_nifti(folder / "proj_D.nii.gz", np.full_like(t4, np.exp(-0.02)), px)
    save_nifti(folder / "attn.nii.gz", np.repeat(0.03 * disc[..., None], 2, -1).astype(np.float32), px)
    save_nifti(folder / "df.nii.gz", np.full((n, n, 2, 4), 0.01, np.float32), px)
    lung = x[:, None] ** 2 + x[None, :] ** 2 < 2**2  # inside the body: solid tissue around it
    save_nifti(folder / "lung_mask.nii.gz", np.repeat(lung[..., None], 2, -1).astype(np.uint8), px)
    write_json(folder / "sidecar.json", {
        "subject_id": "m", "scan_id": "p1", "kvp": 50.0, "filtration_mm": {"Al": 0.5},
        "visibility": {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0},
        "orientations_deg": [0.0, 45.0, 90.0, 135.0], "air_columns": 2, "voxel_mm": px})
    rc, err = _predict(["--model", run, folder, "-o", tmp_path / "out"], capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "out" / "p1" / "summary.json").read_text())
    assert summary["correction"] == f"projection chain of dfseg preprocess with {cal.resolve()}"
    assert summary["n_lesions"] == 1 and summary["input"]["shape"] == [n, n, 2]


def test_folder_of_scans_and_manifest(trained, tmp_path, capsys):
    run, root = trained
    rc, err = _predict(["--model", run, root / "cohort" / "manifest.json", "-o", tmp_path / "m"], capsys)
    assert rc == 0, err
    ids = sorted(p.name for p in (tmp_path / "m").iterdir() if p.is_dir())
    assert ids == ["s00", "s01", "s02", "s03"]
    # the cohort's lung mask is one ellipsoid: one lesion, the lung, centroid at the centre voxel
    rows = list(csv.DictReader((tmp_path / "m" / "s00" / "lesions.csv").open()))
    assert len(rows) == 1 and [float(rows[0][f"centroid_{a}"]) for a in "ijk"] == pytest.approx([15.5] * 3, abs=0.01)
    write_scan(tmp_path / "lab" / "a")
    write_scan(tmp_path / "lab" / "b")
    rc, err = _predict(["--model", run, tmp_path / "lab", "-o", tmp_path / "f"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["a", "b", "scans.csv"]
    # a non-empty output folder is refused without --overwrite
    rc, err = _predict(["--model", run, tmp_path / "lab", "-o", tmp_path / "f"], capsys)
    assert rc == 1 and "--overwrite" in err


def _bad_scans(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    nan = np.full(SHAPE, 0.01)
    nan[3, 4, 5] = np.nan
    scans = {"missing_df": (write_scan(tmp_path / "missing_df", df=None), "no df.* image"),
             "nan": (write_scan(tmp_path / "nan", attn=nan), "1 NaN/Inf voxels"),
             "empty_lung": (write_scan(tmp_path / "empty_lung", lung_mask=np.zeros(SHAPE, np.uint8)),
                            "the lung mask is empty")}
    spacing = tmp_path / "spacing"
    write_scan(spacing)
    _write_mha(spacing / "df.mha", np.ones((*SHAPE, 5), np.float32), spacing=(VOXEL, VOXEL, 0.15))
    scans["spacing"] = (spacing, "voxel size [0.12, 0.12, 0.15] mm differs from")
    raw = write_scan(tmp_path / "channels", raw=True)
    _write_mha(raw / "df.mha", np.ones((*SHAPE, 3), np.float32))
    scans["channels"] = (raw, "expected 4 orientation channels from sidecar, found 3")
    broken = write_scan(tmp_path / "broken")
    (broken / "attn.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n")
    scans["unreadable"] = (broken, "cannot read image")
    return scans


def test_bad_input_is_one_line_and_leaves_nothing(trained, tmp_path, capsys):
    run, _ = trained
    for name, (scan, problem) in _bad_scans(tmp_path / "bad").items():
        out = tmp_path / f"out_{name}"
        # a good scan first: its outputs must not survive the bad one's failure
        good = tmp_path / "good" / f"ok_{name}"
        write_scan(good)
        rc, err = _predict(["--model", run, good, scan, "-o", out], capsys)
        assert rc == 1, name
        assert len(err.strip().splitlines()) == 1, (name, err)
        assert err.startswith("dfseg predict: error: ") and problem in err, (name, err)
        assert "Traceback" not in err
        assert not out.exists(), name
        assert not any(p.name.startswith(f".{out.name}") for p in tmp_path.iterdir()), name


def test_scan_without_lung_mask(trained, tmp_path, capsys):
    run, _ = trained
    scan = write_scan(tmp_path / "nolung", lung=False)
    rc, err = _predict(["--model", run, scan, "-o", tmp_path / "out"], capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "out" / "nolung" / "summary.json").read_text())
    assert summary["lung_mask"] == "from the image: dfseg.transforms.lung.LungMaskd"
    mask = load_nifti(tmp_path / "out" / "nolung" / "mask.nii.gz")[0] > 0
    lungs = _lungs()
    # p = 0.95 everywhere, so the lesion mask is the image-based lung mask: it must find the two lungs
    assert 2 * (mask & lungs).sum() / (mask.sum() + lungs.sum()) > 0.8
    assert summary["n_lesions"] >= 1 and summary["presence_score"] == pytest.approx(P_ALL, abs=1e-5)


def test_missing_model_files(trained, tmp_path, capsys):
    run, _ = trained
    scan = write_scan(tmp_path / "scan")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    rc, err = _predict(["--model", empty, scan, "-o", tmp_path / "out"], capsys)
    assert rc == 1 and "run_info.json: missing; --model takes a training run folder" in err
    broken = tmp_path / "broken_run"
    broken.mkdir()
    (broken / "run_info.json").write_text((run / "run_info.json").read_text())
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    rc, err = _predict(["--model", broken, scan, "-o", tmp_path / "out"], capsys)
    assert rc == 1 and "model.pt: not a readable weights-only checkpoint" in err
    assert not (tmp_path / "out").exists()


def test_lesion_table_numbers_by_probability():
    prob = np.zeros((10, 10, 10))
    prob[1:3, 1:3, 1:3] = 0.7  # 8 voxels, lower probability
    prob[6, 6, 6] = 0.9  # 1 voxel, higher probability
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    labels, rows = lesion_table(prob, np.ones_like(prob, bool), affine, 0.5)
    assert [r["n_voxels"] for r in rows] == [1, 8]
    assert labels[6, 6, 6] == 1 and labels[1, 1, 1] == 2
    assert [rows[0][f"centroid_{a}_mm"] for a in "xyz"] == pytest.approx([13.0, 23.0, 42.0])
    assert rows[1]["volume_mm3"] == pytest.approx(8 * 0.5)
    assert rows[1]["mean_prob"] == pytest.approx(0.7)
    # outside the lung nothing counts
    lung = np.zeros_like(prob, bool)
    lung[5:, 5:, 5:] = True
    labels, rows = lesion_table(prob, lung, affine, 0.5)
    assert len(rows) == 1 and labels.max() == 1 and labels[1, 1, 1] == 0


def test_lesion_table_leaves_out_vessel_segments():
    """A 0.45 mm wide, 2.4 mm long tube at 0.15 mm is a vessel segment, not a lesion, unless every
    shape is asked for; a 0.6 mm nodule beside it is listed."""
    prob = np.zeros((30, 20, 20))
    prob[2:18, 3:6, 3:6] = 0.95  # the tube
    prob[22:26, 12:16, 12:16] = 0.8  # the nodule, 64 voxels
    affine = np.diag([0.15, 0.15, 0.15, 1.0])
    lung = np.ones_like(prob, bool)
    labels, rows = lesion_table(prob, lung, affine, 0.5)
    assert [r["n_voxels"] for r in rows] == [64] and not labels[2:18, 3:6, 3:6].any()
    labels, rows = lesion_table(prob, lung, affine, 0.5, max_elongation=None)
    assert [r["n_voxels"] for r in rows] == [144, 64]


def test_no_lung_in_the_image_names_the_file(trained, tmp_path, capsys):
    """No lung mask given and a body without aerated lung: one line naming the attenuation file."""
    run, _ = trained
    rng = np.random.default_rng(2)
    solid = np.full(SHAPE, 0.02) + rng.normal(0, 0.001, SHAPE)
    flat_df = np.stack([np.full(SHAPE, 0.001)] * 5, -1) + rng.normal(0, 0.0001, SHAPE + (5,))
    scan = write_scan(tmp_path / "solid", lung=False, attn=solid, df=flat_df)
    rc, err = _predict(["--model", run, scan, "-o", tmp_path / "out"], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "solid/attn.mha: no lung mask given and none found in the image" in err, err
    assert not (tmp_path / "out").exists()
