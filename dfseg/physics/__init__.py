"""dfseg.physics: spectra, materials, dark-field model and the polychromatic forward model (numpy, pure)."""

from __future__ import annotations

from dfseg.physics.darkfield import (
    DEFAULT_SETUP_RATIO,
    VisibilitySpectrum,
    autocorrelation_length_um,
    effective_energy,
    energy_log_slope,
    linear_diffusion_coefficient,
    scale_to_reference,
    sphere_correlation,
    wavelength_um,
)
from dfseg.physics.forward import (
    DEFAULT_PHOTONS_PER_PIXEL,
    fourier_components,
    phase_stepping_measurement,
    polychromatic_signals,
    polychromatic_signals_oriented,
    retrieve,
    visibility_log_variance,
)
from dfseg.physics.materials import MATERIALS, Material, delta, get_material, mu
from dfseg.physics.spectra import DEFAULT_FILTRATION_MM, Spectrum, monochromatic, tube_spectrum

__all__ = [
    "DEFAULT_FILTRATION_MM",
    "DEFAULT_PHOTONS_PER_PIXEL",
    "DEFAULT_SETUP_RATIO",
    "MATERIALS",
    "Material",
    "Spectrum",
    "VisibilitySpectrum",
    "autocorrelation_length_um",
    "delta",
    "effective_energy",
    "energy_log_slope",
    "fourier_components",
    "get_material",
    "linear_diffusion_coefficient",
    "monochromatic",
    "mu",
    "phase_stepping_measurement",
    "polychromatic_signals",
    "polychromatic_signals_oriented",
    "retrieve",
    "scale_to_reference",
    "sphere_correlation",
    "tube_spectrum",
    "visibility_log_variance",
    "wavelength_um",
]

from dfseg.physics.stepping import (  # noqa: E402  (appended: raw phase-stepping frames -> T, D, dphi)
    estimate_steps,
    estimate_steps_from_reference,
    fit_curves,
    interpolate_flats,
    retrieve_projections,
    retrieve_signals,
    signal_ratios,
    step_phases,
    subtract_dark,
    wrap_phase,
)

__all__ += [
    "estimate_steps",
    "estimate_steps_from_reference",
    "fit_curves",
    "interpolate_flats",
    "retrieve_projections",
    "retrieve_signals",
    "signal_ratios",
    "step_phases",
    "subtract_dark",
    "wrap_phase",
]
