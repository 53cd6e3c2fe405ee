"""Spectrum-aware normalization: the reference phantom at 60 and 80 kVp agrees after scaling."""

from __future__ import annotations

import numpy as np
import pytest
from testkit import KINDS, as_kind

from dfseg.calibration.fit import fit_calibration, phantom_measurements
from dfseg.errors import InputError
from dfseg.simulate.phantoms import write_phantom_scans
from dfseg.transforms.spectrum import SpectrumAwareNormalization, SpectrumAwareNormalizationd

ACQ = {"kvp": 70.0, "photons_per_pixel": 2e4}  # the acquisition's default visibility spectrum


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    cal_dir = tmp_path_factory.mktemp("cal")
    test_dir = tmp_path_factory.mktemp("independent")
    write_phantom_scans(cal_dir, ACQ, seed=11)
    write_phantom_scans(test_dir, ACQ, seed=12)  # an independent scan of the reference phantom
    return fit_calibration(cal_dir), test_dir


def test_reference_phantom_agrees_within_3_percent(scans):
    cal, test_dir = scans
    values = {}
    for kvp in (60, 80):
        m = phantom_measurements(test_dir / f"microspheres_{kvp}kvp")
        side = m["sidecar"]
        df = np.array([m["regions"]["sample"]["DF"] - m["regions"]["holder"]["DF"]])
        norm = SpectrumAwareNormalization(cal, kvp=side["kvp"], filtration_mm=side["filtration_mm"],
                                          visibility=side["visibility"])
        values[kvp] = (float(df[0]), float(norm(df)[0]))
    before = values[60][0] / values[80][0] - 1
    after = values[60][1] / values[80][1] - 1
    print(f"reference phantom DF 60/80 kVp: before {100 * before:.1f}% apart, after {100 * after:.2f}% (n={cal['energy_exponent']['n']:.3f})")
    assert abs(before) > 0.20
    assert abs(after) < 0.03


@pytest.mark.parametrize("kind", KINDS)
def test_types_factor_and_dict(scans, kind):
    cal, _ = scans
    ref = cal["reference"]
    img = np.full((4, 3, 3, 3), 0.2, np.float32)
    inp = as_kind(kind, img)
    same = SpectrumAwareNormalization(cal, kvp=ref["kvp"], filtration_mm=ref["filtration_mm"], visibility=ref["visibility"])
    out = same(inp)
    assert type(out) is type(inp) and out.dtype == inp.dtype
    np.testing.assert_allclose(np.asarray(out), 0.2, rtol=1e-6)  # at the reference spectrum: unchanged
    n = cal["energy_exponent"]["n"]
    e_ref = ref["e_ref_kev"]
    op = SpectrumAwareNormalization(cal, e_eff_kev=0.9 * e_ref)
    np.testing.assert_allclose(np.asarray(op(inp)), 0.2 * 0.9**n, rtol=1e-5)
    meta = {"kvp": 60.0, "filtration_mm": {"Al": 1.0}, "visibility": ref["visibility"]}
    d = SpectrumAwareNormalizationd("df", cal)({"df": inp, "meta": meta})
    assert type(d["df"]) is type(inp) and float(np.asarray(d["df"]).mean()) < 0.2  # 60 kVp: lower E_eff, DF scaled down
    with pytest.raises(InputError, match="meta.kvp"):
        SpectrumAwareNormalizationd("df", cal)({"df": inp, "meta": {}})
