"""Dark-field from micro-structure: correlation-length model, visibility spectrum, energy scaling.

Model (docs/physics.md section 2; Yashiro 2010, Lynch et al. 2011, Strobl 2014): spheres of radius R
at volume fraction phi, electron-density contrast drho to the surrounding matrix, give

    DF = -ln D = Sigma * t * (1 - G(xi / R)),   Sigma = 1.5 * phi * drho^2 * lambda^2 * R,
    drho = 2 * pi * (delta_matrix - delta_medium) / lambda^2,   xi = lambda * d / p2,

so the linear diffusion coefficient is eps(E) = Sigma(E) * (1 - G(xi(E) / R)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dfseg.errors import InputError
from dfseg.physics.materials import delta
from dfseg.physics.spectra import Spectrum

#: hc in keV * um: lambda[um] = HC_KEV_UM / E[keV].
HC_KEV_UM = 1.239841984e-3

#: Default set-up constant d / p2 (grating distance over analyser period), e.g. d = 100 mm,
#: p2 = 4 um. It gives an autocorrelation length xi = 1.03 um at 30 keV.
DEFAULT_SETUP_RATIO = 2.5e4


def wavelength_um(energies_kev) -> np.ndarray:
    """Photon wavelength in um for energies in keV."""
    return HC_KEV_UM / np.asarray(energies_kev, dtype=np.float64)


def sphere_correlation(x) -> np.ndarray:
    """Normalised real-space correlation G(x) of a sphere, x = xi / R.

    G(0) = 1, G(x) = 0 for x >= 2; for small x, 1 - G ~ (x^2 / 2) ln(4 / x).

    Args:
        x: xi / R, any shape, >= 0.

    Returns:
        G(x), same shape, float64.
    """
    x = np.asarray(x, dtype=np.float64)
    if np.any(x < 0):
        raise InputError("sphere_correlation", "x = xi / R must be >= 0")
    g = np.zeros_like(x)
    inside = x < 2
    xi = x[inside]
    root = np.sqrt(np.maximum(4.0 - xi * xi, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        # x^2 ln x -> 0 as x -> 0; the where() keeps G(0) = 1 without a NaN.
        log_term = np.where(xi > 0, (xi * xi / 2) * (1 - xi * xi / 16) * np.log(xi / (2 + root)), 0.0)
    g[inside] = np.sqrt(1 - xi * xi / 4) * (1 + xi * xi / 8) + log_term
    return g


def autocorrelation_length_um(energies_kev, setup_ratio: float = DEFAULT_SETUP_RATIO) -> np.ndarray:
    """Autocorrelation length xi = lambda * d / p2 in um, shape of ``energies_kev``."""
    return wavelength_um(energies_kev) * float(setup_ratio)


def linear_diffusion_coefficient(
    energies_kev,
    radius_um: float,
    volume_fraction: float,
    *,
    matrix: str = "soft_tissue",
    medium: str = "air",
    setup_ratio: float = DEFAULT_SETUP_RATIO,
) -> np.ndarray:
    """Linear diffusion coefficient eps(E) of spheres of ``medium`` in ``matrix`` (or vice versa).

    Lung: air spheres (alveoli, R = 20-40 um) at air fraction 0.6-0.8 in soft tissue.

    Args:
        energies_kev: photon energies in keV, shape (E,).
        radius_um: sphere radius R in um.
        volume_fraction: phi, volume fraction of the spheres (0..1).
        matrix: material around the spheres (a ``MATERIALS`` name).
        medium: material of the spheres.
        setup_ratio: interferometer constant d / p2 (unitless).

    Returns:
        eps in 1/mm, shape (E,).
    """
    if radius_um <= 0 or not 0 <= volume_fraction <= 1:
        raise InputError(
            "linear_diffusion_coefficient",
            f"need radius_um > 0 and 0 <= volume_fraction <= 1, got {radius_um}, {volume_fraction}",
        )
    e = np.atleast_1d(np.asarray(energies_kev, dtype=np.float64))
    lam = wavelength_um(e)
    drho = 2 * np.pi * (delta(matrix, e) - delta(medium, e)) / lam**2  # 1/um^2
    sigma = 1.5 * volume_fraction * drho**2 * lam**2 * radius_um  # 1/um
    xi = autocorrelation_length_um(e, setup_ratio)
    return sigma * (1.0 - sphere_correlation(xi / radius_um)) * 1e3  # 1/um -> 1/mm


def energy_log_slope(
    energies_kev,
    radius_um: float,
    *,
    matrix: str = "soft_tissue",
    medium: str = "air",
    setup_ratio: float = DEFAULT_SETUP_RATIO,
) -> float:
    """Least-squares slope of ln eps against ln E over ``energies_kev`` (the exponent -n).

    Volume fraction cancels in the slope. Typical lung values: -3.6 to -3.8 (xi << R); -2 once
    xi >= 2R.
    """
    e = np.asarray(energies_kev, dtype=np.float64)
    eps = linear_diffusion_coefficient(
        e, radius_um, 0.5, matrix=matrix, medium=medium, setup_ratio=setup_ratio
    )
    slope, _ = np.polyfit(np.log(e), np.log(eps), 1)
    return float(slope)


@dataclass(frozen=True)
class VisibilitySpectrum:
    """Reference visibility V0(E) of a Talbot-Lau interferometer (a model, not a measurement).

    A Gaussian peak at the design energy on a floor:
    ``V0(E) = v_max * (f + (1 - f) * exp(-(E - E_d)^2 / (2 w^2)))``. Real curves are asymmetric
    (Talbot orders, grating heights); this keeps the property that matters for visibility
    hardening, V0 varying with E, with three readable numbers.

    Attributes:
        v_max: peak visibility (0, 1].
        design_energy_kev: energy of the peak, keV.
        width_kev: Gaussian standard deviation in keV; ``inf`` (or ``None``) gives a flat V0.
        floor_fraction: f, visibility far from the design energy as a fraction of v_max.
    """

    v_max: float
    design_energy_kev: float
    width_kev: float
    floor_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.width_kev is None:  # describe() writes a flat spectrum's width as None (JSON has no inf)
            object.__setattr__(self, "width_kev", math.inf)
        if not 0 < self.v_max <= 1 or self.width_kev <= 0 or not 0 <= self.floor_fraction <= 1:
            raise InputError(
                "VisibilitySpectrum",
                f"need 0 < v_max <= 1, width_kev > 0, 0 <= floor_fraction <= 1; got {self}",
            )

    @classmethod
    def flat(cls, v: float) -> VisibilitySpectrum:
        """Energy-independent visibility ``v``."""
        return cls(v_max=v, design_energy_kev=30.0, width_kev=math.inf, floor_fraction=1.0)

    def __call__(self, energies_kev) -> np.ndarray:
        """V0(E), same shape as ``energies_kev`` (keV), float64."""
        e = np.asarray(energies_kev, dtype=np.float64)
        if math.isinf(self.width_kev):
            return np.full_like(e, self.v_max)
        peak = np.exp(-0.5 * ((e - self.design_energy_kev) / self.width_kev) ** 2)
        return self.v_max * (self.floor_fraction + (1 - self.floor_fraction) * peak)

    def describe(self) -> dict[str, float]:
        """JSON-ready description for sidecars (``width_kev`` is ``None`` when flat)."""
        return {
            "v_max": self.v_max,
            "design_energy_kev": self.design_energy_kev,
            "width_kev": None if math.isinf(self.width_kev) else self.width_kev,
            "floor_fraction": self.floor_fraction,
        }


def effective_energy(spectrum: Spectrum, visibility: VisibilitySpectrum, transmission=None):
    """Visibility-weighted effective energy E_eff = sum w T E / sum w T, w = S' V0.

    Args:
        spectrum: detector-weighted spectrum, E bins.
        visibility: reference visibility spectrum.
        transmission: T(E), shape (..., E), or ``None`` for an empty beam.

    Returns:
        E_eff in keV: a float without ``transmission`` or with a 1-D one, else shape (...).
    """
    e = spectrum.energies_kev
    w = spectrum.weights * visibility(e)
    if transmission is None:
        return float(np.sum(w * e) / np.sum(w))
    t = np.asarray(transmission, dtype=np.float64)
    if t.shape[-1] != e.size:
        raise InputError("transmission", f"last axis must have {e.size} energies, got shape {t.shape}")
    out = (t @ (w * e)) / (t @ w)
    return float(out) if t.ndim == 1 else out


def scale_to_reference(df, e_eff_kev, e_ref_kev: float, exponent: float):
    """Convert dark-field measured at E_eff to a reference energy: DF * (E_eff / E_ref)^n.

    Works on numpy arrays and torch tensors (the type and device of ``df`` are kept).

    Args:
        df: dark-field line integral or eps, any shape.
        e_eff_kev: effective energy (scalar or broadcastable to ``df``), keV.
        e_ref_kev: reference energy, keV.
        exponent: n, the magnitude of the energy log-slope (2..4).
    """
    factor = (np.asarray(e_eff_kev, dtype=np.float64) / float(e_ref_kev)) ** float(exponent)
    if type(df).__module__.startswith("torch"):
        import torch  # only for tensor input: dfseg.physics itself needs numpy only

        return df * torch.as_tensor(factor, dtype=df.dtype, device=df.device)
    df = np.asarray(df)
    return (df * factor).astype(np.result_type(df.dtype, np.float32), copy=False)
