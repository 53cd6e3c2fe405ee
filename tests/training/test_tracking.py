"""Experiment tracking: MLflow through MONAI's bundle tracking option (``dfseg train --tracking mlflow``),
read back from a local store (a SQLite file: MONAI 1.6 and MLflow 3.13+ refuse the ``file://``
store); TensorBoard is still written and holds the same numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dfseg.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from cohort import make_cohort  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = ["channels=[4,8,16]", "strides=[2,2]", "patch_size=32", "num_workers=0", "sw_batch_size=1",
        "batch_size=1", "num_samples=1", "synthetic_tumour_prob=0", "epoch_length=2"]


@pytest.mark.slow
def test_mlflow_local_store_gets_the_tensorboard_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    manifest = make_cohort(tmp_path / "cohort", n_subjects=6)
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = tmp_path / "run"
    argv = ["train", "--manifest", str(manifest), "--modality", "combined", "-o", str(out), "--max-epochs", "1",
            "--device", "cpu", "--tracking", "mlflow", "--tracking-uri", store, "--experiment", "tiny"]
    for item in TINY:
        argv += ["--override", item]
    assert main(argv) == 0
    assert json.loads((out / "run_info.json").read_text())["completed_epochs"] == 1

    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["run"]  # trainer and validator log into one run, named after -o
    run_id = runs[0].info.run_id
    board = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    for name, count in (("train_loss", 2), ("val_mean_dice", 1), ("val_auroc", 1)):
        logged = [m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]
        expected = [e.value for e in board.Scalars(name)]
        assert len(logged) == count, (name, logged)
        np.testing.assert_allclose(logged, expected, rtol=1e-6, err_msg=name)
    assert 0.0 <= logged[0] <= 1.0  # val_auroc
