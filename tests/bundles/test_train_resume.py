"""End-to-end through ``python -m monai.bundle run`` (subprocess): train -> evaluate -> infer,
TensorBoard contents, SIGKILL + resume to identical weights, torchrun/gloo DDP."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dfseg.cli import main
from dfseg.io import load_nifti, voxel_size
from dfseg.networks import build, count_parameters
from dfseg.reporting.model_card import write_model_card
from dfseg.resources import WORKFLOWS

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from cohort import make_cohort  # noqa: E402

_spec = importlib.util.spec_from_file_location("bundle_helpers", Path(__file__).parent / "helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

BUNDLE = "dfseg_attention_unet"
RUNNABLE = [BUNDLE, "dfseg_swinunetr"]


def _train_cmd(bundle, manifest, out, epochs, *extra):
    return helpers.bundle_cmd(bundle, "train.yaml", "--manifest", str(manifest), "--output_dir", str(out),
                              "--max_epochs", str(epochs), *helpers.COMMON, *helpers.TRAIN, *helpers.TINY[bundle],
                              *extra)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", RUNNABLE)
def test_train_evaluate_infer_tensorboard(bundle, tmp_path):
    manifest = make_cohort(tmp_path / "cohort", n_subjects=6)
    out = tmp_path / "run"
    # SwinUNETR at 64^3 costs ~25 s per training iteration on 2 loaded CPU cores: 1 epoch of 1 iteration
    epochs, extra = (2, []) if bundle == BUNDLE else (1, ["--epoch_length", "1"])
    t0 = time.perf_counter()
    helpers.run(_train_cmd(bundle, manifest, out, epochs, *extra), cwd=tmp_path)
    print(f"{bundle}: {epochs} epoch(s) in {time.perf_counter() - t0:.1f} s")
    assert (out / "model.pt").is_file() and (out / "last.pt").is_file()
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == epochs * ckpt["trainer"]["epoch_length"]
    info = json.loads((out / "run_info.json").read_text())
    assert info["completed_epochs"] == epochs and info["modality"] == "combined" and len(info["manifest"]["sha256"]) == 64
    # the keys dfseg.reporting.model_card reads
    assert {"bundle", "modality", "network", "hyper_parameters", "seed", "hardware", "versions",
            "started_utc", "finished_utc", "input_channels", "in_channels", "geometry"} <= info.keys()
    assert info["in_channels"] == 5 and info["geometry"] == "ct"
    # the network record rebuilds the network, as dfseg model-card does, with the recorded parameter count
    args = {k: v for k, v in info["network"].items() if k not in ("name", "parameter_count")}
    rebuilt = build(info["network"]["name"], info["in_channels"], **args)
    assert info["network"]["parameter_count"] == count_parameters(rebuilt) > 1000
    rebuilt.load_state_dict(torch.load(out / "model.pt", weights_only=True)["model"])
    card_json, _ = write_model_card(out, tmp_path / "card")  # the card reads this run_info.json
    card = json.loads(card_json.read_text())
    assert str(info["network"]["parameter_count"]) in json.dumps(card)

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    for scalar in ("train_loss", "lr", "val_auroc", "val_mean_dice"):
        assert scalar in tags["scalars"], tags["scalars"]
    assert len(acc.Scalars("val_auroc")) == epochs
    # label and prediction outlines over attn and c0, plus the attention gates where the network has them
    assert {t.split("/")[0] for t in tags["images"]} >= {"overlay_attn", "overlay_c0"}, tags["images"]
    gates = [t for t in tags["images"] if t.startswith("attention_gate")]
    assert bool(gates) == (bundle == BUNDLE), tags["images"]

    extra = [*helpers.COMMON, *helpers.TINY[bundle]]
    if bundle != BUNDLE:
        # the evaluate overlay is the U-Net's, word for word (test_check_properties instantiates
        # it); here the trained SwinUNETR is exported and run
        _infer_check(bundle, manifest, out, tmp_path, extra)
        _traced_export_matches(bundle, out, tmp_path)
        return
    helpers.run(helpers.bundle_cmd(bundle, WORKFLOWS["evaluate"], "--manifest", str(manifest), "--output_dir", str(out),
                                   "--split", "val", *extra), cwd=tmp_path)
    metrics = json.loads((out / "eval_val.json").read_text())
    assert 0.0 <= metrics["metrics"]["auroc"] <= 1.0 and len(metrics["volumes"]) >= 2
    print(f"{bundle}: val AUROC {metrics['metrics']['auroc']:.3f}, Dice {metrics['metrics']['mean_dice']:.3f}")
    _infer_check(bundle, manifest, out, tmp_path, extra)


def _traced_export_matches(bundle, out, tmp_path):
    """``ckpt_export --use_trace True`` of the trained checkpoint gives the checkpoint's output."""
    root = helpers.BUNDLES / bundle
    overrides = helpers.overrides(bundle)
    size = int(overrides["patch_size"])
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(out / "model.pt"), key_in_ckpt="model",
                meta_file=str(root / "configs" / "metadata.json"), config_file=str(root / "configs" / "train.yaml"),
                bundle_root=str(root), device="cpu", use_trace=True, input_shape=[1, 5, size, size, size], **overrides)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.yaml"))
    parser.update({"bundle_root": str(root), "device": "cpu", **overrides})
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True)["model"])
    net.eval()
    x = torch.randn(1, 5, size, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = net(x), torch.jit.load(str(ts))(x)
    diff = float((expected - got).abs().max())
    print(f"{bundle}: traced export max abs diff {diff:.3g}")
    assert got.shape == (1, 1, size, size, size) and float(expected.std()) > 0
    assert diff <= 1e-5, diff


def _infer_check(bundle, manifest, out, tmp_path, extra):
    """The inference overlay on the test split: one probability map per test scan, on the scan grid."""
    pred_dir = tmp_path / "pred"
    helpers.run(helpers.bundle_cmd(bundle, WORKFLOWS["inference"], "--manifest", str(manifest), "--output_dir", str(out),
                                   "--split", "test", "--predictions_dir", str(pred_dir), *extra), cwd=tmp_path)
    probs = sorted(pred_dir.glob("*_prob.nii.gz"))
    test_ids = [e["scan_id"] for e in json.loads(manifest.read_text())["test"]]
    assert [p.name for p in probs] == sorted(f"{s}_prob.nii.gz" for s in test_ids)
    arr, _ = load_nifti(probs[0])
    assert arr.shape == (32, 32, 32) and 0.0 <= arr.min() and arr.max() <= 1.0
    assert float(arr.std()) > 0


@pytest.mark.slow
def test_radiograph_2d_train_infer_evaluate(tmp_path):
    """spatial_dims=2 on a 64x64x1 radiograph cohort: 2D network, predictions written as (X, Y, 1),
    and ``dfseg evaluate`` reads them unchanged. (SwinUNETR's 2D config: test_bundle_checks.)"""
    bundle = BUNDLE
    manifest = make_cohort(tmp_path / "cohort", n_subjects=6, radiograph=True)
    out = tmp_path / "run"
    helpers.run(_train_cmd(bundle, manifest, out, 1, "--spatial_dims", "2"), cwd=tmp_path)
    state = torch.load(out / "model.pt", weights_only=True)["model"]
    convs = [v for k, v in state.items() if k.endswith("weight") and v.ndim >= 4]
    assert convs and all(v.ndim == 4 for v in convs)  # (out, in, kx, ky): a 2D network
    info = json.loads((out / "run_info.json").read_text())
    assert info["geometry"] == "radiograph" and len(info["hyper_parameters"]["patch_size"]) == 2
    pred_dir = tmp_path / "pred"
    helpers.run(helpers.bundle_cmd(bundle, WORKFLOWS["inference"], "--manifest", str(manifest), "--output_dir", str(out),
                                   "--split", "test", "--predictions_dir", str(pred_dir), "--spatial_dims", "2",
                                   *helpers.COMMON, *helpers.TINY[bundle]), cwd=tmp_path)
    probs = sorted(pred_dir.glob("*_prob.nii.gz"))
    assert probs
    arr, affine = load_nifti(probs[0])
    assert arr.shape == (64, 64, 1) and 0.0 <= arr.min() and arr.max() <= 1.0
    assert np.allclose(voxel_size(affine), 0.1)
    assert main(["evaluate", "--predictions", str(pred_dir), "--manifest", str(manifest), "-o",
                 str(tmp_path / "eval"), "--bootstrap", "20", "--quiet"]) == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["network"]


#: (kind, needle) kill points of the 2-epoch, 2-iterations-per-epoch run, in order: mid-epoch 1
#: (iteration checkpoint written), during validation of epoch 1, after it, while a checkpoint's
#: temporary file exists (the atomic write in progress), mid-epoch 2.
#: where each run is killed: after its first checkpoint ("ckpt": last.pt replaced; epoch 1 iteration 1),
#: while a checkpoint is written ("tmp"), after epoch 1's line (validation done), after the first
#: checkpoint of epoch 2, and as soon as the last run says it resumes
KILL_POINTS = [("ckpt", None), ("tmp", None), ("log", "epoch 1/2 "), ("ckpt", None), ("log", "resuming at epoch 2/2")]


def _checkpoint_id(path: Path) -> tuple[int, int] | None:
    return (path.stat().st_ino, path.stat().st_mtime_ns) if path.is_file() else None


@pytest.mark.slow
def test_sigkill_resume_gives_identical_weights(tmp_path):
    """SIGKILL at 5 points (one during checkpoint writing), rerun the same command: same epochs, same weights."""
    manifest = make_cohort(tmp_path / "cohort", n_subjects=6)
    epochs = 2
    ref = tmp_path / "ref"
    helpers.run(_train_cmd(BUNDLE, manifest, ref, epochs, "--checkpoint_every_n_iterations", "1"), cwd=tmp_path)
    reference = _weights(ref / "last.pt")

    out = tmp_path / "killed"
    cmd = _train_cmd(BUNDLE, manifest, out, epochs, "--checkpoint_every_n_iterations", "1")
    reached = []
    for i, (kind, needle) in enumerate(KILL_POINTS):
        log = tmp_path / f"log{i}.txt"
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, cwd=tmp_path, env=helpers.env(), stdout=fh, stderr=subprocess.STDOUT)
        deadline, start = time.time() + 240, _checkpoint_id(out / "last.pt")
        while proc.poll() is None and time.time() < deadline:
            if kind == "ckpt":
                hit = _checkpoint_id(out / "last.pt") not in (None, start)
            else:
                hit = any(out.glob(".last.pt*")) if kind == "tmp" else needle in log.read_text()
            if hit:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                reached.append(i)
                break
            time.sleep(0.002 if kind == "tmp" else 0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert reached == list(range(len(KILL_POINTS))), f"kill points reached: {reached}"
    helpers.run(cmd, cwd=tmp_path)
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["trainer"]["epoch_length"] == 2
    assert state["trainer"]["iteration"] == epochs * state["trainer"]["epoch_length"]
    info = json.loads((out / "run_info.json").read_text())
    assert info["completed_epochs"] == epochs
    assert len(info["resumed_at_iteration"]) >= 4, info["resumed_at_iteration"]  # the first kill may precede any checkpoint
    assert not list(out.glob(".last.pt*"))  # the killed write's temporary file was cleaned up
    resumed = state["network"]
    assert resumed.keys() == reference.keys()
    diffs = {k: float((resumed[k].float() - reference[k].float()).abs().max()) for k in reference}
    assert max(diffs.values()) == 0.0, {k: v for k, v in diffs.items() if v}


@pytest.mark.slow
def test_torchrun_gloo_two_processes(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", n_subjects=6)
    out = tmp_path / "ddp"
    cmd = helpers.bundle_cmd(BUNDLE, WORKFLOWS["multi_gpu_train"], "--manifest", str(manifest),
                             "--output_dir", str(out), "--max_epochs", "1", *helpers.COMMON, *helpers.TRAIN,
                             *helpers.TINY[BUNDLE])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]
    helpers.run(torchrun, cwd=tmp_path, timeout=400)
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == state["trainer"]["epoch_length"] >= 1
    assert any(k.startswith("module.") for k in state["network"])  # DDP-wrapped on save
    assert (out / "model.pt").is_file()
    assert len(list((out / "tensorboard").glob("events.*"))) == 1  # rank 0 only
    assert not (tmp_path / "runs").exists()  # no stray default SummaryWriter folder on rank 1
    info = json.loads((out / "run_info.json").read_text())
    assert info["completed_epochs"] == 1 and info["network"]["parameter_count"] > 0


@pytest.mark.slow
def test_torchrun_two_nodes(tmp_path):
    """Two torchrun "nodes" (static rendezvous on 127.0.0.1), one process each: global ranks 0 and 1,
    both with LOCAL_RANK 0, train one epoch of the multi-GPU overlay together over gloo."""
    import socket

    manifest = make_cohort(tmp_path / "cohort", n_subjects=6)
    out = tmp_path / "ddp"
    cmd = helpers.bundle_cmd(BUNDLE, WORKFLOWS["multi_gpu_train"], "--manifest", str(manifest),
                             "--output_dir", str(out), "--max_epochs", "1", *helpers.COMMON, *helpers.TRAIN,
                             *helpers.TINY[BUNDLE])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", *cmd[1:]],
                              cwd=tmp_path, env=helpers.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (0, 1)]
    logs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == state["trainer"]["epoch_length"] >= 1
    assert any(k.startswith("module.") for k in state["network"])  # DDP-wrapped on save
    assert (out / "model.pt").is_file()
    assert len(list((out / "tensorboard").glob("events.*"))) == 1  # global rank 0 only, not each node's first
