"""One test per problem the manifest validator reports, each checking its message."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dfseg.data.validate import Problem, check_no_leakage, validate_manifest, validate_scan
from dfseg.io import save_nifti

N = 8  # voxels per side of the conftest cohort
VOXEL_MM = 0.1  # its voxel size


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _dump(path: Path, manifest: dict) -> None:
    # written raw on purpose: write_manifest would refuse the broken manifests these tests need
    path.write_text(json.dumps(manifest, indent=2))


def _file(manifest_path: Path, split: str, index: int, key: str) -> Path:
    return manifest_path.parent / _load(manifest_path)[split][index][key]


def _messages(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]


def _only(problems: list[Problem], needle: str) -> Problem:
    hits = [p for p in problems if needle in p.message]
    assert len(hits) == 1, _messages(problems)
    return hits[0]


def _at(problems: list[Problem], where: Path) -> Problem:
    hits = [p for p in problems if p.where == str(where)]
    assert len(hits) == 1, _messages(problems)
    return hits[0]


def test_clean_cohort_has_no_problems(cohort):
    assert validate_manifest(cohort) == []


def test_schema_violation_names_json_path(cohort):
    m = _load(cohort)
    m["training"][3]["fold"] = "two"
    del m["test"][0]["label"]
    _dump(cohort, m)
    problems = validate_manifest(cohort, check_images=False)
    assert str(_at(problems, f"{cohort}:training[3].fold")) == f"{cohort}:training[3].fold: 'two' is not of type 'integer'"
    assert str(_only(problems, "'label' is a required")) == f"{cohort}:test[0]: 'label' is a required property"


def test_missing_file(cohort):
    attn = _file(cohort, "training", 2, "attn")
    attn.unlink()
    p = _only(validate_manifest(cohort), "file not found")
    assert p.where == str(attn)
    assert p.message == f"file not found (named by {cohort}:training[2].attn)"


def test_missing_sidecar(cohort):
    sidecar = _file(cohort, "test", 1, "sidecar")
    sidecar.unlink()
    p = _only(validate_manifest(cohort), "file not found")
    assert str(p) == f"{sidecar}: file not found (named by {cohort}:test[1].sidecar)"


def test_hash_mismatch(cohort):
    attn = _file(cohort, "training", 0, "attn")
    save_nifti(attn, np.full((N, N, N), 0.02), VOXEL_MM)
    problems = validate_manifest(cohort)
    p = _only(problems, "sha256 mismatch")
    assert p.where == str(attn) and f"manifest {cohort}:training[0].sha256.attn has" in p.message
    assert validate_manifest(cohort, check_hashes=False) == []


def test_duplicate_scan_id(cohort):
    m = _load(cohort)
    m["test"][0]["scan_id"] = m["training"][1]["scan_id"]
    _dump(cohort, m)
    p = _only(validate_manifest(cohort, check_images=False), "duplicate scan_id")
    assert str(p) == f"{cohort}:test[0].scan_id: duplicate scan_id {m['training'][1]['scan_id']!r} (also training[1])"


def test_subject_in_two_folds(cohort):
    m = _load(cohort)
    first, second = m["training"][0], m["training"][1]
    assert first["subject_id"] == second["subject_id"]
    second["fold"] = 1 - first["fold"]
    _dump(cohort, m)
    p = _only(validate_manifest(cohort, check_images=False), "folds")
    assert str(p) == (f"{cohort}:training[1].fold: subject {first['subject_id']!r} is in folds {first['fold']} "
                      f"(training[0]) and {second['fold']}; a subject's scans must share one fold")


def test_subject_in_training_and_test(cohort):
    m = _load(cohort)
    moved = m["training"].pop(0)
    moved["fold"] = -1
    m["test"].append(moved)
    _dump(cohort, m)
    p = _only(validate_manifest(cohort, check_images=False), "leakage")
    index = len(m["test"]) - 1
    assert str(p) == (f"{cohort}:test[{index}].subject_id: subject {moved['subject_id']!r} is in both training "
                      f"(training[0]) and test (leakage)")


def test_fold_out_of_range_and_test_fold(cohort):
    m = _load(cohort)
    for entry in m["training"][:2]:
        entry["fold"] = 7
    m["test"][0]["fold"] = 0
    _dump(cohort, m)
    problems = _messages(validate_manifest(cohort, check_images=False))
    assert f"{cohort}:training[0].fold: fold 7 outside 0..1 (num_folds 2)" in problems
    assert f"{cohort}:test[0].fold: test entries must have fold -1, found 0" in problems


def test_shape_mismatch(cohort):
    label = _file(cohort, "training", 0, "label")
    save_nifti(label, np.zeros((N, N, N + 1), np.uint8), VOXEL_MM)
    p = _only(validate_manifest(cohort, check_hashes=False), "shape")
    assert str(p) == f"{label}: shape (8, 8, 9) differs from attn (8, 8, 8)"


def test_spacing_mismatch(cohort):
    lung = _file(cohort, "training", 0, "lung_mask")
    array, _ = nib.load(lung).get_fdata(), None
    save_nifti(lung, array.astype(np.uint8), (VOXEL_MM, VOXEL_MM, 0.2))
    p = _only(validate_manifest(cohort, check_hashes=False), "spacing")
    assert str(p) == f"{lung}: voxel spacing (0.1, 0.1, 0.2) mm differs from attn (0.1, 0.1, 0.1) mm"


def test_affine_mismatch(cohort):
    label = _file(cohort, "training", 0, "label")
    img = nib.load(label)
    affine = img.affine.copy()
    affine[:3, 3] = [1.0, 0.0, 0.0]  # same spacing, shifted origin
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), label)
    p = _only(validate_manifest(cohort, check_hashes=False), "affine")
    assert str(p) == f"{label}: affine (origin or direction) differs from attn's"


def test_sidecar_voxel_size_disagrees(cohort):
    m = _load(cohort)
    sidecar = cohort.parent / m["training"][0]["sidecar"]
    meta = json.loads(sidecar.read_text())
    meta["voxel_mm"] = 0.05
    sidecar.write_text(json.dumps(meta))
    p = _only(validate_manifest(cohort, check_hashes=False), "sidecar voxel_mm")
    assert p.message == "voxel spacing (0.1, 0.1, 0.1) mm differs from sidecar voxel_mm (0.05, 0.05, 0.05)"


def test_label_not_binary(cohort):
    label = _file(cohort, "training", 0, "label")
    values = np.zeros((N, N, N), np.uint8)
    values[0, 0, 0], values[1, 1, 1] = 1, 2
    save_nifti(label, values, VOXEL_MM)
    p = _only(validate_manifest(cohort, check_hashes=False), "0 and 1")
    assert str(p) == f"{label}: label must hold only 0 and 1, found values 0, 1, 2"


@pytest.mark.parametrize("has_tumour", [True, False])
def test_label_emptiness_disagrees_with_has_tumour(cohort, has_tumour):
    m = _load(cohort)
    index = next(i for i, e in enumerate(m["training"]) if e["has_tumour"] is has_tumour)
    label = cohort.parent / m["training"][index]["label"]
    values = np.zeros((N, N, N), np.uint8)
    if not has_tumour:
        values[2:4, 2:4, 2:4] = 1  # 8 voxels where no tumour should be
    save_nifti(label, values, VOXEL_MM)
    p = _only(validate_manifest(cohort, check_hashes=False), "has_tumour is")
    expected = "label is empty but has_tumour is true" if has_tumour else "label has 8 tumour voxels but has_tumour is false"
    assert str(p) == f"{label}: {expected}"


def test_nan_voxels(cohort):
    attn = _file(cohort, "training", 0, "attn")
    values = np.full((N, N, N), 0.02)
    values[0, 0, :3] = np.nan
    values[1, 1, 1] = np.inf
    save_nifti(attn, values, VOXEL_MM)
    p = _only(validate_manifest(cohort, check_hashes=False), "NaN")
    assert str(p) == f"{attn}: 4 NaN/Inf voxels"


def test_df_channels_disagree_with_sidecar(cohort):
    df = _file(cohort, "training", 0, "df")
    save_nifti(df, np.zeros((N, N, N, 3)), VOXEL_MM)
    p = _only(validate_manifest(cohort, check_hashes=False), "orientation channels")
    assert str(p) == f"{df}: expected 4 orientation channels from sidecar orientations_deg, found 3"


def test_corrupt_file(cohort):
    attn = _file(cohort, "training", 0, "attn")
    attn.write_bytes(b"this is not a nifti file at all")
    p = _at(validate_manifest(cohort, check_hashes=False), attn)
    assert p.message.startswith("cannot read image header (")


def test_truncated_file(cohort):
    df = _file(cohort, "training", 0, "df")
    raw = gzip.decompress(df.read_bytes())
    df.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    p = _at(validate_manifest(cohort, check_hashes=False), df)
    # the header declares 8 * 8 * 8 * 4 channels * 4 bytes after its 352-byte offset; the gzip holds half
    assert p.message == (f"header declares {8 * 8 * 8 * 4 * 4 + 352} bytes of image data but the file holds "
                         f"{len(raw) // 2} (truncated file or bogus header)")


def test_huge_header_is_refused_without_reading(cohort):
    attn = _file(cohort, "training", 0, "attn")
    header = nib.Nifti1Header()
    header.set_data_shape((4096, 4096, 4096))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    attn.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))  # 356 bytes declaring 256 GiB
    p = _at(validate_manifest(cohort, check_hashes=False), attn)
    assert p.message.startswith("header declares (4096, 4096, 4096) = 68719476736 voxels, more than dfseg reads")


def test_sidecar_wrong_type_and_missing_field(cohort):
    sidecar = _file(cohort, "training", 0, "sidecar")
    meta = json.loads(sidecar.read_text())
    meta["kvp"] = "fifty"
    del meta["orientations_deg"]
    sidecar.write_text(json.dumps(meta))
    problems = _messages(validate_manifest(cohort, check_hashes=False))
    assert f"{sidecar}:kvp: 'fifty' is not of type 'number'" in problems
    assert f"{sidecar}: 'orientations_deg' is a required property" in problems


def test_sidecar_disagrees_with_entry(cohort):
    m = _load(cohort)
    m["training"][0]["has_tumour"] = not m["training"][0]["has_tumour"]
    _dump(cohort, m)
    sidecar = cohort.parent / m["training"][0]["sidecar"]
    flag = m["training"][0]["has_tumour"]
    problems = _messages(validate_manifest(cohort, check_hashes=False))
    assert f"{cohort}:training[0].has_tumour: {flag!r} differs from {not flag!r} in {sidecar}" in problems
    # without opening files, the copy of the sidecar in the entry's meta shows the same disagreement
    problems = _messages(validate_manifest(cohort, check_images=False))
    assert problems == [f"{cohort}:training[0].has_tumour: {flag!r} differs from {not flag!r} in {cohort}:training[0].meta"]


def test_real_scanner_sidecar_without_simulator_fields_is_accepted(cohort):
    sidecar = _file(cohort, "training", 0, "sidecar")
    meta = json.loads(sidecar.read_text())
    for key in ("photons_per_pixel", "phase_steps", "n_angles", "air_columns", "variant", "geometry",
                "simulator_version", "seed", "has_tumour", "tumours", "spectrum"):
        del meta[key]
    sidecar.write_text(json.dumps(meta))
    assert validate_manifest(cohort, check_hashes=False) == []


def test_every_problem_is_reported(cohort):
    m = _load(cohort)
    m["training"][0]["fold"] = 9
    m["test"][0]["scan_id"] = m["training"][2]["scan_id"]
    _dump(cohort, m)
    _file(cohort, "training", 3, "lung_mask").unlink()
    save_nifti(_file(cohort, "training", 4, "df"), np.zeros((N, N, N, 2)), VOXEL_MM)
    problems = _messages(validate_manifest(cohort, check_hashes=False))
    # fold range, fold split, duplicate id, its sidecar's disagreeing scan_id, missing file, df channels
    assert len(problems) == 6, problems
    for needle in ("outside 0..1", "is in folds", "duplicate scan_id", "differs from", "file not found",
                   "expected 4 orientation channels"):
        assert sum(needle in p for p in problems) == 1, needle
    assert all(": " in p and "\n" not in p for p in problems)


def test_validate_scan_and_leakage_helpers(cohort):
    from dfseg.data.manifest import load_manifest

    m = load_manifest(cohort)
    assert validate_scan(m["training"][0]) == []
    Path(m["training"][0]["lung_mask"]).unlink()
    assert len(validate_scan(m["training"][0], where="x")) == 1
    leak = check_no_leakage(m["training"][:3], m["training"][1:2] + m["test"])
    assert _messages(leak) == [f"val[0].subject_id: subject {m['training'][1]['subject_id']!r} is in both train and val (leakage)"]
    assert check_no_leakage(m["training"], m["test"]) == []


def test_unreadable_manifest(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    problems = validate_manifest(path)
    assert len(problems) == 1 and problems[0].where == str(path) and problems[0].message.startswith("not valid JSON")


def test_mha_image_is_read_through_simpleitk(cohort):
    import SimpleITK as sitk

    from dfseg.data.manifest import load_manifest

    entry = load_manifest(cohort)["training"][0]
    array = np.asarray(nib.load(entry["attn"]).dataobj)
    image = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)))  # ITK arrays are (Z, Y, X)
    image.SetSpacing((VOXEL_MM,) * 3)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS identity expressed in ITK's LPS
    mha = Path(entry["attn"]).with_name("attn.mha")
    sitk.WriteImage(image, str(mha))
    assert validate_scan({**entry, "attn": str(mha)}, check_hashes=False) == []
    image.SetSpacing((VOXEL_MM, VOXEL_MM, 0.3))
    sitk.WriteImage(image, str(mha))
    problems = _messages(validate_scan({**entry, "attn": str(mha)}, check_hashes=False))
    # attn is the reference grid, so the other three images disagree with it, and it with the sidecar
    assert f"{entry['df']}: voxel spacing (0.1, 0.1, 0.1) mm differs from attn (0.1, 0.1, 0.3) mm" in problems
    assert len(problems) == 4
