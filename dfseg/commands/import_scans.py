"""``dfseg import SRC -o OUT``: a manifest for a folder of a lab's scans (``import`` is a Python keyword,
hence the module name). The work is :func:`dfseg.data.importer.import_scans`."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfseg.commands import add_out
from dfseg.data.importer import DEFAULT_LAYOUT, import_scans, write_template
from dfseg.errors import InputError

HELP = "build a manifest for a folder of your own scans (any format dfseg reads; labels optional)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, nargs="?", metavar="SRC",
                        help="folder of scans (default layout: SRC/<scan>/attn.*, df.*[, label.*, lung_mask.*, "
                             "sidecar.json]; .* is .nii.gz, .mha, .nrrd, .tif, ... or a DICOM folder)")
    add_out(parser, "folder to write manifest.json in (image paths in it are relative to it)", type=Path,
            metavar="OUT")
    parser.add_argument("--sidecar-template", type=Path, metavar="JSON",
                        help="acquisition metadata for every scan (a scan's own sidecar.json overrides it)")
    parser.add_argument("--write-template", type=Path, metavar="JSON",
                        help="write a commented acquisition template to edit, then stop")
    for key in ("attn", "df", "label", "lung_mask", "sidecar"):
        parser.add_argument(f"--{key.replace('_', '-')}", dest=f"pattern_{key}", metavar="PATTERN",
                            help=f"where each scan's {key} is, relative to SRC, with {{scan}} and {{subject}} "
                                 f"(default {DEFAULT_LAYOUT[key]!r}; no ending: any image ending or a DICOM folder)")
    parser.add_argument("--subject-pattern", metavar="REGEX",
                        help="regex whose first group is the subject id in a scan id (default: the sidecar's "
                             "subject_id, else {subject}, else the scan id)")
    parser.add_argument("--purpose", choices=("inference", "training"), default="inference",
                        help="inference (default: labels optional, no folds) or training (labels and lung masks "
                             "required, folds and a held-out test set)")
    parser.add_argument("--folds", type=int, default=5, help="folds of a training manifest (default 5)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of subjects held out of a training manifest (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test split and folds (default 0)")
    parser.add_argument("--name", help="cohort name (default: SRC's folder name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing manifest.json / template")


def run(args: argparse.Namespace) -> int:
    """Write the template, or import SRC; print one line saying what was written."""
    if args.write_template is not None:
        path = write_template(args.write_template, overwrite=args.overwrite)
        print(f"wrote {path}: edit its values, then dfseg import SRC -o OUT --sidecar-template {path}")
        return 0
    if args.src is None or args.out is None:
        raise InputError("dfseg import", "give SRC and -o OUT (or --write-template JSON)")
    layout = {key: value for key in ("attn", "df", "label", "lung_mask", "sidecar")
              if (value := getattr(args, f"pattern_{key}")) is not None}
    path, manifest = import_scans(args.src, args.out, layout=layout or None,
                                  sidecar_template=args.sidecar_template, subject_pattern=args.subject_pattern,
                                  purpose=args.purpose, num_folds=args.folds, test_fraction=args.test_fraction,
                                  seed=args.seed, name=args.name, overwrite=args.overwrite)
    entries = [e for split in ("training", "validation", "test") for e in manifest[split]]
    labelled = sum("label" in e for e in entries)
    subjects = len({e["subject_id"] for e in entries})
    print(f"wrote {path}: {args.purpose} manifest, {len(entries)} scans, {subjects} subjects, {labelled} labelled")
    return 0
