"""LoadScand and scan_value: one loader and one metadata lookup for every stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dfseg.data.scan import LoadScand, scan_meta, scan_value
from dfseg.errors import InputError
from dfseg.io import write_json


def _write_mha(path: Path, array_xyz: np.ndarray, spacing, origin, direction) -> None:
    """An ITK image with a scanner's origin and direction (array given as (X, Y, Z[, C]))."""
    arr = np.transpose(array_xyz, (2, 1, 0, 3) if array_xyz.ndim == 4 else (2, 1, 0))
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=array_xyz.ndim == 4)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


def test_nifti_cohort_entry_is_channel_first_with_sidecar_meta(cohort: Path) -> None:
    from dfseg.data.manifest import load_manifest

    entry = load_manifest(cohort)["training"][0]
    d = LoadScand(keys=("attn", "df", "label", "lung_mask"))(entry)
    assert d["attn"].shape == (1, 8, 8, 8) and d["df"].shape == (4, 8, 8, 8)
    assert d["label"].shape == (1, 8, 8, 8) and d["attn"].dtype == torch.float32
    assert d["meta"]["kvp"] == 50.0 and d["meta"]["filtration_mm"] == {"Al": 0.5}
    np.testing.assert_allclose(d["attn"].affine.numpy(), np.diag([0.1, 0.1, 0.1, 1.0]))
    assert scan_value(d, "voxel_mm") == pytest.approx(0.1)
    assert d["attn"].meta["filename_or_obj"] == entry["attn"]


def test_mha_keeps_origin_and_direction(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    attn = rng.uniform(0, 1, (6, 5, 4)).astype(np.float32)
    df = rng.uniform(0, 1, (6, 5, 4, 3)).astype(np.float32)
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 deg about z
    spacing, origin = (0.15, 0.12, 0.1), (10.0, -4.0, 2.5)
    _write_mha(tmp_path / "attn.mha", attn, spacing, origin, direction)
    _write_mha(tmp_path / "df.mha", df, spacing, origin, direction)
    d = LoadScand(keys=("attn", "df"))({"attn": str(tmp_path / "attn.mha"), "df": str(tmp_path / "df.mha"),
                                        "kvp": 70.0})
    np.testing.assert_allclose(d["attn"][0].numpy(), attn)
    np.testing.assert_allclose(d["df"].numpy(), np.moveaxis(df, -1, 0))
    aff = d["attn"].affine.numpy()
    # ITK is LPS, the affine is RAS: x and y rows change sign
    expected = np.eye(4)
    expected[:3, :3] = np.asarray(direction).reshape(3, 3) * np.asarray(spacing)
    expected[:3, 3] = origin
    expected[:2] *= -1
    np.testing.assert_allclose(aff, expected, atol=1e-9)
    assert scan_value(d, "voxel_mm", key="attn") == pytest.approx(spacing)
    assert d["meta"] == {"kvp": 70.0}


def test_sidecar_file_overrides_stale_manifest_meta(tmp_path: Path) -> None:
    write_json(tmp_path / "sidecar.json", {"kvp": 80.0})
    entry = {"sidecar": str(tmp_path / "sidecar.json"), "meta": {"kvp": 60.0, "voxel_mm": 0.2}, "kvp": 50.0}
    assert scan_meta(entry) == {"kvp": 80.0, "voxel_mm": 0.2}


def test_scan_value_order_and_errors() -> None:
    d = {"meta": {"kvp": 70.0, "orientations_deg": torch.tensor([0.0, 90.0])}}
    assert scan_value(d, "kvp", 60.0) == 60.0
    assert scan_value(d, "kvp") == 70.0
    assert scan_value(d, "orientations_deg") == [0.0, 90.0]
    assert scan_value(d, "air_columns", default=4) == 4
    with pytest.raises(InputError, match=r"meta\.air_columns: missing"):
        scan_value(d, "air_columns")
    with pytest.raises(InputError, match="voxel_mm"):
        scan_value({"meta": {}}, "voxel_mm", key="attn")


def test_missing_key_and_bad_channels_name_the_file(cohort: Path, tmp_path: Path) -> None:
    from dfseg.data.manifest import load_manifest

    entry = load_manifest(cohort)["training"][0]
    with pytest.raises(InputError, match=r"\.proj_T: missing from the manifest entry"):
        LoadScand(keys=("proj_T",))(entry)
    assert "proj_T" not in LoadScand(keys=("attn", "proj_T"), allow_missing_keys=True)(entry)
    side = dict(load_manifest(cohort)["training"][0])
    write_json(tmp_path / "side.json", {"orientations_deg": [0.0, 90.0]})
    side["sidecar"] = str(tmp_path / "side.json")
    with pytest.raises(InputError, match="expected 2 orientation channels from sidecar, found 4"):
        LoadScand(keys=("df",), check_orientations=True)(side)
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match="broken.nii.gz"):
        LoadScand(keys=("attn",))({"attn": str(tmp_path / "broken.nii.gz")})
