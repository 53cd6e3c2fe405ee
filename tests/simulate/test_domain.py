"""Domain randomisation: sampled ranges, the airway and vessel tree, detector blur and rings, dose, FOV crop."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from dfseg.errors import InputError
from dfseg.io import load_nifti, read_json
from dfseg.physics import mu
from dfseg.simulate.acquisition import AcquisitionConfig, acquire_radiograph
from dfseg.simulate.anatomy import (
    AnatomyJitter,
    BronchovascularTree,
    anatomy_grid,
    build_anatomy,
)
from dfseg.simulate.artefacts import (
    apply_detector_artefacts,
    detector_blur,
    flat_field_factors,
    psf_kernel,
    reconstruct,
)
from dfseg.simulate.cohort import simulate_subject, write_cohort, write_scan
from dfseg.simulate.domain import (
    INTEGER_RANGES,
    PROBABILITIES,
    DomainRandomisation,
    _integer,
    acquisition_for,
    domain_rng,
    grid_for,
    load_ranges,
    sample_domain,
)
from dfseg.simulate.tumours import sample_tumours

#: Small and fast: 0.4 mm voxels (a 24^3 cube), three orientations, no tree.
FAST_RANGES = DomainRandomisation(voxel_mm=(0.4, 0.4), orientations=(3, 3), tree_probability=0.0)
FAST = AcquisitionConfig(n_angles=16)


def _ranges_hold(d: dict, r: DomainRandomisation) -> None:
    inside = lambda v, lo_hi: lo_hi[0] - 1e-3 <= v <= lo_hi[1] + 1e-3  # noqa: E731 (values are rounded to 1e-3)
    assert inside(d["kvp"], r.kvp) and inside(d["filtration_mm"]["Al"], r.al_mm)
    assert set(d["filtration_mm"]) <= {"Al", "Cu"} and inside(d["filtration_mm"].get("Cu", 0.0), r.cu_mm)
    for key in ("dose_scale", "reference_visibility", "design_energy_kev", "psf_sigma_px", "ring_gain_sd",
                "flat_exposures", "voxel_mm", "crop_margin_mm"):
        assert inside(d[key], getattr(r, key)), key
    n = len(d["orientations_deg"])
    assert r.orientations[0] <= n <= r.orientations[1]
    assert all(0 <= w < 180 for w in d["orientations_deg"])
    assert np.allclose(np.diff(d["orientations_deg"]), 180 / n, atol=2e-3)
    assert d["fov"] in ("thorax", "lung")
    for key in ("body_width_scale", "body_depth_scale", "lung_scale", "heart_scale"):
        assert inside(d["anatomy"][key], getattr(r, key)), key
    assert all(inside(v, r.lung_shift_mm) for v in d["anatomy"]["lung_shift_mm"])
    assert all(inside(v, r.heart_shift_mm) for v in d["anatomy"]["heart_shift_mm"])
    if d["tree"] is not None:
        assert inside(d["tree"]["generations"], r.tree_generations)
        assert inside(d["tree"]["trunk_radius_mm"], r.trunk_radius_mm)
    m = d["micro_structure"]
    assert inside(m["radius_um"], r.alveolar_radius_um) and inside(m["air_fraction"], r.air_fraction)
    assert inside(m["anisotropy"], r.anisotropy) and inside(m["correlation_mm"], r.correlation_mm)


def test_sampled_parameters_within_ranges_and_reproducible_by_seed():
    r = DomainRandomisation()
    draws = [sample_domain(domain_rng(7, i), r) for i in range(200)]
    for d in draws:
        _ranges_hold(d, r)
        json.dumps(d)  # the sidecar's domain block
    assert draws[3] == sample_domain(domain_rng(7, 3), r)
    assert draws[3] != sample_domain(domain_rng(8, 3), r) and draws[3] != draws[4]
    # the ranges are covered, not one corner of them
    kvp = np.array([d["kvp"] for d in draws])
    assert kvp.min() < 62 and kvp.max() > 78
    assert {len(d["orientations_deg"]) for d in draws} == set(range(3, 9))
    assert 0.3 < np.mean([d["fov"] == "lung" for d in draws]) < 0.7
    assert 0.3 < np.mean(["Cu" in d["filtration_mm"] for d in draws]) < 0.7
    dose = np.log2([d["dose_scale"] for d in draws])  # log-uniform over x0.25..x4
    assert dose.min() < -1.7 and dose.max() > 1.7 and abs(np.median(dose)) < 0.5


def test_fixed_ranges_give_fixed_values():
    r = DomainRandomisation(kvp=(70, 70), voxel_mm=(0.15, 0.15), orientations=(4, 4), cu_probability=0.0,
                            lung_crop_probability=1.0, tree_probability=0.0)
    for i in range(5):
        d = sample_domain(domain_rng(0, i), r)
        assert d["kvp"] == 70 and d["voxel_mm"] == 0.15 and len(d["orientations_deg"]) == 4
        assert "Cu" not in d["filtration_mm"] and d["fov"] == "lung" and d["tree"] is None


@pytest.mark.parametrize("fixed", [{"orientations": (4, 4)}, {"flat_exposures": (50, 50)}, {"psf_sigma_px": (0, 0)},
                                   {"tree_generations": (6, 6)}, {"cu_probability": 0.0}, {"kvp": (70, 70)}])
def test_fixing_one_range_leaves_every_other_draw(fixed):
    """Each field takes one draw whatever its range, so an ablation's subjects stay paired."""
    full, one = DomainRandomisation(), DomainRandomisation(**fixed)
    name = next(iter(fixed))
    drawn_as = {"orientations": "orientations_deg", "cu_probability": "filtration_mm", "tree_generations": "tree",
                "flat_exposures": "flat_exposures", "psf_sigma_px": "psf_sigma_px", "kvp": "kvp"}[name]
    for i in range(30):
        a, b = sample_domain(domain_rng(5, i), full), sample_domain(domain_rng(5, i), one)
        assert {k for k in a if a[k] != b[k]} <= {drawn_as}, (name, i)
    assert {len(sample_domain(domain_rng(5, i), one)["orientations_deg"]) for i in range(30)} <= (
        {4} if name == "orientations" else set(range(3, 9)))


