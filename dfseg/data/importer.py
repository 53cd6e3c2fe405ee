"""Build a manifest from a folder of a lab's scans (``dfseg import``), without copying any image.

A scan is found by its attenuation image; the other images sit beside it under names a layout
gives. The **default layout** is one folder per scan::

    <SRC>/<scan>/attn.*  df.*  [label.*  lung_mask.*  sidecar.json]

where ``.*`` is any ending :data:`dfseg.io.IMAGE_FORMATS` lists (``.nii.gz``, ``.mha``, ``.nrrd``,
``.tif``, ...) or nothing at all for a folder holding a DICOM series (``attn/``, ``df/``). A
``<SRC>`` that itself holds ``attn.*`` is one scan. A **user layout** gives one pattern per key,
relative to ``<SRC>``, with the placeholders ``{scan}`` and ``{subject}`` (e.g.
``{subject}/{scan}/mu.mha``); a pattern without an ending takes any of the endings above.

Acquisition metadata per scan: the template's fields (``--sidecar-template``), overridden by the
scan's own sidecar, with ids added: ``scan_id`` from the sidecar, else ``{scan}`` (else the scan
folder's name); ``subject_id`` from the sidecar, else ``{subject}``, else the first group of
``subject_pattern`` matched against the scan id, else the scan id; ``voxel_mm``, when neither
gives it, from the attenuation image's header. The merged metadata is the entry's ``meta``; a
sidecar that follows the sidecar schema on its own is also named by the entry (``sidecar``: hashed,
and read by :class:`dfseg.data.scan.LoadScand` over ``meta``), one that does not is left out (the
user's file is never rewritten). ``has_tumour`` comes from the metadata, else from the label when
there is one.

:func:`import_scans` builds the manifest (:func:`dfseg.data.manifest.build_manifest`), checks it
with the validator exactly as ``dfseg validate-manifest`` would, and only then writes it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dfseg.data.manifest import PURPOSES, build_manifest, schema_errors
from dfseg.data.validate import raise_first, read_header, validate_manifest
from dfseg.errors import InputError
from dfseg.io import (
    IMAGE_FORMATS,
    atomic_path,
    load_nifti,
    read_json,
    refuse_existing,
    voxel_size,
    write_json,
)

#: Keys a layout can name, in the order they are looked for.
LAYOUT_KEYS: tuple[str, ...] = ("attn", "df", "label", "lung_mask", "sidecar")
#: The default layout (no ending: any image ending, or a DICOM folder).
DEFAULT_LAYOUT: dict[str, str] = {"attn": "{scan}/attn", "df": "{scan}/df", "label": "{scan}/label",
                                  "lung_mask": "{scan}/lung_mask", "sidecar": "{scan}/sidecar.json"}
#: Placeholders a pattern may hold.
PLACEHOLDERS: tuple[str, ...] = ("scan", "subject")

#: The acquisition template ``dfseg import --write-template`` writes: the sidecar fields the
#: correction chain needs, set to dfseg's default simulated protocol (the one its models learn).
TEMPLATE: dict[str, Any] = {
    "_comments": {
        "about": "Acquisition of your scans for `dfseg import --sidecar-template`. Edit every value to your "
                 "scanner's; a scan's own sidecar.json overrides any of them. Keys starting with _ are ignored.",
        "kvp": "X-ray tube peak voltage, kV",
        "filtration_mm": "added beam filtration: material -> thickness in mm (e.g. {\"Al\": 1.0, \"Cu\": 0.1})",
        "visibility": "grating interferometer visibility spectrum: peak visibility v_max in (0, 1], the energy of "
                      "the peak (design_energy_kev) and the spectrum's width (width_kev), from a flat-field fit",
        "orientations_deg": "grating orientations in degrees, one per dark-field (df) channel, in channel order",
        "voxel_mm": "voxel size in mm (one number, or [x, y, z]); null: read from each attenuation image "
                    "(required for a TIFF stack without ImageJ/OME spacing)",
        "air_columns": "detector columns at each edge that see only air (raw projections only; null: none given)",
        "geometry": "ct (volumes) or radiograph (projections, Z = 1)",
    },
    "kvp": 70.0,
    "filtration_mm": {"Al": 1.0},
    "visibility": {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0},
    "orientations_deg": [0.0, 45.0, 90.0, 135.0],
    "voxel_mm": None,
    "air_columns": None,
    "geometry": "ct",
}

_ENDINGS: tuple[str, ...] = tuple(sorted(IMAGE_FORMATS, key=len, reverse=True))  # .nii.gz before .nii


def write_template(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write :data:`TEMPLATE` as JSON (refused when ``path`` exists, unless ``overwrite``)."""
    path = refuse_existing(path, overwrite=overwrite)
    write_json(path, TEMPLATE)
    return path


