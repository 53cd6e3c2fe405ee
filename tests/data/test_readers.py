"""Readers of a lab's formats: MHA, DICOM series, TIFF stack, through load_nifti, the header reader and LoadScand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from image_formats import (
    SPACING,
    dicom_values,
    ras_affine,
    write_dicom_series,
    write_mha,
    write_tiff,
)

from dfseg.data.scan import LoadScand
from dfseg.data.validate import read_header, validate_scan
from dfseg.errors import InputError
from dfseg.io import load_nifti, sha256_file

SHAPE = (7, 6, 9)  # X, Y, Z: every axis a different length, so a transposition cannot pass


def test_dicom_series_keeps_values_origin_and_direction(tmp_path: Path) -> None:
    attn = dicom_values(np.random.default_rng(0), SHAPE)
    folder = write_dicom_series(tmp_path / "attn", attn)
    array, affine = load_nifti(folder)
    assert array.shape == SHAPE
    np.testing.assert_allclose(array, attn, atol=1e-6)
    np.testing.assert_allclose(affine, ras_affine(), atol=1e-6)
    shape, header_affine = read_header(folder)  # from two slices' headers, no voxels
    assert shape == SHAPE
    np.testing.assert_allclose(header_affine, affine, atol=1e-6)
    d = LoadScand(keys=("attn",))({"attn": str(folder)})
    assert tuple(d["attn"].shape) == (1, *SHAPE) and d["attn"].dtype == torch.float32
    np.testing.assert_allclose(d["attn"][0].numpy(), attn, atol=1e-6)
    np.testing.assert_allclose(d["attn"].affine.numpy(), ras_affine(), atol=1e-6)


def test_dicom_folder_with_two_series_or_none_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "two").mkdir()
    for i, uid in enumerate(("1.2.3.4", "1.2.3.5")):
        write_dicom_series(tmp_path / f"s{i}", dicom_values(rng, (4, 4, 3)), series_uid=uid)
        for f in (tmp_path / f"s{i}").iterdir():
            f.rename(tmp_path / "two" / f"{i}_{f.name}")
    with pytest.raises(InputError) as err:
        load_nifti(tmp_path / "two")
    assert str(err.value) == f"{tmp_path / 'two'}: 2 DICOM series in one folder; put each series in its own folder"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"empty: no DICOM series in this folder$"):
        load_nifti(tmp_path / "empty")


def test_tiff_stack_axes_and_imagej_spacing(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    attn = rng.uniform(0, 1, SHAPE).astype(np.float32)
    df = rng.uniform(0, 1, (*SHAPE, 3)).astype(np.float32)
    write_tiff(tmp_path / "attn.tif", attn, SPACING)
    write_tiff(tmp_path / "df.tiff", df, SPACING)
    d = LoadScand(keys=("attn", "df"))({"attn": str(tmp_path / "attn.tif"), "df": str(tmp_path / "df.tiff")})
    np.testing.assert_array_equal(d["attn"][0].numpy(), attn)
    np.testing.assert_array_equal(d["df"].numpy(), np.moveaxis(df, -1, 0))
    # TIFF has no origin or direction: the affine is diag(spacing), spacing from the ImageJ metadata
    np.testing.assert_allclose(d["attn"].affine.numpy(), np.diag([*SPACING, 1.0]), atol=1e-6)
    np.testing.assert_allclose(d["df"].affine.numpy(), np.diag([*SPACING, 1.0]), atol=1e-6)
    assert read_header(tmp_path / "df.tiff")[0] == (*SHAPE, 3)


def test_tiff_without_spacing_needs_the_sidecar_voxel_size(tmp_path: Path) -> None:
    attn = np.random.default_rng(3).uniform(0, 1, SHAPE).astype(np.float32)
    path = write_tiff(tmp_path / "attn.tif", attn)
    with pytest.raises(InputError) as err:
        load_nifti(path)
    assert str(err.value) == (f"{path}: TIFF stack without a voxel size (no ImageJ/OME spacing); "
                              "put voxel_mm in the scan's sidecar")
    d = LoadScand(keys=("attn",))({"attn": str(path), "meta": {"voxel_mm": [0.1, 0.1, 0.15]}})
    np.testing.assert_allclose(d["attn"].affine.numpy(), np.diag([0.1, 0.1, 0.15, 1.0]))
    np.testing.assert_array_equal(d["attn"][0].numpy(), attn)
    assert read_header(path, 0.05)[1][2, 2] == pytest.approx(0.05)


def test_mixed_formats_share_one_grid_in_the_validator(tmp_path: Path) -> None:
    """attn as a DICOM series and df as MHA, on one scanner grid: no problems; a shifted df is named."""
    rng = np.random.default_rng(4)
    attn = write_dicom_series(tmp_path / "attn", dicom_values(rng, SHAPE))
    df = write_mha(tmp_path / "df.mha", rng.uniform(0, 1, (*SHAPE, 2)).astype(np.float32))
    meta = {"subject_id": "a", "scan_id": "a", "kvp": 70.0, "filtration_mm": {"Al": 1.0},
            "visibility": {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0},
            "orientations_deg": [0.0, 90.0], "voxel_mm": list(SPACING)}
    entry = {"attn": str(attn), "df": str(df), "subject_id": "a", "scan_id": "a", "meta": meta}
    assert validate_scan(entry) == []
    # a df shifted by one voxel is named by the validator
    write_mha(tmp_path / "df2.mha", rng.uniform(0, 1, (*SHAPE, 2)).astype(np.float32), origin=(5.2, -3.0, 12.0))
    problems = validate_scan({**entry, "df": str(tmp_path / "df2.mha")})
    assert [str(p) for p in problems] == [f"{tmp_path / 'df2.mha'}: affine (origin or direction) differs from attn's"]
    # a DICOM folder hashes by its files' names and bytes
    before = sha256_file(attn)
    assert len(before) == 64
    (attn / "slice000.dcm").write_bytes((attn / "slice000.dcm").read_bytes() + b"\0")
    assert sha256_file(attn) != before
