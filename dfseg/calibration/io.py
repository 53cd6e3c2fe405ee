"""Saving, loading and validating ``calibration.json``.

Layout (all lengths in mm, energies in keV; ``A`` is the attenuation line integral -ln T and
``DF`` the dark-field line integral -ln D, both unitless)::

    format, format_version, dfseg_version, created_utc
    reference:        kvp, filtration_mm, visibility, e_ref_kev, e_eff_water_mm, air {T, D}
    beam_hardening:   <material>: coefficients [c_1..c_k], degree, a_max, first_order_c1, residuals
    linearisation:    water: coefficients [b_1..b_k], degree, mu_eff_per_mm, a_max, residuals
    energy_exponent:  n, kvp [k1, k2], e_eff_kev [E1, E2], df [DF1, DF2], phantom
    inputs:           {relative path: sha256}

Curves have no constant term: the air reading defines A = 0 and DF = 0 (the reference scan is
the air scan), so a fitted constant would only absorb noise and bias every ray.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dfseg.errors import InputError
from dfseg.io import read_json, write_json

FORMAT = "dfseg-calibration"
FORMAT_VERSION = 1

#: dotted keys every calibration must carry
REQUIRED_KEYS: tuple[str, ...] = (
    "format_version",
    "reference.kvp",
    "reference.filtration_mm",
    "reference.visibility",
    "reference.e_ref_kev",
    "beam_hardening.water.coefficients",
    "beam_hardening.water.first_order_c1",
    "beam_hardening.aluminium.coefficients",
    "beam_hardening.aluminium.first_order_c1",
    "linearisation.water.coefficients",
    "energy_exponent.n",
)


def _get(obj: Mapping, dotted: str) -> Any:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def validate_calibration(cal: Mapping, where: str | os.PathLike = "calibration") -> None:
    """Check that every required key is present and numeric where it must be.

    Raises:
        InputError: naming the file and the first missing or malformed key.
    """
    if not isinstance(cal, Mapping):
        raise InputError(where, "calibration must be a JSON object")
    for key in REQUIRED_KEYS:
        try:
            value = _get(cal, key)
        except KeyError:
            raise InputError(where, f"missing calibration key '{key}'") from None
        if key.endswith("coefficients"):
            arr = np.asarray(value, dtype=object)
            if arr.ndim != 1 or arr.size == 0 or not all(isinstance(v, int | float) for v in arr):
                raise InputError(where, f"calibration key '{key}' must be a non-empty list of numbers")
            if not np.all(np.isfinite(np.asarray(value, float))):
                raise InputError(where, f"calibration key '{key}' holds NaN/Inf")
        elif key in ("energy_exponent.n", "reference.e_ref_kev", "reference.kvp",
                     "beam_hardening.water.first_order_c1", "beam_hardening.aluminium.first_order_c1"):
            if not isinstance(value, int | float) or not np.isfinite(value):
                raise InputError(where, f"calibration key '{key}' must be a finite number, got {value!r}")
    if int(cal["format_version"]) > FORMAT_VERSION:
        raise InputError(where, f"format_version {cal['format_version']} is newer than this dfseg reads ({FORMAT_VERSION})")


def _filtration_equal(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = {k for k, v in {**a, **b}.items()}
        return all(np.isclose(float(a.get(k, 0.0)), float(b.get(k, 0.0)), atol=1e-6) for k in keys)
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return False
    if a is None or b is None:
        return a is b
    return bool(np.isclose(float(a), float(b), atol=1e-6))


def check_spectrum(cal: Mapping, spectrum: Mapping, where: str | os.PathLike = "calibration") -> None:
    """Refuse a calibration made for a different tube voltage or filtration than a scan's.

    Args:
        cal: a validated calibration.
        spectrum: mapping with ``kvp`` and ``filtration_mm`` (e.g. a scan's sidecar).

    Raises:
        InputError: one line naming both spectra.
    """
    ref = cal["reference"]
    kvp = spectrum.get("kvp")
    filt = spectrum.get("filtration_mm")
    if kvp is not None and not np.isclose(float(kvp), float(ref["kvp"]), atol=1e-6):
        raise InputError(where, f"calibration made at {ref['kvp']} kVp, scan is {kvp} kVp; calibrate with phantoms scanned at the scan's spectrum")
    if "filtration_mm" in spectrum and not _filtration_equal(filt, ref["filtration_mm"]):
        raise InputError(where, f"calibration made with filtration {ref['filtration_mm']}, scan has {filt}; calibrate with phantoms scanned at the scan's spectrum")


def load_calibration(path: str | os.PathLike | Mapping, *, expect_spectrum: Mapping | None = None) -> dict:
    """Read and validate ``calibration.json`` (a mapping is validated and returned as a dict).

    Args:
        path: the file, or an already-loaded calibration dictionary.
        expect_spectrum: optional ``{"kvp": ..., "filtration_mm": ...}`` (a scan's sidecar); a
            calibration made for another spectrum is refused.

    Raises:
        InputError: missing file, invalid JSON, missing key or spectrum mismatch; names the file.
    """
    if isinstance(path, Mapping):
        cal, where = dict(path), "calibration"
    else:
        where = Path(path)
        cal = read_json(where)
    validate_calibration(cal, where)
    if expect_spectrum is not None:
        check_spectrum(cal, expect_spectrum, where)
    return cal


def save_calibration(path: str | os.PathLike, cal: Mapping) -> None:
    """Validate and write a calibration atomically."""
    validate_calibration(cal, path)
    write_json(path, dict(cal))


def polyval_no_constant(coefficients: Any, a: Any) -> Any:
    """``sum_j c_j a^j`` for j = 1..k (Horner), for numpy arrays or torch tensors alike."""
    out = a * 0
    for c in reversed(list(coefficients)):
        out = (out + float(c)) * a
    return out
