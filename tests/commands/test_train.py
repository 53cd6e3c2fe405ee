"""``dfseg train``: the short form of ``python -m monai.bundle run ... train.yaml``.

Fast tests replace the bundle subprocess (``dfseg.resources.run_bundle``) by a recorder and check what
the command hands it and how it treats bad input and failed runs; the slow test trains for real.
(MLflow tracking end to end: tests/training/test_tracking.py.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import dfseg.resources
from dfseg.cli import main
from dfseg.errors import DfsegError

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from cohort import make_cohort  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def calls(monkeypatch):
    """Record ``run_bundle`` calls; the fake run writes the run record a finished bundle run leaves."""
    seen: list[tuple[str, str, dict]] = []

    def fake(bundle, workflow, **overrides):
        seen.append((Path(bundle).name, workflow, overrides))
        out = Path(overrides["output_dir"])
        (out / "run_info.json").write_text(json.dumps({"completed_epochs": 3}))

    monkeypatch.setattr(dfseg.resources, "run_bundle", fake)
    return seen


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), n_subjects=4)


def test_settings_reach_the_bundle(calls, cohort, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--manifest", str(cohort), "--modality", "df", "-o", str(out), "--bundle", "dfseg_swinunetr",
                 "--max-epochs", "3", "--fold", "1", "--seed", "7", "--override", "patch_size=64",
                 "--override", "learning_rate=2e-4"]) == 0
    assert len(calls) == 1
    bundle, workflow, got = calls[0]
    assert (bundle, workflow) == ("dfseg_swinunetr", "train")
    assert got == {"manifest": cohort.resolve(), "modality": "df", "fold": 1, "output_dir": out.resolve(), "seed": 7,
                   "max_epochs": 3, "device": None, "calibration": None, "progress": True, "patch_size": "64",
                   "learning_rate": "2e-4"}
    printed = capsys.readouterr().out
    assert "3 epoch(s) done" in printed and str(out.resolve() / "model.pt") in printed


def test_mlflow_settings(calls, cohort, tmp_path, capsys):
    pytest.importorskip("mlflow")
    out = tmp_path / "run7"
    assert main(["train", "--manifest", str(cohort), "-o", str(out), "--tracking", "mlflow", "--no-progress"]) == 0
    got = calls[0][2]
    assert got["progress"] is False
    assert got["tracking"] == "mlflow" and got["experiment_name"] == "dfseg" and got["run_name"] == "run7"
    assert got["tracking_uri"] == f"sqlite:///{out.resolve() / 'mlruns.db'}"
    assert got["modality"] == "combined" and got["max_epochs"] is None  # bundle defaults
    for uri in ("file:///tmp/mlruns", "mlruns"):  # MLflow's retired file store
        assert main(["train", "--manifest", str(cohort), "-o", str(tmp_path / "r2"), "--tracking", "mlflow",
                     "--tracking-uri", uri]) == 1
        assert "MLflow file store" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists() and len(calls) == 1


def test_radiograph_cohort_trains_2d(calls, tmp_path):
    manifest = make_cohort(tmp_path / "rg", n_subjects=4, radiograph=True)
    assert main(["train", "--manifest", str(manifest), "-o", str(tmp_path / "run")]) == 0
    assert calls[0][2]["spatial_dims"] == 2


def test_bad_input_one_line_no_output(calls, cohort, tmp_path, capsys):
    out = tmp_path / "run"
    broken = tmp_path / "broken"
    make_cohort(broken, n_subjects=4)
    scan = json.loads((broken / "manifest.json").read_text())["training"][0]["attn"]
    (broken / scan).write_bytes(b"truncated")
    cases = [
        (["--manifest", str(broken / "manifest.json")], str(broken)),
        (["--manifest", str(tmp_path / "none.json")], "manifest not found"),
        (["--manifest", str(cohort), "--override", "patch_size"], "expected KEY=VALUE"),
        (["--manifest", str(cohort), "--max-epochs", "0"], "--max-epochs: must be at least 1"),
        (["--manifest", str(cohort), "--bundle", "no_such_bundle"], "no such bundle"),
        (["--manifest", str(cohort), "--calibration", str(tmp_path / "cal.json")], "calibration file not found"),
    ]
    for argv, needle in cases:
        assert main(["train", *argv, "-o", str(out)]) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("dfseg train: error: ") and needle in err and "\n" not in err, err
    assert not out.exists() and not calls

    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", "--manifest", str(cohort), "-o", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and not calls


def test_failed_run(monkeypatch, cohort, tmp_path, capsys):
    def failing(bundle, workflow, **overrides):
        out = Path(overrides["output_dir"])
        (out / "tensorboard").mkdir()
        if overrides["seed"] == 1:  # this run got as far as a checkpoint
            torch.save({}, out / "last.pt")
        raise DfsegError("dfseg_attention_unet/configs/train.yaml", "bundle run failed with exit code 1 (messages above)")

    monkeypatch.setattr(dfseg.resources, "run_bundle", failing)
    out = tmp_path / "run"
    assert main(["train", "--manifest", str(cohort), "-o", str(out)]) == 1
    assert "exit code 1" in capsys.readouterr().err
    assert not out.exists()  # nothing worth keeping
    assert main(["train", "--manifest", str(cohort), "-o", str(out), "--seed", "1"]) == 1
    assert "rerun with --resume" in capsys.readouterr().err
    assert (out / "last.pt").is_file()


@pytest.mark.slow
def test_train_one_epoch_for_real(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    manifest = make_cohort(tmp_path / "cohort", n_subjects=6)
    out = tmp_path / "run"
    argv = ["train", "--manifest", str(manifest), "--modality", "df", "-o", str(out), "--max-epochs", "1",
            "--device", "cpu", "--seed", "3"]
    for item in ["channels=[4,8,16]", "strides=[2,2]", "patch_size=32", "num_workers=0", "sw_batch_size=1",
                 "batch_size=1", "num_samples=1", "synthetic_tumour_prob=0", "epoch_length=2"]:
        argv += ["--override", item]
    assert main(argv) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["completed_epochs"] == 1 and info["modality"] == "df" and info["in_channels"] == 4
    assert info["seed"] == 3 and info["network"]["channels"] == [4, 8, 16]
    assert torch.load(out / "last.pt", weights_only=True)["trainer"]["iteration"] == 2
    assert (out / "model.pt").is_file() and list((out / "tensorboard").glob("events.*"))
    assert main(argv) == 1  # the finished run folder is not overwritten without --overwrite / --resume
