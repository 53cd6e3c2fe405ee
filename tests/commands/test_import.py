"""``dfseg import``: a lab's folder of scans (MHA, DICOM, TIFF; labelled or not) -> a valid manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from image_formats import SPACING, dicom_values, ras_affine, write_dicom_series, write_mha, write_tiff

from dfseg.cli import main
from dfseg.data.importer import TEMPLATE, read_template
from dfseg.data.manifest import load_manifest, schema_errors
from dfseg.data.scan import LoadScand
from dfseg.io import write_json

SHAPE = (7, 6, 9)
ORIENTATIONS = [0.0, 90.0]


def _template(tmp_path: Path, capsys) -> Path:
    """``dfseg import --write-template``, edited for a 2-orientation scanner."""
    path = tmp_path / "acq.json"
    assert main(["import", "--write-template", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {path}: edit its values")
    document = json.loads(path.read_text())
    document["orientations_deg"] = ORIENTATIONS
    path.write_text(json.dumps(document))
    return path


def _sidecar(subject: str, scan: str) -> dict:
    return {"subject_id": subject, "scan_id": scan, "kvp": 60.0, "filtration_mm": {"Al": 0.5},
            "visibility": {"v_max": 0.25, "design_energy_kev": 28.0, "width_kev": 9.0},
            "orientations_deg": ORIENTATIONS, "voxel_mm": list(SPACING)}


def _mha_scan(folder: Path, seed: int, labelled: bool = False, sidecar: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    images = {"attn": rng.uniform(0, 0.05, SHAPE).astype(np.float32),
              "df": rng.uniform(0, 0.02, (*SHAPE, len(ORIENTATIONS))).astype(np.float32)}
    if labelled:
        images["label"] = np.zeros(SHAPE, np.uint8)
        images["label"][2:4, 2:4, 3:5] = 1
        images["lung_mask"] = np.zeros(SHAPE, np.uint8)
        images["lung_mask"][1:6, 1:5, 1:8] = 1
    for key, array in images.items():
        write_mha(folder / f"{key}.mha", array)
    if sidecar is not None:
        write_json(folder / "sidecar.json", sidecar)
    return images


def test_import_mha_folder_validates_and_loads(tmp_path, capsys):
    src = tmp_path / "scans"
    written = {"a1": _mha_scan(src / "a1", 1), "a2": _mha_scan(src / "a2", 2),
               "c1": _mha_scan(src / "c1", 3, labelled=True, sidecar=_sidecar("mouse3", "c1"))}
    template = _template(tmp_path, capsys)
    out = tmp_path / "cohort"
    assert main(["import", str(src), "-o", str(out), "--sidecar-template", str(template)]) == 0
    manifest_path = out / "manifest.json"
    assert capsys.readouterr().out == (f"wrote {manifest_path}: inference manifest, 3 scans, 3 subjects, "
                                       "1 labelled\n")
    assert main(["validate-manifest", str(manifest_path)]) == 0
    assert capsys.readouterr().out == f"{manifest_path}: ok, 3 scans, 3 subjects, 0 folds, 0 problems\n"
    document = json.loads(manifest_path.read_text())
    assert document["purpose"] == "inference" and document["training"] == []
    assert all(not Path(e["attn"]).is_absolute() for e in document["test"])  # relative to the manifest
    manifest = load_manifest(manifest_path)
    by_scan = {e["scan_id"]: e for e in manifest["test"]}
    assert sorted(by_scan) == ["a1", "a2", "c1"]
    # unlabelled scans carry the template plus ids and the header's voxel size; c1 names its own sidecar
    a1 = by_scan["a1"]
    assert "label" not in a1 and "sidecar" not in a1 and "has_tumour" not in a1
    assert a1["meta"]["orientations_deg"] == ORIENTATIONS and a1["meta"]["kvp"] == 70.0
    assert a1["meta"]["voxel_mm"] == pytest.approx(list(SPACING)) and a1["subject_id"] == "a1"
    c1 = by_scan["c1"]
    assert c1["subject_id"] == "mouse3" and c1["has_tumour"] is True and c1["meta"]["kvp"] == 60.0
    assert Path(c1["sidecar"]).name == "sidecar.json"
    for scan_id, entry in by_scan.items():
        keys = ("attn", "df", "label", "lung_mask") if "label" in entry else ("attn", "df")
        d = LoadScand(keys=keys, check_orientations=True)(entry)
        for key in keys:
            expected = written[scan_id][key]
            got = d[key].numpy() if key == "df" else d[key][0].numpy()
            np.testing.assert_allclose(got, np.moveaxis(expected, -1, 0) if key == "df" else expected)
            np.testing.assert_allclose(d[key].affine.numpy(), ras_affine(), atol=1e-6)
    # the manifest is never replaced silently
    before = manifest_path.read_bytes()
    assert main(["import", str(src), "-o", str(out), "--sidecar-template", str(template)]) == 1
    assert capsys.readouterr().err == (f"dfseg import: error: {manifest_path}: already exists; "
                                       "pass --overwrite to replace it\n")
    assert manifest_path.read_bytes() == before
    assert main(["import", str(src), "-o", str(out), "--sidecar-template", str(template), "--overwrite"]) == 0


def test_import_mixed_dicom_tiff_and_user_patterns(tmp_path, capsys):
    """A DICOM attn folder with an MHA df, a TIFF scan sized by the template, and a user layout."""
    rng = np.random.default_rng(5)
    src = tmp_path / "lab"
    attn = dicom_values(rng, SHAPE)
    write_dicom_series(src / "d1" / "attn", attn)
    write_mha(src / "d1" / "df.mha", rng.uniform(0, 0.02, (*SHAPE, 2)).astype(np.float32))
    tif_attn = rng.uniform(0, 0.05, SHAPE).astype(np.float32)
    write_tiff(src / "t1" / "attn.tif", tif_attn)  # no spacing in the file: the template's voxel_mm sizes it
    write_tiff(src / "t1" / "df.tif", rng.uniform(0, 0.02, (*SHAPE, 2)).astype(np.float32))
    template = _template(tmp_path, capsys)
    # a TIFF stack without spacing and no voxel_mm anywhere: one line naming the file
    assert main(["import", str(src), "-o", str(tmp_path / "m0"), "--sidecar-template", str(template)]) == 1
    err = capsys.readouterr().err
    assert err == (f"dfseg import: error: {src / 't1' / 'attn.tif'}: TIFF stack without a voxel size "
                   "(no ImageJ/OME spacing); put voxel_mm in the scan's sidecar\n")
    assert not (tmp_path / "m0" / "manifest.json").exists()
    document = json.loads(template.read_text())
    document["voxel_mm"] = list(SPACING)
    template.write_text(json.dumps(document))
    assert main(["import", str(src), "-o", str(tmp_path / "m1"), "--sidecar-template", str(template)]) == 0
    capsys.readouterr()
    assert main(["validate-manifest", str(tmp_path / "m1" / "manifest.json")]) == 0
    entries = {e["scan_id"]: e for e in load_manifest(tmp_path / "m1" / "manifest.json")["test"]}
    d = LoadScand(keys=("attn", "df"))(entries["d1"])
    np.testing.assert_allclose(d["attn"][0].numpy(), attn, atol=1e-6)
    np.testing.assert_allclose(d["attn"].affine.numpy(), ras_affine(), atol=1e-6)
    t = LoadScand(keys=("attn", "df"))(entries["t1"])
    np.testing.assert_array_equal(t["attn"][0].numpy(), tif_attn)
    np.testing.assert_allclose(t["df"].affine.numpy(), np.diag([*SPACING, 1.0]), atol=1e-6)
    # a user layout: <subject>/<scan>/mu.mha and dfi.mha; subject ids from the folder names
    user = tmp_path / "user"
    for i, (subject, scan) in enumerate((("m1", "day0"), ("m1", "day7"), ("m2", "day0b"))):
        images = _mha_scan(user / subject / scan, 10 + i)
        (user / subject / scan / "attn.mha").rename(user / subject / scan / "mu.mha")
        (user / subject / scan / "df.mha").rename(user / subject / scan / "dfi.mha")
        assert images
    args = ["import", str(user), "-o", str(tmp_path / "m2"), "--sidecar-template", str(template),
            "--attn", "{subject}/{scan}/mu.mha", "--df", "{subject}/{scan}/dfi.mha"]
    assert main(args) == 0
    assert capsys.readouterr().out.endswith("inference manifest, 3 scans, 2 subjects, 0 labelled\n")
    m2 = load_manifest(tmp_path / "m2" / "manifest.json")
    assert sorted((e["subject_id"], e["scan_id"]) for e in m2["test"]) == [("m1", "day0"), ("m1", "day7"),
                                                                         ("m2", "day0b")]
    assert main(["validate-manifest", str(tmp_path / "m2" / "manifest.json")]) == 0


def test_import_one_line_errors_and_no_partial_output(tmp_path, capsys):
    src = tmp_path / "scans"
    _mha_scan(src / "a1", 1)
    out = tmp_path / "out"
    # no acquisition metadata at all
    assert main(["import", str(src), "-o", str(out)]) == 1
    assert capsys.readouterr().err == (f"dfseg import: error: {src / 'a1'}: no acquisition metadata: give "
                                       "--sidecar-template (dfseg import --write-template acq.json writes one) "
                                       "or a sidecar.json per scan\n")
    # a template without kvp is named with the field
    template = _template(tmp_path, capsys)
    document = json.loads(template.read_text())
    del document["kvp"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    assert main(["import", str(src), "-o", str(out), "--sidecar-template", str(bad)]) == 1
    assert capsys.readouterr().err == f"dfseg import: error: {bad}: 'kvp' is a required property (scan 'a1')\n"
    # a template whose orientations disagree with df's channels: the validator's line, nothing written
    document = json.loads(template.read_text())
    document["orientations_deg"] = [0.0, 45.0, 90.0]
    three = tmp_path / "three.json"
    three.write_text(json.dumps(document))
    assert main(["import", str(src), "-o", str(out), "--sidecar-template", str(three)]) == 1
    assert capsys.readouterr().err == (f"dfseg import: error: {src / 'a1' / 'df.mha'}: expected 3 orientation "
                                       "channels from sidecar orientations_deg, found 2\n")
    assert not out.exists() or list(out.iterdir()) == []
    # a training manifest still needs labels
    assert main(["import", str(src), "-o", str(out), "--sidecar-template", str(template), "--purpose",
                 "training"]) == 1
    assert capsys.readouterr().err == (f"dfseg import: error: {src / 'a1'}: scan 'a1' has no label; a training "
                                       "manifest needs label and lung_mask for every scan (or --purpose inference)\n")
    # a scan without df, a bad placeholder, a folder without scans
    (src / "a1" / "df.mha").unlink()
    assert main(["import", str(src), "-o", str(out), "--sidecar-template", str(template)]) == 1
    assert capsys.readouterr().err == (f"dfseg import: error: {src / 'a1'}: scan 'a1' has attn but no df "
                                       "(a1/df.nii.gz, a1/df.mha, ... or a DICOM folder a1/df/)\n")
    assert main(["import", str(src), "-o", str(out), "--attn", "{mouse}/mu.mha"]) == 1
    assert capsys.readouterr().err == ("dfseg import: error: --attn: unknown placeholder {mouse} in "
                                       "'{mouse}/mu.mha'; use {scan} and {subject}\n")
    (tmp_path / "empty").mkdir()
    assert main(["import", str(tmp_path / "empty"), "-o", str(out)]) == 1
    assert "no scans found" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_training_import_assigns_folds(tmp_path, capsys):
    src = tmp_path / "scans"
    for i in range(4):
        _mha_scan(src / f"m{i}", i, labelled=True)
    template = _template(tmp_path, capsys)
    out = tmp_path / "out"
    args = ["import", str(src), "-o", str(out), "--sidecar-template", str(template), "--purpose", "training",
            "--folds", "2", "--test-fraction", "0"]
    assert main(args) == 0
    capsys.readouterr()
    manifest = load_manifest(out / "manifest.json")
    assert "purpose" not in manifest and manifest["num_folds"] == 2 and len(manifest["training"]) == 4
    assert sorted(e["fold"] for e in manifest["training"]) == [0, 0, 1, 1]
    assert all(e["has_tumour"] is True for e in manifest["training"])  # from the labels
    assert main(["validate-manifest", str(out / "manifest.json")]) == 0
    assert main([*args, "--overwrite", "--folds", "5"]) == 1
    assert capsys.readouterr().err.endswith("error: num_folds: 4 subjects cannot fill 5 folds; use fewer folds\n")


def test_template_fields_are_the_simulator_defaults_and_a_valid_sidecar():
    from dfseg.simulate.acquisition import AcquisitionConfig

    config = AcquisitionConfig()
    assert TEMPLATE["kvp"] == config.kvp and TEMPLATE["filtration_mm"] == dict(config.filtration_mm)
    assert TEMPLATE["orientations_deg"] == list(config.orientations_deg)
    assert {k: config.visibility[k] for k in TEMPLATE["visibility"]} == TEMPLATE["visibility"]
    fields = {k: v for k, v in TEMPLATE.items() if not k.startswith("_") and v is not None}
    assert schema_errors({**fields, "subject_id": "s", "scan_id": "s", "voxel_mm": 0.1}, "sidecar") == []
    assert set(TEMPLATE["_comments"]) - {"about"} == set(TEMPLATE) - {"_comments"}


def test_read_template_drops_comments_and_nulls(tmp_path):
    path = tmp_path / "t.json"
    write_json(path, {"_comments": {"kvp": "x"}, "kvp": 50.0, "voxel_mm": None})
    assert read_template(path) == {"kvp": 50.0}


def test_import_with_relative_paths_from_the_working_directory(tmp_path, capsys, monkeypatch):
    """A new user types relative paths: the manifest's paths must still point at the scans."""
    _mha_scan(tmp_path / "lab" / "m1", 1)
    template = _template(tmp_path, capsys)
    monkeypatch.chdir(tmp_path)
    assert main(["import", "lab", "-o", "cohort", "--sidecar-template", "acq.json"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["validate-manifest", "cohort/manifest.json"]) == 0
    entry = json.loads((tmp_path / "cohort" / "manifest.json").read_text())["test"][0]
    assert entry["attn"] == "../lab/m1/attn.mha"
    assert template.is_file()
