"""The cohort manifest: a MONAI datalist JSON with subjects, folds, sidecar metadata and hashes.

Layout (documented field by field in ``data_manifests/DATA_DICTIONARY.md``; schema in
``dfseg/schemas/manifest.schema.json``)::

    {"name", ["purpose",] "description", "pipeline_version", "created_by", "num_folds", "seed",
     "test_split": {"by": "subject" | "variant" | "none", "fraction", "variants"},
     "training": [entry, ...], "validation": [...], "test": [...]}

Two purposes. A **training** manifest (``purpose`` absent, the default) names ``attn``, ``df``,
``label`` and ``lung_mask`` and ``has_tumour`` for every scan and has at least 2 folds. An
**inference** manifest (``"purpose": "inference"``, e.g. from ``dfseg import``) needs only
``attn`` and ``df`` (labels and lung masks optional, any number of subjects, one is enough): it
has no folds (``num_folds`` 0), every scan is in ``test`` with ``fold`` -1, and
``test_split.by`` is ``"none"``.

Convention: ``training`` holds every cross-validation entry, each with its ``fold``; ``validation``
stays empty unless a user fills it with a fixed validation set; ``test`` holds held-out entries
(``fold`` = -1). File paths in the manifest are relative to the manifest's directory;
:func:`load_manifest` returns them absolute.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from dfseg import __version__
from dfseg.data.folds import assign_folds, held_out_split
from dfseg.errors import InputError
from dfseg.io import read_json, sha256_file, write_json

#: Entry keys that name files, in the order they are checked.
FILE_KEYS: tuple[str, ...] = ("attn", "df", "label", "lung_mask", "proj_T", "proj_D", "histology", "sidecar")
#: Image keys every entry of a training manifest must have.
REQUIRED_IMAGE_KEYS: tuple[str, ...] = ("attn", "df", "label", "lung_mask")
#: Image keys every entry of an inference manifest must have.
INFERENCE_IMAGE_KEYS: tuple[str, ...] = ("attn", "df")
#: What a manifest is for (``purpose``; absent means training).
PURPOSES: tuple[str, ...] = ("training", "inference")
#: Manifest lists that hold entries.
SPLITS: tuple[str, ...] = ("training", "validation", "test")


@functools.cache
def load_schema(name: str = "manifest") -> dict:
    """The JSON schema ``dfseg/schemas/<name>.schema.json`` (``manifest`` or ``sidecar``)."""
    text = resources.files("dfseg").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def json_path(parts: Iterable[str | int]) -> str:
    """Format a JSON location as ``training[3].fold`` (empty string for the document root)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def schema_errors(document: Any, schema: str = "manifest") -> list[tuple[str, str]]:
    """Every schema violation of ``document`` as ``(json path, message)``, sorted by path."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(schema))
    errors = [(json_path(e.absolute_path), e.message) for e in validator.iter_errors(document)]
    return sorted(errors)


def _where(manifest_name: str, path: str) -> str:
    return f"{manifest_name}:{path}" if path else manifest_name


def build_manifest(entries: Sequence[Mapping[str, Any]], root: str | os.PathLike, *, num_folds: int = 5,
                   seed: int = 0, test_by: str = "subject", test_fraction: float = 0.2,
                   test_variants: Iterable[str] = (), name: str = "cohort", description: str = "",
                   hashes: bool = True, purpose: str = "training") -> dict:
    """Build a manifest: read sidecars, hash files, hold out a test set and assign folds.

    With ``purpose="inference"`` no test set is held out and no folds are assigned: every entry
    goes to ``test`` with fold -1, ``num_folds`` is 0, and entries need only ``attn`` and ``df``
    (``has_tumour`` is kept when the entry or its metadata has it). ``num_folds``, ``test_by``,
    ``test_fraction`` and ``test_variants`` are then ignored.

    Args:
        entries: one mapping per scan with file paths under :data:`FILE_KEYS` (absolute or relative
            to ``root``) and optionally ``subject_id``, ``scan_id``, ``has_tumour``, ``variant``,
            ``meta`` (default: the content of the ``sidecar`` file); missing ids, tumour flag and
            variant are taken from ``meta``.
        root: the directory the manifest will live in; stored paths are relative to it.
        num_folds: number of cross-validation folds (>= 2).
        seed: seed for the test split and fold assignment.
        test_by: ``"subject"``, ``"variant"`` or ``"none"`` (see :func:`held_out_split`).
        test_fraction: share of subjects held out when ``test_by="subject"``.
        test_variants: phantom variants held out when ``test_by="variant"``.
        name: cohort name.
        description: free text.
        hashes: compute the sha256 of every file (off only for tests and examples).
        purpose: ``"training"`` or ``"inference"`` (module docstring).

    Returns:
        The manifest dict (paths relative to ``root``), valid against the manifest schema.
    """
    if purpose not in PURPOSES:
        raise InputError("purpose", f"must be 'training' or 'inference', got {purpose!r}")
    inference = purpose == "inference"
    root = Path(root).resolve()
    built = [_build_entry(e, root, i, hashes, inference) for i, e in enumerate(entries)]
    seen: dict[str, int] = {}
    for i, entry in enumerate(built):
        if entry["scan_id"] in seen:
            raise InputError(f"entries[{i}].scan_id", f"duplicate scan_id {entry['scan_id']!r} (also entries[{seen[entry['scan_id']]}])")
        seen[entry["scan_id"]] = i
    if inference:
        test = sorted(built, key=lambda e: (e["subject_id"], e["scan_id"]))
        return {"name": name, "purpose": purpose, "description": description, "pipeline_version": __version__,
                "created_by": f"dfseg {__version__} dfseg.data.manifest.build_manifest", "num_folds": 0,
                "seed": int(seed), "test_split": {"by": "none"}, "training": [], "validation": [], "test": test}
    subjects: dict[str, bool] = {}
    variants: dict[str, set[str]] = {}
    for entry in built:
        subjects[entry["subject_id"]] = subjects.get(entry["subject_id"], False) or entry["has_tumour"]
        if entry.get("variant") is not None:
            variants.setdefault(entry["subject_id"], set()).add(entry["variant"])
    test_variants = sorted(set(test_variants))
    held = held_out_split(subjects, by=test_by, fraction=test_fraction, seed=seed,
                          subject_variants=variants, test_variants=test_variants)
    remaining = {s: t for s, t in subjects.items() if s not in held}
    folds = assign_folds(remaining, num_folds, seed)
    training, test = [], []
    for entry in sorted(built, key=lambda e: (e["subject_id"], e["scan_id"])):
        if entry["subject_id"] in held:
            entry["fold"] = -1
            test.append(entry)
        else:
            entry["fold"] = folds[entry["subject_id"]]
            training.append(entry)
    split: dict[str, Any] = {"by": test_by}
    if test_by == "subject":
        split["fraction"] = float(test_fraction)
    elif test_by == "variant":
        split["variants"] = test_variants
    return {
        "name": name,
        "description": description,
        "pipeline_version": __version__,
        "created_by": f"dfseg {__version__} dfseg.data.manifest.build_manifest",
        "num_folds": int(num_folds),
        "seed": int(seed),
        "test_split": split,
        "training": training,
        "validation": [],
        "test": test,
    }


def _build_entry(raw: Mapping[str, Any], root: Path, index: int, hashes: bool, inference: bool = False) -> dict:
    where = f"entries[{index}]"
    for key in INFERENCE_IMAGE_KEYS if inference else REQUIRED_IMAGE_KEYS:
        if key not in raw:
            raise InputError(where, f"missing file key {key!r}")
    entry: dict[str, Any] = {}
    absolute: dict[str, Path] = {}
    for key in FILE_KEYS:
        if raw.get(key) is not None:
            p = Path(raw[key])
            p = p if p.is_absolute() else root / p
            absolute[key] = p
            entry[key] = os.path.relpath(p, root)
    # metadata given with the entry wins; otherwise it is the sidecar's content
    if raw.get("meta") is not None:
        meta = dict(raw["meta"])
    elif "sidecar" in absolute:
        meta = read_json(absolute["sidecar"])
        if not isinstance(meta, dict):
            raise InputError(absolute["sidecar"], "sidecar must be a JSON object")
    else:
        meta = {}
    for key in ("subject_id", "scan_id", "has_tumour"):
        value = raw.get(key, meta.get(key))
        if value is None and inference and key == "has_tumour":
            continue  # unknown for an unlabelled scan
        if value is None:
            raise InputError(where, f"no {key!r} in the entry, its meta or its sidecar")
        entry[key] = bool(value) if key == "has_tumour" else str(value)
    entry["fold"] = -1
    variant = raw.get("variant", meta.get("variant"))
    entry["variant"] = None if variant is None else str(variant)
    entry["meta"] = meta
    if hashes:
        entry["sha256"] = {k: sha256_file(p) for k, p in absolute.items()}
    return entry


def scan_entries(cohort_dir: str | os.PathLike) -> list[dict]:
    """Raw entries (absolute paths) for every ``<cohort_dir>/scans/<scan_id>/`` folder.

    A file key is included when ``<key>.nii.gz`` (``sidecar.json`` for the sidecar) exists; the
    result feeds :func:`build_manifest`, which reads ids and tumour flags from the sidecars.
    """
    scans = Path(cohort_dir) / "scans"
    if not scans.is_dir():
        raise InputError(scans, "no scans folder")
    entries = []
    for folder in sorted(p for p in scans.iterdir() if p.is_dir()):
        entry: dict[str, Any] = {}
        for key in FILE_KEYS:
            path = folder / ("sidecar.json" if key == "sidecar" else f"{key}.nii.gz")
            if path.is_file():
                entry[key] = str(path.resolve())
        entries.append(entry)
    return entries


def write_manifest(path: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Validate ``manifest`` against the schema, then write it atomically.

    Raises:
        InputError: at the first schema violation, naming its JSON path.
    """
    errors = schema_errors(manifest)
    if errors:
        where, message = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(_where(Path(path).name, where), message + more)
    write_json(path, manifest)


