"""A tiny synthetic cohort for bundle and training tests (no simulator needed).

Each scan: 32^3 at 0.1 mm (or, with ``radiograph=True``, a 64x64x1 radiograph: files (X, Y, 1) and
(X, Y, 1, N) as docs/ARCHITECTURE.md specifies), ``attn`` (1 channel), ``df`` (5 channels: preprocessed, decomposed) or
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
                preprocessed: bool = True, radiograph: bool = False) -> Path:
    """Write the cohort under ``root`` and return its manifest path."""
    rng = np.random.default_rng(seed)
    shape = (64, 64, 1) if radiograph else (SIZE,) * 3
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    centre = (np.array(shape) - 1) / 2
    semi = np.array([24, 20, 1]) if radiograph else np.array([12, 10, 13])
    lung = (((grid - centre) / semi) ** 2).sum(-1) <= 1
    entries = []
    for s in range(n_subjects):
        scan_id = f"s{s:02d}"
        folder = root / "scans" / scan_id
        has = s % 2 == 0
        label = np.zeros(shape, np.uint8)
        if has:
            c = np.append(rng.integers(22, 42, 2), 0) if radiograph else rng.integers(11, 21, 3)
            label = (((grid - c) ** 2).sum(-1) <= (4.0 if radiograph else 3.0) ** 2) & lung
        attn = np.where(lung, 0.005, 0.02) + rng.normal(0, 0.001, shape)
        attn = attn + 0.015 * label
        c0 = np.where(lung, 0.01, 0.001) * (1 - 0.8 * label) + rng.normal(0, 0.0005, shape)
        if preprocessed:
            amp = 0.2 * c0
            df = np.stack([c0, amp, amp / np.maximum(c0, 1e-6), amp * 0.6, amp * 0.8], -1)
        else:
            # fibres at 30 deg, so both orientation channels (amp cos 2t, amp sin 2t) carry signal
            df = np.stack([c0 * (1 + 0.1 * np.cos(2 * np.deg2rad(w - 30))) for w in (0, 45, 90, 135)], -1)
        save_nifti(folder / "attn.nii.gz", attn.astype(np.float32), VOXEL_MM)
        save_nifti(folder / "df.nii.gz", df.astype(np.float32), VOXEL_MM)
        save_nifti(folder / "label.nii.gz", label.astype(np.uint8), VOXEL_MM)
        save_nifti(folder / "lung_mask.nii.gz", lung.astype(np.uint8), VOXEL_MM)
        sidecar = {"subject_id": f"m{s:02d}", "scan_id": scan_id, "kvp": 50.0, "filtration_mm": {"Al": 0.5},
                   "visibility": {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0},
                   "orientations_deg": [0.0, 45.0, 90.0, 135.0], "voxel_mm": VOXEL_MM, "has_tumour": has,
                   "preprocessed": preprocessed, "geometry": "radiograph" if radiograph else "ct"}
        write_json(folder / "sidecar.json", sidecar)
        entries.append({k: str(folder / f"{k}.nii.gz") for k in ("attn", "df", "label", "lung_mask")}
                       | {"sidecar": str(folder / "sidecar.json")})
    manifest = build_manifest(entries, root, num_folds=num_folds, seed=seed, test_fraction=0.25, hashes=False)
    path = root / "manifest.json"
    write_manifest(path, manifest)
    return path


def raw_calibration(path: Path) -> Path:
    """A small valid ``calibration.json`` matching the cohort's sidecars (50 kVp, 0.5 mm Al).

    Hand-written rather than fitted (fitting needs ~10 s of phantom simulation): mild first-order
    beam-hardening curves, identity-like linearisation, energy exponent 2.
    """
    from dfseg.calibration import save_calibration

    visibility = {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0}
    curve = {"coefficients": [-0.05, 0.01], "degree": 2, "a_max": 2.0, "first_order_c1": -0.05}
    cal = {"format": "dfseg-calibration", "format_version": 1,
           "reference": {"kvp": 50.0, "filtration_mm": {"Al": 0.5}, "visibility": visibility, "e_ref_kev": 30.0,
                         "e_eff_kev": 30.0, "e_eff_water_mm": 0.0, "air": {"T": 1.0, "D": 1.0}},
           "beam_hardening": {"water": dict(curve), "aluminium": dict(curve)},
           "linearisation": {"water": {"coefficients": [1.0], "degree": 1, "mu_eff_per_mm": 0.02, "a_max": 2.0}},
           "energy_exponent": {"n": 2.0}, "inputs": {}}
    save_calibration(path, cal)
    return path
