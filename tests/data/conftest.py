"""Tiny on-disk cohorts (8^3 NIfTI volumes) for the dfseg.data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfseg.data.manifest import build_manifest, scan_entries, write_manifest
from dfseg.io import save_nifti, write_json

N = 8
VOXEL_MM = 0.1
ORIENTATIONS = [0.0, 45.0, 90.0, 135.0]


def sidecar(subject_id: str, scan_id: str, has_tumour: bool, variant: str = "healthy") -> dict:
    """A complete simulator sidecar."""
    return {
        "subject_id": subject_id, "scan_id": scan_id, "kvp": 50.0, "filtration_mm": {"Al": 0.5},
        "visibility": {"v_max": 0.3, "design_energy_kev": 28.0, "width_kev": 10.0},
        "orientations_deg": ORIENTATIONS, "voxel_mm": VOXEL_MM, "photons_per_pixel": 1e4,
        "phase_steps": 5, "n_angles": 12, "air_columns": 2, "variant": variant, "geometry": "ct",
        "simulator_version": "0.1.0", "seed": 3, "has_tumour": has_tumour,
        "tumours": [{"centre_mm": [0.4, 0.4, 0.4], "diameter_mm": 0.2}] if has_tumour else [],
        "spectrum": {"kvp": 50.0},
    }


def write_scan(cohort: Path, subject_id: str, scan_id: str, has_tumour: bool, variant: str = "healthy",
               seed: int = 0) -> Path:
    """Write attn, df (4 orientations), label, lung_mask and sidecar of one scan; return its folder."""
    rng = np.random.default_rng(seed)
    folder = cohort / "scans" / scan_id
    save_nifti(folder / "attn.nii.gz", rng.uniform(0.01, 0.05, (N, N, N)), VOXEL_MM)
    save_nifti(folder / "df.nii.gz", rng.uniform(0.0, 0.02, (N, N, N, len(ORIENTATIONS))), VOXEL_MM)
    label = np.zeros((N, N, N), np.uint8)
    if has_tumour:
        label[3:5, 3:5, 3:5] = 1
    save_nifti(folder / "label.nii.gz", label, VOXEL_MM)
    lung = np.zeros((N, N, N), np.uint8)
    lung[1:7, 1:7, 1:7] = 1
    save_nifti(folder / "lung_mask.nii.gz", lung, VOXEL_MM)
    write_json(folder / "sidecar.json", sidecar(subject_id, scan_id, has_tumour, variant))
    return folder


def make_cohort(cohort: Path, n_subjects: int = 6, scans_per_subject: int = 2, num_folds: int = 2,
                test_by: str = "subject", test_fraction: float = 0.34, **kwargs) -> Path:
    """Write a cohort (half the subjects with tumours) and its manifest; return the manifest path."""
    for s in range(n_subjects):
        variant = "emphysema" if s % 3 == 2 else "healthy"
        for j in range(scans_per_subject):
            write_scan(cohort, f"m{s:02d}", f"m{s:02d}_s{j}", s % 2 == 0, variant, seed=10 * s + j)
    manifest = build_manifest(scan_entries(cohort), cohort, num_folds=num_folds, seed=1, test_by=test_by,
                              test_fraction=test_fraction, name="tiny", **kwargs)
    path = cohort / "manifest.json"
    write_manifest(path, manifest)
    return path


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """Manifest path of a clean 6-subject, 12-scan cohort (2 folds, 2 test subjects)."""
    return make_cohort(tmp_path / "cohort")


@pytest.fixture(name="make_cohort")
def make_cohort_fixture():
    """The :func:`make_cohort` writer, for tests that need other cohort shapes."""
    return make_cohort


@pytest.fixture(name="write_scan")
def write_scan_fixture():
    """The :func:`write_scan` writer."""
    return write_scan
