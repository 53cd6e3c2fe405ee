"""A tiny synthetic cohort for bundle and training tests (no simulator needed).

Each scan: 32^3 at 0.1 mm, ``attn`` (1 channel), ``df`` (5 channels: preprocessed, decomposed) or
4 orientation channels (raw), ``lung_mask`` (an ellipsoid), ``label`` (a ~3-voxel-radius blob in half
of the scans: bright in attn, dark in df), ``sidecar.json``; manifest via ``dfseg.data``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfseg.data.manifest import build_manifest, write_manifest
from dfseg.io import save_nifti, write_json

SIZE = 32
VOXEL_MM = 0.1


def make_cohort(root: Path, n_subjects: int = 8, *, seed: int = 0, num_folds: int = 2,
                preprocessed: bool = True) -> Path:
    """Write the cohort under ``root`` and return its manifest path."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"), -1).astype(float)
    centre = (SIZE - 1) / 2
    lung = (((grid - centre) / np.array([12, 10, 13])) ** 2).sum(-1) <= 1
    entries = []
    for s in range(n_subjects):
        scan_id = f"s{s:02d}"
        folder = root / "scans" / scan_id
        has = s % 2 == 0
        label = np.zeros((SIZE,) * 3, np.uint8)
        if has:
            c = rng.integers(11, 21, 3)
            label = (((grid - c) ** 2).sum(-1) <= 3.0**2) & lung
        attn = np.where(lung, 0.005, 0.02) + rng.normal(0, 0.001, (SIZE,) * 3)
        attn = attn + 0.015 * label
        c0 = np.where(lung, 0.01, 0.001) * (1 - 0.8 * label) + rng.normal(0, 0.0005, (SIZE,) * 3)
        if preprocessed:
            amp = 0.2 * c0
            df = np.stack([c0, amp, amp / np.maximum(c0, 1e-6), amp * 0.6, amp * 0.8], -1)
        else:
            df = np.stack([c0 * (1 + 0.1 * np.cos(2 * np.deg2rad(w))) for w in (0, 45, 90, 135)], -1)
        save_nifti(folder / "attn.nii.gz", attn.astype(np.float32), VOXEL_MM)
        save_nifti(folder / "df.nii.gz", df.astype(np.float32), VOXEL_MM)
        save_nifti(folder / "label.nii.gz", label.astype(np.uint8), VOXEL_MM)
        save_nifti(folder / "lung_mask.nii.gz", lung.astype(np.uint8), VOXEL_MM)
        sidecar = {"subject_id": f"m{s:02d}", "scan_id": scan_id, "kvp": 50.0, "filtration_mm": {"Al": 0.5},
                   "visibility": {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0},
                   "orientations_deg": [0.0, 45.0, 90.0, 135.0], "voxel_mm": VOXEL_MM, "has_tumour": has,
                   "preprocessed": preprocessed}
        write_json(folder / "sidecar.json", sidecar)
        entries.append({k: str(folder / f"{k}.nii.gz") for k in ("attn", "df", "label", "lung_mask")}
                       | {"sidecar": str(folder / "sidecar.json")})
    manifest = build_manifest(entries, root, num_folds=num_folds, seed=seed, test_fraction=0.25, hashes=False)
    path = root / "manifest.json"
    write_manifest(path, manifest)
    return path
