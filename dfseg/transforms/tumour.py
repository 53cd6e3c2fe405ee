"""Synthetic-tumour augmentation: insert a solid lesion into aerated lung that looks measured.

Physics (docs/physics.md section 2): a nodule replaces aerated alveoli by solid tissue, so inside it
- attenuation rises to the solid-tissue value times the tumour's interior density texture rho
  (the simulator's, :func:`dfseg.simulate.tumours.interior_density`);
- the dark-field, which comes from the alveolar air-tissue interfaces, falls towards the scan's
  solid-tissue level (:func:`estimate_tissue_df`) plus a residual fraction of the local lung
  value (default 0), isotropic and anisotropic parts alike;
- the occupancy ``occ`` in [0, 1] (partial volume of each voxel, restricted to the lung mask) is
  blurred by the scan's point-spread function (a Gaussian of ``psf_sigma_vox`` voxels), as a
  simulated or measured lesion is by the detector and the reconstruction.

What changes is the scan's *local mean*, not its noise: with ``m`` the image smoothed over
``noise_scale_vox`` voxels (a Gaussian, the scale that separates anatomy from reconstruction noise),

    attn' = attn + occ_b * max(mu_tissue * rho - m_attn, 0)
    df'   = df   - occ_b * (1 - residual_df) * (m_df - df_tissue)   (each dark-field channel)

so the lesion carries the noise and texture of the scan it goes into (``attn - m``), its edge has
the scan's blur, and a noise-free scan gives the exact plateau of the physics above. Statistics of
inserted lesions against simulated tumours of the same size: tests/transforms/test_tumour.py.

The lesion's shape is the simulator's tumour model (:mod:`dfseg.simulate.tumours`: a
:class:`~dfseg.simulate.tumours.TumourShape` drawn from a shape model and a seed, its
:func:`~dfseg.simulate.tumours.occupancy` at an equivalent diameter), so augmented lesions look
like the simulated ones. :class:`SyntheticTumour` is deterministic given its parameters;
:class:`RandSyntheticTumourd` only samples them (TorchIO style) and calls it, so every
augmentation can be logged and replayed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.networks.layers.convutils import gaussian_1d
from monai.networks.layers.simplelayers import separable_filtering
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from dfseg.channels import DF_CHANNELS
from dfseg.data.scan import scan_value
from dfseg.errors import InputError
from dfseg.simulate.tumours import (
    SHAPE_MODELS,
    TumourShape,
    boundary_depth,
    interior_density,
    label_voxels,
    occupancy,
    sample_shape,
)

__all__ = [
    "LesionRoomd",
    "RandSyntheticTumourD",
    "RandSyntheticTumourDict",
    "RandSyntheticTumourd",
    "SyntheticTumour",
    "LESION_MODELS",
    "NOISE_SCALE_VOX",
    "PSF_SIGMA_VOX",
    "estimate_tissue_df",
    "estimate_tissue_mu",
    "lesion_shape",
]

#: shape models a synthetic lesion may take: the simulator's, and a plain sphere
LESION_MODELS: tuple[str, ...] = ("sphere", *SHAPE_MODELS)


def _as_torch(x: Any) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def lesion_shape(model: str, seed: int) -> TumourShape:
    """The simulator's tumour shape for ``model`` (:data:`LESION_MODELS`) drawn with ``seed``.

    Raises:
        InputError: unknown model.
    """
    if model == "sphere":
        return TumourShape.sphere()
    if model not in SHAPE_MODELS:
        raise InputError("shape_model", f"unknown lesion shape model {model!r}; known: {', '.join(LESION_MODELS)}")
    return sample_shape(np.random.default_rng(seed), model)


def estimate_tissue_mu(attn: Any, lung_mask: Any) -> float:
    """Solid soft-tissue attenuation (1/mm) estimated from the scan itself.

    The median of the voxels outside the lung that attenuate more than the lung's median: body
    soft tissue dominates them (bone is a minority, air outside the body is below the lung).

    Args:
        attn: (1, X, Y, Z) or (X, Y, Z) attenuation mu in 1/mm.
        lung_mask: lung mask of the same spatial shape.
    """
    a = _as_torch(attn).reshape(-1).double()
    body = a[_tissue_voxels(attn, lung_mask)]
    if body.numel() == 0:
        raise InputError("attn", "no voxel outside the lung attenuates more than the lung; give tissue_mu")
    return float(body.median())


def _tissue_voxels(attn: Any, lung_mask: Any) -> torch.Tensor:
    """Flat boolean mask of the body's solid tissue: outside the lung, denser than the lung's median."""
    a = _as_torch(attn).reshape(-1).double()
    m = _as_torch(lung_mask).reshape(-1).to(a.device) > 0
    if a.shape != m.shape:
        raise InputError("lung_mask", f"{m.numel()} voxels but attn has {a.numel()}")
    if not bool(m.any()):
        raise InputError("lung_mask", "empty lung mask: cannot place or calibrate a lesion")
    return (~m) & (a > a[m].median())


def estimate_tissue_df(df: Any, attn: Any, lung_mask: Any) -> torch.Tensor:
    """Each dark-field channel's value in the body's solid tissue, estimated from the scan itself.

    Solid tissue has no alveolar micro-structure, yet a measured scan shows a small dark-field
    there (visibility hardening, the noise bias of ``-ln D``): the level a solid lesion falls to.
    The median over the voxels :func:`estimate_tissue_mu` uses.

    Args:
        df: (C, X, Y, Z) dark-field channels.
        attn: attenuation of the same grid, (1, X, Y, Z) or (X, Y, Z).
        lung_mask: lung mask of the same grid.

    Returns:
        (C,) float64 tensor on ``df``'s device (zeros when the scan has no such voxel).
    """
    d = _as_torch(df)
    tissue = _tissue_voxels(attn, lung_mask).to(d.device)
    flat = d.reshape(d.shape[0], -1).double()
    if not bool(tissue.any()):
        return torch.zeros(d.shape[0], dtype=torch.float64, device=d.device)
    return flat[:, tissue].median(dim=1).values


#: Gaussian point-spread function of a lesion edge, voxels: dfseg's reconstructions (Joseph
#: projector, ramp-filtered FBP, linear interpolation) at 0.10-0.20 mm voxels.
PSF_SIGMA_VOX = 0.5
#: Scale (voxels) of the local mean a lesion replaces; what varies faster is the scan's noise and
#: stays in the lesion.
NOISE_SCALE_VOX = 2.0
#: ``|c0| <= eps`` gives ``aniso = 0``, as in :func:`dfseg.transforms.decomposition.directional_decomposition`.
_ANISO_EPS = 1e-6


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of a (C, X, Y, Z) tensor over its spatial axes (edges replicated)."""
    if sigma <= 0:
        return x
    kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=3.0, approx="sampled", normalize=True)
    kernel = kernel.to(device=x.device, dtype=x.dtype)
    return separable_filtering(x[None], [kernel] * 3, mode="replicate")[0]


