"""Channel names shared by every stage (docs/ARCHITECTURE.md, "Decomposed and network channels")."""

from __future__ import annotations

#: the five channels DirectionalDecomposition makes of N grating-orientation channels, in order
DF_CHANNELS: tuple[str, ...] = ("c0", "amp", "aniso", "amp_cos2t", "amp_sin2t")

#: network input channels per modality
MODALITY_CHANNELS: dict[str, tuple[str, ...]] = {
    "attn": ("attn",),
    "df": ("c0", "amp", "amp_cos2t", "amp_sin2t"),
    "combined": ("attn", "c0", "amp", "amp_cos2t", "amp_sin2t"),
}
