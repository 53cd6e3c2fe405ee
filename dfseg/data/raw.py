"""A Talbot-Lau scanner's raw phase-stepping frames: the layout file and the reader.

A lab's scan is, per grating orientation (N, the sample rotated or tilted) and projection angle
(A), a phase-stepping series of M detector frames; reference (flat) stepping series taken every
so many projections (F series, each with the projection index it was taken before); and dark
frames. The files are described by a **layout file** (YAML, or JSON, which YAML reads too);
docs/raw_frames.md is its reference, with a complete example for each format. In short::

    format: hdf5                      # or tiff
    file: scan.h5                     # hdf5: the file (relative to the layout file's folder)
    orientations_deg: [0, 45, 90, 135]
    angles_deg: {start: 0, stop: 180, count: 360}     # or a list of degrees
    steps: 5                          # M; or step_positions: [0, 0.2, 0.4, 0.6, 0.8]
    step_unit: period                 # step_positions in grating periods, or um (needs grating_period_um)
    pixel_mm: 0.075                   # detector pixel
    beam: {type: parallel}            # or {type: cone, source_object_mm: .., source_detector_mm: .., cor_offset_px: ..}
    sample: {dataset: /sample, axes: orient angle step row col}
    flats:  {dataset: /flats, axes: orient flat step row col, indices: [0, 90, 180, 270, 359]}
    darks:  {dataset: /darks, axes: dark row col}
    kvp: 50                           # kvp, filtration_mm, visibility, air_columns, exposure_s: copied to meta
    meta: {operator: ...}             # anything else, copied to meta as it is

Each role (``sample``, ``flats``, ``darks``) names its data by ``file`` (a pattern with fields
``{orient}``, ``{angle}``, ``{step}``, ``{flat}``, ``{dark}``, Python format syntax, e.g.
``proj/o{orient}_a{angle:04d}_s{step}.tif``), for HDF5 also ``dataset`` (a path, may hold fields
too), and ``axes``: the axes inside one file (TIFF: the pages then ``row col``; a multi-page stack's
pages are split in C order, so ``angle step row col`` reads 360 x 5 pages) or one dataset (HDF5:
any order). The fields and the axes together must name every axis of the role, except ``orient``
(flats without it are shared by all orientations; a scan with one orientation needs none) and
``dark`` (one dark frame). ``first: {angle: 1}`` gives the number of the first file of a field.

Files are frames ``(row, col)``; dfseg's arrays are ``(U, Z)`` = (detector column, detector row).
:func:`read_layout` checks the layout; :func:`read_raw` reads the frames into a :class:`RawScan`
(all orientations, or those asked for; :func:`iter_orientations` yields them one at a time):
``sample`` (N, A, M, U, Z), ``flats`` (N, F, M, U, Z), ``darks`` (D, U, Z), float32. Every problem
(missing file, wrong frame shape, counts that disagree with the layout, non-numeric or non-finite
data) is one :class:`~dfseg.errors.InputError` line naming the file and the field.
"""

from __future__ import annotations

import itertools
import math
import os
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import yaml

from dfseg.errors import InputError

__all__ = ["BEAM_TYPES", "FORMATS", "ROLE_AXES", "RawLayout", "RawRole", "RawScan", "iter_orientations", "read_layout",
           "read_raw"]

FORMATS: tuple[str, ...] = ("hdf5", "tiff")
BEAM_TYPES: tuple[str, ...] = ("parallel", "cone")

#: The axes each role's frames are indexed by; ``row``/``col`` are the detector's.
ROLE_AXES: dict[str, tuple[str, ...]] = {
    "sample": ("orient", "angle", "step", "row", "col"),
    "flats": ("orient", "flat", "step", "row", "col"),
    "darks": ("dark", "row", "col"),
}
#: Axes a role may leave out (size 1, broadcast: flats shared by every orientation, one dark frame).
_OPTIONAL_AXES = {"sample": ("orient",), "flats": ("orient",), "darks": ("dark",)}

#: Layout fields copied into :attr:`RawScan.meta` as given (checked, not interpreted).
META_KEYS: tuple[str, ...] = ("kvp", "filtration_mm", "visibility", "air_columns", "exposure_s")
_TOP_KEYS = {"format", "file", "orientations_deg", "angles_deg", "steps", "step_positions", "step_unit",
             "grating_period_um", "pixel_mm", "beam", "sample", "flats", "darks", "meta", *META_KEYS}