def read_template(path: str | os.PathLike) -> dict:
    """A template's fields without comments (keys starting with ``_``) and unset (``null``) values."""
    document = read_json(path)
    if not isinstance(document, Mapping):
        raise InputError(path, f"template must be a JSON object, found {type(document).__name__}")
    return {k: v for k, v in document.items() if not str(k).startswith("_") and v is not None}


def _check_pattern(key: str, pattern: str) -> None:
    names = re.findall(r"\{([^{}]*)\}", pattern)
    unknown = sorted(set(names) - set(PLACEHOLDERS))
    if unknown:
        raise InputError(f"--{key.replace('_', '-')}", f"unknown placeholder {{{unknown[0]}}} in {pattern!r}; "
                                                       f"use {{scan}} and {{subject}}")
    if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
        raise InputError(f"--{key.replace('_', '-')}", f"pattern {pattern!r} must be relative to the source folder")


def _has_ending(pattern: str) -> bool:
    return pattern.lower().endswith((*_ENDINGS, ".json"))


def _pattern_regex(pattern: str) -> re.Pattern:
    """A regex matching the relative paths ``pattern`` describes; placeholders become named groups."""
    out, pos, seen = "", 0, set()
    for m in re.finditer(r"\{(scan|subject)\}", pattern):
        out += re.escape(pattern[pos:m.start()])
        out += f"(?P={m[1]})" if m[1] in seen else f"(?P<{m[1]}>[^/]+)"
        seen.add(m[1])
        pos = m.end()
    out += re.escape(pattern[pos:])
    if not _has_ending(pattern):
        out += "(?:" + "|".join(re.escape(e) for e in _ENDINGS) + ")?"
    return re.compile(out, re.IGNORECASE)


