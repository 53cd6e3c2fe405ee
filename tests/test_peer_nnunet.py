"""bench/peer_nnunet.py without nnU-Net: the export to nnU-Net's dataset format and the memory probe."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from dfseg.channels import DF_CHANNELS
from dfseg.data.datasets import datalist_for_fold
from dfseg.data.manifest import load_manifest

sys.path.insert(0, str(Path(__file__).parent / "training"))
from cohort import make_cohort  # noqa: E402

_spec = importlib.util.spec_from_file_location("peer_nnunet", Path(__file__).parents[1] / "bench" / "peer_nnunet.py")
peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer)


def test_export_keeps_channels_labels_geometry_and_splits(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", n_subjects=8)
    split = peer.export_dataset(manifest, tmp_path / "raw")
    folder = tmp_path / "raw" / peer.DATASET
    doc = load_manifest(manifest)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "attn", "1": "c0", "2": "amp", "3": "amp_cos2t", "4": "amp_sin2t"}
    assert meta["numTraining"] == len(doc["training"]) and meta["labels"] == {"background": 0, "tumour": 1}

    # fold 0 of nnU-Net's split is dfseg's fold 0; the test subjects are only in imagesTs
    assert set(split["val"]) == {e["scan_id"] for e in datalist_for_fold(manifest, 0, "val")}
    assert sorted(split["train"] + split["val"]) == sorted(e["scan_id"] for e in doc["training"])
    assert split["test"] and not set(split["test"]) & set(split["train"] + split["val"])
    assert sorted(p.name for p in (folder / "imagesTs").glob("*_0000.nii.gz")) == \
        sorted(f"{c}_0000.nii.gz" for c in split["test"])

    for group, entries in (("Tr", doc["training"]), ("Ts", doc["test"])):
        for e in entries:
            attn = nib.load(manifest.parent / e["attn"])
            df = np.asarray(nib.load(manifest.parent / e["df"]).dataobj)
            expected = [np.asarray(attn.dataobj)] + [df[..., DF_CHANNELS.index(n)] for n in peer.CHANNELS[1:]]
            for c, want in enumerate(expected):
                img = nib.load(folder / f"images{group}" / f"{e['scan_id']}_{c:04d}.nii.gz")
                np.testing.assert_array_equal(np.asarray(img.dataobj), want)
                np.testing.assert_allclose(img.affine, attn.affine)
            label = nib.load(folder / f"labels{group}" / f"{e['scan_id']}.nii.gz")
            np.testing.assert_array_equal(np.asarray(label.dataobj),
                                          np.asarray(nib.load(manifest.parent / e["label"]).dataobj))


def test_measured_sees_the_memory_of_a_child(tmp_path):
    code = "import numpy as np, time; a = np.ones(300 * 2**20 // 8); time.sleep(1.5)"
    out = peer.measured([sys.executable, "-c", code], log=tmp_path / "log")
    assert 1.5 <= out["seconds"] < 30
    assert out["peak_mb"] >= 300
