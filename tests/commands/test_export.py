"""``dfseg export``: TorchScript and ONNX of both networks, each run independently here and compared
with the eager network on a fresh random input (max |diff| <= 1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dfseg.cli import main
from dfseg.networks import build
from dfseg.networks import export as export_mod

TINY = {
    "attention_unet": ({"channels": [4, 8, 16], "strides": [2, 2], "deep_supervision": True, "dropout": 0.1}, [16, 16, 16]),
    # the smallest 3D SwinUNETR patch: sizes divisible by 32, one of them 64 (instance norm at the bottleneck)
    "swinunetr": ({"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [3, 6, 12, 24]}, [32, 32, 64]),
}


def _run_folder(tmp_path: Path, name: str, *, key: str = "model", ddp: bool = False, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A run folder as the bundles write it: ``model.pt`` and ``run_info.json`` (network record, modality)."""
    args, patch = TINY[name]
    torch.manual_seed(seed)
    net = build(name, 5, img_size=patch, **args).eval()
    run = tmp_path / f"run_{name}"
    run.mkdir()
    state = {("module." + k if ddp else k): v for k, v in net.state_dict().items()}
    torch.save({key: state}, run / ("last.pt" if key == "network" else "model.pt"))
    record = {"bundle": f"dfseg_{name}", "modality": "combined", "in_channels": 5,
              "network": {"name": name, "spatial_dims": 3, **args, "parameter_count": 1},
              "hyper_parameters": {"patch_size": patch}}
    (run / "run_info.json").write_text(json.dumps(record))
    return run, net


def _eager(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net(x).numpy()


def _check_exports(net: torch.nn.Module, out: Path, formats: list[str], patch: list[int]) -> None:
    x = torch.randn(3, 5, *patch, generator=torch.Generator().manual_seed(42))  # a batch size not used in export
    expected = _eager(net, x)
    assert expected.shape == (3, 1, *patch) and expected.std() > 0
    if "torchscript" in formats:
        with torch.no_grad():
            got = torch.jit.load(str(out / "model.ts"))(x).numpy()
        assert np.abs(got - expected).max() <= 1e-4
    if "onnx" in formats:
        import onnx
        import onnxruntime

        onnx.checker.check_model(str(out / "model.onnx"))
        session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["image"]
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4
    record = json.loads((out / "export.json").read_text())
    assert sorted(record["exports"]) == sorted(formats)
    assert record["input"]["shape"] == [1, 5, *patch]
    assert all(0 <= r["max_abs_diff"] <= 1e-4 for r in record["exports"].values())


def test_attention_unet_torchscript(tmp_path, capsys):
    run, net = _run_folder(tmp_path, "attention_unet")
    out = tmp_path / "export"
    assert main(["export", str(run / "model.pt"), "-o", str(out), "--format", "torchscript"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.ts"]
    _check_exports(net, out, ["torchscript"], TINY["attention_unet"][1])
    assert "max |diff|" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_torchscript_and_onnx_match_network(name, tmp_path):
    run, net = _run_folder(tmp_path, name)
    out = tmp_path / "export"
    assert main(["export", str(run / "model.pt"), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "model.ts"]
    _check_exports(net, out, ["torchscript", "onnx"], TINY[name][1])


def test_ddp_last_checkpoint_and_input_size(tmp_path):
    """``last.pt`` of a DDP run (``network`` with ``module.`` keys) exports at another input size."""
    run, net = _run_folder(tmp_path, "attention_unet", key="network", ddp=True, seed=3)
    out = tmp_path / "export"
    assert main(["export", str(run / "last.pt"), "-o", str(out), "--format", "torchscript",
                 "--input-size", "24,16,16"]) == 0
    _check_exports(net, out, ["torchscript"], [24, 16, 16])


def test_bad_inputs_one_line_errors_and_no_output(tmp_path, capsys):
    run, _ = _run_folder(tmp_path, "attention_unet")
    out = tmp_path / "export"

    (tmp_path / "alone").mkdir()
    torch.save({"model": {}}, tmp_path / "alone" / "model.pt")
    assert main(["export", str(tmp_path / "alone" / "model.pt"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dfseg export: error: {tmp_path / 'alone' / 'run_info.json'}: missing") and "\n" not in err

    other = build("attention_unet", 5, channels=[4, 8], strides=[2])  # weights of another network
    torch.save({"model": other.state_dict()}, tmp_path / "other.pt")
    assert main(["export", str(tmp_path / "other.pt"), "--run-info", str(run / "run_info.json"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dfseg export: error: {tmp_path / 'other.pt'}: weights do not fit") and "\n" not in err

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["export", str(tmp_path / "junk.pt"), "--run-info", str(run / "run_info.json"), "-o", str(out)]) == 1
    assert str(tmp_path / "junk.pt") in capsys.readouterr().err

    assert main(["export", str(run / "model.pt"), "-o", str(out), "--format", "torchscript,pickle"]) == 1
    assert "--format" in capsys.readouterr().err
    assert main(["export", str(run / "model.pt"), "-o", str(out), "--input-size", "16,16"]) == 1
    assert "3D" in capsys.readouterr().err
    assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("user file")
    assert main(["export", str(run / "model.pt"), "-o", str(out), "--format", "torchscript"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "user file" and len(list(out.iterdir())) == 1


def test_export_that_differs_is_refused_and_nothing_written(tmp_path, monkeypatch, capsys):
    run, _ = _run_folder(tmp_path, "attention_unet")
    monkeypatch.setattr(export_mod, "max_abs_difference", lambda *a: 2e-4)
    out = tmp_path / "export"
    assert main(["export", str(run / "model.pt"), "-o", str(out), "--format", "torchscript"]) == 1
    assert "differs from the network by 0.0002" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]
