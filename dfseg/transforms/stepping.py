"""Raw phase-stepping frames -> projection stacks: dark frames and phase-stepping retrieval.

A Talbot-Lau scanner records, per grating orientation and projection angle, M stepping frames
while one grating moves across a period, and flat (reference) series without the sample every few
projections. :class:`PhaseSteppingRetrieval` turns them into dfseg's projection stacks ``proj_T``
(``a0_s / a0_r``), ``proj_D`` (``V_s / V_r``) and ``proj_dphi`` (``phi_s - phi_r``, radians)
with :func:`dfseg.physics.stepping.retrieve_projections`, which documents the model (per-frame
step phases, doses, flats interpolated in time). The projection chain (``transforms/flux.py``
onwards) then takes ``proj_T`` / ``proj_D`` as if they came from disk.

Shapes: sample frames ``(N, A, M, U, Z)`` (orientations, angles, steps, detector columns, rows),
flat frames ``(N, F, M, U, Z)`` (F flat acquisitions), dark frames ``(U, Z)`` or a stack
``(K, U, Z)``; outputs ``(N, A, U, Z)`` (docs/ARCHITECTURE.md "Axes and units"). Counts in, unitless
ratios and radians out. All transforms keep the input type and device (numpy in, numpy out;
tensor in, tensor out on the same device); results are float32 unless the input is float64.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from dfseg.data.scan import scan_value
from dfseg.errors import InputError
from dfseg.physics.stepping import METHODS, retrieve_projections, subtract_dark

__all__ = [
    "DarkFrameSubtraction", "DarkFrameSubtractiond", "DarkFrameSubtractionD", "DarkFrameSubtractionDict",
    "PhaseSteppingRetrieval", "PhaseSteppingRetrievald", "PhaseSteppingRetrievalD", "PhaseSteppingRetrievalDict",
]

#: What :class:`PhaseSteppingRetrievald` writes, in order: transmission, visibility ratio, differential phase.
OUTPUT_KEYS = ("proj_T", "proj_D", "proj_dphi")


def _out_dtype(img: NdarrayOrTensor):
    """float64 stays float64, anything else (counts as integers, float32) becomes float32."""
    if isinstance(img, torch.Tensor):
        return torch.float64 if img.dtype == torch.float64 else torch.float32
    return np.float64 if np.asarray(img).dtype == np.float64 else np.float32


def _shape(x: Any) -> tuple:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


class DarkFrameSubtraction(Transform):
    """Subtract the detector's dark frame (beam off) from raw frames: ``frames - mean(dark)``.

    Args:
        dark: the dark frame ``(U, Z)`` or a stack ``(K, U, Z)`` (averaged over K), counts; may
            instead be given per call.
        clip: set negative results (dark noise) to 0.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, dark: NdarrayOrTensor | None = None, *, clip: bool = False) -> None:
        self.dark = dark
        self.clip = clip

    def __call__(self, img: NdarrayOrTensor, dark: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Args:
            img: raw frames ``(..., U, Z)`` (e.g. ``(N, A, M, U, Z)``), counts.
            dark: dark frame ``(U, Z)`` or stack ``(K, U, Z)``; overrides the one given at construction.

        Returns: dark-subtracted counts, ``img``'s shape and type.

        Raises:
            InputError: no dark frame, a dark frame that does not match the frames' ``(U, Z)``, or
                non-finite values.
        """
        dark = self.dark if dark is None else dark
        if dark is None:
            raise InputError("DarkFrameSubtraction", "no dark frame: give one to the transform or the call")
        ds, fs = _shape(dark), _shape(img)
        if len(ds) not in (2, 3) or len(fs) < 2 or ds[-2:] != fs[-2:]:
            raise InputError("dark", f"expected a dark frame (U, Z) or a stack (K, U, Z) matching frames "
                                     f"{fs}, got shape {ds}")
        out = subtract_dark(img, dark, stack_axis=0 if len(ds) == 3 else None, clip=self.clip)
        return convert_to_dst_type(out, img, dtype=_out_dtype(img))[0]


class PhaseSteppingRetrieval(Transform):
    """Raw sample and flat stepping frames -> ``(T, D, dphi)`` projection stacks.

    See :func:`dfseg.physics.stepping.retrieve_projections` for the algorithm.

    Args:
        sample_phases: sample step phases in radians, ``(M,)``, ``(A, M)`` or ``(N, A, M)``
            (2 pi * grating position / period); None: ``2 pi k / M``.
        flat_phases: flat step phases, ``(M,)``, ``(F, M)`` or ``(N, F, M)``; None: ``2 pi k / M``.
        flat_indices: ``(F,)`` times of the flat acquisitions (projection index or timestamp, on the
            scale of ``sample_indices``; ``RawScan.flat_indices`` as they are); None:
            ``linspace(0, A - 1, F)``.
        sample_indices: ``(A,)`` times of the projections; None: ``0 .. A - 1``.
        air_columns: air-only detector columns at each edge of U (sidecar ``air_columns``); > 0
            corrects each frame's dose (flux) from them.
        air_mask: boolean air region broadcastable to ``(N, A, U, Z)``, instead of ``air_columns``.
        estimate_phases: estimate every frame's step phase (jittered or unknown grating positions).
        method: ``"auto"``, ``"fft"`` (equally spaced steps) or ``"lsq"`` (any steps).
        clip_dark: clip negative dark-subtracted counts to 0.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, *, sample_phases: Any = None, flat_phases: Any = None,
                 flat_indices: Sequence[float] | None = None, sample_indices: Sequence[float] | None = None,
                 air_columns: int = 0, air_mask: NdarrayOrTensor | None = None, estimate_phases: bool = False,
                 method: str = "auto", clip_dark: bool = False) -> None:
        if method not in METHODS:
            raise InputError("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
        self.sample_phases = sample_phases
        self.flat_phases = flat_phases
        self.flat_indices = flat_indices
        self.sample_indices = sample_indices
        self.air_columns = int(air_columns)
        self.air_mask = air_mask
        self.estimate_phases = bool(estimate_phases)
        self.method = method
        self.clip_dark = clip_dark

    def retrieve(self, sample: NdarrayOrTensor, flats: NdarrayOrTensor,
                 dark: NdarrayOrTensor | None = None) -> dict[str, NdarrayOrTensor]:
        """Everything the retrieval measures, each converted to ``sample``'s type and device.

        Returns:
            ``{"T", "D", "dphi"}`` ``(N, A, U, Z)``, ``{"phases", "dose"}`` ``(N, A, M)`` (the sample
            frames' step phases in radians and doses), ``{"flat_phases", "flat_dose"}`` ``(N, F, M)``.
        """
        res = retrieve_projections(
            sample, flats, darks=dark, sample_phases=self.sample_phases, flat_phases=self.flat_phases,
            flat_indices=self.flat_indices, sample_indices=self.sample_indices, air_columns=self.air_columns,
            air_mask=self.air_mask, estimate_phases=self.estimate_phases, method=self.method,
            clip_dark=self.clip_dark)
        dtype = _out_dtype(sample)
        return {k: convert_to_dst_type(v, sample, dtype=dtype)[0] for k, v in res.items()}

    def __call__(self, sample: NdarrayOrTensor, flats: NdarrayOrTensor,
                 dark: NdarrayOrTensor | None = None) -> tuple[NdarrayOrTensor, NdarrayOrTensor, NdarrayOrTensor]:
        """Args:
            sample: raw sample frames ``(N, A, M, U, Z)``, counts.
            flats: raw flat frames ``(N, F, M, U, Z)``, counts.
            dark: dark frame ``(U, Z)`` or stack ``(K, U, Z)``, counts; None: none.

        Returns:
            ``(T, D, dphi)``, each ``(N, A, U, Z)`` of ``sample``'s type (unitless, unitless, radians).

        Raises:
            InputError: fewer than 3 steps, shapes that disagree, non-finite frames, flats without
                counts or visibility, bad phases, indices or air region.
        """
        res = self.retrieve(sample, flats, dark)
        return res["T"], res["D"], res["dphi"]


class DarkFrameSubtractiond(MapTransform):
    """Dictionary :class:`DarkFrameSubtraction`: the dark frames come from ``dark_key``.

    Args:
        keys: raw frame keys (default ``raw_sample``, ``raw_flat``).
        dark_key: key of the dark frame ``(U, Z)`` or stack ``(K, U, Z)``.
        clip: set negative results to 0.
        allow_missing_keys: skip missing frame keys, and do nothing when ``dark_key`` is missing.
    """

    backend = DarkFrameSubtraction.backend

    def __init__(self, keys: KeysCollection = ("raw_sample", "raw_flat"), dark_key: str = "raw_dark", *,
                 clip: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.dark_key = dark_key
        self.op = DarkFrameSubtraction(clip=clip)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get(self.dark_key) is None:
            if self.allow_missing_keys:
                return d
            raise InputError(self.dark_key, "dark frames missing from the data")
        for key in self.key_iterator(d):
            d[key] = self.op(d[key], d[self.dark_key])
        return d


class PhaseSteppingRetrievald(MapTransform):
    """Dictionary :class:`PhaseSteppingRetrieval`: ``raw_sample``, ``raw_flat`` (``raw_dark``) -> ``proj_*``.

    Acquisition values not given here are read from ``data[meta_key]`` (:func:`scan_value`):
    ``air_columns`` (sidecar; 0 when absent), ``sample_phases``, ``flat_phases``, ``flat_indices``
    and ``sample_indices`` (the scanner's logs; defaults of :class:`PhaseSteppingRetrieval` when
    absent).

    Args:
        keys: ``(sample_key, flat_key)``, default ``("raw_sample", "raw_flat")``.
        dark_key: key of the dark frame(s), used when present.
        output_keys: where ``T``, ``D``, ``dphi`` go (default ``proj_T``, ``proj_D``, ``proj_dphi``).
        steps_key: if given, ``{"phases", "dose", "flat_phases", "flat_dose"}`` are written there.
        meta_key: where the acquisition metadata lives.
        sample_phases, flat_phases, flat_indices, sample_indices, air_columns, air_mask,
            estimate_phases, method, clip_dark: as :class:`PhaseSteppingRetrieval`.
        allow_missing_keys: do nothing when the sample or flat key is missing.
    """

    backend = PhaseSteppingRetrieval.backend

    def __init__(self, keys: KeysCollection = ("raw_sample", "raw_flat"), dark_key: str | None = "raw_dark", *,
                 output_keys: Sequence[str] = OUTPUT_KEYS, steps_key: str | None = None, meta_key: str = "meta",
                 sample_phases: Any = None, flat_phases: Any = None, flat_indices: Sequence[float] | None = None,
                 sample_indices: Sequence[float] | None = None, air_columns: int | None = None,
                 air_mask: NdarrayOrTensor | None = None, estimate_phases: bool = False, method: str = "auto",
                 clip_dark: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise InputError("PhaseSteppingRetrievald", f"keys must be (sample_key, flat_key), got {self.keys}")
        if len(output_keys) != 3:
            raise InputError("PhaseSteppingRetrievald", f"output_keys must name T, D and dphi, got {output_keys}")
        if method not in METHODS:
            raise InputError("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
        self.dark_key = dark_key
        self.output_keys = tuple(output_keys)
        self.steps_key = steps_key
        self.meta_key = meta_key
        self.given = {"sample_phases": sample_phases, "flat_phases": flat_phases, "flat_indices": flat_indices,
                      "sample_indices": sample_indices}
        self.air_columns = air_columns
        self.options = {"air_mask": air_mask, "estimate_phases": estimate_phases, "method": method,
                        "clip_dark": clip_dark}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        sample_key, flat_key = self.keys
        missing = [k for k in (sample_key, flat_key) if k not in d]
        if missing:
            if self.allow_missing_keys:
                return d
            raise InputError(missing[0], "raw frames missing from the data")
        values = {name: scan_value(d, name, given, meta_key=self.meta_key, default=None)
                  for name, given in self.given.items()}
        air = scan_value(d, "air_columns", self.air_columns, meta_key=self.meta_key, default=0)
        op = PhaseSteppingRetrieval(**values, air_columns=int(air), **self.options)
        dark = d.get(self.dark_key) if self.dark_key is not None else None
        res = op.retrieve(d[sample_key], d[flat_key], dark)
        for key, name in zip(self.output_keys, ("T", "D", "dphi"), strict=True):
            d[key] = res[name]
        if self.steps_key is not None:
            d[self.steps_key] = {k: res[k] for k in ("phases", "dose", "flat_phases", "flat_dose")}
        return d


DarkFrameSubtractionD = DarkFrameSubtractionDict = DarkFrameSubtractiond
PhaseSteppingRetrievalD = PhaseSteppingRetrievalDict = PhaseSteppingRetrievald