def test_integer_ranges_are_uniform_over_their_whole_numbers():
    rng = np.random.default_rng(0)
    counts = np.bincount([_integer(rng, (3, 8)) for _ in range(6000)], minlength=9)[3:]
    assert counts.min() > 850 and counts.max() < 1150  # 1000 each; binomial sd about 29
    assert {_integer(rng, (10, 10)) for _ in range(20)} == {10}


def test_ranges_file(tmp_path):
    path = tmp_path / "ranges.yaml"
    path.write_text("kvp: [50, 90]\ncu_probability: 0\nvoxel_mm: [0.15, 0.15]\n")
    r = load_ranges(path)
    assert r.kvp == (50.0, 90.0) and r.cu_probability == 0 and r.voxel_mm == (0.15, 0.15)
    assert r.dose_scale == DomainRandomisation().dose_scale  # not given: the default
    path.write_text("kvps: [50, 90]\n")
    with pytest.raises(InputError, match="unknown range 'kvps'"):
        load_ranges(path)
    path.write_text("kvp: [90, 50]\n")
    with pytest.raises(InputError, match="low <= high"):
        load_ranges(path)
    with pytest.raises(InputError, match="orientations"):
        DomainRandomisation(orientations=(2, 4))  # a directional fit needs three
    with pytest.raises(InputError, match="probability"):
        DomainRandomisation(lung_crop_probability=1.5)
    assert set(INTEGER_RANGES) | set(PROBABILITIES) <= {f.name for f in fields(DomainRandomisation)}


def test_grid_follows_voxel_and_body_width():
    d = sample_domain(domain_rng(0, 0))
    d = {**d, "voxel_mm": 0.1, "anatomy": {**d["anatomy"], "body_width_scale": 1.1}}
    grid, voxel, angles = grid_for((178, 178, 32), 0.15, 120, d)
    assert voxel == 0.1 and grid == anatomy_grid(0.1, length_mm=32 * 0.15, width_mm=27.5)
    assert angles == round(120 * 1.5 * 1.1)  # angular sampling kept relative to the body in pixels
    assert grid_for(24, 0.4, 16, d) == (24, 0.1, 16)  # a test cube keeps its grid


@pytest.fixture(scope="module")
def slab_pair():
    """A true-size slab through the hila at 0.2 mm, with and without the tree (same random numbers before it)."""
    grid = anatomy_grid(0.2, length_mm=3.0)
    kw = {"z_centre_mm": 2.0, "n_vessels": 0}
    plain = build_anatomy(grid, 0.2, np.random.default_rng(11), **kw)
    tree = build_anatomy(grid, 0.2, np.random.default_rng(11), tree=BronchovascularTree(), **kw)
    return plain, tree


