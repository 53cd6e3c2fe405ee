"""``dfseg cv`` end to end on a tiny raw (not preprocessed) cohort with a calibration file.

This also exercises the bundles' raw-reconstruction path: ``volume_chain(calibration)`` (beam
hardening, spectrum normalisation, directional decomposition of the 4 orientation channels into
the 5 dark-field channels) runs inside the bundle's training, validation and evaluation chains.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from cohort import make_cohort, raw_calibration  # noqa: E402

TINY = ["channels=[4,8,16]", "strides=[2,2]", "patch_size=32", "num_workers=0", "sw_batch_size=1",
        "batch_size=1", "num_samples=1", "synthetic_tumour_prob=0"]
try:  # the bundles' default loss; until dfseg.losses lands, MONAI's DiceFocal without deep supervision
    from dfseg.losses import SegmentationLoss  # noqa: F401
except ImportError:
    TINY += ["loss=$monai.losses.DiceFocalLoss(sigmoid=True)", "deep_supervision=False"]


def test_raw_cohort_requires_calibration(tmp_path):
    from dfseg.errors import InputError
    from dfseg.training import datalist, eval_transforms, is_preprocessed

    manifest = make_cohort(tmp_path / "cohort", n_subjects=4, preprocessed=False)
    assert not is_preprocessed(manifest)
    with pytest.raises(InputError, match="calibration"):
        eval_transforms("combined", preprocessed=False, calibration=None)
    cal = raw_calibration(tmp_path / "calibration.json")
    item = eval_transforms("combined", preprocessed=False, calibration=cal)(datalist(manifest, 0, "train")[0])
    assert tuple(item["image"].shape) == (5, 32, 32, 32)  # attn + 4 decomposed dark-field channels
    assert "meta" not in item  # dropped after the correction chain (MONAI collate cannot batch it)
    # in the scan's tissue units: the lung's median c0 is 1
    lung = item["lung_mask"][0] > 0
    assert float(item["image"][1][lung].median()) == pytest.approx(1.0, abs=1e-5)
    assert 0.5 < float(item["image"][0][~lung].max()) < 5  # attenuation over solid tissue's
    # one fibre direction everywhere: amp cos 2t and amp sin 2t both follow the amplitude
    amp, cos2t, sin2t = (item["image"][c].flatten().numpy() for c in (2, 3, 4))
    assert np.corrcoef(cos2t, sin2t)[0, 1] > 0.99
    assert np.corrcoef(amp, sin2t)[0, 1] > 0.99


@pytest.mark.slow
def test_cv_two_folds_raw_cohort(tmp_path, monkeypatch):
    from dfseg.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[2]))
    manifest = make_cohort(tmp_path / "cohort", n_subjects=8, preprocessed=False)
    cal = raw_calibration(tmp_path / "calibration.json")
    out = tmp_path / "cv"
    argv = ["cv", "--bundle", str(Path(__file__).parents[2] / "bundles" / "dfseg_attention_unet"),
            "--manifest", str(manifest), "--folds", "2", "--max-epochs", "1", "--device", "cpu",
            "--calibration", str(cal), "--output", str(out)]
    for item in TINY:
        argv += ["--override", item]
    t0 = time.perf_counter()
    assert main(argv) == 0
    print(f"dfseg cv: 2 folds x 1 epoch in {time.perf_counter() - t0:.1f} s")
    cv = json.loads((out / "cv_metrics.json").read_text())
    assert sorted(cv["folds"]) == ["0", "1"]
    doc = json.loads(manifest.read_text())
    n_trainval = len(doc["training"]) + len(doc.get("validation") or [])
    assert cv["pooled"]["n_volumes"] == n_trainval  # every subject held out exactly once
    ids = [v["scan_id"] for f in cv["folds"].values() for v in f["volumes"]]
    assert len(set(ids)) == len(ids) == n_trainval
    if cv["pooled"]["presence_auroc"] is not None:
        assert 0.0 <= cv["pooled"]["presence_auroc"] <= 1.0
    print("pooled:", cv["pooled"])
    test = json.loads((out / "test_metrics.json").read_text())
    assert sorted(test["folds"]) == ["0", "1"]
    for k in ("0", "1"):
        info = json.loads((out / f"fold{k}" / "run_info.json").read_text())
        assert info["fold"] == int(k) and info["preprocessed"] is False
        assert info["calibration"]["path"] == str(cal.resolve()) and len(info["calibration"]["sha256"]) == 64
        assert info["completed_epochs"] == 1
        assert len(test["folds"][k]["volumes"]) == len(doc["test"])
