"""Validation of a cohort manifest and every file it names.

:func:`validate_manifest` reports every problem it finds (it never stops at the first), each as a
:class:`Problem` whose ``str`` is one line ``<file or manifest.json:training[3].fold>: <message>``.
Image headers are read before any voxel data, so a corrupt file or one whose header declares a huge
volume is reported without allocating it. :func:`require_valid_manifest` is the gate a stage passes
before it writes anything: it raises on the first problem and returns the loaded manifest.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfseg.channels import DF_CHANNELS
from dfseg.data.manifest import FILE_KEYS, SPLITS, load_manifest, schema_errors
from dfseg.data.scan import scan_meta
from dfseg.errors import InputError
from dfseg.io import (
    MAX_VOXELS,
    TIFF_SUFFIXES,
    load_nifti,
    read_image_header,
    read_json,
    sha256_file,
    voxel_size,
)

#: Images that must share one grid (shape of the first three axes, spacing and affine).
GRID_KEYS: tuple[str, ...] = ("attn", "df", "label", "lung_mask")
#: Images that must hold only 0 and 1.
BINARY_KEYS: tuple[str, ...] = ("label", "lung_mask")
#: Absolute tolerance for comparing affines, in mm.
AFFINE_ATOL_MM = 1e-4


@dataclass(frozen=True)
class Problem:
    """One problem: where it is (a file, or ``manifest.json:<json path>``) and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def read_header(path: Path, voxel_mm: Any = None) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of an image from its header only (no voxel data is read).

    A folder is a DICOM series and ``.tif``/``.tiff`` a TIFF stack (:func:`dfseg.io.read_image_header`;
    ``voxel_mm``, the sidecar's, sizes a TIFF stack whose metadata gives no spacing).
    """
    name = path.name.lower()
    try:
        if path.is_dir() or name.endswith(TIFF_SUFFIXES):
            shape, affine = read_image_header(path, voxel_mm=voxel_mm)
        elif name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            try:
                img = nib.load(str(path))
            except nib.filebasedimages.ImageFileError as err:
                raise ValueError(str(err).replace(str(path), path.name)) from None
            shape, affine = tuple(int(s) for s in img.shape), np.asarray(img.affine, float)
        else:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            shape = tuple(int(s) for s in reader.GetSize())
            if reader.GetNumberOfComponents() > 1:
                shape = (*shape, int(reader.GetNumberOfComponents()))
            dim = len(reader.GetSize())
            direction = np.asarray(reader.GetDirection(), float).reshape(dim, dim)[:3, :3]
            affine = np.eye(4)
            affine[:3, :3] = direction * np.asarray(reader.GetSpacing()[:3], float)
            affine[:3, 3] = reader.GetOrigin()[:3]
            affine[:2] *= -1  # ITK is LPS, NIfTI RAS (as dfseg.io.load_nifti)
    except InputError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, RuntimeError) as err:
        raise InputError(path, f"cannot read image header ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
    n = int(np.prod(shape, dtype=np.int64))
    if n > MAX_VOXELS:
        raise InputError(path, f"header declares {shape} = {n} voxels, more than dfseg reads ({MAX_VOXELS})")
    return shape, affine


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


# Rules shared by every stage that checks a scan's images (the validator, dfseg evaluate, dfseg
# register): each returns what is wrong as one message, or None, and the caller says where.


def binary_problem(key: str, array: Any) -> str | None:
    """Values other than 0 and 1 in an image that must be binary (``key`` names it in the message)."""
    values = np.unique(np.asarray(array))
    if np.isin(values, (0, 1)).all():
        return None
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
    return f"{key} must hold only 0 and 1, found values {shown}"


def tumour_problem(label_voxels: int, has_tumour: Any) -> str | None:
    """A label whose tumour voxel count contradicts the entry's ``has_tumour`` (``None``: agrees or unknown)."""
    if has_tumour is True and label_voxels == 0:
        return "label is empty but has_tumour is true"
    if has_tumour is False and label_voxels > 0:
        return f"label has {label_voxels} tumour voxels but has_tumour is false"
    return None


def grid_problem(shape: Sequence[int], affine: np.ndarray, ref_name: str, ref_shape: Sequence[int],
                 ref_affine: np.ndarray) -> str | None:
    """How an image's grid differs from a reference grid: spatial shape, else spacing, else affine.

    Args:
        shape: the image's spatial shape (three axes).
        affine: its 4x4 affine (mm).
        ref_name: how the message names the reference.
        ref_shape: the reference's spatial shape.
        ref_affine: the reference's affine; origin and direction must agree within :data:`AFFINE_ATOL_MM`.
    """
    if tuple(shape) != tuple(ref_shape):
        return f"shape {_fmt(shape)} differs from {ref_name} {_fmt(ref_shape)}"
    spacing, ref_spacing = voxel_size(affine), voxel_size(ref_affine)
    if not np.allclose(spacing, ref_spacing, atol=AFFINE_ATOL_MM):
        return f"voxel spacing {_fmt(spacing)} mm differs from {ref_name} {_fmt(ref_spacing)} mm"
    if not np.allclose(affine, ref_affine, atol=AFFINE_ATOL_MM):
        return f"affine (origin or direction) differs from {ref_name}'s"
    return None


def grid_problems(grids: Mapping[str, tuple[Sequence[int], np.ndarray]], *,
                  reference: str | None = None) -> dict[str, str]:
    """The images of ``grids`` that are not on the reference grid, ``{name: problem}``.

    Args:
        grids: ``{name: (spatial shape, 4x4 affine)}`` of images that must share one grid.
        reference: the image the others are compared with. Default: the first image that agrees
            with the most others, so of three images the one odd image is named, not its neighbours.
    """
    def agrees(a: str, b: str) -> bool:
        return grid_problem(*grids[a], b, *grids[b]) is None

    if reference is None:
        reference = max(grids, key=lambda a: sum(agrees(a, b) for b in grids if b != a))
    found = {name: grid_problem(*grids[name], reference, *grids[reference]) for name in grids if name != reference}
    return {name: problem for name, problem in found.items() if problem is not None}


def raise_first(problems: Sequence[Problem]) -> None:
    """Raise the first problem as an :class:`InputError`, with the count of the others; nothing when empty."""
    if problems:
        more = f" (and {len(problems) - 1} more; run dfseg validate-manifest)" if len(problems) > 1 else ""
        raise InputError(problems[0].where, problems[0].message + more)


def validate_sidecar(sidecar: Any, where: str) -> list[Problem]:
    """Schema problems of a sidecar document; ``where`` prefixes each JSON path."""
    return [Problem(f"{where}:{p}" if p else where, m) for p, m in schema_errors(sidecar, "sidecar")]


def validate_scan(entry: Mapping[str, Any], *, where: str = "entry", check_hashes: bool = True,
                  check_images: bool = True, require_metadata: bool = True) -> list[Problem]:
    """Check the files of one manifest entry (paths absolute, or relative to the working directory).

    Checks: every named file exists; sha256 matches ``entry["sha256"]``; the sidecar (file and
    ``meta``) follows the sidecar schema and agrees with the entry's ids; images read (not corrupt
    or truncated, no NaN/Inf); ``attn``/``df``/``label``/``lung_mask`` share shape, spacing and
    affine; ``df`` has one channel per sidecar orientation; ``label``/``lung_mask`` are binary;
    ``label`` is non-empty exactly when ``has_tumour``; projections match ``df``'s orientations.

    Args:
        entry: one manifest entry.
        where: how problems in the entry itself are located (``manifest.json:training[3]``).
        check_hashes: compare file hashes with ``entry["sha256"]``.
        check_images: open the files (presence, hashes, sidecar file, image headers then voxels);
            ``False`` checks the entry alone (its ``meta`` against the sidecar schema and its ids).
        require_metadata: require acquisition metadata (a sidecar or ``meta``) that follows the
            sidecar schema; ``False`` (a stage that reads no metadata) still checks the ids agree.

    Returns:
        Every problem found, in a stable order.
    """
    problems: list[Problem] = []
    files: dict[str, Path] = {}
    if not check_images:
        _check_metadata(entry, files, where, problems, require_metadata)
        return problems
    for key in FILE_KEYS:
        value = entry.get(key)
        if not isinstance(value, str):
            continue
        path = Path(value)
        if not (path.is_file() or (key != "sidecar" and path.is_dir())):  # a folder is a DICOM series
            problems.append(Problem(str(path), f"file not found (named by {where}.{key})"))
            continue
        files[key] = path
    if check_hashes:
        recorded = entry.get("sha256") if isinstance(entry.get("sha256"), Mapping) else {}
        for key, path in files.items():
            expected = recorded.get(key)
            if expected is None:
                continue
            actual = sha256_file(path)
            if actual != expected:
                problems.append(Problem(str(path), f"sha256 mismatch: manifest {where}.sha256.{key} has "
                                                   f"{str(expected)[:12]}..., file has {actual[:12]}..."))
    meta = _check_metadata(entry, files, where, problems, require_metadata)
    _check_images(entry, files, meta, problems)
    return problems


def _check_metadata(entry: Mapping[str, Any], files: Mapping[str, Path], where: str,
                    problems: list[Problem], require_metadata: bool = True) -> dict:
    """Sidecar file and ``meta`` against the sidecar schema and the entry; returns the merged metadata."""
    schema_problems: list[Problem] = problems if require_metadata else []
    meta: dict = {}
    if "sidecar" in files:
        try:
            sidecar = read_json(files["sidecar"])
        except InputError as err:
            problems.append(Problem(str(files["sidecar"]), err.problem))
            sidecar = None
        if sidecar is not None:
            schema_problems.extend(validate_sidecar(sidecar, str(files["sidecar"])))
            if isinstance(sidecar, dict):
                meta.update(sidecar)
    if isinstance(entry.get("meta"), Mapping):
        if "sidecar" not in files:
            schema_problems.extend(validate_sidecar(dict(entry["meta"]), f"{where}.meta"))
        meta = {**entry["meta"], **meta}
    elif "sidecar" not in files and "sidecar" not in entry:
        schema_problems.append(Problem(where, "no sidecar file and no meta: acquisition metadata (orientations_deg, voxel_mm, ...) unknown"))
    for key in ("subject_id", "scan_id", "has_tumour", "variant"):
        if key in meta and key in entry and entry[key] is not None and meta[key] != entry[key]:
            source = files.get("sidecar", f"{where}.meta")
            problems.append(Problem(f"{where}.{key}", f"{entry[key]!r} differs from {meta[key]!r} in {source}"))
    return meta


def _check_images(entry: Mapping[str, Any], files: Mapping[str, Path], meta: Mapping[str, Any],
                  problems: list[Problem]) -> None:
    headers: dict[str, tuple[tuple[int, ...], np.ndarray]] = {}
    voxel_mm = meta.get("voxel_mm")  # sizes a TIFF stack without spacing metadata, as LoadScand does
    for key in ("attn", "df", "label", "lung_mask", "proj_T", "proj_D", "histology"):
        if key not in files:
            continue
        try:
            headers[key] = read_header(files[key], voxel_mm)
        except InputError as err:
            problems.append(Problem(str(files[key]), err.problem))
    # voxel-level checks (corrupt/truncated data, NaN/Inf, binary labels) on files whose header is sane
    label_voxels: int | None = None
    for key in headers:
        try:
            array, _ = load_nifti(files[key], voxel_mm=voxel_mm)
        except InputError as err:
            problems.append(Problem(str(files[key]), err.problem))
            continue
        if key in BINARY_KEYS:
            problem = binary_problem(key, array)
            if problem is not None:
                problems.append(Problem(str(files[key]), problem))
            elif key == "label":
                label_voxels = int(np.count_nonzero(array))
        del array
    _check_grid(files, headers, meta, problems)
    problem = None if label_voxels is None else tumour_problem(label_voxels, entry.get("has_tumour"))
    if problem is not None:
        problems.append(Problem(str(files["label"]), problem))


def _check_grid(files: Mapping[str, Path], headers: Mapping[str, tuple[tuple[int, ...], np.ndarray]],
                meta: Mapping[str, Any], problems: list[Problem]) -> None:
    """Shapes, spacings and affines of the grid images; df channels against the sidecar."""
    reference = next((k for k in GRID_KEYS if k in headers), None)
    if reference is None:
        return
    grids = {key: (headers[key][0][:3], headers[key][1]) for key in GRID_KEYS if key in headers}
    for key, problem in grid_problems(grids, reference=reference).items():
        problems.append(Problem(str(files[key]), problem))
    ref_spacing = voxel_size(headers[reference][1])
    for key in ("attn", "label", "lung_mask"):
        if key in headers and len(headers[key][0]) > 3 and int(np.prod(headers[key][0][3:])) != 1:
            problems.append(Problem(str(files[key]), f"expected a 3D volume, found shape {_fmt(headers[key][0])}"))
    orientations = meta.get("orientations_deg")
    n_expected = len(orientations) if isinstance(orientations, list) else None
    if meta.get("preprocessed") is True:  # dfseg preprocess decomposed df into its five channels
        n_expected = len(DF_CHANNELS)
    if "df" in headers and n_expected is not None:
        shape = headers["df"][0]
        n_found = int(np.prod(shape[3:])) if len(shape) > 3 else 1
        if n_found != n_expected and meta.get("preprocessed") is True:
            problems.append(Problem(str(files["df"]), f"expected the {n_expected} decomposed channels "
                                    f"{', '.join(DF_CHANNELS)} of a preprocessed scan, found {n_found}"))
        elif n_found != n_expected:
            problems.append(Problem(str(files["df"]), f"expected {n_expected} orientation channels from sidecar "
                                                      f"orientations_deg, found {n_found}"))
    voxel = meta.get("voxel_mm")
    if isinstance(voxel, (int, float)) and not isinstance(voxel, bool):
        voxel = [float(voxel)] * 3
    if isinstance(voxel, list) and len(voxel) == 3 and all(isinstance(v, (int, float)) for v in voxel):
        if not np.allclose(ref_spacing, voxel, atol=AFFINE_ATOL_MM):
            problems.append(Problem(str(files[reference]), f"voxel spacing {_fmt(ref_spacing)} mm differs from "
                                                           f"sidecar voxel_mm {_fmt(voxel)}"))
    for key in ("proj_T", "proj_D"):
        if key in headers and n_expected is not None:
            shape = headers[key][0]
            n_found = int(shape[3]) if len(shape) > 3 else 1
            if len(shape) > 4 or n_found != n_expected:
                problems.append(Problem(str(files[key]), f"expected (A, U, Z, {n_expected}) for {n_expected} sidecar "
                                                         f"orientations, found {_fmt(shape)}"))


def check_no_leakage(train: Sequence[Mapping[str, Any]], val: Sequence[Mapping[str, Any]], *,
                     names: tuple[str, str] = ("train", "val")) -> list[Problem]:
    """Subjects that appear in both entry lists (one problem per shared subject).

    Args:
        train: entries of one side (each with ``subject_id``).
        val: entries of the other side.
        names: how the two sides are named in messages and locations.
    """
    first = {e.get("subject_id") for e in train}
    problems = []
    for i, entry in enumerate(val):
        subject = entry.get("subject_id")
        if subject in first:
            problems.append(Problem(f"{names[1]}[{i}].subject_id",
                                    f"subject {subject!r} is in both {names[0]} and {names[1]} (leakage)"))
            first.discard(subject)  # one problem per subject
    return problems


def validate_manifest(path: str | os.PathLike, *, check_hashes: bool = True,
                      check_images: bool = True, require_metadata: bool = True) -> list[Problem]:
    """Every problem of a manifest and the files it names (an empty list when it is clean).

    Args:
        path: the manifest JSON; entry paths are relative to its directory.
        check_hashes: compare each file's sha256 with the manifest.
        check_images: open the files the manifest names (presence, hashes, sidecars, shapes,
            spacing, affine, values); ``False`` checks the manifest document alone.
        require_metadata: as in :func:`validate_scan`.

    Returns:
        Problems in the order: schema, cohort structure (ids, folds, leakage), then per entry.
    """
    path = Path(path)
    name = str(path)
    try:
        document = read_json(path)
    except InputError as err:
        return [Problem(name, err.problem)]
    problems = [Problem(f"{name}:{p}" if p else name, m) for p, m in schema_errors(document)]
    if not isinstance(document, dict):
        return problems
    entries: list[tuple[str, int, dict]] = []
    for split in SPLITS:
        items = document.get(split)
        if isinstance(items, list):
            entries.extend((split, i, e) for i, e in enumerate(items) if isinstance(e, dict))
    problems.extend(_check_structure(document, entries, name))
    root = path.parent
    for split, i, entry in entries:
        resolved = dict(entry)
        for key in FILE_KEYS:
            if isinstance(entry.get(key), str):
                resolved[key] = os.path.normpath(root / entry[key])
        problems.extend(validate_scan(resolved, where=f"{name}:{split}[{i}]", check_hashes=check_hashes,
                                      check_images=check_images, require_metadata=require_metadata))
    return problems


#: Raw projection images: checked by :func:`check_projection_files` in :func:`require_valid_manifest`.
PROJECTION_KEYS: tuple[str, ...] = ("proj_T", "proj_D")


def check_projection_files(entry: Mapping[str, Any], where: str) -> list[Problem]:
    """Cheap checks of an entry's projection files: presence, orientation count, sha256.

    The orientation count comes from the header (no voxels). Only a file whose sha256 differs from
    the manifest (or has none recorded) has its voxels read (corrupt, truncated, NaN/Inf), so a
    changed file is reported by what is wrong with it, not only by its hash.

    Args:
        entry: one manifest entry with absolute paths.
        where: how problems in the entry itself are located (``manifest.json:training[3]``).
    """
    problems: list[Problem] = []
    recorded = entry.get("sha256") if isinstance(entry.get("sha256"), Mapping) else {}
    try:
        meta = scan_meta(entry)
    except InputError:  # an unreadable sidecar is validate_scan's problem
        meta = scan_meta({k: v for k, v in entry.items() if k != "sidecar"})
    orientations = meta.get("orientations_deg")
    n_expected = len(orientations) if isinstance(orientations, list) else None
    for key in PROJECTION_KEYS:
        if not isinstance(entry.get(key), str):
            continue
        path = Path(entry[key])
        if not path.is_file():
            problems.append(Problem(str(path), f"file not found (named by {where}.{key})"))
            continue
        try:
            shape: tuple[int, ...] | None = read_header(path)[0]
        except Exception:  # noqa: BLE001 - an unreadable header is reported by the voxel read below
            shape = None
        if shape is not None and n_expected is not None:
            n_found = int(shape[3]) if len(shape) > 3 else 1
            if len(shape) > 4 or n_found != n_expected:
                problems.append(Problem(str(path), f"expected {n_expected} orientation channels from sidecar "
                                                   f"orientations_deg, found {n_found} (shape {shape})"))
        expected = recorded.get(key)
        if expected is None or (actual := sha256_file(path)) != expected:
            problems.extend(p for p in validate_scan({key: str(path)}, where=where, check_hashes=False)
                            if p.where == str(path))  # the file's own problems (not the bare entry's)
            if expected is not None:
                problems.append(Problem(str(path), f"sha256 mismatch: manifest {where}.sha256.{key} has "
                                                   f"{str(expected)[:12]}..., file has {actual[:12]}..."))
    return problems


def _is_hash_problem(problem: Problem) -> bool:
    return problem.message.startswith("sha256 mismatch")


def require_valid_manifest(path: str | os.PathLike, *, check_projections: bool = True,
                           check_hashes: bool = True) -> dict:
    """Refuse a cohort with any problem before a stage reads or writes anything; return the manifest.

    The checks of :func:`validate_manifest`: first the document (schema, duplicate ids, folds,
    subject leakage), then every entry's files (presence, sha256, sidecar schema, readable images
    without NaN/Inf, one grid, orientation channels, binary labels that agree with
    ``has_tumour``), entries in parallel threads (gzip inflation releases the GIL).

    Raw projections (:data:`PROJECTION_KEYS`, many times the bytes of the volumes) get only the
    checks of :func:`check_projection_files`: a stage that uses them reads them through
    :func:`dfseg.io.load_nifti`, which refuses corrupt, truncated and NaN/Inf files with the same
    one-line errors. Hash mismatches are reported after the other problems (what is wrong with a
    file says more than that it changed).

    Args:
        path: the manifest JSON.
        check_projections: check the projection files too (``False`` when the stage ignores them).
        check_hashes: compare files with the sha256 recorded in the manifest.

    Returns:
        The manifest with absolute paths (:func:`dfseg.data.manifest.load_manifest`).

    Raises:
        InputError: the first problem (in :func:`validate_manifest`'s order), with the count of the others.
    """
    problems = validate_manifest(path, check_images=False, check_hashes=False)
    if not problems:
        manifest = load_manifest(path)
        entries = [(f"{path}:{split}[{i}]", entry)
                   for split in SPLITS for i, entry in enumerate(manifest.get(split) or [])]

        def check(item: tuple[str, dict]) -> list[Problem]:
            where, entry = item
            found = validate_scan({k: v for k, v in entry.items() if k not in PROJECTION_KEYS}, where=where,
                                  check_hashes=check_hashes)
            return found + (check_projection_files(entry, where) if check_projections else [])

        with ThreadPoolExecutor(max(1, min(len(entries), os.cpu_count() or 1))) as pool:
            problems = list(dict.fromkeys(p for scan in pool.map(check, entries) for p in scan))  # in order
        problems.sort(key=_is_hash_problem)
    raise_first(problems)
    return manifest


def _check_structure(document: Mapping[str, Any], entries: list[tuple[str, int, dict]], name: str) -> list[Problem]:
    """Duplicate scan ids, fold ranges, subjects split across folds or between training and test."""
    problems: list[Problem] = []
    k = document.get("num_folds")
    k = k if isinstance(k, int) and not isinstance(k, bool) else None
    scans: dict[str, str] = {}
    subject_fold: dict[str, tuple[int, str]] = {}
    subject_split: dict[str, tuple[str, str]] = {}
    for split, i, entry in entries:
        loc = f"{split}[{i}]"
        scan, subject, fold = entry.get("scan_id"), entry.get("subject_id"), entry.get("fold")
        if isinstance(scan, str):
            if scan in scans:
                problems.append(Problem(f"{name}:{loc}.scan_id", f"duplicate scan_id {scan!r} (also {scans[scan]})"))
            else:
                scans[scan] = loc
        if not isinstance(subject, str):
            continue
        fold_ok = isinstance(fold, int) and not isinstance(fold, bool)
        if fold_ok and split == "test" and fold != -1:
            problems.append(Problem(f"{name}:{loc}.fold", f"test entries must have fold -1, found {fold}"))
        elif fold_ok and split == "training" and k is not None and not 0 <= fold < k:
            problems.append(Problem(f"{name}:{loc}.fold", f"fold {fold} outside 0..{k - 1} (num_folds {k})"))
        if fold_ok and split == "training":
            if subject in subject_fold and subject_fold[subject][0] != fold:
                first_fold, first_loc = subject_fold[subject]
                problems.append(Problem(f"{name}:{loc}.fold", f"subject {subject!r} is in folds {first_fold} "
                                                              f"({first_loc}) and {fold}; a subject's scans must share one fold"))
            subject_fold.setdefault(subject, (fold, loc))
        side = "test" if split == "test" else "training"
        if subject in subject_split and subject_split[subject][0] != side:
            other, other_loc = subject_split[subject]
            problems.append(Problem(f"{name}:{loc}.subject_id", f"subject {subject!r} is in both {other} ({other_loc}) "
                                                                f"and {side} (leakage)"))
            subject_split[subject] = (side, loc)  # report each crossing once per direction change
        else:
            subject_split.setdefault(subject, (side, loc))
    return problems
