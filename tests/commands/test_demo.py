from __future__ import annotations

import json
import math

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
