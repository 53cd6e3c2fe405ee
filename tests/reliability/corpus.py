"""A bad-input corpus, made at run time from a small valid cohort (no simulator needed).

:func:`make_cohort` writes a clean cohort (4 subjects x 2 scans, 12^3 voxels at 0.1 mm, attn, df with
4 orientation channels, label, lung_mask, sidecar, a manifest with sha256 of every file), a
matching ``calibration.json`` and tumour probabilities (``predictions/<scan_id>_prob.nii.gz``, the
input of ``dfseg evaluate``). Each case function then breaks one thing in that cohort and returns a
:class:`Expect`: the file the error must name and the substrings (any of) the message must hold.

After breaking an image the case rewrites the manifest's sha256 of that file, so the only problem
a validator can find is the one the case made (a hash mismatch would otherwise mask it).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfseg.data.manifest import build_manifest, write_manifest
from dfseg.io import save_nifti, sha256_file, write_json

N = 12  # voxels per side
VOXEL_MM = 0.1
ORIENTATIONS = [0.0, 45.0, 90.0, 135.0]
KVP = 50.0
FILTRATION = {"Al": 0.5}
VISIBILITY = {"v_max": 0.3, "design_energy_kev": 28.0, "width_kev": 10.0}
#: the entry every case breaks (a tumour-bearing scan, so "empty label" is a contradiction)
TARGET_SPLIT, TARGET_INDEX = "training", 0


@dataclass
class Cohort:
    """Paths of a corpus cohort."""

    root: Path
    manifest: Path
    calibration: Path
    predictions: Path

    def load(self) -> dict:
        """The manifest document (paths relative to ``root``)."""
        return json.loads(self.manifest.read_text())

    def dump(self, document: dict) -> None:
        """Write ``document`` raw: ``write_manifest`` would refuse the broken manifests cases need."""
        self.manifest.write_text(json.dumps(document, indent=2))

    def entry(self) -> dict:
        """The target entry (relative paths)."""
        return self.load()[TARGET_SPLIT][TARGET_INDEX]

    def file(self, key: str) -> Path:
        """Absolute path of ``key`` (``attn``, ``df``, ``label``, ``lung_mask``, ``sidecar``) of the target."""
        return self.root / self.entry()[key]

    def prediction(self) -> Path:
        """The target scan's prediction file."""
        return self.predictions / f"{self.entry()['scan_id']}_prob.nii.gz"

    def rehash(self) -> None:
        """Rewrite every existing file's sha256 in the manifest (so only the case's problem remains)."""
        doc = self.load()
        for split in ("training", "validation", "test"):
            for entry in doc.get(split) or []:
                for key in list(entry.get("sha256", {})):
                    path = self.root / entry[key]
                    if path.is_file():
                        entry["sha256"][key] = sha256_file(path)
        self.dump(doc)


@dataclass
class Expect:
    """What an entry point must say about a case.

    Attributes:
        where: the file (or manifest) the one-line error must name.
        any_of: the message must contain at least one of these (lower-cased comparison).
        keys: the files the case touched (entry points that never read them cannot meet the case).
    """

    where: Path
    any_of: tuple[str, ...]
    keys: tuple[str, ...] = field(default=())

    def matches(self, line: str) -> bool:
        """Whether ``line`` names the file (by name or path) and the problem."""
        low = line.lower()
        names = (str(self.where), self.where.name)
        return any(n in line for n in names) and any(s.lower() in low for s in self.any_of)


def sidecar(subject_id: str, scan_id: str, has_tumour: bool) -> dict:
    """A complete sidecar of the corpus spectrum."""
    return {"subject_id": subject_id, "scan_id": scan_id, "kvp": KVP, "filtration_mm": dict(FILTRATION),
            "visibility": dict(VISIBILITY), "orientations_deg": list(ORIENTATIONS), "voxel_mm": VOXEL_MM,
            "photons_per_pixel": 1e4, "phase_steps": 5, "n_angles": 12, "air_columns": 2,
            "variant": "standard", "geometry": "ct", "simulator_version": "corpus", "seed": 0,
            "has_tumour": has_tumour}


