"""Raw phase-stepping frames: the layout file, HDF5 and TIFF round trips, one-line errors naming the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import yaml

from dfseg.data.raw import RawLayout, iter_orientations, read_layout, read_raw
from dfseg.errors import InputError

# every axis a different length, so a transposition cannot pass
N, A, M, F, D, ROWS, COLS = 2, 5, 3, 4, 6, 7, 9
FLAT_INDICES = [0, 2, 4, 5]


def lab_frames(seed: int = 0) -> dict[str, np.ndarray]:
    """Frames as a lab stores them: (orient, angle, step, row, col), uint16 counts."""
    rng = np.random.default_rng(seed)
    return {"sample": rng.integers(0, 4000, (N, A, M, ROWS, COLS)).astype(np.uint16),
            "flats": rng.integers(0, 4000, (N, F, M, ROWS, COLS)).astype(np.uint16),
            "darks": rng.integers(90, 110, (D, ROWS, COLS)).astype(np.uint16)}


def dfseg_order(frames: np.ndarray) -> np.ndarray:
    """(..., row, col) -> (..., U, Z) float32."""
    return np.swapaxes(frames, -1, -2).astype(np.float32)


def base_layout(fmt: str) -> dict:
    doc = {"format": fmt, "orientations_deg": [0.0, 90.0], "angles_deg": {"start": 0, "stop": 180, "count": A},
           "steps": M, "pixel_mm": 0.075, "flats": {"indices": FLAT_INDICES}, "kvp": 50, "air_columns": 3}
    return doc


def write_layout(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def hdf5_scan(folder: Path, frames: dict[str, np.ndarray] | None = None) -> Path:
    """An HDF5 scan with an unusual axis order (angle orient step col row) for the sample."""
    frames = frames or lab_frames()
    with h5py.File(folder / "scan.h5", "w") as fh:
        fh["/exchange/data"] = np.transpose(frames["sample"], (1, 0, 2, 4, 3))  # angle orient step col row
        fh["/exchange/flat"] = frames["flats"]
        fh["/exchange/dark"] = frames["darks"]
    doc = base_layout("hdf5")
    doc["file"] = "scan.h5"
    doc["sample"] = {"dataset": "/exchange/data", "axes": "angle orient step col row"}
    doc["flats"].update({"dataset": "/exchange/flat", "axes": "orient flat step row col"})
    doc["darks"] = {"dataset": "/exchange/dark", "axes": "dark row col"}
    return write_layout(folder / "layout.yaml", doc)


def tiff_frames_scan(folder: Path, frames: dict[str, np.ndarray] | None = None) -> Path:
    """One TIFF file per frame, angles numbered from 1, flats shared by both orientations."""
    frames = frames or lab_frames()
    for o in range(N):
        (folder / f"o{o}").mkdir(parents=True)
        for a in range(A):
            for s in range(M):
                tifffile.imwrite(folder / f"o{o}" / f"a{a + 1:03d}_s{s}.tif", frames["sample"][o, a, s])
    (folder / "flats").mkdir()
    for f in range(F):
        tifffile.imwrite(folder / "flats" / f"flat{f}.tif", frames["flats"][0, f])  # (step, row, col) pages
    for d in range(D):
        tifffile.imwrite(folder / f"dark_{d}.tif", frames["darks"][d])
    doc = base_layout("tiff")
    doc["sample"] = {"file": "o{orient}/a{angle:03d}_s{step}.tif", "first": {"angle": 1}}
    doc["flats"].update({"file": "flats/flat{flat}.tif", "axes": "step row col"})
    doc["darks"] = {"file": "dark_{dark}.tif", "count": D}
    return write_layout(folder / "layout.yaml", doc)


def tiff_stacks_scan(folder: Path, frames: dict[str, np.ndarray] | None = None) -> Path:
    """One multi-page TIFF stack per orientation (angle x step pages), one stack of flats, one of darks."""
    frames = frames or lab_frames()
    for o in range(N):
        tifffile.imwrite(folder / f"sample_{o}.tif", frames["sample"][o].reshape(A * M, ROWS, COLS))
    tifffile.imwrite(folder / "flats.tif", frames["flats"].reshape(N * F * M, ROWS, COLS))
    tifffile.imwrite(folder / "darks.tif", frames["darks"])
    doc = base_layout("tiff")
    doc["sample"] = {"file": "sample_{orient}.tif", "axes": "angle step row col"}
    doc["flats"].update({"file": "flats.tif", "axes": "orient flat step row col"})
    doc["darks"] = {"file": "darks.tif", "axes": "dark row col"}
    return write_layout(folder / "layout.yaml", doc)


SCANS: dict[str, Callable[..., Path]] = {"hdf5": hdf5_scan, "tiff-frames": tiff_frames_scan,
                                          "tiff-stacks": tiff_stacks_scan}


# ------------------------------------------------------------------------------------------ layout


def test_layout_fields_and_meta(tmp_path: Path) -> None:
    doc = base_layout("hdf5")
    doc.update({"file": "scan.h5", "step_positions": [0.0, 1.0, 2.0], "step_unit": "um", "grating_period_um": 3.0,
                "beam": {"type": "cone", "source_object_mm": 100.0, "source_detector_mm": 250.0, "cor_offset_px": -1.5},
                "filtration_mm": {"Al": 0.5}, "visibility": 0.25, "exposure_s": 1.2,
                "meta": {"operator": "x", "scanner": "lab-1"},
                "sample": {"dataset": "/s", "axes": "orient angle step row col"},
                "flats": {"dataset": "/f", "axes": "flat step row col", "every": 2}})
    del doc["steps"]
    layout = read_layout(write_layout(tmp_path / "layout.yaml", doc))
    assert isinstance(layout, RawLayout) and layout.format == "hdf5" and layout.steps == M
    np.testing.assert_allclose(layout.angles_deg, [0, 36, 72, 108, 144])
    np.testing.assert_allclose(layout.step_phases, 2 * np.pi * np.array([0, 1, 2]) / 3)
    assert layout.flat_indices.tolist() == [0, 2, 4]
    assert layout.sample.file == str(tmp_path / "scan.h5") and layout.flats.axes == ("flat", "step", "row", "col")
    assert layout.darks is None
    assert layout.meta["beam"] == {"type": "cone", "source_object_mm": 100.0, "source_detector_mm": 250.0,
                                   "cor_offset_px": -1.5}
    for key, value in {"orientations_deg": [0.0, 90.0], "pixel_mm": 0.075, "phase_steps": M, "n_angles": A,
                       "kvp": 50.0, "air_columns": 3, "filtration_mm": {"Al": 0.5}, "visibility": 0.25,
                       "exposure_s": 1.2, "operator": "x", "scanner": "lab-1", "grating_period_um": 3.0}.items():
        assert layout.meta[key] == value, key


def test_json_layout_and_angle_list(tmp_path: Path) -> None:
    doc = base_layout("tiff")
    doc.update({"angles_deg": [0, 30, 60, 90, 120], "sample": {"file": "s_{orient}_{angle}.tif", "axes": ["step", "row", "col"]},
                "flats": {"file": "f_{flat}_{step}.tif", "indices": FLAT_INDICES}})
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(doc))
    layout = read_layout(path)
    assert layout.angles_deg.tolist() == [0, 30, 60, 90, 120] and layout.step_phases is None
    assert layout.sample.fields == ("orient", "angle") and layout.sample.axes == ("step", "row", "col")
    assert layout.flats.fields == ("flat", "step")
    assert layout.meta["beam"] == {"type": "parallel"}


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("kind", sorted(SCANS))
def test_round_trip_is_exact(tmp_path: Path, kind: str) -> None:
    frames = lab_frames(1)
    scan = read_raw(read_layout(SCANS[kind](tmp_path, frames)))
    assert scan.sample.dtype == np.float32 and scan.sample.shape == (N, A, M, COLS, ROWS)
    np.testing.assert_array_equal(scan.sample, dfseg_order(frames["sample"]))
    flats = frames["flats"] if kind != "tiff-frames" else np.broadcast_to(frames["flats"][:1], frames["flats"].shape)
    assert scan.flats.shape == (N, F, M, COLS, ROWS)
    np.testing.assert_array_equal(scan.flats, dfseg_order(flats))
    np.testing.assert_array_equal(scan.darks, dfseg_order(frames["darks"]))
    assert scan.flat_indices.tolist() == FLAT_INDICES
    np.testing.assert_allclose(scan.angles_deg, [0, 36, 72, 108, 144])
    assert scan.orientations_deg.tolist() == [0.0, 90.0] and scan.sample_phases is None
    assert scan.meta["kvp"] == 50.0 and scan.meta["pixel_mm"] == 0.075


@pytest.mark.parametrize("kind", sorted(SCANS))
def test_one_orientation_at_a_time(tmp_path: Path, kind: str) -> None:
    frames = lab_frames(2)
    scan = read_raw(SCANS[kind](tmp_path, frames), orientations=[1])
    assert scan.sample.shape == (1, A, M, COLS, ROWS) and scan.orientations_deg.tolist() == [90.0]
    np.testing.assert_array_equal(scan.sample[0], dfseg_order(frames["sample"][1]))
    shared = kind == "tiff-frames"  # its flats have no orient axis
    np.testing.assert_array_equal(scan.flats[0], dfseg_order(frames["flats"][0 if shared else 1]))
    assert scan.meta["orientations_deg"] == [90.0]
    with pytest.raises(InputError, match="orientations"):
        read_raw(tmp_path / "layout.yaml", orientations=[2])
    parts = list(iter_orientations(tmp_path / "layout.yaml"))
    assert [p.orientations_deg.tolist() for p in parts] == [[0.0], [90.0]]
    np.testing.assert_array_equal(np.concatenate([p.sample for p in parts]), dfseg_order(frames["sample"]))


def test_step_positions_nominal_and_per_frame(tmp_path: Path) -> None:
    frames = lab_frames()
    path = hdf5_scan(tmp_path, frames)
    doc = yaml.safe_load(path.read_text())
    doc["step_positions"] = [0.0, 1 / 3, 2 / 3]
    positions = np.random.default_rng(0).uniform(0, 1, (N, F, M))
    doc["flats"]["positions"] = positions.tolist()
    scan = read_raw(write_layout(path, doc))
    assert scan.sample_phases.shape == (N, A, M)
    np.testing.assert_allclose(scan.sample_phases[1, 3], 2 * np.pi * np.array([0, 1, 2]) / 3)
    np.testing.assert_allclose(scan.flat_phases, 2 * np.pi * positions)
    with h5py.File(tmp_path / "scan.h5", "a") as fh:
        fh["/positions"] = positions[0]  # (flat, step): shared by both orientations
    doc["flats"]["positions"] = "/positions"
    scan = read_raw(write_layout(path, doc), orientations=[1])
    np.testing.assert_allclose(scan.flat_phases[0], 2 * np.pi * positions[0])


def test_single_orientation_without_orient_axis_and_one_dark(tmp_path: Path) -> None:
    frames = lab_frames(3)
    with h5py.File(tmp_path / "scan.h5", "w") as fh:
        fh["s"], fh["f"], fh["d"] = frames["sample"][0], frames["flats"][0], frames["darks"][0]
    doc = base_layout("hdf5")
    doc.update({"file": "scan.h5", "orientations_deg": [45.0], "sample": {"dataset": "s", "axes": "angle step row col"},
                "darks": {"dataset": "d"}})
    doc["flats"].update({"dataset": "f", "axes": "flat step row col"})
    scan = read_raw(write_layout(tmp_path / "layout.yaml", doc))
    assert scan.sample.shape == (1, A, M, COLS, ROWS) and scan.darks.shape == (1, COLS, ROWS)
    np.testing.assert_array_equal(scan.sample[0], dfseg_order(frames["sample"][0]))
    np.testing.assert_array_equal(scan.darks[0], dfseg_order(frames["darks"][0]))


# ------------------------------------------------------------------------------------------ bad input


def _edit(path: Path, change: Callable[[dict], None]) -> Path:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    return write_layout(path, doc)


def _layout_case(change: Callable[[dict], None]) -> Callable[[Path], Path]:
    return lambda tmp: _edit(hdf5_scan(tmp), change)


# (where the message must point, layout change); each must give one line naming the layout and the field
LAYOUT_CASES = {
    "unknown field": ("layout.yaml:(top level)", lambda d: d.update(angels_deg=[1])),
    "format": ("layout.yaml:format", lambda d: d.update(format="nexus")),
    "no angles": ("layout.yaml:angles_deg", lambda d: d.pop("angles_deg")),
    "angle not a number": ("layout.yaml:angles_deg[2]", lambda d: d.update(angles_deg=[0, 1, "x", 3, 4])),
    "no steps": ("layout.yaml:steps", lambda d: d.pop("steps")),
    "two steps": ("layout.yaml:steps", lambda d: d.update(steps=2)),
    "positions vs steps": ("layout.yaml:step_positions", lambda d: d.update(step_positions=[0, 0.5])),
    "um without period": ("layout.yaml:grating_period_um", lambda d: d.update(step_unit="um")),
    "no pixel": ("layout.yaml:pixel_mm", lambda d: d.pop("pixel_mm")),
    "negative pixel": ("layout.yaml:pixel_mm", lambda d: d.update(pixel_mm=-1)),
    "cone without distances": ("layout.yaml:beam.source_object_mm", lambda d: d.update(beam={"type": "cone"})),
    "beam type": ("layout.yaml:beam.type", lambda d: d.update(beam={"type": "fan"})),
    "flat index": ("layout.yaml:flats.indices", lambda d: d["flats"].update(indices=[0, 9])),
    "no flat indices": ("layout.yaml:flats.indices", lambda d: d["flats"].pop("indices")),
    "no sample": ("layout.yaml:sample", lambda d: d.pop("sample")),
    "no dataset": ("layout.yaml:sample.dataset", lambda d: d["sample"].pop("dataset")),
    "unknown axis": ("layout.yaml:sample.axes", lambda d: d["sample"].update(axes="orient angle phase row col")),
    "missing axis": ("layout.yaml:sample", lambda d: d["sample"].update(axes="orient angle row col")),
    "pattern field": ("layout.yaml:sample.file", lambda d: d["sample"].update(file="s_{projection}.h5")),
    "meta clash": ("layout.yaml:meta.kvp", lambda d: d.update(meta={"kvp": 40})),
    "kvp": ("layout.yaml:kvp", lambda d: d.update(kvp="fifty")),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_layout_mistakes_are_one_line_naming_the_field(tmp_path: Path, case: str) -> None:
    where, change = LAYOUT_CASES[case]
    path = _layout_case(change)(tmp_path)
    with pytest.raises(InputError) as err:
        read_raw(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path / where)), message


def test_unreadable_layout_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothere\.yaml: layout file not found$"):
        read_layout(tmp_path / "nothere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: hdf5\nangles_deg: [0, 1\n")
    with pytest.raises(InputError) as err:
        read_layout(bad)
    assert str(err.value).startswith(f"{bad}: not valid YAML/JSON at line") and "\n" not in str(err.value)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(InputError, match=r"bad\.yaml:\(top level\): expected a mapping"):
        read_layout(bad)


def _drop_frame(tmp: Path) -> tuple[Path, Path]:
    path = tiff_frames_scan(tmp)
    (tmp / "o1" / "a004_s2.tif").unlink()
    return path, tmp / "o1" / "a004_s2.tif"


def _odd_frame(tmp: Path) -> tuple[Path, Path]:
    path = tiff_frames_scan(tmp)
    tifffile.imwrite(tmp / "o0" / "a002_s1.tif", np.zeros((ROWS, COLS + 1), np.uint16))
    return path, tmp / "o0" / "a002_s1.tif"


def _extra_frame(tmp: Path) -> tuple[Path, Path]:  # the lab wrote 6 angles, the layout lists 5
    path = tiff_frames_scan(tmp)
    tifffile.imwrite(tmp / "o0" / "a006_s0.tif", np.zeros((ROWS, COLS), np.uint16))
    return path, tmp / "o0" / "a006_s0.tif"


def _short_stack(tmp: Path) -> tuple[Path, Path]:  # one page missing from a stack
    path = tiff_stacks_scan(tmp)
    tifffile.imwrite(tmp / "sample_1.tif", np.zeros((A * M - 1, ROWS, COLS), np.uint16))
    return path, tmp / "sample_1.tif"


def _nan_frame(tmp: Path) -> tuple[Path, Path]:
    path = tiff_frames_scan(tmp)
    frame = np.ones((ROWS, COLS), np.float32)
    frame[2, 3] = np.nan
    tifffile.imwrite(tmp / "dark_4.tif", frame)
    return path, tmp / "dark_4.tif"


def _corrupt_tiff(tmp: Path) -> tuple[Path, Path]:
    path = tiff_stacks_scan(tmp)
    (tmp / "flats.tif").write_bytes(b"not a tiff at all" * 10)
    return path, tmp / "flats.tif"


def _no_h5_file(tmp: Path) -> tuple[Path, Path]:
    path = hdf5_scan(tmp)
    (tmp / "scan.h5").unlink()
    return path, tmp / "scan.h5"


def _no_dataset(tmp: Path) -> tuple[Path, Path]:
    path = _edit(hdf5_scan(tmp), lambda d: d["darks"].update(dataset="/exchange/dark_field"))
    return path, tmp / "scan.h5"


def _h5_count(tmp: Path) -> tuple[Path, Path]:  # 359 angles listed, 360 frames: here 4 listed, 5 stored
    path = _edit(hdf5_scan(tmp), lambda d: d.update(angles_deg=[0, 45, 90, 135], flats={**d["flats"], "indices": [0, 1, 2, 4]}))
    return path, tmp / "scan.h5"


def _h5_frame_shape(tmp: Path) -> tuple[Path, Path]:
    path = hdf5_scan(tmp)
    with h5py.File(tmp / "scan.h5", "a") as fh:
        del fh["/exchange/dark"]
        fh["/exchange/dark"] = np.zeros((D, ROWS - 1, COLS), np.uint16)
    return path, tmp / "scan.h5"


def _h5_axes(tmp: Path) -> tuple[Path, Path]:
    path = _edit(hdf5_scan(tmp), lambda d: d["flats"].update(axes="flat step row col"))
    return path, tmp / "scan.h5"


def _h5_strings(tmp: Path) -> tuple[Path, Path]:
    path = hdf5_scan(tmp)
    with h5py.File(tmp / "scan.h5", "a") as fh:
        del fh["/exchange/dark"]
        fh["/exchange/dark"] = np.full((D, ROWS, COLS), b"x", dtype="S1")
    return path, tmp / "scan.h5"


def _not_hdf5(tmp: Path) -> tuple[Path, Path]:
    path = hdf5_scan(tmp)
    (tmp / "scan.h5").write_text("plain text")
    return path, tmp / "scan.h5"


DATA_CASES = {
    "missing frame file": (_drop_frame, "file not found"),
    "wrong frame shape": (_odd_frame, "frame is 7 x 10 (rows x cols), expected 7 x 9"),
    "more frames than angles": (_extra_frame, "exists, but the layout has only 5 angles"),
    "stack page count": (_short_stack, "holds 14 frames"),
    "nan values": (_nan_frame, "NaN/Inf"),
    "corrupt tiff": (_corrupt_tiff, "cannot read TIFF"),
    "missing hdf5 file": (_no_h5_file, "file not found"),
    "missing dataset": (_no_dataset, "no such dataset"),
    "angle count": (_h5_count, "holds 5 angles, the layout has 4"),
    "hdf5 frame shape": (_h5_frame_shape, "frame is 6 x 9 (rows x cols), expected 7 x 9"),
    "hdf5 axes": (_h5_axes, "has 5 axes"),
    "non-numeric data": (_h5_strings, "expected numbers"),
    "not hdf5": (_not_hdf5, "cannot read HDF5"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_frames_are_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    make, problem = DATA_CASES[case]
    layout, file = make(tmp_path)
    with pytest.raises(InputError) as err:
        read_raw(layout)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(file)) and problem in message, message


def test_the_documented_examples_are_valid_layouts(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "docs" / "raw_frames.md").read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in text.split("```yaml\n")[1:]]
    formats = []
    for i, block in enumerate(blocks):
        doc = yaml.safe_load(block)
        if "format" in doc:  # the full examples (the others are excerpts)
            layout = read_layout(write_layout(tmp_path / f"example{i}.yaml", doc))
            assert layout.angles_deg.size == 360 and layout.flat_indices.tolist() == [0, 90, 180, 270, 360]
            formats.append(layout.format)
    assert formats == ["hdf5", "tiff"]
