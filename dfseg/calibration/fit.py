"""Fit ``calibration.json`` from calibration phantom scans (see :mod:`dfseg.simulate.phantoms`).

1. Every phantom stack is flux/drift normalised with its air columns (per exposure), then
   ``A = -ln T`` and ``DF = -ln D`` are averaged over the pixels of each step (wedges) or region
   (reference phantom).
2. Beam hardening, per wedge material: ``DF_BH(A) = sum_{j=1..k} c_j A^j``. No constant term: the
   air (reference) scan defines A = 0 and DF = 0, and a free constant would only absorb noise.
   The degree k in 1..5 is chosen by held-out error: fit on the even steps, test on the odd ones;
   the smallest degree within 10% of the best held-out error wins (fewer wiggles when
   extrapolating), then the curve is refit on all steps. ``first_order_c1`` is the least-squares
   slope through the origin, the only term the volume-domain correction can use.
3. Water linearisation: ``A_poly(t)`` is fitted with a cubic in t (no constant); its initial slope
   is ``mu_eff`` (1/mm), and ``g`` maps ``A_poly -> mu_eff * t`` (same degree selection).
4. Energy exponent from the reference phantom at two kVp:
   ``n = ln(DF1 / DF2) / ln(E2_eff / E1_eff)``, DF = sample region minus empty-holder region
   (which removes the holder's beam hardening), E_eff the visibility-weighted effective energy
   of each spectrum behind ``e_eff_water_mm`` of water (0 = empty beam; the same definition the
   normalization uses, so a scan is scaled consistently). With more than two voltages the lowest
   and highest are used. ``dfseg simulate`` scans the pair at the wedges' kVp - 10 and + 10
   (:func:`dfseg.simulate.phantoms.reference_kvps`), so the pair brackets the calibrated spectrum.

The calibration is for the wedges' spectrum (``reference.kvp``, ``reference.filtration_mm``) only:
:func:`dfseg.calibration.check_spectrum` refuses it for a scan at any other. A phantom directory
whose sub-directories are phantom sets, one per spectrum (what ``dfseg simulate`` writes for a
cohort scanned at several), gives a calibration set (:func:`fit_calibrations`): one calibration per
spectrum, all normalising dark-field to one reference energy.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dfseg import __version__
from dfseg.calibration.energy import scan_effective_energy
from dfseg.calibration.io import (
    FORMAT,
    FORMAT_VERSION,
    SET_FORMAT,
    validate_calibration,
    validate_calibration_set,
)
from dfseg.data.scan import LoadScand, scan_meta, scan_value
from dfseg.errors import InputError
from dfseg.io import sha256_file

__all__ = ["fit_calibration", "fit_calibrations", "fit_curve", "phantom_measurements", "phantom_sets"]

MAX_DEGREE = 5


def _design(x: np.ndarray, degree: int) -> np.ndarray:
    return np.stack([x**j for j in range(1, degree + 1)], axis=1)


def _poly(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    return _design(np.asarray(x, float), len(coef)) @ np.asarray(coef, float)


def _lstsq(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    return np.linalg.lstsq(_design(x, degree), y, rcond=None)[0]


def fit_curve(x: np.ndarray, y: np.ndarray, *, max_degree: int = MAX_DEGREE, tolerance: float = 0.1) -> dict[str, Any]:
    """Fit ``y = sum_{j=1..k} c_j x^j`` with k chosen by held-out error (even fit, odd test).

    Args:
        x: abscissae (e.g. A per step), shape (S,), S >= 4.
        y: ordinates (e.g. spurious DF per step), shape (S,).
        max_degree: largest degree tried (limited by the number of even points).
        tolerance: a lower degree within this relative margin of the best held-out error wins.

    Returns:
        ``coefficients`` (c_1..c_k, refit on all points), ``degree``, ``a_max`` (max x),
        ``first_order_c1`` and ``residuals`` (held-out and full-fit max abs / relative to
        max |y|, the held-out error of every degree tried).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.ndim != 1 or x.shape != y.shape or x.size < 4:
        raise InputError("fit_curve", f"need >= 4 matching points, got x {x.shape}, y {y.shape}")
    train, test = slice(0, None, 2), slice(1, None, 2)
    n_train = x[train].size
    scale = float(np.max(np.abs(y))) or 1.0
    errors: dict[int, float] = {}
    for k in range(1, min(max_degree, n_train) + 1):
        c = _lstsq(x[train], y[train], k)
        errors[k] = float(np.max(np.abs(_poly(c, x[test]) - y[test])))
    best = min(errors.values())
    degree = min(k for k, e in errors.items() if e <= best * (1 + tolerance) + 1e-15)
    c_heldout = _lstsq(x[train], y[train], degree)
    heldout = np.abs(_poly(c_heldout, x[test]) - y[test])
    coef = _lstsq(x, y, degree)
    full = np.abs(_poly(coef, x) - y)
    c1 = float(np.dot(x, y) / np.dot(x, x))
    return {
        "coefficients": [float(v) for v in coef],
        "degree": int(degree),
        "a_max": float(np.max(x)),
        "first_order_c1": c1,
        "residuals": {
            "heldout_max_abs": float(heldout.max()),
            "heldout_relative": float(heldout.max() / scale),
            "fit_max_abs": float(full.max()),
            "fit_relative": float(full.max() / scale),
            "max_abs_value": scale,
            "heldout_error_by_degree": {str(k): e for k, e in errors.items()},
        },
    }


