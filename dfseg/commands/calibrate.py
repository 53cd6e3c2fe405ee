"""``dfseg calibrate PHANTOM_DIR -o calibration.json``: fit the physics calibration from phantom scans.

PHANTOM_DIR holds one phantom set (the scans of one spectrum), or one sub-folder per spectrum
(a cohort simulated at several): the output is then a calibration set, and ``dfseg preprocess``
corrects each scan with its own spectrum's entry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dfseg.calibration import save_calibration
from dfseg.calibration.fit import fit_calibrations, summary
from dfseg.commands import add_out
from dfseg.io import refuse_existing

HELP = "fit beam-hardening curves and the energy exponent from phantom scans"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("phantom_dir", type=Path, help="directory of phantom scans (a cohort's phantoms/), or of one "
                                                        "such folder per spectrum (gives a calibration set)")
    add_out(parser, "calibration JSON to write", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--e-ref-kev", type=float, default=None,
                        help="reference energy for spectrum normalization (default: E_eff of the wedge spectrum; "
                             "a calibration set: the median over its spectra)")


def run(args: argparse.Namespace) -> int:
    refuse_existing(args.out, overwrite=args.overwrite)
    cal = fit_calibrations(args.phantom_dir, e_ref_kev=args.e_ref_kev)
    save_calibration(args.out, cal)
    print(summary(cal))
    print(f"wrote {args.out}")
    return 0
