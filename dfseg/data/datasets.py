"""Datalists for MONAI datasets: one fold's entries with absolute paths and flat metadata.

Bundles build ``monai.data.CacheDataset(data=datalist_for_fold(...), transform=...)``; no custom
Dataset class is needed. Nested metadata (``meta``, ``sha256``) is dropped and the sidecar fields
the transforms need are lifted to top-level keys, so MONAI's default collation works for batches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dfseg.data.manifest import FILE_KEYS, load_manifest, split_fold
from dfseg.errors import InputError

#: Sidecar fields copied to top-level datalist keys (same name) when the sidecar has them.
LIFTED_FIELDS: tuple[str, ...] = ("orientations_deg", "voxel_mm", "kvp", "geometry", "air_columns",
                                  "n_angles", "phase_steps", "photons_per_pixel", "visibility")
#: Entry fields kept as they are.
KEPT_FIELDS: tuple[str, ...] = ("subject_id", "scan_id", "fold", "has_tumour", "variant")


def flatten_entry(entry: Mapping[str, Any]) -> dict:
    """One datalist item: file paths, ids, and :data:`LIFTED_FIELDS` from ``entry["meta"]``.

    Keys whose value is ``None`` are left out (MONAI's collate cannot batch ``None``).
    """
    item: dict[str, Any] = {}
    for key in (*FILE_KEYS, *KEPT_FIELDS):
        if entry.get(key) is not None:
            item[key] = entry[key]
    meta = entry.get("meta") or {}
    for key in LIFTED_FIELDS:
        if meta.get(key) is not None:
            item[key] = meta[key]
    return item


def datalist_for_fold(manifest_path: str | os.PathLike, fold: int | None, split: str = "train") -> list[dict]:
    """The datalist of one split of one cross-validation fold.

    Args:
        manifest_path: the cohort manifest.
        fold: validation fold ``0..num_folds-1``; ``None`` uses every ``training`` entry for
            ``"train"`` and the manifest's ``validation`` list for ``"val"``. Ignored for ``"test"``.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        A list of flat dicts (see :func:`flatten_entry`) with absolute file paths.
    """
    manifest = load_manifest(manifest_path)
    if split == "test":
        entries = manifest["test"]
    elif split in ("train", "val"):
        train, val = split_fold(manifest, fold)
        entries = train if split == "train" else val
    else:
        raise InputError("split", f"must be 'train', 'val' or 'test', got {split!r}")
    return [flatten_entry(e) for e in entries]