_ROLE_KEYS = {"file", "dataset", "axes", "first", "positions"}
_ROLE_EXTRA = {"sample": set(), "flats": {"indices", "every"}, "darks": {"count"}}
_BEAM_KEYS = {"type", "source_object_mm", "source_detector_mm", "cor_offset_px"}


@dataclass(frozen=True)
class RawRole:
    """Where one role's frames are: a file pattern, an HDF5 dataset pattern, the axes inside.

    Attributes:
        file: file path pattern, absolute (the layout's folder joined to the layout's value).
        dataset: HDF5 dataset path pattern (None for TIFF).
        axes: axes inside one file (TIFF) or one dataset (HDF5), e.g. ``("step", "row", "col")``.
        fields: the axes named by fields of ``file`` / ``dataset``.
        first: number of the first file or dataset of a field (default 0).
        positions: per-frame step positions (``step_unit``): an array of the role's
            (orient?, angle|flat, step) shape, or None.
    """

    file: str
    dataset: str | None
    axes: tuple[str, ...]
    fields: tuple[str, ...]
    first: dict[str, int] = field(default_factory=dict)
    positions: np.ndarray | None = None


@dataclass(frozen=True)
class RawLayout:
    """A checked layout file (:func:`read_layout`).

    Attributes:
        path: the layout file.
        format: ``"hdf5"`` or ``"tiff"``.
        sample, flats, darks: where the frames are (``darks`` None: no dark frames).
        orientations_deg: (N,) grating orientations, degrees.
        angles_deg: (A,) projection angles, degrees.
        steps: M phase steps per series.
        step_phases: (M,) nominal step phases in radians (from ``step_positions``), or None.
        flat_indices: (F,) projection index each flat series was taken at.
        dark_count: D when the layout states it (``darks.count``), else None (read from the data).
        meta: the acquisition metadata for the sidecar.
        position_scale: radians per unit of step position (2 pi / period).
    """

    path: Path
    format: str
    sample: RawRole
    flats: RawRole
    darks: RawRole | None
    orientations_deg: np.ndarray
    angles_deg: np.ndarray
    steps: int
    step_phases: np.ndarray | None
    flat_indices: np.ndarray
    dark_count: int | None
    meta: dict[str, Any]
    position_scale: float = 2 * np.pi

    def sizes(self, role: str) -> dict[str, int | None]:
        """Known axis sizes of ``role`` (None: taken from the data)."""
        return {"orient": self.orientations_deg.size, "angle": self.angles_deg.size, "step": self.steps,
                "flat": self.flat_indices.size, "dark": self.dark_count, "row": None, "col": None}

    def role(self, name: str) -> RawRole | None:
        return {"sample": self.sample, "flats": self.flats, "darks": self.darks}[name]


@dataclass
class RawScan:
    """Raw phase-stepping frames of one scan, dfseg's axis order, float32 counts.

    Attributes:
        sample: (N, A, M, U, Z) sample stepping frames.
        flats: (N, F, M, U, Z) reference stepping frames; a read-only broadcast view over N when the
            lab's flats are shared by every orientation.
        flat_indices: (F,) projection index each flat series was taken at.
        darks: (D, U, Z) dark frames, or None.
        sample_phases: (N, A, M) step phases in radians (nominal ``step_positions`` broadcast, or
            the per-frame ``positions``), or None (the retrieval assumes 2 pi k / M).
        flat_phases: (N, F, M) the same for the flats, or None.
        angles_deg: (A,) projection angles, degrees.
        orientations_deg: (N,) grating orientations, degrees.
        meta: acquisition metadata for the sidecar (``orientations_deg``, ``pixel_mm``, ``beam``,
            ``phase_steps``, ``n_angles``, ``kvp``, ... as the layout gives them).
    """

    sample: np.ndarray
    flats: np.ndarray
    flat_indices: np.ndarray
    darks: np.ndarray | None
    sample_phases: np.ndarray | None
    flat_phases: np.ndarray | None
    angles_deg: np.ndarray
    orientations_deg: np.ndarray
    meta: dict[str, Any]


# --------------------------------------------------------------------------------------------- layout


