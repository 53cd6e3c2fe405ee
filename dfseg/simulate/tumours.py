"""Synthetic lung tumours: irregular solid nodules that replace aerated alveoli with tissue.

Shape: a star-shaped body whose radius in direction u is
``r(u) = r0 * (1 + sum_j a_j * (exp(kappa_j (u . d_j - 1)) - m_j))`` (von Mises bumps on the
sphere, each with its mean m_j removed), scaled so the volume equals that of a sphere of the
requested equivalent diameter. Three shape models:

- ``smooth``: a few broad bumps of either sign (noise-perturbed radial function);
- ``lobulated``: a handful of large positive lobes;
- ``spiculated``: many narrow positive spikes on a round core.

Physics: inside a tumour (occupancy f per voxel) the aerated alveoli are replaced by solid
tissue, so every material fraction is scaled by (1 - f), ``soft_tissue`` gains f * rho (rho a
smooth heterogeneous density factor around 1), the air fraction phi of the scattering
micro-structure falls by (1 - f) (dark-field falls, anisotropy with it) and attenuation rises.

The random part (:func:`sample_shape`, :func:`sample_tumours`) only draws parameters; the
deterministic :func:`insert_tumour` applies them, so a test can place one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dfseg.errors import InputError
from dfseg.evaluation.lesions import equivalent_diameter_mm, size_bin
from dfseg.simulate.anatomy import Anatomy, grid_coordinates

SHAPE_MODELS = ("smooth", "lobulated", "spiculated")

_SUPERSAMPLE = 3  # sub-voxels per axis for the occupancy fraction


@dataclass(frozen=True)
class TumourShape:
    """Parameters of one tumour's shape and interior (all deterministic once drawn).

    Attributes:
        directions: (J, 3) unit vectors d_j of the radial bumps.
        amplitudes: (J,) relative bump amplitudes a_j.
        concentrations: (J,) von Mises concentrations kappa_j (larger = narrower).
        density_sd: relative standard deviation of the interior density rho.
        density_seed: seed of the interior density field.
        model: name of the shape model the parameters came from.
    """

    directions: np.ndarray
    amplitudes: np.ndarray
    concentrations: np.ndarray
    density_sd: float = 0.08
    density_seed: int = 0
    model: str = "smooth"

    @classmethod
    def sphere(cls) -> TumourShape:
        """A homogeneous sphere (no bumps, uniform density)."""
        return cls(np.zeros((0, 3)), np.zeros(0), np.zeros(0), density_sd=0.0, model="sphere")


def sample_shape(rng: np.random.Generator, model: str = "smooth") -> TumourShape:
    """Draw the shape parameters of one tumour.

    Args:
        rng: random generator.
        model: one of :data:`SHAPE_MODELS`.
    """
    if model not in SHAPE_MODELS:
        raise InputError("shape_model", f"unknown tumour shape model {model!r}; known: {', '.join(SHAPE_MODELS)}")
    if model == "smooth":
        j, amp, kappa = int(rng.integers(5, 9)), (lambda n: 0.18 * rng.standard_normal(n)), (2.0, 5.0)
    elif model == "lobulated":
        j, amp, kappa = int(rng.integers(3, 6)), (lambda n: 0.25 + 0.15 * rng.random(n)), (4.0, 8.0)
    else:
        j, amp, kappa = int(rng.integers(10, 18)), (lambda n: 0.35 + 0.3 * rng.random(n)), (30.0, 60.0)
    d = rng.standard_normal((j, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return TumourShape(
        directions=d,
        amplitudes=np.asarray(amp(j), dtype=np.float64),
        concentrations=rng.uniform(*kappa, size=j),
        density_sd=0.08,
        density_seed=int(rng.integers(0, 2**31 - 1)),
        model=model,
    )


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azim = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(azim) * np.sin(polar), np.sin(azim) * np.sin(polar), np.cos(polar)], axis=-1)


def _relative_radius(u: np.ndarray, shape: TumourShape) -> np.ndarray:
    """r(u) / r0 for unit vectors u (..., 3); at least 0.2 so the body stays star-shaped around its centre."""
    r = np.ones(u.shape[:-1])
    for d, a, k in zip(shape.directions, shape.amplitudes, shape.concentrations):
        mean = (1 - np.exp(-2 * k)) / (2 * k)  # mean of exp(k (u.d - 1)) over the sphere
        r = r + a * (np.exp(k * (u @ d - 1)) - mean)
    return np.maximum(r, 0.2)


def base_radius_mm(diameter_mm: float, shape: TumourShape) -> float:
    """r0 so that the body's volume (1/3) integral r^3 dOmega equals a sphere of ``diameter_mm``."""
    u = _fibonacci_sphere(4000)
    mean_r3 = float(np.mean(_relative_radius(u, shape) ** 3))
    return diameter_mm / 2 / mean_r3 ** (1 / 3)


