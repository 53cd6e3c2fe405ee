"""Named acquisition protocols: voxel size, grid, angles and dose of a simulated scan.

The reference protocols are the mission's: a true-size mouse (thorax 25 mm wide, the lungs' whole
cranio-caudal extent) on isotropic 0.10 or 0.15 mm voxels, the grid sized from the anatomy
(:func:`dfseg.simulate.anatomy.anatomy_grid`), and enough projection angles for the grid: about
``pi/2`` times the body's diameter in pixels (parallel-beam angular sampling; Kak & Slaney ch. 5).
The dose is a fluence per mm^2 (:data:`dfseg.simulate.acquisition.DEFAULT_FLUENCE_PER_MM2`), so
the counts per pixel follow from the pixel area.

The CPU presets keep the same voxels and the same true-size mouse but simulate a slab of the
thorax (Z shorter than the lungs, centred on the thorax's middle) with fewer angles, so a 2-core
machine can simulate a cohort in minutes; ``quick`` uses coarser voxels for smoke tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dfseg.errors import InputError
from dfseg.simulate.anatomy import THORAX_LENGTH_MM, anatomy_grid


@dataclass(frozen=True)
class Protocol:
    """One named acquisition protocol.

    Attributes:
        name: preset name (``dfseg simulate --protocol NAME``).
        voxel_mm: isotropic voxel (and detector pixel) size, mm.
        n_angles: CT projection angles over 180 degrees.
        length_mm: cranio-caudal extent of the grid, mm (the whole thorax, or a slab of it).
        z_centre_mm: position of the grid's centre in the thorax, mm (0: the thorax's middle).
        summary: one line for ``--help`` and the docs.
    """

    name: str
    voxel_mm: float
    n_angles: int
    length_mm: float
    z_centre_mm: float
    summary: str

    def grid(self, air_columns: int = 4) -> tuple[int, int, int]:
        """``(X, Y, Z)`` voxels of this protocol's grid."""
        return anatomy_grid(self.voxel_mm, air_columns=air_columns, length_mm=self.length_mm)

    def describe(self) -> dict:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("mission-100um", 0.10, 400, THORAX_LENGTH_MM, 0.0,
             "reference: true-size mouse, whole thorax, 0.10 mm voxels (260 x 260 x 160), 400 angles"),
    Protocol("mission-150um", 0.15, 270, THORAX_LENGTH_MM, 0.0,
             "reference: true-size mouse, whole thorax, 0.15 mm voxels (178 x 178 x 107), 270 angles"),
    Protocol("demo", 0.15, 120, 4.8, 0.0,
             "CPU demo: true-size mouse at 0.15 mm, a 4.8 mm slab of the mid-thorax (178 x 178 x 32), 120 angles"),
    Protocol("quick", 0.30, 72, 4.8, 0.0,
             "smoke test: true-size mouse at 0.30 mm, a 4.8 mm slab (94 x 94 x 16), 72 angles"),
)}

#: The protocol ``dfseg simulate`` uses when neither ``--protocol`` nor ``--size`` is given.
DEFAULT_PROTOCOL = "mission-150um"


def get_protocol(name: str) -> Protocol:
    """The named :class:`Protocol`; InputError naming the choices for an unknown name."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise InputError("--protocol", f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}") from None
