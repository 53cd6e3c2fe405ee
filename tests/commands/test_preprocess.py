"""``dfseg preprocess`` on a tiny hand-made cohort: outputs, manifest, refusals, no partial output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dfseg.calibration.fit import fit_calibration
from dfseg.cli import main
from dfseg.io import load_nifti, save_nifti, write_json
from dfseg.simulate.phantoms import write_phantom_scans


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from dfseg.calibration import save_calibration
    from dfseg.data.manifest import build_manifest, write_manifest
    from dfseg.tomo import project, projection_angles

    root = tmp_path_factory.mktemp("work")
    write_phantom_scans(root / "phantoms", {"kvp": 70.0, "noise": False}, seed=0)
    cal = fit_calibration(root / "phantoms")
    save_calibration(root / "calibration.json", cal)
    cohort = root / "cohort"
    n, px = 16, 0.5
    x = (np.arange(n) - (n - 1) / 2) * px
    xx, yy = np.meshgrid(x, x, indexing="ij")
    img = 0.03 * (xx**2 + yy**2 < 3**2)
    sino = project(img, projection_angles(24), pixel_mm=px)
    entries = []
    for k in range(4):
        folder = cohort / "scans" / f"s{k}"
        t = np.broadcast_to(np.exp(-sino)[:, :, None, None], (24, n, 2, 4)).astype(np.float32)
        save_nifti(folder / "proj_T.nii.gz", t, px)
        save_nifti(folder / "proj_D.nii.gz", np.full_like(t, np.exp(-0.02)), px)
        save_nifti(folder / "attn.nii.gz", np.repeat(img[..., None], 2, -1), px)
        save_nifti(folder / "df.nii.gz", np.full((n, n, 2, 4), 0.01, np.float32), px)
        lab = np.zeros((n, n, 2), np.uint8)
        lab[7:9, 7:9] = k % 2
        save_nifti(folder / "label.nii.gz", lab, px)
        save_nifti(folder / "lung_mask.nii.gz", np.ones((n, n, 2), np.uint8), px)
        meta = {"subject_id": f"m{k}", "scan_id": f"s{k}", "has_tumour": bool(k % 2),
                **{q: cal["reference"][q] for q in ("kvp", "filtration_mm", "visibility")},
                "orientations_deg": [0.0, 45.0, 90.0, 135.0], "air_columns": 2, "voxel_mm": px}
        write_json(folder / "sidecar.json", meta)
        entries.append({key: str(folder / f"{key}.nii.gz") for key in ("attn", "df", "label", "lung_mask", "proj_T", "proj_D")}
                       | {"sidecar": str(folder / "sidecar.json")})
    manifest = build_manifest(entries, cohort, num_folds=2, test_by="none")
    write_manifest(cohort / "manifest.json", manifest)
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
