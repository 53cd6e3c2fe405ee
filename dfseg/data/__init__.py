"""dfseg.data: cohort manifests (MONAI datalists), their schema, validation, folds and datalists.

- :mod:`dfseg.data.manifest`: build, write, load and split manifests.
- :mod:`dfseg.data.folds`: subject-level stratified folds and held-out test splits.
- :mod:`dfseg.data.validate`: every problem of a manifest and its files, one line each.
- :mod:`dfseg.data.datasets`: flat datalists of one fold for MONAI datasets.
- :mod:`dfseg.data.scan`: :class:`LoadScand` (one scan's images and sidecar into one data dict) and
  :func:`scan_value` (the one metadata lookup).
"""

from __future__ import annotations

from dfseg.data.datasets import datalist_for_fold, flatten_entry
from dfseg.data.folds import assign_folds, held_out_split
from dfseg.data.manifest import (
    build_manifest,
    load_manifest,
    manifest_hash,
    scan_entries,
    split_fold,
    write_manifest,
)
from dfseg.data.scan import LoadScand, load_scan_image, scan_meta, scan_value
from dfseg.data.validate import Problem, check_no_leakage, validate_manifest, validate_scan

__all__ = [
    "LoadScand", "Problem", "assign_folds", "build_manifest", "check_no_leakage", "datalist_for_fold", "flatten_entry",
    "held_out_split", "load_manifest", "load_scan_image", "manifest_hash", "scan_entries", "scan_meta", "scan_value", "split_fold", "validate_manifest",
    "validate_scan", "write_manifest",
]