def occupancy(shape_grid: tuple[int, int, int], voxel_mm: float | tuple[float, float, float], centre_mm,
              diameter_mm: float, shape: TumourShape, *, missing_ok: bool = False
              ) -> tuple[tuple[slice, ...], np.ndarray]:
    """Fraction of each voxel inside the tumour, on the tumour's bounding box.

    The one lesion-shape model of dfseg: the simulator's tumours (:func:`insert_tumour`) and the
    synthetic-tumour augmentation (:class:`dfseg.transforms.SyntheticTumour`) both call it. Each
    voxel is sampled at ``3 x 3 x 3`` sub-voxel points.

    Args:
        shape_grid: (X, Y, Z) grid shape.
        voxel_mm: voxel size, mm (isotropic or per axis).
        centre_mm: (3,) centre in mm (grid coordinates: voxel i of an axis of n voxels lies at
            ``(i - (n - 1) / 2) * voxel_mm``).
        diameter_mm: equivalent diameter (of the sphere of the same volume), mm.
        shape: shape parameters.
        missing_ok: a tumour that misses the grid gives an empty box instead of an error.

    Returns:
        ``(box, frac)``: the slices of the bounding box and the (bx, by, bz) float32 occupancy.

    Raises:
        InputError: the tumour misses the grid (unless ``missing_ok``).
    """
    vox = np.broadcast_to(np.asarray(voxel_mm, dtype=np.float64), (3,))
    r0 = base_radius_mm(diameter_mm, shape)
    rmax = r0 * float(_relative_radius(_fibonacci_sphere(4000), shape).max()) * 1.1 + float(vox.max())
    c = np.asarray(centre_mm, dtype=np.float64)
    lo = [max(int(np.floor((c[i] - rmax) / vox[i] + (n - 1) / 2)), 0) for i, n in enumerate(shape_grid)]
    hi = [min(int(np.ceil((c[i] + rmax) / vox[i] + (n - 1) / 2)) + 1, n) for i, n in enumerate(shape_grid)]
    if any(h <= lo_ for lo_, h in zip(lo, hi)):
        if missing_ok:
            return (tuple(slice(a, max(a, b)) for a, b in zip(lo, hi)),
                    np.zeros(tuple(max(0, b - a) for a, b in zip(lo, hi)), np.float32))
        raise InputError("tumour centre", f"{list(c)} mm lies outside the grid")
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    s = _SUPERSAMPLE
    sub = (np.arange(s) + 0.5) / s - 0.5
    axes = [((np.arange(a, b)[:, None] - (n - 1) / 2 + sub[None, :]) * vox[i] - c[i]).ravel()
            for i, (a, b, n) in enumerate(zip(lo, hi, shape_grid))]
    px, py, pz = np.meshgrid(*axes, indexing="ij")
    p = np.stack([px, py, pz], axis=-1)
    dist = np.linalg.norm(p, axis=-1)
    u = p / np.maximum(dist, 1e-12)[..., None]
    inside = dist <= r0 * _relative_radius(u, shape)
    bx, by, bz = (b - a for a, b in zip(lo, hi))
    frac = inside.reshape(bx, s, by, s, bz, s).mean(axis=(1, 3, 5)).astype(np.float32)
    return box, frac