#: The phantom scan's images: raw projection stacks, (A, U, Z, N) on disk.
PHANTOM_KEYS: tuple[str, ...] = ("proj_T", "proj_D")


def _disk_layout(stack: Any) -> np.ndarray:
    """A loaded ``(N, A, U, Z)`` stack as float64, laid out in memory as the NIfTI file stores it.

    NIfTI voxels are ``(A, U, Z, N)`` in Fortran order. The means below sum in memory order, so
    the layout fixes the last bits of the calibration.
    """
    return np.moveaxis(np.asfortranarray(np.moveaxis(stack.numpy(), 0, -1), dtype=np.float64), -1, 0)


def _rows(spec: Any, where: str, z: int) -> slice:
    if not (isinstance(spec, list | tuple) and len(spec) == 2 and 0 <= int(spec[0]) < int(spec[1]) <= z):
        raise InputError(where, f"rows must be [z0, z1) within 0..{z}, got {spec!r}")
    return slice(int(spec[0]), int(spec[1]))


def phantom_measurements(pdir: str | os.PathLike) -> dict[str, Any]:
    """Read one phantom scan and reduce it to per-step / per-region means of A and DF.

    Returns:
        ``sidecar``, ``files`` (paths read), ``air`` (mean raw T and D in the air columns) and
        either ``steps`` (``thickness_mm``, ``A``, ``DF`` arrays) or ``regions`` (name -> A, DF).
    """
    pdir = Path(pdir)
    side_path = pdir / "sidecar.json"
    side = scan_meta({"sidecar": side_path})
    for key in ("kind", "kvp", "air_columns", "sample_columns"):
        if key not in side:
            raise InputError(side_path, f"missing key '{key}'")
    files = {key: pdir / f"{key}.nii.gz" for key in PHANTOM_KEYS}
    scan = LoadScand(PHANTOM_KEYS, check_orientations=True)({"scan_id": pdir.name, "meta": side, **files})
    t, d = (_disk_layout(scan[key]) for key in PHANTOM_KEYS)  # (N, A, U, Z)
    if t.shape != d.shape:
        raise InputError(files["proj_D"], f"shape {d.shape[1:]}x{d.shape[0]} differs from proj_T {t.shape}")
    air = int(side["air_columns"])
    u = t.shape[2]
    air_t = np.concatenate([t[:, :, :air], t[:, :, u - air:]], axis=2)
    air_d = np.concatenate([d[:, :, :air], d[:, :, u - air:]], axis=2)
    gain = air_t.mean(axis=(2, 3), keepdims=True)
    u0, u1 = (int(v) for v in side["sample_columns"])
    with np.errstate(divide="ignore"):
        a_img = -np.log(np.clip(t / gain, 1e-12, None))[:, :, u0:u1]
        df_img = -np.log(np.clip(d, 1e-12, None))[:, :, u0:u1]
    out: dict[str, Any] = {
        "sidecar": side, "files": [side_path, *files.values()],
        "air": {"T": float(air_t.mean()), "D": float(air_d.mean())},
    }
    z = t.shape[3]
    if side["kind"] == "step_wedge":
        steps = side.get("steps")
        if not steps:
            raise InputError(side_path, "missing key 'steps'")
        sl = [_rows(s.get("rows"), f"{side_path}:steps[{i}].rows", z) for i, s in enumerate(steps)]
        out["steps"] = {
            "thickness_mm": np.array([float(s["thickness_mm"]) for s in steps]),
            "A": np.array([a_img[..., r].mean() for r in sl]),
            "DF": np.array([df_img[..., r].mean() for r in sl]),
        }
    elif side["kind"] == "reference_microstructure":
        regions = side.get("regions") or {}
        if "sample" not in regions or "holder" not in regions:
            raise InputError(side_path, "missing key 'regions.sample' or 'regions.holder'")
        out["regions"] = {}
        for name in ("sample", "holder"):
            r = _rows(regions[name].get("rows"), f"{side_path}:regions.{name}.rows", z)
            out["regions"][name] = {"A": float(a_img[..., r].mean()), "DF": float(df_img[..., r].mean())}
    else:
        raise InputError(side_path, f"unknown phantom kind {side['kind']!r}")
    return out


