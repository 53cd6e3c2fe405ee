"""Calibration phantom scans, simulated with the same acquisition physics as the subjects.

Four phantoms (radiographic projection stacks; a homogeneous wedge needs no CT):

- ``water_wedge``: water step wedge, 16 steps 0-30 mm, at the acquisition's kVp and filtration.
- ``aluminium_wedge``: aluminium step wedge, 16 steps 0-6 mm, at the acquisition's kVp and filtration.
- ``microspheres_<k1>kvp`` / ``microspheres_<k2>kvp``: reference micro-structure phantom, a packed
  layer of polystyrene microspheres (radius 5 um, volume fraction 0.4, 3 mm thick) in air inside a
  PMMA cuvette (2 mm of wall in the beam), next to an empty part of the same cuvette, at the two
  tube voltages :func:`reference_kvps` picks (the acquisition's filtration).

Which spectra. Beam hardening and water linearisation are properties of the spectrum, so the
wedges are scanned at exactly the acquisition's kVp and filtration: the calibration they give
applies to that spectrum only (:func:`dfseg.calibration.check_spectrum`). The energy exponent n
(``DF ~ E^-n``) is a property of the micro-structure, measured as a local power law between two
effective energies; the reference pair is scanned 20 kV apart around the acquisition's kVp,
``(kVp - 10, kVp + 10)``, shifted to stay inside :data:`~dfseg.simulate.acquisition.KVP_RANGE`,
so the pair brackets the spectrum the calibration is for (70 kVp -> 60/80, 80 kVp -> 70/90).

Layout of each ``phantoms/<phantom_id>/``:

- ``proj_T.nii.gz`` / ``proj_D.nii.gz``: ``(A, U, Z, N)`` float32 on disk (channel-first
  ``(N, A, U, Z)`` in memory): N grating orientations, A repeated exposures (each with its own
  flux fluctuation and drifting gain), U detector columns, Z detector rows.
- ``sidecar.json``: ``phantom_id``, ``kind`` (``step_wedge`` | ``reference_microstructure``),
  ``material``, ``kvp``, ``filtration_mm``, ``visibility`` (VisibilitySpectrum parameters),
  ``v_ref``, ``orientations_deg``, ``air_columns`` (the first and last ``air_columns`` columns of
  U see only air), ``sample_columns`` ``[u0, u1)`` (columns that see the phantom), ``steps``
  (wedges: ``[{"thickness_mm", "rows": [z0, z1)}]``, rows of Z holding each step) or ``regions``
  (reference phantom: ``{"sample": {"rows": [z0, z1)}, "holder": {"rows": [z0, z1)}}`` plus
  ``sphere`` and ``holder`` descriptions), ``photons_per_pixel`` (the phantom exposure),
  ``phase_steps``, ``seed``, ``voxel_mm``.

Deterministic per seed: every phantom draws from its own ``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfseg.calibration.energy import visibility_from_params
from dfseg.io import save_nifti, write_json
from dfseg.physics import (
    DEFAULT_FILTRATION_MM,
    VisibilitySpectrum,
    linear_diffusion_coefficient,
    mu,
    phase_stepping_measurement,
    polychromatic_signals,
    tube_spectrum,
)
from dfseg.simulate.acquisition import KVP_RANGE, check_tube

__all__ = ["PHANTOM_IDS", "REFERENCE_KVPS", "phantom_ids", "reference_kvps", "write_phantom_scans", "scan_phantom"]

#: tube voltage of the default acquisition (the ``standard`` variant), kV
DEFAULT_KVP = 70.0
#: kV between the two reference micro-structure scans
REFERENCE_SPAN_KV = 20.0


def reference_kvps(kvp: float) -> tuple[float, float]:
    """The two tube voltages of the reference micro-structure scans for an acquisition at ``kvp``.

    ``(kvp - 10, kvp + 10)``, shifted to stay inside :data:`KVP_RANGE`, so the pair brackets ``kvp``.
    """
    lo_limit, hi_limit = KVP_RANGE
    lo = min(max(float(kvp) - REFERENCE_SPAN_KV / 2, lo_limit), hi_limit - REFERENCE_SPAN_KV)
    return lo, lo + REFERENCE_SPAN_KV


def phantom_ids(kvp: float) -> tuple[str, ...]:
    """The phantom directory names for an acquisition at ``kvp``: two wedges, then the reference pair."""
    return ("water_wedge", "aluminium_wedge", *(f"microspheres_{k:g}kvp" for k in reference_kvps(kvp)))


#: the phantoms of the default acquisition
PHANTOM_IDS = phantom_ids(DEFAULT_KVP)
REFERENCE_KVPS = reference_kvps(DEFAULT_KVP)

#: phantom scans average many frames: this many times the subjects' photons per pixel
PHOTONS_FACTOR = 100.0
N_STEPS = 16
ROWS_PER_STEP = 4
N_EXPOSURES = 16
SAMPLE_COLUMNS = 24

SPHERES = {"material": "polystyrene", "medium": "air", "radius_um": 5.0, "volume_fraction": 0.4, "thickness_mm": 3.0}
HOLDER = {"material": "pmma", "thickness_mm": 2.0}


def _acq(acquisition: Any, name: str, default: Any) -> Any:
    """An acquisition parameter (AcquisitionConfig attribute or mapping key), else the default."""
    if isinstance(acquisition, dict):
        value = acquisition.get(name)
    else:
        value = getattr(acquisition, name, None)
    return default if value is None else value


def _visibility(acquisition: Any) -> VisibilitySpectrum:
    vis = _acq(acquisition, "visibility", None)
    if vis is None:
        return VisibilitySpectrum(
            v_max=float(_acq(acquisition, "visibility_max", 0.3)),
            design_energy_kev=float(_acq(acquisition, "design_energy_kev", 35.0)),
            width_kev=float(_acq(acquisition, "visibility_width_kev", 12.0)),
            floor_fraction=float(_acq(acquisition, "visibility_floor", 0.15)),
        )
    return visibility_from_params(vis.describe() if hasattr(vis, "describe") else vis)


def _gain(rng: np.random.Generator, n: int, a: int, flux_sigma: float, drift: float) -> np.ndarray:
    """Per-exposure gain ``(N, A)``: random flux fluctuation times a slow linear-plus-sine drift."""
    x = np.linspace(0.0, 1.0, a)
    slow = 1.0 + drift * (x + 0.3 * np.sin(2 * np.pi * x))
    return (1.0 + flux_sigma * rng.standard_normal((n, a))) * slow[None, :]


def scan_phantom(
    thickness_terms: list[tuple[np.ndarray, str]],
    darkfield_terms: list[tuple[np.ndarray, np.ndarray]],
    *,
    kvp: float,
    filtration_mm: dict[str, float] | None,
    visibility: Any,
    n_orientations: int,
    photons_per_pixel: float,
    phase_steps: int,
    flux_sigma: float,
    drift: float,
    rng: np.random.Generator,
    noise: bool = True,
    reference_exposures: int = 1,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Simulate a radiographic stack of a phantom.

    Args:
        thickness_terms: ``[(t (U, Z) in mm, material name)]`` path lengths per detector pixel.
        darkfield_terms: ``[(t (U, Z) in mm, eps(E) (E,) in 1/mm)]`` scattering paths.
        kvp, filtration_mm, visibility: spectrum and reference visibility spectrum.
        n_orientations: N channels (independent exposures of the same isotropic phantom).
        noise: False gives the expected signals times the gain (no Poisson noise).
        reference_exposures: exposures averaged into the flat-field (reference) scan.

    Returns:
        ``(T, D, v_ref)`` with T, D of shape ``(N, A, U, Z)`` float32, A = ``N_EXPOSURES``.
    """
    spec = tube_spectrum(float(kvp), filtration_mm)
    e = spec.energies_kev
    att = [(t, mu(m, e)) for t, m in thickness_terms]
    t_exp, d_exp = polychromatic_signals(spec, visibility, att, darkfield_terms)
    v_ref = float(np.sum(spec.weights * visibility(e)))
    n, a = n_orientations, N_EXPOSURES
    gain = _gain(rng, n, a, flux_sigma, drift)[:, :, None, None]
    shape = (n, a, *t_exp.shape)
    t_full = np.broadcast_to(t_exp.astype(np.float64), shape)
    d_full = np.broadcast_to(d_exp.astype(np.float64), shape)
    if not noise:
        return (t_full * gain).astype(np.float32), d_full.astype(np.float32), v_ref
    t_hat, d_hat = phase_stepping_measurement(
        t_full, d_full, v_ref=v_ref, photons_per_pixel=photons_per_pixel, rng=rng, phase_steps=phase_steps,
        gain=gain, ref_photons_per_pixel=photons_per_pixel * reference_exposures,
    )
    return np.asarray(t_hat, np.float32), np.asarray(d_hat, np.float32), v_ref


