"""dfseg.calibration: fit, save and load ``calibration.json`` (beam-hardening curves, water
linearisation, energy exponent, reference values)."""

from __future__ import annotations

from dfseg.calibration.io import (
    FORMAT,
    FORMAT_VERSION,
    REQUIRED_KEYS,
    check_spectrum,
    load_calibration,
    polyval_no_constant,
    save_calibration,
    validate_calibration,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "check_spectrum",
    "fit_calibration",
    "fit_curve",
    "load_calibration",
    "polyval_no_constant",
    "save_calibration",
    "validate_calibration",
]


def __getattr__(name: str):
    if name in ("fit_calibration", "fit_curve"):
        # reason: fit reads scans through dfseg.data.scan (MONAI); loading a calibration or the simulator needs neither
        from dfseg.calibration import fit

        return getattr(fit, name)
    raise AttributeError(name)
