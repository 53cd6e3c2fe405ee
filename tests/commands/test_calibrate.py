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


def _simulate_and_calibrate(root, subjects: int, *options: str):
    """A small cube cohort with ``options`` and ``dfseg calibrate`` of its phantoms: (cohort, calibration)."""
    cohort = root / "cohort"
    assert main(["simulate", "--out", str(cohort), "--subjects", str(subjects), "--size", "24", "--voxel-mm", "0.8",
                 "--angles", "12", "--folds", "2", "--test-by", "none", "--no-progress", *options]) == 0
    assert main(["calibrate", str(cohort / "phantoms"), "-o", str(root / "calibration.json")]) == 0
    return cohort, root / "calibration.json"


@pytest.fixture(scope="module")
def cohort_80kvp(tmp_path_factory):
    """``dfseg simulate --kvp 80 --filtration Al=0.5,Cu=0.1`` and ``dfseg calibrate`` of its phantoms."""
    return _simulate_and_calibrate(tmp_path_factory.mktemp("kvp80"), 2, "--kvp", "80", "--filtration", "Al=0.5,Cu=0.1")


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


@pytest.fixture(scope="module")
def three_variants(tmp_path_factory):
    """A cohort dealt over the three variants (three spectra) and ``dfseg calibrate`` of its phantoms."""
    return _simulate_and_calibrate(tmp_path_factory.mktemp("variants"), 3, "--variant", "standard", "fine", "coarse")


def test_a_cohort_at_three_spectra_gets_a_phantom_set_and_a_calibration_per_spectrum(three_variants):
    cohort, cal_path = three_variants
    sets = sorted(p.name for p in (cohort / "phantoms").iterdir())
    assert sets == ["00_70kvp_al1", "01_60kvp_al0.5", "02_75kvp_al2"]
    for name, kvp in zip(sets, (70.0, 60.0, 75.0)):
        water = json.loads((cohort / "phantoms" / name / "water_wedge" / "sidecar.json").read_text())
        assert water["kvp"] == kvp
    doc = json.loads(cal_path.read_text())
    assert doc["format"] == "dfseg-calibration-set" and list(doc["calibrations"]) == sets
    energies = [c["reference"]["e_eff_kev"] for c in doc["calibrations"].values()]
    # one reference energy, the median of the spectra's effective energies (the 70 kVp set's)
    assert {c["reference"]["e_ref_kev"] for c in doc["calibrations"].values()} == {sorted(energies)[1]}
    assert energies[1] < energies[0] < energies[2]  # 60 < 70 < 75 kVp
    from dfseg.calibration import reference_energy_kev  # the set's one energy, and a single entry's

    assert reference_energy_kev(cal_path) == pytest.approx(sorted(energies)[1])
    assert reference_energy_kev(doc["calibrations"][sets[2]]) == pytest.approx(sorted(energies)[1])


def test_each_scan_is_corrected_with_its_own_spectrum_s_calibration(three_variants, tmp_path):
    """The set's entry equals the calibration fitted from that spectrum's phantoms alone (same reference energy)."""
    from dfseg.calibration import load_calibration, select_calibration, select_calibration_entry
    from dfseg.calibration.fit import fit_calibration

    cohort, cal_path = three_variants
    doc = json.loads(cal_path.read_text())
    e_ref = next(iter(doc["calibrations"].values()))["reference"]["e_ref_kev"]
    for side in sorted((cohort / "scans").glob("*/sidecar.json")):
        meta = json.loads(side.read_text())
        chosen = load_calibration(cal_path, expect_spectrum=meta)
        name = next(n for n, c in doc["calibrations"].items() if c["reference"]["kvp"] == meta["kvp"])
        alone = fit_calibration(cohort / "phantoms" / name, e_ref_kev=e_ref)
        assert chosen["reference"] == alone["reference"]
        assert chosen["beam_hardening"]["water"]["coefficients"] == alone["beam_hardening"]["water"]["coefficients"]
        assert chosen["energy_exponent"]["n"] == alone["energy_exponent"]["n"]
        assert select_calibration(doc, meta) == chosen
        assert select_calibration_entry(doc, meta) == (name, chosen)
    out = tmp_path / "pre"
    assert main(["preprocess", str(cohort / "manifest.json"), "-o", str(out), "--calibration", str(cal_path),
                 "--no-progress"]) == 0
    assert len(list(out.glob("scans/*/attn.nii.gz"))) == 3


