"""``dfseg retrieve``: simulated raw frames with a known T, D and dphi -> proj_T/proj_D/proj_dphi within their
Poisson noise, the sidecar the correction chain reads, the scan folder ``dfseg import`` and ``dfseg predict``
take, refused outputs and bad layouts (one line, nothing written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from dfseg.cli import main
from dfseg.data.importer import import_scans
from dfseg.data.scan import LoadScand
from dfseg.data.validate import validate_sidecar
from dfseg.io import load_nifti, read_json
from dfseg.physics.forward import visibility_log_variance
from dfseg.predict import find_scans
from dfseg.simulate.raw import write_raw_scan
from dfseg.tomo import Geometry

N_OR, N_A, N_U, N_Z, M = 2, 24, 32, 4, 5
AIR, PIXEL, PHOTONS, V_REF, FLAT_EVERY = 4, 0.1, 2.0e5, 0.3, 8
ACQUISITION = {"kvp": 40.0, "filtration_mm": {"Al": 0.5},
               "visibility": {"v_max": 0.3, "design_energy_kev": 30.0, "width_kev": 10.0}, "air_columns": AIR}


def truth_stacks() -> dict[str, np.ndarray]:
    """T, D, dphi ``(N, A, U, Z)``: a body between AIR air columns at each edge, different per angle and orientation."""
    u = np.arange(N_U)[None, None, :, None]
    a = np.arange(N_A)[None, :, None, None]
    n = np.arange(N_OR)[:, None, None, None]
    body = ((u >= AIR + 1) & (u < N_U - AIR - 1)) * np.ones((1, 1, 1, N_Z))
    return {"T": np.exp(-body * (0.5 + 0.2 * np.sin(u / 3.0 + a / 4.0))),
            "D": np.exp(-body * (0.2 + 0.1 * np.cos(u / 4.0 - a / 5.0) + 0.05 * n)),
            "dphi": body * 0.4 * np.sin(u / 2.0 + a / 3.0 + n)}


def moire() -> np.ndarray:
    """A reference phase with several fringes, so the air columns see many phases (the per-frame estimate needs them)."""
    uu, zz = np.meshgrid(np.arange(N_U), np.arange(N_Z), indexing="ij")
    return 2 * np.pi * (2.3 * uu / N_U + 0.7 * zz / N_Z)


def predicted_variances(truth: dict, flat_indices: np.ndarray) -> dict[str, np.ndarray]:
    """Delta-method variances of ln T, ln D and dphi per pixel: the sample's plus the time-interpolated flat's.

    A projection between flats i and i + 1 at weight w sees ``(1 - w) flat_i + w flat_{i+1}``, whose
    variance is ``((1 - w)^2 + w^2)`` times one flat's (docs: tests/physics/test_stepping.py).
    """
    a = np.arange(N_A)
    hi = np.searchsorted(flat_indices, a, side="right")
    w = (a - flat_indices[hi - 1]) / (flat_indices[hi] - flat_indices[hi - 1])
    f = ((1 - w) ** 2 + w**2)[None, :, None, None]
    n_s, v_s = PHOTONS * truth["T"], V_REF * truth["D"]
    return {"T": 1 / n_s + f / PHOTONS,
            "D": visibility_log_variance(n_s, v_s) + f * visibility_log_variance(PHOTONS, V_REF),
            "dphi": 2 / (n_s * v_s**2) + f * 2 / (PHOTONS * V_REF**2)}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    """A small raw scan: 2 orientations x 24 angles x 5 jittered steps, per-frame doses, drift, darks (HDF5)."""
    truth = truth_stacks()
    folder = tmp_path_factory.mktemp("raw") / "scan"
    written = write_raw_scan(folder, truth["T"], truth["D"], dphi=truth["dphi"], v_ref=V_REF, photons_per_pixel=PHOTONS,
                             pixel_mm=PIXEL, steps=M, jitter_rad=0.1, dose_std=0.02, flat_every=FLAT_EVERY,
                             drift_a0=0.02, ref_phase=moire(), orientations_deg=[0.0, 90.0],
                             meta={**ACQUISITION, "meta": {"scan_id": "m001_raw", "subject_id": "m001"}}, seed=5)
    return {"layout": written["layout"], "truth": truth, "recorded": written["truth"]}


@pytest.fixture(scope="module")
def retrieved(raw, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("retrieved") / "m001"
    rc = main(["retrieve", str(raw["layout"]), "-o", str(out), "--estimate-phases", "--dphi", "--no-progress"])
    assert rc == 0
    return {"out": out, "sidecar": read_json(out / "sidecar.json")}


def test_projections_match_the_truth_within_poisson_noise(raw, retrieved):
    """ln T (divided by its air-column mean, as FluxNormalization does), ln D and dphi against the noise-free
    truth, jittered steps and per-frame doses estimated from the air columns: rms error over the delta
    method's predicted std measured 1.01 (T), 1.09 (D), 1.10 (dphi), no bias beyond a tenth of the std.
    The excess in D and dphi is the flats' first dose harmonic, which their frames cannot tell when
    phases and doses are both free, pooled here over only 8 projections per flat
    (dfseg.physics.stepping); with 24 per flat it is 1.03, with fixed doses or phases 1.00-1.03."""
    out, truth = retrieved["out"], raw["truth"]
    var = predicted_variances(truth, raw["recorded"]["flat_indices"])
    for key in ("T", "D", "dphi"):
        array, affine = load_nifti(out / f"proj_{key}.nii.gz")
        assert array.shape == (N_A, N_U, N_Z, N_OR) and array.dtype == np.float32
        np.testing.assert_allclose(np.diag(affine), [PIXEL, PIXEL, PIXEL, 1.0])
        stack = np.moveaxis(array.astype(np.float64), -1, 0)  # (N, A, U, Z)
        if key == "T":
            air = np.concatenate([stack[:, :, :AIR], stack[:, :, -AIR:]], axis=2).mean(axis=(2, 3), keepdims=True)
            err = np.log(stack / air) - np.log(truth["T"])
        elif key == "D":
            err = np.log(stack) - np.log(truth["D"])
        else:
            err = np.angle(np.exp(1j * (stack - truth["dphi"])))
        ratio = np.sqrt(np.mean(err**2) / np.mean(var[key]))
        print(f"{key}: rms error {np.sqrt(np.mean(err ** 2)):.5f}, predicted {np.sqrt(np.mean(var[key])):.5f}, "
              f"ratio {ratio:.3f}, mean {err.mean():+.1e}")
        assert 0.9 < ratio < (1.05 if key == "T" else 1.15), key
        assert abs(err.mean()) < 0.1 * np.sqrt(np.mean(var[key])), key


def test_sidecar_holds_what_the_correction_chain_reads(raw, retrieved):
    sc = retrieved["sidecar"]
    assert (sc["scan_id"], sc["subject_id"]) == ("m001_raw", "m001")
    for key, value in ACQUISITION.items():
        assert sc[key] == value, key
    assert sc["orientations_deg"] == [0.0, 90.0] and sc["voxel_mm"] == PIXEL and sc["pixel_mm"] == PIXEL
    assert (sc["n_angles"], sc["phase_steps"], sc["exposures"]) == (N_A, M, N_OR * N_A)
    assert sc["geometry"] == "ct" and Path(sc["raw_layout"]) == Path(raw["layout"]).resolve()
    # the reconstruction geometry (dfseg.tomo.Geometry.describe): dfseg's own, parallel over [0, 180), centred
    assert sc["beam"] == {"kind": "parallel", "scan_deg": 180.0, "detector_pixel_mm": [PIXEL, PIXEL], "cor_offset_px": 0.0}
    assert Geometry.from_meta(sc["beam"]).is_default(N_A, N_U, PIXEL)
    assert validate_sidecar(sc, "sidecar.json") == []
    r = sc["retrieval"]
    assert r["method"] == "auto" and r["fit"] == "lsq" and r["estimate_phases"] and r["air_columns"] == AIR and r["dose_correction"]
    assert r["flat_indices"] == [0, 8, 16, 24] and r["cor_source"] == "default 0" and r["cor_offset_px"] == 0
    assert [o["orientation_deg"] for o in r["orientations"]] == [0.0, 90.0]
    for o in r["orientations"]:
        assert abs(o["reference_visibility"] - V_REF) < 0.005
        assert 0.07 < o["sample_step_phase_rms_rad"] < 0.13  # the 0.1 rad jitter, found again
        assert 0.01 < o["sample_dose_std"] < 0.03 and abs(o["air_T_mean"] - 1) < 0.05 and abs(o["air_D_mean"] - 1) < 0.01


def test_volumes_and_the_scan_folder_other_commands_read(retrieved, tmp_path):
    """attn (X, Y, Z) and df (X, Y, Z, N) on the voxel grid; dfseg predict's finder and dfseg import take the
    folder; LoadScand reads the projections with the sidecar's orientations."""
    out = retrieved["out"]
    attn, affine = load_nifti(out / "attn.nii.gz")
    df, _ = load_nifti(out / "df.nii.gz")
    assert attn.shape == (N_U, N_U, N_Z) and df.shape == (N_U, N_U, N_Z, N_OR)
    np.testing.assert_allclose(np.diag(affine), [PIXEL, PIXEL, PIXEL, 1.0])
    assert 0.01 < float(np.median(attn[N_U // 2 - 4:N_U // 2 + 4, N_U // 2 - 4:N_U // 2 + 4])) < 0.5
    (entry,) = find_scans([out])
    assert entry["scan_id"] == "m001_raw" and entry["proj_T"].endswith("proj_T.nii.gz")
    data = LoadScand(("proj_T", "proj_D"), check_orientations=True)(entry)
    assert tuple(data["proj_T"].shape) == (N_OR, N_A, N_U, N_Z) and data["meta"]["air_columns"] == AIR
    path, manifest = import_scans(out.parent, tmp_path / "cohort")
    assert path.is_file() and [e["scan_id"] for e in manifest["test"]] == ["m001_raw"]


def test_refuses_an_existing_output_and_overwrites_when_told(raw, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["retrieve", str(raw["layout"]), "-o", str(out), "--no-progress", "--no-volumes"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("dfseg retrieve: error: ") and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["retrieve", str(raw["layout"]), "-o", str(out), "--no-progress", "--no-volumes", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["proj_D.nii.gz", "proj_T.nii.gz", "sidecar.json"]
    # the folder holding the raw frames is never an output
    layout_dir = Path(raw["layout"]).parent
    assert main(["retrieve", str(raw["layout"]), "-o", str(layout_dir.parent), "--overwrite", "--no-progress"]) == 1
    assert "must not hold the raw frames" in capsys.readouterr().err
    assert Path(raw["layout"]).is_file()


def _copy_layout(raw: dict, tmp_path: Path, **changes) -> Path:
    """The fixture's layout with fields changed (None removes one), beside the fixture's frames."""
    doc = yaml.safe_load(Path(raw["layout"]).read_text())
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    doc["file"] = str(Path(raw["layout"]).parent / doc["file"])
    path = tmp_path / "bad" / "layout.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(("changes", "args", "message"), [
    ({"pixel_mm": None}, [], "layout.yaml:pixel_mm: missing"),
    ({"steps": 6, "step_positions": None}, [], "holds 5 phase steps"),
    ({}, ["--air-columns", "20"], "--air-columns: must be in 0..16 for 32 detector columns, got 20"),
    ({"steps": 5}, ["--method", "fft", "--estimate-phases"], "method 'fft' needs equally spaced steps"),
])
def test_bad_input_is_one_line_and_writes_nothing(raw, tmp_path, capsys, changes, args, message):
    layout = _copy_layout(raw, tmp_path, **changes)
    out = tmp_path / "out"
    assert main(["retrieve", str(layout), "-o", str(out), "--no-progress", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("dfseg retrieve: error: ") and message in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_frame_missing_after_the_first_orientation_leaves_nothing(tmp_path, capsys):
    """TIFF frames, orientation 1 short of one file: orientation 0 is retrieved, then the error; no output."""
    truth = truth_stacks()
    folder = tmp_path / "tiff"
    written = write_raw_scan(folder, truth["T"], truth["D"], v_ref=V_REF, photons_per_pixel=PHOTONS, pixel_mm=PIXEL,
                             steps=M, flat_every=FLAT_EVERY, fmt="tiff", meta={"air_columns": AIR}, seed=6)
    (folder / "sample" / "o1_a0007.tif").unlink()
    out = tmp_path / "out"
    assert main(["retrieve", str(written["layout"]), "-o", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "o1_a0007.tif: file not found" in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_refuses_phases_the_air_cannot_tell_and_notes_a_thin_sidecar(tmp_path, capsys):
    """The air columns all see one fringe phase (the moire only spans the body): each frame's phase
    and dose cannot be told from them (the air would read D ~ 0.67), so --estimate-phases is refused
    with one line and nothing written; without it the scan is retrieved, and a layout without kvp,
    filtration or visibility gets a note for each field the sidecar schema misses."""
    truth = truth_stacks()
    ref = 2 * np.pi * np.clip((np.arange(N_U)[:, None] - AIR) / (N_U - 2 * AIR), 0, 1) * np.ones((1, N_Z))
    written = write_raw_scan(tmp_path / "raw", truth["T"], truth["D"], v_ref=V_REF, photons_per_pixel=PHOTONS,
                             pixel_mm=PIXEL, steps=M, jitter_rad=0.1, dose_std=0.02, flat_every=FLAT_EVERY,
                             ref_phase=ref, meta={"air_columns": AIR}, seed=5)
    assert main(["retrieve", str(written["layout"]), "-o", str(tmp_path / "out"), "--estimate-phases",
                 "--no-volumes", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot estimate the step phases" in err[0], err
    assert not (tmp_path / "out").exists()
    assert main(["retrieve", str(written["layout"]), "-o", str(tmp_path / "out"), "--no-volumes",
                 "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    for field in ("kvp", "filtration_mm", "visibility"):
        assert any(f"'{field}' is a required property" in line for line in notes), field
