"""Effective energies of a scan's spectrum (docs/physics.md section 5), shared by calibration and
:class:`dfseg.transforms.spectrum.SpectrumAwareNormalization` so both use one definition."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dfseg.errors import InputError
from dfseg.physics import VisibilitySpectrum, effective_energy, mu, tube_spectrum

__all__ = ["scan_effective_energy", "visibility_from_params"]


def visibility_from_params(params: Any) -> VisibilitySpectrum:
    """A :class:`dfseg.physics.VisibilitySpectrum` from a sidecar dictionary (or pass one through).

    ``width_kev = None`` (as ``describe()`` writes a flat curve) means a flat V0.
    """
    if isinstance(params, VisibilitySpectrum):
        return params
    if not isinstance(params, Mapping):
        raise InputError("visibility", f"expected visibility parameters as a mapping, got {type(params).__name__}")
    p = {k: params[k] for k in ("v_max", "design_energy_kev", "width_kev", "floor_fraction") if k in params}
    if p.get("width_kev") is None:
        p["width_kev"] = math.inf
    try:
        return VisibilitySpectrum(**p)
    except TypeError as err:
        raise InputError("visibility", f"bad visibility parameters {dict(params)}: {err}") from None


def scan_effective_energy(kvp: float, filtration_mm: Mapping[str, float] | None, visibility: Any,
                          water_mm: float = 0.0) -> float:
    """Visibility-weighted effective energy (keV) of a scan's spectrum behind ``water_mm`` of water."""
    spec = tube_spectrum(float(kvp), None if filtration_mm is None else dict(filtration_mm))
    vis = visibility_from_params(visibility)
    trans = None if not water_mm else np.exp(-mu("water", spec.energies_kev) * float(water_mm))
    return float(effective_energy(spec, vis, trans))
