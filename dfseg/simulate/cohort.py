"""Cohort writer: simulate subjects, write their scans, the calibration phantoms and the manifest.

Layout (docs/ARCHITECTURE.md "Files of a scan")::

    <out>/manifest.json
    <out>/scans/<scan_id>/{attn,df,label,lung_mask[,proj_T,proj_D]}.nii.gz, sidecar.json
    <out>/phantoms/<phantom_id>/...                  one spectrum
    <out>/phantoms/<NN>_<kvp>kvp_<filters>/<phantom_id>/...   one set per spectrum

Determinism: subject i draws every random number from
``numpy.random.default_rng(SeedSequence([seed, i]))``, so the files do not depend on the number
of workers or the order they finish in; NIfTI files are gzip'd without a timestamp.

Domain randomisation (``randomise``, :mod:`dfseg.simulate.domain`): subject i's scanner and
animal parameters are drawn from ``SeedSequence([seed, i, 1])`` when the jobs are made, and
:func:`simulate_subject` applies them: the tube, dose, visibility and orientations
(:func:`~dfseg.simulate.domain.acquisition_for`), the voxel size and grid
(:func:`~dfseg.simulate.domain.grid_for`), the animal (:func:`~dfseg.simulate.domain.anatomy_for`),
then, after :func:`~dfseg.simulate.acquisition.acquire`, the detector's blur and the shared flat
field's rings (:func:`dfseg.simulate.artefacts.apply_detector_artefacts`, which reconstructs
again), and last the field of view: a lung-cropped scan's volumes, label and lung mask are cut to
the lungs' bounding box plus a margin (:func:`lung_crop_box`), the affine's origin moved so every
voxel keeps its world position; its projections (the whole detector) are not written. Without
``randomise`` nothing of this runs and the files are those of a plain cohort.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dfseg import __version__
from dfseg.errors import InputError
from dfseg.io import prepare_output_dir, save_nifti, write_json
from dfseg.simulate.acquisition import AcquisitionConfig, acquire
from dfseg.simulate.anatomy import build_anatomy
from dfseg.simulate.artefacts import apply_detector_artefacts
from dfseg.simulate.domain import (
    DomainRandomisation,
    acquisition_for,
    anatomy_for,
    check_randomise_fraction,
    domain_rng,
    grid_for,
    sample_domain,
)
from dfseg.simulate.executors import map_jobs
from dfseg.simulate.phantoms import write_phantom_scans
from dfseg.simulate.tumours import sample_tumours
from dfseg.simulate.variants import get_variant

#: Equivalent tumour diameters (mm) per geometry: CT covers early nodules 0.5-3 mm; the
#: radiograph mode follows Dey et al. 2025 (0.75-1.5 mm).
DIAMETER_RANGE_MM = {"ct": (0.5, 3.0), "radiograph": (0.75, 1.5)}
#: Tumours per tumour-bearing subject, inclusive range.
TUMOUR_COUNT = {"ct": (1, 3), "radiograph": (1, 2)}
#: Share of tumour-free subjects (so lesion-presence AUROC is meaningful).
TUMOUR_FREE_FRACTION = 0.4


def subject_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of subject ``index``: ``default_rng(SeedSequence([seed, index]))``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def tumour_free_subjects(n_subjects: int, seed: int) -> set[int]:
    """Indices of the tumour-free subjects: ``round(0.4 N)`` of them (none when N = 1), seeded."""
    n_free = 0 if n_subjects < 2 else max(1, int(round(TUMOUR_FREE_FRACTION * n_subjects)))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2**32 - 1]))
    return {int(i) for i in rng.permutation(n_subjects)[:n_free]}


def subject_ids(index: int, geometry: str) -> tuple[str, str]:
    """``(subject_id, scan_id)`` of subject ``index``."""
    subject = f"sub-{index:04d}"
    return subject, f"{subject}_{'ct' if geometry == 'ct' else 'rad'}"


def simulate_subject(index: int, *, size: int | tuple[int, int, int] | None, voxel_mm: float, seed: int,
                     variant: str = "standard", acquisition: AcquisitionConfig | None = None, has_tumour: bool = True,
                     kvp: float | None = None, filtration_mm: dict[str, float] | None = None,
                     z_centre_mm: float = 0.0, protocol: str | None = None,
                     domain: dict[str, Any] | None = None) -> dict[str, Any]:
    """Simulate one subject: anatomy, tumours, acquisition.

    Args:
        index: subject index (with ``seed`` it fixes every random number).
        size: the grid (:func:`dfseg.simulate.anatomy.build_anatomy`): None sizes it from a
            true-size mouse, ``(X, Y, Z)`` is a true-size mouse on that grid (a slab when Z is
            short), an int S a small S^3 cube with the body scaled to fit (tests).
        voxel_mm: voxel size, mm.
        seed: cohort seed.
        variant: phantom variant name (micro-structure, spectrum, tumour model).
        acquisition: base acquisition settings; the variant's kVp and filtration replace its own.
        has_tumour: insert 1..k tumours (False: tumour-free subject).
        kvp, filtration_mm: tube voltage (kV) and added filtration (material -> mm) replacing the
            variant's (None: the variant's).
        z_centre_mm: cranio-caudal position of the grid's centre in the thorax (true size).
        protocol: the protocol's name, recorded in the sidecar.
        domain: this subject's scanner and animal parameters
            (:func:`dfseg.simulate.domain.sample_domain`; module docstring), replacing the
            tube (``kvp``/``filtration_mm`` are then ignored), dose, visibility, orientations,
            voxel size (and the grid and angles with it) and the variant's micro-structure means;
            written to the sidecar's ``domain`` block. None: none of it.

    Returns:
        dict with ``images`` (name -> array as written to disk, channels last), ``projections``
        (``proj_T``/``proj_D`` as (A, U, Z, N); empty for a lung-cropped scan), ``sidecar``
        (dict) and, for a cropped scan, ``affine`` (4x4, the crop's origin).
    """
    var = get_variant(variant)
    base = acquisition or AcquisitionConfig()
    if domain is None:
        config = replace(base, kvp=var.kvp if kvp is None else float(kvp),
                         filtration_mm=dict(var.filtration_mm if filtration_mm is None else filtration_mm))
        anatomy_kw: dict[str, Any] = {"micro": var.micro}
    else:
        size, voxel_mm, n_angles = grid_for(size, voxel_mm, base.n_angles, domain, air_columns=base.air_columns)
        config = acquisition_for(replace(base, n_angles=n_angles), domain)
        anatomy_kw = anatomy_for(domain, var.micro)
    config = config.at_pixel(voxel_mm)
    geometry = config.geometry
    rng = subject_rng(seed, index)
    anatomy = build_anatomy(size, voxel_mm, rng, air_columns=config.air_columns, z_centre_mm=z_centre_mm,
                            **anatomy_kw)
    if has_tumour:
        lo, hi = TUMOUR_COUNT[geometry]
        sample_tumours(anatomy, rng, count=int(rng.integers(lo, hi + 1)),
                       diameter_range_mm=DIAMETER_RANGE_MM[geometry], model=var.tumour_model)
    scan = acquire(anatomy, config, rng)
    if domain is not None:
        scan = apply_detector_artefacts(
            scan, rng, psf_sigma_px=float(domain["psf_sigma_px"]), ring_gain_sd=float(domain["ring_gain_sd"]),
            flat_counts=config.counts_per_pixel(voxel_mm) * int(domain["flat_exposures"]), shape=anatomy.shape,
            pixel_mm=voxel_mm, geometry=geometry)
    if geometry == "ct":
        images = {"attn": scan["attn"], "df": scan["df"], "label": anatomy.label,
                  "lung_mask": anatomy.lung_mask.astype(np.uint8)}
    else:  # radiograph: (X, Z) images stored as (X, Y, 1[, N]) so the 3D loaders work
        images = {"attn": scan["attn"][:, :, None], "df": scan["df"][:, :, None, :],
                  "label": anatomy.label.any(axis=1)[:, :, None].astype(np.uint8),
                  "lung_mask": anatomy.lung_mask.any(axis=1)[:, :, None].astype(np.uint8)}
    projections = {k: np.moveaxis(scan[k], 0, -1) for k in ("proj_T", "proj_D")}  # (A, U, Z, N)
    extra: dict[str, Any] = {}
    if domain is not None:
        extra = {"domain": domain, "detector_artefacts": scan["artefacts"], "fov": {"mode": domain["fov"]}}
        box = lung_crop_box(images["lung_mask"], images["label"], voxel_mm, float(domain["crop_margin_mm"])) \
            if domain["fov"] == "lung" else None
        if box is not None:
            extra["fov"].update({"margin_mm": float(domain["crop_margin_mm"]),
                                 "full_grid": [int(n) for n in images["label"].shape[:3]],
                                 "box_voxels": [[int(b.start), int(b.stop)] for b in box],
                                 "origin_mm": [float(b.start * voxel_mm) for b in box]})
            images = {k: v[box] for k, v in images.items()}
            projections = {}  # they see the whole detector, not the cropped field of view
    subject_id, scan_id = subject_ids(index, geometry)
    spectrum = scan["spectrum"]
    sidecar = {
        "subject_id": subject_id,
        "scan_id": scan_id,
        "kvp": float(config.kvp) if config.monochromatic_kev is None else float(config.monochromatic_kev),
        "filtration_mm": dict(config.filtration_mm),
        "visibility": dict(config.visibility),
        "orientations_deg": [float(w) for w in config.orientations_deg],
        "voxel_mm": float(voxel_mm),
        "protocol": protocol,
        "fluence_per_mm2": float(config.fluence_per_mm2) if base.photons_per_pixel is None else None,
        "photons_per_pixel": float(config.photons_per_pixel),
        "exposures": int(len(config.orientations_deg) * (config.n_angles if geometry == "ct" else 1)),
        "phase_steps": int(config.phase_steps),
        "n_angles": int(config.n_angles if geometry == "ct" else 1),
        "air_columns": int(config.air_columns),
        "variant": var.name,
        "geometry": geometry,
        "simulator_version": __version__,
        "seed": int(seed),
        "has_tumour": bool(images["label"].any()),
        "tumours": [{k: t[k] for k in ("centre_mm", "diameter_mm", "shape_model", "label_voxels",
                                       "label_diameter_mm", "size_bin")} for t in anatomy.tumours],
        "spectrum": {**spectrum.describe(), "v_ref": scan["v_ref"], "monochromatic": config.monochromatic_kev is not None},
        "acquisition": {"flux_sigma": config.flux_sigma, "drift_amplitude": config.drift_amplitude,
                        "reference_exposures": config.reference_exposures, "n_basis": config.n_basis},
        "anatomy": anatomy.info,
        "units": {"attn": "1/mm" if geometry == "ct" else "line integral -ln T",
                  "df": "1/mm" if geometry == "ct" else "line integral -ln D"},
        **extra,
    }
    result = {"images": images, "projections": projections, "sidecar": sidecar}
    if "origin_mm" in extra.get("fov", {}):
        affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
        affine[:3, 3] = extra["fov"]["origin_mm"]
        result["affine"] = affine
    return result


def lung_crop_box(lung_mask: np.ndarray, label: np.ndarray, voxel_mm: float, margin_mm: float
                  ) -> tuple[slice, slice, slice] | None:
    """The lung-cropped field of view: the bounding box of lung and tumours, plus ``margin_mm``, on the grid.

    Axes of one voxel (a radiograph's Y) are kept whole. None when there is no lung.

    Args:
        lung_mask, label: (X, Y, Z) masks as written.
        voxel_mm: voxel size, mm.
        margin_mm: margin on each side, mm (rounded up to whole voxels).
    """
    occupied = (np.asarray(lung_mask) > 0) | (np.asarray(label) > 0)
    if not occupied.any():
        return None
    m = int(np.ceil(margin_mm / voxel_mm - 1e-9))
    box = []
    for axis, n in enumerate(occupied.shape[:3]):
        if n == 1:
            box.append(slice(0, 1))
            continue
        idx = np.flatnonzero(occupied.any(axis=tuple(a for a in range(occupied.ndim) if a != axis)))
        box.append(slice(max(0, int(idx[0]) - m), min(n, int(idx[-1]) + 1 + m)))
    return tuple(box)  # type: ignore[return-value]


def write_scan(scan_dir: str | os.PathLike, result: dict[str, Any], *, projections: bool = True) -> Path:
    """Write one simulated scan (``simulate_subject`` result) into ``scan_dir``."""
    scan_dir = Path(scan_dir)
    voxel = result["sidecar"]["voxel_mm"]
    grid = result.get("affine", voxel)  # a cropped field of view has its own origin
    for name, array in result["images"].items():
        save_nifti(scan_dir / f"{name}.nii.gz", array, grid,
                   dtype=np.uint8 if name in ("label", "lung_mask") else np.float32)
    if projections:
        for name, array in result["projections"].items():
            save_nifti(scan_dir / f"{name}.nii.gz", array, voxel, dtype=np.float32)
    write_json(scan_dir / "sidecar.json", result["sidecar"])
    return scan_dir


#: torch threads of one subject's simulation, whatever ``workers`` is: torch splits float32
#: reductions (FBP back-projection sums) by thread count, so a fixed count keeps the
#: reconstructions bit-identical for any number of workers.
SIMULATION_THREADS = 1


def _simulate_and_write(job: dict[str, Any]) -> str:
    job = dict(job)
    out = job.pop("scans_dir")
    projections = job.pop("projections")
    previous = torch.get_num_threads()
    torch.set_num_threads(SIMULATION_THREADS)
    try:  # restore: in the single-process path this is the caller's interpreter
        result = simulate_subject(**job)
    finally:
        torch.set_num_threads(previous)
    write_scan(Path(out) / result["sidecar"]["scan_id"], result, projections=projections)
    return result["sidecar"]["scan_id"]


def write_cohort(
    out: str | os.PathLike,
    subjects: int,
    size: int | tuple[int, int, int] | None,
    voxel_mm: float,
    seed: int,
    variant: str | Sequence[str] = "standard",
    geometry: str = "ct",
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    *,
    acquisition: AcquisitionConfig | None = None,
    projections: bool = True,
    phantoms: bool = True,
    folds: int = 5,
    test_by: str = "subject",
    test_fraction: float = 0.2,
    test_variants: Sequence[str] = (),
    kvp: float | None = None,
    filtration_mm: dict[str, float] | None = None,
    z_centre_mm: float = 0.0,
    protocol: str | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    randomise: DomainRandomisation | None = None,
    randomise_fraction: float = 1.0,
) -> Path:
    """Simulate a cohort and write scans, calibration phantoms and ``manifest.json``.

    The phantoms are scanned at the subjects' spectrum (tube, filtration, visibility spectrum), so
    ``dfseg calibrate <out>/phantoms`` fits the calibration the subjects need. A cohort scanned at
    several spectra (several variants, domain randomisation) gets one phantom set per spectrum,
    ``phantoms/<NN>_<kvp>kvp_<filters>/`` (:func:`scan_spectra`, :func:`spectrum_name`), and
    ``dfseg calibrate`` then writes a calibration set.

    Args:
        out: output directory (refused when non-empty unless ``overwrite``).
        subjects: number of mice.
        size: the grid of every subject (:func:`simulate_subject`): None (a true-size mouse's),
            ``(X, Y, Z)``, or an int S (an S^3 cube with the body scaled to fit; tests).
        voxel_mm: voxel size, mm.
        seed: cohort seed (same seed -> byte-identical files).
        variant: a phantom variant name, or several (subjects are dealt to them in turn).
        geometry: ``"ct"`` or ``"radiograph"``.
        workers: worker processes, or Dask workers of a local cluster (the files do not depend on
            it: every subject runs with :data:`SIMULATION_THREADS` torch threads).
        overwrite: empty a non-empty ``out`` first.
        progress: show a tqdm progress bar on stderr.
        acquisition: base acquisition settings (geometry is taken from ``geometry``).
        projections: also write ``proj_T``/``proj_D`` (large).
        phantoms: also write the calibration phantom scans.
        folds: cross-validation folds in the manifest.
        test_by: held-out test split of the manifest: ``"subject"``, ``"variant"`` or ``"none"``.
        test_fraction: share of subjects held out when ``test_by="subject"``.
        test_variants: variants held out when ``test_by="variant"``.
        kvp, filtration_mm: one spectrum (tube voltage in kV, added filtration material -> mm) for
            every subject and the phantoms, replacing the variants' spectra; the one not given is
            the first variant's. Neither given: each subject keeps its variant's spectrum.
        z_centre_mm: cranio-caudal position of the grid's centre in the thorax, mm (a slab's place).
        protocol: name of the protocol the settings came from (recorded in sidecars and manifest).
        executor: ``"local"`` (this machine's processes) or ``"dask"`` (a Dask cluster, see
            docs/distributed.md); :func:`dfseg.simulate.executors.map_jobs`.
        scheduler: the Dask scheduler's address or scheduler file (``executor="dask"``; None
            starts a local cluster of ``workers`` processes).
        randomise: domain randomisation ranges (module docstring): each subject's scanner and
            animal drawn from them (``kvp``/``filtration_mm`` must then be None); None: off. Each
            subject's phantom set has its drawn tube and visibility at the base dose and voxel.
        randomise_fraction: share of the subjects ``randomise`` applies to (the others keep their
            variant's nominal scanner and animal): :func:`randomised_subjects`, spread evenly over
            the cohort and the variants. 1: every subject.

    Returns:
        the cohort directory.

    Raises:
        InputError: an unknown variant, a bad count, or a tube voltage or filtration dfseg cannot
            simulate, before anything is written.
    """
    # reason: dfseg.data loads MONAI, which the spawned simulation workers (they import this module) never use
    from dfseg.data.manifest import build_manifest, scan_entries, write_manifest

    if subjects < 1:
        raise InputError("subjects", f"need at least one subject, got {subjects}")
    if workers < 1:
        raise InputError("workers", f"need at least one worker, got {workers}")
    if randomise is not None and (kvp is not None or filtration_mm is not None):
        raise InputError("kvp/filtration_mm", "a fixed tube and domain randomisation exclude each other; set the "
                                              "kvp, al_mm and cu_mm ranges of the randomisation instead")
    variants = [variant] if isinstance(variant, str) else list(variant)
    for v in variants:
        get_variant(v)  # unknown names fail before anything is written
    first = get_variant(variants[0])
    spectrum = None if kvp is None and filtration_mm is None else {
        "kvp": first.kvp if kvp is None else float(kvp),
        "filtration_mm": dict(first.filtration_mm if filtration_mm is None else filtration_mm)}
    # the phantoms' spectrum; AcquisitionConfig refuses a tube dfseg cannot simulate
    base = replace(acquisition or AcquisitionConfig(), geometry=geometry,
                   **(spectrum or {"kvp": first.kvp, "filtration_mm": dict(first.filtration_mm)}))
    out = prepare_output_dir(out, overwrite=overwrite)
    free = tumour_free_subjects(subjects, seed)
    jobs = [{"index": i, "size": size, "voxel_mm": voxel_mm, "seed": seed, "variant": variants[i % len(variants)],
             "acquisition": base, "has_tumour": i not in free, "scans_dir": str((out / "scans").absolute()),
             "projections": projections, "z_centre_mm": z_centre_mm, "protocol": protocol, **(spectrum or {})}
            for i in range(subjects)]
    check_randomise_fraction(randomise_fraction)
    if randomise is not None:  # drawn here, in the parent: the draws cannot depend on the executor
        chosen = randomised_subjects(subjects, len(variants), randomise_fraction)
        for job in (j for j in jobs if j["index"] in chosen):
            job["domain"] = {**sample_domain(domain_rng(seed, job["index"]), randomise), "ranges": randomise.describe()}
    # a bar on a terminal only: in a log file (CI, nohup) it is noise among the error lines
    bar = tqdm(total=subjects, desc="simulate", unit="subject", disable=not progress or not sys.stderr.isatty(),
               file=sys.stderr)
    map_jobs(_simulate_and_write, jobs, executor=executor, workers=workers, scheduler=scheduler,
             progress=lambda: bar.update(1))
    bar.close()
    if phantoms:
        spectra = scan_spectra(jobs, base)
        if len(spectra) == 1:
            _write_phantoms(out / "phantoms", spectra[0].at_pixel(voxel_mm), voxel_mm, seed, progress)
        else:  # one phantom set per spectrum: dfseg calibrate fits a calibration set
            for k, config in enumerate(spectra):
                _write_phantoms(out / "phantoms" / spectrum_name(k, config), config.at_pixel(voxel_mm), voxel_mm, seed,
                                progress, stream=(k,))
    manifest = build_manifest(
        scan_entries(out), out, num_folds=min(folds, subjects) if subjects >= 2 else 2, seed=seed,
        test_by=test_by, test_fraction=test_fraction, test_variants=test_variants,
        name=out.name, description=f"dfseg simulate: {subjects} subjects, {grid_text(size)} at {voxel_mm} mm"
                                  f"{f', protocol {protocol}' if protocol else ''}, variant {','.join(variants)}, "
                                  f"geometry {geometry}, seed {seed}"
                                  f"{', domain-randomised' if randomise is not None else ''}")
    write_manifest(out / "manifest.json", manifest)
    return out


def randomised_subjects(subjects: int, n_variants: int, fraction: float) -> set[int]:
    """Indices of the subjects a ``fraction`` of a cohort's domain randomisation applies to.

    Subjects are dealt to the variants in turn, ``n_variants`` per round; round ``j`` is randomised
    when ``floor((j + 1) f) > floor(j f)``, so the share is ``f`` over the cohort, the same for
    every variant, and whole rounds keep or lose it (``f = 0.5``: every second round).
    """
    rounds = [i // max(int(n_variants), 1) for i in range(subjects)]
    return {i for i, j in enumerate(rounds) if np.floor((j + 1) * fraction + 1e-9) > np.floor(j * fraction + 1e-9)}


def grid_text(size: int | tuple[int, int, int] | None) -> str:
    """A grid for messages: ``"64^3"``, ``"178 x 178 x 32"`` or, for None, the true-size mouse's."""
    if size is None:
        return "a true-size mouse's grid"
    if isinstance(size, int):
        return f"{size}^3"
    return " x ".join(str(int(n)) for n in size)


def scan_spectra(jobs: Sequence[dict[str, Any]], base: AcquisitionConfig) -> list[AcquisitionConfig]:
    """The distinct spectra (tube, filtration, visibility) the cohort's subjects are scanned at, in order.

    Each is ``base`` with that tube and visibility spectrum: the phantoms' acquisition for the
    subjects scanned at it (a variant's spectrum, a fixed ``kvp``/``filtration_mm``, or a subject's
    domain-randomised scanner).
    """
    found: dict[str, AcquisitionConfig] = {}
    for job in jobs:
        if job.get("domain") is not None:
            config = acquisition_for(base, job["domain"])
        else:
            var = get_variant(job["variant"])
            config = replace(base, kvp=float(job.get("kvp", var.kvp)),
                             filtration_mm=dict(job.get("filtration_mm", var.filtration_mm)))
        key = json.dumps([config.kvp, config.filtration_mm, config.visibility], sort_keys=True)
        found.setdefault(key, config)
    return list(found.values())


def spectrum_name(index: int, config: AcquisitionConfig) -> str:
    """Folder of a cohort's ``index``-th phantom set: ``01_72.4kvp_al1.2_cu0.05``."""
    filters = "_".join(f"{m.lower()}{mm:.3g}" for m, mm in sorted(config.filtration_mm.items()))
    return f"{index:02d}_{config.kvp:.4g}kvp" + (f"_{filters}" if filters else "")


def _write_phantoms(out: Path, config: AcquisitionConfig, voxel_mm: float, seed: int, progress: bool,
                    stream: Sequence[int] = ()) -> None:
    acquisition = {**config.describe(), "voxel_mm": float(voxel_mm)}
    report = (lambda name: print(f"phantom {name}", file=sys.stderr)) if progress else None
    write_phantom_scans(out, acquisition, seed, progress=report, stream=stream)
