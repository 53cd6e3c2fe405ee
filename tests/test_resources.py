"""dfseg.resources.ship_model: a demo run becomes a bundle's shipped model, card, hash and metadata metrics."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml

from dfseg.errors import DfsegError
from dfseg.io import sha256_file
from dfseg.resources import EVAL_METRIC_ROWS, bundle_dir, card_metrics, ship_model


def _run(tmp_path, card: str):
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "model_card").mkdir()
    torch.save({"model": {"w": torch.arange(3.0)}}, run / "train" / "model.pt")
    (run / "calibration.json").write_text('{"format": "dfseg-calibration"}\n')
    record = {"predict": {"correction": {"calibration": {"path": "/elsewhere/calibration.json",
                                                         "sha256": sha256_file(run / "calibration.json")}}}}
    (run / "train" / "run_info.json").write_text(json.dumps(record))
    (run / "model_card" / "model_card.md").write_text(card)
    (run / "demo_config.json").write_text(json.dumps({"seed": 0, "subjects": 96, "variants": ["standard", "fine"]}))
    return run


def _bundle(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir("dfseg_swinunetr") / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    return bundle


def test_ship_model_writes_card_hash_and_metrics(tmp_path):
    card = (bundle_dir("dfseg_attention_unet") / "models" / "model_card.md").read_text()
    card = re.sub(r"^\| per-volume lesion presence: AUROC \| [0-9.]+ \|", "| per-volume lesion presence: AUROC | 0.917 |",
                  card, flags=re.M)
    assert "| per-volume lesion presence: AUROC | 0.917 |" in card
    run, bundle = _run(tmp_path, card), _bundle(tmp_path)
    before = json.loads((bundle / "configs" / "metadata.json").read_text())
    dest = ship_model(run, bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] == card_metrics(card) and meta["eval_metrics"]["test_presence_auroc"] == 0.917
    assert set(meta["eval_metrics"]) == set(EVAL_METRIC_ROWS)
    assert {k: v for k, v in meta.items() if k != "eval_metrics"} == {k: v for k, v in before.items() if k != "eval_metrics"}
    assert (dest / "model_card.md").read_text() == card
    large = yaml.safe_load((dest / "large_files.yml").read_text())["large_files"]
    assert large == [{"path": "models/model.pt", "url": "", "hash_val": sha256_file(dest / "model.pt"), "hash_type": "sha256"}]
    assert torch.equal(torch.load(dest / "model.pt", weights_only=True)["w"], torch.arange(3.0))
    assert json.loads((dest / "run_info.json").read_text())["predict"]["correction"]["calibration"]["path"] == "calibration.json"
    assert json.loads((dest / "demo_config.json").read_text())["subjects"] == 96  # the cohort it was made from


def test_a_card_without_a_metric_row_ships_nothing(tmp_path):
    card = (bundle_dir("dfseg_attention_unet") / "models" / "model_card.md").read_text()
    card = "\n".join(line for line in card.splitlines() if "FROC CPM" not in line)
    run, bundle = _run(tmp_path, card), _bundle(tmp_path)
    metadata = (bundle / "configs" / "metadata.json").read_text()
    with pytest.raises(DfsegError, match="FROC CPM"):
        ship_model(run, bundle)
    assert (bundle / "configs" / "metadata.json").read_text() == metadata
    assert list((bundle / "models").iterdir()) == []