def calibration_doc(kvp: float = KVP, filtration: dict | None = None) -> dict:
    """A calibration in the layout ``dfseg.calibration`` writes, for the corpus spectrum.

    Curves are small first-order ones (a correction, not an identity) so a correcting pipeline
    does real work on the corpus.
    """
    filtration = dict(FILTRATION) if filtration is None else filtration
    curve = {"coefficients": [0.02], "degree": 1, "a_max": 5.0, "first_order_c1": 0.02,
             "residuals": {"heldout_max_abs": 0.0, "heldout_relative": 0.0, "max_abs_value": 0.1}}
    return {
        "format": "dfseg-calibration", "format_version": 1, "dfseg_version": "corpus",
        "created_utc": "2025-01-01T00:00:00+00:00",
        "reference": {"kvp": float(kvp), "filtration_mm": filtration, "visibility": dict(VISIBILITY),
                      "e_ref_kev": 30.0, "e_eff_kev": 30.0, "e_eff_water_mm": 10.0,
                      "air": {"T": 1.0, "D": 1.0}},
        "beam_hardening": {"water": dict(curve), "aluminium": dict(curve)},
        "linearisation": {"water": {"coefficients": [1.0], "degree": 1, "mu_eff_per_mm": 0.03, "a_max": 5.0,
                                    "residuals": {"heldout_max_abs": 0.0}}},
        "energy_exponent": {"n": 2.0, "kvp": [60.0, 80.0], "e_eff_kev": [28.0, 32.0], "df": [0.1, 0.08],
                            "phantom": {}},
        "inputs": {},
    }


def _write_calibration(path: Path, doc: dict) -> None:
    try:  # the real writer when it is there (it validates what it writes)
        from dfseg.calibration import save_calibration
    except ImportError:  # pragma: no cover - before dfseg.calibration landed
        write_json(path, doc)
    else:
        save_calibration(path, doc)


def make_cohort(root: Path, n_subjects: int = 4, scans_per_subject: int = 2, seed: int = 0) -> Cohort:
    """Write a clean corpus cohort under ``root``.

    Even subjects carry a 4 x 4 x 3-voxel tumour (0.048 mm^3, above the smallest lesion dfseg reports) in every scan; the manifest has 2 folds and holds one
    subject out as test, so every split and fold is populated.
    """
    rng = np.random.default_rng(seed)
    entries = []
    lung = np.zeros((N,) * 3, np.uint8)
    lung[2:10, 2:10, 2:10] = 1
    predictions = root / "predictions"
    for s in range(n_subjects):
        for j in range(scans_per_subject):
            subject, scan = f"m{s:02d}", f"m{s:02d}_s{j}"
            folder = root / "scans" / scan
            has = s % 2 == 0
            label = np.zeros((N,) * 3, np.uint8)
            if has:
                label[4:8, 4:8, 4:7] = 1
            attn = rng.uniform(0.01, 0.05, (N,) * 3) + 0.02 * label
            df = rng.uniform(0.002, 0.02, (N,) * 3 + (len(ORIENTATIONS),)) * (1 - 0.8 * label[..., None])
            save_nifti(folder / "attn.nii.gz", attn.astype(np.float32), VOXEL_MM)
            save_nifti(folder / "df.nii.gz", df.astype(np.float32), VOXEL_MM)
            save_nifti(folder / "label.nii.gz", label, VOXEL_MM)
            save_nifti(folder / "lung_mask.nii.gz", lung, VOXEL_MM)
            write_json(folder / "sidecar.json", sidecar(subject, scan, has))
            entries.append({k: str(folder / f"{k}.nii.gz") for k in ("attn", "df", "label", "lung_mask")}
                           | {"sidecar": str(folder / "sidecar.json")})
            prob = np.clip(0.05 + 0.9 * label + rng.uniform(0, 0.05, label.shape), 0, 1).astype(np.float32)
            save_nifti(predictions / f"{scan}_prob.nii.gz", prob, VOXEL_MM)
    manifest = build_manifest(entries, root, num_folds=2, seed=seed, test_fraction=0.25, name="corpus")
    path = root / "manifest.json"
    write_manifest(path, manifest)
    cal = root / "calibration.json"
    _write_calibration(cal, calibration_doc())
    cohort = Cohort(root, path, cal, predictions)
    assert cohort.entry()["has_tumour"], "the target entry must carry a tumour"
    return cohort


