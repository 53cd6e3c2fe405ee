"""``dfseg retrieve LAYOUT.yaml -o OUT``: a Talbot-Lau scanner's raw phase-stepping frames -> one scan folder.

The frames are read one grating orientation at a time (:func:`dfseg.data.raw.iter_orientations`, so
memory stays that of one orientation's frames) and each goes through
:func:`dfseg.physics.stepping.retrieve_projections` (dark subtraction, flats interpolated in time,
optional step-phase estimation, per-frame doses from the air columns). ``OUT`` gets::

    proj_T.nii.gz    (A, U, Z, N) transmission a0_s / a0_r, as measured (flux left in), affine diag(pixel_mm)
    proj_D.nii.gz    (A, U, Z, N) visibility ratio V_s / V_r
    proj_dphi.nii.gz (A, U, Z, N) differential phase, radians (with --dphi)
    attn.nii.gz      (X, Y, Z) mean_n FBP(-ln T_n), 1/mm, uncorrected like the simulator's (not with --no-volumes)
    df.nii.gz        (X, Y, Z, N) FBP(-ln D_n) per orientation, 1/mm
    sidecar.json     the layout's acquisition metadata (kvp, filtration_mm, visibility, orientations_deg, ...),
                     voxel_mm, air_columns, n_angles, phase_steps, exposures, the reconstruction geometry and a
                     ``retrieval`` block (method, estimated phases and doses per orientation, centre of rotation)

which ``dfseg predict OUT`` reads as a scan folder (its projection chain reconstructs ``proj_T``/``proj_D``
in the sidecar's geometry) and ``dfseg import`` finds like any scan folder. The sidecar's ``geometry`` is
the scan type, ``"ct"``; its ``beam`` is the reconstruction geometry (:meth:`dfseg.tomo.Geometry.describe`,
which ``FBPReconstructiond`` reads): the layout's beam type and source distances, its angles (``scan_deg``
for angles evenly over 180 or 360 degrees, else the list), the detector pixel and the centre of rotation
(the layout's ``cor_offset_px``, or estimated with ``--estimate-cor``). The volumes are on the
reconstruction's default grid: the detector's field of view at the axis, voxel = detector pixel /
magnification.

Everything is written through :func:`dfseg.io.atomic_directory`: a failure leaves no output.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dfseg.commands import add_no_progress, add_out
from dfseg.data.raw import RawScan, iter_orientations, read_layout
from dfseg.data.validate import validate_sidecar
from dfseg.errors import InputError
from dfseg.io import atomic_directory, save_nifti, write_json
from dfseg.physics.stepping import fit_curves, retrieve_projections, step_phases, subtract_dark, wrap_phase
from dfseg.tomo import Geometry
from dfseg.tomo import estimate_cor as cor_from_projections
from dfseg.transforms.reconstruction import FBPReconstruction, NegativeLog

HELP = "retrieve proj_T / proj_D (and attn / df) from a Talbot-Lau scanner's raw phase-stepping frames"

#: Files written into the output folder, by key.
PROJECTION_FILES = {"T": "proj_T.nii.gz", "D": "proj_D.nii.gz", "dphi": "proj_dphi.nii.gz"}
#: Methods of the stepping-curve fit (:data:`dfseg.physics.stepping.METHODS`).
METHODS = ("auto", "lsq", "fft")
#: How far from 1 the air columns' mean D may be before the retrieval is reported as doubtful.
AIR_D_TOLERANCE = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("layout", type=Path, metavar="LAYOUT",
                        help="layout file (YAML/JSON) saying where the sample, flat and dark frames are "
                             "(docs/raw_frames.md)")
    add_out(parser, "output folder: proj_T, proj_D, attn, df, sidecar.json (one scan)", type=Path, required=True,
            metavar="OUT_DIR")
    parser.add_argument("--estimate-phases", action="store_true",
                        help="estimate every frame's grating step phase (jittered or unknown steps; needs >= 4 steps)")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="stepping-curve fit: fft (equally spaced steps), lsq (any steps) or auto (default: "
                             "fft unless step phases are given or estimated)")
    parser.add_argument("--air-columns", type=int, default=None, metavar="N",
                        help="air-only detector columns at each edge: per-frame dose correction and the sidecar's "
                             "air_columns (default: the layout's air_columns, else 0)")
    parser.add_argument("--estimate-cor", action="store_true",
                        help="estimate the centre of rotation from the projections (dfseg.tomo.estimate_cor) "
                             "instead of the layout's beam.cor_offset_px")
    parser.add_argument("--dphi", action="store_true", help="also write the differential phase, proj_dphi.nii.gz")
    parser.add_argument("--no-volumes", action="store_true",
                        help="write the projections and sidecar only (no attn / df reconstructions)")
    parser.add_argument("--scan-id", help="the scan's id (default: the layout meta's scan_id, else OUT_DIR's name)")
    parser.add_argument("--subject-id", help="the animal's id (default: the layout meta's subject_id, else the scan id)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    result = retrieve_scan(args.layout, args.out, estimate_phases=args.estimate_phases, method=args.method,
                           air_columns=args.air_columns, estimate_cor=args.estimate_cor, dphi=args.dphi,
                           volumes=not args.no_volumes, scan_id=args.scan_id, subject_id=args.subject_id,
                           overwrite=args.overwrite, progress=False if args.no_progress else None)
    n, a, u, z = result["shape"]
    print(f"retrieved {n} orientation(s) x {a} angles of {u} x {z} pixels; centre of rotation "
          f"{result['cor_offset_px']:+.2f} px ({result['cor_source']})")
    for note in result["notes"]:
        print(f"note: {note}")
    for problem in result["sidecar_problems"]:
        print(f"note: {problem} (fix it in the layout or sidecar.json before dfseg import / preprocess / predict)")
    print(f"wrote {', '.join(result['files'])} into {args.out}")
    return 0


# ------------------------------------------------------------------------------------------------ stage


def _geometry(beam: Mapping[str, Any], angles_deg: np.ndarray, pixel_mm: float, cor_offset_px: float):
    """The reconstruction geometry of the layout's beam block: even 180 / 360 degree scans by ``scan_deg``."""
    n = angles_deg.size
    kw: dict[str, Any] = {"angles_deg": [float(a) for a in angles_deg]}
    for arc in (180.0, 360.0):
        if n > 1 and np.allclose(angles_deg, arc * np.arange(n) / n, rtol=0, atol=1e-9):
            kw = {"scan_deg": arc}
            break
    if beam.get("type") == "cone":
        kw.update(kind="cone", source_object_mm=beam["source_object_mm"], source_detector_mm=beam["source_detector_mm"])
    return Geometry(detector_pixel_mm=float(pixel_mm), cor_offset_px=float(cor_offset_px), **kw)


