"""``dfseg calibrate PHANTOM_DIR -o calibration.json``: fit the physics calibration from phantom scans."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfseg.calibration import save_calibration
from dfseg.calibration.fit import fit_calibration, summary
from dfseg.commands import add_out
from dfseg.io import refuse_existing

HELP = "fit beam-hardening curves and the energy exponent from phantom scans"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("phantom_dir", type=Path, help="directory of phantom scans (a cohort's phantoms/)")
    add_out(parser, "calibration JSON to write", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--e-ref-kev", type=float, default=None,
                        help="reference energy for spectrum normalization (default: E_eff of the wedge spectrum)")


def run(args: argparse.Namespace) -> int:
    refuse_existing(args.out, overwrite=args.overwrite)
    cal = fit_calibration(args.phantom_dir, e_ref_kev=args.e_ref_kev)
    save_calibration(args.out, cal)
    print(summary(cal))
    print(f"wrote {args.out}")
    return 0
