"""Scan geometry: parallel or circular cone beam, any angle list, detector pixel and centre of rotation.

The frame is the one of docs/ARCHITECTURE.md: volumes ``(X, Y, Z)`` with voxel centres at
``(i - (n-1)/2) * voxel_mm``, Z the rotation axis; at angle t the central ray travels along
``d(t) = (cos t, sin t, 0)`` and detector columns run along ``e(t) = (-sin t, cos t, 0)``, rows
along z. Projection stacks are ``(..., A, U, V)`` (V detector rows; ``(N, A, U, Z)`` in the
transforms).

* Parallel beam: the ray of detector pixel (k, j) passes through ``u e(t) + v z``.
* Cone beam: the source sits at ``-source_object_mm * d(t)``, the flat detector at
  ``source_detector_mm - source_object_mm`` beyond the axis, perpendicular to ``d(t)``; the ray of
  pixel (k, j) runs from the source to ``(SD - SO) d(t) + u e(t) + v z``. Magnification
  ``SD / SO``.

Detector coordinates (mm on the detector): ``u = (k - (U-1)/2 - cor_offset_px) * du``,
``v = (j - (V-1)/2) * dv``. So ``cor_offset_px`` is where the rotation axis projects, in detector
pixels right of the detector centre (the detector is shifted in its own plane; the source stays on
the perpendicular through the axis).

In files (the ``geometry`` block of sidecar.json) angles are in degrees; inside ``tomo`` radians.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dfseg.errors import InputError

__all__ = ["GEOMETRY_KINDS", "Geometry", "angle_weights", "detector_rays"]

GEOMETRY_KINDS = ("parallel", "cone")

_FIELDS = ("kind", "angles_deg", "scan_deg", "source_object_mm", "source_detector_mm", "detector_pixel_mm",
           "cor_offset_px", "detector_shape")


def _where(name: str) -> str:
    return f"geometry.{name}"


def _positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(_where(name), f"expected a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(_where(name), f"must be a positive finite number, got {value!r}")
    return v


@dataclass(frozen=True)
class Geometry:
    """Acquisition geometry of a projection stack; the default is dfseg's parallel beam.

    Args:
        kind: ``"parallel"`` or ``"cone"`` (circular orbit, flat detector).
        angles_deg: projection angles in degrees, any order and spacing (180 or 360 degree scans,
            short scans); ``None``: the A angles of the data evenly over ``[0, scan_deg)``.
        scan_deg: arc of the evenly spaced default angles (180 or 360), degrees.
        source_object_mm: cone: source to rotation axis distance (SO), mm.
        source_detector_mm: cone: source to detector distance (SD > SO), mm.
        detector_pixel_mm: detector pixel pitch ``(du, dv)`` in mm on the detector (one number:
            square pixels); ``None``: the voxel size times the magnification (a detector pixel
            seen at the axis is one voxel).
        cor_offset_px: column where the rotation axis projects, in detector pixels right of the
            detector centre ``(U-1)/2``.
        detector_shape: ``(U, V)`` detector columns and rows; ``None``: taken from the data.

    Raises:
        InputError: a field is out of range or inconsistent (``geometry.<field>: ...``).
    """

    kind: str = "parallel"
    angles_deg: tuple[float, ...] | None = None
    scan_deg: float = 180.0
    source_object_mm: float | None = None
    source_detector_mm: float | None = None
    detector_pixel_mm: tuple[float, float] | None = None
    cor_offset_px: float = 0.0
    detector_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        def set_(name: str, value: Any) -> None:  # frozen: normalise fields in place
            object.__setattr__(self, name, value)

        if self.kind not in GEOMETRY_KINDS:
            raise InputError(_where("kind"), f"unknown geometry {self.kind!r}; choose {' or '.join(GEOMETRY_KINDS)}")
        if self.angles_deg is not None:
            try:
                a = np.asarray(self.angles_deg, dtype=np.float64).ravel()
            except (TypeError, ValueError):
                raise InputError(_where("angles_deg"), "expected a list of numbers (degrees)") from None
            if a.size == 0 or not np.all(np.isfinite(a)):
                raise InputError(_where("angles_deg"), "expected a non-empty list of finite angles in degrees")
            set_("angles_deg", tuple(float(x) for x in a))
        set_("scan_deg", _positive("scan_deg", self.scan_deg))
        if self.scan_deg > 360:
            raise InputError(_where("scan_deg"), f"at most 360 degrees, got {self.scan_deg:g}")
        if self.kind == "cone":
            if self.source_object_mm is None or self.source_detector_mm is None:
                raise InputError(_where("kind"), "cone beam needs source_object_mm and source_detector_mm")
            so = _positive("source_object_mm", self.source_object_mm)
            sd = _positive("source_detector_mm", self.source_detector_mm)
            if sd <= so:
                raise InputError(_where("source_detector_mm"),
                                 f"the detector must lie beyond the axis: {sd:g} <= source_object_mm {so:g}")
            set_("source_object_mm", so)
            set_("source_detector_mm", sd)
        else:
            for name in ("source_object_mm", "source_detector_mm"):
                if getattr(self, name) is not None:
                    raise InputError(_where(name), "only for kind 'cone'; a parallel beam has no source distance")
        if self.detector_pixel_mm is not None:
            p = self.detector_pixel_mm
            pair = (p, p) if np.ndim(p) == 0 else tuple(p)
            if len(pair) != 2:
                raise InputError(_where("detector_pixel_mm"), f"expected one number or (du, dv), got {p!r}")
            set_("detector_pixel_mm", tuple(_positive("detector_pixel_mm", x) for x in pair))
        try:
            cor = float(self.cor_offset_px)
        except (TypeError, ValueError):
            raise InputError(_where("cor_offset_px"), f"expected a number, got {self.cor_offset_px!r}") from None
        if not math.isfinite(cor):
            raise InputError(_where("cor_offset_px"), f"must be finite, got {self.cor_offset_px!r}")
        set_("cor_offset_px", cor)
        if self.detector_shape is not None:
            s = tuple(self.detector_shape)
            if len(s) != 2 or not all(isinstance(x, int | np.integer) and x >= 1 for x in s):
                raise InputError(_where("detector_shape"), f"expected (U, V) positive integers, got {self.detector_shape!r}")
            set_("detector_shape", (int(s[0]), int(s[1])))

    # ------------------------------------------------------------------ sidecar

    @classmethod
    def from_meta(cls, meta: Geometry | Mapping[str, Any] | str | None) -> Geometry:
        """A geometry from a sidecar ``geometry`` block (or a Geometry, returned as is).

        ``None`` and the string ``"ct"`` (the simulator's scan type) give the default parallel
        geometry; a mapping is read field by field (see the class arguments) and unknown keys are
        an error.
        """
        if isinstance(meta, Geometry):
            return meta
        if meta is None or (isinstance(meta, str) and meta == "ct"):
            return cls()
        if isinstance(meta, str):
            raise InputError("geometry", f"{meta!r} scans have no reconstruction geometry; "
                                         "give a geometry block ({'kind': 'parallel' | 'cone', ...}) or 'ct'")
        if not isinstance(meta, Mapping):
            raise InputError("geometry", f"expected a mapping, got {type(meta).__name__}")
        unknown = sorted(set(meta) - set(_FIELDS))
        if unknown:
            raise InputError("geometry", f"unknown field(s) {', '.join(map(str, unknown))}; known: {', '.join(_FIELDS)}")
        kwargs = {k: v for k, v in meta.items() if v is not None}
        for k in ("angles_deg", "detector_pixel_mm", "detector_shape"):
            if isinstance(kwargs.get(k), torch.Tensor):
                kwargs[k] = kwargs[k].detach().cpu().tolist()
        return cls(**kwargs)

    def describe(self) -> dict[str, Any]:
        """The sidecar ``geometry`` block (JSON types; unset fields left out): ``from_meta`` inverts it."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.angles_deg is not None:
            out["angles_deg"] = list(self.angles_deg)
        else:
            out["scan_deg"] = self.scan_deg
        if self.kind == "cone":
            out["source_object_mm"] = self.source_object_mm
            out["source_detector_mm"] = self.source_detector_mm
        if self.detector_pixel_mm is not None:
            out["detector_pixel_mm"] = list(self.detector_pixel_mm)
        out["cor_offset_px"] = self.cor_offset_px
        if self.detector_shape is not None:
            out["detector_shape"] = list(self.detector_shape)
        return out

    def replace(self, **changes: Any) -> Geometry:
        """A copy with some fields changed (e.g. ``cor_offset_px`` from :func:`dfseg.tomo.estimate_cor`)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived values

    @property
    def magnification(self) -> float:
        """Detector size of an object at the axis over its true size: ``SD / SO`` (1 for parallel)."""
        return self.source_detector_mm / self.source_object_mm if self.kind == "cone" else 1.0

    def angles(self, n_angles: int | None = None) -> np.ndarray:
        """Projection angles in radians, shape (A,).

        Args:
            n_angles: A, the data's angle count: checked against ``angles_deg``, or spread evenly
                over ``[0, scan_deg)`` when there is no list.
        """
        if self.angles_deg is not None:
            if n_angles is not None and n_angles != len(self.angles_deg):
                raise InputError(_where("angles_deg"),
                                 f"lists {len(self.angles_deg)} angles but the projections have {n_angles}")
            return np.deg2rad(np.asarray(self.angles_deg, dtype=np.float64))
        if n_angles is None or n_angles < 1:
            raise InputError(_where("angles_deg"), "no angle list and no angle count to spread over scan_deg")
        return np.deg2rad(self.scan_deg) * np.arange(n_angles, dtype=np.float64) / n_angles

    def pixel_mm(self, voxel_mm: float | None = None) -> tuple[float, float]:
        """Detector pitch ``(du, dv)`` in mm: ``detector_pixel_mm``, else the voxel times the magnification."""
        if self.detector_pixel_mm is not None:
            return self.detector_pixel_mm
        if voxel_mm is None:
            raise InputError(_where("detector_pixel_mm"), "not set and no voxel size given to derive it")
        p = _positive("voxel_mm", voxel_mm) * self.magnification
        return p, p

    def check_projections(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """``(A, U, V)`` of a stack ``(..., A, U, V)``, checked against the angles and ``detector_shape``."""
        if len(shape) < 3:
            raise InputError("projections", f"expected (..., A, U, V), got shape {tuple(shape)}")
        a, u, v = (int(s) for s in shape[-3:])
        self.angles(a)
        if self.detector_shape is not None and (u, v) != self.detector_shape:
            raise InputError(_where("detector_shape"),
                             f"is {list(self.detector_shape)} but the projections have U={u} columns, V={v} rows")
        return a, u, v

    def volume_shape(self, voxel_mm: float, n_u: int, n_v: int) -> tuple[int, int, int]:
        """Default ``(X, Y, Z)``: the detector's field of view at the axis in voxels (X = U, Z = V
        when a detector pixel seen at the axis is one voxel)."""
        du, dv = self.pixel_mm(voxel_mm)
        m = self.magnification
        nx = max(1, round(n_u * du / m / voxel_mm))
        nz = max(1, round(n_v * dv / m / voxel_mm))
        return nx, nx, nz

    def detector_coordinates(self, n_u: int, n_v: int, voxel_mm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Column and row centres ``u`` (U,), ``v`` (V,) in mm on the detector, u from the axis' projection."""
        du, dv = self.pixel_mm(voxel_mm)
        u = (np.arange(n_u) - (n_u - 1) / 2 - self.cor_offset_px) * du
        v = (np.arange(n_v) - (n_v - 1) / 2) * dv
        return u, v

    def is_default(self, n_angles: int, n_u: int, voxel_mm: float) -> bool:
        """Whether this is dfseg's original geometry for these data (parallel, A angles evenly over
        [0, 180), detector pixel = voxel, centred axis, U = X), which :func:`dfseg.tomo.fbp` reconstructs."""
        if self.kind != "parallel" or self.cor_offset_px != 0:
            return False
        if self.detector_pixel_mm is not None and self.detector_pixel_mm != (voxel_mm, voxel_mm):
            return False
        even = np.pi * np.arange(n_angles) / n_angles
        return bool(np.array_equal(self.angles(n_angles), even)) if self.angles_deg is not None else self.scan_deg == 180


