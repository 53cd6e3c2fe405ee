from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dfseg.cli import main


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    table = metrics["metrics"]
    for key in ("volume_auroc", "patch_auroc", "dice"):
        value = table[key]["estimate"]
        assert value is None or (isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0), key
    assert isinstance(table["patch_auroc"]["estimate"], float)
    report = (out / "evaluation" / "report.md").read_text()
    for figure in ("roc.png", "pr.png", "froc.png", "reliability.png", "confusion.png", "lesions.png"):
        assert figure in report
        assert (out / "evaluation" / "figures" / figure).stat().st_size > 1000
    assert (out / "model_card" / "model_card.md").is_file()
    assert "report:" in printed and "tensorboard --logdir" in printed
    # a second run into the same folder is refused, and the results stay
    assert main(["demo", "--quick", "--out", str(out)]) == 1
    assert (out / "evaluation" / "metrics.json").is_file()


@pytest.mark.parametrize("bundle", ["dfseg_attention_unet", "dfseg_swinunetr"])
def test_demo_gives_each_bundle_its_network_settings(tmp_path, monkeypatch, bundle):
    """The demo's stages are the dfseg commands and bundle runs; here each only records its arguments."""
    import dfseg.commands.demo as demo

    commands, bundle_runs = [], []

    def fake_dfseg(*argv):
        commands.append(argv[0])
        if argv[0] == "evaluate":
            out = tmp_path / "demo" / "evaluation"
            out.mkdir(parents=True)
            (out / "metrics.json").write_text(json.dumps({"metrics": {"dice": {"estimate": 0.5}}}))

    monkeypatch.setattr(demo, "_dfseg", fake_dfseg)
    monkeypatch.setattr(demo, "run_bundle", lambda root, workflow, **kw: bundle_runs.append((root.name, workflow, kw)))
    argv = ["demo", "--out", str(tmp_path / "demo"), "--bundle", bundle, "--time-budget", "2.5", "--device", "cpu"]
    assert main(argv) == 0
    assert commands == ["simulate", "calibrate", "preprocess", "evaluate", "model-card"]
    (root, _, train), (_, _, infer) = bundle_runs
    assert root == bundle and [w for _, w, _ in bundle_runs] == ["train", "inference"]
    assert train["time_budget"] == 2.5
    if bundle == "dfseg_swinunetr":  # its bundle's defaults: the shipped model's network and patch
        assert not {"patch_size", "feature_size", "channels", "learning_rate"} & (set(train) | set(infer))
    else:
        assert train["patch_size"] == 32 and train["channels"] == [8, 16, 32, 64] and train["learning_rate"] == 3e-3
        assert infer == {**infer, "channels": [8, 16, 32, 64]} and "patch_size" not in infer
    recorded = json.loads((tmp_path / "demo" / "demo_config.json").read_text())
    assert recorded["bundle"] == bundle and recorded["time_budget_min"] == 2.5
    assert ("channels" in recorded) == (bundle == "dfseg_attention_unet")  # no U-Net settings on a SwinUNETR run


@pytest.mark.parametrize(("flags", "epochs", "budget"), [([], 150, 8.0), (["--time-budget", "0"], 150, None),
                                                         (["--max-epochs", "60", "--time-budget", "0"], 60, None),
                                                         (["--quick"], 4, None)])
def test_demo_training_budget(tmp_path, monkeypatch, flags, epochs, budget):
    """The demo trains to an 8-minute budget (at most 150 epochs) unless told otherwise; --quick and
    --time-budget 0 train exactly their epochs. The record holds what training was given."""
    import dfseg.commands.demo as demo

    runs = []

    def fake_dfseg(*argv):
        if argv[0] == "evaluate":
            (tmp_path / "demo" / "evaluation").mkdir(parents=True)
            (tmp_path / "demo" / "evaluation" / "metrics.json").write_text(json.dumps({"metrics": {}}))

    monkeypatch.setattr(demo, "_dfseg", fake_dfseg)
    monkeypatch.setattr(demo, "run_bundle", lambda root, workflow, **kw: runs.append((workflow, kw)))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", *flags]) == 0
    train = dict(runs)["train"]
    assert train["max_epochs"] == epochs and train["time_budget"] == budget
    recorded = json.loads((tmp_path / "demo" / "demo_config.json").read_text())
    assert recorded["max_epochs"] == epochs and recorded["time_budget_min"] == budget


def test_demo_passes_its_cohort_to_simulate(tmp_path, monkeypatch):
    """--variant and --randomise-fraction/--randomise-ranges reach dfseg simulate (the cohort make model
    trains the shipped model on); the record holds them."""
    import dfseg.commands.demo as demo

    calls = {}

    def fake_dfseg(*argv):
        calls[argv[0]] = [str(a) for a in argv]
        if argv[0] == "evaluate":
            out = Path(calls["evaluate"][calls["evaluate"].index("-o") + 1])
            out.mkdir(parents=True)
            (out / "metrics.json").write_text(json.dumps({"metrics": {}}))

    monkeypatch.setattr(demo, "_dfseg", fake_dfseg)
    monkeypatch.setattr(demo, "run_bundle", lambda root, workflow, **kw: None)
    ranges = tmp_path / "ranges.yaml"
    ranges.write_text("voxel_mm: [0.15, 0.15]\n")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", "--variant", "standard", "coarse",
                 "--randomise-fraction", "0.5", "--randomise-ranges", str(ranges)]) == 0
    sim = calls["simulate"]
    assert sim[sim.index("--variant") + 1:sim.index("--variant") + 3] == ["standard", "coarse"]
    assert "--randomise" in sim and sim[sim.index("--randomise-fraction") + 1] == "0.5"
    assert sim[sim.index("--randomise-ranges") + 1] == str(ranges)
    recorded = json.loads((tmp_path / "demo" / "demo_config.json").read_text())
    assert recorded["variants"] == ["standard", "coarse"] and recorded["randomise_fraction"] == 0.5
    assert recorded["randomise_ranges"] == str(ranges)  # as given: a shipped record names no machine's folders
    # dark-field at the demo scanner's effective energy whatever the spectra: 70 kVp + 1 mm Al, ~34.3 keV
    cal = calls["calibrate"]
    assert float(cal[cal.index("--e-ref-kev") + 1]) == pytest.approx(34.28, abs=0.01)
    # the default: the standard variant, no randomised mouse
    calls.clear()
    assert main(["demo", "--out", str(tmp_path / "plain"), "--device", "cpu"]) == 0
    sim = calls["simulate"]
    assert sim[sim.index("--variant") + 1] == "standard" and "--randomise" not in sim


@pytest.mark.parametrize(("flags", "problem"), [(["--randomise-fraction", "1.5"], "must be in [0, 1]"),
                                                (["--randomise-ranges", "RANGES"], "without --randomise-fraction"),
                                                (["--randomise-fraction", "0.5", "--randomise-ranges", "MISSING"],
                                                 "not found")])
def test_demo_refuses_bad_randomisation(tmp_path, capsys, flags, problem):
    ranges = tmp_path / "ranges.yaml"
    ranges.write_text("voxel_mm: [0.15, 0.15]\n")
    flags = [str(ranges) if f == "RANGES" else str(tmp_path / "missing.yaml") if f == "MISSING" else f for f in flags]
    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu", *flags]) == 1
    assert problem in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