class _Doc:
    """Field access on the layout document with one-line errors ``<layout>:<field>: problem``."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, key: str, problem: str) -> InputError:
        return InputError(f"{self.path}:{key}", problem)

    def mapping(self, value: Any, key: str, known: set[str]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(map(str, value)) - known)
        if unknown:
            raise self.error(key, f"unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return dict(value)

    def number(self, value: Any, key: str, *, positive: bool = False, minimum: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value!r}")
        if positive and not value > 0:
            raise self.error(key, f"must be > 0, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum:g}, got {value!r}")
        return float(value)

    def integer(self, value: Any, key: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}")
        return int(value)

    def numbers(self, value: Any, key: str) -> np.ndarray:
        if not isinstance(value, (list, tuple)) or not value:
            raise self.error(key, f"expected a non-empty list of numbers, got {value!r}")
        return np.asarray([self.number(v, f"{key}[{i}]") for i, v in enumerate(value)], np.float64)


def _load_document(path: Path) -> Any:
    if not path.is_file():
        raise InputError(path, "layout file not found")
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read layout file ({type(err).__name__})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(path, f"not valid YAML/JSON{at}: {problem}") from None


def _pattern_fields(doc: _Doc, pattern: str, key: str, allowed: tuple[str, ...]) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as err:
        raise doc.error(key, f"bad pattern {pattern!r}: {err}") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name not in allowed:
            raise doc.error(key, f"pattern field {{{name}}} is not one of {', '.join(allowed[:-2])}")
        if name not in names:
            names.append(name)
    return names


def _read_positions(doc: _Doc, value: Any, key: str, fmt: str, root: Path, role_file: str) -> np.ndarray:
    """Per-frame step positions: an inline nested list, a ``.npy`` file (TIFF) or an HDF5 dataset path."""
    if isinstance(value, list):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise doc.error(key, "expected a (nested) list of numbers") from None
    elif isinstance(value, str) and fmt == "hdf5":
        h5py = _h5py()
        file = Path(role_file)
        if not file.is_file():
            raise InputError(file, f"file not found ({doc.path.name}:{key})")
        with h5py.File(file, "r") as fh:
            node = fh.get(value)
            if not isinstance(node, h5py.Dataset):
                raise InputError(f"{file}:{value}", f"no such dataset ({doc.path.name}:{key})")
            arr = np.asarray(node[()])
    elif isinstance(value, str):
        file = root / value
        try:
            arr = np.load(file, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(file, f"file not found ({doc.path.name}:{key})") from None
        except (OSError, ValueError) as err:
            raise InputError(file, f"cannot read step positions ({type(err).__name__}; {doc.path.name}:{key})") from None
    else:
        raise doc.error(key, f"expected a list of numbers or a file/dataset name, got {value!r}")
    if arr.dtype.kind not in "iuf" or not np.all(np.isfinite(arr)):
        raise doc.error(key, "step positions must be finite numbers")
    return arr.astype(np.float64)


def _role(doc: _Doc, raw: Any, name: str, fmt: str, root: Path, default_file: str | None,
          sizes: dict[str, int | None]) -> RawRole:
    """Check one role block (its extra fields, flats' indices and darks' count, are read by the caller)."""
    block = doc.mapping(raw, name, _ROLE_KEYS | _ROLE_EXTRA[name])
    allowed = ROLE_AXES[name]
    file = block.get("file", default_file if fmt == "hdf5" else None)
    if not isinstance(file, str) or not file:
        raise doc.error(f"{name}.file", "give the file (pattern) of these frames" if fmt == "tiff"
                        else "give the HDF5 file, here or as the top-level file")
    fields = _pattern_fields(doc, file, f"{name}.file", allowed)
    dataset = None
    if fmt == "hdf5":
        dataset = block.get("dataset")
        if not isinstance(dataset, str) or not dataset:
            raise doc.error(f"{name}.dataset", "give the HDF5 dataset path of these frames")
        fields += [f for f in _pattern_fields(doc, dataset, f"{name}.dataset", allowed) if f not in fields]
    elif "dataset" in block:
        raise doc.error(f"{name}.dataset", "only HDF5 layouts name datasets")
    if "row" in fields or "col" in fields:
        raise doc.error(f"{name}.file", "row and col are the frame's axes, not file fields")
    axes_text = block.get("axes", "row col")
    if isinstance(axes_text, list) and all(isinstance(a, str) for a in axes_text):
        axes_text = " ".join(axes_text)
    if not isinstance(axes_text, str):
        raise doc.error(f"{name}.axes", f"expected axis names separated by spaces, got {axes_text!r}")
    axes = tuple(axes_text.split())
    for a in axes:
        if a not in allowed:
            raise doc.error(f"{name}.axes", f"unknown axis {a!r}; {name} axes are {' '.join(allowed)}")
    if len(set(axes)) != len(axes):
        raise doc.error(f"{name}.axes", f"an axis is named twice in {axes_text!r}")
    both = sorted(set(axes) & set(fields))
    if both:
        raise doc.error(f"{name}.axes", f"{both[0]} is both a file field and an axis inside the file")
    if "row" not in axes or "col" not in axes:
        raise doc.error(f"{name}.axes", "the axes inside a file must include row and col")
    if fmt == "tiff" and axes[-2:] != ("row", "col"):
        raise doc.error(f"{name}.axes", f"a TIFF file's axes end with 'row col' (pages first), got {axes_text!r}")
    missing = [a for a in allowed if a not in axes and a not in fields
               and not (a in _OPTIONAL_AXES[name] or (a == "orient" and sizes["orient"] == 1))]
    if missing:
        raise doc.error(name, f"no file field or axis for {missing[0]!r}: name it in file/dataset or axes")
    for a in fields:
        if sizes[a] is None:
            raise doc.error(f"{name}.count", f"the number of {a} files is not known; give {name}.count")
    first = {}
    if "first" in block:
        first_block = doc.mapping(block["first"], f"{name}.first", set(fields))
        first = {k: doc.integer(v, f"{name}.first.{k}") for k, v in first_block.items()}
    positions = None
    if "positions" in block:
        if name == "darks":
            raise doc.error("darks.positions", "dark frames have no step positions")
        ref_file = str(root / file) if not fields else ""
        if fmt == "hdf5" and isinstance(block["positions"], str) and not ref_file:
            raise doc.error(f"{name}.positions", "a positions dataset needs a file without pattern fields")
        positions = _read_positions(doc, block["positions"], f"{name}.positions", fmt, root, ref_file)
        index_axis = "angle" if name == "sample" else "flat"
        full = (sizes["orient"], sizes[index_axis], sizes["step"])
        try:
            np.broadcast_to(positions, full)
        except ValueError:
            raise doc.error(f"{name}.positions", f"shape {positions.shape} does not fit (orient, {index_axis}, step)"
                                                 f" = {full}") from None
    return RawRole(file=str(root / file), dataset=dataset, axes=axes, fields=tuple(fields), first=first,
                   positions=positions)


def _angles(doc: _Doc, value: Any) -> np.ndarray:
    if isinstance(value, Mapping):
        block = doc.mapping(value, "angles_deg", {"start", "stop", "count", "endpoint"})
        for k in ("start", "stop", "count"):
            if k not in block:
                raise doc.error(f"angles_deg.{k}", "missing (give start, stop and count, or a list)")
        count = doc.integer(block["count"], "angles_deg.count", minimum=1)
        endpoint = block.get("endpoint", False)
        if not isinstance(endpoint, bool):
            raise doc.error("angles_deg.endpoint", f"expected true or false, got {endpoint!r}")
        return np.linspace(doc.number(block["start"], "angles_deg.start"), doc.number(block["stop"], "angles_deg.stop"),
                           count, endpoint=endpoint)
    return doc.numbers(value, "angles_deg")


def _beam(doc: _Doc, value: Any) -> dict[str, Any]:
    block = doc.mapping(value, "beam", _BEAM_KEYS)
    kind = block.get("type", "parallel")
    if kind not in BEAM_TYPES:
        raise doc.error("beam.type", f"unknown beam {kind!r}; choose {' or '.join(BEAM_TYPES)}")
    out: dict[str, Any] = {"type": kind}
    for k in ("source_object_mm", "source_detector_mm"):
        if k in block:
            out[k] = doc.number(block[k], f"beam.{k}", positive=True)
        elif kind == "cone":
            raise doc.error(f"beam.{k}", "a cone beam needs source_object_mm and source_detector_mm")
    if kind == "cone" and not out["source_detector_mm"] > out["source_object_mm"]:
        raise doc.error("beam.source_detector_mm", "must be larger than source_object_mm")
    if "cor_offset_px" in block:
        out["cor_offset_px"] = doc.number(block["cor_offset_px"], "beam.cor_offset_px")
    return out


def _meta_value(doc: _Doc, key: str, value: Any) -> Any:
    if key == "kvp":
        return doc.number(value, key, positive=True)
    if key == "exposure_s":
        return doc.number(value, key, positive=True)
    if key == "air_columns":
        return doc.integer(value, key)
    if key == "filtration_mm":
        block = doc.mapping(value, key, set(map(str, value)) if isinstance(value, Mapping) else set())
        return {str(m): doc.number(v, f"{key}.{m}", minimum=0) for m, v in block.items()}
    if key == "visibility":  # the reference visibility, or the sidecar's visibility-spectrum parameters
        if isinstance(value, Mapping):
            return {str(k): doc.number(v, f"{key}.{k}") for k, v in value.items()}
        v = doc.number(value, key, positive=True)
        if v > 1:
            raise doc.error(key, f"a visibility is at most 1, got {v!r}")
        return v
    raise AssertionError(key)


def read_layout(path: str | os.PathLike) -> RawLayout:
    """Read and check a raw-frame layout file (module docstring, docs/raw_frames.md).

    Args:
        path: the layout file (YAML or JSON); file names in it are relative to its folder.

    Returns:
        the checked :class:`RawLayout`. Only the layout (and a positions file it names) is read.

    Raises:
        InputError: one line ``<layout>:<field>: <problem>`` for each kind of mistake.
    """
    path = Path(path)
    doc = _Doc(path)
    top = doc.mapping(_load_document(path), "(top level)", _TOP_KEYS)
    root = path.parent
    fmt = top.get("format")
    if fmt not in FORMATS:
        raise doc.error("format", f"expected {' or '.join(FORMATS)}, got {fmt!r}")
    orientations = doc.numbers(top.get("orientations_deg", [0.0]), "orientations_deg")
    if "angles_deg" not in top:
        raise doc.error("angles_deg", "missing: give a list of degrees or {start, stop, count}")
    angles = _angles(doc, top["angles_deg"])
    unit = top.get("step_unit", "period")
    if unit not in ("period", "um"):
        raise doc.error("step_unit", f"expected period or um, got {unit!r}")
    period = None
    if unit == "um" or "grating_period_um" in top:
        if "grating_period_um" not in top:
            raise doc.error("grating_period_um", "step positions in um need the grating period in um")
        period = doc.number(top["grating_period_um"], "grating_period_um", positive=True)
    scale = 2 * np.pi / (period if unit == "um" else 1.0)
    step_phases = None
    if "step_positions" in top:
        step_phases = doc.numbers(top["step_positions"], "step_positions") * scale
    if "steps" in top:
        steps = doc.integer(top["steps"], "steps", minimum=3)
        if step_phases is not None and step_phases.size != steps:
            raise doc.error("step_positions", f"{step_phases.size} positions for {steps} steps")
    elif step_phases is not None:
        steps = step_phases.size
        if steps < 3:
            raise doc.error("step_positions", f"need at least 3 phase steps, got {steps}")
    else:
        raise doc.error("steps", "missing: give steps (phase steps per series) or step_positions")
    if "pixel_mm" not in top:
        raise doc.error("pixel_mm", "missing: give the detector pixel size in mm")
    pixel = doc.number(top["pixel_mm"], "pixel_mm", positive=True)
    beam = _beam(doc, top.get("beam", {"type": "parallel"}))
    default_file = top.get("file")
    if default_file is not None and (fmt != "hdf5" or not isinstance(default_file, str) or not default_file):
        raise doc.error("file", "the top-level file is an HDF5 layout's file name" if fmt != "hdf5"
                        else f"expected a file name, got {default_file!r}")
    n_angles = angles.size

    # flats first need their indices (F) to know the role sizes
    for role_name in ("sample", "flats"):
        if role_name not in top:
            raise doc.error(role_name, f"missing: say where the {role_name} frames are")
    flats_block = doc.mapping(top["flats"], "flats", _ROLE_KEYS | _ROLE_EXTRA["flats"])
    if "indices" in flats_block and "every" in flats_block:
        raise doc.error("flats", "give indices or every, not both")
    if "indices" in flats_block:
        idx = flats_block["indices"]
        if not isinstance(idx, list) or not idx:
            raise doc.error("flats.indices", f"expected a non-empty list of projection indices, got {idx!r}")
        flat_indices = np.asarray([doc.integer(v, f"flats.indices[{i}]") for i, v in enumerate(idx)], np.int64)
        bad = flat_indices[flat_indices > n_angles]
        if bad.size:
            raise doc.error("flats.indices", f"index {int(bad[0])} is past the last projection ({n_angles} angles)")
        if np.any(np.diff(flat_indices) <= 0):
            raise doc.error("flats.indices", "indices must increase strictly (acquisition order, one series each)")
    elif "every" in flats_block:
        every = doc.integer(flats_block["every"], "flats.every", minimum=1)
        flat_indices = np.arange(0, n_angles, every, dtype=np.int64)
    else:
        raise doc.error("flats.indices", "missing: give the projection index of each flat series (or every)")
    dark_count = None
    if isinstance(top.get("darks"), Mapping) and "count" in top["darks"]:
        dark_count = doc.integer(top["darks"]["count"], "darks.count", minimum=1)
    sizes = {"orient": orientations.size, "angle": n_angles, "step": steps, "flat": flat_indices.size,
             "dark": dark_count, "row": None, "col": None}
    sample = _role(doc, top["sample"], "sample", fmt, root, default_file, sizes)
    flats = _role(doc, top["flats"], "flats", fmt, root, default_file, sizes)
    darks = None
    if top.get("darks") is not None:
        darks = _role(doc, top["darks"], "darks", fmt, root, default_file, sizes)

    meta: dict[str, Any] = {"orientations_deg": [float(w) for w in orientations], "pixel_mm": pixel, "beam": beam,
                            "phase_steps": steps, "n_angles": int(n_angles), "raw_layout": str(path)}
    if period is not None:
        meta["grating_period_um"] = period
    for key in META_KEYS:
        if key in top:
            meta[key] = _meta_value(doc, key, top[key])
    free = top.get("meta", {})
    if not isinstance(free, Mapping):
        raise doc.error("meta", f"expected a mapping, got {type(free).__name__}")
    clash = sorted(set(map(str, free)) & set(meta))
    if clash:
        raise doc.error(f"meta.{clash[0]}", "is a layout field; give it at the top level")
    meta.update({str(k): v for k, v in free.items()})
    return RawLayout(path=path, format=fmt, sample=sample, flats=flats, darks=darks, orientations_deg=orientations,
                     angles_deg=angles, steps=steps, step_phases=step_phases, flat_indices=flat_indices,
                     dark_count=dark_count, meta=meta, position_scale=float(scale))


# --------------------------------------------------------------------------------------------- frames


def _h5py():
    import h5py  # on use: only HDF5 layouts need it

    return h5py


_AXIS_WORDS = {"orient": "orientations", "angle": "angles", "step": "phase steps", "flat": "flat series",
               "dark": "dark frames", "row": "rows", "col": "columns"}
_SIZE_SOURCE = {"orient": "orientations_deg", "angle": "angles_deg", "step": "steps", "flat": "flats.indices",
                "dark": "darks.count"}


class _Target:
    """The output array of one role and the rules every chunk read into it must satisfy."""

    def __init__(self, layout: RawLayout, name: str, orient_sel: np.ndarray, frame: list[int | None]):
        self.layout, self.name = layout, name
        self.role = layout.role(name)
        self.orient_sel = orient_sel  # orientation indices read (into the layout's list)
        sizes = layout.sizes(name)
        present = set(self.role.axes) | set(self.role.fields)
        # canonical axes of the output, before the final (row, col) -> (U, Z) swap
        self.axes = [a for a in ROLE_AXES[name] if a not in ("row", "col")]
        self.sizes = {a: (sizes[a] if a in present else 1) for a in self.axes}
        if "orient" in self.sizes and "orient" in present:
            self.sizes["orient"] = orient_sel.size
        self.frame = frame  # [rows, cols], shared by every role: set by the first chunk read
        self.out: np.ndarray | None = None

    def expect(self, axis: str) -> int | None:
        return self.frame[0] if axis == "row" else self.frame[1] if axis == "col" else self.sizes.get(axis)

    def check_shape(self, where: str, axes: Sequence[str], shape: Sequence[int]) -> None:
        """Refuse a chunk whose frame or axis sizes disagree with the layout (or the first frame)."""
        if self.frame[0] is None:
            self.frame[0], self.frame[1] = int(shape[axes.index("row")]), int(shape[axes.index("col")])
        for a, n in zip(axes, shape):
            want = self.layout.sizes(self.name)[a] if a not in ("row", "col") else self.expect(a)
            if a == "dark" and want is None:
                self.sizes["dark"] = want = int(n) if self.out is None else self.sizes["dark"]
            if int(n) != want:
                if a in ("row", "col"):
                    got = f"{shape[axes.index('row')]} x {shape[axes.index('col')]}"
                    raise InputError(where, f"{self.name} frame is {got} (rows x cols), expected "
                                            f"{self.frame[0]} x {self.frame[1]} like the first frame read")
                raise InputError(where, f"holds {n} {_AXIS_WORDS[a]}, the layout has {want} "
                                        f"({self.layout.path.name}:{_SIZE_SOURCE[a]})")

    def put(self, where: str, index: dict[str, int], axes: Sequence[str], data: np.ndarray) -> None:
        """Write one chunk (axes ``axes``; the other output axes fixed by ``index``) into the output."""
        if data.dtype.kind not in "iuf":
            raise InputError(where, f"holds {data.dtype} data, expected numbers (integer or float frames)")
        if data.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(data)))
            if bad:
                raise InputError(where, f"holds {bad} NaN/Inf values in {self.name} frames")
        if self.out is None:
            shape = [self.sizes[a] for a in self.axes] + [self.frame[1], self.frame[0]]
            self.out = np.empty(shape, np.float32)
        order = [a for a in [*self.axes, "col", "row"] if a in axes]
        sel = tuple(slice(None) if a in axes else index.get(a, 0) for a in [*self.axes, "col", "row"])
        self.out[sel] = np.transpose(data, [list(axes).index(a) for a in order])


def _combos(target: _Target) -> Iterator[dict[str, int]]:
    """Every combination of file-field values of the role (orientations restricted to those read)."""
    fields = target.role.fields
    ranges = []
    for f in fields:
        ranges.append(range(target.orient_sel.size) if f == "orient" else range(target.layout.sizes(target.name)[f]))
    for values in itertools.product(*ranges):
        yield dict(zip(fields, values))


def _format(target: _Target, pattern: str, index: dict[str, int]) -> str:
    numbers = {}
    for f, i in index.items():
        n = int(target.orient_sel[i]) if f == "orient" else i
        numbers[f] = n + target.role.first.get(f, 0)
    return pattern.format(**numbers)


def _check_no_extra_file(target: _Target) -> None:
    """A pattern field whose next number also names a file: the layout lists fewer than the lab wrote."""
    for f in target.role.fields:
        if f == "orient" and target.orient_sel.size != target.layout.orientations_deg.size:
            continue
        count = target.layout.sizes(target.name)[f]
        numbers = {g: target.role.first.get(g, 0) for g in target.role.fields}
        numbers[f] += count
        path = Path(target.role.file.format(**numbers))
        if path.is_file():
            raise InputError(path, f"exists, but the layout has only {count} {_AXIS_WORDS[f]} "
                                   f"({target.layout.path.name}:{_SIZE_SOURCE[f]})")


def _read_tiff_role(target: _Target) -> None:
    role = target.role
    axes = list(role.axes)
    for index in _combos(target):
        path = Path(_format(target, role.file, index))
        where = str(path)
        if not path.is_file():
            what = ", ".join(f"{k} {v}" for k, v in index.items())
            raise InputError(path, f"file not found ({target.name} frames{' ' + what if what else ''}; "
                                   f"{target.layout.path.name}:{target.name}.file)")
        try:
            with tifffile.TiffFile(str(path)) as tif:
                data = tif.series[0].asarray()
        except (OSError, ValueError, IndexError, KeyError, tifffile.TiffFileError) as err:
            raise InputError(path, f"cannot read TIFF ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
        if data.ndim < 2:
            raise InputError(path, f"holds a {data.ndim}-D array, expected frames (row, col)")
        # pages (any leading dimensions, C order) split into the declared axes before (row, col)
        lead = axes[:-2]
        pages = int(np.prod(data.shape[:-2], dtype=np.int64))
        want = [target.layout.sizes(target.name)[a] for a in lead]
        if None in want:  # the one axis of unknown size (dark) takes the pages left
            known = int(np.prod([w for w in want if w is not None], dtype=np.int64))
            want[want.index(None)] = pages // known if known and pages % known == 0 else -1
        if pages != int(np.prod(want, dtype=np.int64)):
            need = " x ".join(f"{w} {_AXIS_WORDS[a]}" for a, w in zip(lead, want)) or "1 frame"
            raise InputError(path, f"holds {pages} frames, the layout's axes '{' '.join(axes)}' need {need} "
                                   f"({target.layout.path.name}:{target.name}.axes)")
        data = data.reshape(*want, *data.shape[-2:])
        target.check_shape(where, axes, data.shape)
        if "orient" in axes and target.orient_sel.size != target.layout.orientations_deg.size:
            data = np.take(data, target.orient_sel, axis=axes.index("orient"))
        target.put(where, index, axes, data)
    _check_no_extra_file(target)


def _read_hdf5_role(target: _Target) -> None:
    h5py = _h5py()
    role = target.role
    axes = list(role.axes)
    open_files: dict[str, Any] = {}
    try:
        for index in _combos(target):
            file = Path(_format(target, role.file, index))
            name = _format(target, role.dataset, index)
            where = f"{file}:{name}"
            if str(file) not in open_files:
                if not file.is_file():
                    raise InputError(file, f"file not found ({target.layout.path.name}:{target.name}.file)")
                try:
                    open_files[str(file)] = h5py.File(file, "r")
                except OSError as err:
                    raise InputError(file, f"cannot read HDF5 file ({str(err).splitlines()[0][:120]})") from None
            node = open_files[str(file)].get(name)
            if not isinstance(node, h5py.Dataset):
                raise InputError(where, f"no such dataset ({target.layout.path.name}:{target.name}.dataset)")
            if node.ndim != len(axes):
                raise InputError(where, f"dataset of shape {node.shape} has {node.ndim} axes, the layout's axes "
                                        f"'{' '.join(axes)}' name {len(axes)} ({target.layout.path.name}:"
                                        f"{target.name}.axes)")
            if node.dtype.kind not in "iuf":
                raise InputError(where, f"holds {node.dtype} data, expected numbers (integer or float frames)")
            target.check_shape(where, axes, node.shape)
            if "orient" in axes:  # one orientation at a time: memory O(one orientation) besides the output
                k = axes.index("orient")
                inner = [a for a in axes if a != "orient"]
                for i, o in enumerate(target.orient_sel):
                    sel = tuple(int(o) if j == k else slice(None) for j in range(len(axes)))
                    target.put(where, {**index, "orient": i}, inner, node[sel])
            else:
                target.put(where, index, axes, node[()])
    finally:
        for fh in open_files.values():
            fh.close()


def _phases(layout: RawLayout, name: str, orient_sel: np.ndarray) -> np.ndarray | None:
    """Step phases (orientations read, angle|flat, step) in radians, or None when the layout gives no positions."""
    role = layout.role(name)
    n_idx = layout.angles_deg.size if name == "sample" else layout.flat_indices.size
    if role.positions is not None:
        full = (layout.orientations_deg.size, n_idx, layout.steps)
        return np.broadcast_to(role.positions, full)[orient_sel] * layout.position_scale
    if layout.step_phases is None:
        return None
    return np.broadcast_to(layout.step_phases, (orient_sel.size, n_idx, layout.steps))


def read_raw(layout: RawLayout | str | os.PathLike, *, orientations: Sequence[int] | None = None) -> RawScan:
    """Read the frames a layout describes, in dfseg's axis order.

    Args:
        layout: a :class:`RawLayout` or the path of a layout file.
        orientations: indices of the orientations to read (default all): a caller short of memory
            reads one orientation at a time.

    Returns:
        the :class:`RawScan`; arrays are filled in place as the files are read (one float32 copy
        of the frames; HDF5 datasets are read one orientation at a time).

    Raises:
        InputError: a missing file or dataset, a frame of another shape, counts that disagree with the
            layout, non-numeric or non-finite data; one line naming the file.
    """
    if not isinstance(layout, RawLayout):
        layout = read_layout(layout)
    n_or = layout.orientations_deg.size
    sel = np.arange(n_or) if orientations is None else np.asarray(list(orientations), dtype=np.int64)
    if sel.ndim != 1 or sel.size == 0 or np.any((sel < 0) | (sel >= n_or)):
        raise InputError("orientations", f"expected indices into the layout's {n_or} orientations, got {orientations!r}")
    reader = _read_hdf5_role if layout.format == "hdf5" else _read_tiff_role
    frame: list[int | None] = [None, None]
    arrays = {}
    for name in ("sample", "flats", "darks"):
        if layout.role(name) is None:
            continue
        target = _Target(layout, name, sel, frame)
        reader(target)
        arrays[name] = target.out
    flats = arrays["flats"]
    if flats.shape[0] != sel.size:  # flats shared by every orientation
        flats = np.broadcast_to(flats, (sel.size, *flats.shape[1:]))
    meta = dict(layout.meta)
    meta["orientations_deg"] = [float(layout.orientations_deg[i]) for i in sel]
    return RawScan(sample=arrays["sample"], flats=flats, flat_indices=layout.flat_indices.copy(),
                   darks=arrays.get("darks"), sample_phases=_phases(layout, "sample", sel),
                   flat_phases=_phases(layout, "flats", sel), angles_deg=layout.angles_deg.copy(),
                   orientations_deg=layout.orientations_deg[sel].copy(), meta=meta)


def iter_orientations(layout: RawLayout | str | os.PathLike) -> Iterator[RawScan]:
    """The scan one orientation at a time: :func:`read_raw` with ``orientations=[i]`` for each i in turn.

    Memory stays that of one orientation's frames (and the flats); each item's arrays have N = 1.
    """
    if not isinstance(layout, RawLayout):
        layout = read_layout(layout)
    for i in range(layout.orientations_deg.size):
        yield read_raw(layout, orientations=[i])
