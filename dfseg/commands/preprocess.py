"""``dfseg preprocess MANIFEST -o OUT --calibration calibration.json``: corrected, decomposed volumes.

The stage is :func:`dfseg.preprocess.preprocess_cohort`: every scan through the projection chain
(or, with ``--domain volume`` or without projections, the volume chain) into
``OUT/scans/<scan_id>/{attn, df (5 channels), label, lung_mask}, sidecar.json`` and
``OUT/manifest.json``; the cohort is checked before anything is written, and a failure leaves no
partial output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dfseg.commands import add_no_progress, add_out
from dfseg.data.manifest import SPLITS
from dfseg.io import read_json
from dfseg.preprocess import preprocess_cohort

HELP = "correct, reconstruct and decompose a cohort into network-ready volumes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="input cohort manifest.json")
    add_out(parser, "output directory (new cohort)", type=Path, required=True)
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
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    manifest = preprocess_cohort(args.manifest, args.out, args.calibration, domain=args.domain,
                                 aluminium_weight=args.aluminium_weight, bone_correction=args.bone_correction,
                                 overwrite=args.overwrite, workers=args.workers,
                                 progress=False if args.no_progress else None)
    document = read_json(manifest)
    scans = sum(len(document[split]) for split in SPLITS)
    print(f"wrote {scans} scans and {manifest}")
    return 0
