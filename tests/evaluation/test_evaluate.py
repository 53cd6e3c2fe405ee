"""``dfseg evaluate`` end to end on a tiny synthetic cohort with hand-made probabilities.

Cohort (16^3 voxels of 0.1 mm, lung = [2:14]^3, 3 subjects):
- s0 (m0): lesion [4:8]^3, probability 0.9 exactly on it -> detected, Dice 1.
- s1 (m1): lesion [8:12]^3, probability 0.05 everywhere -> missed, Dice 0.
- s2 (m2): no lesion, a 0.7 blob at [10:14]x[10:14]x[10:13] (0.048 mm^3, above the smallest lesion
  reported) -> one false-positive component.
- s3 (m2): no lesion, 0.05 everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import SimpleITK as sitk

from dfseg.cli import main
from dfseg.errors import InputError
from dfseg.evaluation.evaluate import load_scan
from dfseg.io import load_nifti, save_nifti

SHAPE = (16, 16, 16)
#: an oblique grid as a scanner may write it (ITK's LPS terms): shifted origin, rotated axes, anisotropic voxels
ORIGIN, SPACING = (2.5, -1.0, 4.0), (0.1, 0.1, 0.2)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


def make_cohort(root: Path) -> tuple[Path, Path, dict]:
    pred_dir = root / "pred"
    pred_dir.mkdir(parents=True)
    entries, arrays = [], {}
    rng = np.random.default_rng(0)
    for i, subject in enumerate(["m0", "m1", "m2", "m2"]):
        sid = f"s{i}"
        d = root / "scans" / sid
        label = np.zeros(SHAPE, np.uint8)
        lung = np.zeros(SHAPE, np.uint8)
        lung[2:14, 2:14, 2:14] = 1
        prob = np.full(SHAPE, 0.05, np.float32)
        if i == 0:
            label[4:8, 4:8, 4:8] = 1
            prob[4:8, 4:8, 4:8] = 0.9
        if i == 1:
            label[8:12, 8:12, 8:12] = 1
        if i == 2:
            prob[10:14, 10:14, 10:13] = 0.7
        save_nifti(d / "label.nii.gz", label, 0.1)
        save_nifti(d / "lung_mask.nii.gz", lung, 0.1)
        save_nifti(d / "attn.nii.gz", rng.random(SHAPE).astype(np.float32), 0.1)
        save_nifti(d / "df.nii.gz", rng.random((*SHAPE, 3)).astype(np.float32), 0.1)
        save_nifti(pred_dir / f"{sid}_prob.nii.gz", prob, 0.1)
        arrays[sid] = (prob, label, lung)
        entries.append({k: f"scans/{sid}/{k}.nii.gz" for k in ("attn", "df", "label", "lung_mask")}
                       | {"subject_id": subject, "scan_id": sid, "fold": -1, "has_tumour": bool(label.any())})
    manifest = {"name": "tiny", "pipeline_version": "test", "num_folds": 2, "seed": 0,
                "test_split": {"by": "subject"}, "training": [], "validation": [], "test": entries}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return pred_dir, root / "manifest.json", arrays


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    pred_dir, manifest, arrays = make_cohort(root)
    out = root / "eval"
    rc = main(["evaluate", "--predictions", str(pred_dir), "--manifest", str(manifest), "-o", str(out),
               "--bootstrap", "50", "--seed", "0"])
    assert rc == 0
    return root, out, arrays


def test_metrics_match_hand_computation(evaluated):
    _, out, arrays = evaluated
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["metrics"]
    assert doc["n_scans"] == 4 and doc["n_subjects"] == 3 and doc["n_lesions"] == 2
    # volume scores 0.9(+), 0.05(+), 0.7(-), 0.05(-): pairs 1 + 1 + 0 + 0.5 of 4
    assert m["volume_auroc"]["estimate"] == pytest.approx(0.625)
    assert m["volume_sensitivity"]["estimate"] == pytest.approx(0.5)
    assert m["volume_specificity"]["estimate"] == pytest.approx(0.5)
    assert m["lesion_sensitivity"]["estimate"] == pytest.approx(0.5)
    assert m["lesion_fp_per_scan"]["estimate"] == pytest.approx(0.25)
    assert m["lesion_precision"]["estimate"] == pytest.approx(0.5)
    assert m["dice"]["estimate"] == pytest.approx(0.5)
    # FROC candidates: the components at 0.5 (0.9 on the lesion of s0, the 0.7 blob of s2, a false
    # positive) and the regional maxima below it: the 0.05 lung of s1 (its plateau covers the lesion: a hit)
    # and of s3 (a false positive); the 0.05 lungs of s0 and s2 touch higher voxels, so they are no maxima.
    # Curve: 0.9 -> (0 FP/scan, 1/2); 0.7 -> (1/4, 1/2); 0.05 -> (2/4, 2/2). Sensitivity at 1/8, 1/4: 1/2;
    # at 1/2..8: 1 (every lesion hit, so every point is reached). CPM = (2 * 1/2 + 5) / 7.
    assert m["froc_cpm"]["estimate"] == pytest.approx(6 / 7)
    froc = doc["froc"]
    assert froc["sensitivities"] == pytest.approx([0.5, 0.5, 1, 1, 1, 1, 1])
    assert froc["reached"] == [True] * 7 and froc["unreached_fp_rates"] == []
    # at the threshold the FROC passes through the matching's lesion sensitivity and FP components per scan
    assert froc["operating_point"] == {"threshold": 0.5, "fp_per_scan": 0.25, "sensitivity": 0.5}
    # per volume: scores 0.9 (+), 0.05 (+), 0.7 (-), 0.05 (-)
    assert m["volume_brier"]["estimate"] == pytest.approx((0.1**2 + 0.95**2 + 0.7**2 + 0.05**2) / 4, rel=1e-6)
    # bins: {0.05 (+), 0.05 (-)}: |0.1 - 1|; {0.7 (-)}: 0.7; {0.9 (+)}: 0.1 -> ECE = 1.7 / 4
    assert m["volume_ece"]["estimate"] == pytest.approx(1.7 / 4, rel=1e-6)
    assert sum(doc["volume_reliability"]["count"]) == 4 and doc["volume_reliability"]["count"][0] == 2
    roc = doc["roc"]
    assert roc["volume"]["counts"] == {"subjects": 3, "positives": 2, "negatives": 2, "unit": "volumes"}
    assert roc["patch"]["counts"] == {"subjects": 3, "positives": 9, "negatives": 23, "unit": "patches", "lesions": 2}
    assert all(lo - 1e-9 <= hi for lo, hi in zip(roc["patch"]["tpr_low"], roc["patch"]["tpr_high"]))
    # patches (8 per scan, starts 2 and 10 per axis): positives = 1 at 0.9 (s0) + all 8 of s1 at 0.05;
    # negatives = 7 (s0) + 8 (s2, one at 0.7) + 8 (s3) = 22 at 0.05 + 1 at 0.7
    # AUROC = (23 + 8 * 22 * 0.5) / (9 * 23)
    assert m["patch_auroc"]["estimate"] == pytest.approx(111 / 207)
    assert doc["confusion"]["voxel"] == {"tp": 64, "fp": 48, "fn": 64, "tn": 4 * 16**3 - 176}
    assert doc["confusion"]["lesion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": None}
    # Brier over lung voxels, computed directly
    sq = [((p - y) ** 2)[lung > 0].sum() for p, y, lung in arrays.values()]
    assert m["brier"]["estimate"] == pytest.approx(sum(sq) / (4 * 12**3), rel=1e-5)
    for v in m.values():
        if v["estimate"] is not None and v["ci_low"] is not None:
            assert v["ci_low"] - 1e-9 <= v["ci_high"]
    assert "overlaps a reference lesion by at least one voxel" in doc["rules"]["matching"]


def test_report_links_every_figure_and_pngs_open(evaluated):
    _, out, _ = evaluated
    doc = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    assert set(doc["figures"]) == {"roc", "pr", "froc", "reliability", "volume_reliability", "confusion",
                                   "lesion_montage"}
    for rel in doc["figures"].values():
        assert f"]({rel})" in report
        img = mpimg.imread(out / rel)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        # not blank: many distinct colours, and ink on a white background
        assert np.unique(np.round(img[..., :3] * 255).astype(np.uint32) @ np.array([65536, 256, 1])).size > 20
        assert (img[..., :3].mean(axis=2) < 0.5).mean() > 0.002
    assert doc["manifest"]["sha256"] in report
    assert "Lesion matching rule" in report
    assert len(doc["montage"]) == 2  # one detected and one missed lesion
    records = json.loads((out / "records.json").read_text())["records"]
    assert [r["scan_id"] for r in records] == ["s0", "s1", "s2", "s3"]


def test_refuses_non_empty_output(evaluated, capsys):
    root, out, _ = evaluated
    before = (out / "metrics.json").stat().st_mtime_ns
    rc = main(["evaluate", "--predictions", str(root / "pred"), "--manifest", str(root / "manifest.json"),
               "-o", str(out), "--bootstrap", "5"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "--overwrite" in err and len(err.splitlines()) == 1
    assert (out / "metrics.json").stat().st_mtime_ns == before


def test_metrics_record_the_lesion_rule(evaluated, tmp_path, capsys):
    root, out, _ = evaluated
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["parameters"]["max_lesion_elongation"] == 2.5 and "2.5 times as long" in doc["rules"]["lesion"]
    rc = main(["evaluate", "--predictions", str(root / "pred"), "--manifest", str(root / "manifest.json"),
               "-o", str(tmp_path / "bad"), "--max-elongation", "0.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "--max-elongation" in err and len(err.splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_missing_prediction_is_one_line_error(tmp_path, capsys):
    pred_dir, manifest, _ = make_cohort(tmp_path)
    (pred_dir / "s2_prob.nii.gz").unlink()
    rc = main(["evaluate", "--predictions", str(pred_dir), "--manifest", str(manifest), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "s2_prob.nii.gz" in err and "missing prediction" in err
    assert not (tmp_path / "o").exists()


def test_shape_mismatch_is_one_line_error(tmp_path, capsys):
    pred_dir, manifest, _ = make_cohort(tmp_path)
    save_nifti(pred_dir / "s1_prob.nii.gz", np.zeros((16, 16, 8), np.float32), 0.1)
    rc = main(["evaluate", "--predictions", str(pred_dir), "--manifest", str(manifest), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "s1_prob.nii.gz" in err and "(16, 16, 8)" in err
    assert not (tmp_path / "o").exists()


def save_mha(path: Path, array: np.ndarray, origin=ORIGIN, direction=DIRECTION) -> Path:
    """Write ``array`` (X, Y, Z) as MHA on the oblique grid (or one with another origin or direction)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))  # ITK arrays are (Z, Y, X)
    image.SetOrigin(origin)
    image.SetSpacing(SPACING)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def test_mha_images_on_one_oblique_grid_and_a_prediction_off_it(tmp_path):
    label, lung = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    label[4:8, 4:8, 4:8], lung[2:14, 2:14, 2:14] = 1, 1
    prob = np.where(label > 0, 0.9, 0.05).astype(np.float32)
    entry = {"scan_id": "s0", "has_tumour": True, "label": str(save_mha(tmp_path / "label.mha", label)),
             "lung_mask": str(save_mha(tmp_path / "lung_mask.mha", lung))}
    p, y, m, voxel_mm = load_scan(entry, save_mha(tmp_path / "s0_prob.mha", prob))
    assert np.array_equal(p, prob) and np.array_equal(y, label > 0) and np.array_equal(m, lung > 0)
    assert np.allclose(voxel_mm, SPACING)
    shifted = save_mha(tmp_path / "shifted_prob.mha", prob, origin=(2.8, -1.0, 4.0))
    with pytest.raises(InputError, match=r"shifted_prob\.mha: affine \(origin or direction\) differs from label"):
        load_scan(entry, shifted)
    rotated = save_mha(tmp_path / "rotated_prob.mha", prob, direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    with pytest.raises(InputError, match=r"rotated_prob\.mha: affine"):
        load_scan(entry, rotated)


def test_evaluate_cohort_stored_as_mha(tmp_path, capsys):
    """Labels and lung masks as MHA on an oblique grid, predictions NIfTI with the same (RAS) affine."""
    pred_dir, manifest, arrays = make_cohort(tmp_path)
    doc = json.loads(manifest.read_text())
    for entry in doc["test"]:
        for key in ("attn", "label", "lung_mask"):
            nifti = tmp_path / entry[key]
            array, _ = load_nifti(nifti)
            entry[key] = str(save_mha(nifti.with_name(f"{key}.mha"), array).relative_to(tmp_path))
            nifti.unlink()
        _, affine = load_nifti(tmp_path / entry["label"])
        save_nifti(pred_dir / f"{entry['scan_id']}_prob.nii.gz", arrays[entry["scan_id"]][0], affine)
    manifest.write_text(json.dumps(doc))
    out = tmp_path / "eval"
    argv = ["evaluate", "--predictions", str(pred_dir), "--manifest", str(manifest), "-o", str(out), "--bootstrap", "5"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_scans"] == 4 and metrics["metrics"]["dice"]["estimate"] == pytest.approx(0.5)
    assert metrics["confusion"]["voxel"]["tp"] == 64
    # the same predictions shifted by 0.3 mm are refused, naming the prediction
    _, affine = load_nifti(tmp_path / doc["test"][2]["label"])
    affine[0, 3] += 0.3
    save_nifti(pred_dir / "s2_prob.nii.gz", arrays["s2"][0], affine)
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "s2_prob.nii.gz: affine (origin or direction) differs from label" in err


def test_montage_shows_attenuation_and_dark_field_of_every_lesion(evaluated):
    from dfseg.evaluation.evaluate import montage_panels, read_split, score_predictions

    root, _, arrays = evaluated
    _, entries = read_split(root / "manifest.json", "test", root / "pred")
    records = score_predictions(root / "pred", entries)
    panels, montage = montage_panels(records, entries, root / "pred", 0.5)
    assert [m["scan_id"] for m in montage] == ["s0", "s1"]
    for panel in panels:
        assert list(panel["images"]) == ["attenuation", "dark-field"]
        assert panel["images"]["attenuation"].shape == panel["images"]["dark-field"].shape == panel["label"].shape
        assert panel["voxel_mm"] == pytest.approx([0.1, 0.1])
    # s0's lesion [4:8]^3 at z = round(5.5) = 6, crop [0:14] in x and y: the label slice is the lesion
    assert panels[0]["label"].sum() == 16 and panels[0]["pred"].sum() == 16
