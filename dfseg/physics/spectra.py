"""X-ray spectra as the detector sees them: S'(E) = fluence(E) * absorption efficiency(E) * E.

The tube spectrum comes from SpekPy (tungsten anode). An energy-integrating scintillator
(default CsI, 0.2 mm) weights each photon by the energy it deposits, approximated by
``(1 - exp(-mu_det(E) t)) * E`` (escape and light-yield effects neglected).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dfseg.errors import InputError
from dfseg.physics.materials import mu

#: Default added filtration in mm (SpekPy material name -> thickness).
DEFAULT_FILTRATION_MM: dict[str, float] = {"Al": 1.0}

_DETECTOR_MATERIALS = {"CsI": "csi"}


# eq=False: arrays make field-wise == ambiguous; identity equality also makes instances hashable.
@dataclass(frozen=True, eq=False)
class Spectrum:
    """A detector-weighted spectrum.

    Attributes:
        energies_kev: bin centres in keV, shape (E,).
        weights: detector-weighted S'(E), shape (E,), non-negative, sum 1.
        kvp: tube voltage in kV (``None`` for a monochromatic beam).
        filtration_mm: added filtration, material -> mm.
        detector: short description of the detector weighting.
    """

    energies_kev: np.ndarray
    weights: np.ndarray
    kvp: float | None = None
    filtration_mm: dict[str, float] = field(default_factory=dict)
    detector: str = "energy-integrating"

    def __post_init__(self) -> None:
        e = np.asarray(self.energies_kev, dtype=np.float64)
        w = np.asarray(self.weights, dtype=np.float64)
        if e.ndim != 1 or e.shape != w.shape or e.size == 0:
            raise InputError("Spectrum", f"energies {e.shape} and weights {w.shape} must be equal 1-D shapes")
        if np.any(w < 0) or not np.isclose(w.sum(), 1.0, rtol=1e-9, atol=0):
            raise InputError("Spectrum", "weights must be non-negative and sum to 1")
        e.setflags(write=False)
        w.setflags(write=False)
        object.__setattr__(self, "energies_kev", e)
        object.__setattr__(self, "weights", w)

    @property
    def mean_energy_kev(self) -> float:
        """Detector-weighted mean energy sum S' E (keV)."""
        return float(np.sum(self.weights * self.energies_kev))

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for sidecars."""
        return {
            "kvp": self.kvp,
            "filtration_mm": dict(self.filtration_mm),
            "detector": self.detector,
            "n_bins": int(self.energies_kev.size),
            "e_min_kev": float(self.energies_kev.min()),
            "e_max_kev": float(self.energies_kev.max()),
            "mean_energy_kev": self.mean_energy_kev,
        }


@functools.lru_cache(maxsize=64)
def _spekpy_fluence(
    kvp: float, filtration: tuple[tuple[str, float], ...], anode_angle_deg: float, bin_kev: float
) -> tuple[np.ndarray, np.ndarray]:
    import spekpy  # imported lazily: constructing SpekPy models is slow and only needed here

    try:
        spek = spekpy.Spek(kvp=kvp, th=anode_angle_deg, dk=bin_kev)
        for material, mm in filtration:
            if mm > 0:
                spek.filter(material, mm)
        k, fluence = spek.get_spectrum()
    except Exception as exc:  # SpekPy raises bare Exceptions for bad names/values
        raise InputError(
            "tube_spectrum", f"SpekPy failed for kvp={kvp}, filtration={dict(filtration)}: {exc}"
        ) from exc
    return np.asarray(k, dtype=np.float64), np.asarray(fluence, dtype=np.float64)


@functools.lru_cache(maxsize=64)
def _tube_spectrum_cached(
    kvp: float,
    filtration: tuple[tuple[str, float], ...],
    anode_angle_deg: float,
    bin_kev: float,
    e_min_kev: float,
    detector_material: str,
    detector_thickness_mm: float,
) -> Spectrum:
    k, fluence = _spekpy_fluence(kvp, filtration, anode_angle_deg, bin_kev)
    keep = (k >= e_min_kev) & (fluence > 0)
    k, fluence = k[keep], fluence[keep]
    if k.size == 0:
        raise InputError("tube_spectrum", f"no photons above e_min_kev={e_min_kev} at kvp={kvp}")
    if detector_material in ("ideal", "none"):
        efficiency = np.ones_like(k)
    else:
        name = _DETECTOR_MATERIALS.get(detector_material, detector_material)
        efficiency = 1.0 - np.exp(-mu(name, k) * detector_thickness_mm)
    s = fluence * efficiency * k
    return Spectrum(
        energies_kev=k,
        weights=s / s.sum(),
        kvp=float(kvp),
        filtration_mm=dict(filtration),
        detector=f"energy-integrating {detector_material} {detector_thickness_mm} mm",
    )


def tube_spectrum(
    kvp: float,
    filtration_mm: dict[str, float] | None = None,
    *,
    anode_angle_deg: float = 12.0,
    bin_kev: float = 1.0,
    e_min_kev: float = 10.0,
    detector_material: str = "CsI",
    detector_thickness_mm: float = 0.2,
) -> Spectrum:
    """Detector-weighted tungsten tube spectrum (SpekPy), cached.

    Args:
        kvp: tube voltage in kV (SpekPy range, roughly 20-150).
        filtration_mm: added filtration, SpekPy material name -> thickness in mm
            (default ``{"Al": 1.0}``).
        anode_angle_deg: anode take-off angle in degrees.
        bin_kev: energy bin width in keV.
        e_min_kev: bins below this energy are dropped (they never reach the detector).
        detector_material: scintillator, a :data:`~dfseg.physics.materials.MATERIALS` name or
            ``"CsI"``; ``"ideal"`` for a perfect absorber.
        detector_thickness_mm: scintillator thickness in mm.

    Returns:
        A :class:`Spectrum` with weights S'(E) summing to 1 (shared, read-only: do not modify).
    """
    if not np.isfinite(kvp) or kvp <= e_min_kev:
        raise InputError("kvp", f"tube voltage {kvp} kV must be finite and above e_min_kev={e_min_kev}")
    filt = DEFAULT_FILTRATION_MM if filtration_mm is None else filtration_mm
    key = tuple(sorted((str(m), float(t)) for m, t in filt.items()))
    return _tube_spectrum_cached(
        float(kvp), key, float(anode_angle_deg), float(bin_kev), float(e_min_kev),
        str(detector_material), float(detector_thickness_mm),
    )  # fmt: skip


def monochromatic(energy_kev: float) -> Spectrum:
    """A single-energy beam (synchrotron-like), weight 1 at ``energy_kev``."""
    if not np.isfinite(energy_kev) or energy_kev <= 0:
        raise InputError("energy_kev", f"energy must be positive, got {energy_kev}")
    return Spectrum(np.array([float(energy_kev)]), np.array([1.0]), kvp=None, detector="monochromatic")
