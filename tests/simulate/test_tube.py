"""Tube voltage and filtration of a simulation: validation, reference-phantom voltages, the physics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dfseg.errors import InputError
from dfseg.physics import mu, tube_spectrum
from dfseg.simulate.acquisition import (
    FILTER_MATERIALS,
    KVP_RANGE,
    AcquisitionConfig,
    check_tube,
    parse_filtration,
)
from dfseg.simulate.anatomy import build_anatomy
from dfseg.simulate.cohort import simulate_subject, subject_rng
from dfseg.simulate.phantoms import PHANTOM_IDS, phantom_ids, reference_kvps, write_phantom_scans
from dfseg.simulate.variants import get_variant

FILTER = {"Al": 0.5, "Cu": 0.1}


def test_parse_filtration():
    assert parse_filtration("Al=0.5,Cu=0.1") == FILTER
    assert parse_filtration(" Al = 1 ") == {"Al": 1.0}
    assert parse_filtration("none") == {}
    assert parse_filtration("Al=0") == {"Al": 0.0}


@pytest.mark.parametrize(("text", "problem"), [
    ("Al=-0.5", "Al thickness must be a finite number of mm >= 0, got -0.5"),
    ("Al=nan", "Al thickness must be a finite number of mm >= 0"),
    ("Alu=1", "unknown filter material 'Alu'; known: Al, Be, Cu"),
    ("al=1", "unknown filter material 'al'"),
    ("Al0.5", "expected MATERIAL=MM"),
    ("Al=x", "Al thickness must be a number of mm, got 'x'"),
    ("Al=1,Al=2", "Al given twice"),
])
def test_parse_filtration_refusals_are_one_line(text, problem):
    with pytest.raises(InputError) as err:
        parse_filtration(text)
    assert str(err.value).startswith("--filtration: ") and problem in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kvp", [KVP_RANGE[0] - 0.5, KVP_RANGE[1] + 1, float("nan")])
def test_kvp_outside_spekpy_range_is_refused(kvp):
    with pytest.raises(InputError, match=r"^--kvp: tube voltage must be 20-500 kV"):
        check_tube(kvp, {}, kvp_where="--kvp")
    with pytest.raises(InputError, match=r"^kvp: "):
        AcquisitionConfig(kvp=kvp)
    with pytest.raises(InputError, match=r"^filtration_mm: unknown filter material 'Cu2'"):
        AcquisitionConfig(filtration_mm={"Cu2": 1.0})


def test_every_filter_material_is_known_to_spekpy():
    # one SpekPy call with all of them: an unknown name fails the whole spectrum
    bare = tube_spectrum(80.0, {})
    filtered = tube_spectrum(80.0, {m: 0.01 for m in FILTER_MATERIALS})
    assert filtered.mean_energy_kev > bare.mean_energy_kev + 1.0  # filters harden the beam


def test_reference_kvps_bracket_the_acquisition():
    assert reference_kvps(70.0) == (60.0, 80.0)  # the default protocol: the historical pair
    assert PHANTOM_IDS == ("water_wedge", "aluminium_wedge", "microspheres_60kvp", "microspheres_80kvp")
    assert reference_kvps(80.0) == (70.0, 90.0)
    assert reference_kvps(KVP_RANGE[0]) == (20.0, 40.0)
    assert reference_kvps(KVP_RANGE[1]) == (480.0, 500.0)
    assert reference_kvps(72.5) == (62.5, 82.5)
    assert phantom_ids(72.5)[2:] == ("microspheres_62.5kvp", "microspheres_82.5kvp")
    for kvp in (20.0, 25.0, 70.0, 120.0, 495.0, 500.0):
        lo, hi = reference_kvps(kvp)
        assert KVP_RANGE[0] <= lo <= kvp <= hi <= KVP_RANGE[1] and hi - lo == 20.0


def test_phantoms_refuse_a_bad_tube_before_writing(tmp_path):
    with pytest.raises(InputError, match="unknown filter material 'Xx'"):
        write_phantom_scans(tmp_path / "ph", {"kvp": 80.0, "filtration_mm": {"Xx": 1.0}}, seed=0)
    assert not (tmp_path / "ph").exists()


def test_soft_tissue_attenuates_less_at_80_than_at_60_kvp():
    # same mouse, same filtration, noise-free: only the tube voltage differs
    acq = AcquisitionConfig(n_angles=36, noise=False)
    anatomy = build_anatomy(24, 0.8, subject_rng(0, 0), micro=get_variant("standard").micro,
                            air_columns=acq.air_columns)  # simulate_subject's anatomy: its first draws
    core = ndimage.binary_erosion(anatomy.materials["soft_tissue"] >= 0.999)
    assert core.sum() >= 10
    measured, expected = {}, {}
    for kvp in (60.0, 80.0):
        result = simulate_subject(0, size=24, voxel_mm=0.8, seed=0, acquisition=acq, has_tumour=False,
                                  kvp=kvp, filtration_mm=FILTER)
        assert result["sidecar"]["kvp"] == kvp and result["sidecar"]["filtration_mm"] == FILTER
        assert result["sidecar"]["spectrum"]["kvp"] == kvp and result["sidecar"]["spectrum"]["filtration_mm"] == FILTER
        measured[kvp] = float(result["images"]["attn"][core].mean())
        spec = tube_spectrum(kvp, FILTER)
        expected[kvp] = float(np.sum(spec.weights * mu("soft_tissue", spec.energies_kev)))
    print(f"soft tissue mu: 60 kVp {measured[60.0]:.5f} /mm (spectrum mean {expected[60.0]:.5f}), "
          f"80 kVp {measured[80.0]:.5f} /mm (spectrum mean {expected[80.0]:.5f})")
    # measured: 0.0319 and 0.0284 /mm; the spectrum-weighted mu: 0.0316 and 0.0280 /mm
    assert measured[80.0] < 0.93 * measured[60.0]
    for kvp in (60.0, 80.0):
        assert measured[kvp] == pytest.approx(expected[kvp], rel=0.05)