def fit_calibration(phantom_dir: str | os.PathLike, *, e_ref_kev: float | None = None,
                    e_eff_water_mm: float = 0.0) -> dict[str, Any]:
    """Fit a calibration from a directory of phantom scans.

    Args:
        phantom_dir: directory holding ``water_wedge``, ``aluminium_wedge`` and two
            ``reference_microstructure`` scans (any directory names; kinds come from sidecars).
        e_ref_kev: reference energy for spectrum normalization (default: the effective energy of
            the wedges' spectrum, so scans at the calibration spectrum are left unchanged).
        e_eff_water_mm: water thickness behind which effective energies are computed.

    Returns:
        the calibration dictionary (see :mod:`dfseg.calibration.io` for the layout).

    Raises:
        InputError: a missing phantom, file or sidecar key, naming it.
    """
    root = Path(phantom_dir)
    if not root.is_dir():
        raise InputError(root, "phantom directory not found")
    scans = [phantom_measurements(p) for p in sorted(root.iterdir()) if (p / "sidecar.json").is_file()]
    if not scans:
        raise InputError(root, "no phantom scans (sub-directories with sidecar.json) found")
    wedges: dict[str, dict] = {}
    refs: list[dict] = []
    for s in scans:
        side = s["sidecar"]
        if side["kind"] == "step_wedge":
            wedges[side.get("material", "")] = s
        else:
            refs.append(s)
    for material in ("water", "aluminium"):
        if material not in wedges:
            raise InputError(root, f"no {material} step-wedge scan found (sidecar kind 'step_wedge', material '{material}')")
    kvps = sorted({float(r["sidecar"]["kvp"]) for r in refs})
    if len(kvps) < 2:
        raise InputError(root, f"the reference micro-structure phantom must be scanned at two tube voltages, found {kvps}")

    water_side = wedges["water"]["sidecar"]
    for material, s in wedges.items():
        side = s["sidecar"]
        if float(side["kvp"]) != float(water_side["kvp"]) or side.get("filtration_mm") != water_side.get("filtration_mm"):
            raise InputError(root / material, "wedges were scanned with different spectra")

    beam_hardening = {}
    for material in ("water", "aluminium"):
        st = wedges[material]["steps"]
        beam_hardening[material] = fit_curve(st["A"], st["DF"])
        beam_hardening[material]["steps"] = {"thickness_mm": st["thickness_mm"].tolist(), "A": st["A"].tolist(),
                                             "DF": st["DF"].tolist()}

    st = wedges["water"]["steps"]
    a_of_t = np.linalg.lstsq(_design(st["thickness_mm"], 3), st["A"], rcond=None)[0]
    mu_eff = float(a_of_t[0])
    lin = fit_curve(st["A"], mu_eff * st["thickness_mm"])
    lin.pop("first_order_c1")
    lin["mu_eff_per_mm"] = mu_eff

    visibility = water_side.get("visibility")
    if visibility is None:
        raise InputError(root / "water_wedge" / "sidecar.json", "missing key 'visibility'")
    lo = next(r for r in refs if float(r["sidecar"]["kvp"]) == kvps[0])
    hi = next(r for r in refs if float(r["sidecar"]["kvp"]) == kvps[-1])
    df_pair, e_pair = [], []
    for r in (lo, hi):
        side = r["sidecar"]
        df_pair.append(r["regions"]["sample"]["DF"] - r["regions"]["holder"]["DF"])
        e_pair.append(scan_effective_energy(side["kvp"], side.get("filtration_mm"),
                                            scan_value(r, "visibility", meta_key="sidecar", default=visibility),
                                            e_eff_water_mm))
    if min(df_pair) <= 0:
        raise InputError(root, f"reference phantom dark-field must be positive at both voltages, got {df_pair}")
    n = float(np.log(df_pair[0] / df_pair[1]) / np.log(e_pair[1] / e_pair[0]))

    e_wedge = scan_effective_energy(water_side["kvp"], water_side.get("filtration_mm"), visibility, e_eff_water_mm)
    inputs = {}
    for s in scans:
        for f in s["files"]:
            inputs[str(Path(f).relative_to(root))] = sha256_file(f)
    cal = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dfseg_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "reference": {
            "kvp": float(water_side["kvp"]),
            "filtration_mm": water_side.get("filtration_mm"),
            "visibility": visibility,
            "e_ref_kev": float(e_ref_kev) if e_ref_kev is not None else e_wedge,
            "e_eff_kev": e_wedge,
            "e_eff_water_mm": float(e_eff_water_mm),
            "air": wedges["water"]["air"],
        },
        "beam_hardening": beam_hardening,
        "linearisation": {"water": lin},
        "energy_exponent": {
            "n": n, "kvp": kvps[:1] + kvps[-1:], "e_eff_kev": e_pair, "df": df_pair,
            "phantom": {k: lo["sidecar"].get(k) for k in ("phantom_id", "sphere", "holder")},
        },
        "inputs": inputs,
    }
    validate_calibration(cal, root)
    return cal


