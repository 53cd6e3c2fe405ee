"""Materials: linear attenuation coefficient mu(E) and refractive-index decrement delta(E).

Compositions are ICRU Report 44 mass fractions (tissues) or stoichiometric formulas; xraydb
computes the cross sections (total attenuation incl. coherent scattering) and delta from the
atomic scattering factors. Energies are in keV at this interface; xraydb takes eV.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import xraydb

from dfseg.errors import InputError

# ICRU 44 elemental mass fractions in percent. Converted to xraydb formulas below.
_ICRU44_SOFT_TISSUE = {
    "H": 10.2,
    "C": 14.3,
    "N": 3.4,
    "O": 70.8,
    "Na": 0.2,
    "P": 0.3,
    "S": 0.3,
    "Cl": 0.2,
    "K": 0.3,
}
_ICRU44_LUNG = {"H": 10.3, "C": 10.5, "N": 3.1, "O": 74.9, "Na": 0.2, "P": 0.2, "S": 0.3, "Cl": 0.3, "K": 0.2}
_ICRU44_BONE_CORTICAL = {
    "H": 3.4, "C": 15.5, "N": 4.2, "O": 43.5, "Na": 0.1, "Mg": 0.2, "P": 10.3, "S": 0.3, "Ca": 22.5,
}  # fmt: skip


def _formula_from_mass_fractions(fractions: dict[str, float]) -> str:
    """Turn mass fractions into an xraydb formula with fractional atom counts (per 100 g)."""
    return "".join(f"{el}{w / xraydb.atomic_mass(el):.6f}" for el, w in fractions.items())


@dataclass(frozen=True)
class Material:
    """A homogeneous material.

    Attributes:
        formula: chemical formula understood by xraydb (fractional counts allowed) or an xraydb
            material name such as ``"air"``.
        density_g_cm3: mass density in g/cm^3.
        note: where the composition comes from.
    """

    formula: str
    density_g_cm3: float
    note: str = ""


#: Materials known to dfseg by name. ``lung_tissue`` is the solid parenchyma (septal tissue), not
#: inflated lung: aeration is modelled geometrically (air fraction of a voxel), never by density.
MATERIALS: dict[str, Material] = {
    "air": Material("N0.7808O0.2095Ar0.0093C0.0004", 1.205e-3, "dry air at 20 C, 1 atm"),
    "water": Material("H2O", 1.0, "liquid water"),
    "soft_tissue": Material(_formula_from_mass_fractions(_ICRU44_SOFT_TISSUE), 1.06, "ICRU 44 soft tissue"),
    "lung_tissue": Material(
        _formula_from_mass_fractions(_ICRU44_LUNG), 1.05, "ICRU 44 lung, solid parenchyma"
    ),
    "bone": Material(_formula_from_mass_fractions(_ICRU44_BONE_CORTICAL), 1.92, "ICRU 44 cortical bone"),
    "pmma": Material("C5H8O2", 1.18, "PMMA (acrylic)"),
    "aluminium": Material("Al", 2.699, "aluminium"),
    "polystyrene": Material("C8H8", 1.05, "polystyrene (microsphere phantoms)"),
    "csi": Material("CsI", 4.51, "caesium iodide scintillator"),
}


def get_material(material: str | Material) -> Material:
    """Look a material up by name (or pass a :class:`Material` through)."""
    if isinstance(material, Material):
        return material
    try:
        return MATERIALS[material]
    except KeyError:
        raise InputError(
            "material", f"unknown material {material!r}; known: {', '.join(sorted(MATERIALS))}"
        ) from None


def _as_energies(energies_kev) -> np.ndarray:
    e = np.atleast_1d(np.asarray(energies_kev, dtype=np.float64))
    if e.ndim != 1 or not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise InputError("energies_kev", "expected a 1-D array of positive, finite energies in keV")
    return e


@functools.lru_cache(maxsize=256)
def _mu_cached(formula: str, density: float, energies: tuple[float, ...]) -> np.ndarray:
    out = (
        np.asarray(xraydb.material_mu(formula, np.asarray(energies) * 1e3, density), dtype=np.float64) / 10.0
    )
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=256)
def _delta_cached(formula: str, density: float, energies: tuple[float, ...]) -> np.ndarray:
    d, _, _ = xraydb.xray_delta_beta(formula, density, np.asarray(energies) * 1e3)
    out = np.atleast_1d(np.asarray(d, dtype=np.float64))
    out.setflags(write=False)
    return out


def mu(material: str | Material, energies_kev) -> np.ndarray:
    """Linear attenuation coefficient.

    Args:
        material: a name in :data:`MATERIALS` or a :class:`Material`.
        energies_kev: photon energies in keV, shape (E,) (a scalar gives shape (1,)).

    Returns:
        mu in 1/mm, shape (E,), float64 (read-only, cached).
    """
    m = get_material(material)
    return _mu_cached(m.formula, m.density_g_cm3, tuple(_as_energies(energies_kev).tolist()))


def delta(material: str | Material, energies_kev) -> np.ndarray:
    """Refractive-index decrement delta (n = 1 - delta + i beta), unitless.

    Args:
        material: a name in :data:`MATERIALS` or a :class:`Material`.
        energies_kev: photon energies in keV, shape (E,).

    Returns:
        delta, shape (E,), float64 (read-only, cached).
    """
    m = get_material(material)
    return _delta_cached(m.formula, m.density_g_cm3, tuple(_as_energies(energies_kev).tolist()))
