"""Talbot-Lau dark-field acquisition of an :class:`~dfseg.simulate.anatomy.Anatomy`: CT or radiograph.

CT (parallel beam, rotation axis z, 180 deg):

1. Line integrals of every material map and of the six scattering-tensor components of every
   energy-basis term, for all slices, in one batched :func:`dfseg.tomo.project` call; the tensor
   projections are combined per (angle, grating orientation) with
   :func:`dfseg.tomo.tensor_projection_weights` (docs/physics.md section 3).
2. Expected T and D per ray from the polychromatic, visibility-weighted forward model
   (:func:`dfseg.physics.polychromatic_signals`), so beam hardening and spurious dark-field on
   bone arise from the physics.
3. Poisson phase-stepping measurement (:func:`dfseg.physics.phase_stepping_measurement`) with a
   gain = flux fluctuation per exposure x slow detector drift over the scan.
4. Uncorrected FBP, as a scanner gives it: ``attn = mean_n fbp(-ln T_n)`` (1/mm) and
   ``df_n = fbp(-ln D_n)`` per orientation (1/mm). No flux, drift or beam-hardening correction:
   that is the job of ``dfseg preprocess``, using the ``air_columns`` air-only detector columns.

The noise-free T and D of steps 1-2 are also given alone by :func:`expected_ct` (the raw-frame
simulator, :mod:`dfseg.simulate.raw`, measures them frame by frame instead of step 3).

Radiograph: one view along +y; the detector plane is (x, z) and the grating sensitivity direction
of orientation w is ``s(w) = cos w * x + sin w * z``. ``attn = -ln T`` and ``df = -ln D`` (line
integrals, unitless), images (X, Z).

Dose is stated per area, so the counts per pixel follow from the pixel size. The default
``fluence_per_mm2`` is :data:`DEFAULT_FLUENCE_PER_MM2` = 6e5 detected counts per mm^2 and exposure
(summed over the phase steps, open beam); a pixel of ``p`` mm gets ``fluence * p^2`` counts
(1.35e4 at 0.15 mm, 6e3 at 0.10 mm). Where it comes from: an 85 mGy-class preclinical dark-field
CT (Umkehrer et al. 2019) at a mean energy near 40 keV (soft-tissue mu_en/rho ~ 0.07 cm^2/g)
corresponds to ~2e11 photons/cm^2 incident over the scan, i.e. ~2.8e6 per mm^2 per exposure over
4 x 180 exposures; after the analyser grating (~50 %) and detector (~60 %) that is ~8e5 counts
per mm^2, rounded down to 6e5. The sidecar records the fluence, the counts per pixel and the
fluence summed over all exposures. ``photons_per_pixel`` overrides the per-area statement (tests,
legacy cohorts). The flat field (reference) is taken as ``reference_exposures`` averaged
exposures. A radiograph uses the same per-exposure fluence.

Memory: the CT is acquired in slabs of :data:`SLAB_SLICES` slices (parallel-beam slices are
independent), so the sinograms, the noisy measurement and the reconstruction's temporaries are
bounded by the slab, not the grid; the noise of slab after slab comes from the same generator,
so a scan is the same whoever runs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from dfseg.errors import InputError
from dfseg.physics import (
    Spectrum,
    VisibilitySpectrum,
    monochromatic,
    mu,
    phase_stepping_measurement,
    polychromatic_signals,
    polychromatic_signals_oriented,
    tube_spectrum,
)
from dfseg.simulate.anatomy import Anatomy, scattering_tensors
from dfseg.tomo import fbp, project, projection_angles, tensor_projection_weights

GEOMETRIES = ("ct", "radiograph")

#: Tube voltages dfseg simulates, kV. SpekPy's tungsten model accepts 10-500 kV; dfseg keeps only
#: photons of 10 keV and more (:func:`dfseg.physics.tube_spectrum`), so the tube needs headroom above that.
KVP_RANGE: tuple[float, float] = (20.0, 500.0)

#: Added-filtration materials (``filtration_mm`` keys): the SpekPy names of the elements used as
#: X-ray tube filters. :func:`dfseg.physics.tube_spectrum` hands them to SpekPy, which knows every
#: element by symbol; the list turns a typo ("al", "Cu2") into a one-line error naming the choices
#: instead of SpekPy's "Error when loading material composition file!".
FILTER_MATERIALS: tuple[str, ...] = ("Al", "Be", "Cu", "Mo", "Rh", "Ag", "Sn", "Ti", "Zr", "W", "Pb")

#: Smallest T or D taken into the logarithm (a pixel with no counts would give -ln 0).
_LOG_FLOOR = 1e-6

#: Detected counts per mm^2 and exposure, over all phase steps, in the open beam (module docstring).
DEFAULT_FLUENCE_PER_MM2 = 6.0e5

#: CT slices simulated together (fixed: the noise depends on it, the machine must not).
SLAB_SLICES = 16


def check_tube(kvp: float, filtration_mm: dict[str, float], *, kvp_where: str = "kvp",
               filtration_where: str = "filtration_mm") -> None:
    """Refuse a tube voltage outside :data:`KVP_RANGE` or a filtration dfseg cannot simulate.

    Raises:
        InputError: one line naming the setting (``kvp_where`` / ``filtration_where``) and the problem.
    """
    lo, hi = KVP_RANGE
    if not (np.isfinite(kvp) and lo <= kvp <= hi):
        raise InputError(kvp_where, f"tube voltage must be {lo:g}-{hi:g} kV (SpekPy tungsten anode), got {kvp:g}")
    check_filtration(filtration_mm, filtration_where)


def check_filtration(filtration_mm: dict[str, float], where: str = "filtration_mm") -> None:
    """Refuse a filter material not in :data:`FILTER_MATERIALS` or a negative / non-finite thickness."""
    for material, mm in filtration_mm.items():
        if material not in FILTER_MATERIALS:
            raise InputError(where, f"unknown filter material {material!r}; known: {', '.join(FILTER_MATERIALS)}")
        try:
            value = float(mm)
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value >= 0):
            raise InputError(where, f"{material} thickness must be a finite number of mm >= 0, got {mm!r}")


def parse_filtration(text: str, where: str = "--filtration") -> dict[str, float]:
    """``"Al=0.5,Cu=0.1"`` -> ``{"Al": 0.5, "Cu": 0.1}`` (mm, the sidecar's ``filtration_mm``); ``"none"`` -> ``{}``.

    Raises:
        InputError: a malformed item, a material given twice, an unknown material or a bad thickness.
    """
    if text.strip().lower() == "none":
        return {}
    out: dict[str, float] = {}
    for item in text.split(","):
        material, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not material:
            raise InputError(where, f"expected MATERIAL=MM[,MATERIAL=MM...] (e.g. Al=0.5,Cu=0.1), got {text!r}")
        if material in out:
            raise InputError(where, f"{material} given twice in {text!r}")
        try:
            out[material] = float(value)
        except ValueError:
            raise InputError(where, f"{material} thickness must be a number of mm, got {value!r}") from None
    check_filtration(out, where)
    return out


@dataclass(frozen=True)
class AcquisitionConfig:
    """Everything about the scan; the sidecar repeats it.

    Attributes:
        kvp: tube voltage, kV (tungsten anode, SpekPy; within :data:`KVP_RANGE`).
        filtration_mm: added filtration, material (:data:`FILTER_MATERIALS`) -> mm.
        orientations_deg: grating orientations w, degrees (>= 3 distinct mod 180 for a directional fit).
        n_angles: projection angles over [0, 180) deg (CT).
        fluence_per_mm2: detected counts per mm^2 and exposure, summed over phase steps, in the
            open beam (the dose statement; see the module docstring for where the default comes from).
        photons_per_pixel: counts per pixel and exposure; None (default) derives them from
            ``fluence_per_mm2`` and the pixel area (:meth:`at_pixel`), a number overrides that.
        reference_exposures: exposures averaged into the flat-field (reference) scan.
        phase_steps: M phase steps per exposure.
        visibility: :class:`dfseg.physics.VisibilitySpectrum` parameters (v_max, design_energy_kev,
            width_kev, floor_fraction).
        flux_sigma: relative standard deviation of the tube flux per exposure.
        drift_amplitude: amplitude of the slow relative detector-gain drift over the whole scan.
        air_columns: detector columns on each side that see only air in every projection.
        geometry: ``"ct"`` or ``"radiograph"``.
        monochromatic_kev: if set, a monochromatic beam at this energy (tests: no beam hardening).
        noise: False gives the expected signals (no Poisson noise; flux and drift still applied).
        n_basis: energy basis functions of the scattering tensor.
        bin_kev: spectrum bin width, keV.
    """

    kvp: float = 70.0
    filtration_mm: dict[str, float] = field(default_factory=lambda: {"Al": 1.0})
    orientations_deg: tuple[float, ...] = (0.0, 45.0, 90.0, 135.0)
    n_angles: int = 180
    fluence_per_mm2: float = DEFAULT_FLUENCE_PER_MM2
    photons_per_pixel: float | None = None
    reference_exposures: int = 10
    phase_steps: int = 5
    visibility: dict[str, float] = field(default_factory=lambda: {
        "v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0, "floor_fraction": 0.15})
    flux_sigma: float = 0.01
    drift_amplitude: float = 0.02
    air_columns: int = 4
    geometry: str = "ct"
    monochromatic_kev: float | None = None
    noise: bool = True
    n_basis: int = 2
    bin_kev: float = 1.0

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise InputError("geometry", f"unknown geometry {self.geometry!r}; choose {' or '.join(GEOMETRIES)}")
        if len(self.orientations_deg) < 1:
            raise InputError("orientations_deg", "need at least one grating orientation")
        if self.n_angles < 1:
            raise InputError("n_angles", f"need at least one projection angle, got {self.n_angles}")
        if not self.fluence_per_mm2 > 0:
            raise InputError("fluence_per_mm2", f"must be positive, got {self.fluence_per_mm2}")
        if self.photons_per_pixel is not None and not self.photons_per_pixel > 0:
            raise InputError("photons_per_pixel", f"must be positive, got {self.photons_per_pixel}")
        if self.phase_steps < 3:
            raise InputError("phase_steps", f"need at least 3 phase steps, got {self.phase_steps}")
        if self.air_columns < 0:
            raise InputError("air_columns", f"must be >= 0, got {self.air_columns}")
        if self.monochromatic_kev is None:
            check_tube(float(self.kvp), dict(self.filtration_mm))

    def counts_per_pixel(self, pixel_mm: float) -> float:
        """Detected counts per pixel and exposure: ``photons_per_pixel`` if set, else fluence x pixel area."""
        if self.photons_per_pixel is not None:
            return float(self.photons_per_pixel)
        return float(self.fluence_per_mm2) * float(pixel_mm) ** 2

    def at_pixel(self, pixel_mm: float) -> AcquisitionConfig:
        """This acquisition with ``photons_per_pixel`` fixed for pixels of ``pixel_mm``."""
        return replace(self, photons_per_pixel=self.counts_per_pixel(pixel_mm))

    def spectrum(self) -> Spectrum:
        """The detector-weighted spectrum (:class:`dfseg.physics.Spectrum`)."""
        if self.monochromatic_kev is not None:
            return monochromatic(self.monochromatic_kev)
        return tube_spectrum(self.kvp, dict(self.filtration_mm), bin_kev=self.bin_kev)

    def visibility_spectrum(self) -> VisibilitySpectrum:
        """The reference visibility V0(E) (:class:`dfseg.physics.VisibilitySpectrum`)."""
        return VisibilitySpectrum(**self.visibility)

    def reference_visibility(self) -> float:
        """Open-beam visibility of the polychromatic beam, ``sum S' V0 / sum S'``."""
        s = self.spectrum()
        return float(np.sum(s.weights * self.visibility_spectrum()(s.energies_kev)) / np.sum(s.weights))

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (sidecar fields)."""
        d = asdict(self)
        d["orientations_deg"] = [float(w) for w in self.orientations_deg]
        d["filtration_mm"] = dict(self.filtration_mm)
        return d


def _materials_mu(anatomy: Anatomy, energies_kev: np.ndarray) -> tuple[list[str], np.ndarray]:
    names = sorted(anatomy.materials)
    return names, np.stack([mu(n, energies_kev) for n in names])  # (M, E)


def _gain(config: AcquisitionConfig, n_exposures: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Flux x drift per exposure, shape (N, A): independent flux noise, slow drift over scan time.

    Exposures are taken orientation by orientation, angle by angle; the drift is a half-period
    sinusoid of random phase over the whole scan (smooth, amplitude ``drift_amplitude``).
    """
    n, a = n_exposures
    flux = 1.0 + config.flux_sigma * rng.standard_normal((n, a))
    tau = np.arange(n * a).reshape(n, a) / max(n * a, 1)
    drift = 1.0 + config.drift_amplitude * np.sin(np.pi * tau + rng.uniform(0, 2 * np.pi))
    return flux * drift


def _measure(T: np.ndarray, D: np.ndarray, gain: np.ndarray, config: AcquisitionConfig, v_ref: float,
             rng: np.random.Generator, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    T = np.broadcast_to(T, np.broadcast_shapes(T.shape, D.shape))
    if not config.noise:
        return (T * gain).astype(np.float32), D.astype(np.float32)
    counts = config.counts_per_pixel(pixel_mm)
    return phase_stepping_measurement(
        T, D, v_ref=v_ref, photons_per_pixel=counts, rng=rng, phase_steps=config.phase_steps, gain=gain,
        ref_photons_per_pixel=counts * config.reference_exposures, threads=torch.get_num_threads(),
    )


def _neg_log(x: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(x, _LOG_FLOOR))


def _check_fov(anatomy: Anatomy, config: AcquisitionConfig) -> None:
    """The body must stay inside the circle that keeps ``air_columns`` air columns at every angle."""
    x, y, _ = anatomy.coordinates_mm()
    r = np.sqrt(x**2 + y**2)
    n = anatomy.shape[0]
    limit = (n / 2 - config.air_columns - 0.5) * anatomy.voxel_mm
    occupied = anatomy.body_mask.any(axis=2)
    if config.geometry == "radiograph":
        cols = np.flatnonzero(anatomy.body_mask.any(axis=(1, 2)))
        ok = cols.size == 0 or (cols.min() >= config.air_columns and cols.max() < n - config.air_columns)
    else:
        ok = not np.any(occupied & (r[..., 0] > limit))
    if not ok:
        raise InputError("air_columns", f"the body does not leave {config.air_columns} air-only detector columns; "
                                        "use a larger --size or fewer air columns")


@dataclass
class _CTModel:
    """What every slab of a CT acquisition shares: spectrum, materials, tensors, angles, weights."""

    spectrum: Spectrum
    vis: VisibilitySpectrum
    names: list[str]
    mu_e: np.ndarray
    h: np.ndarray
    s6: np.ndarray
    angles: np.ndarray
    wts: np.ndarray
    v_ref: float
    device: torch.device


def _ct_model(anatomy: Anatomy, config: AcquisitionConfig, device: str | None) -> _CTModel:
    nx, ny, _ = anatomy.shape
    if nx != ny:
        raise InputError("anatomy", f"CT needs a square slice (X = Y), got {anatomy.shape}")
    _check_fov(anatomy, config)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spectrum = config.spectrum()
    vis = config.visibility_spectrum()
    e = spectrum.energies_kev
    names, mu_e = _materials_mu(anatomy, e)
    h, s6 = scattering_tensors(anatomy, e, n_basis=config.n_basis)  # (K, E), (K, 6, X, Y, Z)
    angles = projection_angles(config.n_angles)
    w = np.deg2rad(np.asarray(config.orientations_deg, dtype=np.float64))
    wts = tensor_projection_weights(angles, w).astype(np.float32)  # (N, A, 6)
    v_ref = float(np.sum(spectrum.weights * vis(e)) / np.sum(spectrum.weights))
    return _CTModel(spectrum, vis, names, mu_e, h, s6, angles, wts, v_ref, dev)


def _expected_slab(model: _CTModel, anatomy: Anatomy, zs: slice) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free T (1, A, U, z) and D (N, A, U, z) of the slices ``zs``."""
    nx, ny, _ = anatomy.shape
    k = model.h.shape[0]
    # one batched projection of all maps (materials + tensor components) of the slab's slices
    maps = np.concatenate([np.stack([anatomy.materials[m][..., zs] for m in model.names]),
                           model.s6[..., zs].reshape(k * 6, nx, ny, -1)])
    maps_t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(maps, -1, 1))).to(model.device)  # (C, z, X, Y)
    sino = project(maps_t, model.angles, pixel_mm=anatomy.voxel_mm)  # (C, z, A, U)
    sino = sino.permute(0, 2, 3, 1).cpu().numpy()  # (C, A, U, z)
    lines = sino[: len(model.names)]  # (M, A, U, z) path lengths, mm
    comp = sino[len(model.names):].reshape(k, 6, *sino.shape[1:])  # (K, 6, A, U, z)
    p_k = np.einsum("kcauz,nac->knauz", comp, model.wts)  # (K, N, A, U, z)
    return polychromatic_signals_oriented(model.spectrum, model.vis, lines, model.mu_e, p_k, model.h,
                                          device=model.device)


