"""Raw phase-stepping frames of a Talbot-Lau scan, written as a lab's scanner would (HDF5 or TIFF).

The acquisition (:mod:`dfseg.simulate.acquisition`) goes from expected T and D straight to the
retrieved ``proj_T``/``proj_D``; this module instead writes the frames a scanner records, with the
layout file :func:`dfseg.data.raw.read_layout` reads (docs/raw_frames.md), so the retrieval from
raw frames can be tested against a known truth. Frame k of the series at orientation n, angle a:

    I = dark + Poisson(g * a0(t) * N / M * T * (1 + v_ref * D * cos(x_k + phi_r + phi(t) + dphi)))

- ``x_k = 2 pi k / M`` plus independent jitter per frame (``jitter_rad``, std in rad);
- ``g`` the dose of the frame, ``1 + dose_std * normal`` (tube flux fluctuation);
- ``a0(t) = 1 + drift_a0 * sin(pi t + psi)`` and ``phi(t) = drift_phase_rad * sin(pi t + psi')``: a
  slow drift of flux and interferometer phase over the scan time t in [0, 1] (exposures taken
  orientation by orientation, angle by angle), seen by the flats as well;
- ``phi_r`` the reference phase (moire) map, ``dphi`` an optional differential phase of the sample;
- ``dark = dark_level + read_noise * normal``.

Flats (reference series, no sample) follow the same model with T = D = 1, taken before projections
``0, flat_every, 2 flat_every, ...`` and once after the last (index A) of every orientation. Dark
frames are ``dark`` alone. The truth (T, D, phases, doses, drift, reference phase) is returned and
written to ``truth.npz``.

:func:`write_raw_scan` takes precomputed T and D stacks (any projector's: a cone-beam one too);
:func:`write_raw_ct` computes them for a simulated anatomy (:func:`dfseg.simulate.acquisition.expected_ct`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import yaml

from dfseg.data.raw import read_layout
from dfseg.errors import InputError
from dfseg.io import atomic_directory, atomic_write

__all__ = ["FORMATS", "LAYOUT_NAME", "TRUTH_NAME", "write_raw_ct", "write_raw_scan"]

FORMATS: tuple[str, ...] = ("hdf5", "tiff")
#: File names inside the output folder.
LAYOUT_NAME = "layout.yaml"
TRUTH_NAME = "truth.npz"
_H5_NAME = "raw.h5"
_DTYPES = ("uint16", "float32")


def _as_stack(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 4:
        raise InputError(name, f"expected a (N, A, U, Z) stack, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise InputError(name, "must be finite and >= 0")
    return a


def _drift(tau: np.ndarray, amplitude: float, phase: float) -> np.ndarray:
    return amplitude * np.sin(np.pi * tau + phase)


def _frames(lam: np.ndarray, rng: np.random.Generator, *, noise: bool, dark_level, read_noise: float) -> np.ndarray:
    """Detector counts for expected counts ``lam`` (float64): Poisson + dark offset + read noise."""
    if not noise:
        return lam + dark_level
    counts = rng.poisson(lam).astype(np.float64) + dark_level
    if read_noise > 0:
        counts += read_noise * rng.standard_normal(lam.shape)
    return counts


def _cast(frames: np.ndarray, dtype: str, what: str) -> np.ndarray:
    if dtype == "float32":
        return frames.astype(np.float32)
    out = np.rint(frames)
    if out.max(initial=0) > np.iinfo(np.uint16).max:
        raise InputError(what, f"counts up to {out.max():.0f} do not fit uint16; write dtype='float32' or fewer photons")
    return np.clip(out, 0, None).astype(np.uint16)


class _Writer:
    """Writes the frames of one orientation at a time, in the format's layout."""

    def __init__(self, folder: Path, fmt: str, shapes: dict[str, tuple[int, ...]], dtype: str):
        self.folder, self.fmt, self.dtype = folder, fmt, dtype
        self.h5 = None
        if fmt == "hdf5":
            import h5py  # on use: only HDF5 output needs it

            self.h5 = h5py.File(folder / _H5_NAME, "w")
            for name, shape in shapes.items():
                self.h5.create_dataset(name, shape=shape, dtype=dtype)
        else:
            (folder / "sample").mkdir()
            (folder / "flats").mkdir()

    def roles(self) -> dict[str, dict[str, Any]]:
        if self.fmt == "hdf5":
            return {"sample": {"dataset": "/sample", "axes": "orient angle step row col"},
                    "flats": {"dataset": "/flats", "axes": "orient flat step row col"},
                    "darks": {"dataset": "/darks", "axes": "dark row col"}}
        return {"sample": {"file": "sample/o{orient}_a{angle:04d}.tif", "axes": "step row col"},
                "flats": {"file": "flats/o{orient}_f{flat:03d}.tif", "axes": "step row col"},
                "darks": {"file": "darks.tif", "axes": "dark row col"}}

    def write(self, name: str, orient: int | None, frames: np.ndarray) -> None:
        """``frames`` in dfseg's order (..., U, Z); files hold (..., row, col) = (..., Z, U)."""
        data = np.ascontiguousarray(np.swapaxes(frames, -1, -2))
        if self.h5 is not None:
            if orient is None:
                self.h5[name][...] = data
            else:
                self.h5[name][orient] = data
            return
        if orient is None:
            tifffile.imwrite(self.folder / "darks.tif", data)
            return
        for i, series in enumerate(data):
            file = f"sample/o{orient}_a{i:04d}.tif" if name == "sample" else f"flats/o{orient}_f{i:03d}.tif"
            tifffile.imwrite(self.folder / file, series)

    def positions(self, name: str, positions: np.ndarray) -> str:
        """Store per-frame step positions; return what the layout's ``positions`` says."""
        if self.h5 is not None:
            self.h5.create_dataset(f"{name}_positions", data=positions)
            return f"/{name}_positions"
        file = f"{name}_positions.npy"
        with atomic_write(self.folder / file) as fh:
            np.save(fh, positions)
        return file

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()