def angle_weights(angles: np.ndarray, period: float = math.pi, *, max_gap_ratio: float = 4.0) -> np.ndarray:
    """Quadrature weights (radians) of projection angles, so each ray's redundant copies count once.

    Angles are taken modulo ``period`` (pi: parallel rays at t and t + pi are the same line;
    2 pi: a full cone-beam orbit) and each gets half the gaps to its neighbours on that circle
    (angles that coincide modulo the period share their cell evenly). The weights are scaled to
    sum to pi, the weight of one 180 degree parallel scan: A angles evenly over 180 degrees get
    pi / A each, a full 360 degree scan pi / A each as well. A gap longer than
    ``max_gap_ratio`` times the median gap (a limited-angle scan) counts as that long, so the
    angles next to it are not weighted up to fill it.

    Args:
        angles: radians, shape (A,).
        period: pi or 2 pi.

    Returns:
        (A,) float64 weights.
    """
    a = np.mod(np.asarray(angles, dtype=np.float64), period)
    n = a.size
    if n == 1:
        return np.array([math.pi])
    order = np.argsort(a, kind="stable")
    s = a[order]
    tol = 1e-6 * period
    # groups of coinciding angles (modulo the period, the last may join the first)
    new_group = np.r_[True, np.diff(s) > tol]
    gid = np.cumsum(new_group) - 1
    pos = s[new_group]
    if pos.size > 1 and pos[0] + period - s[-1] <= tol:
        gid[gid == gid[-1]] = 0
        pos = pos[:-1]
    m = pos.size
    if m == 1:
        w_group = np.array([period])
    else:
        gaps = np.diff(np.r_[pos, pos[0] + period])  # gap after each group, cyclic
        cap = max_gap_ratio * float(np.median(gaps))
        gaps = np.minimum(gaps, cap)
        w_group = 0.5 * (gaps + np.roll(gaps, 1))
    counts = np.bincount(gid, minlength=m)
    w_sorted = w_group[gid] / counts[gid]
    w = np.empty(n)
    w[order] = w_sorted
    return w * (math.pi / w.sum())


