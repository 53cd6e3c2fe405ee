"""Correlation-length dark-field model, visibility spectrum and energy scaling (docs/physics.md sections 2, 5)."""

from __future__ import annotations

import numpy as np
import pytest
from testkit import KINDS, as_kind

from dfseg.physics import (
    DEFAULT_SETUP_RATIO,
    VisibilitySpectrum,
    autocorrelation_length_um,
    effective_energy,
    energy_log_slope,
    linear_diffusion_coefficient,
    mu,
    scale_to_reference,
    sphere_correlation,
    tube_spectrum,
)


def test_sphere_correlation_limits():
    assert sphere_correlation(0.0) == pytest.approx(1.0)
    assert sphere_correlation([2.0, 2.5, 10.0]).tolist() == [0.0, 0.0, 0.0]
    # Continuous at x = 2 and decreasing on (0, 2).
    assert sphere_correlation(2 - 1e-6) < 1e-8
    g = sphere_correlation(np.linspace(0, 2, 201))
    assert np.all(np.diff(g) < 0)
    # Small-x limit 1 - G ~ (x^2 / 2) ln(4 / x).
    x = 1e-3
    assert 1 - sphere_correlation(x) == pytest.approx(x * x / 2 * np.log(4 / x), rel=1e-3)


def test_autocorrelation_length_default_near_one_micron_at_30kev():
    assert autocorrelation_length_um(30.0, DEFAULT_SETUP_RATIO) == pytest.approx(1.03, abs=0.05)


def test_log_slope_sphere_r25():
    """docs/physics.md check 5: slope over 20-60 keV in [-3.85, -3.6]; with xi >= 2R it is -2."""
    e = np.linspace(20, 60, 41)
    slope = energy_log_slope(e, 25.0)
    assert -3.85 <= slope <= -3.6, slope
    # xi(60 keV) = 2.07e-5 um * ratio >= 50 um = 2R needs ratio >= 2.42e6.
    assert autocorrelation_length_um(60.0, 3e6) >= 50.0
    assert energy_log_slope(e, 25.0, setup_ratio=3e6) == pytest.approx(-2.0, abs=0.01)


def test_lung_eps_plausible_and_scaling_in_parameters():
    e = np.array([30.0])
    eps = linear_diffusion_coefficient(e, 25.0, 0.7)[0]
    assert 0.1 < eps < 1.0  # healthy mouse lung, order 0.1-1 per mm at 30 keV (measured 0.17)
    # Linear in phi; larger alveoli scatter less at fixed phi (xi << R regime).
    assert linear_diffusion_coefficient(e, 25.0, 0.35)[0] == pytest.approx(eps / 2, rel=1e-12)
    assert linear_diffusion_coefficient(e, 40.0, 0.7)[0] < eps < linear_diffusion_coefficient(e, 20.0, 0.7)[0]
    # No density contrast, no dark-field.
    assert linear_diffusion_coefficient(e, 25.0, 0.7, matrix="air")[0] == 0.0


def test_visibility_spectrum():
    v = VisibilitySpectrum(0.3, 30.0, 8.0)
    assert v(30.0) == pytest.approx(0.3)
    assert v(200.0) == pytest.approx(0.03)  # floor_fraction 0.1
    assert np.all((v(np.linspace(1, 150, 100)) > 0) & (v(np.linspace(1, 150, 100)) <= 1))
    assert VisibilitySpectrum.flat(0.25)(np.array([10.0, 80.0])).tolist() == [0.25, 0.25]
    with pytest.raises(ValueError):
        VisibilitySpectrum(1.5, 30.0, 8.0)
    # describe() round-trips through JSON-style dictionaries, flat included.
    for vis in (v, VisibilitySpectrum.flat(0.25)):
        assert VisibilitySpectrum(**vis.describe()) == vis


def test_effective_energy():
    s = tube_spectrum(70)
    flat = VisibilitySpectrum.flat(0.3)
    assert effective_energy(s, flat) == pytest.approx(s.mean_energy_kev, rel=1e-12)
    # A visibility peak below the mean energy pulls E_eff down; a hardened beam pushes it up.
    v = VisibilitySpectrum(0.3, 30.0, 8.0)
    e_empty = effective_energy(s, v)
    assert e_empty < s.mean_energy_kev

    trans = np.exp(-mu("water", s.energies_kev) * np.array([[0.0], [20.0]]))
    e_eff = effective_energy(s, v, trans)
    assert e_eff.shape == (2,) and e_eff[0] == pytest.approx(e_empty) and e_eff[1] > e_empty + 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_scale_to_reference_round_trip(kind):
    df = as_kind(kind, np.array([0.1, 0.5, 2.0]))
    there = scale_to_reference(df, 33.0, 30.0, 3.7)
    back = scale_to_reference(there, 30.0, 33.0, 3.7)
    assert type(there) is type(df)
    np.testing.assert_allclose(np.asarray(back), np.asarray(df), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(there), np.asarray(df) * (33 / 30) ** 3.7, rtol=1e-14)
