"""Build the network input for one modality from attenuation and decomposed dark-field.

Channel table (docs/ARCHITECTURE.md; the bundles' metadata repeats it):

| modality   | channels                                  |
|------------|-------------------------------------------|
| `attn`     | `attn`                                    |
| `df`       | `c0, amp, amp_cos2t, amp_sin2t`           |
| `combined` | `attn, c0, amp, amp_cos2t, amp_sin2t`     |

``aniso`` (|c2|/c0) is left out of the network input: it is a ratio of two channels the network
already sees and is noisy where c0 is small.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from dfseg.channels import MODALITY_CHANNELS
from dfseg.errors import InputError
from dfseg.transforms.decomposition import DF_CHANNELS

__all__ = [
    "MODALITY_CHANNELS",
    "SelectModality",
    "SelectModalityD",
    "SelectModalityDict",
    "SelectModalityd",
    "modality_channels",
]


def modality_channels(modality: str) -> list[str]:
    """Channel names of the network input for ``modality`` (``attn``, ``df`` or ``combined``).

    Raises:
        ValueError: unknown modality (the message lists the valid ones).
    """
    try:
        return list(MODALITY_CHANNELS[modality])
    except (KeyError, TypeError):
        raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(MODALITY_CHANNELS)}") from None


def _cat(parts: list[Any]) -> Any:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts, dim=0)
    return np.concatenate(parts, axis=0)


class SelectModality(Transform):
    """Stack the channels of one modality: ``attn`` (1 ch), ``df`` (4 ch) or ``combined`` (5 ch).

    Args:
        modality: ``"attn"``, ``"df"`` or ``"combined"``.

    Call with ``attn`` (1, X, Y, Z) (mu, 1/mm) and/or ``df`` (5, X, Y, Z) decomposed dark-field in
    the order of :data:`DF_CHANNELS`; returns (C, X, Y, Z) of the type/device of the first input
    used, C = ``len(modality_channels(modality))``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, modality: str) -> None:
        self.channels = modality_channels(modality)
        self.modality = modality

    def __call__(self, attn: Any = None, df: Any = None, *, extra: Sequence[Any] = (),
                 where: tuple[str, str] = ("attn", "df")) -> Any:
        """Build the network input.

        Args:
            attn: (1, X, Y, Z) attenuation; needed for ``attn`` and ``combined``.
            df: (5, X, Y, Z) decomposed dark-field; needed for ``df`` and ``combined``.
            extra: further (C_i, X, Y, Z) feature channels appended after the modality's channels.
            where: names used in error messages for ``attn`` and ``df``.
        """
        parts: list[Any] = []
        if "attn" in self.channels:
            if attn is None:
                raise InputError(where[0], f"modality {self.modality!r} needs the attenuation image")
            if attn.ndim != 4 or attn.shape[0] != 1:
                raise InputError(where[0], f"expected (1, X, Y, Z) attenuation, found shape {tuple(attn.shape)}")
            parts.append(attn)
        df_names = [c for c in self.channels if c in DF_CHANNELS]
        if df_names:
            if df is None:
                raise InputError(where[1], f"modality {self.modality!r} needs the decomposed dark-field")
            if df.ndim != 4 or df.shape[0] != len(DF_CHANNELS):
                raise InputError(where[1], f"expected {len(DF_CHANNELS)} decomposed dark-field channels "
                                           f"{DF_CHANNELS}, found shape {tuple(df.shape)}; run DirectionalDecomposition first")
            idx = [DF_CHANNELS.index(c) for c in df_names]
            parts.append(df[idx])
        parts.extend(extra)
        ref = parts[0]
        parts = [convert_to_dst_type(p, ref, dtype=ref.dtype)[0] for p in parts]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise InputError(", ".join(where), f"spatial shapes differ: {sorted(shapes)}")
        return _cat(parts)


class SelectModalityd(MapTransform):
    """Dictionary version of :class:`SelectModality`.

    Args:
        keys: ``(attn_key, df_key)``: the (1, X, Y, Z) attenuation and (5, X, Y, Z) decomposed
            dark-field images.
        modality: ``"attn"``, ``"df"`` or ``"combined"``.
        output_key: where the network input goes.
        extra_keys: feature-map keys whose channels are appended after the modality's channels.
        allow_missing_keys: a modality that does not use a key does not need it either way;
            this only relaxes ``extra_keys``.
    """

    backend = SelectModality.backend

    def __init__(self, keys: KeysCollection = ("attn", "df"), modality: str = "combined",
                 output_key: str = "image", *, extra_keys: Sequence[str] = (),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys must be (attn_key, df_key), got {self.keys}")
        self.select = SelectModality(modality)
        self.output_key = output_key
        self.extra_keys = tuple(extra_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        attn_key, df_key = self.keys
        extra = []
        for k in self.extra_keys:
            if k in d:
                extra.append(d[k])
            elif not self.allow_missing_keys:
                raise InputError(str(k), "feature key not in the data")
        d[self.output_key] = self.select(d.get(attn_key), d.get(df_key), extra=extra,
                                         where=(str(attn_key), str(df_key)))
        return d


SelectModalityD = SelectModalityDict = SelectModalityd
