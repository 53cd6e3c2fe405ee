"""Mouse thorax on a voxel grid: materials, lung micro-structure and per-voxel scattering tensors.

The phantom is built from smooth signed-distance shapes (partial-volume fractions at the edges)
on an (X, Y, Z) grid with isotropic voxels, Z cranio-caudal. The mouse has its true size: the
thorax is :data:`MOUSE_WIDTH_MM` wide and :data:`THORAX_LENGTH_MM` long (the lungs' full
cranio-caudal extent, about 14 mm, lies inside it), and by default the grid is sized from that
anatomy (:func:`anatomy_grid`): X = Y hold the body inside the reconstruction circle with
``air_columns`` air-only detector columns on each side, Z holds the thorax. A grid given
explicitly may instead be a slab of the thorax (Z shorter than the thorax, centred on
``z_centre_mm``), or, with ``fit="shrink"``, a small cube into which the whole body is scaled
down (fast tests only: the anatomy then depends on the voxel size, and the sidecar's
``anatomy.scale`` says so).

Materials (names of :data:`dfseg.physics.materials.MATERIALS`) are stored as volume fractions
(a fraction above 1 means denser than the nominal material, e.g. a dense tumour region):

- ``soft_tissue``: body wall, heart, vessels, tumours;
- ``lung_tissue``: alveolar septa, the solid part ``1 - phi`` of a lung voxel;
- ``air``: the aerated part ``phi`` of a lung voxel;
- ``bone``: spine and ribs.

Lung micro-structure: alveolar radius R(x) in um, air volume fraction phi(x), a local unit
orientation o(x) of airways/vessels (roughly radial from the hilum) and an anisotropy a(x) in
[0, 1). Only lung voxels scatter (bone and soft tissue have no true dark-field). The scattering
tensor of a voxel with linear diffusion coefficient eps(E) is

    S(E) = eps(E) * [(1 - a) I + 1.5 a (I - o o^T)],

so a sensitivity direction s sees ``s^T S s = eps * [(1 - a) + 1.5 a (1 - (s.o)^2)]``: airways
and vessels scatter perpendicular to their axis, and the mean over all directions is eps.
The energy dependence eps(E; R, phi) is written on a small SVD basis h_k(E) (see
:func:`scattering_basis`) so a ray's dark-field is ``DF(E) = sum_k P_k h_k(E)`` with P_k the line
integral of the k-th coefficient tensor.

Two options vary the anatomy between animals (both off by default, so a default phantom is
unchanged; :mod:`dfseg.simulate.domain` turns them on): :class:`AnatomyJitter` (body width and
depth, lung and heart size and position) and :class:`BronchovascularTree` (branching airways,
air-filled with a tissue wall, with their accompanying arteries and an independent venous tree,
blood counted as ``soft_tissue``, inside the lungs, never in the tumour label: the classic
confounders of a small nodule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from dfseg.errors import InputError
from dfseg.physics import linear_diffusion_coefficient

#: Mouse thorax width (left-right), mm.
MOUSE_WIDTH_MM = 25.0
#: Thorax length (cranio-caudal) simulated for a whole mouse, mm: the lungs (about 14 mm) and a margin.
THORAX_LENGTH_MM = 16.0
#: How a grid and the mouse are fitted together: ``"true"`` keeps the mouse's size (the grid must
#: hold it), ``"shrink"`` scales the body down into a small cubic grid (fast tests).
FITS = ("true", "shrink")

#: Tensor component order used everywhere: (Sxx, Syy, Szz, Sxy, Sxz, Syz).
TENSOR_COMPONENTS = ("xx", "yy", "zz", "xy", "xz", "yz")


@dataclass(frozen=True)
class MicroStructure:
    """Lung micro-structure parameters of a phantom variant.

    Attributes:
        radius_um: mean alveolar radius R in um.
        radius_log_sd: standard deviation of ln R across the lung (smooth field).
        air_fraction: mean air volume fraction phi of aerated lung.
        air_fraction_sd: standard deviation of phi across the lung (smooth field).
        anisotropy: mean anisotropy a of the scattering tensor (0 = isotropic).
        correlation_mm: length scale of the smooth random fields, mm.
    """

    radius_um: float = 30.0
    radius_log_sd: float = 0.15
    air_fraction: float = 0.75
    air_fraction_sd: float = 0.04
    anisotropy: float = 0.25
    correlation_mm: float = 1.5


@dataclass(frozen=True)
class AnatomyJitter:
    """Size and position of the body and organs of one animal, relative to the reference mouse.

    Identity values (the defaults) give the reference anatomy exactly.

    Attributes:
        body_width_scale: left-right body width / :data:`MOUSE_WIDTH_MM` (true-size fit; with
            ``fit="shrink"`` only values below 1 take effect, the grid bounds the body).
        body_depth_scale: dorso-ventral semi-axis relative to the reference width-to-depth ratio.
        lung_scale: factor on both lungs' semi-axes (the rib cage still bounds them).
        lung_shift_mm: (3,) shift of both lungs' centres, mm.
        heart_scale: factor on the heart's semi-axes.
        heart_shift_mm: (3,) shift of the heart's centre, mm.
    """

    body_width_scale: float = 1.0
    body_depth_scale: float = 1.0
    lung_scale: float = 1.0
    lung_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    heart_scale: float = 1.0
    heart_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class BronchovascularTree:
    """Branching airway and vessel tree of each lung, from its hilum outwards.

    Space-filling dichotomous branching (after Kitaoka, Takaki & Suki 1999, J Appl Physiol 87:
    2207): a branch owns a cloud of points filling its share of the lung (the trunk: the whole
    lung ellipsoid); it runs from its start towards the cloud's centroid for ``length_fraction``
    of the distance, then the cloud is cut in two by a plane through the branch (perpendicular to
    the parent's plane) and each half feeds a child. Radii follow Murray's law by the share of the
    cloud each child supplies, ``r_child = r * (2 n_child / n)^(1/3) * radius_ratio`` (an even
    split gives ``radius_ratio``); each segment tapers by ``radius_ratio`` along its length.

    Per lung: an airway tree (air-filled tube with a soft-tissue wall of ``wall_fraction`` x the
    lumen radius), an artery beside every airway (radius ``artery_ratio`` x the lumen: the
    bronchovascular bundle) and, with ``veins``, an independent venous tree from a root just
    ventral and caudal of the hilum. Vessels are solid ``soft_tissue`` (blood). Everything is
    clipped to the lungs: the tree lies in the lung mask, has no alveoli (no dark-field) and is
    never in the tumour label. Radii are for a true-size mouse and scale with the body under
    ``fit="shrink"``.

    Reference values (mouse, estimates): main bronchus about 0.6-0.9 mm across, hence a trunk
    lumen radius of 0.3-0.45 mm; Murray's law gives ``radius_ratio = 2^(-1/3) = 0.79``; the first
    4-6 generations are wider than a 0.1-0.2 mm voxel.

    Attributes:
        generations: generations including the trunk (1 = the trunk only).
        trunk_radius_mm: airway lumen radius of the trunk entering the lung, mm.
        radius_ratio: child / parent radius for an even split.
        length_fraction: share of the distance to its cloud's centroid a branch covers.
        wall_fraction: airway wall thickness / lumen radius.
        artery_ratio: artery (and vein) radius / airway lumen radius of the same generation.
        veins: add an independent venous tree per lung.
        points: points of the cloud that fills a lung.
    """

    generations: int = 6
    trunk_radius_mm: float = 0.35
    radius_ratio: float = 0.79
    length_fraction: float = 0.6
    wall_fraction: float = 0.25
    artery_ratio: float = 0.9
    veins: bool = True
    points: int = 2000

    def __post_init__(self) -> None:
        if self.generations < 1:
            raise InputError("tree.generations", f"need at least 1, got {self.generations}")
        for name in ("trunk_radius_mm", "radius_ratio", "length_fraction", "artery_ratio"):
            if not getattr(self, name) > 0:
                raise InputError(f"tree.{name}", f"must be positive, got {getattr(self, name)}")
        if self.wall_fraction < 0:
            raise InputError("tree.wall_fraction", f"must be >= 0, got {self.wall_fraction}")
        if self.points < 2:
            raise InputError("tree.points", f"need at least 2, got {self.points}")


@dataclass
class Anatomy:
    """A voxelised mouse thorax.

    Attributes:
        voxel_mm: isotropic voxel size, mm.
        materials: material name -> (X, Y, Z) float32 volume fraction.
        radius_um: (X, Y, Z) float32 alveolar radius R in um (0 outside the lung).
        air_fraction: (X, Y, Z) float32 air volume fraction phi of the scattering micro-structure.
        orientation: (X, Y, Z, 3) float32 unit vector of the local airway/vessel direction.
        anisotropy: (X, Y, Z) float32 anisotropy a in [0, 1).
        lung_mask: (X, Y, Z) bool lung (tumours inside the lung stay in the mask).
        body_mask: (X, Y, Z) bool body.
        label: (X, Y, Z) uint8 tumour 0/1.
        tumours: one dict per inserted tumour (centre_mm, diameter_mm, ...).
        info: free-form description (scale, micro-structure parameters) for sidecars.
        structures: (X, Y, Z) float32 fraction of each voxel taken by the airway and vessel tree
            (:class:`BronchovascularTree`), or None when the phantom has none; tumours spare it.
    """

    voxel_mm: float
    materials: dict[str, np.ndarray]
    radius_um: np.ndarray
    air_fraction: np.ndarray
    orientation: np.ndarray
    anisotropy: np.ndarray
    lung_mask: np.ndarray
    body_mask: np.ndarray
    label: np.ndarray
    tumours: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    structures: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.lung_mask.shape)  # type: ignore[return-value]

    def coordinates_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates (x, y, z) in mm, each (X, 1, 1) / (1, Y, 1) / (1, 1, Z), centred on 0."""
        return grid_coordinates(self.shape, self.voxel_mm)


def grid_coordinates(shape: tuple[int, int, int], voxel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in mm, ``(i - (n-1)/2) * voxel_mm`` per axis, broadcastable."""
    axes = [(np.arange(n, dtype=np.float64) - (n - 1) / 2) * voxel_mm for n in shape]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _fraction(signed_distance_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction from a signed distance (negative inside): a one-voxel linear ramp."""
    return np.clip(0.5 - signed_distance_mm / voxel_mm, 0.0, 1.0)


def _ellipsoid_distance(x, y, z, centre, semi_axes) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid: (normalised radius - 1) * smallest semi-axis."""
    r = np.sqrt(((x - centre[0]) / semi_axes[0]) ** 2 + ((y - centre[1]) / semi_axes[1]) ** 2
                + ((z - centre[2]) / semi_axes[2]) ** 2)
    return (r - 1.0) * min(semi_axes)


def smooth_field(shape: tuple[int, ...], voxel_mm: float, correlation_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field with unit standard deviation and a correlation length in mm.

    White noise is smoothed by a Gaussian of sigma ``correlation_mm``. When voxels are finer
    than a quarter of that length, the noise lives on a coarse grid of ``correlation_mm / 4``
    cells (the field has no detail finer than that), is smoothed there and interpolated
    linearly onto the voxel centres: the cost then does not grow with the voxel count's
    smoothing kernel.

    Args:
        shape: grid shape.
        voxel_mm: voxel size, mm.
        correlation_mm: Gaussian smoothing sigma, mm.
        rng: random generator.

    Returns:
        float64 array of ``shape``, mean ~0, std 1.
    """
    cell = correlation_mm / 4
    if cell <= voxel_mm:
        noise = rng.standard_normal(shape)
        f = ndimage.gaussian_filter(noise, sigma=max(correlation_mm / voxel_mm, 0.5), mode="wrap")
    else:
        coarse = tuple(int(np.ceil((n - 1) * voxel_mm / cell)) + 2 for n in shape)
        f = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma=correlation_mm / cell, mode="wrap")
        for axis, n in enumerate(shape):  # separable linear interpolation onto the voxel centres
            pos = np.arange(n) * (voxel_mm / cell)
            i0 = np.minimum(np.floor(pos).astype(np.int64), coarse[axis] - 2)
            w = (pos - i0).reshape([-1 if k == axis else 1 for k in range(len(shape))])
            f = np.take(f, i0, axis=axis) * (1 - w) + np.take(f, i0 + 1, axis=axis) * w
    sd = f.std()
    return (f - f.mean()) / (sd if sd > 0 else 1.0)


def fov_half_width_mm(size: int, voxel_mm: float, air_columns: int) -> float:
    """Largest distance (mm) from the rotation axis a body may reach on a ``size``-voxel slice.

    Every projection must leave ``air_columns`` air-only detector columns on each side and one
    margin voxel: ``(size/2 - air_columns - 1) * voxel``. :func:`anatomy_grid` inverts it.
    """
    return (size / 2 - air_columns - 1) * voxel_mm


def body_semi_axes_mm(size: int, voxel_mm: float, air_columns: int) -> float:
    """Largest left-right semi-axis (mm) of a body scaled to fit (:func:`fov_half_width_mm`), at most the mouse's."""
    avail = fov_half_width_mm(size, voxel_mm, air_columns)
    if avail <= 1.0:
        raise InputError("size/voxel_mm", f"field of view {size} x {voxel_mm} mm leaves no room for a body "
                                          f"inside {air_columns} air columns; use a larger --size or --voxel-mm")
    return min(MOUSE_WIDTH_MM / 2, avail)


def anatomy_grid(voxel_mm: float, *, air_columns: int = 4, length_mm: float | None = None,
                 width_mm: float = MOUSE_WIDTH_MM) -> tuple[int, int, int]:
    """The grid of a true-size mouse: ``(X, X, Z)`` voxels at ``voxel_mm``.

    X is the smallest even count whose reconstruction circle holds the ``width_mm`` (default
    25 mm) wide body with ``air_columns`` air-only columns on each side
    (:func:`fov_half_width_mm`); Z covers ``length_mm`` (default the whole thorax,
    :data:`THORAX_LENGTH_MM`). At 0.15 mm this is (178, 178, 107), at 0.10 mm (260, 260, 160).

    Raises:
        InputError: a non-positive voxel size, length or width.
    """
    if not voxel_mm > 0:
        raise InputError("voxel_mm", f"must be positive, got {voxel_mm}")
    length = THORAX_LENGTH_MM if length_mm is None else float(length_mm)
    if not length > 0:
        raise InputError("length_mm", f"must be positive, got {length_mm}")
    if not width_mm > 0:
        raise InputError("width_mm", f"must be positive, got {width_mm}")
    x = 2 * int(np.ceil(width_mm / 2 / voxel_mm + air_columns + 1))
    return x, x, max(1, int(round(length / voxel_mm)))


def _grid_shape(grid: int | tuple[int, int, int] | None, voxel_mm: float, air_columns: int) -> tuple[int, int, int]:
    if grid is None:
        return anatomy_grid(voxel_mm, air_columns=air_columns)
    if isinstance(grid, int | np.integer):
        return (int(grid),) * 3
    shape = tuple(int(n) for n in grid)
    if len(shape) != 3:
        raise InputError("grid", f"expected S or (X, Y, Z), got {grid!r}")
    return shape  # type: ignore[return-value]


def build_anatomy(
    size: int | tuple[int, int, int] | None,
    voxel_mm: float,
    rng: np.random.Generator,
    *,
    micro: MicroStructure | None = None,
    air_columns: int = 4,
    n_vessels: int = 8,
    fit: str | None = None,
    z_centre_mm: float = 0.0,
    jitter: AnatomyJitter | None = None,
    tree: BronchovascularTree | None = None,
) -> Anatomy:
    """Build a random mouse thorax (no tumours).

    Args:
        size: the grid: None sizes it from a true-size mouse (:func:`anatomy_grid`), an int S
            gives S^3, ``(X, Y, Z)`` any grid (Z shorter than the thorax: a slab of it).
        voxel_mm: voxel size, mm.
        rng: random generator (all randomness of the phantom comes from it).
        micro: lung micro-structure parameters (default :class:`MicroStructure`).
        air_columns: detector columns that must stay air-only on each side.
        n_vessels: large vessels/airways per lung (solid tubes in the parenchyma, radiating from the hilum).
        fit: ``"true"`` keeps the mouse's size (the grid's X must hold the body, else InputError);
            ``"shrink"`` scales the body down to fit the grid and stretches the thorax over its Z
            (fast tests on small cubes). Default: ``"shrink"`` for an int ``size``, else ``"true"``.
        z_centre_mm: cranio-caudal position of the grid's centre in the thorax (true size only;
            0 is the thorax's middle, the lungs lie within about +-7 mm).
        jitter: body and organ size and position of this animal (None: the reference anatomy).
            A true-size body wider than :data:`MOUSE_WIDTH_MM` needs a grid sized for it
            (:func:`anatomy_grid` with ``width_mm``).
        tree: airway and vessel tree (None: none; the ``n_vessels`` straight tubes stay either
            way, pass ``n_vessels=0`` for the tree alone). Its random numbers are drawn after all
            others, so the rest of the phantom is the same with or without it.

    Returns:
        An :class:`Anatomy` without tumours; ``info`` records the grid, scale and fit (and the
        jitter and tree when given); ``structures`` is the tree's fraction (None without a tree).
    """
    fit = fit or ("shrink" if isinstance(size, int | np.integer) else "true")
    if fit not in FITS:
        raise InputError("fit", f"unknown fit {fit!r}; choose {' or '.join(FITS)}")
    if not voxel_mm > 0:
        raise InputError("voxel_mm", f"must be positive, got {voxel_mm}")
    shape = _grid_shape(size, voxel_mm, air_columns)
    if min(shape[:2]) < 16 or shape[2] < 1:
        raise InputError("size", f"grid must be at least 16 voxels across, got {shape}")
    if shape[0] != shape[1]:
        raise InputError("size", f"the slice must be square (X = Y) for CT, got {shape}")
    micro = micro or MicroStructure()
    jit = jitter or AnatomyJitter()  # identity values: x * 1.0 and x + 0.0 leave every number as it was
    x, y, z = grid_coordinates(shape, voxel_mm)
    if fit == "true":
        width = MOUSE_WIDTH_MM * jit.body_width_scale
        if fov_half_width_mm(shape[0], voxel_mm, air_columns) < width / 2:
            need = anatomy_grid(voxel_mm, air_columns=air_columns, width_mm=width)[0]
            raise InputError("size", f"a {shape[0]}-voxel slice at {voxel_mm} mm is too narrow for a true-size "
                                     f"mouse ({width:g} mm); need at least {need} voxels")
        ax, scale = width / 2, 1.0
        zh = THORAX_LENGTH_MM / 2
        z = z + float(z_centre_mm)
    else:
        ax = body_semi_axes_mm(shape[0], voxel_mm, air_columns)
        if jit.body_width_scale < 1.0:  # a smaller animal; a larger one cannot grow past the grid
            ax *= jit.body_width_scale
        scale = ax / (MOUSE_WIDTH_MM / 2)  # < 1 when the field of view is too small for a full mouse
        zh = shape[2] * voxel_mm / 2  # the thorax fills the grid's length
    # small random variation between subjects (mouse size and shape)
    ax *= 1.0 - 0.06 * rng.random()
    ay = ax * (0.78 + 0.06 * rng.random()) * jit.body_depth_scale

    rn = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)  # normalised radius of the body cross-section
    body = np.broadcast_to(_fraction((rn - 1.0) * ay, voxel_mm), shape).astype(np.float64)

    # spine: vertebral body (bone) dorsal, along z
    spine_c = (0.0, -0.68 * ay)
    spine_r = 0.13 * ax
    spine = _fraction(np.sqrt((x - spine_c[0]) ** 2 + (y - spine_c[1]) ** 2) - spine_r, voxel_mm)
    spine = np.broadcast_to(spine, shape) * body

    # ribs: thin bony bands of the chest wall, periodic in z, sparing the spine and sternum gap
    rib_r0, rib_half = 0.86, 0.45 * scale / ay  # rib centre radius (normalised) and half-thickness
    rib_period = 2.2 * scale
    rib_phase = rng.random() * rib_period
    zz = np.mod(z - rib_phase, rib_period) - rib_period / 2
    rib_radial = np.abs(rn - rib_r0) * ay - 0.5 * rib_half * ay
    rib_axial = np.abs(zz) - 0.3 * scale
    rib = _fraction(np.maximum(rib_radial, rib_axial), voxel_mm)
    rib = rib * (y > spine_c[1] + spine_r) * body  # ribs meet the spine dorsally

    # heart: ellipsoid, ventral, slightly left, mid-thorax
    heart_c = (0.12 * ax + 0.05 * ax * rng.standard_normal(), 0.2 * ay, -0.15 * zh)
    heart_c = tuple(c + s for c, s in zip(heart_c, jit.heart_shift_mm))
    heart_ax = tuple(h * jit.heart_scale for h in (0.33 * ax, 0.42 * ay, 0.42 * zh))
    heart = _fraction(_ellipsoid_distance(x, y, z, heart_c, heart_ax), voxel_mm) * body

    # lungs: two ellipsoids inside the rib cage, minus heart, spine and mediastinum
    lung = np.zeros(shape)
    lung_regions = []
    for side in (-1.0, 1.0):
        c = tuple(c + s for c, s in zip((side * 0.4 * ax, 0.02 * ay, 0.05 * zh), jit.lung_shift_mm))
        semi = tuple(h * jit.lung_scale for h in (0.34 * ax * (1 + 0.05 * rng.standard_normal()), 0.62 * ay, 0.88 * zh))
        lung = np.maximum(lung, _fraction(_ellipsoid_distance(x, y, z, c, semi), voxel_mm))
        lung_regions.append((c, semi))
    inside_cage = _fraction((rn - (rib_r0 - rib_half)) * ay, voxel_mm)
    lung = lung * inside_cage * (1 - heart) * (1 - spine)
    lung = lung * (1 - _fraction(np.abs(x) - 0.06 * ax, voxel_mm))  # mediastinum keeps the lungs apart
    lung = np.clip(lung, 0, 1)

    # micro-structure fields (smooth, random per subject)
    r_field = micro.radius_um * np.exp(micro.radius_log_sd * smooth_field(shape, voxel_mm, micro.correlation_mm, rng))
    phi_field = np.clip(micro.air_fraction + micro.air_fraction_sd * smooth_field(shape, voxel_mm, micro.correlation_mm, rng),
                        0.05, 0.95)
    aniso = np.clip(micro.anisotropy * (1 + 0.4 * smooth_field(shape, voxel_mm, micro.correlation_mm, rng)), 0.0, 0.9)

    # orientation: airways and vessels radiate from the hilum, with smooth wobble
    hilum = (0.0, 0.0, 0.35 * zh)
    o = np.stack(np.broadcast_arrays(x - hilum[0], y - hilum[1], z - hilum[2]), axis=-1)
    for k in range(3):
        o[..., k] += 0.35 * ax * smooth_field(shape, voxel_mm, 2 * micro.correlation_mm, rng)
    o /= np.maximum(np.linalg.norm(o, axis=-1, keepdims=True), 1e-9)

    # large vessels/airways: solid tubes (no alveoli) from the hilum outwards
    vessel = np.zeros(shape)
    axes = (x[:, 0, 0], y[0, :, 0], z[0, 0, :])
    for _ in range(2 * n_vessels):
        d = rng.standard_normal(3)
        d[1] *= 0.6
        d /= np.linalg.norm(d)
        length = (0.5 + 0.5 * rng.random()) * ax
        radius = (0.15 + 0.2 * rng.random()) * max(scale, 0.5)
        _add_tube(vessel, hilum, d, length, radius, 0.5, axes, voxel_mm)  # only on the tube's bounding box
    info_extra: dict[str, Any] = {}
    if jitter is not None:
        info_extra["jitter"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in jitter.__dict__.items()}
    lumen = None
    if tree is not None:
        t_scale = scale if fit == "shrink" else 1.0
        # the hilum of each lung: its medial face, at the level of the thorax's upper third
        roots = [(side * 0.08 * ax, c[1], 0.3 * zh) for side, (c, _) in zip((-1.0, 1.0), lung_regions)]
        vessel, lumen, info_extra["tree"] = _render_tree(vessel, tree, roots, lung_regions, t_scale, axes, voxel_mm,
                                                         rng)
    vessel_in_lung = vessel * lung

    # assemble material fractions (they sum to the body fraction)
    bone = np.clip(0.75 * spine + 0.7 * rib, 0, 1)
    lung_parenchyma = lung * (1 - vessel_in_lung / np.maximum(lung, 1e-9))
    lung_parenchyma = np.clip(lung_parenchyma, 0, 1)
    air = lung_parenchyma * phi_field
    lung_tissue = lung_parenchyma * (1 - phi_field)
    if lumen is None:
        soft = np.clip(body - bone - lung_parenchyma, 0, None)
    else:  # airway lumens are air inside the tree's solid fraction
        lumen_air = np.minimum(lumen * lung, vessel_in_lung)
        air = air + lumen_air
        soft = np.clip(body - bone - lung_parenchyma - lumen_air, 0, None)
        info_extra["tree"]["airway_lumen_mm3"] = float(lumen_air.sum() * voxel_mm**3)
        info_extra["tree"]["tree_in_lung_mm3"] = float(vessel_in_lung.sum() * voxel_mm**3)

    lung_mask = lung >= 0.5
    air_fraction = (phi_field * lung_parenchyma).astype(np.float32)
    f32 = np.float32
    return Anatomy(
        voxel_mm=float(voxel_mm),
        materials={"soft_tissue": soft.astype(f32), "lung_tissue": lung_tissue.astype(f32),
                   "air": air.astype(f32), "bone": bone.astype(f32)},
        radius_um=np.where(lung_parenchyma > 0, r_field, 0.0).astype(f32),
        air_fraction=air_fraction,
        orientation=o.astype(f32),
        anisotropy=(aniso * (lung_parenchyma > 0)).astype(f32),
        lung_mask=lung_mask,
        body_mask=body >= 0.5,
        label=np.zeros(shape, np.uint8),
        info={"body_semi_axes_mm": [float(ax), float(ay)], "scale": float(scale), "fit": fit,
              "grid": [int(n) for n in shape], "z_centre_mm": float(z_centre_mm) if fit == "true" else 0.0,
              "micro_structure": micro.__dict__.copy(), **info_extra},
        structures=None if tree is None else vessel_in_lung.astype(f32),
    )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def tree_segments(tree: BronchovascularTree, root_mm, region: tuple[Any, Any], scale: float,
                  rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Segments of one space-filling branching tree (:class:`BronchovascularTree`'s law).

    Args:
        tree: the tree's parameters.
        root_mm: (3,) start of the trunk, mm (grid coordinates).
        region: ``(centre, semi_axes)`` of the ellipsoid (mm) the tree fills.
        scale: factor on the radii (the body's scale).
        rng: random generator (the point cloud and the first cutting plane).

    Returns:
        ``(start, unit direction, length_mm, radius_mm)`` per segment, trunk first (depth-first).
    """
    c, semi = (np.asarray(v, np.float64) for v in region)
    u = rng.standard_normal((tree.points, 3))
    cloud = c + semi * (u / np.linalg.norm(u, axis=1, keepdims=True)) * rng.random((tree.points, 1)) ** (1 / 3)
    out = []
    stack = [(np.asarray(root_mm, np.float64), cloud, tree.trunk_radius_mm * scale, 1, rng.standard_normal(3))]
    while stack:
        p, pts, radius, gen, plane = stack.pop()
        towards = pts.mean(axis=0) - p
        dist = float(np.linalg.norm(towards))
        if dist <= 0:
            continue
        d = towards / dist
        length = tree.length_fraction * dist
        out.append((p, d, length, float(radius)))
        if gen >= tree.generations or len(pts) < 4:
            continue
        end = p + length * d
        normal = _unit(np.cross(d, plane))  # cut through the branch, perpendicular to the parent's plane
        side = (pts - end) @ normal >= 0
        for half in (pts[side], pts[~side]):
            if len(half) >= 2:
                r = radius * (2 * len(half) / len(pts)) ** (1 / 3) * tree.radius_ratio
                stack.append((end, half, r, gen + 1, normal))
    return out


def _add_tube(into: np.ndarray, start, d: np.ndarray, length: float, radius: float, taper: float,
              axes: tuple[np.ndarray, np.ndarray, np.ndarray], voxel_mm: float) -> None:
    """Max-composite a tapered tube (radius ``radius * (1 - taper * t / length)``) into ``into`` in place."""
    box = []
    for k in range(3):
        ends = (start[k], start[k] + length * d[k])
        lo, hi = min(ends) - radius - 2 * voxel_mm, max(ends) + radius + 2 * voxel_mm
        box.append(slice(int(np.searchsorted(axes[k], lo)), int(np.searchsorted(axes[k], hi, side="right"))))
    if any(b.stop <= b.start for b in box):
        return
    box = tuple(box)
    p = np.stack(np.broadcast_arrays(axes[0][box[0], None, None] - start[0], axes[1][None, box[1], None] - start[1],
                                     axes[2][None, None, box[2]] - start[2]), axis=-1)
    t = np.clip(p @ d, 0.0, length)
    dist = np.linalg.norm(p - t[..., None] * d, axis=-1)
    into[box] = np.maximum(into[box], _fraction(dist - radius * (1 - taper * t / length), voxel_mm))


def _render_tree(vessel: np.ndarray, tree: BronchovascularTree, roots, lung_regions, scale: float,
                 axes, voxel_mm: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Add each lung's airways (outer wall), arteries and veins to ``vessel``; return it, the lumen fraction and info."""
    lumen = np.zeros_like(vessel)
    solid = vessel.copy()
    taper = 1.0 - tree.radius_ratio
    counts = {"airway_segments": 0, "vessel_segments": 0}
    for root, region in zip(roots, lung_regions):
        root = np.asarray(root, np.float64)
        airways = tree_segments(tree, root, region, scale, rng)
        side = rng.standard_normal(3)  # the side of the bronchus its artery runs on
        for p, d, length, r in airways:
            _add_tube(lumen, p, d, length, r, taper, axes, voxel_mm)
            _add_tube(solid, p, d, length, r * (1 + tree.wall_fraction), taper, axes, voxel_mm)
            ra = tree.artery_ratio * r
            offset = _unit(side - (side @ d) * d) * (r * (1 + tree.wall_fraction) + ra)
            _add_tube(solid, p + offset, d, length, ra, taper, axes, voxel_mm)
        counts["airway_segments"] += len(airways)
        counts["vessel_segments"] += len(airways)
        if tree.veins:  # the veins drain to the heart: a tree from just ventral and caudal of the hilum
            vroot = root + np.array([0.0, 0.6, -0.8]) * scale
            vein_tree = BronchovascularTree(**{**tree.__dict__, "trunk_radius_mm": tree.trunk_radius_mm * tree.artery_ratio})
            veins = tree_segments(vein_tree, vroot, region, scale, rng)
            for p, d, length, r in veins:
                _add_tube(solid, p, d, length, r, taper, axes, voxel_mm)
            counts["vessel_segments"] += len(veins)
    info = {**tree.__dict__, **counts}
    return solid, lumen, info


def tensor_shape(orientation: np.ndarray, anisotropy: np.ndarray) -> np.ndarray:
    """Unit-eps scattering tensor ``(1 - a) I + 1.5 a (I - o o^T)`` as six components.

    Args:
        orientation: (..., 3) unit vectors o.
        anisotropy: (...) anisotropy a.

    Returns:
        (6, ...) float32 components in the order (Sxx, Syy, Szz, Sxy, Sxz, Syz).
    """
    o = np.asarray(orientation, dtype=np.float32)
    a = np.asarray(anisotropy, dtype=np.float32)
    iso = (1 - a) + 1.5 * a
    ox, oy, oz = o[..., 0], o[..., 1], o[..., 2]
    return np.stack([iso - 1.5 * a * ox * ox, iso - 1.5 * a * oy * oy, iso - 1.5 * a * oz * oz,
                     -1.5 * a * ox * oy, -1.5 * a * ox * oz, -1.5 * a * oy * oz]).astype(np.float32)


def scattering_basis(
    radius_um: np.ndarray,
    air_fraction: np.ndarray,
    energies_kev: np.ndarray,
    *,
    n_basis: int = 2,
    n_grid: int = 24,
    diffusion_kwargs: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Low-rank energy basis of eps(E; R, phi) and per-voxel coefficients.

    eps(E; R, phi) = linear_diffusion_coefficient(E, R, phi) is evaluated on a grid of R over
    the phantom's range (it is linear in phi), an SVD gives ``n_basis`` energy functions h_k(E),
    and each voxel's coefficients are interpolated in log R and scaled by phi. Bone and soft tissue
    (phi = 0) get zero coefficients.

    Args:
        radius_um: (...) alveolar radius in um (ignored where ``air_fraction`` is 0).
        air_fraction: (...) air volume fraction phi.
        energies_kev: (E,) energies of the spectrum, keV.
        n_basis: number of basis functions K.
        n_grid: R grid points for the SVD.
        diffusion_kwargs: extra keyword arguments of ``linear_diffusion_coefficient``.

    Returns:
        ``(h, coeffs, rel_error)``: h (K, E) energy functions; coeffs (K, ...) float32 so that
        ``eps(E) ~= sum_k coeffs_k h_k(E)`` (1/mm); rel_error the largest relative error of the
        rank-K approximation on the R grid.
    """
    kw = diffusion_kwargs or {}
    e = np.asarray(energies_kev, dtype=np.float64)
    phi = np.asarray(air_fraction, dtype=np.float64)
    r = np.asarray(radius_um, dtype=np.float64)
    scat = phi > 0
    if not scat.any():
        return np.zeros((n_basis, e.size)), np.zeros((n_basis, *phi.shape), np.float32), 0.0
    r_lo, r_hi = float(r[scat].min()), float(r[scat].max())
    r_hi = max(r_hi, r_lo * 1.01)
    grid = np.geomspace(r_lo, r_hi, n_grid)
    table = np.stack([linear_diffusion_coefficient(e, float(rr), 1.0, **kw) for rr in grid])  # (G, E)
    _, sv, vt = np.linalg.svd(table, full_matrices=False)
    k = min(n_basis, vt.shape[0])
    h = vt[:k]
    # sign convention: positive mean, so coefficients of real lung are positive
    h = h * np.where(h.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    coef_grid = table @ h.T  # (G, K)
    approx = coef_grid @ h
    rel_error = float(np.max(np.abs(approx - table) / np.maximum(np.abs(table).max(axis=1, keepdims=True), 1e-30)))
    lr = np.log(np.clip(r, r_lo, r_hi))
    coeffs = np.empty((k, *phi.shape), np.float32)
    for j in range(k):
        coeffs[j] = np.where(scat, np.interp(lr, np.log(grid), coef_grid[:, j]) * phi, 0.0)
    if k < n_basis:  # a single R value: pad with zero functions
        h = np.concatenate([h, np.zeros((n_basis - k, e.size))])
        coeffs = np.concatenate([coeffs, np.zeros((n_basis - k, *phi.shape), np.float32)])
    return h, coeffs, rel_error


def scattering_tensors(anatomy: Anatomy, energies_kev: np.ndarray, *, n_basis: int = 2,
                       diffusion_kwargs: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel scattering tensors of an anatomy on an energy basis.

    Args:
        anatomy: the phantom.
        energies_kev: (E,) spectrum energies, keV.
        n_basis: number of energy basis functions K.
        diffusion_kwargs: extra keyword arguments of ``linear_diffusion_coefficient``.

    Returns:
        ``(h, S6)``: h (K, E) energy functions; S6 (K, 6, X, Y, Z) float32 tensor components in
        1/mm so that ``s^T S(E) s = sum_k (s^T S6_k s) h_k(E)``.
    """
    h, coeffs, _ = scattering_basis(anatomy.radius_um, anatomy.air_fraction, energies_kev,
                                    n_basis=n_basis, diffusion_kwargs=diffusion_kwargs)
    shape6 = tensor_shape(anatomy.orientation, anatomy.anisotropy)  # (6, X, Y, Z)
    return h, coeffs[:, None] * shape6[None]
