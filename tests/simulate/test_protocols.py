"""The mission's acquisition protocol: true-size mice, grids sized from the anatomy, dose per mm^2."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from dfseg.cli import main
from dfseg.errors import InputError
from dfseg.io import load_nifti, read_json
from dfseg.simulate.acquisition import DEFAULT_FLUENCE_PER_MM2, AcquisitionConfig, _measure
from dfseg.simulate.anatomy import MOUSE_WIDTH_MM, anatomy_grid, build_anatomy
from dfseg.simulate.cohort import write_cohort
from dfseg.simulate.protocols import PROTOCOLS, get_protocol


def test_grid_is_sized_from_the_anatomy():
    # X holds the 25 mm body plus 4 air columns and one margin voxel on each side; Z the 16 mm thorax
    assert anatomy_grid(0.15) == (178, 178, 107)
    assert anatomy_grid(0.10) == (260, 260, 160)
    assert anatomy_grid(0.15, length_mm=4.8) == (178, 178, 32)
    for v in (0.1, 0.15, 0.3):
        x = anatomy_grid(v)[0]
        assert (x / 2 - 4 - 1) * v >= MOUSE_WIDTH_MM / 2 > (x / 2 - 4 - 2) * v


def _extent_mm(mask: np.ndarray, axis: int, voxel_mm: float) -> float:
    other = tuple(a for a in range(3) if a != axis)
    idx = np.flatnonzero(mask.any(axis=other))
    return float((idx.max() - idx.min() + 1) * voxel_mm)


def test_true_size_mouse_keeps_its_size_when_the_voxel_changes():
    sizes = {}
    for v in (0.15, 0.3):
        a = build_anatomy(anatomy_grid(v, length_mm=6.0), v, np.random.default_rng(3))
        sizes[v] = (_extent_mm(a.body_mask, 0, v), _extent_mm(a.body_mask, 1, v),
                    a.lung_mask.sum() * v**3, a.info["scale"])
        assert a.info["fit"] == "true" and a.info["scale"] == 1.0
        # the body is the mouse's 25 mm (less the per-subject variation of at most 6 %)
        assert 0.94 * MOUSE_WIDTH_MM - 2 * v <= sizes[v][0] <= MOUSE_WIDTH_MM + v
    (w1, h1, lung1, _), (w2, h2, lung2, _) = sizes[0.15], sizes[0.3]
    assert abs(w1 - w2) <= 0.3 + 1e-9 and abs(h1 - h2) <= 0.3 + 1e-9
    assert abs(lung1 - lung2) / lung1 < 0.05


def test_whole_thorax_holds_the_lungs_cranio_caudal_extent():
    a = build_anatomy(None, 0.3, np.random.default_rng(0))
    assert a.shape == anatomy_grid(0.3)
    lung_z = _extent_mm(a.lung_mask, 2, 0.3)
    assert 12.0 <= lung_z <= 15.0  # a mouse's lungs, ~14 mm
    lung_slices = np.flatnonzero(a.lung_mask.any(axis=(0, 1)))
    assert lung_slices.min() > 0 and lung_slices.max() < a.shape[2] - 1  # inside the grid, not cut


def test_a_grid_too_narrow_for_a_true_size_mouse_is_refused():
    with pytest.raises(InputError, match="too narrow for a true-size mouse"):
        build_anatomy((64, 64, 16), 0.15, np.random.default_rng(0))


def test_counts_per_pixel_scale_with_pixel_area_at_a_fixed_dose():
    cfg = AcquisitionConfig()
    assert cfg.fluence_per_mm2 == DEFAULT_FLUENCE_PER_MM2
    assert cfg.counts_per_pixel(0.15) == pytest.approx(DEFAULT_FLUENCE_PER_MM2 * 0.0225)
    assert cfg.counts_per_pixel(0.10) / cfg.counts_per_pixel(0.15) == pytest.approx((0.10 / 0.15) ** 2)
    assert AcquisitionConfig(photons_per_pixel=2e4).counts_per_pixel(0.1) == 2e4  # an explicit count wins
    # the measured noise follows: var(T_hat) ~ 1/counts, so halving the pixel quadruples the variance
    t = np.full((200_000,), 0.5)
    d = np.full_like(t, 0.8)
    var = {}
    for pixel in (0.1, 0.2):
        t_hat, _ = _measure(t, d, np.ones(1), cfg, 0.25, np.random.default_rng(1), pixel)
        var[pixel] = float(np.var(t_hat))
    assert var[0.1] / var[0.2] == pytest.approx(4.0, rel=0.05)


def test_protocols_are_named_and_mission_ones_use_mission_voxels():
    assert get_protocol("mission-150um").grid() == (178, 178, 107)
    assert {p.voxel_mm for p in PROTOCOLS.values() if p.name.startswith("mission")} == {0.10, 0.15}
    for p in PROTOCOLS.values():  # enough angles for the body at that voxel: >= (pi/2) * 25 mm / voxel
        if p.name.startswith("mission"):
            assert p.n_angles >= np.pi / 2 * MOUSE_WIDTH_MM / p.voxel_mm
    assert get_protocol("demo").voxel_mm <= 0.15
    with pytest.raises(InputError, match="unknown protocol"):
        get_protocol("fast")


def test_cli_protocol_writes_its_grid_dose_and_name(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["simulate", "--out", str(out), "--subjects", "2", "--protocol", "quick", "--angles", "24",
                 "--length-mm", "3", "--no-phantoms", "--no-progress", "--test-by", "none", "--folds", "2"]) == 0
    scan = out / "scans" / "sub-0000_ct"
    attn, affine = load_nifti(scan / "attn.nii.gz")
    assert attn.shape == (94, 94, 10) and np.allclose(np.abs(np.diag(affine)[:3]), 0.3)
    side = read_json(scan / "sidecar.json")
    assert side["protocol"] == "quick" and side["fluence_per_mm2"] == DEFAULT_FLUENCE_PER_MM2
    assert side["photons_per_pixel"] == pytest.approx(DEFAULT_FLUENCE_PER_MM2 * 0.09)
    assert side["exposures"] == 4 * 24 and side["anatomy"]["scale"] == 1.0
    label = load_nifti(scan / "label.nii.gz")[0]
    assert side["has_tumour"] == bool(label.any()) == bool(side["tumours"])
    assert sum(t["label_voxels"] for t in side["tumours"]) == int(label.sum())
    assert main(["simulate", "--out", str(tmp_path / "x"), "--protocol", "quick", "--size", "32"]) == 1
    assert "--size" in capsys.readouterr().err


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "scans").rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_cohort_bytes_do_not_depend_on_the_executor(tmp_path):
    pytest.importorskip("distributed")
    kw = dict(progress=False, acquisition=AcquisitionConfig(n_angles=12), phantoms=False, folds=2, test_by="none")
    local = write_cohort(tmp_path / "local", 3, 24, 0.8, 4, workers=1, **kw)
    dask = write_cohort(tmp_path / "dask", 3, 24, 0.8, 4, workers=2, executor="dask", **kw)
    a, b = _hashes(local), _hashes(dask)
    assert len(a) == 3 * 7 and a == b
