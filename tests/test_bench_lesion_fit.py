"""bench/lesion_fit.py: the splits it scores, the network it rebuilds, where it says false positives lie."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from testkit import BENCH_DIR, bench_module

from dfseg.io import save_nifti

BENCH = BENCH_DIR / "lesion_fit.py"


@pytest.fixture(scope="module")
def lesion_fit():
    return bench_module("lesion_fit")


def _entry(i: int, fold: int) -> dict:
    scan = f"sub-{i:04d}_ct"
    return {"subject_id": scan[:8], "scan_id": scan, "fold": fold, "has_tumour": True,
            "meta": {"voxel_mm": 0.5}, "attn": f"scans/{scan}/attn.nii.gz", "df": f"scans/{scan}/df.nii.gz",
            "label": f"scans/{scan}/label.nii.gz", "lung_mask": f"scans/{scan}/lung_mask.nii.gz",
            "sidecar": f"scans/{scan}/sidecar.json"}


def test_split_manifest_takes_the_trained_validation_or_test_mice(tmp_path, lesion_fit):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    manifest = cohort / "manifest.json"
    doc = {"name": "x", "description": "test", "pipeline_version": "0.1.0", "created_by": "test",
           "num_folds": 3, "seed": 0, "test_split": {"by": "subject", "fraction": 0.2},
           "training": [_entry(0, 0), _entry(1, 1), _entry(2, 2), _entry(3, 0)],
           "validation": [], "test": [_entry(4, -1)]}
    manifest.write_text(json.dumps(doc))
    ids = {}
    for split in ("train", "val", "test"):
        sub = json.loads(lesion_fit._split_manifest(manifest, split, 0, tmp_path).read_text())
        assert sub["training"] == [] and sub["validation"] == []
        assert all(e["fold"] == -1 for e in sub["test"])
        assert all(Path(e["label"]) == cohort / "scans" / e["scan_id"] / "label.nii.gz" for e in sub["test"])
        ids[split] = [e["scan_id"] for e in sub["test"]]
    assert ids == {"train": ["sub-0001_ct", "sub-0002_ct"], "val": ["sub-0000_ct", "sub-0003_ct"],
                   "test": ["sub-0004_ct"]}


def test_network_overrides_are_python_literals(lesion_fit):
    info = {"network": {"name": "attention_unet", "channels": [8, 16], "deep_supervision": True,
                        "presence_head": False, "parameter_count": 12}}
    assert lesion_fit._network_overrides(info) == {"network_args#channels": "[8, 16]",
                                                   "network_args#deep_supervision": "True",
                                                   "network_args#presence_head": "False"}
    with pytest.raises(SystemExit, match="swinunetr"):
        lesion_fit._network_overrides({"network": {"name": "swinunetr"}})


def test_false_positives_on_the_rim_and_in_the_lower_half_are_told_apart(tmp_path, lesion_fit):
    shape = (20, 20, 8)
    lung = np.zeros(shape, np.uint8)
    lung[4:16, 4:16, :] = 1
    label = np.zeros(shape, np.uint8)
    label[12:14, 12:14, 2:4] = 1
    prob = np.zeros(shape, np.float32)
    prob[12:14, 12:14, 2:4] = 0.9   # the tumour: found, not a false positive
    prob[4, 7:10, 1:3] = 0.8        # on the lung's outermost layer, lower slices
    prob[8:10, 8:10, 5:7] = 0.7     # deep in the lung, upper slices
    prob[1, 1, 1] = 1.0             # outside the lung: not a candidate at all
    scans = tmp_path / "scans"
    scans.mkdir()
    entry = {"scan_id": "sub-0000_ct", "meta": {"voxel_mm": 0.5}, "label": str(scans / "label.nii.gz"),
             "lung_mask": str(scans / "lung.nii.gz")}
    save_nifti(entry["label"], label, 0.5)
    save_nifti(entry["lung_mask"], lung, 0.5)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    save_nifti(predictions / "sub-0000_ct_prob.nii.gz", prob, 0.5)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"test": [entry]}))
    assert lesion_fit._false_positive_places(predictions, manifest, 0.5) == {
        "components": 2, "rim_share": 0.5, "lower_half_share": 0.5}


def test_a_folder_that_is_no_demo_run_is_refused(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), str(tmp_path / "nothing"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not found" in done.stderr
    assert not (tmp_path / "out").exists()
