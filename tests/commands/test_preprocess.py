"""``dfseg preprocess`` on a tiny hand-made cohort: outputs, manifest, refusals, no partial output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dfseg.calibration import save_calibration
from dfseg.calibration.fit import fit_calibration
from dfseg.cli import main
from dfseg.data.manifest import build_manifest, write_manifest
from dfseg.io import load_nifti, read_json, save_nifti, write_json
from dfseg.simulate.phantoms import write_phantom_scans
from dfseg.tomo import project, projection_angles

N, PX, ANGLES = 16, 0.5, 24


def _scan(k: int, cal: dict) -> tuple[dict[str, np.ndarray], dict]:
    """Scan ``s<k>``: its images (channels last, as on disk) and sidecar; a disc of water-like mu."""
    x = (np.arange(N) - (N - 1) / 2) * PX
    xx, yy = np.meshgrid(x, x, indexing="ij")
    img = 0.03 * (xx**2 + yy**2 < 3**2)
    sino = project(img, projection_angles(ANGLES), pixel_mm=PX)
    t = np.broadcast_to(np.exp(-sino)[:, :, None, None], (ANGLES, N, 2, 4)).astype(np.float32)
    lab = np.zeros((N, N, 2), np.uint8)
    lab[7:9, 7:9] = k % 2
    images = {"proj_T": t, "proj_D": np.full_like(t, np.exp(-0.02)),
              "attn": np.repeat(img[..., None], 2, -1).astype(np.float32),
              "df": np.full((N, N, 2, 4), 0.01, np.float32), "label": lab,
              "lung_mask": np.ones((N, N, 2), np.uint8)}
    meta = {"subject_id": f"m{k}", "scan_id": f"s{k}", "has_tumour": bool(k % 2),
            **{q: cal["reference"][q] for q in ("kvp", "filtration_mm", "visibility")},
            "orientations_deg": [0.0, 45.0, 90.0, 135.0], "air_columns": 2, "voxel_mm": PX}
    return images, meta


def _write_cohort(cohort, cal: dict, write_image, suffix: str, scans: int = 4) -> None:
    entries = []
    for k in range(scans):
        folder = cohort / "scans" / f"s{k}"
        images, meta = _scan(k, cal)
        for key, array in images.items():
            write_image(folder / f"{key}{suffix}", array)
        write_json(folder / "sidecar.json", meta)
        entries.append({key: str(folder / f"{key}{suffix}") for key in images} | {"sidecar": str(folder / "sidecar.json")})
    write_manifest(cohort / "manifest.json", build_manifest(entries, cohort, num_folds=2, test_by="none"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("work")
    write_phantom_scans(root / "phantoms", {"kvp": 70.0, "noise": False}, seed=0)
    save_calibration(root / "calibration.json", fit_calibration(root / "phantoms"))
    _write_cohort(root / "cohort", read_json(root / "calibration.json"), lambda p, a: save_nifti(p, a, PX), ".nii.gz")
    return root


@pytest.mark.parametrize("domain", ["projection", "volume", "projection+bone"])
def test_preprocess_writes_cohort(cohort, domain, tmp_path):
    out = tmp_path / f"pre_{domain}"
    args = ["preprocess", str(cohort / "cohort" / "manifest.json"), "-o", str(out),
            "--calibration", str(cohort / "calibration.json"), "--domain", domain.split("+")[0]]
    if domain.endswith("+bone"):
        args.append("--bone-correction")
        domain = "projection"
    assert main(args) == 0
    new = json.loads((out / "manifest.json").read_text())
    old = json.loads((cohort / "cohort" / "manifest.json").read_text())
    assert [(e["scan_id"], e["subject_id"], e["fold"]) for e in new["training"]] == \
           [(e["scan_id"], e["subject_id"], e["fold"]) for e in old["training"]]
    e = new["training"][0]
    df, aff = load_nifti(out / e["df"])
    attn, _ = load_nifti(out / e["attn"])
    assert df.shape == (16, 16, 2, 5) and attn.shape == (16, 16, 2)
    np.testing.assert_allclose(np.diag(aff)[:3], 0.5)
    assert "proj_T" not in e and (out / e["label"]).read_bytes() == (cohort / "cohort" / old["training"][0]["label"]).read_bytes()
    if domain == "projection":
        assert abs(attn[7:9, 7:9].mean() - 0.03) < 0.003
    assert main(args) == 1  # non-empty output refused without --overwrite
    assert main(args + ["--overwrite"]) == 0


def test_preprocess_refusals(cohort, tmp_path, capsys):
    base = ["preprocess", str(cohort / "cohort" / "manifest.json"), "--calibration", str(cohort / "calibration.json")]
    assert main(base + ["-o", str(cohort / "cohort" / "out")]) == 1
    assert "input cohort" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "v"), "--domain", "volume", "--bone-correction"]) == 1
    assert "--bone-correction: needs --domain projection" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()
    bad_cal = json.loads((cohort / "calibration.json").read_text())
    del bad_cal["energy_exponent"]["n"]
    (tmp_path / "bad.json").write_text(json.dumps(bad_cal))
    out = tmp_path / "o"
    assert main(base[:2] + ["--calibration", str(tmp_path / "bad.json"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json" in err[0] and "energy_exponent.n" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".o.*"))


def test_preprocess_bad_scan_no_partial_output(cohort, tmp_path, capsys):
    import shutil

    c = tmp_path / "cohort"
    shutil.copytree(cohort / "cohort", c)
    p = c / "scans" / "s2" / "proj_D.nii.gz"
    arr, _ = load_nifti(p)
    save_nifti(p, arr[..., :3], 0.5)  # 3 channels, sidecar says 4 orientations
    out = tmp_path / "o"
    args = ["preprocess", str(c / "manifest.json"), "-o", str(out), "--calibration", str(cohort / "calibration.json")]
    assert main(args) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]  # tqdm shares stderr
    assert len(err) == 1 and err[0].startswith("dfseg preprocess: error:") and "proj_D.nii.gz" in err[0] and "expected 4 orientation channels" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".o.*"))
    arr[0, 0, 0, 0] = np.nan
    save_nifti(p, arr, 0.5)
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "proj_D.nii.gz" in err and "NaN" in err and not out.exists()


#: a rotation about z and a translation: an MHA scan on a grid that is not diag(voxel_mm)
DIRECTION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
ORIGIN = (12.5, -3.0, 7.25)


def _write_mha(path, array) -> None:
    sitk = pytest.importorskip("SimpleITK")
    path.parent.mkdir(parents=True, exist_ok=True)
    vector = array.ndim == 4  # channels last -> one vector component per channel
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.swapaxes(array, 0, 2)), isVector=vector)
    img.SetSpacing((PX, PX, PX))
    img.SetOrigin(ORIGIN)
    img.SetDirection(tuple(DIRECTION.ravel()))
    sitk.WriteImage(img, str(path))


@pytest.mark.parametrize("domain", ["projection", "volume"])
def test_preprocess_mha_scan_keeps_the_label_grid(cohort, domain, tmp_path):
    """attn/df of a scan stored as MHA (origin and direction not trivial) are written on its label's affine."""
    source = tmp_path / "mha"
    _write_cohort(source, read_json(cohort / "calibration.json"), _write_mha, ".mha", scans=2)
    out = tmp_path / "pre"
    assert main(["preprocess", str(source / "manifest.json"), "-o", str(out), "--calibration",
                 str(cohort / "calibration.json"), "--domain", domain]) == 0
    entry = json.loads((out / "manifest.json").read_text())["training"][0]
    assert entry["label"].endswith("label.mha") and entry["lung_mask"].endswith("lung_mask.mha")
    _, label_affine = load_nifti(out / entry["label"])
    _, source_affine = load_nifti(source / "scans" / entry["scan_id"] / "label.mha")
    np.testing.assert_array_equal(label_affine, source_affine)  # copied unchanged
    assert not np.allclose(label_affine, np.diag([PX, PX, PX, 1.0]))
    for key, shape in (("attn", (N, N, 2)), ("df", (N, N, 2, 5))):
        array, affine = load_nifti(out / entry[key])
        assert array.shape == shape
        np.testing.assert_allclose(affine, label_affine, atol=1e-5)
    assert main(["validate-manifest", str(out / "manifest.json")]) == 0
