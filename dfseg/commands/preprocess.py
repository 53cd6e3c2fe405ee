"""``dfseg preprocess MANIFEST -o OUT --calibration calibration.json``: corrected, decomposed volumes.

For every scan of the manifest: the projection chain (raw projections -> flux -> -ln -> beam
hardening -> FBP -> spectrum normalization -> decomposition) or, with ``--domain volume`` or when a
scan has no projections, the volume chain (first-order beam hardening). Writes
``OUT/scans/<scan_id>/{attn (X,Y,Z), df (X,Y,Z,5), label, lung_mask}.nii.gz, sidecar.json`` and
``OUT/manifest.json`` with the input's splits, subject ids and folds. Everything is written into a
temporary directory beside OUT and renamed at the end, so a failure leaves no partial output.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HELP = "correct, reconstruct and decompose a cohort into network-ready volumes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="input cohort manifest.json")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output directory (new cohort)")
    parser.add_argument("--calibration", type=Path, required=True, help="calibration.json from dfseg calibrate")
    parser.add_argument("--domain", choices=("projection", "volume"), default="projection",
                        help="projection: full chain from proj_T/proj_D; volume: first-order chain on attn/df")
    parser.add_argument("--aluminium-weight", type=float, default=0.0,
                        help="mixing weight of the aluminium beam-hardening curve (0 = water only)")
    parser.add_argument("--bone-correction", action="store_true",
                        help="projection domain: two-pass bone beam-hardening correction (per-ray water/bone "
                             "decomposition of a first reconstruction; see dfseg.transforms.beam_hardening)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--workers", type=int, default=1,
                        help="scans processed in parallel threads (torch releases the GIL)")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _load_scan(entry: dict, domain: str) -> tuple[dict, np.ndarray, dict]:
    """The data dictionary for the chain, the output affine and the files read."""
    from dfseg.errors import InputError
    from dfseg.io import load_nifti

    files = {}
    meta = dict(entry.get("meta") or {})
    if entry.get("sidecar"):
        from dfseg.io import read_json

        # the sidecar file is the source of truth (the manifest's meta is a copy that may be stale);
        # validate_manifest has already checked it against the schema
        sidecar = read_json(entry["sidecar"])
        if isinstance(sidecar, dict):
            meta.update(sidecar)
    data: dict[str, Any] = {"meta": meta}
    use_proj = domain == "projection" and entry.get("proj_T") and entry.get("proj_D")
    keys = ("proj_T", "proj_D") if use_proj else ("attn", "df")
    for key in keys:
        if not entry.get(key):
            raise InputError(f"{entry.get('scan_id')}.{key}", "missing from the manifest entry")
        arr, affine = load_nifti(entry[key])
        files[key] = entry[key]
        if key in ("proj_T", "proj_D", "df"):
            if arr.ndim == 3 and key == "df":
                arr = arr[..., None]
            if arr.ndim != 4:
                raise InputError(entry[key], f"expected 4-D (..., N) image, got shape {arr.shape}")
            arr = np.moveaxis(arr, -1, 0)
            n_or = len(data["meta"].get("orientations_deg") or [])
            if n_or and arr.shape[0] != n_or:
                raise InputError(entry[key], f"expected {n_or} orientation channels from sidecar, found {arr.shape[0]}")
        else:
            arr = arr[None]
        data[key] = arr.astype(np.float32)
    ref_affine = load_nifti(entry["label"])[1] if entry.get("label") else affine
    if "voxel_mm" not in data["meta"]:
        from dfseg.io import voxel_size

        data["meta"]["voxel_mm"] = float(voxel_size(ref_affine)[0])
    return data, ref_affine, files


def _process(entry: dict, chains: dict, domain: str, tmp: Path) -> dict:
    from dfseg.calibration import check_spectrum
    from dfseg.errors import InputError
    from dfseg.io import atomic_write, save_nifti, voxel_size, write_json

    data, affine, files = _load_scan(entry, domain)
    check_spectrum(chains["calibration"], data["meta"], where=chains["calibration_path"])
    kind = "projection" if "proj_T" in data else "volume"
    try:
        out = chains[kind](data)
    except InputError as err:
        where = files.get(err.where or "", err.where)
        raise InputError(where, err.problem) from None
    scan_id = str(entry["scan_id"])
    folder = tmp / "scans" / scan_id
    vox = tuple(float(v) for v in voxel_size(affine))
    attn = np.asarray(out["attn"])[0]
    df = np.moveaxis(np.asarray(out["df"]), 0, -1)
    for name, arr in (("attn", attn), ("df", df)):
        if not np.isfinite(arr).all():
            raise InputError(files.get("proj_T" if kind == "projection" else name), "chain produced NaN/Inf values")
    save_nifti(folder / "attn.nii.gz", attn, vox)
    save_nifti(folder / "df.nii.gz", df, vox)
    new = {k: entry[k] for k in entry if k not in ("attn", "df", "label", "lung_mask", "proj_T", "proj_D",
                                                    "histology", "sidecar", "sha256")}
    new["attn"], new["df"] = str(folder / "attn.nii.gz"), str(folder / "df.nii.gz")
    for key in ("label", "lung_mask", "histology"):
        if entry.get(key):
            dst = folder / f"{key}.nii.gz"
            with open(entry[key], "rb") as src, atomic_write(dst) as fh:
                shutil.copyfileobj(src, fh)
            new[key] = str(dst)
    meta = dict(data["meta"])
    meta["preprocessed"] = True  # the bundles skip the correction chain for these scans
    meta["preprocessing"] = {"domain": kind, "df_channels": ["c0", "amp", "aniso", "amp_cos2t", "amp_sin2t"],
                             "calibration": str(chains["calibration_path"])}
    write_json(folder / "sidecar.json", meta)
    new["sidecar"] = str(folder / "sidecar.json")
    new["meta"] = meta
    return new


#: manifest keys of the raw projections (checked for presence and hash only, see :func:`_validate`)
PROJECTION_KEYS = ("proj_T", "proj_D")


def _check_projection_files(entry: dict, where: str) -> list:
    """Cheap checks of an entry's projection files: presence, orientation count, sha256.

    Orientation count is read from the header (no voxels). Only a file whose sha256 differs from
    the manifest (or has none recorded) has its voxels read (corrupt, truncated, NaN/Inf), so a
    changed file is reported by what is wrong with it, not only by its hash.
    """
    from dfseg.data.validate import Problem, validate_scan
    from dfseg.io import read_json, sha256_file

    problems: list[Problem] = []
    recorded = entry.get("sha256") if isinstance(entry.get("sha256"), dict) else {}
    meta = dict(entry.get("meta") or {})
    if isinstance(entry.get("sidecar"), str) and Path(entry["sidecar"]).is_file():
        with contextlib.suppress(Exception):  # an unreadable sidecar is validate_scan's problem
            meta.update(read_json(entry["sidecar"]))
    orientations = meta.get("orientations_deg")
    n_expected = len(orientations) if isinstance(orientations, list) else None
    for key in PROJECTION_KEYS:
        if not isinstance(entry.get(key), str):
            continue
        path = Path(entry[key])
        if not path.is_file():
            problems.append(Problem(str(path), f"file not found (named by {where}.{key})"))
            continue
        shape = _header_shape(path)
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


def _header_shape(path: Path) -> tuple[int, ...] | None:
    """Image shape from a NIfTI header (no voxels read); None when unknown (other checks report why)."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        import nibabel as nib

        return tuple(int(n) for n in nib.load(str(path)).shape)
    except Exception:  # noqa: BLE001 - unreadable headers are reported by load_nifti with the file named
        return None