class SyntheticTumour(Transform):
    """Insert one lesion with given parameters (deterministic).

    Args:
        centre_vox: lesion centre (x, y, z) in voxel coordinates (voxel indices, fractions allowed).
        diameter_mm: equivalent diameter (of the sphere of the same volume) in mm.
        voxel_mm: voxel size in mm (isotropic or per axis).
        shape_model: one of :data:`LESION_MODELS` (``smooth``, ``lobulated``, ``spiculated``: the
            simulator's tumour models; ``sphere``).
        shape_seed: seed the shape is drawn with (:func:`lesion_shape`).
        tissue_mu: solid-tissue attenuation in 1/mm; ``None`` estimates it from the scan
            (:func:`estimate_tissue_mu`, needs the lung mask).
        residual_df: dark-field inside the lesion as a fraction of the local lung value (0 = none).
        df_layout: ``"decomposed"`` (5 channels, :data:`DF_CHANNELS`), ``"orientations"`` (N
            per-orientation channels) or ``"auto"`` (5 channels means decomposed).
        psf_sigma_vox: Gaussian blur of the lesion's occupancy, voxels (0: a sharp partial-volume edge).
        noise_scale_vox: Gaussian scale of the local mean the lesion replaces, voxels (0: the lesion
            replaces every voxel's value, a noise-free plateau).
        density_sd: relative standard deviation of the interior density texture; ``None`` takes the
            shape model's (0.08 for the simulator's models, 0 for ``sphere``).
        tissue_df: each dark-field channel's solid-tissue level; ``None`` estimates it from the scan
            (:func:`estimate_tissue_df`).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, centre_vox: Sequence[float], diameter_mm: float, voxel_mm: float | Sequence[float] = 1.0,
                 *, shape_model: str = "smooth", shape_seed: int = 0, tissue_mu: float | None = None,
                 residual_df: float = 0.0, df_layout: str = "auto", psf_sigma_vox: float = PSF_SIGMA_VOX,
                 noise_scale_vox: float = NOISE_SCALE_VOX, density_sd: float | None = None,
                 tissue_df: Sequence[float] | None = None) -> None:
        if df_layout not in ("auto", "decomposed", "orientations"):
            raise ValueError(f"df_layout must be auto, decomposed or orientations, got {df_layout!r}")
        if not 0.0 <= residual_df <= 1.0:
            raise ValueError(f"residual_df must be in [0, 1], got {residual_df}")
        if not diameter_mm > 0:
            raise ValueError(f"diameter_mm must be > 0, got {diameter_mm}")
        if psf_sigma_vox < 0 or noise_scale_vox < 0:
            raise ValueError(f"psf_sigma_vox and noise_scale_vox must be >= 0, got {psf_sigma_vox}, {noise_scale_vox}")
        self.centre_vox = tuple(float(c) for c in centre_vox)
        self.diameter_mm, self.voxel_mm = float(diameter_mm), voxel_mm
        self.shape_model, self.shape_seed = shape_model, int(shape_seed)
        self.shape = lesion_shape(shape_model, self.shape_seed)
        if density_sd is not None:
            if not 0.0 <= density_sd < 0.5:
                raise ValueError(f"density_sd must be in [0, 0.5), got {density_sd}")
            self.shape = replace(self.shape, density_sd=float(density_sd))
        self.tissue_mu, self.residual_df, self.df_layout = tissue_mu, float(residual_df), df_layout
        self.psf_sigma_vox, self.noise_scale_vox = float(psf_sigma_vox), float(noise_scale_vox)
        self.tissue_df = None if tissue_df is None else [float(v) for v in tissue_df]

    def params(self) -> dict[str, Any]:
        """The parameters, as plain JSON-able values (for logging and replay)."""
        return {"centre_vox": list(self.centre_vox), "diameter_mm": self.diameter_mm,
                "voxel_mm": self.voxel_mm if np.ndim(self.voxel_mm) == 0 else list(self.voxel_mm),
                "shape_model": self.shape_model, "shape_seed": self.shape_seed, "tissue_mu": self.tissue_mu,
                "residual_df": self.residual_df, "psf_sigma_vox": self.psf_sigma_vox,
                "noise_scale_vox": self.noise_scale_vox, "density_sd": float(self.shape.density_sd),
                "tissue_df": self.tissue_df}

    def __call__(self, attn: Any = None, df: Any = None, label: Any = None, lung_mask: Any = None) -> tuple[Any, Any, Any]:
        """Insert the lesion.

        Args:
            attn: (1, X, Y, Z) attenuation mu in 1/mm, or None.
            df: (5, X, Y, Z) decomposed or (N, X, Y, Z) per-orientation dark-field (1/mm), or None.
            label: (1, X, Y, Z) tumour label (0/1), or None.
            lung_mask: (1, X, Y, Z) or (X, Y, Z) lung mask; the lesion only replaces lung.

        Returns:
            ``(attn, df, label)``, new arrays of the input types/devices (None stays None).
        """
        ref = next((x for x in (attn, df, label, lung_mask) if x is not None), None)
        if ref is None:
            raise ValueError("SyntheticTumour needs at least one image")
        spatial = tuple(ref.shape[-3:])
        # every image must share the reference grid: a mismatch would otherwise fail deep inside
        # torch (broadcast RuntimeError) or, worse, pass silently on a cropped box
        ref_name = next(n for n, x in (("attn", attn), ("df", df), ("label", label), ("lung_mask", lung_mask))
                        if x is not None)
        for name, x in (("attn", attn), ("df", df), ("label", label)):
            if x is not None and tuple(x.shape[-3:]) != spatial:
                raise InputError(name, f"spatial shape {tuple(x.shape[-3:])} differs from {ref_name} {spatial}")
        device = _as_torch(ref).device
        tight, frac = occupancy(spatial, self.voxel_mm, self._centre_mm(spatial), self.diameter_mm, self.shape,
                                missing_ok=True)
        # the lesion's box grown by the reach of the blur and of the local mean
        margin = int(np.ceil(3.0 * max(self.psf_sigma_vox, self.noise_scale_vox))) + 1
        box = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(tight, spatial))
        inner = tuple(slice(t.start - b.start, t.stop - b.start) for t, b in zip(tight, box))
        shape_box = tuple(b.stop - b.start for b in box)
        occ = torch.zeros(shape_box, dtype=torch.float64, device=device)
        rho = torch.ones(shape_box, dtype=torch.float64, device=device)
        if frac.size:
            occ[inner] = torch.as_tensor(frac, dtype=torch.float64, device=device)
            vox = float(np.mean(np.broadcast_to(np.asarray(self.voxel_mm, dtype=np.float64), (3,))))
            rho[inner] = torch.as_tensor(interior_density(self.shape, frac.shape, vox), dtype=torch.float64,
                                         device=device)
        if lung_mask is not None:
            lung = _as_torch(lung_mask).to(device)
            lung = lung.reshape(lung.shape[-3:]) if lung.ndim == 4 else lung
            if tuple(lung.shape) != spatial:
                raise InputError("lung_mask", f"shape {tuple(lung.shape)} does not match images {spatial}")
            occ = occ * (lung[box] > 0).to(occ.dtype)
        blurred = _smooth(occ[None], self.psf_sigma_vox)[0]
        box4 = (slice(None), *box)
        return (self._attn(attn, lung_mask, blurred, rho, box4), self._df(df, attn, lung_mask, blurred, box4),
                self._label(label, occ, box4))

    def _centre_mm(self, spatial: tuple[int, ...]) -> np.ndarray:
        """The centre in the grid coordinates of :func:`dfseg.simulate.tumours.occupancy`."""
        vox = np.broadcast_to(np.asarray(self.voxel_mm, dtype=np.float64), (3,))
        return (np.asarray(self.centre_vox) - (np.asarray(spatial) - 1) / 2) * vox

    def _attn(self, attn: Any, lung_mask: Any, occ: torch.Tensor, rho: torch.Tensor, box4: tuple[slice, ...]) -> Any:
        if attn is None:
            return None
        mu_t = self.tissue_mu
        if mu_t is None:
            if lung_mask is None:
                raise InputError("attn", "tissue_mu not given and no lung mask to estimate it from")
            mu_t = estimate_tissue_mu(attn, lung_mask)
        a = _as_torch(attn).clone()
        b = box4 if a.ndim == 4 else box4[1:]
        region = a[b].double()
        mean = _smooth(region if region.ndim == 4 else region[None], self.noise_scale_vox).reshape(region.shape)
        a[b] = (region + occ * (mu_t * rho - mean).clamp_min(0.0)).to(a.dtype)
        return convert_to_dst_type(a, attn)[0]

    def _df(self, df: Any, attn: Any, lung_mask: Any, occ: torch.Tensor, box4: tuple[slice, ...]) -> Any:
        if df is None:
            return None
        d = _as_torch(df).clone()
        if d.ndim != 4:
            raise InputError("df", f"expected (C, X, Y, Z) dark-field, found shape {tuple(d.shape)}")
        region = d[box4].double()
        # the local mean above the solid-tissue level is what the lesion removes
        if self.tissue_df is not None:
            if len(self.tissue_df) != d.shape[0]:
                raise InputError("tissue_df", f"{len(self.tissue_df)} values for {d.shape[0]} dark-field channels")
            tissue = torch.tensor(self.tissue_df, dtype=torch.float64, device=d.device)
        elif attn is not None and lung_mask is not None:
            tissue = estimate_tissue_df(d, attn, lung_mask)
        else:
            tissue = torch.zeros(d.shape[0], dtype=torch.float64, device=d.device)
        mean = _smooth(region, self.noise_scale_vox) - tissue.reshape(-1, 1, 1, 1)
        lost = occ * (1.0 - self.residual_df)
        decomposed = self.df_layout == "decomposed" or (self.df_layout == "auto" and d.shape[0] == len(DF_CHANNELS))
        if decomposed:
            c0 = region[0] - lost * mean[0]
            # the lesion's own signal is isotropic: the anisotropic vector keeps only the lung fraction
            vec = region[[3, 4]] - occ * mean[[3, 4]]
            amp = torch.hypot(vec[0], vec[1])
            safe = c0.abs() > _ANISO_EPS
            aniso = torch.where(safe, amp / torch.where(safe, c0, torch.ones_like(c0)), torch.zeros_like(c0))
            region = torch.stack([c0, amp, aniso, vec[0], vec[1]])
        else:
            # every orientation loses the same fraction of its local mean: c0 and |c2| fall together
            region = region - lost * mean
        d[box4] = region.to(d.dtype)
        return convert_to_dst_type(d, df)[0]

    def _label(self, label: Any, occ: torch.Tensor, box4: tuple[slice, ...]) -> Any:
        if label is None:
            return None
        lab = _as_torch(label).clone()
        b = box4 if lab.ndim == 4 else box4[1:]
        # the simulator's partial-volume rule: a lesion of any size gets label voxels of its volume
        keep = torch.from_numpy(label_voxels(occ.detach().cpu().numpy().astype(np.float64))).to(occ.device)
        inside = keep.reshape(occ.shape).expand_as(lab[b])
        lab[b] = torch.where(inside, torch.ones_like(lab[b]), lab[b])
        return convert_to_dst_type(lab, label)[0]


class RandSyntheticTumourd(RandomizableTransform, MapTransform):
    """Randomly insert a lesion at a lung location: samples parameters, calls :class:`SyntheticTumour`.

    Args:
        keys: ``(attn_key, df_key, label_key)``; any may be missing with ``allow_missing_keys``.
        mask_key: lung mask key (the lesion centre is drawn from it; the lesion stays inside it).
            As in the simulator (:func:`dfseg.simulate.tumours.sample_tumours`), the centre is a
            lung voxel at least one radius plus one voxel from the lung's boundary, the grid's faces
            and the labelled tumours (the deepest voxels where none is that deep), so a lesion is
            never cut by the pleura or the field of view into a thickened wall.
        prob: probability of inserting a lesion.
        diameter_range_mm: (min, max) equivalent diameter in mm, drawn uniformly.
        shape_models: the shape models to draw from (uniformly), names of :data:`LESION_MODELS`.
        voxel_mm: voxel size in mm; ``None`` reads it from the metadata, else the image's affine.
        tissue_mu: solid-tissue mu in 1/mm; ``None`` estimates it from the scan.
        residual_df: lesion dark-field as a fraction of the local lung value.
        psf_sigma_vox: Gaussian blur of the lesion edge, voxels (:class:`SyntheticTumour`).
        noise_scale_vox: scale of the local mean the lesion replaces, voxels; the scan's noise and
            texture below it stay in the lesion.
        meta_key: where the scan's metadata lives in the data dictionary.
        refs_key: the scan's tissue references measured once (:class:`dfseg.transforms.TissueReferencesd`):
            solid-tissue mu and dark-field levels are taken from there when present.
        depth_key: the room map :class:`LesionRoomd` measured once (a cache holds it); computed
            here when absent.
        allow_missing_keys: skip absent keys.

    After each call ``self.last_params`` holds the parameters used (``None`` when nothing was
    inserted), so the augmentation can be logged and replayed with ``SyntheticTumour(**params)``.
    """

    backend = SyntheticTumour.backend

    def __init__(self, keys: KeysCollection = ("attn", "df", "label"), mask_key: str = "lung_mask",
                 prob: float = 0.5, diameter_range_mm: tuple[float, float] = (0.5, 3.0), *,
                 shape_models: Sequence[str] = ("smooth",), voxel_mm: float | Sequence[float] | None = None,
                 tissue_mu: float | None = None, residual_df: float = 0.0, psf_sigma_vox: float = PSF_SIGMA_VOX,
                 noise_scale_vox: float = NOISE_SCALE_VOX, meta_key: str = "meta", refs_key: str = "tissue_refs",
                 depth_key: str = "lesion_room", allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) != 3:
            raise ValueError(f"keys must be (attn_key, df_key, label_key), got {self.keys}")
        if not 0 < diameter_range_mm[0] <= diameter_range_mm[1]:
            raise ValueError(f"diameter_range_mm must be 0 < min <= max, got {diameter_range_mm}")
        unknown = [m for m in shape_models if m not in LESION_MODELS]
        if not shape_models or unknown:
            raise ValueError(f"shape_models must name some of {', '.join(LESION_MODELS)}, got {list(shape_models)}")
        self.mask_key, self.diameter_range_mm, self.shape_models = mask_key, diameter_range_mm, tuple(shape_models)
        self.voxel_mm, self.tissue_mu, self.residual_df = voxel_mm, tissue_mu, residual_df
        self.psf_sigma_vox, self.noise_scale_vox = float(psf_sigma_vox), float(noise_scale_vox)
        self.meta_key, self.refs_key, self.depth_key = meta_key, refs_key, depth_key
        self.last_params: dict[str, Any] | None = None

    def randomize(self, data: Any = None, voxel_mm: float | Sequence[float] = 1.0) -> None:
        """Decide whether to insert; if so, draw diameter, centre (far enough inside the lung for
        that diameter), shape model and shape seed."""
        super().randomize(None)
        self.last_params = None
        if not self._do_transform:
            return
        lung = _as_torch(data[self.mask_key])
        lung = lung.reshape(lung.shape[-3:]) if lung.ndim == 4 else lung
        if not bool((lung > 0).any()):
            raise InputError(self.mask_key, "empty lung mask: nowhere to insert a lesion")
        diameter = float(self.R.uniform(*self.diameter_range_mm))
        depth = data.get(self.depth_key)
        if depth is None:
            depth = lesion_room(lung, data.get(self.keys[2]))
        depth = _as_torch(depth).reshape(lung.shape)
        need = diameter / 2 / float(np.min(voxel_mm)) + 1.0  # the simulator's depth >= d/2 + one voxel
        idx = torch.nonzero(depth >= need)
        if idx.shape[0] == 0:
            idx = torch.nonzero(depth >= 0.999 * depth.max()) if float(depth.max()) > 0 else torch.nonzero(lung > 0)
        centre = idx[int(self.R.randint(idx.shape[0]))].cpu().numpy().astype(float)
        self.last_params = {
            "centre_vox": centre.tolist(),
            "diameter_mm": diameter,
            "shape_model": self.shape_models[int(self.R.randint(len(self.shape_models)))],
            "shape_seed": int(self.R.randint(2**31 - 1)),
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key not in d:
            raise InputError(self.mask_key, "lung mask key not in the data")
        attn_key, df_key, label_key = self.keys
        present = {k: d[k] for k in self.key_iterator(d)}
        vox = scan_value(d, "voxel_mm", self.voxel_mm, key=next(iter(present), self.mask_key), meta_key=self.meta_key)
        self.randomize(d, vox)
        if self.last_params is None:
            return d
        refs = d.get(self.refs_key) or {}
        tissue_mu = self.tissue_mu if self.tissue_mu is not None else refs.get("attn")
        self.last_params.update(voxel_mm=vox if np.ndim(vox) == 0 else list(vox),
                                tissue_mu=tissue_mu, tissue_df=refs.get("df_tissue"), residual_df=self.residual_df,
                                psf_sigma_vox=self.psf_sigma_vox, noise_scale_vox=self.noise_scale_vox)
        tumour = SyntheticTumour(**self.last_params)
        attn, df, label = tumour(present.get(attn_key), present.get(df_key), present.get(label_key), d[self.mask_key])
        for key, value in ((attn_key, attn), (df_key, df), (label_key, label)):
            if value is not None:
                d[key] = value
        return d


RandSyntheticTumourD = RandSyntheticTumourDict = RandSyntheticTumourd


def lesion_room(lung_mask: Any, label: Any = None) -> torch.Tensor:
    """(X, Y, Z) float32: each lung voxel's distance, in voxels, to the nearest voxel outside the
    lung, labelled tumour or beyond the grid (:func:`dfseg.simulate.tumours.boundary_depth`)."""
    lung = _as_torch(lung_mask)
    lung = lung.reshape(lung.shape[-3:]) if lung.ndim == 4 else lung
    free = lung.detach().cpu().numpy() > 0
    if label is not None:
        lab = _as_torch(label)
        free &= ~(lab.reshape(lab.shape[-3:]).detach().cpu().numpy() > 0)
    return torch.from_numpy(boundary_depth(free).astype(np.float32))


class LesionRoomd(MapTransform):
    """Add ``d[output_key]`` = :func:`lesion_room` of the lung mask and label: deterministic, so a
    ``CacheDataset`` keeps it and :class:`RandSyntheticTumourd` does not measure it every time.

    Args:
        mask_key, label_key: lung mask and tumour label keys (a missing label counts as empty).
        output_key: key of the room map.
    """

    def __init__(self, mask_key: str = "lung_mask", label_key: str = "label", output_key: str = "lesion_room") -> None:
        super().__init__(keys=mask_key)
        self.mask_key, self.label_key, self.output_key = mask_key, label_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.output_key] = lesion_room(d[self.mask_key], d.get(self.label_key))
        return d
