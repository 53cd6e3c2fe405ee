"""Datalists for MONAI datasets: one fold's entries with absolute paths.

Bundles build ``monai.data.CacheDataset(data=datalist_for_fold(...), transform=...)``; no custom
Dataset class is needed. Each item names the scan's files, its ids and the manifest's copy of the
sidecar (``meta``); the transform chain starts with :class:`dfseg.data.scan.LoadScand`, which reads
the images and puts the acquisition metadata (``meta`` overridden by the sidecar file) in
``d["meta"]``, and drops it before batching.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dfseg.data.manifest import FILE_KEYS, load_manifest, split_fold
from dfseg.errors import InputError

#: Entry fields kept as they are (``sha256`` is left out: the manifest validator checks hashes).
KEPT_FIELDS: tuple[str, ...] = ("subject_id", "scan_id", "fold", "has_tumour", "variant", "meta")


def flatten_entry(entry: Mapping[str, Any]) -> dict:
    """One datalist item: the entry's file paths and :data:`KEPT_FIELDS`.

    Keys whose value is ``None`` are left out (MONAI's collate cannot batch ``None``).
    """
    return {key: entry[key] for key in (*FILE_KEYS, *KEPT_FIELDS) if entry.get(key) is not None}


def datalist_for_fold(manifest_path: str | os.PathLike, fold: int | None, split: str = "train") -> list[dict]:
    """The datalist of one split of one cross-validation fold.

    Args:
        manifest_path: the cohort manifest.
        fold: validation fold ``0..num_folds-1``; ``None`` uses every ``training`` entry for
            ``"train"`` and the manifest's ``validation`` list for ``"val"``. Ignored for ``"test"``.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        A list of items (see :func:`flatten_entry`) with absolute file paths.
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