def write_raw_scan(
    out_dir: str | os.PathLike,
    T: np.ndarray,
    D: np.ndarray,
    *,
    v_ref: float | np.ndarray,
    photons_per_pixel: float,
    pixel_mm: float,
    steps: int = 5,
    jitter_rad: float = 0.0,
    dose_std: float = 0.0,
    flat_every: int | None = None,
    flat_photons_per_pixel: float | None = None,
    drift_a0: float = 0.0,
    drift_phase_rad: float = 0.0,
    ref_phase: float | np.ndarray | None = None,
    dphi: np.ndarray | None = None,
    n_darks: int = 5,
    dark_level: float | np.ndarray = 100.0,
    read_noise: float = 2.0,
    noise: bool = True,
    fmt: str = "hdf5",
    dtype: str = "uint16",
    angles_deg: Sequence[float] | None = None,
    orientations_deg: Sequence[float] | None = None,
    beam: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    record_positions: bool = False,
    return_frames: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Simulate the raw phase-stepping frames of expected T and D stacks and write them with their layout.

    Args:
        out_dir: output folder (refused if it holds files, unless ``overwrite``); it gets
            ``layout.yaml``, the frames (``raw.h5``, or ``sample/``, ``flats/``, ``darks.tif``) and
            ``truth.npz``; written atomically.
        T: (N or 1, A, U, Z) expected transmission per orientation and angle.
        D: (N, A, U, Z) expected visibility ratio.
        v_ref: reference visibility, a number or a (U, Z) map.
        photons_per_pixel: N, expected open-beam counts per pixel over the M steps of one series.
        pixel_mm: detector pixel, mm (layout ``pixel_mm``).
        steps: M phase steps per series (>= 3).
        jitter_rad: std of the grating-position error of every frame, radians.
        dose_std: relative std of the dose of every frame.
        flat_every: a flat series before every ``flat_every``-th projection (and one after the
            last); None: before the first and after the last only.
        flat_photons_per_pixel: N of a flat series (default ``photons_per_pixel``).
        drift_a0: relative amplitude of the slow flux drift over the scan.
        drift_phase_rad: amplitude of the slow interferometer-phase drift over the scan, radians.
        ref_phase: reference phase map phi_r (U, Z) or a number, radians; None: one fringe across
            the detector columns (a moire).
        dphi: (N, A, U, Z) differential phase of the sample, radians (default 0).
        n_darks: dark frames (0: none).
        dark_level: dark offset, counts (a number or a (U, Z) map).
        read_noise: std of the detector read noise, counts.
        noise: False writes the expected frames (no Poisson or read noise; ``dtype`` float32 then).
        fmt: ``"hdf5"`` or ``"tiff"``.
        dtype: ``"uint16"`` (counts rounded, as detectors write them) or ``"float32"``.
        angles_deg: (A,) projection angles (default A equally spaced over [0, 180)).
        orientations_deg: (N,) grating orientations (default N equally spaced over [0, 180)).
        beam: the layout's ``beam`` block (default parallel).
        meta: more layout fields (``kvp``, ``filtration_mm``, ``visibility``, ``air_columns``,
            ``exposure_s``) and a free ``meta`` block, as the layout takes them.
        record_positions: also write each frame's true grating position (the jittered one, as an
            encoder would log it) as the layout's per-frame ``positions``.
        return_frames: also return the frames as written (float32, dfseg's axis order).
        seed: the random seed (the only source of randomness).
        overwrite: replace an ``out_dir`` that holds files.

    Returns:
        dict with ``layout`` (path of the layout file), ``truth`` (what ``truth.npz`` holds: ``T``,
        ``D`` (N, A, U, Z), ``v_ref``, ``photons_per_pixel``, ``flat_photons_per_pixel``,
        ``sample_phases`` (N, A, M) and ``flat_phases`` (N, F, M) grating phases x_k in radians,
        ``sample_dose``/``flat_dose`` g, ``sample_a0``/``flat_a0`` and ``sample_drift_phase``/
        ``flat_drift_phase`` (N, A) / (N, F) drift, ``ref_phase`` (U, Z), ``flat_indices`` (F,),
        ``dark_level``, ``read_noise``), and with ``return_frames`` ``frames``: ``sample``,
        ``flats``, ``darks``.

    Raises:
        InputError: bad stacks or settings, counts that overflow uint16.
    """
    if fmt not in FORMATS:
        raise InputError("fmt", f"expected {' or '.join(FORMATS)}, got {fmt!r}")
    if dtype not in _DTYPES:
        raise InputError("dtype", f"expected {' or '.join(_DTYPES)}, got {dtype!r}")
    if steps < 3:
        raise InputError("steps", f"need at least 3 phase steps, got {steps}")
    if not photons_per_pixel > 0:
        raise InputError("photons_per_pixel", f"must be positive, got {photons_per_pixel}")
    if min(jitter_rad, dose_std, drift_a0, read_noise) < 0 or n_darks < 0:
        raise InputError("write_raw_scan", "jitter_rad, dose_std, drift_a0, read_noise and n_darks must be >= 0")
    dtype = dtype if noise else "float32"
    t_all, d_all = _as_stack(T, "T"), _as_stack(D, "D")
    n_or, n_a, n_u, n_z = d_all.shape
    if t_all.shape[0] not in (1, n_or) or t_all.shape[1:] != d_all.shape[1:]:
        raise InputError("T", f"shape {t_all.shape} does not fit D {d_all.shape}")
    t_all = np.broadcast_to(t_all, d_all.shape)
    v = np.broadcast_to(np.asarray(v_ref, np.float64), (n_u, n_z))
    if not np.all((v > 0) & (v <= 1)):
        raise InputError("v_ref", "the reference visibility must be in (0, 1]")
    dphi_all = np.zeros((1, 1, 1, 1)) if dphi is None else np.broadcast_to(np.asarray(dphi, np.float64), d_all.shape)
    if ref_phase is None:
        ref_phase = np.broadcast_to(2 * np.pi * np.arange(n_u)[:, None] / n_u, (n_u, n_z))
    phi_r = np.broadcast_to(np.asarray(ref_phase, np.float64), (n_u, n_z))
    dark = np.broadcast_to(np.asarray(dark_level, np.float64), (n_u, n_z))
    angles = np.linspace(0.0, 180.0, n_a, endpoint=False) if angles_deg is None else np.asarray(angles_deg, np.float64)
    orients = (np.arange(n_or) * 180.0 / n_or) if orientations_deg is None else np.asarray(orientations_deg, np.float64)
    if angles.shape != (n_a,) or orients.shape != (n_or,):
        raise InputError("angles_deg", f"need {n_a} angles and {n_or} orientations for stacks of shape {d_all.shape}")
    if flat_every is not None and flat_every < 1:
        raise InputError("flat_every", f"must be >= 1, got {flat_every}")
    flat_idx = np.unique(np.r_[np.arange(0, n_a, flat_every or n_a), n_a]).astype(np.int64)
    n_f = flat_idx.size
    n_flat = float(photons_per_pixel if flat_photons_per_pixel is None else flat_photons_per_pixel)

    rng = np.random.default_rng(seed)
    nominal = 2 * np.pi * np.arange(steps) / steps
    s_phase = nominal + jitter_rad * rng.standard_normal((n_or, n_a, steps))
    f_phase = nominal + jitter_rad * rng.standard_normal((n_or, n_f, steps))
    s_dose = 1.0 + dose_std * rng.standard_normal((n_or, n_a, steps))
    f_dose = 1.0 + dose_std * rng.standard_normal((n_or, n_f, steps))
    psi_a0, psi_ph = rng.uniform(0, 2 * np.pi, 2)
    # scan time: orientation by orientation, angle by angle; flat i is taken before projection i
    tau_s = (np.arange(n_or)[:, None] * n_a + np.arange(n_a)[None]) / (n_or * n_a)
    tau_f = (np.arange(n_or)[:, None] * n_a + flat_idx[None]) / (n_or * n_a)
    s_a0, f_a0 = 1.0 + _drift(tau_s, drift_a0, psi_a0), 1.0 + _drift(tau_f, drift_a0, psi_a0)
    s_ph, f_ph = _drift(tau_s, drift_phase_rad, psi_ph), _drift(tau_f, drift_phase_rad, psi_ph)
    if np.any(s_dose <= 0) or np.any(f_dose <= 0) or np.any(s_a0 <= 0):
        raise InputError("dose_std", "a frame got a dose <= 0; use a smaller dose_std or drift_a0")

    truth = {"T": np.asarray(t_all, np.float32), "D": np.asarray(d_all, np.float32), "v_ref": v.astype(np.float32),
             "photons_per_pixel": float(photons_per_pixel), "flat_photons_per_pixel": n_flat,
             "sample_phases": s_phase, "flat_phases": f_phase, "sample_dose": s_dose, "flat_dose": f_dose,
             "sample_a0": s_a0, "flat_a0": f_a0, "sample_drift_phase": s_ph, "flat_drift_phase": f_ph,
             "ref_phase": phi_r.astype(np.float64), "flat_indices": flat_idx, "dark_level": dark.astype(np.float64),
             "read_noise": float(read_noise), "steps": int(steps), "seed": int(seed)}
    if dphi is not None:
        truth["dphi"] = np.asarray(dphi_all, np.float32)
    kept: dict[str, list[np.ndarray]] = {"sample": [], "flats": [], "darks": []}
    shapes = {"sample": (n_or, n_a, steps, n_z, n_u), "flats": (n_or, n_f, steps, n_z, n_u)}
    if n_darks:
        shapes["darks"] = (n_darks, n_z, n_u)

    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        writer = _Writer(tmp, fmt, shapes, dtype)
        try:
            if n_darks:
                darks = _cast(_frames(np.zeros((n_darks, n_u, n_z)), rng, noise=noise, dark_level=dark,
                                      read_noise=read_noise), dtype, "darks")
                writer.write("darks", None, darks)
                kept["darks"].append(darks)
            for o in range(n_or):
                arg = (s_phase[o, :, :, None, None] + s_ph[o, :, None, None, None] + phi_r
                       + dphi_all[min(o, dphi_all.shape[0] - 1)][:, None])  # (A, M, U, Z)
                scale = (photons_per_pixel / steps) * (s_dose[o] * s_a0[o][:, None])[..., None, None]
                lam = scale * t_all[o][:, None] * (1.0 + v * d_all[o][:, None] * np.cos(arg))
                sample = _cast(_frames(lam, rng, noise=noise, dark_level=dark, read_noise=read_noise), dtype,
                               "photons_per_pixel")
                writer.write("sample", o, sample)
                arg = f_phase[o, :, :, None, None] + f_ph[o, :, None, None, None] + phi_r  # (F, M, U, Z)
                scale = (n_flat / steps) * (f_dose[o] * f_a0[o][:, None])[..., None, None]
                flats = _cast(_frames(scale * (1.0 + v * np.cos(arg)), rng, noise=noise, dark_level=dark,
                                      read_noise=read_noise), dtype, "flat_photons_per_pixel")
                writer.write("flats", o, flats)
                if return_frames:
                    kept["sample"].append(sample)
                    kept["flats"].append(flats)
            roles = writer.roles()
            if record_positions:  # an encoder's log: nominal step plus the jitter, in grating periods
                roles["sample"]["positions"] = writer.positions("sample", s_phase / (2 * np.pi))
                roles["flats"]["positions"] = writer.positions("flats", f_phase / (2 * np.pi))
        finally:
            writer.close()
        layout: dict[str, Any] = {"format": fmt}
        if fmt == "hdf5":
            layout["file"] = _H5_NAME
        layout.update({
            "orientations_deg": [float(w) for w in orients],
            "angles_deg": ({"start": 0.0, "stop": 180.0, "count": n_a} if angles_deg is None
                           else [float(a) for a in angles]),
            "steps": int(steps),
            "step_positions": [float(k) / steps for k in range(steps)],
            "step_unit": "period",
            "pixel_mm": float(pixel_mm),
            "beam": dict(beam or {"type": "parallel"}),
            "sample": roles["sample"],
            "flats": {**roles["flats"], "indices": [int(i) for i in flat_idx]},
        })
        if n_darks:
            layout["darks"] = roles["darks"]
        layout.update(meta or {})
        with atomic_write(tmp / LAYOUT_NAME, "w") as fh:
            yaml.safe_dump(layout, fh, sort_keys=False, default_flow_style=None)
        with atomic_write(tmp / TRUTH_NAME) as fh:
            np.savez(fh, **truth)
        read_layout(tmp / LAYOUT_NAME)  # what was written must read back
    result: dict[str, Any] = {"layout": Path(out_dir) / LAYOUT_NAME, "truth": truth}
    if return_frames:
        result["frames"] = {
            "sample": np.stack(kept["sample"]).astype(np.float32),
            "flats": np.stack(kept["flats"]).astype(np.float32),
            "darks": kept["darks"][0].astype(np.float32) if kept["darks"] else None,
        }
    return result


def write_raw_ct(out_dir: str | os.PathLike, anatomy, config, *, seed: int = 0, fmt: str = "hdf5",
                 device: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Raw frames of a simulated parallel-beam CT of ``anatomy`` under ``config``.

    T and D come from :func:`dfseg.simulate.acquisition.expected_ct`; the counts per pixel
    (``config.counts_per_pixel`` at the voxel size), phase steps, orientations, angles, and the
    sidecar fields (kVp, filtration, visibility, air columns) from ``config``; ``flux_sigma``
    becomes the per-frame ``dose_std`` and ``drift_amplitude`` the flux drift ``drift_a0``.

    Args:
        out_dir: output folder (:func:`write_raw_scan`).
        anatomy: a :class:`dfseg.simulate.anatomy.Anatomy` (X = Y).
        config: an :class:`dfseg.simulate.acquisition.AcquisitionConfig` (``geometry="ct"``).
        seed: random seed of the frames.
        fmt: ``"hdf5"`` or ``"tiff"``.
        device: torch device of the projector.
        **kwargs: more :func:`write_raw_scan` arguments (override the ones derived from ``config``).

    Returns:
        :func:`write_raw_scan`'s result.
    """
    from dfseg.simulate.acquisition import expected_ct  # torch and the projector, only here

    if config.geometry != "ct":
        raise InputError("geometry", f"raw frames are simulated for CT only, got {config.geometry!r}")
    exp = expected_ct(anatomy, config, device=device)
    meta = {"kvp": float(config.kvp if config.monochromatic_kev is None else config.monochromatic_kev),
            "filtration_mm": {k: float(v) for k, v in dict(config.filtration_mm).items()},
            "visibility": {k: float(v) for k, v in dict(config.visibility).items()},
            "air_columns": int(config.air_columns)}
    args: dict[str, Any] = {
        "v_ref": exp["v_ref"], "photons_per_pixel": config.counts_per_pixel(anatomy.voxel_mm),
        "pixel_mm": float(anatomy.voxel_mm), "steps": int(config.phase_steps), "dose_std": float(config.flux_sigma),
        "drift_a0": float(config.drift_amplitude), "angles_deg": exp["angles_deg"],
        "orientations_deg": [float(w) for w in config.orientations_deg], "meta": meta, "noise": bool(config.noise),
    }
    args.update(kwargs)
    return write_raw_scan(out_dir, exp["T"], exp["D"], fmt=fmt, seed=seed, **args)
