"""Spectra (SpekPy + detector weighting) and material coefficients (xraydb) against known values."""

from __future__ import annotations

import numpy as np
import pytest

from dfseg.errors import InputError
from dfseg.physics import MATERIALS, delta, monochromatic, mu, tube_spectrum


def test_tube_spectrum_is_normalised_bounded_and_cached():
    s = tube_spectrum(70)
    assert s.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(s.weights >= 0)
    assert s.energies_kev.min() >= 10.0 and s.energies_kev.max() < 70.0
    # 70 kVp, 1 mm Al, CsI energy-integrating: detector-weighted mean energy near 38-39 keV.
    assert 35.0 < s.mean_energy_kev < 42.0
    assert tube_spectrum(70, {"Al": 1.0}) is s  # cached, same object
    assert s.describe()["kvp"] == 70.0
    with pytest.raises(ValueError):
        s.weights[0] = 1.0  # shared cached arrays are read-only


def test_filtration_and_voltage_harden_the_spectrum():
    base = tube_spectrum(70).mean_energy_kev
    assert tube_spectrum(70, {"Al": 4.0}).mean_energy_kev > base + 1.0
    assert tube_spectrum(40).mean_energy_kev < base - 5.0


def test_monochromatic_and_bad_input():
    m = monochromatic(30.0)
    assert m.energies_kev.tolist() == [30.0] and m.weights.tolist() == [1.0]
    with pytest.raises(InputError):
        monochromatic(-1.0)
    with pytest.raises(InputError):
        tube_spectrum(5.0)


def test_mu_matches_nist_values():
    # NIST XCOM total with coherent: water 30 keV 0.3756 cm2/g, 60 keV 0.2059 cm2/g; Al 30 keV 1.128 cm2/g.
    assert mu("water", [30.0])[0] == pytest.approx(0.03756, rel=0.02)
    assert mu("water", [60.0])[0] == pytest.approx(0.02059, rel=0.02)
    assert mu("aluminium", [30.0])[0] == pytest.approx(1.128 * 2.699 / 10, rel=0.03)
    # Ordering at 30 keV: air << lung/soft tissue ~ water < bone.
    e = [30.0]
    assert mu("air", e)[0] < 1e-4 < mu("water", e)[0] < mu("soft_tissue", e)[0] < mu("bone", e)[0]


def test_delta_water_and_scaling():
    d = delta("water", [20.0, 40.0])
    # delta of water at 30 keV is 2.56e-7; away from edges delta ~ E^-2.
    assert delta("water", [30.0])[0] == pytest.approx(2.56e-7, rel=0.02)
    assert d[0] / d[1] == pytest.approx(4.0, rel=0.01)


def test_all_materials_evaluate_and_unknown_raises():
    for name in MATERIALS:
        assert np.all(mu(name, [20.0, 50.0]) > 0)
    with pytest.raises(InputError, match="unknown material"):
        mu("unobtainium", [30.0])