def expected_ct(anatomy: Anatomy, config: AcquisitionConfig, *, device: str | None = None) -> dict[str, Any]:
    """The noise-free signals :func:`acquire_ct` measures: expected T and D per orientation and angle.

    No flux, drift or noise (they belong to the measurement); the raw-frame simulator
    (:mod:`dfseg.simulate.raw`) starts from these.

    Args:
        anatomy: the phantom (X = Y required: U = X detector columns).
        config: acquisition settings (``orientations_deg``, ``n_angles``, spectrum, visibility).
        device: torch device for the projector (default CUDA when available, else CPU).

    Returns:
        dict with ``T`` and ``D`` (N, A, U, Z) float32 (T is the same for every orientation),
        ``v_ref`` (float), ``spectrum``, ``angles_deg`` (A,).
    """
    model = _ct_model(anatomy, config, device)
    nx, _, nz = anatomy.shape
    n_or, n_a = model.wts.shape[:2]
    t_all = np.empty((n_or, n_a, nx, nz), np.float32)
    d_all = np.empty((n_or, n_a, nx, nz), np.float32)
    for z0 in range(0, nz, SLAB_SLICES):
        zs = slice(z0, min(z0 + SLAB_SLICES, nz))
        t_all[..., zs], d_all[..., zs] = _expected_slab(model, anatomy, zs)
    return {"T": t_all, "D": d_all, "v_ref": model.v_ref, "spectrum": model.spectrum,
            "angles_deg": np.rad2deg(model.angles)}


