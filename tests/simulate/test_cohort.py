"""Cohort writer and CLI: determinism, refusal of non-empty outputs, manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfseg.cli import main
from dfseg.errors import InputError
from dfseg.io import load_nifti, read_json
from dfseg.simulate.acquisition import AcquisitionConfig
from dfseg.simulate.cohort import write_cohort

FAST = AcquisitionConfig(n_angles=24)


def _cohort(out: Path, seed: int, **kw) -> Path:
    return write_cohort(out, 2, 32, 0.6, seed, progress=False, acquisition=FAST, phantoms=False, folds=2,
                        test_by="none", **kw)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "scans").rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = _files(_cohort(tmp_path / "a", 5))
    b = _files(_cohort(tmp_path / "b", 5))
    c = _files(_cohort(tmp_path / "c", 6, projections=False))
    assert a.keys() == b.keys() and len(a) == 2 * 7
    assert all(a[k] == b[k] for k in a)
    assert not any(k.endswith("proj_T.nii.gz") for k in c)
    attn = next(k for k in a if k.endswith("attn.nii.gz"))
    assert a[attn] != c[attn]


def test_scan_files_and_sidecar(tmp_path):
    out = _cohort(tmp_path / "a", 1)
    scan = sorted((out / "scans").iterdir())[0]
    attn, affine = load_nifti(scan / "attn.nii.gz")
    df, _ = load_nifti(scan / "df.nii.gz")
    proj, _ = load_nifti(scan / "proj_D.nii.gz")
    assert attn.shape == (32, 32, 32) and df.shape == (32, 32, 32, 4) and proj.shape == (24, 32, 32, 4)
    assert np.allclose(np.diag(affine)[:3], 0.6)
    side = read_json(scan / "sidecar.json")
    for key in ("subject_id", "scan_id", "kvp", "filtration_mm", "visibility", "orientations_deg", "voxel_mm",
                "photons_per_pixel", "phase_steps", "n_angles", "air_columns", "variant", "geometry",
                "simulator_version", "seed", "has_tumour", "tumours", "spectrum"):
        assert key in side
    assert side["n_angles"] == 24 and side["orientations_deg"] == [0.0, 45.0, 90.0, 135.0]


def test_radiograph_cohort_shapes(tmp_path):
    out = write_cohort(tmp_path / "r", 2, 32, 0.6, 3, geometry="radiograph", progress=False, phantoms=False,
                       folds=2, test_by="none")
    scan = sorted((out / "scans").iterdir())[0]
    assert load_nifti(scan / "attn.nii.gz")[0].shape == (32, 32, 1)
    assert load_nifti(scan / "df.nii.gz")[0].shape == (32, 32, 1, 4)
    assert read_json(scan / "sidecar.json")["geometry"] == "radiograph"


def test_cli_refuses_non_empty_dir_and_writes_manifest(tmp_path, capsys):
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["simulate", "--out", str(out), "--subjects", "3", "--size", "32", "--voxel-mm", "0.6", "--angles", "12",
            "--folds", "2", "--test-by", "none", "--no-phantoms", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and "--overwrite" in err
    assert main([*args, "--overwrite"]) == 0
    manifest = read_json(out / "manifest.json")
    assert len(manifest["training"]) == 3 and not (out / "keep.txt").exists()
    assert {e["fold"] for e in manifest["training"]} == {0, 1}
    assert main(["validate-manifest", str(out / "manifest.json")]) == 0


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(InputError, match="variant"):
        write_cohort(tmp_path / "x", 1, 32, 0.6, 0, variant="nope", progress=False)


def _spectra(out: Path) -> dict[str, tuple[float, dict]]:
    return {p.parent.name: (read_json(p)["kvp"], read_json(p)["filtration_mm"])
            for p in sorted(out.glob("*/*/sidecar.json"))}


def test_phantoms_follow_the_cohort_spectrum(tmp_path):
    # no flags: the phantoms are scanned at the (first) variant's spectrum, here fine's 60 kVp + 0.5 mm Al
    fine = _spectra(write_cohort(tmp_path / "fine", 2, 24, 0.8, 0, variant="fine", progress=False, acquisition=FAST,
                                 folds=2, test_by="none"))
    assert fine == {"sub-0000_ct": (60.0, {"Al": 0.5}), "sub-0001_ct": (60.0, {"Al": 0.5}),
                    "water_wedge": (60.0, {"Al": 0.5}), "aluminium_wedge": (60.0, {"Al": 0.5}),
                    "microspheres_50kvp": (50.0, {"Al": 0.5}), "microspheres_70kvp": (70.0, {"Al": 0.5})}
    # kvp given: one spectrum for every subject, whatever its variant; the filtration not given is the first variant's
    mixed = _spectra(write_cohort(tmp_path / "mixed", 2, 24, 0.8, 0, variant=["fine", "standard"], progress=False,
                                  acquisition=FAST, folds=2, test_by="none", kvp=80.0))
    assert {k: v for k, v in mixed.items() if k.startswith("sub-")} == {
        "sub-0000_ct": (80.0, {"Al": 0.5}), "sub-0001_ct": (80.0, {"Al": 0.5})}
    assert mixed["water_wedge"] == (80.0, {"Al": 0.5}) and "microspheres_90kvp" in mixed


def test_bad_tube_is_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "c"
    with pytest.raises(InputError, match=r"^kvp: tube voltage must be 20-500 kV"):
        write_cohort(out, 2, 24, 0.8, 0, progress=False, kvp=10.0)
    assert main(["simulate", "--out", str(out), "--subjects", "2", "--size", "24", "--filtration", "Al=-1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dfseg simulate: error: --filtration: Al thickness must be a finite number of mm >= 0, got -1.0"]
    assert not out.exists()
