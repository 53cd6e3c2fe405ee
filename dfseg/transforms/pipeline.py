"""The correction chains as one MONAI ``Compose`` each.

- :func:`projection_chain`: raw projection stacks ``proj_T`` / ``proj_D`` ``(N, A, U, Z)`` (ratios,
  as measured) -> flux/drift normalization -> ``-ln`` -> projection-domain beam-hardening
  correction -> FBP (``attn`` ``(1, X, Y, Z)`` mu in 1/mm, the N orientation scans averaged;
  ``df`` ``(N, X, Y, Z)`` eps in 1/mm) -> spectrum normalization -> directional decomposition
  (``df`` becomes ``(5, X, Y, Z)``: c0, amp, aniso, amp_cos2t, amp_sin2t).
- :func:`volume_chain`: reconstructions ``attn`` ``(1, X, Y, Z)`` and ``df`` ``(N, X, Y, Z)`` ->
  first-order beam-hardening correction -> spectrum normalization -> decomposition.

Scan parameters (``air_columns``, ``voxel_mm``, ``kvp``, ``filtration_mm``, ``visibility``,
``orientations_deg``) come from the data dictionary's ``meta`` entry, which
:class:`dfseg.data.LoadScand` fills from the sidecar; each transform reads them with
:func:`dfseg.data.scan_value`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from monai.transforms import Compose

from dfseg.calibration import load_calibration
from dfseg.transforms.beam_hardening import BeamHardeningCorrectiond
from dfseg.transforms.decomposition import DirectionalDecompositiond
from dfseg.transforms.flux import DetectorDriftCorrectiond, FluxNormalizationd
from dfseg.transforms.modality import SelectModalityd
from dfseg.transforms.reconstruction import FBPReconstructiond, NegativeLogd
from dfseg.transforms.spectrum import SpectrumAwareNormalizationd

__all__ = ["projection_chain", "volume_chain"]


def _tail(calibration: dict, decompose: bool, modality: str | None, meta_key: str) -> list:
    out: list = [SpectrumAwareNormalizationd("df", calibration, meta_key=meta_key)]
    if decompose:
        out.append(DirectionalDecompositiond("df", meta_key=meta_key))
    if modality is not None:
        out.append(SelectModalityd(("attn", "df"), modality))
    return out


def projection_chain(calibration: Mapping | str | os.PathLike, *, aluminium_weight: float = 0.0,
                     bone_correction: bool = False, linearise: bool = False, drift_degree: int | None = None, decompose: bool = True,
                     modality: str | None = None, filter_name: str = "ramp", meta_key: str = "meta") -> Compose:
    """Raw projections to corrected (decomposed) volumes.

    Args:
        calibration: calibration dictionary or path.
        aluminium_weight: mixing weight of the aluminium beam-hardening curve (0 = water).
        bone_correction: two-pass bone beam-hardening correction instead of one mixing weight
            (:class:`dfseg.transforms.BeamHardeningCorrectiond`; needs ``voxel_mm``, ``kvp`` and
            ``visibility`` in the sidecar).
        linearise: water-linearise the attenuation before reconstruction.
        drift_degree: if given, fit the gain as a smooth polynomial over the angle index
            (:class:`DetectorDriftCorrection`) instead of dividing every projection by its own air
            mean (:class:`FluxNormalization`, the default, which also removes flux jitter).
        decompose: end with the directional decomposition (needs >= 3 orientations).
        modality: if given, also build the network input ``image`` (``attn`` | ``df`` | ``combined``).
    """
    cal = load_calibration(calibration)
    gain = (FluxNormalizationd("proj_T", meta_key=meta_key) if drift_degree is None
            else DetectorDriftCorrectiond("proj_T", meta_key=meta_key, degree=drift_degree))
    return Compose([
        gain,
        NegativeLogd(("proj_T", "proj_D")),
        BeamHardeningCorrectiond("proj_D", cal, attn_key="proj_T", aluminium_weight=aluminium_weight,
                                 bone_correction=bone_correction, linearise=linearise, meta_key=meta_key),
        FBPReconstructiond(("proj_T", "proj_D"), ("attn", "df"), average_keys="proj_T", filter_name=filter_name,
                           meta_key=meta_key),
        *_tail(cal, decompose, modality, meta_key),
    ])


def volume_chain(calibration: Mapping | str | os.PathLike, *, aluminium_weight: float = 0.0,
                 decompose: bool = True, modality: str | None = None, meta_key: str = "meta") -> Compose:
    """Reconstructed volumes to corrected (decomposed) volumes, first-order beam hardening."""
    cal = load_calibration(calibration)
    return Compose([
        BeamHardeningCorrectiond("df", cal, attn_key="attn", domain="volume", aluminium_weight=aluminium_weight),
        *_tail(cal, decompose, modality, meta_key),
    ])
