"""dfseg.calibration: fit, save and load ``calibration.json`` (beam-hardening curves, water
linearisation, energy exponent, reference values)."""

from __future__ import annotations

from dfseg.calibration.io import (
    FORMAT,
    FORMAT_VERSION,
    REQUIRED_KEYS,
    SET_FORMAT,
    check_spectrum,
    is_calibration_set,
    load_calibration,
    load_calibration_document,
    polyval_no_constant,
    reference_energy_kev,
    save_calibration,
    select_calibration,
    select_calibration_entry,
    validate_calibration,
    validate_calibration_set,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "SET_FORMAT",
    "check_spectrum",
    "fit_calibration",
    "fit_calibrations",
    "fit_curve",
    "is_calibration_set",
    "load_calibration",
    "load_calibration_document",
    "polyval_no_constant",
    "reference_energy_kev",
    "save_calibration",
    "select_calibration",
    "select_calibration_entry",
    "validate_calibration",
    "validate_calibration_set",
]


def __getattr__(name: str):
    if name in ("fit_calibration", "fit_calibrations", "fit_curve"):
        # reason: fit reads scans through dfseg.data.scan (MONAI); loading a calibration or the simulator needs neither
        from dfseg.calibration import fit

        return getattr(fit, name)
    raise AttributeError(name)