def _is_scan(path: Path) -> bool:
    return (path / "sidecar.json").is_file()


def phantom_sets(phantom_dir: str | os.PathLike) -> dict[str, Path] | None:
    """The phantom sets under ``phantom_dir`` (name -> folder), or None when it is one set itself.

    Raises:
        InputError: the folder is missing, or holds neither phantom scans nor phantom sets.
    """
    root = Path(phantom_dir)
    if not root.is_dir():
        raise InputError(root, "phantom directory not found")
    children = sorted(p for p in root.iterdir() if p.is_dir())
    if any(_is_scan(p) for p in children):
        return None
    sets = {p.name: p for p in children if any(_is_scan(q) for q in p.iterdir() if q.is_dir())}
    if not sets:
        raise InputError(root, "no phantom scans (sub-directories with sidecar.json) or phantom sets found")
    return sets


def fit_calibrations(phantom_dir: str | os.PathLike, *, e_ref_kev: float | None = None,
                     e_eff_water_mm: float = 0.0) -> dict[str, Any]:
    """A calibration (one phantom set) or a calibration set (a folder of sets, one per spectrum).

    Each set is fitted by :func:`fit_calibration`. In a calibration set every entry normalises
    dark-field to the same reference energy: ``e_ref_kev``, or by default the median of the sets'
    effective energies, so scans at different spectra come out on one scale.

    Args, Raises: as :func:`fit_calibration`.
    """
    sets = phantom_sets(phantom_dir)
    if sets is None:
        return fit_calibration(phantom_dir, e_ref_kev=e_ref_kev, e_eff_water_mm=e_eff_water_mm)
    entries = {name: fit_calibration(path, e_eff_water_mm=e_eff_water_mm) for name, path in sets.items()}
    e_ref = float(np.median([c["reference"]["e_eff_kev"] for c in entries.values()])) if e_ref_kev is None \
        else float(e_ref_kev)
    for cal in entries.values():
        cal["reference"]["e_ref_kev"] = e_ref
    doc = {"format": SET_FORMAT, "format_version": FORMAT_VERSION, "dfseg_version": __version__,
           "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "calibrations": entries}
    validate_calibration_set(doc, phantom_dir)
    return doc


def _spectrum_text(ref: Mapping) -> str:
    """``spectrum: 70 kVp, 1 mm Al`` for a calibration's ``reference``."""
    filt = ref.get("filtration_mm")
    if isinstance(filt, Mapping):
        filt = " + ".join(f"{mm:g} mm {m}" for m, mm in filt.items()) or "no added filtration"
    return f"spectrum: {ref['kvp']:g} kVp, {filt}"


def summary(cal: Mapping) -> str:
    """One line per fitted quantity, for the command's output (a calibration set: one line per entry)."""
    if cal.get("format") == SET_FORMAT:
        entries = cal["calibrations"]
        first = next(iter(entries.values()))
        lines = [f"calibration set: {len(entries)} spectra, dark-field at {first['reference']['e_ref_kev']:.2f} keV"]
        lines += [f"{name}: {_spectrum_text(entry['reference'])}, n = {entry['energy_exponent']['n']:.3f}"
                  for name, entry in entries.items()]
        return "\n".join(lines)
    lines = [f"{_spectrum_text(cal['reference'])} (the calibration applies to scans at this spectrum only)"]
    for m, e in cal["beam_hardening"].items():
        r = e["residuals"]
        lines.append(f"beam hardening {m}: degree {e['degree']}, held-out max |res| {r['heldout_max_abs']:.2e} "
                     f"({100 * r['heldout_relative']:.2f}% of max DF {r['max_abs_value']:.3g})")
    lin = cal["linearisation"]["water"]
    lines.append(f"water linearisation: degree {lin['degree']}, mu_eff {lin['mu_eff_per_mm']:.4f} /mm")
    ee = cal["energy_exponent"]
    lines.append(f"energy exponent n = {ee['n']:.3f} from {ee['kvp'][0]:g}/{ee['kvp'][1]:g} kVp "
                 f"(E_eff {ee['e_eff_kev'][0]:.2f}/{ee['e_eff_kev'][1]:.2f} keV)")
    return "\n".join(lines)