def write_phantom_scans(out_dir: str | Path, acquisition: Any, seed: int,
                        progress: Callable[[str], None] | None = None, stream: Sequence[int] = ()) -> list[Path]:
    """Write the four calibration phantom scans under ``out_dir`` (``phantoms/`` of a cohort).

    Args:
        out_dir: directory to write ``<phantom_id>/{proj_T,proj_D}.nii.gz, sidecar.json`` into.
        acquisition: an ``AcquisitionConfig`` (or a mapping) giving kvp, filtration_mm, visibility,
            orientations_deg, photons_per_pixel, phase_steps, flux_sigma, drift_amplitude,
            air_columns, voxel_mm; missing ones take defaults.
        seed: base seed; the same seed gives byte-identical files.
        progress: optional callback called with each phantom id as it starts.
        stream: extra entropy for the noise, so that a cohort's phantom sets at several spectra
            draw independent noise (empty: the single set of a one-spectrum cohort).

    Returns:
        the phantom directories written, in :func:`phantom_ids` order (:data:`PHANTOM_IDS` at 70 kVp).

    Raises:
        InputError: a tube voltage or filtration dfseg cannot simulate (before anything is written).
    """
    out_dir = Path(out_dir)
    kvp = float(_acq(acquisition, "kvp", DEFAULT_KVP))
    filt = _acq(acquisition, "filtration_mm", None)
    filt = None if filt is None else dict(filt)
    check_tube(kvp, _default_filtration() if filt is None else filt)
    vis = _visibility(acquisition)
    orientations = [float(o) for o in _acq(acquisition, "orientations_deg", (0.0, 45.0, 90.0, 135.0))]
    air = int(_acq(acquisition, "air_columns", 4))
    steps_m = int(_acq(acquisition, "phase_steps", 5))
    flux_sigma = float(_acq(acquisition, "flux_sigma", 0.01))
    drift = float(_acq(acquisition, "drift_amplitude", _acq(acquisition, "drift", 0.02)))
    voxel_mm = float(_acq(acquisition, "voxel_mm", 0.1))
    # counts per pixel: given, else the dose per area over the pixel (as the subjects get them)
    fluence = _acq(acquisition, "fluence_per_mm2", None)
    per_pixel = _acq(acquisition, "photons_per_pixel", None if fluence is None else float(fluence) * voxel_mm**2)
    photons = float(2e4 if per_pixel is None else per_pixel) * PHOTONS_FACTOR
    noise = bool(_acq(acquisition, "noise", True))
    ref_exposures = int(_acq(acquisition, "reference_exposures", 1))

    u_total = SAMPLE_COLUMNS + 2 * air
    z_total = N_STEPS * ROWS_PER_STEP
    sample_cols = (air, air + SAMPLE_COLUMNS)
    column_mask = np.zeros(u_total, dtype=bool)
    column_mask[sample_cols[0]:sample_cols[1]] = True
    rows = [(i * ROWS_PER_STEP, (i + 1) * ROWS_PER_STEP) for i in range(N_STEPS)]

    common = {
        "visibility": vis.describe(), "orientations_deg": orientations, "air_columns": air,
        "sample_columns": list(sample_cols), "photons_per_pixel": photons, "phase_steps": steps_m,
        "flux_sigma": flux_sigma, "drift_amplitude": drift, "noise": noise,
        "reference_exposures": ref_exposures, "voxel_mm": voxel_mm, "seed": int(seed),
        **({"seed_stream": [int(k) for k in stream]} if len(stream) else {}),
        "exposures": N_EXPOSURES, "layout": "proj_* on disk (A, U, Z, N): A exposures, U columns, Z rows, N orientations",
    }
    written: list[Path] = []
    ref_kvps = dict(zip(phantom_ids(kvp)[2:], reference_kvps(kvp)))
    for index, pid in enumerate(phantom_ids(kvp)):
        if progress is not None:
            progress(pid)
        rng = np.random.default_rng([int(seed), *(int(k) for k in stream), index])
        if pid.endswith("wedge"):
            material = "water" if pid.startswith("water") else "aluminium"
            t_max = 30.0 if material == "water" else 6.0
            steps_mm = np.linspace(0.0, t_max, N_STEPS)
            thick = np.zeros((u_total, z_total))
            for t, (z0, z1) in zip(steps_mm, rows):
                thick[column_mask, z0:z1] = t
            scan_kvp, terms, dterms = kvp, [(thick, material)], []
            extra = {"kind": "step_wedge", "material": material,
                     "steps": [{"thickness_mm": float(t), "rows": [z0, z1]} for t, (z0, z1) in zip(steps_mm, rows)]}
        else:
            scan_kvp = ref_kvps[pid]
            half = z_total // 2
            holder = np.zeros((u_total, z_total))
            holder[column_mask, :] = HOLDER["thickness_mm"]
            layer = np.zeros((u_total, z_total))
            layer[column_mask, :half] = SPHERES["thickness_mm"]
            spec = tube_spectrum(scan_kvp, filt)
            eps = linear_diffusion_coefficient(spec.energies_kev, SPHERES["radius_um"], SPHERES["volume_fraction"],
                                               matrix=SPHERES["material"], medium=SPHERES["medium"])
            # sphere material in the beam: phi * layer thickness of polystyrene (air neglected)
            terms = [(holder, HOLDER["material"]), (layer * SPHERES["volume_fraction"], SPHERES["material"])]
            dterms = [(layer, eps)]
            extra = {"kind": "reference_microstructure", "material": SPHERES["material"],
                     "regions": {"sample": {"rows": [0, half]}, "holder": {"rows": [half, z_total]}},
                     "sphere": dict(SPHERES), "holder": dict(HOLDER)}
        t_hat, d_hat, v_ref = scan_phantom(
            terms, dterms, kvp=scan_kvp, filtration_mm=filt, visibility=vis, n_orientations=len(orientations),
            photons_per_pixel=photons, phase_steps=steps_m, flux_sigma=flux_sigma, drift=drift, rng=rng,
            noise=noise, reference_exposures=ref_exposures,
        )
        pdir = out_dir / pid
        save_nifti(pdir / "proj_T.nii.gz", np.moveaxis(t_hat, 0, -1), voxel_mm)
        save_nifti(pdir / "proj_D.nii.gz", np.moveaxis(d_hat, 0, -1), voxel_mm)
        sidecar = {"phantom_id": pid, **extra, "kvp": float(scan_kvp),
                   "filtration_mm": filt if filt is not None else _default_filtration(), "v_ref": v_ref, **common}
        write_json(pdir / "sidecar.json", sidecar)
        written.append(pdir)
    return written


def _default_filtration() -> dict[str, float]:
    return dict(DEFAULT_FILTRATION_MM)
