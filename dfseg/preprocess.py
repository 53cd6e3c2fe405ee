"""The preprocessing stage: a raw cohort in, a cohort of corrected, decomposed volumes out.

For every scan of a manifest, :func:`preprocess_scan` reads it with :class:`dfseg.data.scan.LoadScand`
and runs one of the correction chains of :mod:`dfseg.transforms.pipeline`: the projection chain
(raw projections -> flux -> -ln -> beam hardening -> FBP -> spectrum normalization ->
decomposition) or, with ``domain="volume"`` or when a scan has no projections, the volume chain
(first-order beam hardening on the reconstructions). :func:`preprocess_cohort` checks the whole
cohort first (:func:`dfseg.data.validate.require_valid_manifest`) and writes, through
:func:`dfseg.io.atomic_directory` (a failure leaves no partial output)::

    OUT/scans/<scan_id>/attn.nii.gz   (X, Y, Z) mu, 1/mm, on the label's grid (its affine)
    OUT/scans/<scan_id>/df.nii.gz     (X, Y, Z, 5) c0, amp, aniso, amp_cos2t, amp_sin2t
    OUT/scans/<scan_id>/label, lung_mask, histology   copied unchanged
    OUT/scans/<scan_id>/sidecar.json  the scan's metadata with ``preprocessed: true``
    OUT/manifest.json                 the input's splits, subject ids and folds
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Compose
from tqdm import tqdm

from dfseg import __version__
from dfseg.calibration import load_calibration_document, select_calibration_entry
from dfseg.channels import DF_CHANNELS
from dfseg.data.manifest import FILE_KEYS, SPLITS, write_manifest
from dfseg.data.scan import LoadScand, scan_value
from dfseg.data.validate import PROJECTION_KEYS, require_valid_manifest
from dfseg.errors import InputError
from dfseg.io import atomic_directory, atomic_write, refuse_non_empty, save_nifti, sha256_file, write_json
from dfseg.transforms.pipeline import projection_chain, volume_chain

__all__ = ["COPIED_KEYS", "CalibrationChains", "Chains", "build_chains", "preprocess_cohort", "preprocess_scan"]

#: Images copied unchanged into the preprocessed cohort.
COPIED_KEYS: tuple[str, ...] = ("label", "lung_mask", "histology")
#: Entry fields the preprocessed entry does not inherit (its files and hashes are new).
_REPLACED = ("attn", "df", "label", "lung_mask", "proj_T", "proj_D", "histology", "sidecar", "sha256")


@dataclass(frozen=True)
class Chains:
    """What :func:`preprocess_scan` applies: the calibration and both correction chains built from it."""

    calibration: dict
    calibration_path: Path
    projection: Compose
    volume: Compose
    aluminium_weight: float = 0.0
    bone_correction: bool = False


class CalibrationChains:
    """The correction chains of a calibration file, per spectrum: :meth:`for_scan` picks a scan's.

    A single calibration gives one :class:`Chains` and refuses scans at another spectrum; a
    calibration set (:mod:`dfseg.calibration.io`) gives each scan its own spectrum's entry, built
    the first time a scan needs it (thread-safe: :func:`preprocess_cohort` runs scans in threads).
    """

    def __init__(self, calibration_path: str | os.PathLike, *, aluminium_weight: float = 0.0,
                 bone_correction: bool = False) -> None:
        self.path = Path(calibration_path).resolve()
        self.document = load_calibration_document(calibration_path)
        self.aluminium_weight = float(aluminium_weight)
        self.bone_correction = bool(bone_correction)
        self._built: dict[str, Chains] = {}
        self._lock = threading.Lock()

    def for_scan(self, meta: Mapping[str, Any]) -> Chains:
        """The chains for a scan's sidecar ``meta`` (its ``kvp``, ``filtration_mm``, ``visibility``).

        Raises:
            InputError: no calibration for the scan's spectrum (names the calibration file).
        """
        key, cal = select_calibration_entry(self.document, meta, self.path)
        with self._lock:
            if key not in self._built:
                self._built[key] = Chains(
                    cal, self.path,
                    projection_chain(cal, aluminium_weight=self.aluminium_weight, bone_correction=self.bone_correction),
                    volume_chain(cal, aluminium_weight=self.aluminium_weight),
                    aluminium_weight=self.aluminium_weight, bone_correction=self.bone_correction)
            return self._built[key]


def build_chains(calibration_path: str | os.PathLike, *, aluminium_weight: float = 0.0,
                 bone_correction: bool = False) -> CalibrationChains:
    """Load the calibration (or calibration set); its chains are built per spectrum as scans need them."""
    return CalibrationChains(calibration_path, aluminium_weight=aluminium_weight, bone_correction=bone_correction)


def _copy_name(key: str, source: str | os.PathLike) -> str:
    """``<key>`` with the source image's extension, so a copied file keeps its format."""
    name = Path(source).name
    return key + (name[-7:] if name.lower().endswith(".nii.gz") else Path(source).suffix)


