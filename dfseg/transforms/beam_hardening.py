"""Beam-hardening ("visibility hardening") correction of dark-field (docs/physics.md section 4).

A structureless absorber shows a spurious dark-field that grows with its attenuation. The
calibration holds, per material, ``DF_BH(A) = sum_j c_j A^j`` (j = 1..k, no constant term) fitted
on step-wedge scans (``dfseg calibrate``).

- ``domain="projection"`` (exact): ``DF_corr = DF - f(A)`` per ray, on line integrals
  ``A = -ln T`` and ``DF = -ln D`` of projection stacks ``(N, A, U, Z)``.
- ``domain="volume"`` (first order, for users who only have reconstructions): FBP is linear, so
  only the linear term maps pointwise: ``eps_corr = eps - c1 * mu`` on volumes ``(N, X, Y, Z)``
  with ``mu`` in 1/mm and ``eps`` in 1/mm (c1 unitless, the least-squares slope through the
  origin of the wedge data).

``f = (1 - w) f_water + w f_aluminium`` with the mixing weight ``w`` (0 = water only). Aluminium
stands in for bone (effective atomic numbers 13 and ~13.8). ``w`` is either one number for the
whole scan or, with the two-pass bone correction, a map per ray. Beyond the largest calibrated ``A``
the curve is continued linearly with its end slope, so a polynomial never extrapolates wildly.

Two-pass bone correction (:class:`TwoPassBoneCorrection`, or
``BeamHardeningCorrectiond(..., bone_correction=True)``; projection domain). Bone hardens the beam
far more than soft tissue of the same attenuation, and it does two things to a ray's dark-field:
it adds a spurious DF (larger than the water curve predicts), and it raises the effective energy,
so the lung behind it scatters less (DF ~ E^-n). Both are corrected per ray:

1. :class:`WaterBoneDecomposition` reconstructs the attenuation (first pass), splits each voxel into
   water and bone and forward-projects both parts: ``t_water``, ``t_bone`` per ray (Joseph and
   Spital 1978 do the same for attenuation).
2. The spurious DF is subtracted with ``w = mu_bone t_bone / (mu_water t_water + mu_bone t_bone)``,
   the bone share of the ray's attenuation. For ``t_s <= 25`` mm of soft tissue and
   ``t_b <= 4`` mm of cortical bone the mixed curve leaves at most 0.008 of a spurious DF of up to
   0.23; the water curve alone leaves 0.083 (tests/transforms/test_beam_hardening.py).
3. What is left (the real dark-field) is multiplied by :func:`ray_darkfield_factor`,
   ``M_ref / M_ray`` with ``M = sum w T E^-n / sum w T`` (``w = S' V0``, T the transmission of
   the ray's two paths, or of the calibration's ``e_eff_water_mm`` of water for ``M_ref``, n the
   calibrated exponent): to first order in DF, what the scan's reference beam would have measured.
   :class:`SpectrumAwareNormalization` then takes the whole scan to the reference energy.

Steps 2 and 3 are both needed where the lung scatters: bone hardening removes part of the lung
dark-field from the rays through the spine (a negative error) while adding its own spurious DF (a
positive one). Step 2 alone then over-corrects; the water curve alone can land near zero only
because the two errors cancel. tests/transforms/test_beam_hardening.py checks, on simulated mice,
that the spine's mean eps falls below the per-voxel noise after steps 1-3 (measured values:
docs/benchmarks.md).

Attenuation linearisation (water correction): ``A_lin = g(A) = sum_j b_j A^j`` maps polychromatic
line integrals to the monochromatic-equivalent ``mu_eff * t`` of water (projection domain only).
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

from dfseg.calibration import load_calibration
from dfseg.calibration.energy import visibility_from_params
from dfseg.data.scan import scan_value
from dfseg.errors import InputError
from dfseg.physics import mu, tube_spectrum
from dfseg.tomo import fbp, project, projection_angles

__all__ = [
    "BeamHardeningCorrection", "BeamHardeningCorrectiond", "BeamHardeningCorrectionD",
    "BeamHardeningCorrectionDict", "TwoPassBoneCorrection", "WaterBoneDecomposition", "ray_darkfield_factor",
    "ray_effective_energy", "water_bone_mu",
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


def water_bone_mu(calibration: Mapping) -> tuple[float, float, float]:
    """Linear attenuation of water and cortical bone at the water linearisation's effective energy.

    The linearisation maps line integrals to ``mu_eff * t`` of water; ``E_eff`` is the energy at which
    water's tabulated mu (xraydb) equals ``mu_eff``, and bone's mu is taken there (ICRU 44 cortical
    bone).

    Returns:
        ``(mu_water, mu_bone, e_eff_kev)``, mu in 1/mm.
    """
    mu_w = float(calibration["linearisation"]["water"]["mu_eff_per_mm"])
    e = np.linspace(8.0, 150.0, 2841)
    mw = mu("water", e)  # decreasing with energy over this range
    if not mw[-1] < mu_w < mw[0]:
        raise InputError("linearisation.water.mu_eff_per_mm", f"{mu_w:.4g} /mm is not the mu of water at any "
                                                              "energy between 8 and 150 keV")
    e_eff = float(np.interp(mu_w, mw[::-1], e[::-1]))
    return mu_w, float(mu("bone", np.array([e_eff]))[0]), e_eff


class WaterBoneDecomposition(Transform):
    """Water-equivalent and bone path length of every ray, from a two-pass reconstruction.

    First pass: the orientation channels of ``A = -ln T`` are averaged, water-linearised with the
    calibration and reconstructed by FBP (mu in 1/mm). Each voxel is split into soft tissue and bone,
    ``f = clip((mu - mu_soft) / (mu_bone - mu_soft), 0, 1)`` (partial-volume voxels get a partial
    share), and the same projector gives the bone path ``t_bone = P[f]`` and the water-equivalent
    path of everything else ``t_water = (P[max(mu, 0)] - mu_bone t_bone) / mu_water``.

    ``mu_soft`` and ``mu_bone`` are the values these tissues take in a water-linearised
    reconstruction. With the scan's ``kvp`` (and filtration) they are computed from its spectrum:
    ``g(A_soft(10 mm)) / 10 mm``, and for bone the linearised increment of 1 mm of cortical bone
    behind the mean soft-tissue path of the rays that cross the object (bone hardens the beam more
    than the water curve undoes, the more so behind tissue: 0.221 /mm in air, 0.199 /mm behind 14 mm
    of soft tissue at 70 kVp). Without ``kvp``: the tabulated mu at the linearisation's effective
    energy (:func:`water_bone_mu`). ``mu_water`` is the linearisation's ``mu_eff``.

    Args:
        calibration: calibration dictionary or path (needs ``linearisation.water``).
        pixel_mm: detector pixel = voxel size, mm.
        kvp, filtration_mm: the scan's tube voltage and added filtration (sidecar fields).
        filter_name: FBP filter of the first pass.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    #: Bone path (mm) whose linearised increment defines bone's mu: about a mouse vertebra's chord.
    BONE_REFERENCE_MM = 1.0
    #: Soft-tissue path (mm) whose linearised attenuation defines soft tissue's mu.
    SOFT_REFERENCE_MM = 10.0

    def __init__(self, calibration: Mapping | str | os.PathLike, pixel_mm: float = 1.0, *,
                 kvp: float | None = None, filtration_mm: Mapping[str, float] | None = None,
                 filter_name: str = "ramp") -> None:
        self.calibration = load_calibration(calibration)
        self.mu_water, mu_b, self.e_eff_kev = water_bone_mu(self.calibration)
        mu_s = float(mu("soft_tissue", np.array([self.e_eff_kev]))[0])
        #: tabulated mu at E_eff: the attenuation shares behind :meth:`aluminium_weight`
        self.mu_bone_tabulated = mu_b
        self.spectrum = None
        if kvp is not None:
            self.spectrum = tube_spectrum(float(kvp), None if filtration_mm is None else dict(filtration_mm))
            mu_s = self._linearised_increment(0.0, "soft_tissue", self.SOFT_REFERENCE_MM)
        self.mu_soft = mu_s
        self.pixel_mm = float(pixel_mm)
        self.filter_name = filter_name

    def _linearise(self, a):
        lin = self.calibration["linearisation"]["water"]
        return _curve(lin["coefficients"], lin.get("a_max"), a)

    def _linearised_increment(self, soft_mm: float, material: str, t_mm: float) -> float:
        """Water-linearised attenuation per mm of ``t_mm`` of ``material`` behind ``soft_mm`` of soft tissue."""
        e = self.spectrum.energies_kev
        s = self.spectrum.weights / self.spectrum.weights.sum()
        base = mu("soft_tissue", e) * soft_mm
        a0 = -math.log(float(np.sum(s * np.exp(-base))))
        a1 = -math.log(float(np.sum(s * np.exp(-base - mu(material, e) * t_mm))))
        g = self._linearise(torch.tensor([a0, a1], dtype=torch.float64))
        return float(g[1] - g[0]) / t_mm

    def mu_bone(self, a_lin: torch.Tensor | None = None) -> float:
        """Bone's mu in the linearised reconstruction (behind the rays' mean soft path when known)."""
        if self.spectrum is None:
            return self.mu_bone_tabulated
        soft_mm = 0.0
        if a_lin is not None:
            crossing = a_lin[a_lin > 0.1 * float(a_lin.max())]
            if crossing.numel():
                soft_mm = float(crossing.mean()) / self.mu_soft
        return self._linearised_increment(soft_mm, "bone", self.BONE_REFERENCE_MM)

    def aluminium_weight(self, paths: torch.Tensor) -> torch.Tensor:
        """Bone share of each ray's attenuation at E_eff, ``mu_b t_bone / (mu_water t_water + mu_b t_bone)``.

        Args:
            paths: ``(2, ...)`` water and bone paths from :meth:`__call__` (tensor).

        Returns:
            ``(1, ...)`` in [0, 1]; rays with no attenuation get 0.
        """
        bone = self.mu_bone_tabulated * paths[1:2]
        total = self.mu_water * paths[0:1] + bone
        return torch.where(total > 1e-6, bone / torch.clamp(total, min=1e-6), torch.zeros_like(total)).clamp(0.0, 1.0)

    def __call__(self, attn: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args:
            attn: ``A = -ln T`` projections ``(N, A, U, Z)`` (flux-normalised, not linearised).

        Returns:
            ``(2, A, U, Z)``: water-equivalent and bone path lengths in mm, same type and device.
        """
        a = convert_data_type(attn, torch.Tensor)[0]
        a = a if a.is_floating_point() else a.float()
        if a.ndim != 4:
            raise InputError("attn", f"expected projections (N, A, U, Z), got shape {tuple(a.shape)}")
        a_lin = self._linearise(a.mean(dim=0, keepdim=True))
        mu_b = self.mu_bone(a_lin)
        if not mu_b > self.mu_soft > 0:
            raise InputError("calibration", f"bone ({mu_b:.4g} /mm) must attenuate more than soft tissue "
                                            f"({self.mu_soft:.4g} /mm) in this spectrum")
        angles = projection_angles(a.shape[1])
        sino = a_lin.permute(0, 3, 1, 2)  # (1, Z, A, U)
        recon = fbp(sino, angles, a.shape[2], pixel_mm=self.pixel_mm, filter_name=self.filter_name)  # (1, Z, X, Y)
        frac = torch.clamp((recon - self.mu_soft) / (mu_b - self.mu_soft), 0.0, 1.0)
        p = project(torch.cat([frac, torch.clamp(recon, min=0.0)]), angles, pixel_mm=self.pixel_mm)  # (2, Z, A, U)
        t_bone = torch.clamp(p[0], min=0.0)
        t_water = torch.clamp((p[1] - mu_b * t_bone) / self.mu_water, min=0.0)
        paths = torch.stack([t_water, t_bone]).permute(0, 2, 3, 1).contiguous()  # (2, A, U, Z)
        return convert_to_dst_type(paths, attn, dtype=a.dtype)[0]


def _ray_spectral_mean(paths: torch.Tensor, kvp: float, filtration_mm: Mapping[str, float] | None, visibility: Any,
                       quantity, grid: tuple[int, int]) -> torch.Tensor:
    """``sum w T q(E) / sum w T`` behind each ray's paths (``w = S' V0``), via a bilinear lookup table."""
    spec = tube_spectrum(float(kvp), None if filtration_mm is None else dict(filtration_mm))
    e = spec.energies_kev
    w = spec.weights * visibility_from_params(visibility)(e)
    hi = [max(float(paths[i].max()), 1e-3) for i in range(2)]
    tw = np.linspace(0.0, hi[0], grid[0])
    tb = np.linspace(0.0, hi[1], grid[1])
    wt = w * np.exp(-tw[:, None, None] * mu("water", e) - tb[None, :, None] * mu("bone", e))  # (W, B, E)
    table = torch.as_tensor((wt @ quantity(e)) / wt.sum(-1), dtype=paths.dtype, device=paths.device)  # (W, B)
    # grid_sample: x indexes the last table axis (bone), y the first (water), both in [-1, 1].
    flat = paths.reshape(2, -1)
    xy = torch.stack([flat[1] / hi[1], flat[0] / hi[0]], dim=-1) * 2.0 - 1.0  # (R, 2)
    out = F.grid_sample(table[None, None], xy[None, None], mode="bilinear", align_corners=True)  # (1, 1, 1, R)
    return out.reshape(1, *paths.shape[1:])


def ray_effective_energy(paths: torch.Tensor, kvp: float, filtration_mm: Mapping[str, float] | None,
                         visibility: Any, *, grid: tuple[int, int] = (96, 48)) -> torch.Tensor:
    """Visibility-weighted effective energy (keV) behind each ray's water and bone paths.

    ``E_eff = sum w T E / sum w T`` with ``w = S'(E) V0(E)`` and
    ``T = exp(-t_water mu_water(E) - t_bone mu_bone(E))`` (xraydb), the same definition as
    :func:`dfseg.calibration.scan_effective_energy`. Evaluated exactly on a ``grid`` of path pairs
    spanning the data and interpolated bilinearly (smooth in both paths).

    Args:
        paths: ``(2, ...)`` water and bone paths in mm (tensor).
        kvp, filtration_mm, visibility: the scan's spectrum (sidecar fields).
        grid: nodes along the water and bone paths.

    Returns:
        ``(1, ...)`` effective energies, same dtype and device as ``paths``.
    """
    return _ray_spectral_mean(paths, kvp, filtration_mm, visibility, lambda e: e, grid)


def ray_darkfield_factor(paths: torch.Tensor, kvp: float, filtration_mm: Mapping[str, float] | None,
                         visibility: Any, exponent: float, *, water_mm: float = 0.0,
                         grid: tuple[int, int] = (96, 48)) -> torch.Tensor:
    """Factor that takes each ray's real dark-field to what the scan's reference beam would measure.

    To first order in DF, a scatterer with ``DF(E) ~ E^-n`` measured behind transmission ``T(E)``
    reads ``DF_ref * M(T) / M_ref`` with ``M(T) = sum w T E^-n / sum w T``. The factor is
    ``M(behind water_mm of water) / M(behind the ray's water and bone paths)``: >= 1 where the ray
    is harder than the reference. The mean of ``E^-n`` is taken, not the power of the mean energy
    ``(E_ray / E_scan)^n``: by Jensen's inequality filtering lowers the mean of E^-n faster than
    the power of the mean, so the latter would under-correct.

    Args:
        paths: ``(2, ...)`` water and bone paths in mm (tensor).
        kvp, filtration_mm, visibility: the scan's spectrum (sidecar fields).
        exponent: n (the calibration's ``energy_exponent.n``).
        water_mm: water in the reference beam (the calibration's ``reference.e_eff_water_mm``).
        grid: nodes of the lookup table along the water and bone paths.

    Returns:
        ``(1, ...)`` factors, same dtype and device as ``paths``.
    """
    n = float(exponent)
    ref = torch.tensor([[float(water_mm)], [0.0]], dtype=torch.float64)
    m_ref = float(_ray_spectral_mean(ref, kvp, filtration_mm, visibility, lambda e: e**-n, (2, 2))[0, 0])
    return m_ref / _ray_spectral_mean(paths, kvp, filtration_mm, visibility, lambda e: e**-n, grid)


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
        self.calibration = load_calibration(calibration)
        self.domain = domain
        self.aluminium_weight = float(aluminium_weight)

    def spurious(self, attn: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The beam-hardening dark-field expected for ``attn`` (A in projections, mu in volumes).

        Args:
            attn: line integrals A (projection) or mu in 1/mm (volume).
            weight: aluminium (bone) weight per element, broadcastable to ``attn``; default the
                scalar ``aluminium_weight``.
        """
        bh = self.calibration["beam_hardening"]
        curves = []
        for name in ("water", "aluminium"):
            entry = bh[name]
            if self.domain == "volume":
                curves.append(float(entry["first_order_c1"]) * attn)
            else:
                curves.append(_curve(entry["coefficients"], entry.get("a_max"), attn))
        if weight is None:
            w = self.aluminium_weight
            return (1.0 - w) * curves[0] + w * curves[1]
        return curves[0] + weight * (curves[1] - curves[0])

    def __call__(self, df: NdarrayOrTensor, attn: NdarrayOrTensor, weight: NdarrayOrTensor | None = None
                 ) -> NdarrayOrTensor:
        """Args:
            df: ``DF = -ln D`` stack ``(N, A, U, Z)`` (projection) or eps ``(N, X, Y, Z)`` in 1/mm
                (volume).
            attn: ``A = -ln T`` of the same shape (one channel per orientation) or a single channel
                ``(1, ...)`` that applies to every orientation; mu in 1/mm for volumes.
            weight: optional aluminium (bone) weight map in [0, 1], one channel ``(1, ...)`` or one per
                orientation, e.g. from ``WaterBoneDecomposition.aluminium_weight``; replaces ``aluminium_weight``.

        Returns:
            corrected ``df``, same shape, type and device as ``df``.
        """
        d = convert_data_type(df, torch.Tensor)[0]
        d = d if d.is_floating_point() else d.float()
        a = convert_data_type(attn, torch.Tensor, device=d.device, dtype=d.dtype)[0]

        def same_or_one(x: torch.Tensor) -> bool:
            return x.shape == d.shape or (x.ndim == d.ndim and x.shape[0] == 1 and x.shape[1:] == d.shape[1:])

        if not same_or_one(a):
            raise InputError("attn", f"shape {tuple(a.shape)} does not match dark-field {tuple(d.shape)} "
                             "(expected the same shape or one channel)")
        w = None
        if weight is not None:
            w = convert_data_type(weight, torch.Tensor, device=d.device, dtype=d.dtype)[0]
            if not same_or_one(w):
                raise InputError("weight", f"shape {tuple(w.shape)} does not match dark-field {tuple(d.shape)} "
                                 "(expected the same shape or one channel)")
            if not bool(((w >= 0) & (w <= 1)).all()):
                raise InputError("weight", "aluminium weights must lie in [0, 1]")
        return convert_to_dst_type(d - self.spurious(a, w), df, dtype=d.dtype)[0]

    def linearise(self, attn: NdarrayOrTensor) -> NdarrayOrTensor:
        """Water linearisation of attenuation line integrals ``A -> g(A)`` (projection domain only)."""
        if self.domain != "projection":
            raise ValueError("attenuation linearisation works on projections (domain='projection')")
        a = convert_data_type(attn, torch.Tensor)[0]
        a = a if a.is_floating_point() else a.float()
        entry = self.calibration["linearisation"]["water"]
        return convert_to_dst_type(_curve(entry["coefficients"], entry.get("a_max"), a), attn, dtype=a.dtype)[0]


class TwoPassBoneCorrection(Transform):
    """Two-pass bone beam-hardening correction of dark-field projections (module docstring, steps 1-3).

    Step 1 (:class:`WaterBoneDecomposition`) gives each ray's water and bone path; step 2 subtracts
    the spurious dark-field of the curves mixed per ray (:meth:`WaterBoneDecomposition.aluminium_weight`);
    step 3 (``ray_energy``) multiplies what is left by :func:`ray_darkfield_factor`.

    Args:
        calibration: calibration dictionary or path (beam-hardening curves, water linearisation and,
            for step 3, the energy exponent and reference).
        ray_energy: apply step 3 (needs the scan's ``kvp`` and ``visibility`` at call time).
        filter_name: FBP filter of the first-pass reconstruction.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, calibration: Mapping | str | os.PathLike, *, ray_energy: bool = True,
                 filter_name: str = "ramp") -> None:
        self.correction = BeamHardeningCorrection(calibration, domain="projection")
        self.calibration = self.correction.calibration
        self.ray_energy = ray_energy
        self.filter_name = filter_name

    def __call__(self, df: NdarrayOrTensor, attn: NdarrayOrTensor, *, pixel_mm: float, kvp: float | None = None,
                 filtration_mm: Mapping[str, float] | None = None, visibility: Any = None,
                 where: str = "attn") -> NdarrayOrTensor:
        """Args:
            df: ``DF = -ln D`` projections ``(N, A, U, Z)``.
            attn: ``A = -ln T`` projections ``(N, A, U, Z)`` (flux-normalised, not linearised).
            pixel_mm: detector pixel = voxel size, mm.
            kvp, filtration_mm: the scan's tube voltage and added filtration (sidecar fields); without
                ``kvp`` the first pass uses tabulated attenuation (:class:`WaterBoneDecomposition`).
            visibility: the scan's visibility-spectrum parameters (sidecar ``visibility``).
            where: name of ``attn`` in error messages about it.

        Returns:
            corrected ``df``, same shape, type and device.
        """
        if self.ray_energy:
            for name, value in (("kvp", kvp), ("visibility", visibility)):
                if value is None:
                    raise InputError(name, "needed for the per-ray energy correction (ray_energy=True)")
        decomposition = WaterBoneDecomposition(self.calibration, pixel_mm, kvp=kvp, filtration_mm=filtration_mm,
                                               filter_name=self.filter_name)
        try:
            paths = convert_data_type(decomposition(attn), torch.Tensor)[0]
        except InputError as err:
            raise InputError(where, err.problem) from None
        out = self.correction(df, attn, decomposition.aluminium_weight(paths))
        if not self.ray_energy:
            return out
        cal = self.calibration
        factor = ray_darkfield_factor(paths, float(kvp), filtration_mm, visibility, float(cal["energy_exponent"]["n"]),
                                      water_mm=float(cal["reference"].get("e_eff_water_mm", 0.0)))
        t = convert_data_type(out, torch.Tensor)[0]
        return convert_to_dst_type(t * factor.to(device=t.device, dtype=t.dtype), out, dtype=t.dtype)[0]


class BeamHardeningCorrectiond(MapTransform):
    """Dictionary :class:`BeamHardeningCorrection`.

    Args:
        keys: dark-field keys to correct (``proj_D`` holding DF line integrals, or ``df``).
        calibration: calibration dictionary or path.
        attn_key: key of the matching attenuation (``proj_T`` holding A, or ``attn``).
        domain: ``"projection"`` or ``"volume"``.
        aluminium_weight: mixing weight of the aluminium curve.
        bone_correction: projection domain only: :class:`TwoPassBoneCorrection` (the curves mixed
            per ray instead of one ``aluminium_weight``), with pixel size ``pixel_mm`` or
            ``meta["voxel_mm"]`` and the scan's ``kvp``, ``filtration_mm`` and ``visibility`` from
            the metadata.
        ray_energy: with ``bone_correction``, also scale each ray's remaining dark-field to the
            scan's effective energy (step 3; needs ``kvp`` and ``visibility`` in the metadata).
        linearise: also replace ``attn_key`` by its water-linearised line integrals (projection
            domain; done after the dark-field correction, which uses the measured A).
        pixel_mm: voxel size for the bone correction's reconstruction (default from the sidecar).
        meta_key: sidecar key in the data dictionary.
        allow_missing_keys: skip absent keys.
    """

    backend = BeamHardeningCorrection.backend

    def __init__(self, keys: KeysCollection, calibration: Mapping | str | os.PathLike, *,
                 attn_key: str = "proj_T", domain: str = "projection", aluminium_weight: float = 0.0,
                 bone_correction: bool = False, ray_energy: bool = True, linearise: bool = False,
                 pixel_mm: float | None = None,
                 meta_key: str = "meta", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = BeamHardeningCorrection(calibration, domain=domain, aluminium_weight=aluminium_weight)
        if linearise and domain != "projection":
            raise ValueError("linearise=True needs domain='projection'")
        if bone_correction and domain != "projection":
            raise ValueError("bone_correction=True needs domain='projection' (it forward-projects a reconstruction)")
        if bone_correction and aluminium_weight != 0.0:
            raise ValueError("give either bone_correction=True or an aluminium_weight, not both")
        self.two_pass = TwoPassBoneCorrection(self.op.calibration, ray_energy=ray_energy) if bone_correction else None
        self.attn_key = attn_key
        self.linearise = linearise
        self.pixel_mm = pixel_mm
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        if self.attn_key not in d:
            raise InputError(self.attn_key, "attenuation needed for the beam-hardening correction is missing")
        attn = d[self.attn_key]
        if self.two_pass is None:
            for key in keys:
                d[key] = self.op(d[key], attn)
        else:
            scan = self._scan_args(d)
            for key in keys:
                d[key] = self.two_pass(d[key], attn, **scan, where=self.attn_key)
        if self.linearise:
            d[self.attn_key] = self.op.linearise(attn)
        return d

    def _scan_args(self, d: Mapping[Hashable, Any]) -> dict[str, Any]:
        """The scan parameters :class:`TwoPassBoneCorrection` takes, from the arguments or the metadata."""
        m = self.meta_key
        needed = {} if self.two_pass.ray_energy else {"default": None}  # no default: missing is an error
        return {"pixel_mm": float(scan_value(d, "voxel_mm", self.pixel_mm, meta_key=m)),
                "kvp": scan_value(d, "kvp", meta_key=m, **needed),
                "filtration_mm": scan_value(d, "filtration_mm", meta_key=m, default=None),
                "visibility": scan_value(d, "visibility", meta_key=m, **needed)}


BeamHardeningCorrectionD = BeamHardeningCorrectionDict = BeamHardeningCorrectiond
