"""Beam-hardening ("visibility hardening") correction of dark-field (PHYSICS.md section 4).

A structureless absorber shows a spurious dark-field that grows with its attenuation. The
calibration holds, per material, ``DF_BH(A) = sum_j c_j A^j`` (j = 1..k, no constant term) fitted
on step-wedge scans (``dfseg calibrate``).

- ``domain="projection"`` (exact): ``DF_corr = DF - f(A)`` per ray, on line integrals
  ``A = -ln T`` and ``DF = -ln D`` of projection stacks ``(N, A, U, Z)``.
- ``domain="volume"`` (first order, for users who only have reconstructions): FBP is linear, so
  only the linear term maps pointwise: ``eps_corr = eps - c1 * mu`` on volumes ``(N, X, Y, Z)``
  with ``mu`` in 1/mm and ``eps`` in 1/mm (c1 unitless, the least-squares slope through the
  origin of the wedge data).

``f = (1 - w) f_water + w f_aluminium`` with the mixing weight ``w`` (0 = water only; a bone-heavy
object sits between the two curves). Beyond the largest calibrated ``A`` the curve is continued
linearly with its end slope, so a polynomial never extrapolates wildly.

Attenuation linearisation (water correction): ``A_lin = g(A) = sum_j b_j A^j`` maps polychromatic
line integrals to the monochromatic-equivalent ``mu_eff * t`` of water (projection domain only).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

from dfseg.errors import InputError

__all__ = [
    "BeamHardeningCorrection", "BeamHardeningCorrectiond", "BeamHardeningCorrectionD",
    "BeamHardeningCorrectionDict",
]

DOMAINS = ("projection", "volume")


def _curve(coefficients: list[float], a_max: float | None, a: torch.Tensor) -> torch.Tensor:
    """Polynomial without constant term, continued linearly beyond ``a_max``."""
    c = [float(v) for v in coefficients]

    def poly(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for coef in reversed(c):
            out = (out + coef) * x
        return out

    if a_max is None or a_max <= 0:
        return poly(a)
    am = torch.as_tensor(float(a_max), dtype=a.dtype, device=a.device)
    slope = sum(j * cj * float(a_max) ** (j - 1) for j, cj in enumerate(c, start=1))
    inside = poly(torch.minimum(a, am))
    return inside + slope * torch.clamp(a - am, min=0.0)


def _load(calibration: Mapping | str | os.PathLike) -> dict:
    from dfseg.calibration import load_calibration

    return load_calibration(calibration)


class BeamHardeningCorrection(Transform):
    """Subtract the calibrated spurious dark-field of beam hardening.

    Args:
        calibration: calibration dictionary or path to ``calibration.json``.
        domain: ``"projection"`` (exact, on line integrals) or ``"volume"`` (first order).
        aluminium_weight: mixing weight w of the aluminium curve in [0, 1] (0 = water only).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, calibration: Mapping | str | os.PathLike, *, domain: str = "projection",
                 aluminium_weight: float = 0.0) -> None:
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if not 0.0 <= aluminium_weight <= 1.0:
            raise ValueError(f"aluminium_weight must be in [0, 1], got {aluminium_weight}")
        self.calibration = _load(calibration)
        self.domain = domain
        self.aluminium_weight = float(aluminium_weight)

    def spurious(self, attn: torch.Tensor) -> torch.Tensor:
        """The beam-hardening dark-field expected for ``attn`` (A in projections, mu in volumes)."""
        bh = self.calibration["beam_hardening"]
        w = self.aluminium_weight
        out = torch.zeros_like(attn)
        for name, weight in (("water", 1.0 - w), ("aluminium", w)):
            if weight == 0.0:
                continue
            entry = bh[name]
            if self.domain == "volume":
                out = out + weight * float(entry["first_order_c1"]) * attn
            else:
                out = out + weight * _curve(entry["coefficients"], entry.get("a_max"), attn)
        return out

    def __call__(self, df: NdarrayOrTensor, attn: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args:
            df: ``DF = -ln D`` stack ``(N, A, U, Z)`` (projection) or eps ``(N, X, Y, Z)`` in 1/mm
                (volume).
            attn: ``A = -ln T`` of the same shape (one channel per orientation) or a single channel
                ``(1, ...)`` that applies to every orientation; mu in 1/mm for volumes.

        Returns:
            corrected ``df``, same shape, type and device as ``df``.
        """
        d = convert_data_type(df, torch.Tensor)[0]
        d = d if d.is_floating_point() else d.float()
        a = convert_data_type(attn, torch.Tensor, device=d.device, dtype=d.dtype)[0]
        if a.shape != d.shape and not (a.ndim == d.ndim and a.shape[0] == 1 and a.shape[1:] == d.shape[1:]):
            raise InputError("attn", f"shape {tuple(a.shape)} does not match dark-field {tuple(d.shape)} "
                             "(expected the same shape or one channel)")
        return convert_to_dst_type(d - self.spurious(a), df, dtype=d.dtype)[0]

    def linearise(self, attn: NdarrayOrTensor) -> NdarrayOrTensor:
        """Water linearisation of attenuation line integrals ``A -> g(A)`` (projection domain only)."""
        if self.domain != "projection":
            raise ValueError("attenuation linearisation works on projections (domain='projection')")
        a = convert_data_type(attn, torch.Tensor)[0]
        a = a if a.is_floating_point() else a.float()
        entry = self.calibration["linearisation"]["water"]
        return convert_to_dst_type(_curve(entry["coefficients"], entry.get("a_max"), a), attn, dtype=a.dtype)[0]


class BeamHardeningCorrectiond(MapTransform):
    """Dictionary :class:`BeamHardeningCorrection`.

    Args:
        keys: dark-field keys to correct (``proj_D`` holding DF line integrals, or ``df``).
        calibration: calibration dictionary or path.
        attn_key: key of the matching attenuation (``proj_T`` holding A, or ``attn``).
        domain: ``"projection"`` or ``"volume"``.
        aluminium_weight: mixing weight of the aluminium curve.
        linearise: also replace ``attn_key`` by its water-linearised line integrals (projection
            domain; done after the dark-field correction, which uses the measured A).
        allow_missing_keys: skip absent keys.
    """

    backend = BeamHardeningCorrection.backend

    def __init__(self, keys: KeysCollection, calibration: Mapping | str | os.PathLike, *,
                 attn_key: str = "proj_T", domain: str = "projection", aluminium_weight: float = 0.0,
                 linearise: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = BeamHardeningCorrection(calibration, domain=domain, aluminium_weight=aluminium_weight)
        if linearise and domain != "projection":
            raise ValueError("linearise=True needs domain='projection'")
        self.attn_key = attn_key
        self.linearise = linearise

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        if self.attn_key not in d:
            raise InputError(self.attn_key, "attenuation needed for the beam-hardening correction is missing")
        for key in keys:
            d[key] = self.op(d[key], d[self.attn_key])
        if self.linearise:
            d[self.attn_key] = self.op.linearise(d[self.attn_key])
        return d


BeamHardeningCorrectionD = BeamHardeningCorrectionDict = BeamHardeningCorrectiond
