"""Raw phase-stepping frames: frame statistics, the recorded truth, read-back, and the acquisition left as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfseg.data.raw import read_raw
from dfseg.errors import InputError, OutputExistsError
from dfseg.physics import retrieve
from dfseg.simulate.acquisition import (
    SLAB_SLICES,
    AcquisitionConfig,
    _gain,
    _measure,
    acquire_ct,
    expected_ct,
)
from dfseg.simulate.anatomy import build_anatomy
from dfseg.simulate.raw import write_raw_ct, write_raw_scan

N_OR, N_A, N_U, N_Z, M = 2, 12, 8, 5, 5
PHOTONS = 2.0e4
V_REF = 0.3
DARK, READ_NOISE = 100.0, 2.0


def stacks(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.3, 1.0, (1, N_A, N_U, N_Z)).astype(np.float32)
    d = rng.uniform(0.4, 1.0, (N_OR, N_A, N_U, N_Z)).astype(np.float32)
    return t, d


def expected_counts(truth: dict) -> np.ndarray:
    """The model of dfseg.simulate.raw, from the recorded truth: (N, A, M, U, Z) expected counts above dark."""
    arg = (truth["sample_phases"][..., None, None] + truth["sample_drift_phase"][:, :, None, None, None]
           + truth["ref_phase"])
    scale = truth["photons_per_pixel"] / M * (truth["sample_dose"] * truth["sample_a0"][..., None])[..., None, None]
    return scale * truth["T"][:, :, None] * (1 + truth["v_ref"] * truth["D"][:, :, None] * np.cos(arg))


def test_mean_over_steps_is_dark_plus_counts_times_transmission(tmp_path: Path) -> None:
    t, d = stacks(1)
    out = write_raw_scan(tmp_path / "scan", t, d, v_ref=V_REF, photons_per_pixel=PHOTONS, pixel_mm=0.1, steps=M,
                         dark_level=DARK, read_noise=READ_NOISE, return_frames=True, seed=3)
    sample = out["frames"]["sample"].astype(np.float64)  # (N, A, M, U, Z), uint16 counts on disk
    lam = PHOTONS / M * t[:, :, None]  # g = 1: no dose fluctuation
    mean = sample.mean(axis=2)
    # Poisson + read noise + rounding to integer counts, averaged over the M steps
    var = (lam[:, :, 0] + READ_NOISE**2 + 1 / 12) / M
    z = (mean - DARK - lam[:, :, 0]) / np.sqrt(var)
    assert abs(z.mean()) < 4 / np.sqrt(z.size) and 0.85 < z.std() < 1.15
    darks = out["frames"]["darks"]
    assert darks.shape == (5, N_U, N_Z) and abs(darks.mean() - DARK) < 0.5 and 1.5 < darks.std() < 2.6


def test_every_frame_follows_the_recorded_phases_doses_and_drift(tmp_path: Path) -> None:
    t, d = stacks(2)
    jitter, dose = 0.3, 0.05
    out = write_raw_scan(tmp_path / "scan", t, d, v_ref=V_REF, photons_per_pixel=PHOTONS, pixel_mm=0.1, steps=M,
                         jitter_rad=jitter, dose_std=dose, drift_a0=0.05, drift_phase_rad=0.4, flat_every=4,
                         dark_level=DARK, read_noise=READ_NOISE, dtype="float32", return_frames=True, seed=4)
    truth = out["truth"]
    nominal = 2 * np.pi * np.arange(M) / M
    assert truth["sample_phases"].shape == (N_OR, N_A, M) and truth["flat_phases"].shape == (N_OR, 4, M)
    assert truth["flat_indices"].tolist() == [0, 4, 8, 12]
    for key, std in (("sample_phases", jitter), ("flat_phases", jitter)):
        err = truth[key] - nominal
        assert abs(err.std() / std - 1) < 0.35 and abs(err.mean()) < 4 * std / np.sqrt(err.size), key
    assert abs((truth["sample_dose"] - 1).std() / dose - 1) < 0.35
    assert np.ptp(truth["sample_a0"]) > 0.02 and np.ptp(truth["sample_drift_phase"]) > 0.1
    lam = expected_counts(truth)
    sample = out["frames"]["sample"]
    z = (sample - DARK - lam) / np.sqrt(lam + READ_NOISE**2)
    assert abs(z.mean()) < 4 / np.sqrt(z.size) and 0.9 < z.std() < 1.1
    # the nominal phases do not explain the frames: the recorded jitter is the one applied
    nominal_truth = {**truth, "sample_phases": np.broadcast_to(nominal, truth["sample_phases"].shape)}
    z_nominal = (sample - DARK - expected_counts(nominal_truth)) / np.sqrt(lam + READ_NOISE**2)
    assert z_nominal.std() > 2
    # the flats see the same drift at the time they were taken
    flats = out["frames"]["flats"] - DARK
    arg = truth["flat_phases"][..., None, None] + truth["flat_drift_phase"][:, :, None, None, None] + truth["ref_phase"]
    lam_f = PHOTONS / M * (truth["flat_dose"] * truth["flat_a0"][..., None])[..., None, None] * (1 + V_REF * np.cos(arg))
    z_f = (flats - lam_f) / np.sqrt(lam_f + READ_NOISE**2)
    assert abs(z_f.mean()) < 4 / np.sqrt(z_f.size) and 0.85 < z_f.std() < 1.15


def test_noise_free_frames_retrieve_t_and_d_exactly(tmp_path: Path) -> None:
    t, d = stacks(3)
    out = write_raw_scan(tmp_path / "scan", t, d, v_ref=V_REF, photons_per_pixel=PHOTONS, pixel_mm=0.1, steps=M,
                         noise=False, dark_level=DARK, return_frames=True, seed=0)
    frames = out["frames"]
    assert frames["sample"].dtype == np.float32
    np.testing.assert_array_equal(frames["darks"], np.full((5, N_U, N_Z), DARK, np.float32))
    # the model is the one of dfseg.physics (retrieve): T = a0_s / a0_r, D = V_s / V_r
    t_hat, d_hat = retrieve(frames["sample"] - DARK, frames["flats"][:, :1] - DARK, axis=2)
    np.testing.assert_allclose(t_hat, np.broadcast_to(t, d.shape), rtol=2e-5)
    np.testing.assert_allclose(d_hat, d, rtol=2e-4)


@pytest.mark.parametrize("fmt", ["hdf5", "tiff"])
def test_written_frames_read_back_exactly(tmp_path: Path, fmt: str) -> None:
    t, d = stacks(4)
    out = write_raw_scan(tmp_path / "scan", t, d, v_ref=V_REF, photons_per_pixel=PHOTONS, pixel_mm=0.05, steps=M,
                         jitter_rad=0.1, flat_every=5, fmt=fmt, record_positions=True, return_frames=True,
                         beam={"type": "cone", "source_object_mm": 80.0, "source_detector_mm": 200.0},
                         meta={"kvp": 45.0, "air_columns": 2, "meta": {"note": "simulated"}}, seed=5)
    scan = read_raw(out["layout"])
    for key in ("sample", "flats", "darks"):
        np.testing.assert_array_equal(getattr(scan, key), out["frames"][key], err_msg=key)
    assert scan.sample.shape == (N_OR, N_A, M, N_U, N_Z)
    assert scan.flat_indices.tolist() == out["truth"]["flat_indices"].tolist() == [0, 5, 10, 12]
    np.testing.assert_allclose(scan.sample_phases, out["truth"]["sample_phases"], atol=1e-12)
    np.testing.assert_allclose(scan.flat_phases, out["truth"]["flat_phases"], atol=1e-12)
    np.testing.assert_allclose(scan.angles_deg, np.arange(N_A) * 180 / N_A)
    assert scan.meta["beam"]["type"] == "cone" and scan.meta["kvp"] == 45.0 and scan.meta["note"] == "simulated"
    assert scan.meta["pixel_mm"] == 0.05 and scan.meta["phase_steps"] == M
    stored = np.load(tmp_path / "scan" / "truth.npz")
    np.testing.assert_array_equal(stored["sample_phases"], out["truth"]["sample_phases"])
    np.testing.assert_array_equal(stored["D"], d)
    # the same seed writes the same frames
    again = write_raw_scan(tmp_path / "again", t, d, v_ref=V_REF, photons_per_pixel=PHOTONS, pixel_mm=0.05, steps=M,
                           jitter_rad=0.1, flat_every=5, fmt=fmt, return_frames=True, seed=5)
    np.testing.assert_array_equal(again["frames"]["sample"], out["frames"]["sample"])


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    t, d = stacks()
    common = {"v_ref": V_REF, "pixel_mm": 0.1}
    with pytest.raises(InputError, match=r"^fmt: expected hdf5 or tiff"):
        write_raw_scan(tmp_path / "a", t, d, photons_per_pixel=PHOTONS, fmt="nexus", **common)
    with pytest.raises(InputError, match=r"^photons_per_pixel: counts up to \d+ do not fit uint16"):
        write_raw_scan(tmp_path / "b", t, d, photons_per_pixel=1e6, **common)
    assert not (tmp_path / "b").exists()  # nothing partial
    with pytest.raises(InputError, match=r"^T: shape"):
        write_raw_scan(tmp_path / "c", t[:, :3], d, photons_per_pixel=PHOTONS, **common)
    write_raw_scan(tmp_path / "d", t, d, photons_per_pixel=PHOTONS, **common)
    with pytest.raises(OutputExistsError):
        write_raw_scan(tmp_path / "d", t, d, photons_per_pixel=PHOTONS, **common)


@pytest.fixture(scope="module")
def small_ct():
    anatomy = build_anatomy(20, 0.8, np.random.default_rng(0))
    return anatomy, AcquisitionConfig(n_angles=6, photons_per_pixel=1e4, orientations_deg=(0.0, 60.0, 120.0))


def test_expected_ct_is_what_acquire_ct_measures(small_ct) -> None:
    """The acquisition is unchanged: its noisy measurement is of exactly the signals expected_ct gives."""
    anatomy, cfg = small_ct
    exp = expected_ct(anatomy, cfg, device="cpu")
    assert exp["T"].shape == exp["D"].shape == (3, 6, 20, 20) and exp["T"].dtype == np.float32
    np.testing.assert_allclose(exp["angles_deg"], np.arange(6) * 30.0)
    quiet = AcquisitionConfig(n_angles=6, orientations_deg=(0.0, 60.0, 120.0), noise=False, flux_sigma=0.0,
                              drift_amplitude=0.0)
    scan = acquire_ct(anatomy, quiet, np.random.default_rng(1), device="cpu")
    np.testing.assert_array_equal(scan["proj_T"], exp["T"])
    np.testing.assert_array_equal(scan["proj_D"], exp["D"])
    noisy = acquire_ct(anatomy, cfg, np.random.default_rng(7), device="cpu")
    rng = np.random.default_rng(7)  # the acquisition's draws, in its order: gain, then slab after slab
    gain = _gain(cfg, (3, 6), rng)
    for z0 in range(0, 20, SLAB_SLICES):
        zs = slice(z0, min(z0 + SLAB_SLICES, 20))
        t_hat, d_hat = _measure(exp["T"][:1, ..., zs], exp["D"][..., zs], gain[:, :, None, None], cfg, exp["v_ref"],
                                rng, anatomy.voxel_mm)
        np.testing.assert_array_equal(noisy["proj_T"][..., zs], t_hat)
        np.testing.assert_array_equal(noisy["proj_D"][..., zs], d_hat)


def test_raw_ct_of_an_anatomy(tmp_path: Path, small_ct) -> None:
    anatomy, cfg = small_ct
    out = write_raw_ct(tmp_path / "ct", anatomy, cfg, seed=1, fmt="tiff", flat_every=3, device="cpu")
    scan = read_raw(out["layout"])
    assert scan.sample.shape == (3, 6, cfg.phase_steps, 20, 20) and scan.flats.shape == (3, 3, cfg.phase_steps, 20, 20)
    assert scan.meta["kvp"] == 70.0 and scan.meta["air_columns"] == 4 and scan.meta["pixel_mm"] == 0.8
    assert scan.meta["visibility"] == dict(cfg.visibility) and scan.meta["filtration_mm"] == {"Al": 1.0}
    np.testing.assert_allclose(scan.angles_deg, np.arange(6) * 30.0)
    truth = out["truth"]
    assert truth["photons_per_pixel"] == 1e4 and abs(truth["v_ref"].mean() - cfg.reference_visibility()) < 1e-6
    np.testing.assert_array_equal(truth["T"], expected_ct(anatomy, cfg, device="cpu")["T"])
    # air columns: the mean over steps is dark + N/M x the frame doses (flux_sigma) x the drift (drift_amplitude)
    air = (scan.sample[:, :, :, :4].mean(axis=2) - 100.0).mean(axis=(2, 3))  # (N, A)
    dose = 1e4 / cfg.phase_steps * truth["sample_dose"].mean(axis=2) * truth["sample_a0"]
    assert np.ptp(truth["sample_a0"]) > 0.005 and np.abs(air / dose - 1).max() < 0.006