def label_voxels(f: np.ndarray) -> np.ndarray:
    """The tumour label of an occupancy box: partial-volume aware rasterisation.

    Rule: the label holds every voxel of occupancy ``f >= 0.5``; when that gives fewer voxels than
    the tumour's partial-volume volume in voxels, ``n = floor(sum(f) + 0.5)`` (at least 1 when any
    voxel has ``f > 0``), the voxels of highest occupancy are taken until the label has exactly
    ``n`` voxels (ties: lower flat index of the box first, a stable sort by ``(-f, index)``). So a
    tumour with any occupancy has label voxels, a small tumour's label volume matches its volume
    (neither dropped nor inflated), and a tumour whose ``f >= 0.5`` set is already as large as its
    volume keeps exactly that set (it is never shrunk). The ``f >= 0.5`` voxels come first in the
    order, so the label always contains them.

    Args:
        f: occupancy fractions in [0, 1] (any shape).

    Returns:
        Boolean array of ``f``'s shape.
    """
    f = np.asarray(f)
    sel = f >= 0.5
    if not (f > 0).any():
        return sel
    target = max(int(np.floor(float(f.sum(dtype=np.float64)) + 0.5)), 1)
    if int(sel.sum()) >= target:
        return sel
    flat = f.ravel()
    order = np.lexsort((np.arange(flat.size), -flat.astype(np.float64)))  # last key is the primary one
    out = np.zeros(flat.size, dtype=bool)
    out[order[:target]] = True
    return out.reshape(f.shape)


def insert_tumour(anatomy: Anatomy, centre_mm, diameter_mm: float, shape: TumourShape | None = None) -> Anatomy:
    """Insert one tumour into ``anatomy`` in place (and return it).

    Deterministic: the same arguments give the same voxels. Aerated micro-structure is replaced
    by solid tissue in proportion to the occupancy ``f`` (inside the body). The label is
    partial-volume aware (:func:`label_voxels`): the voxels with ``f >= 0.5``, topped up with the
    voxels of highest occupancy until the label has ``round(sum f)`` voxels (at least 1) when the
    ``f >= 0.5`` set is smaller than that -- so every tumour with occupancy inside the body has
    label voxels, however small or badly placed on the grid. When the anatomy has an airway and
    vessel tree (``anatomy.structures``), the occupancy spares it (``f * (1 - structures)``) and
    no voxel that is mostly tree (``structures >= 0.5``) is labelled.

    The tumour's record (appended to ``anatomy.tumours``) holds ``centre_mm``, ``diameter_mm``
    (nominal equivalent diameter), ``shape_model``, ``label_voxels`` (its labelled voxels),
    ``label_diameter_mm`` and ``size_bin``: the equivalent diameter and size bin of those voxels
    computed by :mod:`dfseg.evaluation.lesions` (the evaluation's own functions, so a lesion's
    bin is the same in the simulator's records and in the evaluation).

    Args:
        anatomy: phantom to modify.
        centre_mm: (3,) centre in mm, grid coordinates (origin at the grid centre).
        diameter_mm: equivalent (volume) diameter, mm.
        shape: shape parameters (default: a homogeneous sphere).

    Returns:
        ``anatomy`` with the tumour added to its fields, ``label`` and ``tumours``.
    """
    if not diameter_mm > 0:
        raise InputError("diameter_mm", f"must be positive, got {diameter_mm}")
    shape = shape or TumourShape.sphere()
    box, f = occupancy(anatomy.shape, anatomy.voxel_mm, centre_mm, diameter_mm, shape)
    f = f * anatomy.body_mask[box]
    if anatomy.structures is not None:  # a nodule grows around the airways and vessels, it does not replace them
        f = f * (1 - anatomy.structures[box])
    rho = interior_density(shape, f.shape, anatomy.voxel_mm)
    for name, m in anatomy.materials.items():
        m[box] *= 1 - f
        if name == "soft_tissue":
            m[box] += f * rho
    anatomy.air_fraction[box] *= 1 - f
    anatomy.anisotropy[box] *= 1 - f
    lab = label_voxels(f if anatomy.structures is None else np.where(anatomy.structures[box] < 0.5, f, 0))
    anatomy.label[box] |= lab.astype(np.uint8)
    n = int(lab.sum())
    d_label = equivalent_diameter_mm(n, anatomy.voxel_mm)
    anatomy.tumours.append({
        "centre_mm": [float(v) for v in centre_mm],
        "diameter_mm": float(diameter_mm),
        "shape_model": shape.model,
        "label_voxels": n,
        "label_diameter_mm": d_label,
        "size_bin": size_bin(d_label),
    })
    return anatomy