# ---------------------------------------------------------------------------------------------
# image writers that bypass save_nifti's conventions


def _resave(path: Path, array: np.ndarray, voxel_mm: float | tuple = VOXEL_MM, *, origin: tuple | None = None) -> None:
    """Rewrite ``path`` with ``array``; optional non-zero origin (affine translation, mm)."""
    if origin is None:
        save_nifti(path, array, voxel_mm)
        return
    import nibabel as nib

    spacing = np.broadcast_to(np.asarray(voxel_mm, float), (3,))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    img = nib.Nifti1Image(np.asarray(array), affine)
    path.write_bytes(gzip.compress(img.to_bytes(), mtime=0))


def _load(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


# ---------------------------------------------------------------------------------------------
# cases: each breaks one thing (in ``key`` where that makes sense) and returns what to expect


def missing_file(c: Cohort, key: str = "attn") -> Expect:
    """A file the manifest names does not exist."""
    path = c.prediction() if key == "prediction" else c.file(key)
    path.unlink()
    return Expect(path, ("not found", "missing", "no such file", "does not exist"), (key,))


def truncated_nifti(c: Cohort, key: str = "df") -> Expect:
    """A ``.nii.gz`` cut in half (an interrupted copy)."""
    path = c.prediction() if key == "prediction" else c.file(key)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    c.rehash()
    return Expect(path, ("truncated", "cannot read", "corrupt"), (key,))


def corrupt_nifti(c: Cohort, key: str = "attn") -> Expect:
    """A ``.nii.gz`` whose bytes are random."""
    path = c.prediction() if key == "prediction" else c.file(key)
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size or 1000))
    c.rehash()
    return Expect(path, ("cannot read", "corrupt", "not a", "truncated"), (key,))


def wrong_dimensionality(c: Cohort, key: str = "attn") -> Expect:
    """A 3D image stored 4D with 3 channels (or a prediction stored 2D)."""
    path = c.prediction() if key == "prediction" else c.file(key)
    array = _load(path)
    if key == "prediction":
        _resave(path, array[..., 0])
    else:
        _resave(path, np.repeat(array[..., None], 3, axis=-1))
    c.rehash()
    return Expect(path, ("3d", "shape", "dimension"), (key,))


def orientation_mismatch(c: Cohort, key: str = "df") -> Expect:
    """``df`` has 3 orientation channels but the sidecar lists 4 grating angles."""
    path = c.file("df")
    _resave(path, _load(path)[..., :3])
    c.rehash()
    return Expect(path, ("orientation", "channels"), ("df",))


def nan_voxels(c: Cohort, key: str = "attn") -> Expect:
    """NaN voxels in a float image."""
    path = c.prediction() if key == "prediction" else c.file(key)
    array = _load(path).astype(np.float32)
    array[1, 2, 3] = np.nan
    _resave(path, array)
    c.rehash()
    return Expect(path, ("nan",), (key,))


def inf_voxels(c: Cohort, key: str = "df") -> Expect:
    """+Inf voxels in a float image."""
    path = c.prediction() if key == "prediction" else c.file(key)
    array = _load(path).astype(np.float32)
    array[3, 2, 1] = np.inf
    _resave(path, array)
    c.rehash()
    return Expect(path, ("inf",), (key,))


def spacing_mismatch(c: Cohort, key: str = "label") -> Expect:
    """``key`` on a 0.2 mm grid while the other images are 0.1 mm (same voxel count)."""
    path = c.prediction() if key == "prediction" else c.file(key)
    _resave(path, _load(path), 2 * VOXEL_MM)
    c.rehash()
    return Expect(path, ("spacing", "affine", "grid", "voxel size"), (key,))


def affine_mismatch(c: Cohort, key: str = "label") -> Expect:
    """``key`` shifted by 0.5 mm (origin differs, spacing equal)."""
    path = c.prediction() if key == "prediction" else c.file(key)
    _resave(path, _load(path), origin=(0.5, 0.0, 0.0))
    c.rehash()
    return Expect(path, ("affine", "origin", "grid"), (key,))


