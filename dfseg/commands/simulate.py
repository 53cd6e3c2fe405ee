"""``dfseg simulate``: write a simulated dark-field CT (or radiograph) mouse cohort."""

from __future__ import annotations

import argparse
from dataclasses import replace

from dfseg.commands import add_no_progress, add_out
from dfseg.errors import InputError
from dfseg.simulate.acquisition import (
    FILTER_MATERIALS,
    KVP_RANGE,
    AcquisitionConfig,
    check_tube,
    parse_filtration,
)
from dfseg.simulate.anatomy import anatomy_grid
from dfseg.simulate.cohort import grid_text, write_cohort
from dfseg.simulate.domain import DomainRandomisation, check_randomise_fraction, load_ranges
from dfseg.simulate.executors import EXECUTORS
from dfseg.simulate.protocols import DEFAULT_PROTOCOL, PROTOCOLS, get_protocol
from dfseg.simulate.variants import VARIANTS

HELP = "simulate a dark-field CT (or radiograph) mouse cohort with calibration phantoms"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_out(parser, "output cohort directory (must be empty unless --overwrite)", required=True)
    parser.add_argument("--subjects", type=int, default=12, help="number of simulated mice (default 12)")
    parser.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                        help="acquisition protocol: voxel size, grid, angles; "
                             + "; ".join(f"{p.name}: {p.summary}" for p in PROTOCOLS.values())
                             + f" (default {DEFAULT_PROTOCOL})")
    parser.add_argument("--voxel-mm", type=float, default=None,
                        help="isotropic voxel size in mm, replacing the protocol's (the grid is re-sized so the "
                             "true-size mouse keeps its size)")
    parser.add_argument("--length-mm", type=float, default=None,
                        help="cranio-caudal extent of the grid in mm, replacing the protocol's (16 = the whole thorax)")
    parser.add_argument("--size", type=int, default=None,
                        help="a small S^3 cube instead of the protocol's grid, the body scaled down to fit "
                             "(fast tests only: the mouse is then not true-size)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed; the same seed gives byte-identical files")
    parser.add_argument("--variant", nargs="+", default=["standard"], choices=sorted(VARIANTS),
                        help="phantom variant(s); several are dealt to subjects in turn (default standard)")
    parser.add_argument("--geometry", choices=("ct", "radiograph"), default="ct",
                        help="3D directional dark-field CT or single-view 2D radiographs (default ct)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (or local Dask workers); files are byte-identical whatever the count (each subject runs single-threaded torch)")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="where subjects are simulated: local processes, or a Dask cluster (docs/distributed.md); default local")
    parser.add_argument("--scheduler", default=None,
                        help="Dask scheduler address (tcp://host:8786) or scheduler file, with --executor dask "
                             "(default: a local cluster of --workers processes)")
    parser.add_argument("--angles", type=int, default=None, help="CT projection angles over 180 deg (default: the protocol's)")
    parser.add_argument("--fluence", type=float, default=None,
                        help="dose: detected counts per mm^2 and exposure over all phase steps; the counts per pixel "
                             "follow from the pixel area (default 6e5)")
    parser.add_argument("--photons", type=float, default=None,
                        help="detected counts per pixel and exposure, overriding --fluence (legacy cohorts, tests)")
    parser.add_argument("--kvp", type=float, default=None,
                        help=f"tube voltage in kV, {KVP_RANGE[0]:g}-{KVP_RANGE[1]:g}, for every subject and the "
                             "phantoms (default: the variant's, 70 for standard)")
    parser.add_argument("--filtration", default=None, metavar="MAT=MM[,MAT=MM]",
                        help="added filtration as in the sidecar's filtration_mm, e.g. Al=0.5,Cu=0.1, or none; "
                             f"materials {','.join(FILTER_MATERIALS)} (default: the variant's, Al=1 for standard)")
    parser.add_argument("--randomise", action="store_true",
                        help="domain randomisation: each subject's tube (60-80 kVp, Al, Cu), dose (x0.25-x4), "
                             "visibility, 3-8 grating orientations, detector blur, flat-field rings, voxel size "
                             "(0.10-0.20 mm), field of view (whole thorax or a lung crop), body and organ sizes, "
                             "airway and vessel tree and lung micro-structure drawn from physical ranges, recorded "
                             "in the sidecar's domain block (docs/domain_randomisation.md); excludes --kvp/--filtration")
    parser.add_argument("--randomise-ranges", default=None, metavar="FILE.yaml",
                        help="YAML mapping of randomisation ranges replacing the defaults (e.g. 'kvp: [50, 90]'); "
                             "implies --randomise")
    parser.add_argument("--randomise-fraction", type=float, default=1.0, metavar="F",
                        help="share of the subjects randomised, the others scanned at their variant's nominal "
                             "scanner, evenly over variants and cohort (default 1: all; a mixed training cohort: 0.5)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds in the manifest (default 5)")
    parser.add_argument("--test-by", choices=("subject", "variant", "none"), default="subject",
                        help="held-out test set: a share of subjects, whole variants, or none (default subject)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of subjects held out with --test-by subject (default 0.2)")
    parser.add_argument("--test-variants", nargs="*", default=[], help="variants held out with --test-by variant")
    parser.add_argument("--no-projections", action="store_true", help="do not write proj_T/proj_D (saves disk)")
    parser.add_argument("--no-phantoms", action="store_true", help="do not write the calibration phantom scans")
    add_no_progress(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")


def run(args: argparse.Namespace) -> int:
    if args.subjects < 1:
        raise InputError("--subjects", f"need at least one subject, got {args.subjects}")
    if args.size is not None and args.size < 16:
        raise InputError("--size", f"need at least 16 voxels per axis, got {args.size}")
    if args.size is not None and args.protocol is not None:
        raise InputError("--size", "a cube grid replaces the protocol's grid; give --size or --protocol, not both")
    if args.voxel_mm is not None and not args.voxel_mm > 0:
        raise InputError("--voxel-mm", f"must be positive, got {args.voxel_mm}")
    if args.length_mm is not None and not args.length_mm > 0:
        raise InputError("--length-mm", f"must be positive, got {args.length_mm}")
    if args.scheduler is not None and args.executor != "dask":
        raise InputError("--scheduler", "a scheduler needs --executor dask")
    randomise = None
    if args.randomise or args.randomise_ranges is not None:
        if args.kvp is not None or args.filtration is not None:
            raise InputError("--randomise", "draws the tube per subject; give its kvp/al_mm/cu_mm ranges in "
                                            "--randomise-ranges instead of --kvp/--filtration")
        randomise = DomainRandomisation() if args.randomise_ranges is None else load_ranges(args.randomise_ranges)
    check_randomise_fraction(args.randomise_fraction, "--randomise-fraction")
    if args.randomise_fraction != 1.0 and randomise is None:
        raise InputError("--randomise-fraction", "needs --randomise or --randomise-ranges")
    filtration = None if args.filtration is None else parse_filtration(args.filtration, "--filtration")
    if args.kvp is not None:
        check_tube(args.kvp, filtration or {}, kvp_where="--kvp", filtration_where="--filtration")
    config = AcquisitionConfig(geometry=args.geometry)
    if args.size is not None:  # a legacy cube: 0.4 mm and 180 angles unless given
        protocol, voxel_mm, size, z_centre = None, args.voxel_mm or 0.4, args.size, 0.0
    else:
        proto = get_protocol(args.protocol or DEFAULT_PROTOCOL)
        protocol, voxel_mm, z_centre = proto.name, args.voxel_mm or proto.voxel_mm, proto.z_centre_mm
        size = anatomy_grid(voxel_mm, air_columns=config.air_columns, length_mm=args.length_mm or proto.length_mm)
        config = replace(config, n_angles=proto.n_angles)
    if args.angles is not None:
        config = replace(config, n_angles=args.angles)
    if args.fluence is not None:
        if not args.fluence > 0:
            raise InputError("--fluence", f"must be positive, got {args.fluence}")
        config = replace(config, fluence_per_mm2=args.fluence)
    if args.photons is not None:
        config = replace(config, photons_per_pixel=args.photons)
    out = write_cohort(
        args.out, args.subjects, size, voxel_mm, args.seed, variant=args.variant,
        geometry=args.geometry, workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress,
        acquisition=config, projections=not args.no_projections, phantoms=not args.no_phantoms,
        folds=args.folds, test_by=args.test_by, test_fraction=args.test_fraction, test_variants=args.test_variants,
        kvp=args.kvp, filtration_mm=filtration, z_centre_mm=z_centre, protocol=protocol,
        executor=args.executor, scheduler=args.scheduler, randomise=randomise,
        randomise_fraction=args.randomise_fraction,
    )
    print(f"wrote {args.subjects} subjects ({grid_text(size)} voxels of {voxel_mm} mm"
          f"{f', protocol {protocol}' if protocol else ''}{', domain-randomised' if randomise else ''}) "
          f"to {out} (manifest {out / 'manifest.json'})")
    return 0