def _is_hash_problem(problem: Any) -> bool:
    return problem.message.startswith("sha256 mismatch")


def _validate(manifest_path: Path, domain: str) -> dict:
    """Refuse a cohort with any problem before anything is processed or written; return the manifest.

    The checks of :func:`dfseg.data.validate.validate_manifest`: first the document (schema,
    duplicate ids, folds, subject leakage), then every entry's files (presence, sha256, sidecar
    schema, readable images without NaN/Inf, one grid, orientation channels, binary labels that
    agree with ``has_tumour``), entries in parallel threads (gzip inflation releases the GIL).

    Projections (``proj_T``/``proj_D``, 10x the bytes of the volumes) get presence, header
    orientation count and sha256 checks; their voxels are read only when the hash differs
    (:func:`_check_projection_files`): reading them all tripled the validation of a 64^3 demo
    cohort (19 s instead of 6 s for 40 scans), and the chain reads them anyway through
    :func:`dfseg.io.load_nifti`, which refuses corrupt, truncated, NaN/Inf files with the same
    one-line errors into a temporary folder (no partial output). With ``--domain volume`` they
    are neither read nor copied and are skipped. Hash mismatches are reported after the other
    problems (what is wrong with a file says more than that it changed).

    Raises:
        InputError: the first problem (in ``validate_manifest``'s order), with the count of the others.
    """
    from concurrent.futures import ThreadPoolExecutor

    from dfseg.data.manifest import SPLITS, load_manifest
    from dfseg.data.validate import Problem, validate_manifest, validate_scan
    from dfseg.errors import InputError

    problems = validate_manifest(manifest_path, check_images=False, check_hashes=False)
    if not problems:
        manifest = load_manifest(manifest_path)
        entries = [(f"{manifest_path}:{split}[{i}]", entry)
                   for split in SPLITS for i, entry in enumerate(manifest.get(split) or [])]

        def check(item: tuple[str, dict]) -> list[Problem]:
            where, entry = item
            found = validate_scan({k: v for k, v in entry.items() if k not in PROJECTION_KEYS}, where=where)
            return found + (_check_projection_files(entry, where) if domain == "projection" else [])

        with ThreadPoolExecutor(max(1, min(len(entries), os.cpu_count() or 1))) as pool:
            problems = list(dict.fromkeys(p for scan in pool.map(check, entries) for p in scan))  # in order
        # what is wrong with a file says more than that it changed: hash mismatches go last
        problems.sort(key=_is_hash_problem)
    if problems:
        more = f" (and {len(problems) - 1} more; run dfseg validate-manifest)" if len(problems) > 1 else ""
        raise InputError(problems[0].where, problems[0].message + more)
    return manifest


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dfseg import __version__
    from dfseg.calibration import load_calibration
    from dfseg.data.manifest import FILE_KEYS, SPLITS, write_manifest
    from dfseg.errors import InputError, OutputExistsError
    from dfseg.io import sha256_file
    from dfseg.transforms.pipeline import projection_chain, volume_chain

    manifest_path = args.manifest.resolve()
    cohort = manifest_path.parent
    out = args.output.resolve()
    if _inside(out, cohort) or _inside(cohort, out):
        raise InputError(args.output, f"output must not be inside or contain the input cohort {cohort}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise OutputExistsError(args.output, "exists and is not empty; pass --overwrite to replace it")
    if args.bone_correction and args.domain != "projection":
        raise InputError("--bone-correction", "needs --domain projection (it reconstructs and re-projects the scan)")
    if args.bone_correction and args.aluminium_weight:
        raise InputError("--bone-correction", "give either --bone-correction or --aluminium-weight, not both")
    manifest = _validate(manifest_path, args.domain)
    cal = load_calibration(args.calibration)
    chains = {
        "calibration": cal, "calibration_path": args.calibration,
        "projection": projection_chain(cal, aluminium_weight=args.aluminium_weight,
                                       bone_correction=args.bone_correction),
        "volume": volume_chain(cal, aluminium_weight=args.aluminium_weight),
    }
    jobs = [(split, i, e) for split in SPLITS for i, e in enumerate(manifest.get(split) or [])]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        results: dict[tuple[str, int], dict] = {}
        # a bar on a terminal only: in a log file (CI, nohup) it is noise among the error lines
        with tqdm(total=len(jobs), desc="preprocess", unit="scan", file=sys.stderr,
                  disable=not sys.stderr.isatty()) as bar:
            if args.workers > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(args.workers) as pool:
                    futures = {pool.submit(_process, e, chains, args.domain, tmp): (s, i) for s, i, e in jobs}
                    for fut, key in futures.items():
                        results[key] = fut.result()
                        bar.update()
            else:
                for s, i, e in jobs:
                    results[(s, i)] = _process(e, chains, args.domain, tmp)
                    bar.update()
        new = copy.deepcopy({k: v for k, v in manifest.items() if k not in SPLITS})
        new["pipeline_version"] = __version__
        new["created_by"] = f"dfseg {__version__} dfseg preprocess"
        new["description"] = (manifest.get("description") or "") + f" [preprocessed from {manifest_path}]"
        for split in SPLITS:
            entries = []
            for i, _ in enumerate(manifest.get(split) or []):
                e = results[(split, i)]
                for key in FILE_KEYS:
                    if e.get(key):
                        e[key] = os.path.relpath(Path(e[key]), tmp)
                e["sha256"] = {k: sha256_file(tmp / e[k]) for k in FILE_KEYS if e.get(k)}
                entries.append(e)
            new[split] = entries
        write_manifest(tmp / "manifest.json", new)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        raise
    print(f"wrote {len(jobs)} scans and {out / 'manifest.json'}")
    return 0
