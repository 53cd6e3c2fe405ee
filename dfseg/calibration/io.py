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

A calibration holds for one spectrum. A cohort scanned at several (phantom variants, a
domain-randomised cohort, a lab with several protocols) has a **calibration set**::

    format: dfseg-calibration-set, format_version, dfseg_version, created_utc
    calibrations: {<phantom set name>: <calibration>, ...}

every calibration with the same ``reference.e_ref_kev``, so dark-field is expressed at one energy
whatever the spectrum. :func:`select_calibration` picks a scan's entry by its spectrum.
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
SET_FORMAT = "dfseg-calibration-set"

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


def is_calibration_set(doc: Any) -> bool:
    """True for a calibration set (module docstring), False for anything else."""
    return isinstance(doc, Mapping) and doc.get("format") == SET_FORMAT


def validate_calibration_set(doc: Mapping, where: str | os.PathLike = "calibration") -> None:
    """Check a calibration set: at least one entry, each a valid calibration, one reference energy.

    Raises:
        InputError: naming the file, the entry and its problem.
    """
    entries = doc.get("calibrations")
    if not isinstance(entries, Mapping) or not entries:
        raise InputError(where, "calibration set holds no calibrations")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(where, f"format_version {doc['format_version']} is newer than this dfseg reads ({FORMAT_VERSION})")
    for name, cal in entries.items():
        try:
            validate_calibration(cal, where)
        except InputError as err:
            raise InputError(where, f"entry {name!r}: {err.problem}") from None
    energies = {round(float(cal["reference"]["e_ref_kev"]), 9) for cal in entries.values()}
    if len(energies) > 1:
        raise InputError(where, f"entries normalise to different reference energies {sorted(energies)} keV")


def _same_visibility(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return False
        return all(np.isclose(float(a[k]), float(b[k]), atol=1e-9) for k in a)
    return a == b


def select_calibration(doc: Mapping, spectrum: Mapping, where: str | os.PathLike = "calibration") -> dict:
    """The calibration for a scan's spectrum (:func:`select_calibration_entry` without the name)."""
    return select_calibration_entry(doc, spectrum, where)[1]


def select_calibration_entry(doc: Mapping, spectrum: Mapping,
                             where: str | os.PathLike = "calibration") -> tuple[str, dict]:
    """``(name, calibration)`` for a scan's spectrum: ``("", doc)`` (checked), or a set's matching entry.

    A set's entry matches when its tube voltage and filtration are the scan's
    (:func:`check_spectrum`); among several, the one with the scan's visibility spectrum.

    Args:
        doc: a validated calibration or calibration set.
        spectrum: a scan's sidecar (``kvp``, ``filtration_mm``, optionally ``visibility``).

    Raises:
        InputError: no entry (or a single calibration that does not) matches, or several do.
    """
    if not is_calibration_set(doc):
        check_spectrum(doc, spectrum, where)
        return "", dict(doc)
    matches = []
    for name, cal in doc["calibrations"].items():
        try:
            check_spectrum(cal, spectrum, where)
        except InputError:
            continue
        matches.append((name, cal))
    if len(matches) > 1 and spectrum.get("visibility") is not None:
        matches = [(n, c) for n, c in matches if _same_visibility(c["reference"]["visibility"], spectrum["visibility"])]
    filt = spectrum.get("filtration_mm")
    if not matches:
        raise InputError(where, f"no calibration in the set for {spectrum.get('kvp')} kVp, filtration {filt}; "
                                f"it holds {len(doc['calibrations'])} (scan the phantoms at this spectrum too)")
    if len(matches) > 1:
        raise InputError(where, f"{len(matches)} calibrations match {spectrum.get('kvp')} kVp, filtration {filt} "
                                f"({', '.join(n for n, _ in matches)}) and the scan states no visibility to choose")
    return matches[0][0], dict(matches[0][1])


def load_calibration_document(path: str | os.PathLike | Mapping) -> dict:
    """Read and validate a calibration or a calibration set (a mapping is validated and returned)."""
    if isinstance(path, Mapping):
        doc, where = dict(path), "calibration"
    else:
        where = Path(path)
        doc = read_json(where)
    if is_calibration_set(doc):
        validate_calibration_set(doc, where)
    else:
        validate_calibration(doc, where)
    return doc


def load_calibration(path: str | os.PathLike | Mapping, *, expect_spectrum: Mapping | None = None) -> dict:
    """Read and validate ``calibration.json`` (a mapping is validated and returned as a dict).

    Args:
        path: the file, or an already-loaded calibration dictionary.
        expect_spectrum: optional ``{"kvp": ..., "filtration_mm": ...}`` (a scan's sidecar); a
            calibration made for another spectrum is refused, and a calibration set gives the
            entry for it (:func:`select_calibration`).

    Raises:
        InputError: missing file, invalid JSON, missing key or spectrum mismatch, or a calibration
            set without a spectrum to choose by; names the file.
    """
    doc = load_calibration_document(path)
    where = "calibration" if isinstance(path, Mapping) else Path(path)
    if expect_spectrum is not None:
        return select_calibration(doc, expect_spectrum, where)
    if is_calibration_set(doc):
        raise InputError(where, f"is a calibration set for {len(doc['calibrations'])} spectra; preprocess the "
                                "cohort with it (dfseg preprocess picks each scan's entry)")
    return doc


def reference_energy_kev(path: str | os.PathLike | Mapping) -> float:
    """The energy (keV) a calibration, or a calibration set (one energy for all its entries, as
    :func:`validate_calibration_set` checks), states dark-field at: ``reference.e_ref_kev``."""
    doc = load_calibration_document(path)
    entry = next(iter(doc["calibrations"].values())) if is_calibration_set(doc) else doc
    return float(entry["reference"]["e_ref_kev"])


def save_calibration(path: str | os.PathLike, cal: Mapping) -> None:
    """Validate and write a calibration or a calibration set atomically."""
    if is_calibration_set(cal):
        validate_calibration_set(cal, path)
    else:
        validate_calibration(cal, path)
    write_json(path, dict(cal))


def polyval_no_constant(coefficients: Any, a: Any) -> Any:
    """``sum_j c_j a^j`` for j = 1..k (Horner), for numpy arrays or torch tensors alike."""
    out = a * 0
    for c in reversed(list(coefficients)):
        out = (out + float(c)) * a
    return out
