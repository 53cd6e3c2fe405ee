"""Spectrum-aware normalization of dark-field (docs/physics.md section 5).

Dark-field depends strongly on energy (DF ~ E^-n, n in [2, 4]), so scans taken with different
tube voltages, filtrations or interferometers are not comparable as measured. The scan's
visibility-weighted effective energy ``E_eff = sum w T E / sum w T`` (``w = S'(E) V0(E)``, T the
transmission of ``water_mm`` of water, 0 = empty beam) is computed from its kVp, filtration and
visibility spectrum, and the dark-field is converted to the calibration's reference energy:
``DF(E_ref) = DF(E_eff) * (E_eff / E_ref)^n`` with the calibrated exponent n.

Works on any dark-field array (projections or volumes, any shape); ``attn`` is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

from dfseg.calibration import load_calibration
from dfseg.calibration.energy import scan_effective_energy, visibility_from_params
from dfseg.data.scan import scan_value
from dfseg.errors import InputError

__all__ = [
    "SpectrumAwareNormalization", "SpectrumAwareNormalizationd", "SpectrumAwareNormalizationD",
    "SpectrumAwareNormalizationDict", "visibility_from_params", "scan_effective_energy",
]


class SpectrumAwareNormalization(Transform):
    """Scale dark-field from the scan's effective energy to the calibration's reference energy.

    Args:
        calibration: calibration dictionary or path (gives n, E_ref and ``e_eff_water_mm``).
        e_eff_kev: the scan's effective energy, if known; else computed from the next three.
        kvp: tube voltage in kV.
        filtration_mm: added filtration, material -> mm.
        visibility: visibility-spectrum parameters (sidecar ``visibility``) or a VisibilitySpectrum.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, calibration: Mapping | str | os.PathLike, *, e_eff_kev: float | None = None,
                 kvp: float | None = None, filtration_mm: Mapping[str, float] | None = None,
                 visibility: Any = None) -> None:
        self.calibration = load_calibration(calibration)
        if e_eff_kev is None:
            if kvp is None or visibility is None:
                raise InputError("SpectrumAwareNormalization", "give e_eff_kev, or kvp and visibility")
            water = float(self.calibration["reference"].get("e_eff_water_mm", 0.0))
            e_eff_kev = scan_effective_energy(kvp, filtration_mm, visibility, water)
        self.e_eff_kev = float(e_eff_kev)
        self.e_ref_kev = float(self.calibration["reference"]["e_ref_kev"])
        self.exponent = float(self.calibration["energy_exponent"]["n"])

    @property
    def factor(self) -> float:
        """The multiplier ``(E_eff / E_ref)^n``."""
        return (self.e_eff_kev / self.e_ref_kev) ** self.exponent

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Args: img: DF line integrals or eps (1/mm), any shape. Returns: same shape and type."""
        t = convert_data_type(img, torch.Tensor)[0]
        t = t if t.is_floating_point() else t.float()
        return convert_to_dst_type(t * self.factor, img, dtype=t.dtype)[0]


class SpectrumAwareNormalizationd(MapTransform):
    """Dictionary :class:`SpectrumAwareNormalization`; kvp, filtration and visibility from
    ``data[meta_key]`` (the sidecar) unless given."""

    backend = SpectrumAwareNormalization.backend

    def __init__(self, keys: KeysCollection, calibration: Mapping | str | os.PathLike, *,
                 e_eff_kev: float | None = None, kvp: float | None = None,
                 filtration_mm: Mapping[str, float] | None = None, visibility: Any = None,
                 meta_key: str = "meta", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.calibration = load_calibration(calibration)
        self.given = {"e_eff_kev": e_eff_kev, "kvp": kvp, "filtration_mm": filtration_mm, "visibility": visibility}
        self.meta_key = meta_key
        self._cache: dict[str, SpectrumAwareNormalization] = {}

    def _op(self, d: Mapping) -> SpectrumAwareNormalization:
        m, given = self.meta_key, self.given
        e_eff = scan_value(d, "e_eff_kev", given["e_eff_kev"], meta_key=m, default=None)
        needed = {} if e_eff is None else {"default": None}  # no default: missing is an error
        args = {"e_eff_kev": e_eff, "kvp": scan_value(d, "kvp", given["kvp"], meta_key=m, **needed),
                "filtration_mm": scan_value(d, "filtration_mm", given["filtration_mm"], meta_key=m, default=None),
                "visibility": scan_value(d, "visibility", given["visibility"], meta_key=m, **needed)}
        key = repr(sorted(args.items(), key=lambda kv: kv[0]))
        if key not in self._cache:  # spectra are the same for every scan of a cohort
            self._cache[key] = SpectrumAwareNormalization(self.calibration, **args)
        return self._cache[key]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        op = self._op(d)
        for key in keys:
            d[key] = op(d[key])
        return d


SpectrumAwareNormalizationD = SpectrumAwareNormalizationDict = SpectrumAwareNormalizationd