def _mu40(a) -> np.ndarray:
    return sum(float(mu(name, np.array([40.0]))[0]) * f for name, f in a.materials.items())


def test_vessel_tree_in_lung_in_no_label_and_raises_attenuation(slab_pair):
    plain, tree = slab_pair
    assert plain.structures is None and tree.structures is not None
    s = tree.structures
    solid = s >= 0.5
    assert solid.sum() > 100  # the tree is there at a 0.2 mm voxel
    assert not np.any(s[~tree.lung_mask] > 0.5)  # inside the lungs
    assert np.all(s <= np.where(tree.lung_mask, 1.0, 0.5) + 1e-6)
    assert np.array_equal(tree.lung_mask, plain.lung_mask)  # the lung mask holds the tree
    assert not tree.label.any()
    info = tree.info["tree"]
    assert info["airway_segments"] > 10 and info["airway_lumen_mm3"] > 0 and info["tree_in_lung_mm3"] > 0
    # solid vessels and airway walls outweigh the airway lumens: attenuation in the lung rises
    m_plain, m_tree = _mu40(plain), _mu40(tree)
    lung = tree.lung_mask
    assert m_tree[lung].mean() > 1.02 * m_plain[lung].mean()
    vessel = solid & (tree.materials["soft_tissue"] > 0.9)
    assert vessel.sum() > 20 and m_tree[vessel].mean() > 2 * m_plain[lung & ~solid].mean()
    # no alveoli (no dark-field) in the tree, air in the airway lumens
    assert np.all(tree.air_fraction[s > 0.99] < 0.01)  # at most the parenchyma of a partial lung voxel
    assert tree.materials["air"][solid].max() > 0.9
    # materials still sum to the body fraction
    assert sum(tree.materials.values()).max() <= 1.0 + 1e-5
    # tumours avoid the tree and their label never holds it
    sample_tumours(tree, np.random.default_rng(2), count=4, diameter_range_mm=(0.5, 1.5))
    assert tree.label.any() and not np.any(tree.label.astype(bool) & solid)
    assert all(t["label_voxels"] > 0 for t in tree.tumours)


def test_default_anatomy_unchanged_by_identity_options():
    a = build_anatomy(24, 0.4, np.random.default_rng(5))
    b = build_anatomy(24, 0.4, np.random.default_rng(5), jitter=AnatomyJitter())
    for name in a.materials:
        assert np.array_equal(a.materials[name], b.materials[name])
    assert np.array_equal(a.air_fraction, b.air_fraction) and np.array_equal(a.lung_mask, b.lung_mask)
    assert a.structures is None and "tree" not in a.info and "jitter" not in a.info


def test_jitter_moves_and_sizes_organs():
    grid = anatomy_grid(0.3, length_mm=3.0, width_mm=25.0 * 1.15)
    ref = build_anatomy(grid, 0.3, np.random.default_rng(1))
    big = build_anatomy(grid, 0.3, np.random.default_rng(1), jitter=AnatomyJitter(body_width_scale=1.15))
    assert big.body_mask.sum() > 1.2 * ref.body_mask.sum()
    with pytest.raises(InputError, match="too narrow"):
        build_anatomy(anatomy_grid(0.3, length_mm=3.0), 0.3, np.random.default_rng(1),
                      jitter=AnatomyJitter(body_width_scale=1.15))
    shifted = build_anatomy(grid, 0.3, np.random.default_rng(1), jitter=AnatomyJitter(lung_shift_mm=(0.0, 0.9, 0.0)))
    y = np.arange(grid[1])
    centroid = lambda m: (m.sum(axis=(0, 2)) * y).sum() / m.sum()  # noqa: E731
    assert centroid(shifted.lung_mask) > centroid(ref.lung_mask) + 1.0  # voxels of 0.3 mm: about 3 for 0.9 mm