def preprocess_scan(entry: Mapping[str, Any], book: CalibrationChains, domain: str, folder: Path) -> dict:
    """Correct and decompose one scan, write its files into ``folder``; return its new manifest entry.

    Args:
        entry: a manifest entry with absolute paths (:func:`dfseg.data.manifest.load_manifest`).
        book: :func:`build_chains` (the scan's spectrum picks its chains).
        domain: ``"projection"`` (the projection chain when the entry has projections) or ``"volume"``.
        folder: the scan's output folder.

    Returns:
        The entry for the new manifest, with absolute paths and the new sidecar as ``meta``.

    Raises:
        InputError: a scan the chain cannot process, naming the file read.
    """
    use_projections = domain == "projection" and all(entry.get(k) for k in PROJECTION_KEYS)
    keys = PROJECTION_KEYS if use_projections else ("attn", "df")
    data = LoadScand((*keys, "label"), check_orientations=True)(entry)
    meta = data["meta"]
    if "voxel_mm" not in meta:  # the chains read the voxel size from the metadata
        meta["voxel_mm"] = float(scan_value(data, "voxel_mm", key="label")[0])
    grid = np.asarray(data.pop("label").affine)  # attn and df are written on the label's grid
    for key in keys:
        # numpy in, numpy out: the chains' numpy path (e.g. the decomposition's amplitude) fixes the output bytes
        data[key] = data[key].numpy()
    chains = book.for_scan(meta)
    try:
        out = (chains.projection if use_projections else chains.volume)(data)
    except InputError as err:
        raise InputError({k: entry[k] for k in keys}.get(err.where or "", err.where), err.problem) from None
    volumes = {"attn": np.asarray(out["attn"])[0], "df": np.moveaxis(np.asarray(out["df"]), 0, -1)}
    for name, array in volumes.items():
        if not np.isfinite(array).all():
            raise InputError(entry[keys[0] if use_projections else name], "chain produced NaN/Inf values")
    new = {k: v for k, v in entry.items() if k not in _REPLACED}
    for name, array in volumes.items():
        new[name] = str(folder / f"{name}.nii.gz")
        save_nifti(new[name], array, grid)
    for key in COPIED_KEYS:
        if entry.get(key):
            new[key] = str(folder / _copy_name(key, entry[key]))
            with open(entry[key], "rb") as src, atomic_write(new[key]) as fh:
                shutil.copyfileobj(src, fh)
    meta["preprocessed"] = True  # the bundles skip the correction chain for these scans
    meta["preprocessing"] = {"domain": "projection" if use_projections else "volume",
                             "df_channels": list(DF_CHANNELS), "calibration": str(chains.calibration_path),
                             "aluminium_weight": chains.aluminium_weight, "bone_correction": chains.bone_correction}
    write_json(folder / "sidecar.json", meta)
    new["sidecar"], new["meta"] = str(folder / "sidecar.json"), meta
    return new


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def preprocess_cohort(manifest_path: str | os.PathLike, out: str | os.PathLike, calibration_path: str | os.PathLike,
                      *, domain: str = "projection", aluminium_weight: float = 0.0, bone_correction: bool = False,
                      overwrite: bool = False, workers: int = 1, progress: bool | None = None) -> Path:
    """Preprocess every scan of a cohort into a new cohort (module docstring); return its manifest path.

    Args:
        manifest_path: the input cohort's ``manifest.json``.
        out: the output directory (the new cohort); neither inside nor containing the input cohort.
        calibration_path: ``calibration.json`` from ``dfseg calibrate``.
        domain: ``"projection"`` (full chain from ``proj_T``/``proj_D``) or ``"volume"`` (first-order
            chain on ``attn``/``df``; projections are neither checked nor read).
        aluminium_weight: mixing weight of the aluminium beam-hardening curve (0 = water only).
        bone_correction: two-pass bone beam-hardening correction (projection domain only).
        overwrite: replace a non-empty ``out``.
        workers: scans processed in parallel threads (torch releases the GIL).
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        InputError: a bad option, any problem of the cohort (before anything is written) or a scan
            the chain cannot process (nothing is written).
        OutputExistsError: ``out`` is not empty and ``overwrite`` is not set.
    """
    manifest_path = Path(manifest_path).resolve()
    cohort = manifest_path.parent
    target = Path(out).resolve()
    if _inside(target, cohort) or _inside(cohort, target):
        raise InputError(out, f"output must not be inside or contain the input cohort {cohort}")
    refuse_non_empty(out, overwrite=overwrite)
    if bone_correction and domain != "projection":
        raise InputError("--bone-correction", "needs --domain projection (it reconstructs and re-projects the scan)")
    if bone_correction and aluminium_weight:
        raise InputError("--bone-correction", "give either --bone-correction or --aluminium-weight, not both")
    manifest = require_valid_manifest(manifest_path, check_projections=domain == "projection")
    chains = build_chains(calibration_path, aluminium_weight=aluminium_weight, bone_correction=bone_correction)
    entries = [e for split in SPLITS for e in manifest.get(split) or []]
    with atomic_directory(out, overwrite=overwrite) as tmp:
        def one(entry: Mapping[str, Any]) -> dict:
            return preprocess_scan(entry, chains, domain, tmp / "scans" / str(entry["scan_id"]))

        results: list[dict] = []
        show = sys.stderr.isatty() if progress is None else progress
        with tqdm(total=len(entries), desc="preprocess", unit="scan", file=sys.stderr, disable=not show) as bar, \
                (ThreadPoolExecutor(workers) if workers > 1 else nullcontext()) as pool:
            for result in (pool.map(one, entries) if pool is not None else map(one, entries)):
                results.append(result)
                bar.update()
        write_manifest(tmp / "manifest.json", _new_manifest(manifest, results, manifest_path, tmp))
    return target / "manifest.json"


def _new_manifest(manifest: Mapping[str, Any], results: list[dict], source: Path, root: Path) -> dict:
    """The preprocessed cohort's manifest: the input's fields and splits, new entries (paths under ``root``)."""
    new = copy.deepcopy({k: v for k, v in manifest.items() if k not in SPLITS})
    new["pipeline_version"] = __version__
    new["created_by"] = f"dfseg {__version__} dfseg preprocess"
    new["description"] = (manifest.get("description") or "") + f" [preprocessed from {source}]"
    remaining = iter(results)
    for split in SPLITS:
        new[split] = []
        for _ in manifest.get(split) or []:
            entry = next(remaining)
            for key in FILE_KEYS:
                if entry.get(key):
                    entry[key] = os.path.relpath(Path(entry[key]), root)
            entry["sha256"] = {k: sha256_file(root / entry[k]) for k in FILE_KEYS if entry.get(k)}
            new[split].append(entry)
    return new
