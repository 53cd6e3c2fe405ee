"""bench/randomisation_ablation.py: each ablation switches off what it names and nothing else,
and the subjects of an ablation draw the same scanner and animal as the full randomisation."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from testkit import bench_module

from dfseg.simulate.domain import DomainRandomisation, load_ranges, sample_domain

#: ablation -> the DomainRandomisation fields it may change (beyond the fixed voxel)
CHANGED = {
    "randomised": set(),
    "no-psf": {"psf_sigma_px"},
    "no-crop": {"lung_crop_probability"},
    "no-tree": {"tree_probability"},
    "no-rings": {"ring_gain_sd", "flat_exposures"},
    "nominal-dose": {"dose_scale"},
    "nominal-noise": {"dose_scale", "reference_visibility", "orientations", "ring_gain_sd", "flat_exposures"},
    "nominal-anatomy": {"body_width_scale", "body_depth_scale", "lung_scale", "lung_shift_mm", "heart_scale",
                        "heart_shift_mm"},
    "standard-micro": {"alveolar_radius_um", "air_fraction", "anisotropy", "correlation_mm"},
}


#: DomainRandomisation field -> the sample_domain key it is drawn into, where they differ
FIELD_OF = {"body_width_scale": "anatomy", "body_depth_scale": "anatomy", "lung_scale": "anatomy",
            "lung_shift_mm": "anatomy", "heart_scale": "anatomy", "heart_shift_mm": "anatomy",
            "alveolar_radius_um": "micro_structure", "air_fraction": "micro_structure",
            "anisotropy": "micro_structure", "correlation_mm": "micro_structure"}


@pytest.fixture(scope="module")
def ablation():
    return bench_module("randomisation_ablation")


def test_each_ablation_changes_only_its_factor_and_keeps_the_other_draws(ablation, tmp_path):
    assert set(ablation.ABLATIONS) == set(CHANGED) | {"nominal"}
    assert ablation.ABLATIONS["nominal"] is None  # no --randomise at all: the fixed-scanner control
    full = DomainRandomisation(voxel_mm=(0.15, 0.15))
    reference = [sample_domain(np.random.default_rng(i), full) for i in range(20)]
    for name, changed in CHANGED.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text("voxel_mm: [0.15, 0.15]\n" + ablation.ABLATIONS[name])
        ranges = load_ranges(path)
        differs = {f.name for f in fields(ranges) if getattr(ranges, f.name) != getattr(full, f.name)}
        assert differs == changed, name
        for f in changed:  # switched off: a fixed value (equal ends) or probability 0
            value = getattr(ranges, f)
            assert value == 0 if isinstance(value, int | float) else value[0] == value[1], (name, f)
        for i, ref in enumerate(reference):
            drawn = sample_domain(np.random.default_rng(i), ranges)
            # paired subjects: what the ablation leaves alone is drawn the same
            left_alone = {"kvp", "filtration_mm", "reference_visibility", "psf_sigma_px", "anatomy",
                          "micro_structure"} - {FIELD_OF.get(f, f) for f in changed}
            for key in left_alone:
                assert drawn[key] == ref[key], (name, key)
    off = sample_domain(np.random.default_rng(0), load_ranges(tmp_path / "no-tree.yaml"))
    assert off["tree"] is None and off["psf_sigma_px"] == reference[0]["psf_sigma_px"]
    crop = [sample_domain(np.random.default_rng(i), load_ranges(tmp_path / "no-crop.yaml"))["fov"] for i in range(20)]
    assert set(crop) == {"thorax"} and {r["fov"] for r in reference} == {"thorax", "lung"}
