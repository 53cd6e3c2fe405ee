"""``dfseg calibrate`` end to end, refusals and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest

from dfseg.calibration.fit import summary
from dfseg.cli import main
from dfseg.simulate.phantoms import write_phantom_scans


def test_calibrate_cli(tmp_path, capsys):
    ph = tmp_path / "phantoms"
    write_phantom_scans(ph, {"kvp": 70.0, "noise": False}, seed=0)
    out = tmp_path / "calibration.json"
    assert main(["calibrate", str(ph), "-o", str(out)]) == 0
    cal = json.loads(out.read_text())
    assert cal["reference"]["kvp"] == 70.0 and "n" in cal["energy_exponent"]
    assert main(["calibrate", str(ph), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert main(["calibrate", str(ph), "-o", str(out), "--overwrite"]) == 0
    shutil.rmtree(ph / "microspheres_80kvp")
    assert main(["calibrate", str(ph), "-o", str(tmp_path / "c2.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two tube voltages" in err[0]
    assert not (tmp_path / "c2.json").exists()


FILTER = {"Al": 0.5, "Cu": 0.1}


@pytest.fixture(scope="module")
def cohort_80kvp(tmp_path_factory):
    """``dfseg simulate --kvp 80 --filtration Al=0.5,Cu=0.1`` and ``dfseg calibrate`` of its phantoms."""
    root = tmp_path_factory.mktemp("kvp80")
    cohort = root / "cohort"
    assert main(["simulate", "--out", str(cohort), "--subjects", "2", "--size", "24", "--voxel-mm", "0.8",
                 "--angles", "12", "--folds", "2", "--test-by", "none", "--no-progress",
                 "--kvp", "80", "--filtration", "Al=0.5,Cu=0.1"]) == 0
    assert main(["calibrate", str(cohort / "phantoms"), "-o", str(root / "calibration.json")]) == 0
    return cohort, root / "calibration.json"


def test_simulate_at_80kvp_records_the_spectrum_everywhere(cohort_80kvp):
    cohort, _ = cohort_80kvp
    sidecars = sorted((cohort / "scans").glob("*/sidecar.json"))
    assert len(sidecars) == 2
    for path in sidecars:
        side = json.loads(path.read_text())
        assert side["kvp"] == 80.0 and side["filtration_mm"] == FILTER
        assert side["spectrum"]["kvp"] == 80.0 and side["spectrum"]["filtration_mm"] == FILTER
    phantoms = {p.parent.name: json.loads(p.read_text()) for p in (cohort / "phantoms").glob("*/sidecar.json")}
    assert {k: v["kvp"] for k, v in phantoms.items()} == {
        "water_wedge": 80.0, "aluminium_wedge": 80.0, "microspheres_70kvp": 70.0, "microspheres_90kvp": 90.0}
    assert all(v["filtration_mm"] == FILTER for v in phantoms.values())
    manifest = json.loads((cohort / "manifest.json").read_text())
    assert [(e["meta"]["kvp"], e["meta"]["filtration_mm"]) for e in manifest["training"]] == [(80.0, FILTER)] * 2


def test_calibration_at_80kvp_matches_and_preprocess_accepts_it(cohort_80kvp, tmp_path, capsys):
    cohort, cal_path = cohort_80kvp
    cal = json.loads(cal_path.read_text())
    assert cal["reference"]["kvp"] == 80.0 and cal["reference"]["filtration_mm"] == FILTER
    ee = cal["energy_exponent"]
    assert ee["kvp"] == [70.0, 90.0] and ee["e_eff_kev"][0] < cal["reference"]["e_eff_kev"] < ee["e_eff_kev"][1]
    assert 2.0 < ee["n"] < 4.0  # DF ~ E^-n of the micro-sphere layer (physics.md section 2)
    assert summary(cal).splitlines()[0] == ("spectrum: 80 kVp, 0.5 mm Al + 0.1 mm Cu "
                                            "(the calibration applies to scans at this spectrum only)")
    out = tmp_path / "pre"
    assert main(["preprocess", str(cohort / "manifest.json"), "-o", str(out), "--calibration", str(cal_path),
                 "--domain", "volume"]) == 0
    assert len(list(out.glob("scans/*/df.nii.gz"))) == 2


def test_preprocess_refuses_a_calibration_for_another_spectrum(cohort_80kvp, tmp_path, capsys):
    cohort, _ = cohort_80kvp
    for name, acquisition, problem in (
        ("70kvp", {"kvp": 70.0, "filtration_mm": FILTER}, "calibration made at 70.0 kVp, scan is 80.0 kVp"),
        ("80kvp_al1", {"kvp": 80.0, "filtration_mm": {"Al": 1.0}},
         "calibration made with filtration {'Al': 1.0}, scan has {'Al': 0.5, 'Cu': 0.1}"),
    ):
        write_phantom_scans(tmp_path / name, {**acquisition, "noise": False}, seed=0)
        cal = tmp_path / f"{name}.json"
        assert main(["calibrate", str(tmp_path / name), "-o", str(cal)]) == 0
        capsys.readouterr()
        out = tmp_path / f"pre_{name}"
        assert main(["preprocess", str(cohort / "manifest.json"), "-o", str(out), "--calibration", str(cal),
                     "--domain", "volume"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and problem in err[0] and str(cal) in err[0], err
        assert not out.exists() or not any(out.iterdir())