def _phase_departure(est: np.ndarray, given: np.ndarray | None) -> tuple[float, float]:
    """RMS and largest departure (radians) of estimated step phases ``(A, M)`` from the given (nominal) ones,
    once each series' common offset, which no data can tell, is removed."""
    ref = np.broadcast_to(step_phases(est.shape[-1]) if given is None else given, est.shape)
    d = wrap_phase(est - ref)
    d = wrap_phase(d - np.angle(np.exp(1j * d).mean(axis=-1, keepdims=True)))
    return float(np.sqrt(np.mean(d**2))), float(np.abs(d).max())


def _reference_visibility(scan: RawScan, res: Mapping[str, np.ndarray]) -> float:
    """Median visibility a1 / a0 of the flats' stepping curves (dark-subtracted, doses divided out), one flat
    series at a time (a float64 copy of every flat at once would double the memory of the frames)."""
    medians = []
    for f in range(scan.flats.shape[1]):
        frames = np.asarray(scan.flats[0, f], dtype=np.float64)  # (M, U, Z)
        if scan.darks is not None:
            frames = subtract_dark(frames, scan.darks, stack_axis=0)
        frames = frames / res["flat_dose"][0, f][:, None, None]
        a0, a1, _ = fit_curves(frames, res["flat_phases"][0, f], axis=0, method="lsq")
        medians.append(np.median(a1 / a0))
    return float(np.median(medians))