def acquire_ct(anatomy: Anatomy, config: AcquisitionConfig, rng: np.random.Generator, *, device: str | None = None
               ) -> dict[str, Any]:
    """Simulate a directional dark-field CT scan and its uncorrected FBP reconstruction.

    The scan is simulated in slabs of :data:`SLAB_SLICES` slices (module docstring); the flux and
    drift of every exposure are drawn once for the whole scan first.

    Args:
        anatomy: the phantom (X = Y required: U = X detector columns).
        config: acquisition settings.
        rng: random generator (noise, flux, drift).
        device: torch device for the projector and FBP (default CUDA when available, else CPU).

    Returns:
        dict with ``proj_T``, ``proj_D`` (N, A, U, Z) float32 measured T and D; ``attn`` (X, Y, Z)
        float32 in 1/mm; ``df`` (X, Y, Z, N) float32 in 1/mm; ``spectrum`` (the Spectrum);
        ``v_ref`` (float); ``gain`` (N, A).
    """
    model = _ct_model(anatomy, config, device)
    nx, ny, nz = anatomy.shape
    dev, angles, v_ref = model.device, model.angles, model.v_ref
    n_or, n_a = model.wts.shape[:2]
    gain = _gain(config, (n_or, n_a), rng)

    proj_t = np.empty((n_or, n_a, nx, nz), np.float32)
    proj_d = np.empty((n_or, n_a, nx, nz), np.float32)
    attn = np.empty((nx, ny, nz), np.float32)
    df = np.empty((nx, ny, nz, n_or), np.float32)
    for z0 in range(0, nz, SLAB_SLICES):
        zs = slice(z0, min(z0 + SLAB_SLICES, nz))
        t_exp, d_exp = _expected_slab(model, anatomy, zs)
        t_hat, d_hat = _measure(t_exp, d_exp, gain[:, :, None, None], config, v_ref, rng, anatomy.voxel_mm)
        proj_t[..., zs], proj_d[..., zs] = t_hat, d_hat
        # uncorrected FBP: the attenuation of the orientation-averaged -ln T (FBP is linear),
        # the dark-field of every orientation
        logs = np.concatenate([_neg_log(t_hat).mean(axis=0, keepdims=True), _neg_log(d_hat)]).astype(np.float32)
        logs_t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(logs, -1, 1))).to(dev)  # (1+N, z, A, U)
        rec = fbp(logs_t, angles, (nx, ny), pixel_mm=anatomy.voxel_mm).cpu().numpy()  # (1+N, z, X, Y)
        attn[..., zs] = np.moveaxis(rec[0], 0, -1)
        df[:, :, zs] = np.moveaxis(rec[1:], (0, 1), (3, 2))
    return {"proj_T": proj_t, "proj_D": proj_d, "attn": attn, "df": df, "spectrum": model.spectrum, "v_ref": v_ref,
            "gain": gain}


