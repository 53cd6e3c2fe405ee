"""``dfseg validate-manifest PATH``: check a cohort manifest and every file it names."""

from __future__ import annotations

import argparse
import sys

from dfseg.data.manifest import SPLITS
from dfseg.data.validate import validate_manifest
from dfseg.io import read_json

HELP = "check a cohort manifest and every file it names"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the cohort manifest (manifest.json)")
    parser.add_argument("--no-hashes", action="store_true", help="skip the sha256 comparison of every file")
    parser.add_argument("--no-images", action="store_true",
                        help="check the manifest document alone; open none of the files it names")


def run(args: argparse.Namespace) -> int:
    """Print one line per problem and exit 1, or a one-line summary and exit 0."""
    problems = validate_manifest(args.path, check_hashes=not args.no_hashes, check_images=not args.no_images)
    if problems:
        for problem in problems:
            print(problem)
        print(f"{args.path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}", file=sys.stderr)
        return 1
    manifest = read_json(args.path)
    entries = [e for split in SPLITS for e in manifest[split]]
    subjects = {e["subject_id"] for e in entries}
    print(f"{args.path}: ok, {len(entries)} scans, {len(subjects)} subjects, {manifest['num_folds']} folds, 0 problems")
    return 0