def resolve_image(src: Path, relative: str, key: str) -> Path | None:
    """The file (or DICOM folder) a filled-in pattern names, ``None`` when there is none."""
    base = src / relative
    if _has_ending(relative) or base.exists():
        return base if base.exists() else None
    found = [p for p in (Path(f"{base}{e}") for e in _ENDINGS) if p.is_file()]
    if len(found) > 1:
        raise InputError(base.parent, f"{len(found)} {key} images ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _expected(relative: str, key: str) -> str:
    if _has_ending(relative):
        return relative
    return f"{relative}.nii.gz, {relative}.mha, ... or a DICOM folder {relative}/"


def find_scans(src: str | os.PathLike, layout: Mapping[str, str] | None = None) -> list[dict]:
    """Every scan under ``src``: ``{"scan": id, "subject": id or None, "folder": Path, <key>: Path, ...}``.

    Args:
        src: the folder of scans.
        layout: patterns per key of :data:`LAYOUT_KEYS` (default :data:`DEFAULT_LAYOUT`); keys left
            out keep the default pattern.

    Raises:
        InputError: no scan found, a scan without ``df``, two images for one key, a bad pattern.
    """
    src = Path(src)
    if not src.is_dir():
        raise InputError(src, "not a folder")
    patterns = {**DEFAULT_LAYOUT, **dict(layout or {})}
    for key, pattern in patterns.items():
        _check_pattern(key, pattern)
    single = re.search(r"\{(scan|subject)\}", patterns["attn"]) is None
    if (layout is None or "attn" not in layout) and resolve_image(src, "attn", "attn") is not None:
        # the default layout, and the source folder holds attn.* itself: it is one scan
        patterns = {k: p.replace("{scan}/", "") for k, p in patterns.items()}
        single = True
    regex = _pattern_regex(patterns["attn"])
    glob = re.sub(r"\{(scan|subject)\}", "*", patterns["attn"])
    candidates = set(src.glob(glob))
    if not _has_ending(patterns["attn"]):
        candidates |= {p for e in _ENDINGS for p in src.glob(glob + e)}
    scans: list[dict] = []
    for attn in sorted(candidates):
        relative = attn.relative_to(src).as_posix() if attn.exists() else None
        match = regex.fullmatch(relative) if relative else None
        if match is None:
            continue
        values = {k: v for k, v in match.groupdict().items() if v is not None}
        scan_id = values.get("scan") or (src.resolve().name if single else attn.parent.name)
        fill = {"scan": values.get("scan", ""), "subject": values.get("subject", "")}
        found: dict[str, Any] = {"scan": scan_id, "subject": values.get("subject"), "attn": attn,
                                 "folder": attn.parent}
        for key in LAYOUT_KEYS[1:]:
            rel = patterns[key].format(**fill)
            path = resolve_image(src, rel, key)
            if path is None and key == "df":
                raise InputError(src / Path(rel).parent, f"scan {scan_id!r} has attn but no df ({_expected(rel, key)})")
            if path is not None:
                found[key] = path
        scans.append(found)
    if not scans:
        raise InputError(src, f"no scans found (no {_expected(patterns['attn'], 'attn')})")
    return scans


def _subject_id(scan: Mapping[str, Any], subject_pattern: str | None) -> str:
    if scan.get("subject"):
        return str(scan["subject"])
    if subject_pattern:
        match = re.search(subject_pattern, scan["scan"])
        if match is None:
            raise InputError("--subject-pattern", f"{subject_pattern!r} does not match scan {scan['scan']!r}")
        groups = match.groupdict().get("subject") or (match.group(1) if match.groups() else match.group(0))
        return str(groups)
    return str(scan["scan"])


def scan_entry(scan: Mapping[str, Any], template: Mapping[str, Any], template_name: str | None,
               subject_pattern: str | None = None) -> dict:
    """The raw manifest entry (absolute paths, ``sidecar`` or ``meta``, ids, tumour flag) of a found scan."""
    sidecar: dict = {}
    if "sidecar" in scan:
        document = read_json(scan["sidecar"])
        if not isinstance(document, Mapping):
            raise InputError(scan["sidecar"], f"sidecar must be a JSON object, found {type(document).__name__}")
        sidecar = dict(document)
    meta = {**template, **sidecar}
    meta.setdefault("scan_id", str(scan["scan"]))
    meta.setdefault("subject_id", _subject_id(scan, subject_pattern))
    if meta.get("voxel_mm") is None:
        _shape, affine = read_header(Path(scan["attn"]))
        meta["voxel_mm"] = [round(float(v), 6) for v in voxel_size(affine)]
    if "has_tumour" not in meta and "label" in scan:
        label, _ = load_nifti(scan["label"], voxel_mm=meta["voxel_mm"])
        meta["has_tumour"] = bool(np.count_nonzero(label))
    errors = schema_errors(meta, "sidecar")
    if errors:
        source = scan.get("sidecar") or template_name
        if source is None:
            raise InputError(scan["folder"], "no acquisition metadata: give --sidecar-template (dfseg import "
                                             "--write-template acq.json writes one) or a sidecar.json per scan")
        path, message = errors[0]
        raise InputError(f"{source}:{path}" if path else source, f"{message} (scan {scan['scan']!r})")
    entry: dict[str, Any] = {k: str(scan[k]) for k in LAYOUT_KEYS if k in scan}
    entry["meta"] = meta
    if "sidecar" in entry and schema_errors(sidecar, "sidecar"):
        del entry["sidecar"]  # it does not stand alone: the merged metadata in meta is the scan's
    return entry


def import_scans(src: str | os.PathLike, output: str | os.PathLike, *, layout: Mapping[str, str] | None = None,
                 sidecar_template: str | os.PathLike | None = None, subject_pattern: str | None = None,
                 purpose: str = "inference", num_folds: int = 5, test_fraction: float = 0.2, seed: int = 0,
                 name: str | None = None, overwrite: bool = False) -> tuple[Path, dict]:
    """Build, validate and write ``<output>/manifest.json`` for the scans under ``src`` (module docstring).

    Args:
        src: the folder of scans.
        output: the folder the manifest goes in (paths in it are relative to this folder).
        layout: patterns per key (:func:`find_scans`).
        sidecar_template: acquisition template (:data:`TEMPLATE`); a scan's own sidecar overrides it.
        subject_pattern: regex whose first group (or group ``subject``) is the subject id in a scan id.
        purpose: ``"inference"`` (labels optional, no folds) or ``"training"`` (labels and lung masks
            required, ``num_folds`` folds and a held-out ``test_fraction`` of subjects).
        num_folds: folds of a training manifest.
        test_fraction: share of subjects held out from a training manifest.
        seed: seed of the split and the folds.
        name: cohort name (default: the source folder's name).
        overwrite: replace an existing manifest.

    Returns:
        The manifest path and the manifest (relative paths).

    Raises:
        InputError: the first problem, one line; nothing is written then.
    """
    if purpose not in PURPOSES:
        raise InputError("--purpose", f"must be 'training' or 'inference', got {purpose!r}")
    src, out = Path(src).resolve(), Path(output)  # scan paths are made relative to the manifest's folder
    path = refuse_existing(out / "manifest.json", overwrite=overwrite)
    template = read_template(sidecar_template) if sidecar_template is not None else {}
    scans = find_scans(src, layout)
    entries = []
    for scan in scans:
        if purpose == "training":
            for key in ("label", "lung_mask"):
                if key not in scan:
                    raise InputError(scan["folder"], f"scan {scan['scan']!r} has no {key}; a training manifest "
                                                     "needs label and lung_mask for every scan (or --purpose inference)")
        entries.append(scan_entry(scan, template, None if sidecar_template is None else str(sidecar_template),
                                  subject_pattern))
    manifest = build_manifest(entries, out, purpose=purpose, num_folds=num_folds, seed=seed,
                              test_fraction=test_fraction, name=name or src.resolve().name,
                              description=f"imported by dfseg import from {src.resolve()}")
    with atomic_path(path) as tmp:
        write_json(tmp, manifest)
        problems = validate_manifest(tmp)
        raise_first([type(p)(p.where.replace(str(tmp), str(path)), p.message) for p in problems])
    return path, manifest