def radiograph_weights(orientations_rad: np.ndarray) -> np.ndarray:
    """Weights (N, 6) of ``s^T S s`` for ``s(w) = cos w x + sin w z`` (radiograph detector plane)."""
    w = np.asarray(orientations_rad, dtype=np.float64)
    c, s = np.cos(w), np.sin(w)
    z = np.zeros_like(w)
    return np.stack([c * c, z, s * s, z, 2 * c * s, z], axis=-1)


def acquire_radiograph(anatomy: Anatomy, config: AcquisitionConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Simulate single-view attenuation and directional dark-field radiographs (projection along y).

    Args:
        anatomy: the phantom.
        config: acquisition settings (``n_angles`` is ignored).
        rng: random generator.

    Returns:
        dict with ``proj_T``, ``proj_D`` (N, 1, X, Z) float32; ``attn`` (X, Z) = -ln T averaged over
        orientations; ``df`` (X, Z, N) = -ln D per orientation; ``spectrum``; ``v_ref``; ``gain`` (N, 1).
    """
    _check_fov(anatomy, config)
    spectrum = config.spectrum()
    vis = config.visibility_spectrum()
    e = spectrum.energies_kev
    names, mu_e = _materials_mu(anatomy, e)
    h, s6 = scattering_tensors(anatomy, e, n_basis=config.n_basis)
    v = anatomy.voxel_mm
    lines = [anatomy.materials[m].sum(axis=1, dtype=np.float64) * v for m in names]  # (X, Z) each
    comp = s6.sum(axis=3, dtype=np.float64) * v  # (K, 6, X, Z)
    wts = radiograph_weights(np.deg2rad(np.asarray(config.orientations_deg, dtype=np.float64)))  # (N, 6)
    p_k = np.einsum("kcxz,nc->knxz", comp, wts)[:, :, None]  # (K, N, 1, X, Z)
    att_terms = [(lines[i][None, None], mu_e[i]) for i in range(len(names))]
    df_terms = [(p_k[j], h[j]) for j in range(h.shape[0])]
    t_exp, d_exp = polychromatic_signals(spectrum, vis, att_terms, df_terms)  # (N, 1, X, Z)
    v_ref = float(np.sum(spectrum.weights * vis(e)) / np.sum(spectrum.weights))
    gain = _gain(config, (t_exp.shape[0], 1), rng)
    t_hat, d_hat = _measure(t_exp, d_exp, gain[:, :, None, None], config, v_ref, rng, anatomy.voxel_mm)
    attn = _neg_log(t_hat[:, 0]).mean(axis=0)
    df = np.moveaxis(_neg_log(d_hat[:, 0]), 0, -1)
    return {
        "proj_T": np.asarray(t_hat, np.float32), "proj_D": np.asarray(d_hat, np.float32),
        "attn": attn.astype(np.float32), "df": df.astype(np.float32),
        "spectrum": spectrum, "v_ref": v_ref, "gain": gain,
    }


def acquire(anatomy: Anatomy, config: AcquisitionConfig, rng: np.random.Generator, **kwargs: Any) -> dict[str, Any]:
    """:func:`acquire_ct` or :func:`acquire_radiograph`, by ``config.geometry``."""
    if config.geometry == "radiograph":
        return acquire_radiograph(anatomy, config, rng)
    return acquire_ct(anatomy, config, rng, **kwargs)