def test_calibration_set_refusals(three_variants, tmp_path, capsys):
    from dfseg.calibration import load_calibration, select_calibration
    from dfseg.errors import InputError

    cohort, cal_path = three_variants
    doc = json.loads(cal_path.read_text())
    with pytest.raises(InputError, match="calibration set for 3 spectra; preprocess"):
        load_calibration(cal_path)  # which entry is meant needs a scan's spectrum
    with pytest.raises(InputError, match="no calibration in the set for 80.0 kVp"):
        select_calibration(doc, {"kvp": 80.0, "filtration_mm": {"Al": 1.0}}, cal_path)
    # two entries at one tube: the scan's visibility decides, and without it the choice is refused
    first = next(iter(doc["calibrations"].values()))
    other = json.loads(json.dumps(first))
    other["reference"]["visibility"]["v_max"] = 0.2
    twins = {**doc, "calibrations": {"a": first, "b": other}}
    scan = {"kvp": 70.0, "filtration_mm": {"Al": 1.0}}
    assert select_calibration(twins, {**scan, "visibility": other["reference"]["visibility"]}) == other
    with pytest.raises(InputError, match="2 calibrations match 70.0 kVp"):
        select_calibration(twins, scan)
    # entries that normalise to different energies are not a set
    bad = json.loads(json.dumps(doc))
    next(iter(bad["calibrations"].values()))["reference"]["e_ref_kev"] += 1.0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    out = tmp_path / "pre"
    assert main(["preprocess", str(cohort / "manifest.json"), "-o", str(out), "--calibration",
                 str(tmp_path / "bad.json"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different reference energies" in err[0] and "bad.json" in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_a_half_randomised_cohort_gets_each_scanner_in_its_phantoms(tmp_path):
    """--randomise-fraction 0.5: subjects 1 and 3 randomised; phantoms for the nominal scanner and each drawn one."""
    cohort = tmp_path / "cohort"
    ranges = tmp_path / "ranges.yaml"
    ranges.write_text("voxel_mm: [0.8, 0.8]\nlung_crop_probability: 0\n")
    assert main(["simulate", "--out", str(cohort), "--subjects", "4", "--size", "24", "--voxel-mm", "0.8",
                 "--angles", "12", "--folds", "2", "--test-by", "none", "--no-progress",
                 "--randomise-ranges", str(ranges), "--randomise-fraction", "0.5"]) == 0
    scans = [json.loads(p.read_text()) for p in sorted((cohort / "scans").glob("*/sidecar.json"))]
    assert ["domain" in s for s in scans] == [False, True, False, True]
    assert scans[0]["kvp"] == scans[2]["kvp"] == 70.0 and scans[1]["kvp"] != scans[3]["kvp"]
    sets = sorted((cohort / "phantoms").iterdir())
    assert [p.name[:2] for p in sets] == ["00", "01", "02"]
    phantoms = [json.loads((s / "water_wedge" / "sidecar.json").read_text()) for s in sets]
    for scan, phantom in zip([scans[0], scans[1], scans[3]], phantoms):
        assert phantom["kvp"] == scan["kvp"] and phantom["filtration_mm"] == scan["filtration_mm"]
        assert phantom["visibility"] == scan["visibility"]
    assert main(["calibrate", str(cohort / "phantoms"), "-o", str(tmp_path / "cal.json")]) == 0
    assert main(["preprocess", str(cohort / "manifest.json"), "-o", str(tmp_path / "pre"), "--calibration",
                 str(tmp_path / "cal.json"), "--no-progress"]) == 0
    assert len(list((tmp_path / "pre").glob("scans/*/attn.nii.gz"))) == 4


def test_randomise_fraction_refusals(tmp_path, capsys):
    for extra, problem in ((["--randomise-fraction", "0.5"], "needs --randomise"),
                           (["--randomise", "--randomise-fraction", "1.5"], "must be in [0, 1]")):
        out = tmp_path / "c"
        assert main(["simulate", "--out", str(out), "--subjects", "2", "--size", "24", "--no-progress", *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--randomise-fraction" in err[0] and problem in err[0], err
        assert not out.exists()
