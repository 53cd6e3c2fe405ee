"""Phantom variants: micro-structure scale, spectrum and tumour shape model, for held-out tests.

A model trained on one variant and tested on another sees a different alveolar size (so a
different dark-field strength and energy exponent), a different beam (so different beam
hardening and effective energy) and different tumour boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dfseg.errors import InputError
from dfseg.simulate.anatomy import MicroStructure


@dataclass(frozen=True)
class Variant:
    """One phantom variant.

    Attributes:
        name: variant name (``--variant``).
        micro: lung micro-structure parameters.
        kvp: tube voltage, kV.
        filtration_mm: added filtration, SpekPy material -> mm.
        tumour_model: tumour shape model (see :data:`dfseg.simulate.tumours.SHAPE_MODELS`).
        description: one line for humans.
    """

    name: str
    micro: MicroStructure
    kvp: float
    filtration_mm: dict[str, float] = field(default_factory=dict)
    tumour_model: str = "smooth"
    description: str = ""


VARIANTS: dict[str, Variant] = {
    "standard": Variant(
        "standard", MicroStructure(radius_um=30.0, air_fraction=0.75, anisotropy=0.25), 70.0, {"Al": 1.0},
        "smooth", "alveolar radius 30 um, 70 kVp + 1 mm Al, smooth irregular tumours"),
    "fine": Variant(
        "fine", MicroStructure(radius_um=20.0, air_fraction=0.72, anisotropy=0.3, correlation_mm=1.0), 60.0,
        {"Al": 0.5}, "lobulated", "smaller alveoli (20 um), 60 kVp + 0.5 mm Al, lobulated tumours"),
    "coarse": Variant(
        "coarse", MicroStructure(radius_um=45.0, air_fraction=0.78, anisotropy=0.2, correlation_mm=2.5), 75.0,
        {"Al": 2.0}, "spiculated", "larger alveoli (45 um), 75 kVp + 2 mm Al, spiculated tumours"),
}


def get_variant(name: str) -> Variant:
    """Look a variant up by name; an unknown name raises :class:`InputError` listing the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise InputError("variant", f"unknown phantom variant {name!r}; known: {', '.join(VARIANTS)}") from None