@pytest.mark.parametrize("sigma", [0.3, 0.5, 1.0])
def test_psf_std_from_an_edge_equals_sigma(sigma):
    u = np.arange(64)
    t = np.where(u < 32, 1.0, 0.4)[None, None, :, None] * np.ones((2, 3, 64, 5))  # edge along U
    d = np.full_like(t, 0.7)
    bt, bd = detector_blur(t.astype(np.float32), d.astype(np.float32), sigma)
    esf = bt[0, 0, :, 2].astype(np.float64)
    lsf = -np.diff(esf) / (1.0 - 0.4)
    x = u[:-1] + 0.5
    mean = (lsf * x).sum() / lsf.sum()
    measured = np.sqrt((lsf * (x - mean) ** 2).sum() / lsf.sum())
    assert abs(measured - sigma) < 0.1 * sigma
    assert np.allclose(bd, 0.7, atol=1e-6)  # a uniform visibility ratio stays uniform across an attenuation edge
    assert np.isclose(psf_kernel(sigma).sum(), 1.0)
    assert np.array_equal(detector_blur(t, d, 0.0)[0], t.astype(np.float32))


def test_flat_field_bias_is_constant_over_angles_and_gives_a_ring():
    n_or, n_a, n = 2, 60, 40
    t = np.full((n_or, n_a, n, 3), 0.5, np.float32)
    d = np.full_like(t, 0.8)
    scan = {"proj_T": t, "proj_D": d, "v_ref": 0.25}
    out = apply_detector_artefacts(scan, np.random.default_rng(4), psf_sigma_px=0.0, ring_gain_sd=0.01,
                                   flat_counts=2e5, shape=(n, n, 3), pixel_mm=0.2, geometry="ct")
    f_t, f_d = flat_field_factors((n_or, n, 3), np.random.default_rng(4), gain_sd=0.01, flat_counts=2e5, v_ref=0.25)
    bias_t = -np.log(out["proj_T"]) + np.log(t)
    bias_d = -np.log(out["proj_D"]) + np.log(d)
    # the per-column bias is the flat's error, the same at every angle
    assert np.allclose(bias_t, -np.log(f_t), atol=2e-6) and np.allclose(bias_d, -np.log(f_d), atol=2e-6)
    assert np.allclose(bias_t.std(axis=1), 0, atol=2e-6)
    # its size is the stated physics: gain sd (+) 1/sqrt(N_f) on T, sqrt((2-V^2)/(N_f V^2)) on ln V
    assert abs(bias_t.std() / np.hypot(0.01, 1 / np.sqrt(2e5)) - 1) < 0.15
    assert abs(bias_d.std() / np.sqrt((2 - 0.25**2) / (2e5 * 0.25**2)) - 1) < 0.15
    # one column off by delta in every projection reconstructs to a ring at that column's radius
    # holding the sinogram's integral (delta x pixel per angle)
    delta, u0, pixel = 0.01, 29, 0.2
    col = np.ones((1, 96, 64, 1), np.float32)
    col[:, :, u0 + 12] = np.exp(-delta)
    attn, _ = reconstruct(col, np.ones_like(col), (64, 64, 1), pixel, "ct")
    x = np.arange(64) - 31.5
    r = np.hypot(x[:, None], x[None, :])
    profile = np.array([attn[..., 0][(r >= k - 0.5) & (r < k + 0.5)].mean() for k in range(1, 30)])
    assert abs(1 + int(np.argmax(profile)) - abs(u0 + 12 - 31.5)) <= 1
    assert abs(attn.sum() * pixel**2 / (delta * pixel) - 1) < 0.15


def _noise_sd(config: AcquisitionConfig, anatomy) -> float:
    """Standard deviation of the attenuation line integral -ln T's noise: two scans' difference / sqrt 2."""
    a = acquire_radiograph(anatomy, config, np.random.default_rng(1))["proj_T"]
    b = acquire_radiograph(anatomy, config, np.random.default_rng(2))["proj_T"]
    return float(np.std(np.log(a) - np.log(b)) / np.sqrt(2))


def test_four_times_the_dose_halves_the_attenuation_noise():
    anatomy = build_anatomy(32, 0.4, np.random.default_rng(0))  # 3 x 32 x 32 pixels: the std within 2 %
    base = replace(AcquisitionConfig(geometry="radiograph", flux_sigma=0.0, drift_amplitude=0.0), n_angles=1)
    d = sample_domain(domain_rng(0, 0), FAST_RANGES)
    one = acquisition_for(base, {**d, "dose_scale": 1.0}).at_pixel(0.4)
    four = acquisition_for(base, {**d, "dose_scale": 4.0}).at_pixel(0.4)
    assert np.isclose(four.photons_per_pixel, 4 * one.photons_per_pixel)
    ratio = _noise_sd(one, anatomy) / _noise_sd(four, anatomy)
    assert abs(ratio / 2 - 1) < 0.15