def _orientation_summary(scan: RawScan, res: Mapping[str, np.ndarray], air: int, estimate_phases: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {"orientation_deg": float(scan.orientations_deg[0]),
                               "reference_visibility": round(_reference_visibility(scan, res), 6)}
    if estimate_phases:
        for name, est, given in (("sample", res["phases"][0], scan.sample_phases),
                                 ("flats", res["flat_phases"][0], scan.flat_phases)):
            rms, largest = _phase_departure(est, None if given is None else np.asarray(given)[0])
            summary[f"{name}_step_phase_rms_rad"] = round(rms, 6)
            summary[f"{name}_step_phase_max_rad"] = round(largest, 6)
    if air > 0:
        summary["sample_dose_std"] = round(float(np.std(res["dose"][0])), 6)
        summary["flat_dose_std"] = round(float(np.std(res["flat_dose"][0])), 6)
        t_air = np.concatenate([res["T"][0, :, :air], res["T"][0, :, -air:]], axis=1)
        d_air = np.concatenate([res["D"][0, :, :air], res["D"][0, :, -air:]], axis=1)
        summary["air_T_mean"] = round(float(t_air.mean()), 6)
        summary["air_D_mean"] = round(float(d_air.mean()), 6)
    return summary


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def retrieve_scan(layout: str | os.PathLike, out: str | os.PathLike, *, estimate_phases: bool = False,
                  method: str = "auto", air_columns: int | None = None, estimate_cor: bool = False,
                  dphi: bool = False, volumes: bool = True, scan_id: str | None = None,
                  subject_id: str | None = None, overwrite: bool = False,
                  progress: bool | None = None) -> dict[str, Any]:
    """Retrieve a raw phase-stepping scan into one scan folder (module docstring).

    Args:
        layout: the layout file (docs/raw_frames.md).
        out: the output folder; refused when it holds files (unless ``overwrite``) or holds the layout.
        estimate_phases: estimate every frame's step phase.
        method: ``"auto"``, ``"lsq"`` or ``"fft"`` (:func:`dfseg.physics.stepping.fit_curves`).
        air_columns: air-only columns at each detector edge (None: the layout's, else 0).
        estimate_cor: estimate the centre of rotation from ``-ln T`` instead of the layout's.
        dphi: also write ``proj_dphi.nii.gz``.
        volumes: also write ``attn.nii.gz`` and ``df.nii.gz``.
        scan_id, subject_id: ids for the sidecar (default: the layout meta's, else ``out``'s name).
        overwrite: replace a non-empty ``out``.
        progress: a progress bar per orientation (default: when stderr is a terminal).

    Returns:
        ``{"out", "files", "shape" (N, A, U, Z), "cor_offset_px", "cor_source", "sidecar",
        "sidecar_problems", "notes"}``; ``sidecar_problems`` lists what the sidecar schema (which
        ``dfseg import`` / ``preprocess`` check) finds missing or wrong, e.g. no ``kvp`` in the layout;
        ``notes`` the orientations whose air columns read a D more than :data:`AIR_D_TOLERANCE` from 1
        (an object in the air columns, or step phases and doses the air columns cannot determine:
        they see too few fringe phases).

    Raises:
        InputError: a bad layout, missing or malformed frames, a retrieval that fails (one line, naming
            the layout field or file).
        OutputExistsError: ``out`` is not empty and ``overwrite`` is not set.
    """
    if method not in METHODS:
        raise InputError("--method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    lay = read_layout(layout)
    out_path = Path(out)
    if _inside(lay.path.resolve().parent, out_path.resolve()):
        raise InputError(out, f"the output folder must not hold the raw frames ({lay.path}); choose another")
    air_where = "--air-columns" if air_columns is not None else f"{lay.path}:air_columns"
    air = int(lay.meta.get("air_columns", 0) if air_columns is None else air_columns)
    if air < 0:
        raise InputError(air_where, f"must be >= 0, got {air}")
    n_or = lay.orientations_deg.size
    show = sys.stderr.isatty() if progress is None else progress

    with atomic_directory(out, overwrite=overwrite) as tmp:
        stacks: dict[str, np.ndarray] = {}
        summaries: list[dict[str, Any]] = []
        with tqdm(total=n_or, desc="retrieve", unit="orientation", file=sys.stderr, disable=not show) as bar:
            for i, scan in enumerate(iter_orientations(lay)):
                n_u = scan.sample.shape[-2]
                if air > n_u // 2:
                    raise InputError(air_where, f"must be in 0..{n_u // 2} for {n_u} detector columns, got {air}")
                try:
                    res = retrieve_projections(scan.sample, scan.flats, darks=scan.darks,
                                               sample_phases=scan.sample_phases, flat_phases=scan.flat_phases,
                                               flat_indices=scan.flat_indices, air_columns=air,
                                               estimate_phases=estimate_phases, method=method)
                except InputError as err:
                    where = {"estimate_phases": "--estimate-phases", "method": "--method"}.get(
                        err.where, f"{lay.path}:{err.where}")
                    raise InputError(where, f"{err.problem} (orientation {scan.orientations_deg[0]:g} deg)") from None
                for key in ("T", "D", "dphi") if dphi else ("T", "D"):
                    if key not in stacks:
                        stacks[key] = np.empty((n_or, *res[key].shape[1:]), dtype=np.float32)
                    stacks[key][i] = res[key][0]
                summaries.append(_orientation_summary(scan, res, air, estimate_phases))
                # what "auto" chose (stepping.fit_curves): FFT for nominal equal steps, else least squares
                fit = method if method != "auto" else ("lsq" if estimate_phases or scan.sample_phases is not None
                                                       else "fft")
                del scan, res
                bar.update()
        _, n_a, n_u, n_z = stacks["T"].shape
        meta = dict(lay.meta)
        beam = dict(meta.get("beam") or {"type": "parallel"})
        pixel = float(meta["pixel_mm"])
        cor, cor_source = float(beam.get("cor_offset_px", 0.0)), "layout" if "cor_offset_px" in beam else "default 0"
        geometry = _geometry(beam, lay.angles_deg, pixel, cor)
        voxel = pixel / geometry.magnification
        if estimate_cor:
            line_t = NegativeLog()(stacks["T"])
            try:
                cor = cor_from_projections(line_t, geometry, voxel_mm=voxel)
            except InputError as err:
                raise InputError("--estimate-cor", f"{err.where}: {err.problem}") from None
            cor_source = "estimated"
            geometry = geometry.replace(cor_offset_px=cor)

        files = []
        for key, stack in stacks.items():
            save_nifti(tmp / PROJECTION_FILES[key], np.moveaxis(stack, 0, -1), pixel, dtype=np.float32)
            files.append(PROJECTION_FILES[key])
        if volumes:
            rec = FBPReconstruction(voxel, geometry=geometry)
            attn = FBPReconstruction(voxel, geometry=geometry, average_channels=True)(NegativeLog()(stacks["T"]))
            df = rec(NegativeLog()(stacks["D"]))
            save_nifti(tmp / "attn.nii.gz", np.asarray(attn)[0], voxel, dtype=np.float32)
            save_nifti(tmp / "df.nii.gz", np.moveaxis(np.asarray(df), 0, -1), voxel, dtype=np.float32)
            files += ["attn.nii.gz", "df.nii.gz"]

        sid = str(scan_id or meta.get("scan_id") or out_path.resolve().name)
        sidecar: dict[str, Any] = {
            "subject_id": str(subject_id or meta.get("subject_id") or sid),
            "scan_id": sid,
            **{k: v for k, v in meta.items() if k not in ("subject_id", "scan_id", "raw_layout", "beam")},
            "voxel_mm": voxel,
            "air_columns": air,
            "n_angles": int(n_a),
            "exposures": int(n_or * n_a),
            "geometry": "ct",
            "beam": geometry.describe(),
            "raw_layout": str(lay.path.resolve()),
            "retrieval": {
                "method": method,
                "fit": fit,
                "estimate_phases": bool(estimate_phases),
                "air_columns": air,
                "dose_correction": air > 0,
                "flats": int(lay.flat_indices.size),
                "flat_indices": [int(k) for k in lay.flat_indices],
                "darks": bool(lay.darks is not None),
                "cor_offset_px": round(cor, 4),
                "cor_source": cor_source,
                "orientations": summaries,
            },
        }
        write_json(tmp / "sidecar.json", sidecar)
        files.append("sidecar.json")
    notes = [f"orientation {o['orientation_deg']:g} deg: the air columns read D = {o['air_D_mean']:.3f}, not about 1; "
             "check --air-columns (does the object reach into them?); with --estimate-phases the air columns may "
             "see too few fringe phases to fix each frame's phase and dose: try --air-columns 0 (phases from the "
             "whole projection, no dose correction) or no --estimate-phases"
             for o in summaries if abs(o.get("air_D_mean", 1.0) - 1.0) > AIR_D_TOLERANCE]
    problems = [f"{p.where.split(':', 1)[-1] or 'sidecar.json'}: {p.message}"
                for p in validate_sidecar(sidecar, "sidecar.json")]
    return {"out": out_path, "files": files, "shape": (n_or, n_a, n_u, n_z), "cor_offset_px": cor,
            "cor_source": cor_source, "sidecar": sidecar, "sidecar_problems": problems, "notes": notes}