def detector_rays(geometry: Geometry, angles: torch.Tensor, u: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions of detector pixels, in mm (torch, the dtype and device of ``angles``).

    Args:
        geometry: the scan geometry.
        angles: (A,) radians.
        u: (U,) column coordinates in mm on the detector (:meth:`Geometry.detector_coordinates`).
        v: (V,) row coordinates in mm on the detector.

    Returns:
        ``origin (A, U, V, 3)`` (a point on the ray: the source for cone beam) and
        ``direction (A, U, V, 3)``.
    """
    c, s = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(c)
    d = torch.stack([c, s, zero], -1)[:, None, None, :]  # (A, 1, 1, 3)
    e = torch.stack([-s, c, zero], -1)[:, None, None, :]
    ez = torch.zeros(3, dtype=angles.dtype, device=angles.device)
    ez[2] = 1
    shape = (angles.shape[0], u.shape[0], v.shape[0], 3)
    offset = u[None, :, None, None] * e + v[None, None, :, None] * ez  # (A, U, V, 3)
    if geometry.kind == "parallel":
        return offset, d.expand(shape)
    so, sd = geometry.source_object_mm, geometry.source_detector_mm
    src = (-so) * d
    ray = sd * d + offset
    ray = ray / torch.linalg.vector_norm(ray, dim=-1, keepdim=True)
    return src.expand(shape), ray