def test_visibility_and_orientations_applied():
    d = sample_domain(domain_rng(3, 0))
    config = acquisition_for(AcquisitionConfig(), d)
    assert np.isclose(config.reference_visibility(), d["reference_visibility"], rtol=1e-9)
    assert list(config.orientations_deg) == d["orientations_deg"] and config.kvp == d["kvp"]
    with pytest.raises(InputError, match="reference_visibility"):
        acquisition_for(AcquisitionConfig(), {**d, "reference_visibility": 0.99})


def test_lung_crop_keeps_world_coordinates(tmp_path):
    d = sample_domain(domain_rng(1, 0), FAST_RANGES)
    kw = {"size": 24, "voxel_mm": 0.4, "seed": 1, "acquisition": FAST, "has_tumour": True}
    full = simulate_subject(0, domain={**d, "fov": "thorax"}, **kw)
    crop = simulate_subject(0, domain={**d, "fov": "lung", "crop_margin_mm": 0.8}, **kw)
    fov = crop["sidecar"]["fov"]
    box = tuple(slice(*b) for b in fov["box_voxels"])
    assert crop["images"]["attn"].shape < full["images"]["attn"].shape
    for name in ("attn", "df", "label", "lung_mask"):  # the same scan, cut out
        assert np.array_equal(crop["images"][name], full["images"][name][box])
    assert crop["images"]["label"].sum() == full["images"]["label"].sum() > 0
    assert crop["projections"] == {} and full["projections"]
    # the lung's centroid is at the same world position in both files
    write_scan(tmp_path / "full", full)
    write_scan(tmp_path / "crop", crop)

    def centroid(folder: Path) -> np.ndarray:
        mask, affine = load_nifti(folder / "lung_mask.nii.gz")
        ijk = np.argwhere(np.asarray(mask) > 0).mean(axis=0)
        return affine[:3, :3] @ ijk + affine[:3, 3]

    assert np.allclose(centroid(tmp_path / "full"), centroid(tmp_path / "crop"), atol=1e-5)
    assert not (tmp_path / "crop" / "proj_T.nii.gz").exists()
    side = read_json(tmp_path / "crop" / "sidecar.json")
    assert side["domain"]["fov"] == "lung" and side["fov"]["origin_mm"] == [b.start * 0.4 for b in box]


def test_randomised_cohort_records_domain_and_is_deterministic(tmp_path):
    kw = {"progress": False, "acquisition": FAST, "phantoms": False, "folds": 2, "test_by": "none",
          "randomise": FAST_RANGES}
    a = write_cohort(tmp_path / "a", 2, 24, 0.4, 3, **kw)
    b = write_cohort(tmp_path / "b", 2, 24, 0.4, 3, **kw)
    files = sorted(p.relative_to(a) for p in (a / "scans").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in (b / "scans").rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    for i, scan in enumerate(sorted((a / "scans").iterdir())):
        side = read_json(scan / "sidecar.json")
        dom = side["domain"]
        assert dom == {**sample_domain(domain_rng(3, i), FAST_RANGES), "ranges": FAST_RANGES.describe()}
        assert side["kvp"] == dom["kvp"] and side["orientations_deg"] == dom["orientations_deg"]
        assert np.isclose(side["spectrum"]["v_ref"], dom["reference_visibility"])
        assert load_nifti(scan / "df.nii.gz")[0].shape[-1] == 3
    with pytest.raises(InputError, match="exclude"):
        write_cohort(tmp_path / "c", 2, 24, 0.4, 3, kvp=70, **kw)


def test_default_sidecar_has_no_domain():
    out = simulate_subject(0, size=24, voxel_mm=0.4, seed=0, acquisition=FAST, has_tumour=False)
    assert not {"domain", "fov", "detector_artefacts"} & set(out["sidecar"]) and "affine" not in out


def test_cli_refuses_a_fixed_tube_and_a_bad_ranges_file(tmp_path, capsys):
    from dfseg.cli import main

    assert main(["simulate", "-o", str(tmp_path / "a"), "--randomise", "--kvp", "70", "--no-progress"]) == 1
    assert "--randomise" in capsys.readouterr().err
    bad = tmp_path / "r.yaml"
    bad.write_text("voxel: [0.1, 0.2]\n")
    assert main(["simulate", "-o", str(tmp_path / "b"), "--randomise-ranges", str(bad), "--no-progress"]) == 1
    assert "unknown range 'voxel'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