def interior_density(shape: TumourShape, box_shape: tuple[int, ...], voxel_mm: float) -> np.ndarray:
    """A tumour's interior density factor rho on its bounding box (float32, around 1).

    Gaussian noise smoothed over about 0.3 mm (at least 0.7 voxel), standardised, scaled by
    ``shape.density_sd`` and clipped to [0.7, 1.3]; all ones when ``density_sd`` is 0. The
    simulator (:func:`insert_tumour`) and the synthetic-tumour augmentation use it alike.

    Args:
        shape: the tumour's shape parameters (``density_sd``, ``density_seed``).
        box_shape: shape of the tumour's bounding box (from :func:`occupancy`).
        voxel_mm: isotropic voxel size, mm.
    """
    if shape.density_sd <= 0:
        return np.ones(box_shape, dtype=np.float32)
    rng = np.random.default_rng(shape.density_seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(box_shape), sigma=max(0.3 / float(voxel_mm), 0.7))
    noise = (noise - noise.mean()) / max(noise.std(), 1e-12)
    return np.clip(1.0 + shape.density_sd * noise, 0.7, 1.3).astype(np.float32)


def boundary_depth(free: np.ndarray) -> np.ndarray:
    """Distance in voxels from each ``free`` voxel to the nearest non-free voxel or grid face.

    The grid's faces count as boundary, so a tumour placed at depth >= its radius lies wholly
    inside the grid (a slab's too). The transform runs on the free voxels' bounding box plus one
    boundary layer: every voxel outside that box is farther from a free voxel than the layer, so
    the result equals the whole-grid transform (tested) at a fraction of its cost.
    """
    depth = np.zeros(free.shape, dtype=np.float64)
    nonzero = np.nonzero(free.any(axis=(1, 2)))[0], np.nonzero(free.any(axis=(0, 2)))[0], \
        np.nonzero(free.any(axis=(0, 1)))[0]
    if any(ix.size == 0 for ix in nonzero):
        return depth
    box = tuple(slice(int(ix[0]), int(ix[-1]) + 1) for ix in nonzero)
    depth[box] = ndimage.distance_transform_edt(np.pad(free[box], 1))[1:-1, 1:-1, 1:-1]
    return depth


def sample_tumours(
    anatomy: Anatomy,
    rng: np.random.Generator,
    *,
    count: int,
    diameter_range_mm: tuple[float, float] = (0.5, 3.0),
    model: str = "smooth",
) -> Anatomy:
    """Draw and insert ``count`` tumours inside the lungs (non-overlapping where room allows).

    Diameters are log-uniform in ``diameter_range_mm`` (small nodules are as frequent as large
    ones per octave). Centres are lung voxels at least one radius from the lung boundary, the
    grid's faces, earlier tumours and the airway and vessel tree (when the anatomy has one); where
    no such voxel exists the deepest lung voxel is used.

    Args:
        anatomy: phantom to modify (in place).
        rng: random generator.
        count: number of tumours (0 allowed).
        diameter_range_mm: (min, max) equivalent diameter, mm.
        model: tumour shape model (see :data:`SHAPE_MODELS`).

    Returns:
        ``anatomy`` with the tumours inserted.
    """
    lo, hi = diameter_range_mm
    if not 0 < lo <= hi:
        raise InputError("diameter_range_mm", f"need 0 < min <= max, got {diameter_range_mm}")
    v = anatomy.voxel_mm
    x, y, z = grid_coordinates(anatomy.shape, v)
    for _ in range(count):
        d = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        free = anatomy.lung_mask & (anatomy.label == 0)
        if anatomy.structures is not None:
            free &= anatomy.structures < 0.5
        depth = boundary_depth(free) * v
        candidates = np.flatnonzero(depth.ravel() >= d / 2 + v)
        if candidates.size == 0:
            candidates = np.flatnonzero(depth.ravel() >= 0.999 * depth.max())
            if depth.max() <= 0:
                break
        idx = np.unravel_index(candidates[int(rng.integers(candidates.size))], anatomy.shape)
        centre = (float(x[idx[0], 0, 0]), float(y[0, idx[1], 0]), float(z[0, 0, idx[2]]))
        # sub-voxel jitter so centres are not locked to the grid
        centre = tuple(c + float(rng.uniform(-0.5, 0.5)) * v for c in centre)
        insert_tumour(anatomy, centre, d, sample_shape(rng, model))
    return anatomy