def nonbinary_label(c: Cohort, key: str = "label") -> Expect:
    """A label holding 0, 1 and 2."""
    path = c.file(key)
    array = _load(path).astype(np.uint8)
    array[0, 0, 0] = 2
    _resave(path, array)
    c.rehash()
    return Expect(path, ("0 and 1", "binary"), (key,))


def empty_label(c: Cohort, key: str = "label") -> Expect:
    """An all-zero label on an entry whose sidecar and manifest say ``has_tumour``."""
    path = c.file("label")
    _resave(path, np.zeros_like(_load(path)))
    c.rehash()
    return Expect(path, ("empty", "has_tumour"), ("label",))


def sidecar_missing_field(c: Cohort, key: str = "sidecar") -> Expect:
    """The sidecar lacks ``kvp``."""
    path = c.file("sidecar")
    doc = json.loads(path.read_text())
    del doc["kvp"]
    path.write_text(json.dumps(doc))
    c.rehash()
    return Expect(path, ("'kvp' is a required", "kvp"), ("sidecar",))


def sidecar_wrong_type(c: Cohort, key: str = "sidecar") -> Expect:
    """The sidecar's ``orientations_deg`` is a string."""
    path = c.file("sidecar")
    doc = json.loads(path.read_text())
    doc["orientations_deg"] = "0,45,90,135"
    path.write_text(json.dumps(doc))
    c.rehash()
    return Expect(path, ("orientations_deg", "not of type"), ("sidecar",))


def subject_leakage(c: Cohort, key: str = "manifest") -> Expect:
    """Two scans of one subject in different folds."""
    doc = c.load()
    first = doc["training"][0]
    other = next(i for i, e in enumerate(doc["training"]) if e["subject_id"] == first["subject_id"] and e is not first)
    doc["training"][other]["fold"] = 1 - first["fold"]
    c.dump(doc)
    return Expect(c.manifest, ("leakage", "share one fold", "folds"), ("manifest",))


def duplicate_scan_ids(c: Cohort, key: str = "manifest") -> Expect:
    """Two entries with one ``scan_id``."""
    doc = c.load()
    doc["training"][1]["scan_id"] = doc["training"][0]["scan_id"]
    c.dump(doc)
    return Expect(c.manifest, ("duplicate",), ("manifest",))


def calibration_other_spectrum(c: Cohort, key: str = "calibration") -> Expect:
    """A calibration made at 80 kVp / 1 mm Cu, while the scans are 50 kVp / 0.5 mm Al."""
    c.calibration.unlink()
    _write_calibration(c.calibration, calibration_doc(80.0, {"Cu": 1.0}))
    return Expect(c.calibration, ("kvp", "filtration", "spectrum"), ("calibration",))


def huge_header(c: Cohort, key: str = "attn") -> Expect:
    """A tiny file whose NIfTI header declares 1024 x 1024 x 520 float32 voxels (2.2 GB)."""
    import nibabel as nib

    path = c.prediction() if key == "prediction" else c.file(key)
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.diag([VOXEL_MM] * 3 + [1.0]))
    header = img.header.copy()
    header.set_data_shape((1024, 1024, 520))
    raw = header.binaryblock + b"\x00" * 4 + b"\x00" * 64  # header, extension flag, a few data bytes
    path.write_bytes(gzip.compress(raw, mtime=0))
    c.rehash()
    return Expect(path, ("more than dfseg reads", "header declares", "too large"), (key,))


#: every case, by name
CASES: dict[str, Callable[..., Expect]] = {f.__name__: f for f in (
    missing_file, truncated_nifti, corrupt_nifti, wrong_dimensionality, orientation_mismatch, nan_voxels,
    inf_voxels, spacing_mismatch, affine_mismatch, nonbinary_label, empty_label, sidecar_missing_field,
    sidecar_wrong_type, subject_leakage, duplicate_scan_ids, calibration_other_spectrum, huge_header)}


def snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def visible_files(folder: Path) -> list[str]:
    """Files under ``folder`` (relative), hidden temporaries included, for "no partial output" checks."""
    if not folder.exists():
        return []
    return sorted(os.path.relpath(p, folder) for p in folder.rglob("*") if p.is_file())