def resolve_paths(manifest: Mapping[str, Any], root: str | os.PathLike) -> dict:
    """A copy of ``manifest`` with every entry's file paths made absolute against ``root``."""
    root = Path(root).resolve()
    out = copy.deepcopy(dict(manifest))
    for split in SPLITS:
        for entry in out.get(split) or []:
            if not isinstance(entry, dict):
                continue
            for key in FILE_KEYS:
                if isinstance(entry.get(key), str):
                    entry[key] = os.path.normpath(root / entry[key])
    return out


def load_manifest(path: str | os.PathLike) -> dict:
    """Read and schema-check a manifest; return it with absolute file paths.

    Raises:
        InputError: missing/malformed file, or the first schema violation as
            ``manifest.json:training[3].fold: <message>``.
    """
    path = Path(path)
    document = read_json(path)
    errors = schema_errors(document)
    if errors:
        where, message = errors[0]
        more = f" (and {len(errors) - 1} more; run dfseg validate-manifest)" if len(errors) > 1 else ""
        raise InputError(_where(str(path), where), message + more)
    return resolve_paths(document, path.parent)


def split_fold(manifest: Mapping[str, Any], fold: int | None) -> tuple[list[dict], list[dict]]:
    """Training and validation entries of one cross-validation fold.

    Args:
        manifest: a loaded manifest.
        fold: the validation fold (``0..num_folds-1``); ``None`` trains on every ``training`` entry
            and validates on the manifest's ``validation`` list.

    Returns:
        ``(train_entries, val_entries)``, copies of the entries.
    """
    training = manifest["training"]
    if fold is None:
        return copy.deepcopy(list(training)), copy.deepcopy(list(manifest["validation"]))
    k = int(manifest["num_folds"])
    if not 0 <= fold < k:
        raise InputError("fold", f"must be in 0..{k - 1}, got {fold}")
    train = [copy.deepcopy(e) for e in training if e["fold"] != fold]
    val = [copy.deepcopy(e) for e in training if e["fold"] == fold]
    return train, val


def manifest_hash(path: str | os.PathLike) -> str:
    """sha256 of the manifest file's bytes (what runs record to pin their data)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    return sha256_file(path)
