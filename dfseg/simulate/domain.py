"""Domain randomisation: what differs between scanners and animals, drawn per subject from stated ranges.

A model trained on one simulated scanner and one reference mouse meets, on independently made
scans, other tube spectra, doses, grating visibilities, detector blur, rings, voxel sizes, fields
of view, animals and lungs. :class:`DomainRandomisation` states a physical range for each of
these (docs/domain_randomisation.md says which scanner or animal difference each one models);
:func:`sample_domain` draws one subject's concrete parameters (a JSON-ready dict, written to the
subject's sidecar as its ``domain`` block so a study can group by them), and the ``*_for``
functions turn that dict into the settings the simulator's stages take. TorchIO's rule: the
random part only samples, deterministic code applies. The ranges are physical statements, never
tuned so that a model wins.

A subject's parameters come from their own stream, ``default_rng(SeedSequence([seed, index,
DOMAIN_STREAM]))`` (:func:`domain_rng`), so they do not change the anatomy's or the noise's
random numbers and do not depend on the workers.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from dfseg.errors import InputError
from dfseg.simulate.acquisition import KVP_RANGE, AcquisitionConfig
from dfseg.simulate.anatomy import (
    MOUSE_WIDTH_MM,
    AnatomyJitter,
    BronchovascularTree,
    MicroStructure,
    anatomy_grid,
)

#: Third entry of a subject's domain seed sequence (:func:`domain_rng`).
DOMAIN_STREAM = 1
#: Fields of :class:`DomainRandomisation` that are integer ranges (both ends included).
INTEGER_RANGES = ("orientations", "flat_exposures", "tree_generations")
#: Fields drawn log-uniformly (scale parameters: a factor of 2 up is as likely as down).
LOG_UNIFORM = ("dose_scale", "alveolar_radius_um")
#: Fields that are probabilities rather than ranges.
PROBABILITIES = ("cu_probability", "lung_crop_probability", "tree_probability")


@dataclass(frozen=True)
class DomainRandomisation:
    """Ranges ``(low, high)`` of what varies between scanners and animals (low == high fixes a value).

    Attributes:
        kvp: tube voltage, kV (preclinical dark-field CT: 40-80; mission range 60-80).
        al_mm: added aluminium filtration, mm.
        cu_mm: added copper filtration, mm, when the tube has copper (``cu_probability``).
        cu_probability: share of subjects scanned with a copper filter.
        dose_scale: factor on the protocol's fluence (photons per mm^2), log-uniform.
        reference_visibility: open-beam (spectrum-weighted) visibility of the interferometer.
        design_energy_kev: design energy of the gratings (peak of the visibility spectrum), keV.
        orientations: number of grating orientations, equally spaced over 180 deg from a random offset.
        psf_sigma_px: detector PSF Gaussian standard deviation, detector pixels.
        ring_gain_sd: log detector-gain non-uniformity the flat field does not remove.
        flat_exposures: exposures averaged into each orientation's shared flat field.
        voxel_mm: isotropic voxel (detector pixel) size, mm.
        lung_crop_probability: share of scans whose reconstruction is cropped to the lungs.
        crop_margin_mm: margin around the lungs' bounding box of a cropped field of view, mm.
        body_width_scale: body width / the reference mouse's 25 mm.
        body_depth_scale: dorso-ventral depth relative to the reference width-to-depth ratio.
        lung_scale: factor on the lungs' semi-axes.
        lung_shift_mm: shift of the lungs' centre per axis, mm.
        heart_scale: factor on the heart's semi-axes.
        heart_shift_mm: shift of the heart's centre per axis, mm.
        tree_probability: share of subjects with an airway and vessel tree.
        tree_generations: generations of the tree (the trunk is 1).
        trunk_radius_mm: airway lumen radius of each lung's trunk (main bronchus), mm.
        alveolar_radius_um: mean alveolar radius, um, log-uniform.
        air_fraction: mean air volume fraction of aerated lung.
        anisotropy: mean anisotropy of the lung's scattering tensor.
        correlation_mm: correlation length of the micro-structure's smooth random fields, mm.
    """

    kvp: tuple[float, float] = (60.0, 80.0)
    al_mm: tuple[float, float] = (0.5, 2.0)
    cu_mm: tuple[float, float] = (0.0, 0.1)
    cu_probability: float = 0.5
    dose_scale: tuple[float, float] = (0.25, 4.0)
    reference_visibility: tuple[float, float] = (0.15, 0.35)
    design_energy_kev: tuple[float, float] = (25.0, 35.0)
    orientations: tuple[int, int] = (3, 8)
    psf_sigma_px: tuple[float, float] = (0.0, 1.0)
    ring_gain_sd: tuple[float, float] = (0.0, 0.01)
    flat_exposures: tuple[int, int] = (10, 50)
    voxel_mm: tuple[float, float] = (0.10, 0.20)
    lung_crop_probability: float = 0.5
    crop_margin_mm: tuple[float, float] = (0.5, 2.0)
    body_width_scale: tuple[float, float] = (0.85, 1.15)
    body_depth_scale: tuple[float, float] = (0.92, 1.08)
    lung_scale: tuple[float, float] = (0.9, 1.1)
    lung_shift_mm: tuple[float, float] = (-0.5, 0.5)
    heart_scale: tuple[float, float] = (0.85, 1.15)
    heart_shift_mm: tuple[float, float] = (-0.5, 0.5)
    tree_probability: float = 1.0
    tree_generations: tuple[int, int] = (5, 8)
    trunk_radius_mm: tuple[float, float] = (0.30, 0.45)
    alveolar_radius_um: tuple[float, float] = (20.0, 60.0)
    air_fraction: tuple[float, float] = (0.60, 0.85)
    anisotropy: tuple[float, float] = (0.10, 0.40)
    correlation_mm: tuple[float, float] = (1.0, 2.5)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in PROBABILITIES:
                if not (isinstance(value, int | float) and 0 <= value <= 1):
                    raise InputError(f.name, f"a probability must be in [0, 1], got {value!r}")
                continue
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                raise InputError(f.name, f"expected a range [low, high], got {value!r}") from None
            if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                raise InputError(f.name, f"need finite low <= high, got {value!r}")
            if f.name in INTEGER_RANGES and (lo != int(lo) or hi != int(hi)):
                raise InputError(f.name, f"expected whole numbers, got {value!r}")
            object.__setattr__(self, f.name, (int(lo), int(hi)) if f.name in INTEGER_RANGES else (lo, hi))
        lower_bounds = {"kvp": KVP_RANGE[0], "al_mm": 0.0, "cu_mm": 0.0, "reference_visibility": 1e-3,
                        "design_energy_kev": 1.0, "orientations": 3, "psf_sigma_px": 0.0, "ring_gain_sd": 0.0,
                        "flat_exposures": 1, "voxel_mm": 1e-3, "crop_margin_mm": 0.0, "tree_generations": 1,
                        "dose_scale": 1e-6, "body_width_scale": 1e-3, "body_depth_scale": 1e-3, "lung_scale": 1e-3,
                        "heart_scale": 1e-3, "trunk_radius_mm": 1e-3, "alveolar_radius_um": 1e-3,
                        "air_fraction": 0.0, "anisotropy": 0.0, "correlation_mm": 1e-3}
        upper_bounds = {"kvp": KVP_RANGE[1], "reference_visibility": 1.0, "air_fraction": 1.0, "anisotropy": 0.9}
        for name, lo in lower_bounds.items():
            if getattr(self, name)[0] < lo:
                raise InputError(name, f"must be >= {lo:g}, got {list(getattr(self, name))}")
        for name, hi in upper_bounds.items():
            if getattr(self, name)[1] > hi:
                raise InputError(name, f"must be <= {hi:g}, got {list(getattr(self, name))}")

    def describe(self) -> dict[str, Any]:
        """JSON-ready ranges (lists) and probabilities."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def check_randomise_fraction(value: float, where: str = "randomise_fraction") -> float:
    """The share of a cohort's subjects that are randomised, refused outside [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise InputError(where, f"must be in [0, 1], got {value}")
    return float(value)


def load_ranges(path: str | os.PathLike) -> DomainRandomisation:
    """:class:`DomainRandomisation` from a YAML (or JSON) mapping; keys not given keep their defaults.

    Example file::

        kvp: [50, 90]
        cu_probability: 0
        voxel_mm: [0.15, 0.15]   # fixed

    Raises:
        InputError: an unreadable file, not a mapping, an unknown key or a bad range.
    """
    import yaml  # reason: only this optional file needs YAML

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise InputError(path, "randomisation ranges file not found") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(path, f"expected a mapping of range names to [low, high], got {type(data).__name__}")
    known = {f.name for f in fields(DomainRandomisation)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(path, f"unknown range {unknown[0]!r}; known: {', '.join(sorted(known))}")
    try:
        return DomainRandomisation(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})
    except InputError as exc:
        raise InputError(f"{os.fspath(path)}: {exc.where}", exc.problem) from None


def domain_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of subject ``index``'s domain parameters (module docstring)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), DOMAIN_STREAM]))


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(lo + (hi - lo) * rng.random())


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * rng.random()))


def _integer(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    """A whole number uniform in ``[lo, hi]`` from exactly one ``rng.random()``.

    ``rng.integers`` takes as many draws as its rejection sampling needs, none for ``lo == hi``,
    which would shift every later field of :func:`sample_domain` when a range is fixed.
    """
    lo, hi = lo_hi
    return int(min(hi, lo + np.floor((hi - lo + 1) * rng.random())))


def sample_domain(rng: np.random.Generator, ranges: DomainRandomisation | None = None) -> dict[str, Any]:
    """Draw one subject's scanner and animal parameters (JSON-ready; the sidecar's ``domain`` block).

    Every parameter is drawn, always in the same order, so a range changed in one place leaves
    the others' draws as they were. Uniform in each range, except :data:`LOG_UNIFORM` fields.

    Args:
        rng: random generator (:func:`domain_rng` in a cohort).
        ranges: the ranges (default :class:`DomainRandomisation`).

    Returns:
        dict: ``kvp``, ``filtration_mm`` (``{"Al": mm}``, plus ``"Cu"`` when drawn),
        ``dose_scale``, ``reference_visibility``, ``design_energy_kev``, ``orientations_deg``,
        ``psf_sigma_px``, ``ring_gain_sd``, ``flat_exposures``, ``voxel_mm``, ``fov``
        (``"thorax"`` or ``"lung"``), ``crop_margin_mm``, ``anatomy`` (the
        :class:`~dfseg.simulate.anatomy.AnatomyJitter` fields), ``tree`` (None or
        ``generations``, ``trunk_radius_mm``), ``micro_structure`` (``radius_um``,
        ``air_fraction``, ``anisotropy``, ``correlation_mm``).
    """
    r = ranges or DomainRandomisation()
    kvp = _uniform(rng, r.kvp)
    al = _uniform(rng, r.al_mm)
    has_cu = bool(rng.random() < r.cu_probability)
    cu = _uniform(rng, r.cu_mm)
    filtration = {"Al": round(al, 4), **({"Cu": round(cu, 4)} if has_cu and cu > 0 else {})}
    dose = _log_uniform(rng, r.dose_scale)
    visibility = _uniform(rng, r.reference_visibility)
    design = _uniform(rng, r.design_energy_kev)
    n_or = _integer(rng, r.orientations)
    offset = float(rng.random()) * 180.0 / n_or
    orientations = [round(offset + 180.0 * k / n_or, 3) for k in range(n_or)]
    psf = _uniform(rng, r.psf_sigma_px)
    gain_sd = _uniform(rng, r.ring_gain_sd)
    flat = _integer(rng, r.flat_exposures)
    voxel = _uniform(rng, r.voxel_mm)
    crop = bool(rng.random() < r.lung_crop_probability)
    margin = _uniform(rng, r.crop_margin_mm)
    anatomy = {
        "body_width_scale": _uniform(rng, r.body_width_scale),
        "body_depth_scale": _uniform(rng, r.body_depth_scale),
        "lung_scale": _uniform(rng, r.lung_scale),
        "lung_shift_mm": [_uniform(rng, r.lung_shift_mm) for _ in range(3)],
        "heart_scale": _uniform(rng, r.heart_scale),
        "heart_shift_mm": [_uniform(rng, r.heart_shift_mm) for _ in range(3)],
    }
    has_tree = bool(rng.random() < r.tree_probability)
    tree = {"generations": _integer(rng, r.tree_generations), "trunk_radius_mm": _uniform(rng, r.trunk_radius_mm)}
    micro = {"radius_um": _log_uniform(rng, r.alveolar_radius_um), "air_fraction": _uniform(rng, r.air_fraction),
             "anisotropy": _uniform(rng, r.anisotropy), "correlation_mm": _uniform(rng, r.correlation_mm)}
    return {
        "kvp": round(kvp, 3), "filtration_mm": filtration, "dose_scale": dose, "reference_visibility": visibility,
        "design_energy_kev": design, "orientations_deg": orientations, "psf_sigma_px": psf,
        "ring_gain_sd": gain_sd, "flat_exposures": flat, "voxel_mm": round(voxel, 4),
        "fov": "lung" if crop else "thorax", "crop_margin_mm": margin, "anatomy": anatomy,
        "tree": tree if has_tree else None, "micro_structure": micro,
    }


def acquisition_for(base: AcquisitionConfig, domain: dict[str, Any]) -> AcquisitionConfig:
    """``base`` with the domain's tube, dose, visibility and grating orientations.

    The dose scales ``fluence_per_mm2`` (and ``photons_per_pixel`` when the base fixes counts per
    pixel). The visibility spectrum keeps the base's shape (width, floor) at the drawn design
    energy, its peak ``v_max`` set so that the spectrum-weighted open-beam visibility
    (:meth:`AcquisitionConfig.reference_visibility`) is the drawn ``reference_visibility``; a
    target that would need ``v_max > 1`` is refused.

    Raises:
        InputError: a visibility the spectrum cannot reach, or a tube dfseg cannot simulate.
    """
    scale = float(domain["dose_scale"])
    config = replace(base, kvp=float(domain["kvp"]), filtration_mm=dict(domain["filtration_mm"]),
                     fluence_per_mm2=base.fluence_per_mm2 * scale,
                     photons_per_pixel=None if base.photons_per_pixel is None else base.photons_per_pixel * scale,
                     orientations_deg=tuple(float(w) for w in domain["orientations_deg"]),
                     visibility={**base.visibility, "v_max": 1.0, "design_energy_kev": float(domain["design_energy_kev"])})
    per_unit = config.reference_visibility()  # linear in v_max
    v_max = float(domain["reference_visibility"]) / per_unit
    if not 0 < v_max <= 1:
        raise InputError("reference_visibility", f"{domain['reference_visibility']:g} needs a peak visibility of "
                                                 f"{v_max:.3g} (> 1) at this spectrum; lower the range")
    return replace(config, visibility={**config.visibility, "v_max": v_max})


def grid_for(size: int | tuple[int, int, int] | None, voxel_mm: float, n_angles: int, domain: dict[str, Any], *,
             air_columns: int = 4) -> tuple[int | tuple[int, int, int], float, int]:
    """The subject's grid, voxel size and angle count at the domain's voxel size and body width.

    A small cube (int ``size``, body scaled to fit) keeps its grid and angles, only the voxel
    changes. A true-size grid (a tuple, or None) is re-sized around the same anatomy: X holds the
    drawn body width (:func:`~dfseg.simulate.anatomy.anatomy_grid`), Z keeps the physical length
    (None: the whole thorax), and the angles keep their ratio to the body's width in pixels (the
    protocol's angular sampling).
    """
    voxel = float(domain["voxel_mm"])
    if isinstance(size, int | np.integer):
        return size, voxel, n_angles
    width_scale = float(domain["anatomy"]["body_width_scale"])
    length = None if size is None else size[2] * voxel_mm
    grid = anatomy_grid(voxel, air_columns=air_columns, length_mm=length, width_mm=MOUSE_WIDTH_MM * width_scale)
    angles = max(1, int(round(n_angles * voxel_mm / voxel * width_scale)))
    return grid, voxel, angles


def anatomy_for(domain: dict[str, Any], micro: MicroStructure) -> dict[str, Any]:
    """Keyword arguments of :func:`~dfseg.simulate.anatomy.build_anatomy` for the domain's animal.

    ``micro`` (the variant's) keeps its spatial spreads; the domain replaces its means. With a
    tree, the variant's straight vessels are dropped (``n_vessels=0``): the tree replaces them.
    """
    a = domain["anatomy"]
    jitter = AnatomyJitter(
        body_width_scale=float(a["body_width_scale"]), body_depth_scale=float(a["body_depth_scale"]),
        lung_scale=float(a["lung_scale"]), lung_shift_mm=tuple(float(v) for v in a["lung_shift_mm"]),
        heart_scale=float(a["heart_scale"]), heart_shift_mm=tuple(float(v) for v in a["heart_shift_mm"]))
    m = domain["micro_structure"]
    micro = replace(micro, radius_um=float(m["radius_um"]), air_fraction=float(m["air_fraction"]),
                    anisotropy=float(m["anisotropy"]), correlation_mm=float(m["correlation_mm"]))
    t = domain.get("tree")
    tree = None if t is None else BronchovascularTree(generations=int(t["generations"]),
                                                      trunk_radius_mm=float(t["trunk_radius_mm"]))
    return {"micro": micro, "jitter": jitter, "tree": tree, **({"n_vessels": 0} if tree is not None else {})}
